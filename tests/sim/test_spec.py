"""Method specs: every shipped spec loads; every config error path names file, field, expectation."""
from __future__ import annotations

import sys
import subprocess
import textwrap

import pytest

from sim import ConfigError, MethodSpec, available_methods, load_method
from sim.methods import SIMULATORS
from sim.spec import config_dir

METHODS = SIMULATORS.names()


def test_every_method_has_a_shipped_spec():
    assert set(METHODS) <= set(available_methods())


@pytest.mark.parametrize("name", METHODS)
def test_shipped_specs_load_and_roundtrip(name):
    spec = load_method(name)
    assert isinstance(spec, MethodSpec) and spec.method == name and spec.name == name
    # to_dict -> build is the identity (replace with no overrides rebuilds from the dict)
    assert spec.replace() == spec
    assert len(spec.digest) == 12


def test_specs_are_frozen():
    spec = load_method("int8_flash")
    with pytest.raises(AttributeError):
        spec.method = "turbo"  # type: ignore[misc]


def test_overrides_dotted_dunder_and_nested_agree():
    a = load_method("int8_flash", p__rounding="half_even")
    b = load_method("int8_flash", **{"p.rounding": "half_even"})
    c = load_method("int8_flash", p={"rounding": "half_even"})
    assert a == b == c and a.p.rounding == "half_even"
    assert a.p.levels == 127  # the nested override merged, not replaced, its section
    assert a.digest != load_method("int8_flash").digest


def test_overrides_do_not_mutate_the_base_spec():
    base = load_method("turbo")
    changed = base.replace(softmax__exp="exp2")
    assert base.softmax.exp == "sas" and changed.softmax.exp == "exp2"


def test_load_method_accepts_a_spec_and_a_path(tmp_path):
    spec = load_method("fp16_flash")
    assert load_method(spec) is spec
    path = config_dir() / "methods" / "fp16_flash.yaml"
    assert load_method(path) == spec
    assert load_method(str(path)) == spec


def test_spec_helpers():
    s = load_method("double_sparse")
    assert s.sparse.r(128) == 32 and s.sparse.k(4096) == 256 and s.sparse.k(1) == 1
    with pytest.raises(ValueError, match="label_channels.*exceeds head dim"):
        load_method("double_sparse", sparse__label_channels=200).sparse.r(128)
    with pytest.raises(ValueError, match="token_budget.*exceeds"):
        load_method("double_sparse", sparse__token_budget=10).sparse.k(5)
    q = load_method("turbo").q
    assert q.block(128) == (1, 1, 128, None)
    assert load_method("int8_flash").v.block(64) == (1, 1, None, None)


# (overrides, field named in the message, fragment of the expectation)
BAD_OVERRIDES = [
    ({"p__rounding": "nearest"}, "p.rounding", "one of 'half_even'"),
    ({"p__levels": "127"}, "p.levels", "an integer"),
    ({"p__levels": True}, "p.levels", "an integer"),
    ({"p__levels": 0}, "p.levels", "a value in [1, 255]"),
    ({"tiling__block_m": 96}, "tiling", "power of two"),
    ({"tiling__block_n": 512}, "tiling.block_n", "[1, 256]"),
    ({"q__bits": 5}, "q", "bits must be one of"),
    ({"q__granularity": "per_row"}, "q.granularity", "per_token"),
    ({"q__block_tokens": 32}, "q", "block_tokens only applies"),
    ({"softmax__exp": "sas"}, "softmax", "sas section is missing"),
    ({"bogus": 1}, "bogus", "a known field of MethodSpec"),
    ({"p__bogus": 1}, "p.bogus", "a known field of PQuant"),
    ({"method": "turbo"}, "MethodSpec", "needs a 'kvcache' section"),
    ({"sparse": {"channel_metric": "qk", "label_fraction": 0.25, "label_bits": 4,
                 "token_fraction": 0.0625}}, "sparse", "no 'sparse' section"),
    ({"p": None}, "MethodSpec", "needs a 'p' section"),
    ({"tiling": 64}, "tiling", "a mapping (Tiling)"),
]


@pytest.mark.parametrize("overrides,field,expected", BAD_OVERRIDES,
                         ids=[next(iter(o)) + "=" + repr(next(iter(o.values())))[:20]
                              for o, _, _ in BAD_OVERRIDES])
def test_bad_field_names_file_field_and_expectation(overrides, field, expected):
    with pytest.raises(ConfigError) as e:
        load_method("int8_flash", **overrides)
    msg = str(e.value)
    assert "int8_flash.yaml" in msg, msg
    assert f"'{field}'" in msg, msg
    assert expected in msg, msg


@pytest.mark.parametrize("name,overrides,fragment", [
    ("turbo", {"softmax__sas__coefficients": [1.0, 0.5]}, "degree + 1"),
    ("turbo", {"softmax__sas__threshold": -9.5}, "LUT entries"),
    ("turbo", {"kvcache__low_share": 1.5}, "[0, 1]"),
    ("turbo", {"kvcache__high_bits": 3}, "2, 4 or 8"),
    ("double_sparse", {"sparse__label_bits": 3}, "2, 4, 8 or 16"),
    ("double_sparse", {"sparse__channel_metric": "v"}, "'qk'"),
    ("fp8_flash", {"operands__scale": "none"}, "per_tensor"),
    ("fp8_flash", {"operands__format": "fp16"}, "needs an fp8"),
    ("fp16_flash", {"operands__format": "fp8_e4m3", "operands__scale": "per_tensor"},
     "fp16 or bf16"),
    ("fp16_flash", {"softmax__exp": "sas", "softmax__sas": {
        "degree": 1, "coefficients": [1.0, -0.5], "max_rel_error": 0.1, "fit": "x",
        "lut_entries": 8, "threshold": -7.0}}, "implements ['exp2']"),
])
def test_cross_field_rules(name, overrides, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        load_method(name, **overrides)
    assert fragment in str(e.value), str(e.value)


def test_missing_field_in_a_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent("""\
        method: fp16_flash
        description: x
        source: y
        tiling: {block_m: 64}
        softmax: {exp: exp2}
        operands: {format: fp16, scale: none}
    """))
    with pytest.raises(ConfigError) as e:
        load_method(path)
    assert str(path) in str(e.value) and "'tiling.block_n'" in str(e.value)
    assert "missing field" in str(e.value)


def test_yaml_syntax_error_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_method(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="a mapping at the top level"):
        load_method(lst)


def test_unknown_method_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"method: expected one of \[.*int8_flash.*got 'int9'"):
        load_method("int9")
    with pytest.raises(ConfigError, match="no such file"):
        load_method("/nonexistent/spec.yaml")
    with pytest.raises(TypeError, match="name_or_path"):
        load_method(42)  # type: ignore[arg-type]


def test_importing_sim_does_not_import_torch_or_triton():
    code = "import sim, sys; assert 'torch' not in sys.modules and 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
