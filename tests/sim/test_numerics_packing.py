"""sim.numerics.pack / unpack: layout, exhaustive byte round trip, odd lengths, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sim.numerics import pack, unpack


def test_layout_hand_made():
    # INT4: byte j = c[2j] | c[2j+1] << 4; a trailing odd code is padded with 0
    np.testing.assert_array_equal(pack(np.array([0x1, 0xA, 0xF], np.uint8), 4), [0xA1, 0x0F])
    # INT2: byte j = c[4j] | c[4j+1] << 2 | c[4j+2] << 4 | c[4j+3] << 6
    np.testing.assert_array_equal(
        pack(np.array([[1, 2, 3, 0, 3, 1], [0, 0, 0, 3, 0, 0]], np.uint8), 2),
        [[0b00111001, 0b00000111], [0b11000000, 0]],
    )


@pytest.mark.parametrize("bits", [2, 4])
def test_every_byte_round_trips(bits):
    b = np.arange(256, dtype=np.uint8)
    per = 8 // bits
    codes = unpack(b, bits, 256 * per)
    assert codes.max() == 2**bits - 1
    np.testing.assert_array_equal(pack(codes, bits), b)
    # code i of byte j is (j >> (i * bits)) & mask
    mask = 2**bits - 1
    want = np.stack([(b >> (i * bits)) & mask for i in range(per)], -1).ravel()
    np.testing.assert_array_equal(codes, want)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), bits=st.sampled_from([2, 4]))
def test_round_trip_any_shape(data, bits):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=13))
    codes = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, 2**bits - 1)))
    p = pack(codes, bits)
    per = 8 // bits
    assert p.dtype == np.uint8 and p.shape == shape[:-1] + (-(-shape[-1] // per),)
    np.testing.assert_array_equal(unpack(p, bits, shape[-1]), codes)
    # other integer dtypes with the same values pack identically
    np.testing.assert_array_equal(pack(codes.astype(np.int32), bits), p)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 15\]"):
        pack(np.array([16], np.uint8), 4)
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 3\]"):
        pack(np.array([-1, 0], np.int8), 2)
    with pytest.raises(ValueError, match="bits: expected one of"):
        pack(np.array([1], np.uint8), 3)
    with pytest.raises(TypeError, match="codes: expected an integer array"):
        pack(np.array([1.0]), 4)
    with pytest.raises(ValueError, match="codes: expected at least 1 axis"):
        pack(np.uint8(1), 4)
    with pytest.raises(ValueError, match="n: expected a length"):
        unpack(np.zeros(2, np.uint8), 4, 5)
    with pytest.raises(ValueError, match="packed: padding codes beyond n=3 must be zero"):
        unpack(np.array([0x21, 0x43], np.uint8), 4, 3)
    with pytest.raises(TypeError, match="packed: expected dtype uint8"):
        unpack(np.zeros(2, np.int8), 4, 4)


def test_docstring_examples_and_no_torch_import():
    """The API documentation's examples run as written, and sim.numerics never imports torch."""
    import doctest
    import importlib
    import subprocess
    import sys

    for name in ("__init__", "floats", "blocks", "quantize", "requantize", "packing", "intgemm"):
        mod = importlib.import_module("sim.numerics" + ("" if name == "__init__" else "." + name))
        res = doctest.testmod(mod, extraglobs={"np": np}, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0, name
        assert res.attempted > 0 or name == "formats", name
    code = "import sys, sim.numerics; bad = {'torch', 'triton'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
