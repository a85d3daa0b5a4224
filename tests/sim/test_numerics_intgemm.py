"""sim.numerics.int_matmul: exact int8 GEMM against Python integers, overflow, shapes, speed."""
import time

import numpy as np
import pytest

from sim.numerics import int_matmul_unchecked, int_matmul, int_matmul_reference


def python_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Arbitrary-precision reference (object dtype holds Python ints)."""
    return np.matmul(a.astype(object), b.astype(object))


def rand8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int16).astype(np.int8)


def test_all_int8_products(int8_all):
    a, b = int8_all[:, None], int8_all[None, :]
    got = int_matmul(a, b)
    np.testing.assert_array_equal(got, python_matmul(a, b).astype(np.int64))
    assert got.dtype == np.int32 and got.min() == -128 * 127 and got.max() == 128 * 128


@pytest.mark.parametrize("K", [1, 7, 64, 128, 1000, 1024, 1025, 2048, 4096])
def test_against_python_ints(K):
    rng = np.random.default_rng(K)
    a, b = rand8(rng, (3, K)), rand8(rng, (K, 5))
    want = python_matmul(a, b).astype(np.int64)
    np.testing.assert_array_equal(int_matmul(a, b), want)
    np.testing.assert_array_equal(int_matmul_reference(a, b), want)
    np.testing.assert_array_equal(int_matmul_unchecked(a, b), want)


@pytest.mark.parametrize("K", [1024, 1025, 4096])
def test_extreme_values(K):
    """All -128: every partial sum is at its largest (K * 2^14; exactly 2^24 for K = 1024)."""
    a = np.full((2, K), -128, np.int8)
    b = np.full((K, 3), -128, np.int8)
    b[:, 1] = 127
    got = int_matmul(a, b)
    np.testing.assert_array_equal(got[:, 0], K * 16384)
    np.testing.assert_array_equal(got[:, 1], -K * 128 * 127)


def test_batched_broadcasting():
    rng = np.random.default_rng(1)
    for sa, sb in [((2, 1, 3, 70), (4, 70, 2)), ((5, 17, 1100), (5, 1100, 9)), ((8, 8), (3, 8, 4))]:
        a, b = rand8(rng, sa), rand8(rng, sb)
        want = np.matmul(a.astype(np.int64), b.astype(np.int64))
        got = int_matmul(a, b)
        assert got.shape == want.shape and got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(int_matmul_reference(a, b), want)


def test_tile_shapes_agree_with_reference():
    rng = np.random.default_rng(2)
    for M, K, N in [(64, 128, 64), (128, 128, 64), (1, 128, 97), (97, 64, 1), (1000, 32, 17)]:
        a, b = rand8(rng, (M, K)), rand8(rng, (K, N))
        np.testing.assert_array_equal(int_matmul(a, b), int_matmul_reference(a, b))


def test_overflow_raises():
    K = 131072  # smallest K at which an int8 dot product can leave int32: 131072 * 2^14 = 2^31
    a = np.full((1, K), -128, np.int8)
    b = np.full((K, 1), -128, np.int8)
    with pytest.raises(OverflowError, match="do not fit int32"):
        int_matmul(a, b)
    with pytest.raises(OverflowError, match="do not fit int32"):
        int_matmul_reference(a, b)
    b[0, 0] = 127  # 2^31 - 2^14 - 128*127 fits: exact and no error
    got = int_matmul(a, b)
    assert int(got[0, 0]) == (K - 1) * 16384 - 128 * 127
    b[:, 0] = 127  # most negative possible: -128 * 127 * K fits
    assert int(int_matmul(a, b)[0, 0]) == -128 * 127 * K


def test_bad_inputs():
    a = np.zeros((2, 3), np.int8)
    with pytest.raises(TypeError, match="a: expected dtype int8, got int16"):
        int_matmul(a.astype(np.int16), a.T)
    with pytest.raises(TypeError, match="b: expected dtype int8, got float32"):
        int_matmul(a, a.T.astype(np.float32))
    with pytest.raises(TypeError, match="a: expected a numpy int8 array"):
        int_matmul([[1]], a)
    with pytest.raises(ValueError, match="a: expected at least 2 dims"):
        int_matmul(np.zeros(3, np.int8), a.T)
    with pytest.raises(ValueError, match="b: expected 3 rows"):
        int_matmul(a, a)
    with pytest.raises(ValueError, match="b: batch dims"):
        int_matmul(np.zeros((2, 2, 3), np.int8), np.zeros((3, 3, 2), np.int8))


def test_speed_report():
    """Prints fast vs reference timings on a simulator tile (timings are not asserted: the CI
    machine is shared); the three paths must agree bit for bit."""
    rng = np.random.default_rng(0)
    a, b = rand8(rng, (128, 128)), rand8(rng, (128, 64))

    def best(f, n):
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            f(a, b)
            t.append(time.perf_counter() - t0)
        return min(t)

    fast, unchecked, ref = best(int_matmul, 50), best(int_matmul_unchecked, 50), best(int_matmul_reference, 5)
    print(f"\nint_matmul [128,128]x[128,64]: fast {fast*1e6:.1f} us, unchecked {unchecked*1e6:.1f} us, "
          f"reference {ref*1e6:.1f} us")
    np.testing.assert_array_equal(int_matmul(a, b), int_matmul_reference(a, b))
    np.testing.assert_array_equal(int_matmul_unchecked(a, b), int_matmul_reference(a, b))
