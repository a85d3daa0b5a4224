"""The simulator against its golden digests (tests/sim/golden_cases.py): exact integers on any
machine, the first output rows within a few float32 ulp (BLAS summation order may differ)."""
import json

import numpy as np
import pytest

from tests.sim.golden_cases import CASES, GOLDEN, compute, unpack_float


@pytest.fixture(scope="module")
def current():
    return compute()


@pytest.mark.parametrize("label", [c[0] for c in CASES])
def test_golden(current, label):
    want = json.loads(GOLDEN.read_text())[label]
    got = current[label]
    assert got["spec_digest"] == want["spec_digest"], "the shipped spec changed: rewrite the golden file"
    assert got["ints"] == want["ints"]
    a, b = unpack_float(got["out_head0"]), unpack_float(want["out_head0"])
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
