"""Foundation section of ``qsattn report``: the shipped method specs and a numerics self-check.

The self-check re-verifies, on this machine's numpy/BLAS/torch, the exactness claims everything
else stands on: float rounding equals torch's casts bit for bit, the fast integer GEMM equals the
integer reference, quantizers stay within their error bound, and the float64 reference agrees
with torch's SDPA. A failed check fails the section (and ``qsattn report``'s exit status).
"""
from __future__ import annotations


import numpy as np

from qsattn.specs import table as spec_table
from sim import numerics as nx


def _all_fp16() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)


def _same(a: np.ndarray, b: np.ndarray) -> int:
    """Number of positions where a and b differ (NaN equals NaN)."""
    return int(np.count_nonzero(~((a == b) | (np.isnan(a) & np.isnan(b)))))


def check_round_float_vs_torch() -> list[tuple[str, int, int]]:
    import torch

    x = _all_fp16()
    rows = []
    for fmt, dt in (("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn),
                    ("fp8_e5m2", torch.float8_e5m2)):
        want = torch.from_numpy(x).to(dt).to(torch.float64).numpy()
        rows.append((f"round_float(all fp16 values, {fmt}) == torch cast", x.size,
                     _same(nx.round_float(x, fmt), want)))
    rng = np.random.default_rng(0)
    f32 = np.concatenate([rng.standard_normal(1 << 18) * 10.0 ** rng.integers(-9, 6, 1 << 18),
                          [65504.0, 65519.99, 65520.0, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26]])
    f32 = f32.astype(np.float32)
    with np.errstate(over="ignore"):   # values past fp16's range round to inf on purpose
        want = f32.astype(np.float16).astype(np.float32)
    rows.append(("round_float(fp32 values, fp16) == numpy astype", f32.size,
                 _same(nx.round_float(f32, "fp16"), want)))
    return rows


def check_int_matmul() -> list[tuple[str, int, int]]:
    rng = np.random.default_rng(1)
    rows = []
    for m, k, n in ((128, 64, 64), (64, 1024, 64), (32, 1025, 16), (16, 4096, 16)):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        rows.append((f"int_matmul fast == reference, {m}x{k}x{n}", m * n,
                     int(np.count_nonzero(nx.int_matmul(a, b) != nx.int_matmul_reference(a, b)))))
    return rows


def check_quantize_bounds() -> list[tuple[str, int, int]]:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 4, 256, 64)) * 3).astype(np.float32)
    rows = []
    for mode in ("half_even", "half_away", "half_up"):
        # half_up is trunc(y + 0.5): nearest only for y >= 0, which is where kernels use it (P)
        xm = np.abs(x) if mode == "half_up" else x
        for bits in (8, 4):
            q = nx.quantize(xm, bits, block=(1, 1, 1, None), rounding=mode, scale_dtype="fp16")
            err = np.abs(xm.astype(np.float64) - nx.dequantize(q).astype(np.float64))
            # half a step, plus the fp32 division's own rounding (relative 2^-24 of |x|/scale)
            bound = np.broadcast_to(q.scale, (2, 4, 256, 1)).astype(np.float64) * (0.5 + 2.0 ** -20)
            rows.append((f"|x - deq(quant(x))| <= scale/2, int{bits} {mode}" + (" (x >= 0)" if mode == "half_up" else ""), x.size,
                         int(np.count_nonzero(err > bound))))
    codes = rng.integers(-127, 128, (4096, 64)).astype(np.int8)
    for to_bits in (4, 2):
        r = nx.requantize(codes, 8, to_bits, axis=-1, group=32)
        err = np.abs(r.to_int8().astype(np.int32) - codes.astype(np.int32))
        bound = np.repeat(r.scale.astype(np.int32) // 2, 32, axis=-1)
        rows.append((f"requantize int8 -> int{to_bits}: error <= floor(scale/2)", codes.size,
                     int(np.count_nonzero(err > bound))))
    return rows


def check_reference() -> tuple[list[tuple[str, int, int]], str]:
    import ref

    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 8, 300, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 333, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 333, 64)).astype(np.float32)
    exact = ref.attention(q, k, v, causal=True)
    errs = {dt: float(np.abs(ref.sdpa(q, k, v, causal=True, dtype=dt) - exact).max())
            for dt in ("fp32", "fp16")}
    ok = errs["fp32"] < 1e-5 and errs["fp32"] < errs["fp16"] < 1e-2
    note = (f"float64 reference vs torch SDPA (GQA 8/2 heads, causal, Lq 300, Lk 333): "
            f"max |diff| fp32 {errs['fp32']:.2e}, fp16 {errs['fp16']:.2e}")
    return [("ref.attention agrees with SDPA fp32 (< 1e-5), fp16 error larger", exact.size,
             0 if ok else exact.size)], note


def report_section(ctx) -> str:
    """The specs, the registries and the live self-check; their tables also go to
    ``<out>/foundation/{specs,methods,selfcheck}.csv``."""
    from pathlib import Path

    from qsattn import cliopts
    from qsattn.plotstyle import write_csv
    from qsattn.specs import methods_rows, methods_table, rows as spec_rows

    checks = (check_round_float_vs_torch, check_int_matmul, check_quantize_bounds)
    rows = []
    bar = cliopts.progress(total=len(checks) + 1, enabled=getattr(ctx, "progress", True),
                           desc="self-check", unit="group")
    for check in checks:
        rows += check()
        bar.update(1)
    ref_rows, ref_note = check_reference()
    bar.update(1)
    bar.close()
    rows += ref_rows
    out = Path(ctx.out) / "foundation"
    write_csv(out / "specs.csv", spec_rows())
    write_csv(out / "methods.csv", methods_rows())
    write_csv(out / "selfcheck.csv", [{"check": n, "cases": c, "mismatches": b}
                                      for n, c, b in rows])
    lines = ["### Method specs (`configs/methods/`, `qsattn specs NAME` shows one resolved)", "",
             spec_table(), "",
             "### Methods and what each executor supports (the registries)", "",
             methods_table(), "",
             "### Numerics self-check", "",
             "| check | cases | mismatches | |", "|---|---:|---:|---|"]
    for name, n, bad in rows:
        lines.append(f"| {name} | {n:,} | {bad:,} | {'ok' if bad == 0 else '**FAIL**'} |")
    lines += ["", ref_note, "Computed in this run (a live self-check). The tables' data: "
              "`foundation/specs.csv`, `foundation/methods.csv`, `foundation/selfcheck.csv`."]
    text = "\n".join(lines) + "\n"
    failed = [name for name, _, bad in rows if bad]
    if failed:
        raise RuntimeError("numerics self-check failed:\n" + text)
    return text
