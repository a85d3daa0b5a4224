"""Run the Triton kernels on the CPU through the Triton interpreter.

triton reads TRITON_INTERPRET when a kernel is decorated (``triton.knobs.runtime.interpret``,
an env-backed knob), i.e. when gpu.kernels is first imported: set it here, before any test
module imports triton. On a CUDA machine set QSATTN_GPU_TESTS=1 to run the same tests on the GPU.
"""
import os

if os.environ.get("QSATTN_GPU_TESTS") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
