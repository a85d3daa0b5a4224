"""Predicted vs measured time on every measured H100 point: ``python -m qsattn.costcheck``.

Reads ``reports/bench/h100_sxm/prefill.json`` (our Triton kernels: launch-config sweep, target point,
L sweep; each with the launch it ran) and ``reports/validation/h100_sxm/results.jsonl``
(fp16_flash at the shipped tiling and the default launch of ``configs/kernels/<arch>/launch.yaml``), predicts each at the tiled and calibrated
tiers with the same spec overrides and launch, and prints one markdown table plus medians.

Kinds of points: ``attn`` = the attention kernel alone (what the model prices); ``+quant`` =
int8_flash/turbo rows of the L sweep that also run the three Q/K/V quantization kernels (not
priced: shown, excluded from the medians); ``host`` = points under 1 ms timed by
the harness of the time (``time_cuda``, since replaced by ``gpu.bench.time_gpu``), whose CUDA events bracketed one synchronous Python call (allocations,
the Triton launch), so host time is inside the measurement (the same fp16 shape measures
407 us there and 198 us in ``qsattn validate``'s back-to-back timing): shown, median apart.

Both files measured the kernels of git a37a004. ``python -m qsattn.costcheck --probe`` predicts
instead the points of ``reports/bench/prefill_probe.json`` (B=4, H=32, D=128, L=8192,
block_n=128, attention kernel only) that ran today's kernels: int8_flash (default numerics) and
turbo with exp2. Its other rows are left out: the turbo SAS rows ran a floor that was since
reverted, and the ``p-fp32-even`` rows run PQUANT mode 2, which has no counted mix.

``python -m qsattn.costcheck --validation`` re-predicts every measured row of
``reports/validation/h100_sxm/results.jsonl`` (prefill and decode; the file is only read) with
the current model and prints the median signed errors per method/phase and tier, stored vs now.

>>> rows = points()                   # doctest: +SKIP
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from qsattn import provenance
from qsattn.store import ResultStore
from qsattn.validation_summary import ROW_SCHEMA
from sim.arch import prefill_launch
from sim.cost import Shape, load_hardware, predict
from sim.spec import load_method
from gpu.counting import install as _install_counter

# the calibrated tier prices the SASS of the kernel that would run, compiled on the CPU
_install_counter()

ROOT = provenance.ROOT
BENCH = ROOT / "reports" / "bench" / "h100_sxm" / "prefill.json"
VALIDATION = ROOT / "reports" / "validation" / "h100_sxm" / "results.jsonl"
PROBE = ROOT / "reports" / "bench" / "prefill_probe.json"
_PROBE_VARIANTS = {"int8_flash": ("int8_flash", {}),               # probe row name -> spec
                   "turbo exp2": ("turbo", {"softmax__exp": "exp2"})}
HOST_MS = 1.0          # bench rows below this are host-inclusive (module doc)


def _read(path: Path, parse, what: str) -> list[dict]:
    """``parse(path)`` of a stored measurement file; a file that is not what it should be is a
    ValueError naming it (one line in the CLI), never a KeyError from deep inside."""
    try:
        return parse(path)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a valid {what} ({type(e).__name__}: {e})") from None


def _bench_points(path: Path) -> list[dict]:
    d = json.loads(path.read_text())
    cfg = d["config"]["prefill"]
    B, H, Hk, D = cfg["batch"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    best = d.get("launch_best", {})
    out = []
    for r in d["rows"]:
        name = r["name"]
        shape = Shape(B, H, Hk, r["L"], r["L"], D, bool(r["causal"]))
        if r.get("tune"):
            # "tune <method> bn<N> bm<M> w<W> s<S>": attention kernel only
            _, m, bn, bm, w, st = name.split()
            launch = {"block_m": int(bm[2:]), "num_warps": int(w[1:]), "num_stages": int(st[1:])}
            over, kind = {"tiling__block_n": int(bn[2:])}, "attn"
        elif r.get("kind") in ("ours", "ours-excl-quant", "variant"):
            m = name.split()[0]
            lb = best.get(m) or {}
            launch = dict(lb.get("launch") or {})
            over = {"tiling__block_n": int(lb.get("block_n", 64))}
            if "exp2" in name:
                over["softmax__exp"] = "exp2"
            if "bn64" in name:
                over["tiling__block_n"] = 64
            quant = r.get("kind") == "ours" and m != "fp16_flash"
            kind = "+quant" if quant else "attn"
        else:
            continue
        if kind == "attn" and r["ms"] < HOST_MS:
            kind = "host"
        out.append({"source": "bench", "name": name, "method": m, "over": over,
                    "launch": launch, "shape": shape, "ms": float(r["ms"]), "kind": kind})
    return out


def _validation_points(path: Path) -> list[dict]:
    out = []
    for r in ResultStore(path, required=ROW_SCHEMA).rows():     # read only: bad rows raise
        if r.get("phase") != "prefill" or r.get("measured_us") is None:
            continue
        s = r["shape"]
        shape = Shape(s["batch"], s["q_heads"], s["kv_heads"], s["q_len"], s["kv_len"],
                      s["head_dim"], bool(s["causal"]))
        out.append({"source": "validate", "name": r["method"], "method": r["method"], "over": {},
                    "launch": prefill_launch("hopper", r["method"], s["head_dim"]),  # H100 runs
                    "shape": shape, "ms": r["measured_us"] / 1e3, "kind": "attn"})
    return out


def _probe_points(path: Path) -> list[dict]:
    out = []
    for r in json.loads(path.read_text())["rows"]:
        name = r["name"]
        if r.get("kind") != "ours" or " attn-only " not in name:
            continue
        variant, cfg = name.split(" attn-only ")
        if variant not in _PROBE_VARIANTS:
            continue
        m, over = _PROBE_VARIANTS[variant]
        bm, w, st = cfg.split()
        launch = {"block_m": int(bm[2:]), "num_warps": int(w[1:]), "num_stages": int(st[1:])}
        out.append({"source": "probe", "name": name, "method": m,
                    "over": dict(over, tiling__block_n=128), "launch": launch,
                    "shape": Shape(4, 32, 32, 8192, 8192, 128, bool(r["causal"])),
                    "ms": float(r["ms"]), "kind": "attn"})
    return out


def points(bench: Path | None = BENCH, validation: Path | None = VALIDATION,
           hardware: str = "h100_sxm", tiers=("tiled", "calibrated"),
           probe: Path | None = None) -> list[dict]:
    """Every measured point with its predictions: dicts with ``pred`` {tier: ms}, ``err``
    {tier: (pred - meas) / meas} and ``bound`` {tier: unit}. A None path is skipped."""
    pts = []
    if bench is not None and Path(bench).exists():
        pts += _read(Path(bench), _bench_points, "qsattn bench result")
    if validation is not None and Path(validation).exists():
        pts += _read(Path(validation), _validation_points, "qsattn validate store")
    if probe is not None:
        pts += _read(Path(probe), _probe_points, "prefill probe result")
    specs: dict = {}
    for p in pts:
        key = (p["method"], tuple(sorted(p["over"].items())))
        if key not in specs:
            specs[key] = load_method(p["method"], **p["over"])
        p["pred"], p["err"], p["bound"] = {}, {}, {}
        for t in tiers:
            pr = predict(specs[key], p["shape"], hardware, tier=t, launch=p["launch"] or None)
            p["pred"][t] = pr.time * 1e3
            p["err"][t] = (pr.time * 1e3 - p["ms"]) / p["ms"]
            p["bound"][t] = pr.bound
    return pts


def medians(pts: list[dict], tier: str, kinds=("attn",)) -> float:
    e = [abs(p["err"][tier]) for p in pts if p["kind"] in kinds]
    return statistics.median(e) if e else float("nan")


def ratio_errors(pts: list[dict], tier: str) -> list[tuple[str, float]]:
    """Predicted vs measured speedup of each attention-only bench point over fp16_flash at the
    same shape (the L sweep's and the target point's fp16_flash row)."""
    base = {(p["shape"]): p for p in pts if p["source"] == "bench" and p["name"] == "fp16_flash"
            and p["kind"] != "host"}
    out = []
    for p in pts:
        b = base.get(p["shape"])
        if b is None or p is b or p["source"] != "bench" or p["kind"] != "attn" \
                or p["name"].startswith("tune"):
            continue
        meas = b["ms"] / p["ms"]
        pred = b["pred"][tier] / p["pred"][tier]
        out.append((f"{p['name']} L={p['shape'].q_len}{' causal' if p['shape'].causal else ''}",
                    (pred - meas) / meas))
    return out


def table(pts: list[dict], tiers=("tiled", "calibrated")) -> str:
    head = ("| source | point | B H/Hkv L D | causal | launch (bm/w/s, bn) | kind | measured ms | "
            + " | ".join(f"{t} ms (err, bound)" for t in tiers) + " |")
    rows = [head, "|---" * (7 + len(tiers)) + "|"]
    for p in pts:
        s, ln = p["shape"], p["launch"]
        bn = p["over"].get("tiling__block_n") or load_method(p["method"]).tiling.block_n
        lc = f"{ln.get('block_m', '-')}/{ln.get('num_warps', '-')}/{ln.get('num_stages', '-')}, {bn}"
        cells = " | ".join(f"{p['pred'][t]:.3f} ({p['err'][t]:+.0%}, {p['bound'][t]})"
                           for t in tiers)
        rows.append(f"| {p['source']} | {p['name']} | {s.batch} {s.q_heads}/{s.kv_heads} "
                    f"{s.q_len} {s.head_dim} | {'y' if s.causal else 'n'} | {lc} | {p['kind']} | "
                    f"{p['ms']:.3f} | {cells} |")
    return "\n".join(rows)


def summary(pts: list[dict], tiers=("tiled", "calibrated")) -> str:
    lines = ["| tier | median abs err, attn (n) | median, host-timed (n) | median abs ratio err "
             "vs fp16_flash (n) |", "|---|---|---|---|"]
    for t in tiers:
        na = sum(p["kind"] == "attn" for p in pts)
        nh = sum(p["kind"] == "host" for p in pts)
        re = [abs(e) for _, e in ratio_errors(pts, t)]
        lines.append(f"| {t} | {medians(pts, t):.1%} ({na}) | {medians(pts, t, ('host',)):.1%} "
                     f"({nh}) | {statistics.median(re) if re else float('nan'):.1%} ({len(re)}) |")
    return "\n".join(lines)


def repredict_validation(path: Path = VALIDATION, hardware: str = "h100_sxm",
                         tiers=("roofline", "tiled", "calibrated")) -> list[dict]:
    """Every measured row of ``reports/validation/h100_sxm/results.jsonl`` (both phases) with the
    predictions stored at measurement (``stored``) and the current model's (``now``), per
    tier, in us. The file is only read. Prefill rows use the hardware architecture's default
    launch."""
    out, specs = [], {}
    arch = load_hardware(hardware).arch
    for r in ResultStore(path, required=ROW_SCHEMA).rows():     # read only: bad rows raise
        if r.get("measured_us") is None:
            continue
        sh = r["shape"]
        shape = Shape(sh["batch"], sh["q_heads"], sh["kv_heads"], sh["q_len"], sh["kv_len"],
                      sh["head_dim"], bool(sh["causal"]))
        m, ph = r["method"], r["phase"]
        spec = specs.get(m) or specs.setdefault(m, load_method(m))
        launch = prefill_launch(arch, m, sh["head_dim"]) if ph == "prefill" else None
        now, bound = {}, {}
        for t in tiers:
            pr = predict(spec, shape, hardware, phase=ph, tier=t, launch=launch)
            now[t], bound[t] = pr.time * 1e6, pr.bound
        out.append({"method": m, "phase": ph, "label": r.get("label", shape.label()),
                    "measured_us": float(r["measured_us"]), "stored": dict(r.get("pred_us") or {}),
                    "now": now, "bound": bound})
    return out


def validation_medians(rows: list[dict], tiers=("roofline", "tiled", "calibrated")) -> str:
    """Markdown: per (method, phase) and tier, the median signed error (pred - meas) / meas of
    the stored predictions and of the current model's, with the point count."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["phase"]), []).append(r)
    head = "| method | phase | n | " + " | ".join(
        f"{t} stored -> now" for t in tiers) + " |"
    lines = [head, "|---" * (3 + len(tiers)) + "|"]
    for (m, ph), rs in sorted(groups.items(), key=lambda x: (x[0][1], x[0][0])):
        cells = []
        for t in tiers:
            def med(key):
                e = [(r[key][t] - r["measured_us"]) / r["measured_us"] for r in rs
                     if t in r[key]]
                return f"{statistics.median(e):+.0%}" if e else "-"
            cells.append(f"{med('stored')} -> {med('now')}")
        lines.append(f"| {m} | {ph} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_table(rows: list[dict], tier: str = "calibrated") -> str:
    lines = [f"| method | point | measured us | {tier} stored us | {tier} now us (err, bound) |",
             "|---|---|---|---|---|"]
    for r in rows:
        st = r["stored"].get(tier)
        e = (r["now"][tier] - r["measured_us"]) / r["measured_us"]
        lines.append(f"| {r['method']} | {r['label']} | {r['measured_us']:.1f} | "
                     f"{'-' if st is None else f'{st:.1f}'} | {r['now'][tier]:.1f} ({e:+.0%}, "
                     f"{r['bound'][tier]}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m qsattn.costcheck", description=__doc__.split("\n")[0])
    ap.add_argument("--probe", action="store_true",
                    help="predict the probe's points of today's kernels (module doc) instead")
    ap.add_argument("--validation", action="store_true",
                    help="re-predict every measured row of reports/validation/h100_sxm/results.jsonl "
                         "(read only) and print median errors, stored vs now, per method/phase")
    a = ap.parse_args(argv)
    if a.validation:
        rows = repredict_validation()
        print(validation_medians(rows))
        print()
        print(validation_table([r for r in rows if r["phase"] == "decode"]))
        return 0
    pts = points(None, None, probe=PROBE) if a.probe else points()
    print(summary(pts))
    print()
    print(table(pts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
