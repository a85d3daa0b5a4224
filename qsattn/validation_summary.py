"""Summary math of a GPU validation run, on the rows ``qsattn validate`` stores.

A row (one method x phase x shape point) holds, among provenance fields::

    method, phase ("prefill" or "decode"; rows without one are prefill),
    label (shape in words), shape_key (the shape without the method),
    measured_us                    median kernel time (CUDA events, cold L2)
    pred_us  {tier: us}            cost-model prediction per tier (roofline, tiled, calibrated)
    bound    {tier: unit}          the unit the prediction says bounds the point
    numerics {                     None when the numerics part was not run
      ints: {name: {"identical_pct": float, "exp_free": bool}},   decode double_sparse
                                   "indices" adds rows, near_tie_rows, near_tie_identical
                                   (identical_pct is over the rows without a near tie)
      ulp_bound, within_ulp_pct,   kernel output vs sim output, ULPs (decode: + abs_slack)
      kernel_max_err, kernel_rel_l2, sim_max_err, sim_rel_l2   each vs float64 ref.attention
    }

Definitions (all medians are over the rows that have both numbers):

* relative time error of a row at a tier: ``|pred - meas| / meas``;
* speedup ratio of method m at a shape: ``t(fp16_flash) / t(m)`` with the baseline of the same
  phase and shape, measured and predicted; its error ``|pred_ratio - meas_ratio| / meas_ratio``;
* outliers: rows whose relative error at the calibrated tier exceeds ``threshold``, worst first,
  with the unit that bounds them.

>>> rows = [{"method": "a", "measured_us": 100.0, "pred_us": {"tiled": 110.0}},
...         {"method": "a", "measured_us": 100.0, "pred_us": {"tiled": 70.0}}]
>>> median_rel_err(rows, "tiled")
0.2
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterable, Sequence

BASELINE = "fp16_flash"
TARGET_TIME = 0.10
TARGET_RATIO = 0.10
# A stored row of ``qsattn validate`` as the summary, ``--repredict`` and qsattn.costcheck read
# it (qsattn.store.ResultStore's ``required``).
ROW_SCHEMA = {"method": str, "shape": dict, "dtype": str, "hardware": str,
              "measured_us": (int, float, type(None)), "pred_us": (dict, type(None))}


def phase(row: dict) -> str:
    return row.get("phase") or "prefill"


def group(row: dict) -> str:
    """'method' for prefill rows, 'method (decode)' for decode rows: tables and panels."""
    return row.get("method", "?") if phase(row) == "prefill" else f"{row.get('method')} (decode)"


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def rel_err(row: dict, tier: str) -> float | None:
    """``|pred - meas| / meas`` of one row at ``tier``; None when either is missing."""
    meas = row.get("measured_us")
    pred = (row.get("pred_us") or {}).get(tier)
    if not (_num(meas) and _num(pred)) or meas <= 0:
        return None
    return abs(pred - meas) / meas


def median_rel_err(rows: Iterable[dict], tier: str) -> float | None:
    errs = [e for e in (rel_err(r, tier) for r in rows) if e is not None]
    return statistics.median(errs) if errs else None


def speedup_ratios(rows: Sequence[dict], tier: str, baseline: str = BASELINE) -> list[dict]:
    """Per (method != baseline, phase, shape): measured and predicted speedup vs the baseline
    of the same phase and shape."""
    base = {(phase(r), r.get("shape_key")): r for r in rows if r.get("method") == baseline}
    out = []
    for r in rows:
        b = base.get((phase(r), r.get("shape_key")))
        if r.get("method") == baseline or b is None:
            continue
        mm, mb = r.get("measured_us"), b.get("measured_us")
        pm, pb = (r.get("pred_us") or {}).get(tier), (b.get("pred_us") or {}).get(tier)
        if not all(_num(x) and x > 0 for x in (mm, mb, pm, pb)):
            continue
        meas, pred = mb / mm, pb / pm
        out.append({"method": r["method"], "phase": phase(r), "label": r.get("label"),
                    "measured": meas,
                    "predicted": pred, "err": abs(pred - meas) / meas})
    return out


def median_ratio_err(rows: Sequence[dict], tier: str) -> float | None:
    errs = [s["err"] for s in speedup_ratios(rows, tier)]
    return statistics.median(errs) if errs else None


def outliers(rows: Iterable[dict], tier: str = "calibrated",
             threshold: float = TARGET_TIME) -> list[dict]:
    """Rows off by more than ``threshold`` at ``tier``, worst first."""
    out = []
    for r in rows:
        e = rel_err(r, tier)
        if e is not None and e > threshold:
            out.append({"method": r.get("method"), "label": r.get("label"), "err": e,
                        "measured_us": r["measured_us"], "pred_us": r["pred_us"][tier],
                        "bound": (r.get("bound") or {}).get(tier, "?")})
    return sorted(out, key=lambda o: -o["err"])


def exp_free_identical(rows: Iterable[dict]) -> tuple[int, int, list[str]]:
    """(identical, total, failures) over every exp-free integer intermediate of every row."""
    ok = tot = 0
    bad = []
    for r in rows:
        for name, d in ((r.get("numerics") or {}).get("ints") or {}).items():
            if not d.get("exp_free") or not _num(d.get("identical_pct")):
                continue
            tot += 1
            if d["identical_pct"] == 100.0:
                ok += 1
            else:
                bad.append(f"{r.get('method')} {r.get('label')}: {name} "
                           f"{d['identical_pct']:.4f}%")
    return ok, tot, bad


def _int_cell(name: str, d: dict) -> str:
    star = "*" if d.get("exp_free") else ""
    pct = d.get("identical_pct")
    cell = f"{name}{star} " + (f"{pct:.3f}%" if _num(pct) else f"n/a ({d.get('note', '?')})")
    if d.get("near_tie_rows"):
        cell += (f" (+{d['near_tie_rows']} near-tie rows, {d.get('near_tie_identical', 0)} "
                 f"identical)")
    return cell


def _fmt(x, spec=".1%"):
    return "n/a" if x is None else format(x, spec)


def _target(x, target):
    if x is None:
        return "n/a"
    return f"{x:.1%} ({'meets' if x <= target else 'misses'} <= {target:.0%})"


def markdown(rows: Sequence[dict], *, tiers: Sequence[str] = ("roofline", "tiled", "calibrated"),
             not_run: Sequence[str] = (), images: Sequence[str] = ()) -> str:
    """The body of ``reports/validation/summary.md`` (without the provenance header)."""
    rows = list(rows)
    lines = ["### Targets (shown, not asserted)", ""]
    lines.append(f"- Median |pred - meas| / meas at the calibrated tier: "
                 f"{_target(median_rel_err(rows, 'calibrated'), TARGET_TIME)}")
    lines.append(f"- Median speedup-ratio error vs {BASELINE} at the calibrated tier: "
                 f"{_target(median_ratio_err(rows, 'calibrated'), TARGET_RATIO)}")
    ok, tot, bad = exp_free_identical(rows)
    lines.append(f"- Exp-free integer intermediates identical to the simulator: {ok}/{tot}"
                 + (" (100%)" if tot and ok == tot else "") + ("" if not bad else
                                                                 " -- differ: " + "; ".join(bad)))
    lines += ["", "### Predicted vs measured time: median |pred - meas| / meas", "",
              "| method | points | " + " | ".join(tiers) + " |",
              "|---|---|" + "---|" * len(tiers)]
    groups = sorted({group(r) for r in rows if r.get("method")},
                    key=lambda g: (g.endswith("(decode)"), g))
    for m in groups + ["all"]:
        sub = rows if m == "all" else [r for r in rows if r.get("method") and group(r) == m]
        n = sum(1 for r in sub if _num(r.get("measured_us")))
        lines.append(f"| {m} | {n} | " + " | ".join(_fmt(median_rel_err(sub, t)) for t in tiers)
                     + " |")
    lines += ["", f"### Speedup ratios vs {BASELINE} (median error)", "",
              "| tier | median error | worst |", "|---|---|---|"]
    for t in tiers:
        sr = speedup_ratios(rows, t)
        worst = max(sr, key=lambda s: s["err"]) if sr else None
        lines.append(f"| {t} | {_fmt(median_ratio_err(rows, t))} | " + (
            f"{worst['method']} {worst['label']}: measured {worst['measured']:.2f}x, "
            f"predicted {worst['predicted']:.2f}x" if worst else "n/a") + " |")
    outs = outliers(rows)
    lines += ["", f"### Outliers at the calibrated tier (> {TARGET_TIME:.0%} off), worst first",
              ""]
    if outs:
        lines += ["| method | shape | measured us | predicted us | error | bound |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {o['method']} | {o['label']} | {o['measured_us']:.1f} | "
                  f"{o['pred_us']:.1f} | {o['err']:.1%} | {o['bound']} |"
                  for o in outs]
    else:
        lines.append("none")
    lines += ["", "### Per point", "",
              "| method | shape | measured us | roofline | tiled | calibrated | bound (cal.) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("pred_us") or {}
        lines.append(f"| {r.get('method')} | {r.get('label')} | "
                     f"{_fmt(r.get('measured_us'), '.1f')} | "
                     + " | ".join(_fmt(p.get(t), '.1f') for t in ("roofline", "tiled",
                                                                  "calibrated"))
                     + f" | {(r.get('bound') or {}).get('calibrated', '?')} |")
    lines += ["", "### Numerics: kernel vs simulator on the same inputs", "",
              "Integer columns: % of elements identical (exp-free ones marked *). Errors vs "
              "float64 `ref.attention` on the heads simulated.", "",
              "| method | shape | heads | integers identical | within ULP bound | "
              "kernel max / rel L2 | sim max / rel L2 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        nm = r.get("numerics")
        if not nm:
            continue
        ints = ", ".join(_int_cell(k, d) for k, d in (nm.get("ints") or {}).items()) or "-"
        slack = f" + {nm['abs_slack']:.3g}" if _num(nm.get("abs_slack")) and nm["abs_slack"] else ""
        ctx = f"; context {nm['context']}" if nm.get("context_subsampled") else ""
        lines.append(
            f"| {r.get('method')} | {r.get('label')} | {nm.get('heads', '?')}{ctx} | {ints} | "
            f"{_fmt(nm.get('within_ulp_pct'), '.3f')}% (<= {nm.get('ulp_bound')} ulp{slack}) | "
            f"{_fmt(nm.get('kernel_max_err'), '.3g')} / {_fmt(nm.get('kernel_rel_l2'), '.3g')} | "
            f"{_fmt(nm.get('sim_max_err'), '.3g')} / {_fmt(nm.get('sim_rel_l2'), '.3g')} |")
    if not_run:
        lines += ["", "### Not run", ""] + [f"- {n}" for n in not_run]
    if images:
        lines += [""] + [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(lines) + "\n"


def scatter(rows: Sequence[dict], path: str | Path,
            tiers: Sequence[str] = ("tiled", "calibrated")) -> Path:
    """PNG: predicted vs measured time, one panel per method and phase, y = x and +-10%
    bands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if _num(r.get("measured_us"))]
    methods = sorted({group(r) for r in rows},
                     key=lambda g: (g.endswith("(decode)"), g)) or ["(no rows)"]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4.0), squeeze=False)
    markers = {"roofline": "x", "tiled": "o", "calibrated": "s"}
    for ax, m in zip(axes[0], methods):
        sub = [r for r in rows if group(r) == m]
        vals = [r["measured_us"] for r in sub] + [
            r["pred_us"][t] for r in sub for t in tiers if _num((r.get("pred_us") or {}).get(t))]
        lo, hi = (min(vals) / 1.5, max(vals) * 1.5) if vals else (1.0, 10.0)
        xs = [lo, hi]
        ax.plot(xs, xs, "k-", lw=1, label="y = x")
        ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.85",
                        label="+-10%")
        for t in tiers:
            pts = [(r["measured_us"], r["pred_us"][t]) for r in sub
                   if _num((r.get("pred_us") or {}).get(t))]
            if pts:
                ax.scatter(*zip(*pts), marker=markers.get(t, "o"), label=t,
                           facecolors="none" if t != "calibrated" else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("measured (us)")
        ax.set_ylabel("predicted (us)")
        ax.set_title(m)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
