import dataclasses

import pytest

from sim import load_method
from sim.cost import (Shape, UnsupportedOnHardware, available_hardware, load_hardware, overlap,
                      predict)
from sim.cost.kernels import tile_counts
from sim.cost.methods import COST_PATHS, BuildContext


def build(spec, shape, *, phase, kernel, sm_count, ideal, launch=None, arch="hopper"):
    """The launches of one call, as predict builds them (the method's cost path)."""
    return COST_PATHS.get(spec.method).build(spec, shape, phase, kernel,
                                             BuildContext(sm_count, arch, ideal, launch))

A100 = "a100_80gb_sxm"


def one_tile_spec():
    return load_method("fp16_flash", tiling={"block_m": 64, "block_n": 64})


# -- tiles ------------------------------------------------------------------------------------
def test_tile_counts_hand_derived():
    # non-causal 100x100 in 64x64 tiles: 2 query blocks x 2 kv tiles, all visible
    assert tile_counts(100, 100, 64, 64, False) == (2, 4, 0, 2, 10000)
    # causal 128x128: block 0 sees tile 0 (cut by the diagonal), block 1 sees tiles 0, 1
    # (tile 1 cut): 3 tiles, 2 masked; visible pairs = 128*129/2
    assert tile_counts(128, 128, 64, 64, True) == (2, 3, 2, 2, 8256)
    # chunked prefill: 64 new rows after 192 cached keys see all 4 tiles, only the last cut
    assert tile_counts(64, 256, 64, 64, True) == (1, 4, 1, 4, 64 * 192 + 64 * 65 // 2)
    # decode row sees every key, no mask; a ragged last tile is masked at the kv_len bound
    assert tile_counts(1, 1024, 16, 64, True) == (1, 16, 0, 16, 1024)
    assert tile_counts(1, 1000, 16, 64, True) == (1, 16, 1, 16, 1000)


def test_one_tile_fp16_counts():
    s = Shape(1, 1, 1, 64, 64, 64)
    (lau,) = build(one_tile_spec(), s, phase="prefill", kernel="fp16_flash", sm_count=108,
                   ideal=False)
    assert lau.ctas == 1 and lau.warps == 4
    assert lau.tc == {"fp16": 2 * 64 * 64 * 64 * 2}          # QK^T + PV
    # SASS mix (hopper's "fp16" variant) at 64 x 64 / 128 threads = 32 scores per thread, exactly
    # its block_n=64 point; D=64 holds 32 instead of 64 accumulator elements per thread (one
    # FMUL each fewer); epilogue per row: MUFU.RCP + D FMUL.
    assert lau.instr["sfu"] == 34 * 128 + 64
    assert lau.instr["fp32"] == (181 - 32) * 128 + 64 * 64
    assert lau.instr["other"] == 89 * 128 and lau.mma == 0.0   # MMAs issue inside the mix
    assert lau.hbm == 4 * 64 * 64 * 2                          # Q, K, V read once, O written
    assert lau.l2 == 4 * 64 * 64 * 2
    tile = 64 * 64 * 2 * 2
    assert lau.smem == 2 * 64 * 64 * 2 + tile * (1 + 4)        # Q staged; K/V write + 4 warps
    assert lau.smem_cta == 64 * 64 * 2 + 2 * tile              # Q + 2 stages of K/V


def test_one_tile_roofline_equals_hand_formula():
    hw = load_hardware(A100)
    s = Shape(1, 1, 1, 64, 64, 64)
    p = predict(one_tile_spec(), s, hw, tier="roofline")
    t_tc = 2 * 64 * 64 * 128 / hw.peak("tc_fp16")
    t_xu = (4096 + 64) / hw.peak("sfu")
    t_hbm = 32768 / (hw.v("hbm_bandwidth") * 1e9)
    assert p.time == pytest.approx(max(t_tc, t_xu, t_hbm), rel=1e-12)


def test_gqa_reads_kv_once_per_kv_head():
    spec = load_method("fp16_flash")
    mk = lambda hkv: predict(spec, Shape(1, 8, hkv, 512, 512, 64), A100, tier="roofline")
    kv_head = 2 * 512 * 64 * 2
    assert mk(8).hbm_bytes - mk(2).hbm_bytes == 6 * kv_head
    # decode shares the group's K/V too; tiled L2 reads also count per kv head
    d = lambda hkv: predict(spec, Shape(1, 8, hkv, 1, 4096, 128), A100, phase="decode")
    assert d(8).hbm_bytes > 3.5 * d(2).hbm_bytes


def test_decode_one_row_pads_to_an_mma_tile():
    s = Shape(1, 1, 1, 1, 1024, 128)
    p = predict("fp16_flash", s, A100, phase="decode", kernel="ideal")
    r = predict("fp16_flash", s, A100, phase="decode", tier="roofline")
    assert r.tensor_ops["fp16"] == 2 * 1024 * 256          # useful: one row
    assert p.tensor_ops["fp16"] == 16 * 2 * 1024 * 256      # 16-row MMA tile
    assert p.hbm_bytes >= 2 * 1024 * 128 * 2
    assert p.bound in ("hbm", "launch", "flash_decode:launch", "flash_decode:hbm")


def test_our_fp16_decode_reads_kv_once_per_kv_head():
    # gpu/kernels/decode.py flash_decode_group_kernel: grid (splits, B*Hkv), the G query heads
    # padded to 16 rows on the tensor cores, K/V read once per KV head
    mha, gqa = Shape(8, 32, 32, 1, 32768, 128), Shape(8, 32, 8, 1, 32768, 128)
    H100 = "h100_sxm"
    pm = predict("fp16_flash", mha, H100, phase="decode")
    pg = predict("fp16_flash", gqa, H100, phase="decode")
    kv = 32768 * 128 * 2 * 2                                 # K + V of one KV head
    for p, hkv in ((pm, 32), (pg, 8)):
        # 16-row tiles; 512 tiles per head in 3 x 171 or 9 x 57 walked: 513 tiles of 64 keys
        assert p.tensor_ops == {"fp16": 2 * 2 * 16 * 128 * 513 * 64 * 8 * hkv}
        assert 8 * hkv * kv <= p.l2_bytes == p.hbm_bytes < 1.01 * 8 * hkv * kv
    # splits = min(tiles, cdiv(4 * 132, B*Hkv)): 3 for 256 programs, 9 for 64; then the combine
    assert [(n, c) for n, c, *_ in pm.launches] == [("flash_decode", 768), ("combine", 256)]
    assert [(n, c) for n, c, *_ in pg.launches] == [("flash_decode", 576), ("combine", 256)]
    # HBM-bound: GQA's time follows its K/V bytes (Hkv/Hq of MHA's)
    assert pm.bound == pg.bound == "flash_decode:hbm"
    assert 0.2 < pg.time / pm.time < 0.3
    # the ideal kernel (one CTA per KV head and split, K/V at their byte floor) is the same
    # stream: within a few percent (its splits differ)
    ideal = predict("fp16_flash", gqa, H100, phase="decode", kernel="ideal")
    print(pg.time, ideal.time)
    assert abs(pg.time / ideal.time - 1.0) < 0.05
    # double_sparse's gathered decode: one query head per program (its own selection), the
    # gathered K/V tiles through fp16 tensor-core dots (M = 1 padded to 16)
    ds = predict("double_sparse", gqa, H100, phase="decode")
    assert set(ds.tensor_ops) == {"fp16"}


def test_our_decode_launches():
    s = Shape(8, 32, 8, 1, 16384, 128)
    t = predict("turbo", s, "h100_sxm", phase="decode")
    names = [n for n, *_ in t.launches]
    # Q quant; pass 1 and pass 2 per stored width (INT4 heads, INT2 heads); combine
    assert names == ["q_quant", "turbo_scores4", "turbo_scores2", "turbo_pv4", "turbo_pv2",
                     "combine"]
    d = predict("double_sparse", s, "h100_sxm", phase="decode")
    assert [n for n, *_ in d.launches] == ["label_scores", "topk_select", "sparse_attn",
                                           "combine"]
    # label scores once per KV head (512 tokens per program); one select program per query row
    assert d.launches[0][1] == 8 * 8 * 16384 // 512
    assert d.launches[1][1] == 8 * 32
    for m in ("turbo", "double_sparse"):
        assert predict(m, s, "h100_sxm", phase="decode", kernel="ideal").time < \
            predict(m, s, "h100_sxm", phase="decode").time


def test_causal_halves_prefill_work():
    a = predict("fp16_flash", Shape(1, 32, 32, 8192, 8192, 128), A100)
    c = predict("fp16_flash", Shape(1, 32, 32, 8192, 8192, 128, True), A100)
    ratio = c.tensor_ops["fp16"] / a.tensor_ops["fp16"]
    assert 0.5 < ratio < 0.52            # diagonal tiles computed whole
    assert 0.45 < c.time / a.time < 0.62


def test_mix_interpolates_between_its_sass_points():
    from sim.cost.mixes import mixes
    mx = mixes("hopper")
    FP16, INT8 = mx["fp16"], mx["int8"]
    assert FP16.per_thread_tile(64, 64)["fp32"] == 283        # block_n=128 point
    assert FP16.per_thread_tile(48, 64)["sfu"] == 50          # halfway
    # 32 acc elements fewer: one IADD3 and four FMA-pipe ops (i2f_exact, * vf, rescale) each
    assert INT8.per_thread_tile(64, 32)["int32"] == INT8.at64["int32"] - 32
    assert INT8.per_thread_tile(64, 32)["fp32"] == INT8.at64["fp32"] - 4 * 32
    assert INT8.per_thread_tile(64, 64)["cvt"] == 0            # XU-free conversions
    assert mx["turbo"].at64.get("sfu", 0) == 0                # SAS: no MUFU
    assert mixes("ampere")["int8"].source != INT8.source        # sm_80's own compile


def test_launch_config_changes_occupancy_and_is_validated():
    s = Shape(4, 32, 32, 8192, 8192, 128)
    a = predict("int8_flash", s, "h100_sxm", launch={"block_m": 64, "num_warps": 4})
    b = predict("int8_flash", s, "h100_sxm", launch={"block_m": 64, "num_warps": 4,
                                                       "num_stages": 3})
    assert a.launches[0][2] >= b.launches[0][2] >= 1          # more stages: more smem per CTA
    with pytest.raises(ValueError, match="num_warps"):
        predict("int8_flash", s, "h100_sxm", launch={"num_warps": 6})
    with pytest.raises(ValueError, match="launch"):
        predict("int8_flash", s, "h100_sxm", launch={"warps": 4})
    with pytest.raises(TypeError, match="launch"):
        predict("int8_flash", s, "h100_sxm", launch=[64])


def test_tensor_and_cuda_core_work_serialize():
    # time >= tensor-only time + issue-only time of the same launch (no overlap)
    from sim.cost.model import _rates, unit_times
    s = Shape(4, 32, 32, 8192, 8192, 128)
    hw = load_hardware("h100_sxm")
    p = predict("fp16_flash", s, hw, launch={"block_m": 128, "num_warps": 8, "num_stages": 3})
    (lau,) = build(load_method("fp16_flash"), s, phase="prefill", kernel="fp16_flash",
                   sm_count=132, ideal=False,
                   launch={"block_m": 128, "num_warps": 8, "num_stages": 3})
    r = _rates(hw, "boost")
    ut = unit_times(r, lau)
    issue = (sum(lau.instr.values()) / 32) / r.issue
    assert p.time >= (ut["tensor"] + issue) / 132


# -- overlap --------------------------------------------------------------------------------
def test_overlap_model():
    t = {"tensor": 2.0, "xu": 1.0, "fma": 0.5}
    assert overlap(t, 1) == 3.5          # one warp per scheduler: phases serialize
    assert overlap(t, 2) == 2.0          # max(2, 3.5 / 2)
    assert overlap(t, 8) == 2.0          # enough warps: the slowest unit
    assert overlap({"a": 1.0, "b": 1.0}, 2) == 1.0
    assert overlap({}, 4) == 0.0


def test_breakdown_sums_to_time():
    for m, ph, L in [("fp16_flash", "prefill", 4096), ("turbo", "decode", 8192),
                     ("double_sparse", "decode", 16384), ("int8_flash", "decode", 2048)]:
        L1 = L if ph == "prefill" else 1
        p = predict(m, Shape(4, 32, 8, L1, L, 128), "h100_sxm", phase=ph)
        assert sum(p.breakdown.values()) == pytest.approx(p.time, rel=1e-12), m
        row = p.to_row()
        assert row["bound"] == p.bound and row["time_us"] == pytest.approx(p.time * 1e6)


def test_roofline_tier_is_a_lower_bound():
    for m in ("fp16_flash", "int8_flash", "turbo"):
        for s in (Shape(2, 16, 16, 1000, 1000, 64), Shape(4, 32, 8, 4096, 4096, 128, True)):
            r = predict(m, s, A100, tier="roofline")
            t = predict(m, s, A100)
            assert r.time <= t.time, (m, s)


# -- monotonicity ---------------------------------------------------------------------------
@pytest.mark.parametrize("method,phase", [("fp16_flash", "prefill"), ("int8_flash", "prefill"),
                                          ("turbo", "prefill"), ("fp16_flash", "decode"),
                                          ("turbo", "decode"), ("double_sparse", "decode")])
def test_more_work_never_faster(method, phase):
    prev, ctas = 0.0, 0
    for L in (64, 100, 512, 1000, 4096, 8192, 16384, 32768):
        s = Shape(2, 32, 8, L if phase == "prefill" else 1, L, 128, phase == "prefill")
        p = predict(method, s, "h100_sxm", phase=phase)
        # the grouped fp16 decode at 16 programs: a new split puts more SMs on the K/V stream
        # (L 64 -> 100: 1 -> 2 splits, 16 -> 32 CTAs), which may win back a few percent
        more = (method, phase) == ("fp16_flash", "decode") and p.launches[0][1] > ctas
        assert p.time >= (0.95 if more else 1.0) * prev, (L, p.time, prev)
        prev, ctas = p.time, p.launches[0][1]


def _scaled(hw, field, f):
    q = getattr(hw, field)
    return dataclasses.replace(hw, **{field: dataclasses.replace(q, value=q.value * f)})


@pytest.mark.parametrize("field", ["hbm_bandwidth", "sfu", "tc_fp16", "tc_int8", "fp32",
                                   "fp16x2", "int32", "cvt", "l2_bandwidth", "smem_bandwidth",
                                   "boost_clock"])
def test_faster_unit_never_slower(field):
    base = load_hardware("a100_80gb_sxm")
    fast = _scaled(base, field, 2.0)
    for m, ph, s in [("fp16_flash", "prefill", Shape(4, 32, 32, 4096, 4096, 64)),
                     ("int8_flash", "prefill", Shape(4, 32, 32, 2048, 2048, 64, True)),
                     ("turbo", "decode", Shape(8, 32, 8, 1, 8192, 128)),
                     ("double_sparse", "decode", Shape(8, 32, 32, 1, 8192, 128))]:
        assert predict(m, s, fast, phase=ph).time <= predict(m, s, base, phase=ph).time


def test_more_bytes_never_faster():
    # wider K/V codes on the same shape move more bytes
    s = Shape(8, 32, 8, 1, 16384, 128)
    t8 = predict("int8_flash", s, A100, phase="decode").time
    t16 = predict("fp16_flash", s, A100, phase="decode").time
    assert t16 >= t8


# -- methods ----------------------------------------------------------------------------------
def test_turbo_prefill_uses_no_mufu_for_exp():
    spec = load_method("turbo")
    s = Shape(1, 4, 4, 1024, 1024, 64)
    p = predict(spec, s, A100)
    rows = 4 * 1024                                    # only 1/l per row uses MUFU
    assert p.instructions["sfu"] == rows
    assert p.instructions["fp16x2"] > 0 and p.tensor_ops.keys() == {"int8"}


def test_double_sparse_label_bytes():
    spec = load_method("double_sparse", sparse__label_bits=16, sparse__label_channels=8,
                       sparse__token_fraction=1 / 16)
    s = Shape(1, 32, 32, 1, 16384, 128)
    p = predict(spec, s, A100, phase="decode", tier="roofline")
    dense = predict("fp16_flash", s, A100, phase="decode", tier="roofline")
    # labels 16 B/token/head + gathered 1/16 of 512 B + scores/top-k traffic
    labels, gathered = 32 * 16384 * 16, 32 * 1024 * 512
    assert p.hbm_bytes > labels + gathered
    assert dense.hbm_bytes / p.hbm_bytes < 512 / 48


def test_sage_v1_kernel():
    s = Shape(4, 32, 32, 4096, 4096, 64)
    p = predict("fp16_flash", s, "h100_sxm", kernel="sage_v1")
    assert set(p.tensor_ops) == {"int8", "fp16"} and p.launches[0][0] == "sage_quant"


# -- bad input --------------------------------------------------------------------------------
def test_int4_tensor_cores_on_hopper_raise():
    spec = load_method("int8_flash", q__bits=4, k__bits=4)
    s = Shape(1, 8, 8, 1024, 1024, 64)
    assert "int4" in predict(spec, s, A100).tensor_ops
    with pytest.raises(UnsupportedOnHardware, match="INT4"):
        predict(spec, s, "h100_sxm")


def test_fp8_on_ampere_raises():
    with pytest.raises(UnsupportedOnHardware, match="FP8"):
        predict("fp8_flash", Shape(1, 8, 8, 1024, 1024, 64), A100)


def test_shared_memory_overflow_raises():
    spec = load_method("fp16_flash", tiling={"block_m": 256, "block_n": 256})
    with pytest.raises(ValueError, match="shared memory"):
        predict(spec, Shape(1, 8, 8, 1024, 1024, 256), A100)


@pytest.mark.parametrize("kwargs,match", [
    (dict(phase="train"), "phase"), (dict(tier="exact"), "tier"), (dict(kernel="nope"), "kernel"),
    (dict(clock="turbo"), "clock")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict("fp16_flash", Shape(1, 8, 8, 128, 128, 64), A100, **kwargs)


def test_unknown_method_and_hardware():
    s = Shape(1, 8, 8, 128, 128, 64)
    with pytest.raises(ValueError, match="method"):
        predict("flash_attention_9", s, A100)
    with pytest.raises(ValueError, match="hardware"):
        predict("fp16_flash", s, "tpu_v5")
    with pytest.raises(ValueError, match="decode only"):
        predict("double_sparse", s, A100)
    with pytest.raises(TypeError, match="shape"):
        predict("fp16_flash", (1, 8, 8, 128, 128, 64), A100)


@pytest.mark.parametrize("kw,match", [
    (dict(batch=0), "batch"), (dict(q_heads=6, kv_heads=4), "multiple"),
    (dict(head_dim=60), "head_dim"), (dict(q_len=1.5), "q_len"), (dict(causal=1), "causal")])
def test_bad_shapes(kw, match):
    base = dict(batch=1, q_heads=8, kv_heads=8, q_len=16, kv_len=16, head_dim=64, causal=False)
    base.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        Shape(**base)


@pytest.mark.parametrize("hw", available_hardware())
def test_every_shipped_gpu_prices_every_method_in_both_phases(hw):
    """Every hardware description and its architecture's kernel tables price every method at
    prefill and decode, MHA and GQA (an Ada decode table older than the decode kernels' names
    once raised KeyError here); a unit the GPU lacks is the only accepted refusal."""
    for m in COST_PATHS.names():
        for kv in (32, 8):
            for s in (Shape(2, 32, kv, 2048, 2048, 128, True), Shape(8, 32, kv, 1, 8192, 128)):
                if not COST_PATHS.get(m).kernels.get("prefill" if s.q_len > 1 else "decode"):
                    continue                  # decode-only methods refuse prefill by name
                try:
                    p = predict(m, s, hw)
                except UnsupportedOnHardware:
                    continue
                assert p.time > 0, (hw, m, s)
