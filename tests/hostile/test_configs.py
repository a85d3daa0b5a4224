"""Hostile configs: method specs and overrides, YAML files, hardware files and their measured
overlays, experiment configs. Every refusal is a ConfigError naming the file and the dotted
field; every accepted value is the value asked for."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsattn.configs import AccuracyConfig, BenchConfig, ModelConfig, ValidateConfig, \
    load_experiment
from qsattn.roofline import load_config as load_roofline
from sim import ConfigError, load_method
from sim.cost import load_hardware
from sim.cost.hardware import apply_measured
from sim.schema import MAX_DEPTH, MAX_VALUES
from sim.spec import config_dir

SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
CONFIGS = config_dir()


class _Drop:
    """Marks a field to remove (a stable repr: test ids must agree across xdist workers)."""

    def __repr__(self):
        return "DROP"


_DROP = _Drop()


def _write(tmp_path, name, data) -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(p)


# ---- spec overrides ------------------------------------------------------------------------
BAD_OVERRIDES = [
    ({"p__levels": math.nan}, "p.levels"), ({"p__levels": 127.0}, "p.levels"),
    ({"p__levels": "127"}, "p.levels"), ({"p__levels": True}, "p.levels"),
    ({"p__levels": 10 ** 30}, "p.levels"), ({"p__levels": 0}, "p.levels"),
    ({"p__saturate": "no"}, "p.saturate"), ({"p__saturate": 0}, "p.saturate"),
    ({"p__saturate": "false"}, "p.saturate"), ({"p__rounding": "nearest"}, "p.rounding"),
    ({"p__rounding": None}, "p.rounding"), ({"tiling__block_m": 96}, "tiling"),
    ({"tiling__block_m": 16.5}, "tiling.block_m"), ({"tiling__block_n": -64}, "tiling.block_n"),
    ({"tiling__block_n": 512}, "tiling.block_n"), ({"tiling__block_m": [64]}, "tiling.block_m"),
    ({"tiling": 64}, "tiling"), ({"tiling__block_m__x": 1}, "tiling.block_m.x"),
    ({"q__bits": 5}, "q"), ({"q__bits": 8.0}, "q.bits"), ({"q__granularity": "row"}, "q.granularity"),
    ({"q__symmetric": "yes"}, "q.symmetric"), ({"k__block_tokens": 0}, "k.block_tokens"),
    ({"softmax__exp": "exp"}, "softmax.exp"), ({"softmax__exp": "sas"}, "softmax"),
    ({"bogus": 1}, "bogus"), ({"p__bogus": 1}, "p.bogus"), ({"p__level": 3}, "p.level"),
    ({"method": "nope"}, "method"), ({"method": "turbo"}, "MethodSpec"),
    ({"sparse": {"channel_metric": "qk"}}, "sparse"), ({"p": None}, "MethodSpec"),
    ({"name": 3}, "name"), ({"description": None}, "description"),
]


@pytest.mark.parametrize("overrides,field", BAD_OVERRIDES,
                         ids=[f"{next(iter(o))}={next(iter(o.values()))!r}"[:40]
                              for o, _ in BAD_OVERRIDES])
def test_bad_spec_overrides(hostile, overrides, field):
    e = hostile.error(lambda: load_method("int8_flash", **overrides), field, exc=ConfigError)
    assert "int8_flash.yaml" in str(e)


@pytest.mark.parametrize("method,overrides,field", [
    ("fp16_flash", {"p__levels": 3}, "p"), ("fp8_flash", {"operands__scale": "none"}, "operands"),
    ("turbo", {"kvcache__low_share": math.inf}, "kvcache.low_share"),
    ("turbo", {"kvcache__low_share": 1.5}, "kvcache.low_share"),
    ("turbo", {"kvcache__high_bits": 3}, "kvcache"),
    ("turbo", {"softmax__sas__coefficients": [1.0, math.nan, 0.5]}, "softmax.sas.coefficients[1]"),
    ("turbo", {"softmax__sas__threshold": 1.0}, "softmax.sas.threshold"),
    ("double_sparse", {"sparse__token_fraction": -0.1}, "sparse.token_fraction"),
    ("double_sparse", {"sparse__label_bits": 3}, "sparse"),
    ("double_sparse", {"sparse__token_budget": 0}, "sparse.token_budget"),
    ("double_sparse", {"sparse__min_tokens": 2.5}, "sparse.min_tokens"),
])
def test_bad_overrides_of_each_method(hostile, method, overrides, field):
    hostile.error(lambda: load_method(method, **overrides), field, exc=ConfigError)


@settings(max_examples=60, **SETTINGS)
@given(field=st.sampled_from(["p.levels", "tiling.block_n", "p.saturate", "p.rounding",
                              "q.bits", "k.block_tokens", "p.arithmetic"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                       st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_override_values_property(hostile, field, value):
    """Any value for a field: a ConfigError naming that field (or its section, for a rule
    across fields), or a spec holding exactly the value."""
    section, name = field.split(".")

    def check(spec):
        assert getattr(getattr(spec, section), name) == value
        return True

    hostile.either(lambda: load_method("int8_flash", **{field: value}),
                   (field, section, "MethodSpec"), check, case=f"{field}={value!r}")


# ---- YAML files ----------------------------------------------------------------------------
def _bomb(levels=9, width=9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nmethod: *a{levels - 1}\n"


YAML_FILES = [
    ("syntax", "method: [int8_flash\n"),
    ("tabs", "method:\tint8_flash\n\tx: 1\n"),
    ("list top", "- 1\n- 2\n"),
    ("scalar top", "42\n"),
    ("bomb", _bomb()),
    ("self alias", "a: &a [*a]\nmethod: *a\n"),
    ("deep", "method: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"),
    ("very deep", "method: " + "[" * 2000 + "]" * 2000 + "\n"),
    ("python tag", "method: !!python/object/apply:os.system ['true']\n"),
    ("huge int", "tiling: {block_m: " + "9" * 5000 + ", block_n: 64}\n"),
    ("dup keys ok", "name: a\nname: b\n"),
]


@pytest.mark.parametrize("case,text", YAML_FILES, ids=[c[0] for c in YAML_FILES])
def test_bad_yaml_spec_files(hostile, tmp_path, case, text):
    path = _write(tmp_path, "spec.yaml", text)
    hostile.error(lambda: load_method(path), path, exc=ConfigError, start=True, case=case)


def test_unreadable_spec_files(hostile, tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    hostile.error(lambda: load_method(str(tmp_path / "dir.yaml")), str(tmp_path / "dir.yaml"),
                  exc=ConfigError, start=True)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    hostile.error(lambda: load_method(str(binary)), str(binary), exc=ConfigError, start=True)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (5 << 20))
    hostile.error(lambda: load_method(str(big)), str(big), exc=ConfigError, start=True)
    hostile.error(lambda: load_method(str(tmp_path / "none.yaml")), str(tmp_path / "none.yaml"),
                  exc=ConfigError, start=True)


def test_bomb_refused_fast(hostile, tmp_path):
    """A billion-laughs document is refused after at most MAX_VALUES values, not expanded."""
    import time
    path = _write(tmp_path, "bomb.yaml", _bomb(levels=12, width=10))
    t0 = time.perf_counter()
    hostile.error(lambda: load_method(path), path, exc=ConfigError, start=True)
    assert time.perf_counter() - t0 < 5.0
    assert MAX_VALUES < 10 ** 12


# ---- hardware files ------------------------------------------------------------------------
H100 = yaml.safe_load((CONFIGS / "hardware" / "h100_sxm.yaml").read_text())


def _hw(tmp_path, **changes) -> str:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in H100.items()}
    data["name"] = "hostile"
    for key, value in changes.items():
        field, _, sub = key.partition("__")
        if value is _DROP:
            data.pop(field)
        elif sub:
            data[field][sub] = value
        else:
            data[field] = value
    return _write(tmp_path, "hostile.yaml", data)


DIVIDING = ("sm_count", "boost_clock", "sustained_clock", "tc_fp16", "tc_int8", "fp32",
            "fp16x2", "int32", "sfu", "cvt", "issue", "hbm_bandwidth", "l2_bandwidth",
            "smem_bandwidth", "smem_per_block", "registers_per_sm", "max_threads_per_sm",
            "max_blocks_per_sm")


@pytest.mark.parametrize("field", DIVIDING)
@pytest.mark.parametrize("value", (0, -1.0, math.nan, math.inf, "fast", None, True))
def test_hardware_values_that_divide(hostile, tmp_path, field, value):
    path = _hw(tmp_path, **{f"{field}__value": value})
    hostile.error(lambda: load_hardware(path), f"{field}.value", exc=ConfigError)


@pytest.mark.parametrize("field", ("sm_count", "registers_per_sm", "max_threads_per_sm",
                                   "max_blocks_per_sm", "max_regs_per_thread"))
def test_hardware_counts_are_whole(hostile, tmp_path, field):
    path = _hw(tmp_path, **{f"{field}__value": 132.5})
    hostile.error(lambda: load_hardware(path), f"{field}.value", exc=ConfigError)


@pytest.mark.parametrize("changes,field", [
    ({"sm_count__unit": "SMs"}, "sm_count.unit"), ({"sm_count__kind": "guess"}, "sm_count.kind"),
    ({"sm_count__extra": 1}, "sm_count.extra"), ({"sm_count": 132}, "sm_count"),
    ({"sm_count": _DROP}, "sm_count"), ({"arch": "volta"}, "arch"), ({"arch": None}, "arch"),
    ({"tc_fp8": {"value": 0, "unit": "flop/clk/SM", "source": "x", "kind": "spec"}},
     "tc_fp8.value"), ({"hbm_bandwidth__value": 10 ** 400}, "hbm_bandwidth.value"),
    ({"bogus": 1}, "bogus"), ({"sm_count__source": 3}, "sm_count.source"),
])
def test_hardware_fields(hostile, tmp_path, changes, field):
    path = _hw(tmp_path, **changes)
    hostile.error(lambda: load_hardware(path), field, exc=ConfigError)


def test_hardware_zero_latency_is_valid(hostile, tmp_path):
    """Values the model never divides by may be 0 (an ideal part), and the model stays finite."""
    from sim.cost import Shape, predict
    path = _hw(tmp_path, launch_overhead__value=0, l2_latency__value=0, hbm_latency__value=0,
               l2_size__value=0)
    hostile.correct(lambda: predict("fp16_flash", Shape(1, 8, 8, 512, 512, 64), path).time,
                    lambda t: math.isfinite(t) and t > 0)


@pytest.mark.parametrize("overlay,field", [
    ({"sfu": {"value": 0, "unit": "inst/clk/SM", "source": "x", "kind": "measured"}}, "sfu.value"),
    ({"sfu": {"value": math.nan, "unit": "inst/clk/SM", "source": "x", "kind": "measured"}},
     "sfu.value"),
    ({"sfu": {"value": 16, "unit": "inst/clk/SM", "source": "x", "kind": "spec"}}, "sfu.kind"),
    ({"sfu": {"value": 16, "unit": "op/s", "source": "x", "kind": "measured"}}, "sfu.unit"),
    ({"speed": 1}, "speed"), ({"name": "h200"}, "name"),
])
def test_measured_overlay(hostile, tmp_path, overlay, field):
    path = _write(tmp_path, "measured.yaml", overlay)
    hw = load_hardware("h100_sxm")
    e = hostile.error(lambda: apply_measured(hw, path), field, exc=ConfigError)
    assert path in str(e)


# ---- experiment configs --------------------------------------------------------------------
EXPERIMENTS = {
    "accuracy": (AccuracyConfig, "accuracy_synthetic.yaml"),
    "bench": (BenchConfig, "bench_h100.yaml"),
    "model": (ModelConfig, "model_smollm2.yaml"),
    "validate": (ValidateConfig, "validate_h100.yaml"),
}


def _experiment(name):
    return yaml.safe_load((CONFIGS / "experiments" / EXPERIMENTS[name][1]).read_text())


def _set(data, dotted, value):
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DROP:
        node.pop(parts[-1])
    else:
        node[parts[-1]] = value


BAD_EXPERIMENTS = [
    ("accuracy", "lengths", [-5], "lengths[0]"), ("accuracy", "lengths", [64.5], "lengths[0]"),
    ("accuracy", "seeds", ["abc"], "seeds[0]"), ("accuracy", "seeds", [-1], "seeds[0]"),
    ("accuracy", "shape.batch", 0, "shape.batch"), ("accuracy", "shape.q_heads", 3, "shape.q_heads"),
    ("accuracy", "causal", ["no"], "causal[0]"), ("accuracy", "inputs.normal.dist", "cauchy",
                                                   "inputs.normal.dist"),
    ("accuracy", "inputs.k_outliers.outlier_scale", [50, 10], "inputs.k_outliers.outlier_scale"),
    ("accuracy", "inputs.k_outliers.outlier_scale", [math.nan, 10],
     "inputs.k_outliers.outlier_scale[0]"),
    ("accuracy", "claim.method", "nope", "claim.method"), ("accuracy", "lenghts", [1], "lenghts"),
    ("accuracy", "methods", {}, "methods"), ("accuracy", "shape", _DROP, "shape"),
    ("bench", "prefill.tune_launch", [[128, 8]], "prefill.tune_launch[0]"),
    ("bench", "prefill.warmup", -1, "prefill.warmup"),
    ("bench", "decode.turbo_kinds", ["int3"], "decode.turbo_kinds[0]"),
    ("model", "protocols.0.window", 1, "protocols[0].window"),
    ("model", "protocols.0.baseline", "nope", "protocols[0].baseline"),
    ("model", "protocols.2.contexts", [], "protocols[2].contexts"),
    ("model", "comparisons.0.b", "kivi2", "comparisons[0].b"),
    ("model", "baseline", "nope", "baseline"), ("model", "needle.digits", 40, "needle.digits"),
    ("model", "layer_error.layers", "some", "layer_error.layers"),
    ("model", "variants.0.id", "fp8_flash", "variants"),
    ("validate", "prefill_methods", ["fp16_flsh"], "prefill_methods[0]"),
    ("validate", "decode_methods", ["int8_flash"], "decode_methods[0]"),
    ("validate", "numerics.ulp_bound", {}, "numerics.ulp_bound.fp16_flash"),
    ("validate", "timing.cold_l2", "yes", "timing.cold_l2"),
    ("validate", "shapes.0.q_heads", 3, "shapes[0].q_heads"),
]


@pytest.mark.parametrize("which,dotted,value,field", BAD_EXPERIMENTS,
                         ids=[f"{w}:{d}={v!r}"[:50] for w, d, v, _ in BAD_EXPERIMENTS])
def test_bad_experiment_configs(hostile, tmp_path, which, dotted, value, field):
    data = _experiment(which)
    _set(data, dotted, value)
    path = _write(tmp_path, f"{which}.yaml", data)
    e = hostile.error(lambda: load_experiment(path, EXPERIMENTS[which][0]), field,
                      exc=ConfigError)
    assert path in str(e)


@pytest.mark.parametrize("which", sorted(EXPERIMENTS))
def test_shipped_experiments_load(hostile, which):
    cls, name = EXPERIMENTS[which]
    hostile.correct(lambda: load_experiment(CONFIGS / "experiments" / name, cls),
                    lambda d: isinstance(d, dict) and d)


@pytest.mark.parametrize("dotted,value,field", [
    ("tier", "fast", "tier"), ("clock", "turbo", "clock"),
    ("prefill_methods", ["fp16_flash:nokernel"], "prefill_methods[0]"),
    ("decode_methods", ["int8_flash", "nope"], "decode_methods[1]"),
    ("prefill_methods", ["double_sparse"], "prefill_methods[0]"),
    ("prefill.head_dim", 4, "prefill.head_dim"), ("decode.lengths", [0], "decode.lengths[0]"),
])
def test_bad_roofline_configs(hostile, tmp_path, dotted, value, field):
    data = yaml.safe_load((CONFIGS / "experiments" / "roofline.yaml").read_text())
    _set(data, dotted, value)
    path = _write(tmp_path, "roofline.yaml", data)
    hostile.error(lambda: load_roofline(path), field, exc=ConfigError)


def test_numpy_values_in_overrides(hostile):
    """numpy scalars are the numbers they hold (an int64 block size, a numpy bool flag)."""
    hostile.correct(lambda: load_method("int8_flash", tiling__block_n=np.int64(32),
                                        p__saturate=np.bool_(True)),
                    lambda s: s.tiling.block_n == 32 and s.p.saturate is True)


def test_schema_exclusive_bound(hostile):
    """``meta(gt=0)``: a value that divides refuses 0 (and NaN, which fails every comparison)."""
    from dataclasses import dataclass, field

    from sim.schema import build, meta

    @dataclass(frozen=True)
    class Rate:
        per_s: float = field(metadata=meta("a rate the model divides by", gt=0))

    for bad in (0, 0.0, -1.0, math.nan, "1"):
        hostile.error(lambda: build(Rate, {"per_s": bad}, where="rate.yaml"), "per_s",
                      exc=ConfigError, case=repr(bad))
    hostile.correct(lambda: build(Rate, {"per_s": 1e-300}), lambda r: r.per_s == 1e-300)
