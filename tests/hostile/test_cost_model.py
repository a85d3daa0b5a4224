"""Hostile inputs to the cost model: shapes, phases, kernels, tiers, clocks, launches, specs,
hardware arguments. Hardware files are in test_configs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim import load_method
from sim.cost import Shape, load_hardware, predict
from sim.cost.shape import LIMITS

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
S = Shape(2, 8, 2, 512, 512, 64)
DEC = Shape(2, 8, 2, 1, 4096, 128)


@pytest.mark.parametrize("field", list(LIMITS))
def test_shape_sizes(hostile, field):
    base = dict(batch=1, q_heads=8, kv_heads=2, q_len=16, kv_len=16, head_dim=64)
    for bad in (0, -1, 2.0, "8", None, True, np.float32(8), LIMITS[field] + 1, 10 ** 30):
        kw = dict(base, **{field: bad})
        hostile.error(lambda: Shape(**kw), f"Shape.{field}", start=True, case=f"{field}={bad!r}")


def test_shape_rules(hostile):
    hostile.error(lambda: Shape(1, 6, 4, 16, 16, 64), "Shape.q_heads", start=True)
    hostile.error(lambda: Shape(1, 8, 8, 16, 16, 60), "Shape.head_dim", start=True)
    hostile.error(lambda: Shape(1, 8, 8, 16, 16, 64, "yes"), "Shape.causal", start=True)
    hostile.error(lambda: Shape(1, 8, 8, 16, 16, 64, 1), "Shape.causal", start=True)
    hostile.correct(lambda: Shape(np.int64(1), np.int32(8), 8, 16, 16, 64, np.bool_(True)),
                    lambda s: s == Shape(1, 8, 8, 16, 16, 64, True) and type(s.batch) is int)


BAD_PREDICT = [
    (dict(phase="train"), "phase"), (dict(tier="fast"), "tier"),
    (dict(clock="turbo"), "clock"), (dict(kernel="nokernel"), "kernel"),
    (dict(kernel="flash_decode"), "kernel"), (dict(shape=(1, 8, 8, 16, 16, 64)), "shape"),
    (dict(hardware="nope"), "hardware"), (dict(hardware=3), "hardware"),
    (dict(hardware="/no/such.yaml"), "/no/such.yaml"), (dict(spec="nope"), "spec"),
    (dict(spec=3.5), "spec"), (dict(launch={"block_m": 3}), "launch['block_m']"),
    (dict(launch={"block_m": 48}), "launch['block_m']"),
    (dict(launch={"block_m": 512}), "launch['block_m']"),
    (dict(launch={"num_warps": 6}), "launch['num_warps']"),
    (dict(launch={"num_warps": 0}), "launch['num_warps']"),
    (dict(launch={"num_stages": -1}), "launch['num_stages']"),
    (dict(launch={"num_stages": "2"}), "launch['num_stages']"),
    (dict(launch={"num_stages": 2.0}), "launch['num_stages']"),
    (dict(launch={"block_m": True}), "launch['block_m']"),
    (dict(launch={"blok_m": 64}), "launch"), (dict(launch=[64]), "launch"),
    (dict(launch={"pipe": "yes"}), "launch['pipe']"),
    (dict(tier="calibrated", hardware="a100_40gb"), "calibrated"),
    (dict(spec="double_sparse"), "phase"),
]


@pytest.mark.parametrize("kw,name", BAD_PREDICT, ids=[str(k)[:40] for k, _ in BAD_PREDICT])
def test_predict_bad_arguments(hostile, kw, name):
    args = dict(spec="int8_flash", shape=S, hardware="h100_sxm")
    args.update(kw)
    spec, shape, hw = args.pop("spec"), args.pop("shape"), args.pop("hardware")
    hostile.error(lambda: predict(spec, shape, hw, **args), name,
                  exc=(ValueError, TypeError, FileNotFoundError))


def test_predict_infers_the_phase(hostile):
    """phase=None: decode exactly when q_len == 1 (sim.cost.predict's inference)."""
    hostile.correct(lambda: predict("int8_flash", S, "h100_sxm", phase=None),
                    lambda p: p.phase == "prefill")
    hostile.correct(lambda: predict("fp16_flash", DEC, "h100_sxm", phase=None),
                    lambda p: p.phase == "decode")


@pytest.mark.parametrize("method", ("fp16_flash", "turbo", "double_sparse", "fp8_flash",
                                    "int8_flash"))
def test_decode_prices_one_row(hostile, method):
    """A decode step with q_len > 1 is refused, never priced as q_len 1."""
    hostile.error(lambda: predict(method, Shape(1, 8, 8, 4096, 4096, 128), "h100_sxm",
                                  phase="decode"), "shape.q_len", start=True)
    hostile.error(lambda: predict(method, DEC, "h100_sxm", phase="decode",
                                  launch={"num_warps": 4}), "launch", start=True)


def test_double_sparse_budget_agrees_with_the_simulator(hostile):
    spec = load_method("double_sparse", sparse__token_budget=10_000)
    hostile.error(lambda: predict(spec, DEC, "h100_sxm", phase="decode"),
                  "sparse.token_budget", start=True)
    spec = load_method("double_sparse", sparse__label_channels=200)
    hostile.error(lambda: predict(spec, DEC, "h100_sxm", phase="decode"),
                  "sparse.label_channels", start=True)


def test_unsupported_units_are_their_own_error(hostile):
    from sim.cost.hardware import UnsupportedOnHardware
    hostile.error(lambda: predict("fp8_flash", S, "a100_80gb_sxm"), "hardware",
                  exc=UnsupportedOnHardware, start=True)


@settings(max_examples=40, **SETTINGS)
@given(B=st.integers(1, 64), G=st.sampled_from([1, 2, 4, 8]), Hkv=st.integers(1, 16),
       L=st.integers(1, 1 << 17), D=st.sampled_from([64, 128]), causal=st.booleans(),
       method=st.sampled_from(["fp16_flash", "int8_flash", "turbo", "fp8_flash"]),
       tier=st.sampled_from(["roofline", "tiled"]))
def test_prefill_prices_are_finite_and_monotone(hostile, B, G, Hkv, L, D, causal, method, tier):
    """Any valid shape: a finite positive time, no faster than the roofline of the same call,
    and no faster than half the batch (work grows with the batch)."""
    s = Shape(B, G * Hkv, Hkv, L, L, D, causal)

    def check(p):
        assert math.isfinite(p.time) and p.time > 0 and p.hbm_bytes > 0
        roof = predict(method, s, "h100_sxm", tier="roofline").time
        assert p.time >= roof * (1 - 1e-9)
        return True

    hostile.either(lambda: predict(method, s, "h100_sxm", tier=tier), ("shape/tiling",), check,
                   case=f"{method} {s.label()} {tier}")


def test_huge_shapes_price_quickly(hostile):
    """The largest shapes allowed are priced in closed form (no per-tile arrays)."""
    import time
    s = Shape(1, 8, 8, LIMITS["q_len"], LIMITS["kv_len"], 128, True)
    t0 = time.perf_counter()
    hostile.correct(lambda: predict("int8_flash", s, "h100_sxm").time, math.isfinite)
    assert time.perf_counter() - t0 < 5


def test_hardware_argument_forms(hostile, tmp_path):
    hw = load_hardware("h100_sxm")
    base = predict("int8_flash", S, "h100_sxm").time
    hostile.correct(lambda: predict("int8_flash", S, hw).time, lambda t: t == base)
    from pathlib import Path
    from sim.spec import config_dir
    path = Path(config_dir()) / "hardware" / "h100_sxm.yaml"
    hostile.correct(lambda: predict("int8_flash", S, path).time, lambda t: t == base)
    hostile.error(lambda: predict("int8_flash", S, tmp_path), str(tmp_path),
                  exc=(ValueError, TypeError))
