"""sim.checks: input validation for q/k/v and the shared bottom-right causal geometry."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.checks import (
    QKVShape,
    causal_mask,
    causal_offset,
    check_qkv,
    check_sm_scale,
    last_visible_key,
    visible_key_count,
)


def _qkv(B=1, Hq=4, Hkv=2, Lq=3, Lk=5, D=8, Dv=None, dtype=np.float32):
    Dv = D if Dv is None else Dv
    return (
        np.zeros((B, Hq, Lq, D), dtype),
        np.zeros((B, Hkv, Lk, D), dtype),
        np.zeros((B, Hkv, Lk, Dv), dtype),
    )


def test_returns_sizes():
    q, k, v = _qkv(B=2, Hq=8, Hkv=2, Lq=17, Lk=97, D=16, Dv=5)
    assert check_qkv(q, k, v) == QKVShape(B=2, Hq=8, Hkv=2, Lq=17, Lk=97, D=16, Dv=5, group=4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_float_dtypes_accepted(dtype):
    assert check_qkv(*_qkv(dtype=dtype)).group == 2


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, np.complex64, object, np.bool_])
def test_non_float_dtype_is_type_error(which, dtype):
    args = list(_qkv())
    args[which] = args[which].astype(dtype)
    name = "qkv"[which]
    with pytest.raises(TypeError, match=rf"^{name} must have a floating-point dtype"):
        check_qkv(*args)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_not_an_array_is_type_error(which):
    args = list(_qkv())
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"^{'qkv'[which]} must be a numpy.ndarray or torch.Tensor, got list"):
        check_qkv(*args)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("shape", [(4, 3, 8), (1, 1, 4, 3, 8), ()])
def test_ndim(which, shape):
    args = list(_qkv())
    args[which] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"^{'qkv'[which]} must be 4-D \[B, H, L, D\], got ndim={len(shape)}"):
        check_qkv(*args)


def test_allow_dtypes_and_same_dtype():
    q, k, v = _qkv(dtype=np.float16)
    assert check_qkv(q, k, v, allow_dtypes={"float16", "bfloat16"}).D == 8
    with pytest.raises(TypeError, match=r"^k dtype must be one of \['float16'\], got float32"):
        check_qkv(q, k.astype(np.float32), v, allow_dtypes={"float16"})
    check_qkv(q, k.astype(np.float32), v)  # mixed dtypes allowed by default
    with pytest.raises(TypeError, match=r"q, k, v must share one dtype, got q=float16, k=float32, v=float16"):
        check_qkv(q, k.astype(np.float32), v, require_same_dtype=True)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(Lq=0), r"^q: empty sequence \(Lq = 0"),
        (dict(Lk=0), r"^k: empty sequence \(Lk = 0"),
        (dict(B=0), r"^q: zero-size dimension B = 0"),
        (dict(Hq=0), r"^q: zero-size dimension H = 0"),
        (dict(D=0), r"^q: zero-size dimension D = 0"),
        (dict(Dv=0), r"^v: zero-size dimension D = 0"),
    ],
    ids=["Lq0", "Lk0", "B0", "H0", "D0", "Dv0"],
)
def test_zero_sizes(kw, match):
    with pytest.raises(ValueError, match=match):
        check_qkv(*_qkv(**kw))


def test_shape_mismatches():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"^v: k and v must agree on \[B, Hkv, Lk\], got k \(1, 2, 5, 8\) and v \(1, 2, 4, 8\)"):
        check_qkv(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match=r"^v: k and v must agree"):
        check_qkv(q, k, v[:, :1])
    q2 = np.zeros((2, 4, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"^k: batch B=1 differs from q\'s B=2"):
        check_qkv(q2, k, v)
    with pytest.raises(ValueError, match=r"^k: head dim D=7 differs from q\'s D=8"):
        check_qkv(q, k[..., :7], v)
    check_qkv(q, k, v[..., :3])  # Dv may differ from D


def test_gqa_divisibility_message():
    q, k, v = _qkv(Hq=9, Hkv=4)
    with pytest.raises(ValueError, match=r"^q: heads Hq \(9\) must be a multiple of k\'s Hkv \(4\)$"):
        check_qkv(q, k, v)
    q, k, v = _qkv(Hq=2, Hkv=4)
    with pytest.raises(ValueError, match=r"Hq \(2\) must be a multiple of k\'s Hkv \(4\)"):
        check_qkv(q, k, v)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_non_finite(which):
    args = list(_qkv(dtype=np.float16))
    x = args[which].copy()
    x[0, 0, 0, 0] = np.nan
    x[0, 1, -1, 2] = np.inf
    x[0, 1, -1, 3] = -np.inf
    args[which] = x
    with pytest.raises(ValueError, match=rf"^{'qkv'[which]} has 3 non-finite value\(s\) \(NaN/Inf\)"):
        check_qkv(*args)
    assert check_qkv(*args, check_finite=False).Hq == 4


def test_sm_scale():
    assert check_sm_scale(None, 64) == 0.125
    assert check_sm_scale(None, 1) == 1.0
    assert check_sm_scale(None, 17) == 1.0 / math.sqrt(17)
    assert check_sm_scale(2, 8) == 2.0 and isinstance(check_sm_scale(2, 8), float)
    assert check_sm_scale(np.float32(0.5), 8) == 0.5
    for bad in (0, 0.0, -1.0, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=r"^sm_scale: expected a positive finite number"):
            check_sm_scale(bad, 8)
    for bad in ("0.1", True, np.bool_(True), 1j, [0.1]):
        with pytest.raises(TypeError, match=r"^sm_scale: expected a real number or None"):
            check_sm_scale(bad, 8)
    # scores that would overflow float32: refused, statically and against the inputs' range
    with pytest.raises(ValueError, match=r"^sm_scale: qk_scale = sm_scale \* log2\(e\)"):
        check_sm_scale(3e38, 8)
    assert check_sm_scale(1e30, 8, absmax=(1.0, 1.0, 1.0)) == 1e30
    with pytest.raises(ValueError, match=r"^sm_scale: scores can reach"):
        check_sm_scale(1e30, 8, absmax=(1e4, 1e4, 1.0))


def test_causal_geometry_hand_cases():
    # Lq=2, Lk=5 (chunked prefill): row 0 sees keys 0..3, row 1 sees 0..4.
    assert causal_offset(2, 5) == 3
    assert (last_visible_key(0, 2, 5), last_visible_key(1, 2, 5)) == (3, 4)
    np.testing.assert_array_equal(causal_mask(2, 5), [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    # decode: one row sees every key
    np.testing.assert_array_equal(causal_mask(1, 7), np.ones((1, 7), bool))
    assert visible_key_count(0, 1, 7) == 7
    # square: lower triangle
    np.testing.assert_array_equal(causal_mask(4, 4), np.tril(np.ones((4, 4), bool)))
    # Lq=4 > Lk=2: rows 0, 1 see nothing, row 2 sees key 0, row 3 keys 0..1
    np.testing.assert_array_equal(last_visible_key(np.arange(4), 4, 2), [-2, -1, 0, 1])
    np.testing.assert_array_equal(visible_key_count(np.arange(4), 4, 2), [0, 0, 1, 2])
    np.testing.assert_array_equal(causal_mask(4, 2), [[0, 0], [0, 0], [1, 0], [1, 1]])


@pytest.mark.parametrize("Lq, Lk", [(1, 1), (17, 17), (17, 97), (97, 17), (1, 97), (5, 1)])
def test_causal_mask_blocks_and_counts_agree(Lq, Lk):
    full = causal_mask(Lq, Lk)
    rows = np.arange(Lq)
    for start in range(0, Lq, 7):
        blk = rows[start : start + 7]
        np.testing.assert_array_equal(causal_mask(Lq, Lk, blk), full[blk])
    np.testing.assert_array_equal(full.sum(axis=1), visible_key_count(rows, Lq, Lk))
    # independent definition: j <= i + Lk - Lq
    expect = np.array([[j <= i + Lk - Lq for j in range(Lk)] for i in range(Lq)])
    np.testing.assert_array_equal(full, expect)


def test_torch_tensors_duck_typed():
    torch = pytest.importorskip("torch")
    q = torch.zeros(1, 4, 3, 8, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 5, 8, dtype=torch.bfloat16)
    assert check_qkv(q, k, k, allow_dtypes={"bfloat16"}, require_same_dtype=True).group == 2
    with pytest.raises(TypeError, match=r"^k must have a floating-point dtype, got int32"):
        check_qkv(q, k.to(torch.int32), k)
    with pytest.raises(TypeError, match=r"^v must have a floating-point dtype, got complex64"):
        check_qkv(q, k, k.to(torch.complex64))
    with pytest.raises(TypeError, match=r"^q dtype must be one of \['float16'\], got bfloat16"):
        check_qkv(q, k, k, allow_dtypes={"float16"})
    bad = k.clone()
    bad[0, 0, 0, :2] = float("nan")
    with pytest.raises(ValueError, match=r"^v has 2 non-finite value\(s\)"):
        check_qkv(q, k, bad)
    with pytest.raises(ValueError, match=r"^q: heads Hq \(4\) must be a multiple of k\'s Hkv \(3\)"):
        check_qkv(q, torch.zeros(1, 3, 5, 8), torch.zeros(1, 3, 5, 8))


def test_sim_checks_does_not_import_torch():
    code = "import sys, sim.checks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
