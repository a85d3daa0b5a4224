"""One plotting style for every figure qsattn writes, and the data file beside each figure.

Rules (each enforced by a helper here, so a figure module only chooses what to draw):

- **A fixed colour per method**, whatever figure it appears in (:data:`METHOD_COLORS`, the
  Okabe-Ito colour-blind-safe palette: Okabe & Ito, "Color Universal Design", 2008). A series
  label is mapped to its method by :func:`family` (``"turbo_int4_sas"`` -> ``turbo``,
  ``"ds_1_16"`` -> ``double_sparse``, ``"fp16_flash:ideal"`` -> ``fp16_flash``).
- **Ideal kernels are a lighter shade of their method** and dashed (``"<method>:ideal"``, the cost
  model's optimal kernel); peers (SDPA backends, SageAttention) are greys / sky blue and dashed.
- **Variants of one method** (bit widths, softmax variants, token budgets) share its hue and
  differ in shade, line style and marker (:func:`variant_styles`), and figures with many of
  them are faceted per method (:func:`facet_by_family`) instead of crowding one panel.
- **Legends sit outside the axes** (:func:`legend_right`, :func:`legend_below`), never on data.
- **Units are spelled out** in axis labels: :data:`US` (µs), :data:`MS`, :data:`TIMES` (×),
  TB/s, TOP/s.
- **Readable where the markdown shows it**: figures are at most :data:`MAX_WIDTH_IN` inches wide
  at :data:`DPI` (so a page showing them at ~900 px scales them little) with fonts of at least
  9 pt (:data:`RC`).
- **Byte-deterministic**: :func:`save` writes PNGs without a timestamp; the same inputs and
  library versions give the same bytes (``qsattn report`` on a fresh clone leaves ``git
  status`` clean).
- **Every figure has its data**: :func:`save` writes the plotted numbers as CSV next to the PNG
  (same stem), one row per plotted point.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import zlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

__all__ = ["METHOD_COLORS", "PEER_COLORS", "UNIT_COLORS", "US", "MS", "TIMES", "DPI", "RC",
           "MAX_WIDTH_IN", "family", "kernel_of", "color", "lighter", "series_style",
           "variant_styles", "facet_by_family", "plt", "figure", "legend_right", "legend_below",
           "length_axis", "log_ticks", "save", "write_csv"]

US = "µs"
MS = "ms"
TIMES = "×"
DPI = 100
MAX_WIDTH_IN = 11.0

# Okabe-Ito palette, one hue per method (a method keeps it in every figure).
METHOD_COLORS: dict[str, str] = {
    "fp16_flash": "#0072B2",      # blue
    "fp8_flash": "#E69F00",       # orange
    "int8_flash": "#009E73",      # bluish green
    "turbo": "#D55E00",           # vermillion
    "double_sparse": "#CC79A7",   # reddish purple
}
# Peers and references: neutral, so the methods stand out.
PEER_COLORS: dict[str, str] = {
    "sdpa_cudnn": "#000000",
    "sdpa_flash": "#5A5A5A",
    "sdpa_efficient": "#9A9A9A",
    "sageattn": "#56B4E9",        # sky blue (SageAttention; also fp16_flash:sage_v1 priced)
    "ref_exact": "#000000",
    "ref_fp32": "#5A5A5A",
    "ref_fp16": "#9A9A9A",
}
# Functional units and memory levels of the cost model's time breakdown.
UNIT_COLORS: dict[str, str] = {
    "tensor": "#0072B2", "fma": "#56B4E9", "alu": "#009E73", "xu": "#E69F00", "smem": "#F0E442",
    "issue": "#D55E00", "hbm": "#CC79A7", "l2": "#882255", "latency": "#44AA99",
    "launch": "#9A9A9A",
}
# Colours for methods added later (a registry entry without a colour here): stable per name.
_EXTRA = ("#332288", "#117733", "#882255", "#44AA99", "#999933", "#AA4499", "#661100")
# Label prefixes that name a method without its id (study variant ids).
_ALIASES = (("fp8_e4m3", "fp8_flash"), ("fp8_e5m2", "fp8_flash"), ("ds_", "double_sparse"),
            ("sage", "sageattn"), ("sdpa_cudnn", "sdpa_cudnn"), ("sdpa_flash", "sdpa_flash"),
            ("sdpa_efficient", "sdpa_efficient"))

RC: dict = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 11.5,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.axisbelow": True,
    "lines.linewidth": 1.6, "lines.markersize": 4.5, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": DPI,
    "figure.dpi": DPI, "svg.hashsalt": "qsattn", "path.simplify": False,
}


def _methods() -> tuple[str, ...]:
    from sim.methods import SIMULATORS
    return tuple(SIMULATORS.names())


def kernel_of(label: str) -> str | None:
    """The cost-model kernel of a ``"<method>:<kernel>"`` label, else None."""
    return label.partition(":")[2] or None


def family(label: str) -> str:
    """The method (or peer) a series label belongs to.

    >>> family("turbo_int4_sas"), family("ds_1_16_dense2"), family("fp16_flash:ideal")
    ('turbo', 'double_sparse', 'fp16_flash')
    >>> family("int8_flash (attention only)"), family("sageattn_1.0.6"), family("ref_fp16")
    ('int8_flash', 'sageattn', 'ref_fp16')
    """
    if not isinstance(label, str) or not label:
        raise ValueError(f"label: expected a non-empty str, got {label!r}")
    base = label.partition(":")[0].strip()
    for prefix in ("stage", "variant"):        # "stage: ...", "variant: ..." rows of a bench
        if base == prefix and ":" in label:
            base = label.partition(":")[2].strip()
    if base.startswith("ref_"):
        return base.split()[0]
    for m in sorted(_methods(), key=len, reverse=True):   # longest id first
        if base.startswith(m):
            return m
    for prefix, fam in _ALIASES:
        if base.startswith(prefix):
            return fam
    return base.split()[0]


def lighter(c: str, amount: float = 0.45) -> str:
    """``c`` mixed with white (``amount`` of white), as a hex colour."""
    from matplotlib.colors import to_rgb
    r, g, b = to_rgb(c)
    mix = [x + (1 - x) * amount for x in (r, g, b)]
    return "#" + "".join(f"{round(x * 255):02x}" for x in mix)


def darker(c: str, amount: float = 0.3) -> str:
    from matplotlib.colors import to_rgb
    return "#" + "".join(f"{round(x * (1 - amount) * 255):02x}" for x in to_rgb(c))


def color(label: str) -> str:
    """The colour of a series: its method's (a lighter shade for ``:ideal``), or its peer's."""
    fam = family(label)
    k = kernel_of(label)
    if k and k.startswith("sage"):
        return PEER_COLORS["sageattn"]
    c = METHOD_COLORS.get(fam) or PEER_COLORS.get(fam)
    if c is None:
        c = _EXTRA[zlib.crc32(fam.encode()) % len(_EXTRA)]
    return lighter(c) if k == "ideal" else c


def is_peer(label: str) -> bool:
    return family(label) in PEER_COLORS or (kernel_of(label) or "").startswith("sage")


def series_style(label: str) -> dict:
    """Matplotlib keyword arguments of one series: colour, line style, marker.

    Methods: solid lines, round markers; ideal kernels: lighter, dashed, hollow markers; peers:
    dashed, square markers."""
    k = kernel_of(label)
    st = {"color": color(label), "linestyle": "-", "marker": "o"}
    if k == "ideal":
        st.update(linestyle="--", marker="o", markerfacecolor="white")
    elif is_peer(label):
        st.update(linestyle="--", marker="s")
    return st


_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def variant_styles(labels: Sequence[str]) -> dict[str, dict]:
    """Styles for several variants of one or more methods: each method's variants get shades of
    its colour (dark to light), and a line style and marker of their own, in the given order."""
    by_fam: dict[str, list[str]] = {}
    for lab in labels:
        by_fam.setdefault(family(lab), []).append(lab)
    out = {}
    for fam, labs in by_fam.items():
        n = len(labs)
        for i, lab in enumerate(labs):
            base = series_style(lab)
            c = base["color"]
            if n > 1 and not kernel_of(lab):
                t = i / (n - 1)            # 0 .. 1 across the family
                c = darker(c, 0.35 * (1 - 2 * t)) if t < 0.5 else lighter(c, 0.55 * (2 * t - 1))
            out[lab] = {**base, "color": c, "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
                        "marker": _MARKERS[i % len(_MARKERS)]}
    return out


def facet_by_family(labels: Iterable[str], *, order: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Labels grouped by :func:`family`, families in registry order (peers and references last),
    labels in their given order."""
    groups: dict[str, list[str]] = {}
    for lab in labels:
        groups.setdefault(family(lab), []).append(lab)
    if order is None:   # the palette's order (baseline first), then methods added later
        order = [*METHOD_COLORS, *sorted(set(_methods()) - set(METHOD_COLORS)), *PEER_COLORS]
    rank = {m: i for i, m in enumerate(order)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] not in rank, rank.get(kv[0], 0),
                                                       kv[0])))


def plt():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


@contextlib.contextmanager
def _rc():
    import matplotlib
    with matplotlib.rc_context(RC):
        yield


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 9.0, row_height: float = 3.2,
           **kw):
    """``(fig, axes)`` in the shared style; ``axes`` is always a 2-D array."""
    if width > MAX_WIDTH_IN:
        raise ValueError(f"width: at most {MAX_WIDTH_IN} inches (figures are shown ~900 px wide),"
                         f" got {width}")
    kw.setdefault("layout", "constrained")
    with _rc():
        fig, axes = plt().subplots(nrows, ncols, figsize=(width, row_height * nrows),
                                   squeeze=False, **kw)
    fig.set_dpi(DPI)
    for ax in axes.flat:
        _style_axes(ax)
    return fig, axes


def _style_axes(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(True, which="major", alpha=RC["grid.alpha"], linewidth=RC["grid.linewidth"])
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=RC["xtick.labelsize"])


def legend_right(where, handles=None, labels=None, *, title: str | None = None, ncol: int = 1):
    """A legend outside the axes (or figure) on its right, never over data."""
    import matplotlib.figure
    kw = dict(loc="upper left", frameon=False, fontsize=RC["legend.fontsize"], ncol=ncol,
              title=title, title_fontsize=RC["legend.fontsize"], borderaxespad=0.0)
    if handles is None:
        handles, labels = where.get_legend_handles_labels()
    if isinstance(where, matplotlib.figure.Figure):
        kw.pop("borderaxespad")
        kw["loc"] = "outside right upper"     # constrained layout makes room for it
        return where.legend(handles, labels, **kw)
    return where.legend(handles, labels, bbox_to_anchor=(1.02, 1.0), **kw)


def legend_below(ax, *, ncol: int = 2, handles=None, labels=None):
    """A legend under the axes (below its x label)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                     ncol=ncol, frameon=False, fontsize=RC["legend.fontsize"])


def _length_label(x: float) -> str:
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x // 1024)}K"
    return f"{int(x)}" if x == int(x) else f"{x:g}"


def length_axis(ax, values: Sequence[float], *, label: str) -> None:
    """A log2 x axis with ticks at ``values`` written as 1K, 2K, ... (token counts)."""
    from matplotlib.ticker import FixedLocator, NullLocator
    ax.set_xscale("log", base=2)
    vals = sorted(set(float(v) for v in values))
    ax.xaxis.set_major_locator(FixedLocator(vals))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_length_label(v) for v in vals])
    ax.set_xlabel(label)


def log_ticks(ax, lo: float, hi: float, axis: str = "both") -> None:
    """Log-scale ticks written as plain numbers, no minor labels (a short range would otherwise
    print overlapping minor labels): at 1, 2, 5 x 10^k over less than 1.5 decades, 1, 3 x 10^k
    up to 2.5, else powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    decades = math.log10(hi / lo) if hi > lo > 0 else 1.0
    subs = (1.0, 2.0, 5.0) if decades < 1.5 else (1.0, 3.0) if decades < 2.5 else (1.0,)
    axes = [ax.xaxis, ax.yaxis] if axis == "both" else [getattr(ax, f"{axis}axis")]
    for a in axes:
        a.set_major_locator(LogLocator(base=10, subs=subs))
        a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.set_minor_formatter(NullFormatter())


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """``rows`` (dicts) as CSV: header from ``columns`` or the keys in first-seen order; floats
    written with ``repr`` (round-trip exact), NaN/None as empty cells. Deterministic bytes."""
    from qsattn.cliopts import csv_cell
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([csv_cell(r.get(c)) for c in columns])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return path


def save(fig, path: str | Path, data: Sequence[Mapping] | None, *,
         columns: Sequence[str] | None = None) -> Path:
    """Write ``fig`` as PNG at ``path`` (no timestamp: deterministic bytes) and ``data`` (the
    plotted points, one dict per point) as ``<stem>.csv`` beside it; closes the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _rc():
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08,
                    metadata={"Software": None})
    plt().close(fig)
    if data is not None:
        write_csv(path.with_suffix(".csv"), data, columns)
    return path
