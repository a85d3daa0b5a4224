"""``qsattn predict``: the cost model's time for one attention shape, from the shell.

One row per (hardware, method): predicted time, speedup against a baseline on the same shape
(like with like, :func:`sim.cost.speedup`), the bounding unit, achieved TOP/s and TB/s, HBM
bytes. The phase is inferred from the shape (``--q-len 1`` is a decode step) or checked against
it. Examples::

    qsattn predict --heads 32 --kv-heads 8 --q-len 1 --kv-len 8192 --head-dim 128 --batch 16
    qsattn predict --methods int8_flash,turbo --q-len 4096 --hardware h100_sxm,./l40s.yaml
    qsattn predict --kernel ideal --phase decode --kv-len 32768 --format csv

The same numbers from Python: ``sim.cost.predict`` / ``sim.cost.speedup``.
"""
from __future__ import annotations

import argparse

from qsattn import cliopts

__all__ = ["add_arguments", "run", "parse_entries", "rows"]

COLUMNS = ("hardware", "method", "kernel", "phase", "tier", "batch", "q_heads", "kv_heads",
           "q_len", "kv_len", "head_dim", "causal", "time_us", "baseline", "baseline_kernel",
           "speedup", "bound", "TOPs", "TBs", "hbm_MB", "intensity_op_per_B", "note")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shape")
    g.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    g.add_argument("--heads", type=int, default=32, help="query heads (default 32)")
    g.add_argument("--kv-heads", type=int, default=None,
                   help="key/value heads (default: --heads; fewer = GQA)")
    g.add_argument("--q-len", type=int, default=None,
                   help="query rows per sequence (default: 1 with --phase decode, else --kv-len)")
    g.add_argument("--kv-len", type=int, default=None,
                   help="keys per sequence (default: --q-len)")
    g.add_argument("--head-dim", type=int, default=128, help="head dimension (default 128)")
    g.add_argument("--causal", action="store_true", help="causal mask (bottom-right aligned)")
    g.add_argument("--phase", choices=("prefill", "decode"), default=None,
                   help="default: inferred (q_len 1 is a decode step); decode needs q_len 1")
    m = p.add_argument_group("what to price")
    m.add_argument("--methods", default=None,
                   help="comma-separated METHOD or METHOD:KERNEL (default: every method with a "
                        "kernel for the phase; `qsattn specs` lists them)")
    m.add_argument("--kernel", default=None,
                   help="kernel for every method given without one, e.g. ideal (decode: the "
                        "optimal kernel the bytes and units allow); choices per method and "
                        "phase: `qsattn specs`")
    m.add_argument("--hardware", default=None,
                   help="comma-separated hardware ids or YAML paths (default: every shipped "
                        "description; `qsattn hardware list`)")
    m.add_argument("--tier", choices=("roofline", "tiled", "pipeline", "calibrated"),
                   default="tiled",
                   help="roofline: pure; tiled: tiles, waves and overlap (default); pipeline: "
                        "each kernel's own SASS through the SM pipeline model on datasheet "
                        "values (compiles on the CPU with triton the first time); calibrated: "
                        "pipeline on the GPU's measured values (configs/hardware/measured/)")
    m.add_argument("--clock", choices=("boost", "sustained"), default="boost")
    m.add_argument("--baseline", default="fp16_flash",
                   help="method the speedup is taken against (default fp16_flash)")
    cliopts.add_common(p, out_help="write the table to this file instead of stdout")


def _shape(args: argparse.Namespace):
    from sim.cost import Shape, infer_phase

    q, k = args.q_len, args.kv_len
    if q is None and k is None:
        raise ValueError("--q-len/--kv-len: give at least one (e.g. --q-len 1 --kv-len 8192 for "
                         "a decode step, --q-len 4096 for a prefill)")
    for name, v in (("--batch", args.batch), ("--heads", args.heads), ("--q-len", q),
                    ("--kv-len", k), ("--head-dim", args.head_dim)):
        if v is not None and v < 1:          # before defaulting one length from the other
            raise ValueError(f"{name}: expected a positive integer, got {v}")
    if q is None:
        q = 1 if args.phase == "decode" else k
    if k is None:
        k = q
    kv = args.heads if args.kv_heads is None else args.kv_heads
    if kv < 1:
        raise ValueError(f"--kv-heads: expected a positive integer, got {kv}")
    if args.heads % kv:
        raise ValueError(f"--kv-heads: expected a divisor of --heads {args.heads} (GQA), got {kv}")
    try:
        shape = Shape(args.batch, args.heads, kv, q, k, args.head_dim, bool(args.causal))
    except ValueError as e:   # Shape.<field>: ... -> the flag's name
        msg = str(e)
        for field, flag in (("Shape.head_dim", "--head-dim"), ("Shape.q_len", "--q-len"),
                            ("Shape.kv_len", "--kv-len"), ("Shape.q_heads", "--heads")):
            msg = msg.replace(field, flag)
        raise ValueError(msg) from None
    if args.phase == "decode" and q != 1:
        raise ValueError(f"--phase: decode prices one query row per sequence, got --q-len {q}; "
                         f"use --q-len 1 or --phase prefill")
    return shape, infer_phase(shape, args.phase)


def parse_entries(text: str | None, phase: str, kernel: str | None) -> list[tuple[str, str | None]]:
    """``METHOD[:KERNEL]`` entries (default: every method with a kernel for ``phase``), each
    checked against the method's kernel choices; ``kernel`` applies to entries without one."""
    from sim.cost.methods import COST_PATHS

    if text is None:
        names = [m for m in COST_PATHS.names() if COST_PATHS.get(m).kernels.get(phase)]
        if kernel is not None:
            names = [m for m in names if kernel in COST_PATHS.get(m).kernels.get(phase, ())]
            if not names:
                raise ValueError(f"--kernel: no method has a {kernel!r} kernel for {phase}")
        items = names
    else:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError(f"--methods: expected METHOD[:KERNEL],... got {text!r}")
    out = []
    for it in items:
        name, _, k = it.partition(":")
        k = k or kernel
        if name not in COST_PATHS:
            raise ValueError(f"--methods: {name!r} has no cost model; expected one of "
                             f"{COST_PATHS.names()}")
        choices = COST_PATHS.get(name).kernels.get(phase, ())
        if not choices:
            raise ValueError(f"--methods: {name!r} has no {phase} kernel (its kernels: "
                             f"{dict(COST_PATHS.get(name).kernels)})")
        if k is not None and k not in choices:
            raise ValueError(f"--kernel: {name!r} has {list(choices)} for {phase}, not {k!r}")
        out.append((name, k))
    return out


def rows(args: argparse.Namespace) -> list[dict]:
    """The table's rows (raw numbers; ``note`` says why a method cannot run on a GPU)."""
    from sim.cost import UnsupportedOnHardware, available_hardware, load_hardware, speedup

    from sim.cost.methods import COST_PATHS

    shape, phase = _shape(args)
    entries = parse_entries(args.methods, phase, args.kernel)
    if args.baseline not in COST_PATHS:
        raise ValueError(f"--baseline: expected one of {COST_PATHS.names()}, "
                         f"got {args.baseline!r}")
    if args.tier in ("pipeline", "calibrated"):
        try:
            import gpu.counting
        except ImportError as e:
            raise ValueError(f"--tier {args.tier}: counts each kernel's SASS, which needs "
                             f"triton ({e}); use --tier tiled") from None
        gpu.counting.install()
    hws = ([h.strip() for h in args.hardware.split(",") if h.strip()] if args.hardware
           else available_hardware())
    if not hws:
        raise ValueError(f"--hardware: expected ids or paths, got {args.hardware!r}")
    loaded = []
    for h in hws:
        try:
            loaded.append(load_hardware(h))
        except ValueError as e:
            raise ValueError(f"--hardware: {e}") from None
    out = []
    bar = cliopts.progress(total=len(loaded) * len(entries), enabled=not args.no_progress,
                           desc="predict", unit="point")
    for hw in loaded:
        for name, kernel in entries:
            base = {"hardware": hw.name, "method": name, "kernel": kernel or "", "phase": phase,
                    "tier": args.tier, "batch": shape.batch, "q_heads": shape.q_heads,
                    "kv_heads": shape.kv_heads, "q_len": shape.q_len, "kv_len": shape.kv_len,
                    "head_dim": shape.head_dim, "causal": shape.causal, "note": ""}
            try:
                s = speedup(name, shape, hw, baseline=args.baseline, phase=phase, kernel=kernel,
                            tier=args.tier, clock=args.clock)
            except UnsupportedOnHardware as e:
                out.append({**base, "note": f"n/a: {str(e).split(';')[0]}"})
                bar.update(1)
                continue
            p = s.method
            out.append({**base, "kernel": p.kernel, "time_us": p.time * 1e6,
                        "baseline": s.baseline.method, "baseline_kernel": s.baseline.kernel,
                        "speedup": s.value, "bound": p.bound, "TOPs": p.achieved_tops,
                        "TBs": p.achieved_gbs / 1e3, "hbm_MB": p.hbm_bytes / 1e6,
                        "intensity_op_per_B": p.intensity})
            bar.update(1)
    bar.close()
    return out


def markdown(rs: list[dict]) -> str:
    if not rs:
        return "(no rows)\n"
    r0 = rs[0]
    shape = (f"B{r0['batch']} H{r0['q_heads']}/{r0['kv_heads']} Lq {r0['q_len']} "
             f"Lk {r0['kv_len']} D{r0['head_dim']}{' causal' if r0['causal'] else ''}")
    lines = [f"{r0['phase']}, {shape}, {r0['tier']} tier; speedup vs "
             f"{next((r['baseline'] for r in rs if r.get('baseline')), '-')} on the same shape "
             "(decode: ideal vs ideal for kernels that are not qsattn's own)", "",
             "| hardware | method:kernel | time (µs) | speedup (×) | bound | TOP/s | TB/s |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in rs:
        ent = f"{r['method']}:{r['kernel']}" if r["kernel"] else r["method"]
        if r.get("time_us") is None:
            lines.append(f"| {r['hardware']} | {ent} | {r['note']} | | | | |")
            continue
        lines.append(f"| {r['hardware']} | {ent} | {r['time_us']:.1f} | {r['speedup']:.2f} | "
                     f"{r['bound']} | {r['TOPs']:.1f} | {r['TBs']:.2f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    rs = rows(args)
    cliopts.emit(cliopts.render(rs, args.format, columns=COLUMNS, markdown=markdown(rs)),
                 args.out)
    return 0
