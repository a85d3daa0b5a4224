"""Run the Triton kernels on the CPU through the Triton interpreter.

triton reads TRITON_INTERPRET when a kernel is decorated (``triton.knobs.runtime.interpret``,
an env-backed knob), i.e. when gpu.kernels is first imported: set it here, before any test
module imports triton. On a CUDA machine set QSATTN_GPU_TESTS=1 to run the same tests on the GPU.
"""
import os

import pytest

if os.environ.get("QSATTN_GPU_TESTS") != "1":
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def sass_tools():
    """Skip unless triton's wheel ships the tools that turn a CPU compile into SASS."""
    pytest.importorskip("triton")
    from triton import knobs
    for name in ("cuobjdump", "ptxas"):
        if getattr(knobs.nvidia, name) is None:
            pytest.skip(f"{name} is missing from the triton wheel (triton/backends/nvidia/bin)")
