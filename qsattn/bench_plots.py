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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.get_cmap("tab20").colors
    for ax in (ax_t, ax_s):
        ax.set_prop_cycle(color=colors)
    best_peer = {}
    for name in peers:
        for L, ms in series.get(name, {}).items():
            best_peer[L] = min(best_peer.get(L, float("inf")), ms)
    for name, pts in sorted(series.items()):
        Ls = sorted(pts)
        style = "--" if name in peers else "-"
        ax_t.plot(Ls, [pts[L] for L in Ls], style, marker="o", ms=3, label=name)
        # the quantization kernels alone are not attention: they stay in the time panel only
        if name not in peers and "quantization only" not in name:
            sp = [(L, best_peer[L] / pts[L]) for L in Ls if L in best_peer]
            if sp:
                ax_s.plot([x for x, _ in sp], [y for _, y in sp], marker="o", ms=3, label=name)
    for ax in (ax_t, ax_s):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time (ms, median, cold L2)")
    ax_t.set_title(title)
    ax_t.legend(fontsize=7)
    ax_s.axhline(1.0, color="k", lw=0.8)
    ax_s.set_ylabel("speedup over the fastest SDPA peer (x)")
    ax_s.set_title("ours vs best of " + ", ".join(p for p in peers if p.startswith("sdpa")))
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        out.append(_plot(series, PREFILL_PEERS, title, "sequence length L", p))
    return out


def plot_decode(result: dict, path: Path) -> list[Path]:
    cfg = result["config"]
    series = _series(result["rows"], lambda r: r.get("kind") in ("ours", "peer"))
    if not series:
        return []
    title = f"decode B{cfg['batch']} H{cfg['heads']}/{cfg['kv_heads']} D{cfg['head_dim']}"
    return [_plot(series, DECODE_PEERS, title, "context (tokens)", path)]


def main(bench_dir: str = "reports/bench") -> int:
    d = Path(bench_dir)
    made = []
    if (d / "prefill.json").is_file():
        made += plot_prefill(json.loads((d / "prefill.json").read_text()), d / "prefill_sweep.png")
    if (d / "decode.json").is_file():
        made += plot_decode(json.loads((d / "decode.json").read_text()), d / "decode_sweep.png")
    for p in made:
        print(f"wrote {p}")
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
