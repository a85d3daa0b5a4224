"""sim.numerics.requantize: INT8 -> INT4/INT3/INT2 with integer scale and zero, exhaustive bounds."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim.numerics import Requantized, dequantize_int, pack, requantize, requantize_error_bound, unpack


def all_triples(q: int) -> np.ndarray:
    """Every group [m, M, v] with -q <= m <= v <= M <= q, as rows of an (n, 3) int8 array."""
    r = np.arange(-q, q + 1)
    m, M, v = np.meshgrid(r, r, r, indexing="ij", sparse=False)
    keep = (m <= v) & (v <= M)
    return np.stack([m[keep], M[keep], v[keep]], axis=1).astype(np.int8)


@pytest.mark.parametrize("to_bits,bound", [(4, 8), (3, 18), (2, 42)])
def test_exhaustive_triples_int8(to_bits, bound):
    """All groups whose range is [m, M] and every value inside: error <= floor(s/2), tight."""
    g = all_triples(127)
    r = requantize(g, 8, to_bits, axis=-1)
    m, M = g[:, 0].astype(int), g[:, 1].astype(int)
    L = 2**to_bits - 1
    s = np.maximum(1, -(-(M - m) // L))
    np.testing.assert_array_equal(r.scale[:, 0], s)
    np.testing.assert_array_equal(r.zero[:, 0], m)
    assert r.codes.dtype == np.uint8 and r.codes.max() <= L
    back = r.to_int8()
    assert back.dtype == np.int8
    err = np.abs(back.astype(int) - g.astype(int))
    assert np.all(err <= (s // 2)[:, None])
    assert err.max() == bound == requantize_error_bound(8, to_bits)
    # the per-group bound floor(s/2) is attained for every scale that occurs
    worst = np.zeros(s.max() + 1, int)
    np.maximum.at(worst, s, err.max(1))
    used = np.unique(s)
    np.testing.assert_array_equal(worst[used], used // 2)


def test_exhaustive_pairs_and_from_int4(int8_all):
    pairs = np.stack(np.meshgrid(int8_all[1:], int8_all[1:], indexing="ij"), -1).reshape(-1, 2)
    for to_bits in (2, 3, 4):
        r = requantize(pairs, 8, to_bits)
        err = np.abs(r.to_int8().astype(int) - pairs)
        assert np.all(err <= (r.scale.astype(int) // 2)) and err.max() <= requantize_error_bound(8, to_bits)
    t = all_triples(7)
    r = requantize(t, 4, 2)
    err = np.abs(r.to_int8().astype(int) - t)
    assert err.max() == requantize_error_bound(4, 2) == 2  # ceil(14/3) = 5 -> 2


@settings(max_examples=120, deadline=None)
@given(
    codes=hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=11),
                     elements=st.integers(-127, 127)),
    to_bits=st.sampled_from([2, 3, 4]),
    axis_pick=st.integers(0, 3),
    group=st.one_of(st.none(), st.integers(1, 12)),
)
def test_random_groups(codes, to_bits, axis_pick, group):
    axis = axis_pick % codes.ndim - codes.ndim  # negative axis
    r = requantize(codes, 8, to_bits, axis=axis, group=group)
    n = codes.shape[axis]
    g = n if group is None else min(group, n)
    assert r.group == g and r.axis == codes.ndim + axis
    ng = -(-n // g)
    assert r.scale.shape[axis] == ng and r.scale.dtype == np.uint8 and r.zero.dtype == np.int8
    back = dequantize_int(r)
    err = np.abs(back.astype(int) - codes.astype(int))
    # per group: compare with an independent loop over the groups along the axis
    moved, bmoved = np.moveaxis(codes, axis, -1), np.moveaxis(err, axis, -1)
    smoved, zmoved = np.moveaxis(r.scale, axis, -1), np.moveaxis(r.zero, axis, -1)
    for j in range(ng):
        blk = moved[..., j * g:(j + 1) * g].astype(int)
        mn, mx = blk.min(-1), blk.max(-1)
        s = np.maximum(1, -(-(mx - mn) // (2**to_bits - 1)))
        np.testing.assert_array_equal(smoved[..., j], s)
        np.testing.assert_array_equal(zmoved[..., j], mn)
        assert np.all(bmoved[..., j * g:(j + 1) * g] <= (s // 2)[..., None])
    assert r.max_error <= requantize_error_bound(8, to_bits)
    assert r.storage_bits == codes.size * to_bits + r.scale.size * 16


def test_hand_example_and_packing():
    v = np.array([[-127, -3, 0, 50, 127]], np.int8)
    r = requantize(v, 8, 4)
    # s = ceil(254 / 15) = 17, z = -127, c = (v + 127 + 8) // 17
    np.testing.assert_array_equal(r.codes, [[0, 7, 7, 10, 15]])
    np.testing.assert_array_equal(r.to_int8(), [[-127, -8, -8, 43, 127]])
    p = pack(r.codes, 4)
    np.testing.assert_array_equal(unpack(p, 4, 5), r.codes)
    assert isinstance(r, Requantized) and r.scale_bits == 8 and r.zero_bits == 8
    # constant group: s = 1, exact
    c = requantize(np.full((1, 4), -9, np.int8), 8, 2)
    assert c.scale[0, 0] == 1 and np.all(c.to_int8() == -9)


def test_bad_inputs():
    good = np.zeros((2, 4), np.int8)
    with pytest.raises(ValueError, match=r"codes: expected values in \[-127, 127\]"):
        requantize(np.array([-128, 0], np.int8))
    with pytest.raises(ValueError, match=r"codes: expected values in \[-7, 7\]"):
        requantize(np.array([8, 0], np.int8), 4, 2)
    with pytest.raises(TypeError, match="codes: expected an integer array"):
        requantize(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="codes: expected a non-empty array"):
        requantize(np.zeros((0,), np.int8))
    with pytest.raises(ValueError, match="to_bits: expected one of"):
        requantize(good, 8, 8)
    with pytest.raises(ValueError, match="from_bits: expected one of"):
        requantize(good, 16, 4)
    with pytest.raises(ValueError, match="axis: expected an axis of the 2-d codes"):
        requantize(good, axis=2)
    with pytest.raises(ValueError, match="group: expected an int >= 1"):
        requantize(good, group=0)
    with pytest.raises(TypeError, match="r: expected a Requantized"):
        dequantize_int(good)
