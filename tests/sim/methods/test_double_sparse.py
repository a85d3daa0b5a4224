"""Double Sparsity: calibration, labels, budget, exact top-k selection, simulate."""
import math

import numpy as np
import pytest

from sim import load_method
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
