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
# the cost model's held-out targets (issue 16): median and p90 of |pred - meas| / meas and the
# median speedup-ratio error, at the calibrated tier, on rows of a held-out sweep
HELD_OUT_MEDIAN = 0.07
HELD_OUT_P90 = 0.15
HELD_OUT_RATIO = 0.07
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


def quantile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default) of ``xs``; None when empty.

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.9)
    3.7
    """
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 12)


def noise(row: dict) -> float | None:
    """Run-to-run noise of one row: ``|t1 - t2| / t1`` of its two independent timings
    (``timing.repeat``), None without a repeat."""
    t1, t2 = row.get("measured_us"), (row.get("timing") or {}).get("repeat_us")
    if not (_num(t1) and _num(t2)) or t1 <= 0:
        return None
    return abs(t2 - t1) / t1


def noise_floor(rows: Iterable[dict]) -> tuple[float | None, float | None, int]:
    """(median, p90, count) of the rows' run-to-run noise."""
    xs = [x for x in (noise(r) for r in rows) if x is not None]
    return (statistics.median(xs) if xs else None), quantile(xs, 0.9), len(xs)


def held_out(rows: Iterable[dict]) -> list[dict]:
    return [r for r in rows if r.get("held_out")]


def _verdict(x, target, floor) -> str:
    if x is None:
        return "n/a"
    if x > target:
        return f"{x:.1%} (misses <= {target:.0%})"
    if floor is not None and floor > target:
        return (f"{x:.1%} (cannot be called met: the measured noise floor {floor:.1%} is above "
                f"the {target:.0%} target)")
    return f"{x:.1%} (meets <= {target:.0%})"


def held_out_targets(rows: Sequence[dict], tier: str = "calibrated") -> list[str]:
    """Markdown lines of the held-out targets at ``tier`` (empty without held-out rows)."""
    ho = held_out(rows)
    if not ho:
        return []
    errs = [e for e in (rel_err(r, tier) for r in ho) if e is not None]
    med = statistics.median(errs) if errs else None
    p90 = quantile(errs, 0.9)
    ratio = median_ratio_err(ho, tier)
    nf_med, nf_p90, n_nf = noise_floor(ho)
    digests = sorted({r.get("model_digest") for r in ho if r.get("model_digest")})
    pdig = sorted({r.get("pred_model_digest") or r.get("model_digest") for r in ho
                   if r.get("pred_model_digest") or r.get("model_digest")})
    lines = [f"### Cost model on held-out points ({len(ho)} rows, {tier} tier)", "",
             f"- Model digest frozen before measurement: {', '.join(digests) or 'not recorded'}"
             f"; predictions made with: {', '.join(pdig) or 'not recorded'}"
             + ("" if digests == pdig else " (DIFFERENT: the model changed after the run)"),
             f"- Run-to-run noise floor (|t1 - t2| / t1 of two independent timings per point): "
             f"median {_fmt(nf_med)}, p90 {_fmt(nf_p90)} over {n_nf} points",
             f"- Median |pred - meas| / meas: {_verdict(med, HELD_OUT_MEDIAN, nf_med)}",
             f"- p90 |pred - meas| / meas: {_verdict(p90, HELD_OUT_P90, nf_p90)}",
             f"- Median speedup-ratio error vs {BASELINE}: "
             f"{_verdict(ratio, HELD_OUT_RATIO, nf_med)}", ""]
    lines += decomposition(ho, tier)
    return lines


def decomposition(rows: Sequence[dict], tier: str = "calibrated") -> list[str]:
    """Markdown: where the residual lies, as shares of sum |ln(pred / meas)| by method and phase
    and by the unit the prediction says bounds the point, with the signed mean (bias)."""
    terms = []
    for r in rows:
        meas, pred = r.get("measured_us"), (r.get("pred_us") or {}).get(tier)
        if _num(meas) and _num(pred) and meas > 0 and pred > 0:
            terms.append((group(r), (r.get("bound") or {}).get(tier, "?"),
                          math.log(pred / meas)))
    total = sum(abs(t[2]) for t in terms)
    if not terms or total == 0:
        return []
    out = ["Residual by source: share of sum |ln(pred / meas)| and mean ln(pred / meas) "
           "(negative: predicted faster than measured).", "",
           "| group | points | share | mean ln(pred/meas) |", "|---|---|---|---|"]
    for key_i, title in ((0, "method"), (1, "bound")):
        acc: dict = {}
        for t in terms:
            acc.setdefault(t[key_i], []).append(t[2])
        for k, v in sorted(acc.items(), key=lambda kv: -sum(abs(x) for x in kv[1])):
            out.append(f"| {title}: {k} | {len(v)} | {sum(abs(x) for x in v) / total:.0%} | "
                       f"{statistics.mean(v):+.3f} |")
    return out + [""]


def telemetry_line(rows: Iterable[dict]) -> str | None:
    """The SM clock and power seen while timing (medians over points of each point's median)."""
    clk, pw, lo, hi = [], [], [], []
    for r in rows:
        t = r.get("telemetry") or {}
        c, p = t.get("clocks.sm") or {}, t.get("power.draw") or {}
        if _num(c.get("median")):
            clk.append(c["median"])
            lo.append(c.get("min", c["median"]))
            hi.append(c.get("max", c["median"]))
        if _num(p.get("median")):
            pw.append(p["median"])
    if not clk:
        return None
    return (f"- SM clock while timing: median {statistics.median(clk):.0f} MHz (range "
            f"{min(lo):.0f}-{max(hi):.0f} MHz over {len(clk)} points)"
            + (f"; power median {statistics.median(pw):.0f} W" if pw else ""))


def parameter_table(hardware: str) -> list[str]:
    """Markdown: every parameter of the counted tiers on ``hardware`` and where it comes from
    (sim.cost.calibrated.parameter_sources); nothing is fitted to attention timings."""
    from sim.cost import load_hardware
    from sim.cost.calibrated import parameter_sources
    from sim.cost.hardware import apply_measured
    hw = load_hardware(hardware)
    try:
        hw = apply_measured(hw)
    except FileNotFoundError:
        pass
    ps = parameter_sources(hw)
    kinds = {}
    for p_ in ps:
        kinds.setdefault(p_["kind"], []).append(p_["name"])
    lines = [f"### Parameters of the counted tiers on {hardware}", "",
             "From the datasheet (sourced values of the hardware description), the "
             "microbenchmarks of `qsattn calibrate` (measured), or estimates (sourced, marked "
             "ESTIMATE); instruction streams, dependencies, registers, shared memory and loop "
             "structure come from each kernel's own compile. None is fitted to attention "
             "timings.", ""]
    for k in ("measured", "datasheet", "estimate"):
        if k in kinds:
            lines.append(f"- {k} ({len(kinds[k])}): " + ", ".join(kinds[k]))
    return lines + [""]


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


def markdown(rows: Sequence[dict], *,
             tiers: Sequence[str] = ("roofline", "tiled", "pipeline", "calibrated"),
             not_run: Sequence[str] = (), images: Sequence[str] = ()) -> str:
    """The body of ``reports/validation/summary.md`` (without the provenance header)."""
    rows = list(rows)
    lines = held_out_targets(rows)
    tl = telemetry_line(rows)
    if tl:
        lines += [tl, ""]
    hws = sorted({r.get("hardware") for r in held_out(rows) if r.get("hardware")})
    for h in hws:
        try:
            lines += parameter_table(h)
        except (ValueError, FileNotFoundError) as e:
            lines += [f"(parameters of {h}: {e})", ""]
    lines += ["### Targets (shown, not asserted)", ""]
    if not held_out(rows):     # a held-out sweep is judged above, against the held-out targets
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
              "Noise: |t1 - t2| / t1 of the point's two independent timings (`timing.repeat`).",
              "",
              "| method | shape | measured us | noise | " + " | ".join(tiers)
              + " | bound (cal.) |", "|---|---|---|---|" + "---|" * len(tiers) + "---|"]
    for r in rows:
        p = r.get("pred_us") or {}
        lines.append(f"| {r.get('method')} | {r.get('label')} | "
                     f"{_fmt(r.get('measured_us'), '.1f')} | {_fmt(noise(r))} | "
                     + " | ".join(_fmt(p.get(t), '.1f') for t in tiers)
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
    lines += ["", "Data of these tables: `summary_points.csv` (per point, numerics included), "
              "`summary_medians.csv`, `summary_ratios.csv`; of the figure: `pred_vs_meas.csv`."]
    if images:
        lines += [""] + [f"![{Path(i).stem}]({Path(i).name})" for i in images]
    return "\n".join(lines) + "\n"


def scatter(rows: Sequence[dict], path: str | Path,
            tiers: Sequence[str] = ("tiled", "calibrated")) -> Path:
    """PNG: predicted vs measured time, one panel per method, prefill on the first row and
    decode on the second; y = x and a +-10% band; marker per tier (hollow circle = tiled, filled
    square = calibrated). Style: :mod:`qsattn.plotstyle`; the points go to the CSV beside it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from qsattn import plotstyle as ps

    rows = [r for r in rows if _num(r.get("measured_us"))]
    phases = [p for p in ("prefill", "decode") if any(phase(r) == p for r in rows)] or ["prefill"]
    methods = {p: sorted({r.get("method", "?") for r in rows if phase(r) == p},
                         key=lambda m: list(ps.facet_by_family([m, *ps.METHOD_COLORS])).index(
                             ps.family(m))) for p in phases}
    ncols = max(1, max(len(m) for m in methods.values()))
    fig, axes = ps.figure(len(phases), ncols, width=min(ps.MAX_WIDTH_IN, 3.0 * ncols + 1.6),
                          row_height=3.0)
    marks = {"roofline": ("x", False), "tiled": ("o", False), "calibrated": ("s", True)}
    data = []
    for i, ph in enumerate(phases):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(methods[ph]):
                ax.set_visible(False)
                continue
            m = methods[ph][j]
            c = ps.color(m)
            sub = [r for r in rows if phase(r) == ph and r.get("method") == m]
            vals = [r["measured_us"] for r in sub] + [
                r["pred_us"][t] for r in sub for t in tiers
                if _num((r.get("pred_us") or {}).get(t))]
            lo, hi = (min(vals) / 1.5, max(vals) * 1.5) if vals else (1.0, 10.0)
            xs = [lo, hi]
            ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.88",
                            lw=0)
            ax.plot(xs, xs, color="0.2", lw=0.9)
            for t in tiers:
                pts = [(r["measured_us"], r["pred_us"][t]) for r in sub
                       if _num((r.get("pred_us") or {}).get(t))]
                if pts:
                    mk, filled = marks.get(t, ("o", True))
                    ax.scatter(*zip(*pts), marker=mk, s=30, linewidths=1.1,
                               facecolors=c if filled else "none", edgecolors=c, zorder=3)
                    data += [{"method": m, "phase": ph, "tier": t, "measured_us": x,
                              "predicted_us": y} for x, y in pts]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ps.log_ticks(ax, lo, hi)
            ax.set_aspect("equal")
            ax.set_title(f"{m} ({ph})")
            if i == len(phases) - 1 or j >= len(methods.get(phases[-1], [])):
                ax.set_xlabel(f"measured ({ps.US})")
            if j == 0:
                ax.set_ylabel(f"predicted ({ps.US})")
    handles = [Line2D([], [], color="0.2", lw=0.9), Patch(color="0.88")]
    labels = ["y = x", "within ±10%"]
    for t in tiers:
        mk, filled = marks.get(t, ("o", True))
        handles.append(Line2D([], [], ls="", marker=mk, color="0.3",
                              markerfacecolor="0.3" if filled else "none"))
        labels.append(f"{t} tier")
    ps.legend_right(fig, handles, labels)
    fig.suptitle("Predicted vs measured kernel time", x=0.02, ha="left")
    return ps.save(fig, path, data)


def table_rows(rows: Sequence[dict], tiers: Sequence[str] = ("roofline", "tiled", "calibrated")
               ) -> dict[str, list[dict]]:
    """The numbers of the summary's tables: ``points`` (one row per point: times per tier,
    relative errors, bound, numerics), ``medians`` (per method group and tier) and ``ratios``
    (speedups vs the baseline, measured and predicted, per tier)."""
    points = []
    for r in rows:
        nm = r.get("numerics") or {}
        row = {"method": r.get("method"), "phase": phase(r), "shape": r.get("label"),
               "measured_us": r.get("measured_us")}
        for t in tiers:
            row[f"{t}_us"] = (r.get("pred_us") or {}).get(t)
            row[f"{t}_rel_err"] = rel_err(r, t)
            row[f"{t}_bound"] = (r.get("bound") or {}).get(t)
        for k in ("heads", "ulp_bound", "within_ulp_pct", "kernel_max_err", "kernel_rel_l2",
                  "sim_max_err", "sim_rel_l2"):
            row[f"numerics_{k}"] = nm.get(k)
        for name, d in (nm.get("ints") or {}).items():
            row[f"identical_pct_{name}"] = d.get("identical_pct")
        points.append(row)
    groups = sorted({group(r) for r in rows if r.get("method")},
                    key=lambda g: (g.endswith("(decode)"), g))
    medians = []
    for m in groups + ["all"]:
        sub = list(rows) if m == "all" else [r for r in rows if r.get("method") and group(r) == m]
        medians.append({"group": m, "points": sum(1 for r in sub if _num(r.get("measured_us"))),
                        **{f"{t}_median_rel_err": median_rel_err(sub, t) for t in tiers}})
    ratios = [{"tier": t, **s} for t in tiers for s in speedup_ratios(rows, t)]
    return {"points": points, "medians": medians, "ratios": ratios}


def write_tables(rows: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """``summary_<name>.csv`` for each of :func:`table_rows` under ``out_dir``."""
    from qsattn.plotstyle import write_csv
    return [write_csv(Path(out_dir) / f"summary_{k}.csv", v) for k, v in table_rows(rows).items()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qsattn.validation_summary [DIR]``: redraw ``pred_vs_meas.png`` and write the
    tables' CSVs from the stored results of ``DIR`` (default reports/validation); no GPU, the
    measurements and predictions are used as stored."""
    import json
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    d = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "reports" / "validation"
    store = d / "results.jsonl"
    if not store.is_file():
        print(f"no results store at {store}", file=sys.stderr)
        return 1
    rows = [json.loads(x) for x in store.read_text().splitlines() if x.strip()]
    for p in [scatter(rows, d / "pred_vs_meas.png"), *write_tables(rows, d)]:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
