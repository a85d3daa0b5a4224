"""docs/architecture.md's walk-through, run: a sixth method added with exactly the steps the
document names (its YAML spec, one module per executor, one registry line each), then used by
every executor and listed by the application, with no other file touched.

The toy method ``toy_fp16_bn32`` is FP16 FlashAttention whose specs must use 32-key tiles (its
own spec check); its three executor modules are written out below as the document describes
them, registered, exercised and unregistered.
"""
import textwrap

import numpy as np
import pytest

import ref
from sim import load_method, simulate
from sim.cost import Shape, predict
from sim.cost import paths as cost_paths
from sim.cost.methods import COST_PATHS, CostPath
from sim.dense import FloatOperands, run_dense
from sim.methods import SIMULATORS, SimMethod
from sim.operands import float_kv_bytes

NAME = "toy_fp16_bn32"
SPEC_YAML = textwrap.dedent(f"""\
    method: {NAME}
    description: FP16 FlashAttention restricted to 32-key tiles (docs/architecture.md's example)
    source: tests/test_add_method.py
    tiling: {{block_m: 64, block_n: 32}}
    softmax: {{exp: exp2}}
    operands: {{format: fp16, scale: none}}
    """)


# -- sim/methods/toy_fp16_bn32.py ------------------------------------------------------------
def _check_spec(spec):
    if spec.tiling.block_n != 32:
        raise ValueError(f"tiling.block_n: {NAME} runs 32-key tiles, got {spec.tiling.block_n}")


def _run(q, k, v, spec, shp, *, causal, sm_scale, calibration, trace, mode):
    return run_dense(q, k, v, spec, shp, causal, sm_scale, trace, FloatOperands)


def _kv_bytes(spec, *, tokens, head_dim, kv_heads, mode, calibration):
    return float_kv_bytes(spec.operands, tokens=tokens, head_dim=head_dim, kv_heads=kv_heads)


SIM_METHOD = SimMethod(NAME, sections=frozenset({"operands"}), exps=("exp2",), run=_run,
                       check_spec=_check_spec, kv_bytes=_kv_bytes)


# -- sim/cost/methods/toy_fp16_bn32.py -------------------------------------------------------
def _build(spec, s, phase, kernel, ctx):
    if phase == "prefill":
        return cost_paths.float_prefill(NAME, spec, s, ctx, None)
    return cost_paths.float_decode("flash_decode", spec, s, ctx)


COST_PATH = CostPath(NAME, {"prefill": (NAME,), "decode": ("flash_decode",)}, _build)


# -- gpu/methods/toy_fp16_bn32.py ------------------------------------------------------------
def _kernel_path():
    from gpu.methods.base import KernelPath
    from gpu.prefill import check_float_spec, launch_prefill

    def prefill(q, k, v, spec, *, causal, sm_scale, launch, trace):
        return launch_prefill(None, None, None, spec, causal=causal, sm_scale=sm_scale,
                              out_dtype=q.dtype, q=q, k=k, v=v, trace=trace, launch=launch)

    return KernelPath(NAME, check_spec=check_float_spec, prefill=prefill)


@pytest.fixture
def toy(tmp_path):
    """The three registry lines (each executor's ``__init__``), and the spec file."""
    from gpu.methods import KERNEL_PATHS
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(SPEC_YAML)
    SIMULATORS.register(NAME, SIM_METHOD)
    COST_PATHS.register(NAME, COST_PATH)
    KERNEL_PATHS.register(NAME, _kernel_path())
    yield path
    for reg in (SIMULATORS, COST_PATHS, KERNEL_PATHS):
        reg.unregister(NAME)


def test_a_new_method_runs_on_every_executor(toy):
    spec = load_method(toy)
    assert spec.method == NAME
    with pytest.raises(ValueError, match="32-key tiles"):
        spec.replace(tiling__block_n=64)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 33, 64)).astype(np.float16)
    k = rng.standard_normal((1, 2, 70, 64)).astype(np.float16)
    v = rng.standard_normal((1, 2, 70, 64)).astype(np.float16)
    out = simulate(q, k, v, spec, causal=True).out
    want = ref.attention(q, k, v, causal=True)
    assert np.abs(out - want).max() < 5e-3
    p = predict(spec, Shape(4, 32, 8, 4096, 4096, 64, True), "h100_sxm")
    assert p.method == NAME and p.time > 0
    assert predict(spec, Shape(4, 32, 8, 1, 4096, 64), "a100_80gb_sxm", phase="decode").time > 0
    assert SIMULATORS.get(NAME).kv_bytes(spec, tokens=10, head_dim=64, kv_heads=2, mode=None,
                                         calibration=None) == 2 * 10 * 2 * 64 * 2


def test_the_kernel_path_runs_under_the_interpreter(toy, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch = pytest.importorskip("torch")
    import gpu
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal(s).astype(np.float16)
               for s in ((1, 2, 17, 64), (1, 1, 40, 64), (1, 1, 40, 64)))
    spec = load_method(toy)
    out = gpu.attention(*(torch.from_numpy(x) for x in (q, k, v)), method=NAME, spec=spec,
                        causal=True)
    want = simulate(q, k, v, spec, causal=True).out
    assert np.abs(out.float().numpy() - want).max() < 2e-3
    assert NAME in gpu.prefill_methods()


def test_the_application_lists_it(toy):
    from qsattn.specs import methods_table
    row = next(r for r in methods_table().splitlines() if NAME in r)
    assert "operands" in row and f"{NAME};" in row and "| yes | - |" in row
