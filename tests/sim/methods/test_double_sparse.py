"""Double Sparsity: calibration, labels, budget, exact top-k selection, simulate."""
import math

import numpy as np
import pytest

from sim import load_method, simulate
from sim.numerics.quantize import quantize
from sim.methods.double_sparse import (Calibration, calibrate, label_cache, row_budget, select_topk,
                        simulate_double_sparse)


def _qkv(B=1, Hq=4, Hkv=2, Lq=17, Lk=97, D=32, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    return q, k, v


def _brute_topk(scores_row, visible, k):
    """Independent top-k: repeatedly take the max, lowest index among equals."""
    s = [float(x) for x in scores_row[:visible]]
    chosen = []
    for _ in range(k):
        best = None
        for j, x in enumerate(s):
            if j not in chosen and (best is None or x > s[best]):
                best = j
        chosen.append(best)
    return sorted(chosen)


def test_select_topk_matches_brute_force_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(-3, 4, size=(20, 13)).astype(np.float32)   # many ties
    visible = rng.integers(0, 14, size=20)
    budget = np.minimum(rng.integers(1, 6, size=20), visible)
    sel = select_topk(scores, visible, budget)
    for i in range(20):
        assert np.flatnonzero(sel[i]).tolist() == _brute_topk(scores[i], visible[i], budget[i])


def test_sink_and_recent_are_kept_in_addition():
    s = np.float32([[5, 4, 3, 2, 1, 0, 9]])
    sel = select_topk(s, np.array([6]), np.array([2]), sink=1, recent=1)
    assert np.flatnonzero(sel[0]).tolist() == [0, 1, 2, 5]   # sink 0, recent 5, best others 1, 2


def test_row_budget_rules():
    sp = load_method("double_sparse").sparse
    vis = np.array([0, 1, 16, 17, 100])
    assert row_budget(sp, vis).tolist() == [0, 1, 1, 2, 7]
    sp2 = load_method("double_sparse", sparse__token_budget=5).sparse
    assert row_budget(sp2, vis).tolist() == [0, 1, 5, 5, 5]
    assert sp.k(100) == math.ceil(100 / 16)


def test_calibration_metrics_and_ranking():
    q, k, _ = _qkv(Lq=8, Lk=8)
    k[:, 1, :, 5] *= 20                           # an outlier channel in KV head 1
    for metric in ("k", "qk"):
        cal = calibrate(q, k, metric)
        assert 5 in cal.channels(4)[1].tolist()
    qa, ka = np.abs(q.astype(np.float64)), np.abs(k.astype(np.float64))
    cal = calibrate(q, k, "qk")
    want = (qa.reshape(1, 2, 2, 8, 32) * ka[:, :, None]).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(cal.scores, want, rtol=1e-12)
    assert np.array_equal(calibrate(q, k, "q").scores,
                          qa.reshape(1, 2, 2, 8, 32).mean(axis=(0, 2, 3)))
    with pytest.raises(ValueError, match="r"):
        cal.channels(33)


def test_calibration_save_load_merge(tmp_path):
    q, k, _ = _qkv()
    a, b = calibrate(q[:, :, :8], k, "qk", source="s1"), calibrate(q[:, :, 8:], k, "qk", source="s2")
    m = a.merge(b)
    assert m.count == a.count + b.count and m.source == "s1 + s2"
    back = Calibration.load(m.save(tmp_path / "cal.npz"))
    assert np.array_equal(back.sums, m.sums) and back.count == m.count and back.metric == "qk"
    with pytest.raises(ValueError, match="other"):
        a.merge(calibrate(q, k, "k"))
    with pytest.raises(FileNotFoundError, match="path"):
        Calibration.load(tmp_path / "missing.npz")


def test_label_cache_codes_match_numerics():
    _, k, _ = _qkv()
    ch = np.array([[0, 3, 7, 9], [1, 2, 30, 31]])
    lc = label_cache(k, ch, 4)
    lab = np.take_along_axis(k, ch[None, :, None, :], axis=-1)
    ref = quantize(lab, 4, symmetric=False, block=(1, 1, 1, None), scale_dtype="fp16")
    assert np.array_equal(lc.codes, ref.codes) and np.array_equal(lc.zero_point, ref.zero_point)
    assert np.array_equal(lc.values, ref.dequantize())
    assert np.array_equal(label_cache(k, ch, 16).values, lab.astype(np.float32))
    assert lc.nbytes == 1 * 2 * 97 * (2 + 2 + 2)


def test_bad_inputs_name_the_argument():
    q, k, v = _qkv(Lk=20)
    with pytest.raises(ValueError, match="token_budget"):
        simulate_double_sparse(q, k, v, load_method("double_sparse", sparse__token_budget=21))
    with pytest.raises(ValueError, match="label_channels"):
        simulate_double_sparse(q, k, v, load_method("double_sparse", sparse__label_channels=33))
    with pytest.raises(ValueError, match="calibration"):
        simulate_double_sparse(q, k, v, load_method("double_sparse"),
                               calibration=calibrate(q, k, "k"))
    with pytest.raises(TypeError, match="calibration"):
        simulate_double_sparse(q, k, v, load_method("double_sparse"), calibration=3)
    with pytest.raises(ValueError, match="spec"):
        simulate_double_sparse(q, k, v, load_method("fp16_flash"))


def _ref_selected_attention(q, k, v, idx_rows, sm):
    out = np.zeros((len(idx_rows), v.shape[-1]))
    for i, idx in enumerate(idx_rows):
        if len(idx):
            s = q[i].astype(np.float64) @ k[idx].astype(np.float64).T * sm
            p = np.exp(s - s.max())
            out[i] = p @ v[idx].astype(np.float64) / p.sum()
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Lq, Lk", [(17, 97), (1, 97), (97, 97), (5, 3)])
def test_simulate_selects_brute_force_indices_and_attends_exactly(causal, Lq, Lk):
    q, k, v = _qkv(Lq=Lq, Lk=Lk)
    spec = load_method("double_sparse", sparse__token_fraction=0.25)
    res = simulate_double_sparse(q, k, v, spec, causal=causal, trace=True)
    tr = res.trace
    assert tr["calibration"] == "oracle"
    D, r = 32, spec.sparse.r(32)
    cal = calibrate(q, k, "qk")
    ch = cal.channels(r)
    lc = label_cache(k, ch, 4)
    for h in range(4):
        g = h // 2
        approx = q[0, h][:, ch[g]].astype(np.float32) @ lc.values[0, g].T
        for i in range(Lq):
            vis = min(Lk, max(0, i + Lk - Lq + 1)) if causal else Lk
            kb = min(vis, max(1, math.ceil(vis * 0.25)))
            want = _brute_topk(approx[i], vis, kb)
            got = tr["indices"][0, h, i]
            assert got[got >= 0].tolist() == want
        rows = [tr["indices"][0, h, i][tr["indices"][0, h, i] >= 0] for i in range(Lq)]
        ref = _ref_selected_attention(q[0, h], k[0, g], v[0, g], rows, 1 / math.sqrt(D))
        err = np.abs(res.out[0, h] - ref).max()
        assert err < 2e-3, err


def test_recall_is_one_with_exact_labels():
    q, k, v = _qkv(Lq=33, Lk=200, dtype=np.float32)
    spec = load_method("double_sparse", sparse__label_fraction=1.0, sparse__label_bits=16)
    q16, k16 = q.astype(np.float16).astype(np.float32), k.astype(np.float16).astype(np.float32)
    res = simulate_double_sparse(q16, k16, v, spec, causal=True, trace=True)
    print("recall", res.trace["recall_mean"])
    assert res.trace["recall_mean"] == 1.0
    res4 = simulate_double_sparse(q16, k16, v, load_method("double_sparse"), causal=True, trace=True)
    print("recall r=D/4, 4-bit labels", res4.trace["recall_mean"])
    assert res4.trace["recall_mean"] < 1.0


def test_given_calibration_is_used_and_named():
    q, k, v = _qkv()
    other = calibrate(*_qkv(seed=5)[:2], "qk", source="slice-A")
    res = simulate_double_sparse(q, k, v, load_method("double_sparse"), calibration=other,
                                 trace=True)
    assert res.trace["calibration"] == "slice-A"
    assert np.array_equal(res.trace["label_channels"], other.channels(8))


# -- protocol options (selection, label scope, query labels, short rows) -------------------------
def _inputs(L=300, Hq=4, Hkv=2, D=16, seed=3):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, Hq, L, D)).astype(np.float16)
    k = rng.standard_normal((1, Hkv, L, D)).astype(np.float16)
    v = rng.standard_normal((1, Hkv, L, D)).astype(np.float16)
    return q, k, v


def test_exact_selection_is_the_true_topk_and_recent_is_sink_plus_window():
    q, k, v = _inputs()
    base = load_method("double_sparse", sparse__token_budget=8, sparse__short_rows="dense")
    ex = simulate(q, k, v, base.replace(sparse__selection="exact"), causal=True, trace=True).trace
    # oracle: the selection is the top-8 of the f32 dot of the fp16 operands, ties to lower index
    s = (q[0, 1].astype(np.float32) @ k[0, 0].astype(np.float32).T)
    want = np.sort(np.argsort(-s[299].astype(np.float64), kind="stable")[:8])
    assert ex["indices"][0, 1, 299].tolist() == want.tolist()
    assert np.nanmin(ex["recall"]) > 0.99
    st = simulate(q, k, v, base.replace(sparse__selection="recent", sparse__sink_tokens=2,
                                        sparse__token_budget=6), causal=True, trace=True).trace
    assert st["indices"][0, 0, 299].tolist() == [0, 1, 294, 295, 296, 297, 298, 299]
    assert st["indices"][0, 0, 4, :5].tolist() == [0, 1, 2, 3, 4]       # short row: all keys
    assert (st["counts"][0, 0] == np.minimum(np.arange(1, 301), 8)).all()


def test_short_rows_dense_and_error():
    q, k, v = _inputs(L=20)
    sp = load_method("double_sparse", sparse__token_budget=64)
    with pytest.raises(ValueError, match="sparse.token_budget: k = 64 exceeds the 20 keys"):
        simulate(q, k, v, sp, causal=True)
    dense = simulate(q, k, v, sp.replace(sparse__short_rows="dense"), causal=True)
    fp16 = simulate(q, k, v, load_method("fp16_flash"), causal=True)
    np.testing.assert_allclose(dense.out, fp16.out, rtol=0, atol=2e-3)


def test_label_scope_q_head_uses_each_heads_channels():
    q, k, v = _inputs(L=64, Hq=4, Hkv=1)
    cal = calibrate(q, k, "qk", scope="q_head")
    assert cal.shape == (4, 16)
    kv = calibrate(q, k, "qk")
    np.testing.assert_allclose(cal.sums.sum(axis=0), kv.sums[0])      # the group's sum splits
    sp = load_method("double_sparse", sparse__label_scope="q_head", sparse__token_budget=8)
    tr = simulate(q, k, v, sp, causal=True, calibration=cal, trace=True).trace
    assert tr["label_channels"].shape == (4, 4)
    assert tr["label_channels"].tolist() == cal.channels(4).tolist()
    with pytest.raises(ValueError, match=r"calibration: expected channel statistics for \[Hkv=4"):
        simulate(q, k, v, sp, causal=True, calibration=kv)


def test_query_label_bits_quantize_the_query_labels():
    q, k, v = _inputs(L=64)
    sp = load_method("double_sparse", sparse__token_budget=8)
    a = simulate(q, k, v, sp, causal=True, trace=True).trace["approx_scores"]
    b = simulate(q, k, v, sp.replace(sparse__q_label_bits=2), causal=True,
                 trace=True).trace["approx_scores"]
    fin = np.isfinite(a)
    assert not np.array_equal(a[fin], b[fin])
    assert np.corrcoef(a[fin], b[fin])[0, 1] > 0.5
    with pytest.raises(ValueError, match="q_label_bits"):
        load_method("double_sparse", sparse__q_label_bits=3)


def test_threshold_selection_equals_the_stable_sort():
    from sim.methods import double_sparse as dsm

    rng = np.random.default_rng(0)
    for t in range(20):
        R, Lk = int(rng.integers(1, 40)), int(rng.integers(257, 700))
        sc = (rng.integers(0, 12, (R, Lk)) if t % 2 else rng.standard_normal((R, Lk))).astype(np.float32)
        vis = rng.integers(1, Lk + 1, R)
        b = np.minimum(rng.choice([3, 9, 50], R), vis)
        got = select_topk(sc, vis, b, sink=2 * (t % 3 == 0), recent=3 * (t % 3 == 0))
        vb = np.arange(Lk)[None] < vis[:, None]
        forced = dsm._forced(vis, Lk, 2, 3) if t % 3 == 0 else np.zeros_like(vb)
        cand = vb & ~forced
        order = np.argsort(np.where(cand, -sc.astype(np.float64), np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(Lk)[None].repeat(R, 0), axis=1)
        assert np.array_equal(got, forced | (cand & (rank < b[:, None]))), t
