"""Golden regression of the simulator: every method on a fixed set of small problems, digested.

``python tests/sim/golden_cases.py --write`` records ``tests/sim/golden/sim_digests.json``;
``tests/sim/test_golden.py`` recomputes it and compares. Integer intermediates (codes, S_int,
P codes, O_int, selected indices) are digested exactly (sha256 of their bytes): they are
machine-independent. Float arrays depend on the BLAS summation order of the machine, so they
are digested too (a refactor on the machine that wrote the file must keep them bit-identical:
``python tests/sim/golden_cases.py`` checks that), and the first 16 output rows of head 0 are
also stored as float32 values that the test compares with a tolerance on any machine.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden" / "sim_digests.json"

# (label, method, overrides, Hq, Hkv, Lq, Lk, D, causal, mode)
CASES = [
    ("fp16_gqa_causal", "fp16_flash", {}, 4, 2, 37, 53, 64, True, None),
    ("fp8_decode", "fp8_flash", {}, 2, 1, 1, 97, 64, False, None),
    ("int8_gqa_causal", "int8_flash", {}, 4, 2, 37, 150, 72, True, None),
    ("int8_fp32_half_even", "int8_flash", {"p.arithmetic": "fp32", "p.rounding": "half_even"},
     2, 2, 17, 97, 64, False, None),
    ("int8_fast_causal", "int8_flash_fast", {}, 4, 2, 37, 150, 64, True, None),
    ("int8_fp32_division", "int8_flash", {"q.arithmetic": "fp32", "k.arithmetic": "fp32",
                                          "v.arithmetic": "fp32"}, 2, 1, 17, 70, 128, False, None),
    ("turbo_prefill_causal", "turbo", {}, 4, 2, 97, 150, 64, True, None),
    ("turbo_exp2", "turbo", {"softmax.exp": "exp2"}, 2, 1, 33, 70, 64, False, None),
    ("turbo_cache_causal", "turbo", {}, 4, 4, 150, 150, 64, True, "kv_cache"),
    ("turbo_cache_decode", "turbo", {}, 2, 2, 1, 300, 128, False, "kv_cache"),
    ("ds_decode", "double_sparse", {}, 4, 2, 1, 300, 64, False, None),
    ("ds_causal", "double_sparse", {"sparse.token_fraction": 0.25}, 2, 2, 40, 40, 64, True,
     None),
]
FLOAT_KEYS_SKIPPED = ("visible",)  # derived from the shape alone


def _inputs(i: int, Hq, Hkv, Lq, Lk, D):
    rng = np.random.default_rng(1000 + i)
    q = rng.standard_normal((1, Hq, Lq, D)).astype(np.float16)
    k = rng.standard_normal((1, Hkv, Lk, D)).astype(np.float32)
    k[..., :2] *= 4.0  # outlier channels, as real keys have
    v = rng.standard_normal((1, Hkv, Lk, D)).astype(np.float16)
    return q, k.astype(np.float16), v


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:20]


def _pack_float(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def unpack_float(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)


def compute() -> dict:
    """``{case: {"ints": {key: digest}, "floats": {key: base64 npy}}}`` for every case."""
    from sim import load_method, simulate
    out = {}
    for i, (label, method, ov, Hq, Hkv, Lq, Lk, D, causal, mode) in enumerate(CASES):
        q, k, v = _inputs(i, Hq, Hkv, Lq, Lk, D)
        spec = load_method(method, **ov)
        res = simulate(q, k, v, spec, causal=causal, trace=True, kv_cache=mode == "kv_cache")
        ints, floats = {}, {"out": _digest(res.out)}
        for key, val in sorted(res.trace.items()):
            if key in FLOAT_KEYS_SKIPPED or not isinstance(val, np.ndarray):
                continue
            (ints if val.dtype.kind in "iub" else floats)[key] = _digest(val)
        out[label] = {"spec_digest": spec.digest, "ints": ints, "floats": floats,
                      "out_head0": _pack_float(res.out[0, 0, :16])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the golden file")
    args = ap.parse_args(argv)
    data = compute()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({len(data)} cases)")
        return 0
    want = json.loads(GOLDEN.read_text())
    bad = 0
    for label, got in data.items():
        w = want.get(label)
        if w is None:
            print(f"{label}: not in the golden file")
            bad += 1
            continue
        for key, dg in got["ints"].items():
            if w["ints"].get(key) != dg:
                print(f"{label}: {key} differs")
                bad += 1
        for key, dg in got["floats"].items():
            if w["floats"].get(key) != dg:
                print(f"{label}: float {key} not bit-identical")
                bad += 1
    print("identical" if not bad else f"{bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    sys.exit(main())
