"""Sweep plots of ``qsattn bench`` results: time and speedup over the best SDPA peer, per length.

Drawn from the JSON that ``qsattn bench`` writes (``reports/bench/{prefill,decode}.json``), so
``python -m qsattn.bench_plots`` redraws them from committed results without a GPU.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PREFILL_PEERS = ("sdpa_cudnn", "sdpa_flash", "sageattn_1.0.6")
DECODE_PEERS = ("sdpa_cudnn", "sdpa_flash", "sdpa_efficient")


def _series(rows: list[dict], keep) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if keep(r):
            out.setdefault(r["name"], {})[int(r["L"])] = float(r["ms"])
    return {k: v for k, v in out.items() if v}


def _plot(series: dict[str, dict[int, float]], peers: tuple[str, ...], title: str, xlabel: str,
          path: Path) -> Path:
    """Columns: one per method (its kernels and variants); rows: time (with every peer, dashed,
    for reference) and speedup over the fastest SDPA peer at each length. Style:
    :mod:`qsattn.plotstyle`; the plotted numbers go to the CSV beside the PNG."""
    from qsattn import plotstyle as ps

    best_peer: dict[int, float] = {}
    for name in peers:
        if name.startswith("sdpa"):
            for L, ms in series.get(name, {}).items():
                best_peer[L] = min(best_peer.get(L, float("inf")), ms)
    ours = [n for n in sorted(series) if n not in peers]
    groups = ps.facet_by_family(ours)
    styles = ps.variant_styles(ours)
    peer_names = [p for p in peers if p in series]
    lengths = sorted({L for pts in series.values() for L in pts})
    fig, axes = ps.figure(2, max(1, len(groups)), width=10.5, row_height=3.4, sharex=True,
                          sharey="row")
    data = []
    for name, pts in series.items():
        for L, ms in sorted(pts.items()):
            data.append({"series": name, "peer": name in peers, "L": L, "ms": ms,
                         "speedup_vs_best_sdpa": (best_peer[L] / ms) if L in best_peer else None})
    for col, (fam, labs) in enumerate(groups.items()):
        ax_t, ax_s = axes[0, col], axes[1, col]
        for name in peer_names:
            pts = series[name]
            Ls = sorted(pts)
            ax_t.plot(Ls, [pts[L] for L in Ls], label=name, **ps.series_style(name),
                      alpha=0.8, lw=1.1, markersize=3)
        for name in labs:
            pts = series[name]
            Ls = sorted(pts)
            ax_t.plot(Ls, [pts[L] for L in Ls], label=name, **styles[name])
            # the quantization kernels alone are not attention: time panel only
            if "quantization only" not in name:
                sp = [(L, best_peer[L] / pts[L]) for L in Ls if L in best_peer]
                if sp:
                    ax_s.plot([x for x, _ in sp], [y for _, y in sp], label=name,
                              **styles[name])
        ax_t.set_yscale("log")
        ax_t.set_title(fam)
        ax_s.axhline(1.0, color="0.2", lw=0.8)
        ps.length_axis(ax_s, lengths, label=xlabel)
        ps.legend_below(ax_s, ncol=1, handles=[h for h, lab in zip(*ax_t.get_legend_handles_labels())
                                                if lab not in peer_names],
                        labels=[lab for lab in ax_t.get_legend_handles_labels()[1]
                                if lab not in peer_names])
    axes[0, 0].set_ylabel(f"time ({ps.MS}, median, cold L2)")
    axes[1, 0].set_ylabel(f"speedup over the fastest\nSDPA peer ({ps.TIMES})")
    h, lab = axes[0, 0].get_legend_handles_labels()
    ps.legend_right(fig, [x for x, n in zip(h, lab) if n in peer_names],
                    [n for n in lab if n in peer_names], title="peers (dashed)")
    fig.suptitle(title, x=0.02, ha="left")
    return ps.save(fig, path, data)


def plot_prefill(result: dict, path: Path) -> list[Path]:
    """One PNG per causal setting: ``path`` with ``_noncausal`` / ``_causal`` suffixes."""
    out = []
    cfg = result["config"]["prefill"]
    for causal in (False, True):
        series = _series(result["rows"], lambda r: not r.get("tune") and r["causal"] == causal)
        if not series:
            continue
        title = (f"prefill B{cfg['batch']} H{cfg['heads']}/{cfg['kv_heads']} D{cfg['head_dim']}"
                 f"{' causal' if causal else ''}")
        p = path.with_name(f"{path.stem}_{'causal' if causal else 'noncausal'}{path.suffix}")
        out.append(_plot(series, PREFILL_PEERS, title, "sequence length (tokens)", p))
    return out


def plot_decode(result: dict, path: Path) -> list[Path]:
    cfg = result["config"]
    # the launch sweep (tune rows) is a table, not a series
    series = _series(result["rows"], lambda r: r.get("kind") in ("ours", "peer") and not r.get("tune"))
    if not series:
        return []
    title = f"decode B{cfg['batch']} H{cfg['heads']}/{cfg['kv_heads']} D{cfg['head_dim']}"
    return [_plot(series, DECODE_PEERS, title, "context length (tokens)", path)]


def rows_csv(result: dict, path: Path) -> Path:
    """Every measured row of a bench result as CSV (the data of its markdown tables); nested
    fields (a launch) are flattened to ``launch.<key>``."""
    from qsattn.plotstyle import write_csv

    flat = []
    for r in result["rows"]:
        row = {}
        for k, v in r.items():
            if isinstance(v, dict):
                row.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            elif not isinstance(v, list):
                row[k] = v
        flat.append(row)
    return write_csv(path, flat)


def main(bench_dir: str = "reports/bench") -> int:
    """Redraw the sweep figures (and their CSVs) and write ``<name>.csv`` of every stored row."""
    d = Path(bench_dir)
    made = []
    if (d / "prefill.json").is_file():
        res = json.loads((d / "prefill.json").read_text())
        made += plot_prefill(res, d / "prefill_sweep.png") + [rows_csv(res, d / "prefill.csv")]
    if (d / "decode.json").is_file():
        res = json.loads((d / "decode.json").read_text())
        made += plot_decode(res, d / "decode_sweep.png") + [rows_csv(res, d / "decode.csv")]
    for p in made:
        print(f"wrote {p}")
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
