"""The architecture launch tables (sim.arch): the cost model's view (prefill_launch) and the
launchers' full entry (prefill_kernel_launch, kernel triton | gluon), and the schema's errors."""
import pytest

from sim import arch
from sim.schema import ConfigError


def test_prefill_launch_keeps_the_cost_model_contract():
    for a in ("hopper", "ampere"):
        for m in ("int8_flash", "turbo", "fp16_flash", "double_sparse"):
            for d in (64, 128):
                assert set(arch.prefill_launch(a, m, d)) == {"block_m", "num_warps",
                                                             "num_stages"}


def test_hopper_table_runs_gluon():
    for m in ("int8_flash", "turbo", "fp16_flash"):
        e = arch.prefill_kernel_launch("hopper", m, 128, 64)
        assert e["kernel"] == "gluon" and e["block_m"] == 128
        assert set(e["gluon"]) <= set(arch.GLUON_OPTIONS)
    assert arch.prefill_kernel_launch("ampere", "int8_flash", 128)["kernel"] == "triton"
    assert arch.prefill_kernel_launch("hopper", "double_sparse", 128)["kernel"] == "triton"


def _table(monkeypatch, entry):
    doc = {"prefill": {"default": {128: {"block_m": 128, "num_warps": 8, "num_stages": 3}},
                       "int8_flash": {128: entry}}}
    monkeypatch.setattr(arch, "kernel_data", lambda a, n: doc)


def test_block_n_overrides(monkeypatch):
    _table(monkeypatch, {"kernel": "gluon", "block_m": 128, "num_warps": 8, "num_stages": 4,
                         "gluon": {"merged": True, "block_n": {128: {"unroll": False}}}})
    assert arch.prefill_kernel_launch("hopper", "int8_flash", 128, 64)["gluon"] == \
        {"merged": True}
    assert arch.prefill_kernel_launch("hopper", "int8_flash", 128, 128)["gluon"] == \
        {"merged": True, "unroll": False}
    assert arch.prefill_launch("hopper", "int8_flash", 128) == \
        {"block_m": 128, "num_warps": 8, "num_stages": 4}


@pytest.mark.parametrize("entry, field", [
    ({"kernel": "cuda", "block_m": 128, "num_warps": 8, "num_stages": 4}, "kernel"),
    ({"kernel": "gluon", "block_m": 64, "num_warps": 4, "num_stages": 4, "gluon": {}},
     "block_m"),
    ({"kernel": "gluon", "block_m": 128, "num_warps": 8, "num_stages": 4,
      "gluon": {"mergd": True}}, "mergd"),
    ({"kernel": "gluon", "block_m": 128, "num_warps": 8, "num_stages": 4,
      "gluon": {"merged": 1}}, "merged"),
    ({"block_m": 128, "num_warps": 8, "num_stages": 4, "gluon": {"merged": True}}, "gluon"),
    ({"block_m": 128, "num_warps": 8}, "int8_flash.128"),
])
def test_bad_entries(monkeypatch, entry, field):
    _table(monkeypatch, entry)
    with pytest.raises(ConfigError, match=field):
        arch.prefill_kernel_launch("hopper", "int8_flash", 128)
