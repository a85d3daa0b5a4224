"""Shared fixtures for the sim tests: exhaustive code sets of the small formats."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def fp16_all() -> np.ndarray:
    """All 65,536 fp16 bit patterns as float16 values (NaNs and infinities included)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


@pytest.fixture(scope="session")
def fp16_finite(fp16_all) -> np.ndarray:
    """The 63,488 finite fp16 values (both zeros included)."""
    return fp16_all[np.isfinite(fp16_all)]


@pytest.fixture(scope="session")
def int8_all() -> np.ndarray:
    """All 256 int8 codes, -128..127."""
    return np.arange(-128, 128, dtype=np.int16).astype(np.int8)
