"""``qsattn accuracy``: every simulated method on synthetic tensors, against float64 attention.

Rows are the (spec, overrides, kv_cache) variants of ``configs/experiments/accuracy_synthetic.yaml``;
points are (variant, input kind, causal, length, seed). Each finished point is one row of
``reports/accuracy/results.jsonl`` (:mod:`qsattn.store`), so an interrupted run resumes where it
stopped; ``--rerun`` recomputes. Outputs: ``reports/accuracy/README.md`` (tables, the
INT-FlashAttention claim line) and PNG plots, each with its regenerate command at the top.

Metrics (``o`` the method's float32 output, ``r`` float64 ``ref.attention`` on the same fp16
inputs, over all rows that see at least one key):

- ``rel_l2 = ||o - r||_2 / ||r||_2``; ``max_abs = max |o - r|``; ``cosine`` of the flattened outputs;
- ``mean_rel = sum |o - r| / sum |r|`` (mean absolute error relative to the mean magnitude; an
  elementwise |o - r| / |r| would be dominated by outputs near zero on normal inputs);
- ``kl``: mean over rows of KL(p_method || p_true) of the attention rows. Only double_sparse
  exposes its row distribution (the true softmax restricted to the selected keys), where it is
  ``lse_true - lse_selected`` = -log(attention mass the selection kept), from per-row float64
  scores one head at a time. The quantized methods do not return P, so their KL is not reported;
- ``recall``: top-k recall of the sparse selection vs the exact scores' top-k (simulator trace);
- ``cache_ratio``: FP16 K+V bytes / cache bytes (turbo with the KV cache; every scale, zero point
  and the INT8 buffer counted, ``SimMethod.kv_bytes``), and for selecting methods ``label_overhead``:
  label-cache bytes / FP16 K+V bytes (it keeps the full cache and adds labels).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsattn import provenance
from sim.schema import ConfigError
from sim.spec import config_dir
from qsattn.store import NUMBER, ResultStore, point_id

DEFAULT_CONFIG = config_dir() / "experiments" / "accuracy_synthetic.yaml"
METRICS = ("rel_l2", "max_abs", "mean_rel", "cosine", "kl", "recall", "cache_ratio",
           "label_overhead", "seconds")
# A stored row as the report reads it (metrics may be null: NaN is stored as null).
ROW_SCHEMA = {"method": str, "input": str, "causal": bool, "L": int, "seed": int,
              **dict.fromkeys(METRICS, NUMBER)}
# Work a study may ask for without --allow-large, in attention scores (B * Hq * Lq * Lk, each
# simulated once and computed once more by the float64 reference): the default study is
# ~4e8 in all (about 5 minutes on 2 cores), its largest point 4e6.
POINT_SCORES = 1 << 30
TOTAL_SCORES = 1 << 32


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    spec: str
    overrides: dict
    kv_cache: bool

    def load(self):
        from sim import load_method
        return load_method(self.spec, **self.overrides)


@dataclass(frozen=True)
class Study:
    shape: dict
    lengths: list
    seeds: list
    causal: list
    inputs: dict
    variants: list
    claim: dict
    path: Path

    def points(self):
        for v in self.variants:
            for kind in self.inputs:
                for causal in self.causal:
                    for L in self.lengths:
                        for seed in self.seeds:
                            yield v, kind, causal, L, seed


def load_study(path: str | Path, quick: bool = False, *, allow_large: bool = False) -> Study:
    """The study of a config (schema: :class:`qsattn.configs.AccuracyConfig`), with its
    ``quick`` subset (lengths, causal values, input kinds) when ``quick``.

    Its work is bounded before anything runs (:func:`check_study_size`): a study beyond
    :data:`POINT_SCORES` / :data:`TOTAL_SCORES` needs ``allow_large``; one whose selecting
    methods would need a trace larger than the simulator holds is refused outright."""
    from qsattn.configs import AccuracyConfig, load_experiment
    path = Path(path)
    d = load_experiment(path, AccuracyConfig, quick_rule="keep")
    variants = [Variant(name, m["spec"], dict(m["overrides"]), bool(m["kv_cache"]))
                for name, m in d["methods"].items()]
    inputs = dict(d["inputs"])
    lengths, causal = list(d["lengths"]), list(d["causal"])
    if quick:
        qd = d["quick"]
        lengths = list(qd["lengths"] or lengths)
        causal = list(qd["causal"] if qd["causal"] is not None else causal)
        if qd["inputs"]:
            inputs = {k: inputs[k] for k in qd["inputs"]}
    for v in variants:
        try:
            v.load()                   # fail early on a bad spec or override
        except ValueError as e:
            raise ValueError(f"{path}: methods.{v.name}: {e}") from None
    study = Study(dict(d["shape"]), lengths, list(d["seeds"]), causal, inputs, variants,
                  dict(d["claim"]), path)
    check_study_size(study, allow_large=allow_large)
    return study


def check_study_size(study: Study, *, allow_large: bool = False) -> None:
    """The study's work, estimated before any point runs (see :func:`load_study`)."""
    from qsattn.configs import check_work
    from sim.engine import TRACE_LIMIT
    from sim.methods import SIMULATORS
    sh = study.shape
    per_len = {L: sh["batch"] * sh["q_heads"] * L * L for L in study.lengths}
    where = str(study.path)
    sparse = [v.name for v in study.variants if SIMULATORS.get(v.load().method).selects_keys]
    if sparse and max(per_len.values()) > TRACE_LIMIT:
        L = max(study.lengths)
        raise ConfigError(where, "lengths", f"B*Hq*L^2 <= {TRACE_LIMIT} for the selecting "
                          f"methods {sparse} (their recall needs the simulator's trace)",
                          f"{per_len[L]} at L = {L}")
    points = len(study.variants) * len(study.inputs) * len(study.causal) * len(study.seeds)
    check_work(where, "lengths", largest=max(per_len.values()),
               total=points * sum(per_len.values()), point_limit=POINT_SCORES,
               total_limit=TOTAL_SCORES, unit="attention scores (B*Hq*L^2)",
               allow_large=allow_large)


def make_inputs(kind: str, spec: dict, shape: dict, L: int, seed: int):
    """fp16 q [B, Hq, L, D], k, v [B, Hkv, L, D] for an input kind (deterministic in its args)."""
    rng = np.random.default_rng([seed, L, zlib.crc32(kind.encode())])
    B, Hq, Hkv, D = shape["batch"], shape["q_heads"], shape["kv_heads"], shape["head_dim"]
    draw = (rng.standard_normal if spec["dist"] == "normal" else rng.random)
    q = draw((B, Hq, L, D))
    k = draw((B, Hkv, L, D))
    v = draw((B, Hkv, L, D))
    n_out = int(spec.get("outlier_channels", 0))
    if n_out:
        lo, hi = spec.get("outlier_scale", [10, 50])
        for h in range(Hkv):
            ch = rng.choice(D, size=n_out, replace=False)
            k[:, h, :, ch] *= rng.uniform(lo, hi, size=n_out)[:, None, None]
    return tuple(x.astype(np.float16) for x in (q, k, v))


# --------------------------------------------------------------------------------------------
# one point
# --------------------------------------------------------------------------------------------
def _sparse_kl(q, k, idx, lse_true, causal, sm) -> float:
    """mean over rows of lse_true - lse_selected (float64, one head's scores at a time)."""
    B, Hq, Lq, _ = q.shape
    G = Hq // k.shape[1]
    kls = []
    for b in range(B):
        for h in range(Hq):
            s = (q[b, h].astype(np.float64) @ k[b, h // G].astype(np.float64).T) * sm
            ix = idx[b, h]
            ok = ix >= 0
            sel = np.take_along_axis(s, np.where(ok, ix, 0), axis=1)
            sel = np.where(ok, sel, -np.inf)
            mx = sel.max(axis=1)
            seen = np.isfinite(mx)
            lse_sel = mx[seen] + np.log(np.exp(sel[seen] - mx[seen, None]).sum(axis=1))
            kls.append(lse_true[b, h][seen] - lse_sel)
    kl = np.concatenate(kls)
    return float(np.maximum(kl, 0).mean()) if kl.size else float("nan")


def run_point(variant: Variant, q, k, v, causal: bool) -> dict:
    """Simulate one variant on one input and return its metrics (floats, NaN when n/a)."""
    import ref
    from sim.methods import SIMULATORS
    from sim.simulate import simulate

    spec = variant.load()
    method = SIMULATORS.get(spec.method)
    sparse = method.selects_keys
    t0 = time.perf_counter()
    kw = {"kv_cache": True} if variant.kv_cache else {}
    res = simulate(q, k, v, spec, causal=causal, trace=sparse, **kw)
    seconds = time.perf_counter() - t0
    exact, lse = ref.attention(q, k, v, causal=causal, return_lse=True)
    seen = np.isfinite(lse)
    o = res.out.astype(np.float64)[seen]
    r = exact[seen]
    d = o - r
    row = {
        "rel_l2": float(np.linalg.norm(d) / np.linalg.norm(r)),
        "max_abs": float(np.abs(d).max()),
        "mean_rel": float(np.abs(d).sum() / np.abs(r).sum()),
        "cosine": float((o * r).sum() / (np.linalg.norm(o) * np.linalg.norm(r))),
        "kl": float("nan"), "recall": float("nan"), "cache_ratio": float("nan"),
        "label_overhead": float("nan"), "seconds": seconds,
    }
    B, Hkv, L, D = k.shape
    fp16_bytes = B * Hkv * L * (D + v.shape[-1]) * 2
    if sparse:
        tr = res.trace
        row["recall"] = float(tr["recall_mean"])
        row["kl"] = _sparse_kl(q, k, tr["indices"], lse, causal, 1 / math.sqrt(D))
        row["label_overhead"] = tr["label_bytes"] / fp16_bytes
    if variant.kv_cache:  # the cache ranked on these K/V ("oracle"), as the simulation did
        cal = method.calibration.compute(q, k, v, spec, "oracle") \
            if method.calibration is not None else None
        row["cache_ratio"] = fp16_bytes / (B * method.kv_bytes(
            spec, tokens=L, head_dim=D, kv_heads=Hkv, mode="kv_cache", calibration=cal))
    return row


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
_CODE: list = []


def code_digest() -> str:
    """Digest of the code computing a point (:func:`qsattn.provenance.code_digest` over the
    simulator, the references, this module's point functions and numpy's version)."""
    if not _CODE:
        _CODE.append(provenance.code_digest((make_inputs, run_point, _sparse_kl), (np,)))
    return _CODE[0]


def _pid(study: Study, variant: Variant, kind: str, causal: bool, L: int, seed: int) -> str:
    spec = variant.load()
    return point_id(spec=spec.digest, kv_cache=variant.kv_cache, input=kind,
                    input_spec=study.inputs[kind], shape=study.shape, L=L, causal=causal,
                    seed=seed, code=code_digest())


def _input_unit(args) -> list[tuple[str, dict]]:
    """One input (kind, causal, L, seed) through every listed variant: ``(point id, row)``
    pairs. The unit of work in-process and on Ray (``qsattn.distributed.run_tasks``)."""
    study, kind, causal, L, seed, variants = args
    q, k, v = make_inputs(kind, study.inputs[kind], study.shape, L, seed)
    out = []
    for variant in variants:
        metrics = run_point(variant, q, k, v, causal)
        out.append((_pid(study, variant, kind, causal, L, seed), {
            "method": variant.name, "spec": variant.spec, "overrides": variant.overrides,
            "kv_cache": variant.kv_cache, "input": kind, "causal": causal, "L": L, "seed": seed,
            **metrics, "code": code_digest()}))
    return out


def run_study(study: Study, out_dir: Path, *, rerun: bool = False, progress: bool = True,
              name: str = "results", ray: str | None = None
              ) -> tuple[list[dict], list[tuple[int, str]], int]:
    """Compute every missing point into ``out_dir/<name>.jsonl`` (``ray``: the inputs sharded
    over that Ray cluster, each worker running every variant of its input); returns (rows of
    this study, store problems found on open, points computed now)."""
    from tqdm import tqdm

    store = ResultStore(out_dir / f"{name}.jsonl", rerun=rerun, on_corrupt="quarantine",
                        required=ROW_SCHEMA)
    if store.problems:
        for n, why in store.problems:
            print(f"qsattn accuracy: {store.path}: line {n} set aside ({why}); recomputing it")
    points = [(p, _pid(study, *p)) for p in study.points()]
    todo = [(p, pid) for p, pid in points if pid not in store]
    units: dict[tuple, list] = {}
    for (variant, kind, causal, L, seed), _ in todo:
        units.setdefault((kind, causal, L, seed), []).append(variant)
    bar = tqdm(total=len(todo), desc="accuracy", unit="point", disable=not progress or not todo,
               leave=True, file=sys.stderr, dynamic_ncols=True)

    def sink(pairs):
        for pid, row in pairs:
            if pid not in store:
                store.add(pid, row)
            bar.update(1)
    items = [(study, *u, vs) for u, vs in units.items()]
    if ray:
        from qsattn import distributed

        distributed.run_tasks(_input_unit, items, ray, sink)
    else:
        for it in items:
            bar.set_postfix_str(f"{it[1]} L={it[3]}{' causal' if it[2] else ''}")
            sink(_input_unit(it))
    bar.close()
    rows = [store.get(pid) for _, pid in points]
    return rows, store.problems, len(todo)


def _fmt(x, spec=".2e") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _num(x) -> float:
    """A stored metric as a float: NaN for null (how the store writes NaN)."""
    return float("nan") if x is None else float(x)


def _mean(rows, key):
    vals = [_num(r[key]) for r in rows if not math.isnan(_num(r[key]))]
    return float(np.mean(vals)) if vals else float("nan")


def claim_lines(study: Study, rows: list[dict]) -> list[str]:
    c = study.claim
    out = []
    for L in study.lengths:
        for causal in study.causal:
            sel = [r for r in rows if r["input"] == c["input"] and r["L"] == L
                   and r["causal"] == causal]
            a = _mean([r for r in sel if r["method"] == c["method"]], "mean_rel")
            b = _mean([r for r in sel if r["method"] == c["baseline"]], "mean_rel")
            if math.isnan(a) or math.isnan(b):
                continue
            ratio = a / b
            out.append(f"- {c['input']} inputs, L = {L}, {'causal' if causal else 'non-causal'}: "
                       f"mean relative error {c['method']} {a:.3e} vs {c['baseline']} {b:.3e}: "
                       f"ratio **{ratio:.3f}** ({(1 - ratio) * 100:.0f}% smaller; the paper "
                       f"claims {c['paper_ratio']:.2f}, i.e. {(1 - c['paper_ratio']) * 100:.0f}% "
                       f"smaller)")
    return out


def table_rows(study: Study, rows: list[dict], L: int, causal: bool) -> list[dict]:
    """The numbers of one summary table (a row per variant): mean rel. L2 per input kind, mean
    relative error, max abs error and min cosine over all inputs, KL, recall, cache ratio."""
    out = []
    for v in study.variants:
        rs = [r for r in rows if r["method"] == v.name and r["L"] == L and r["causal"] == causal]
        if not rs:
            continue
        row = {"variant": v.name, "spec": v.spec, "kv_cache": v.kv_cache, "L": L,
               "causal": causal}
        for k in study.inputs:
            row[f"rel_l2_{k}"] = _mean([r for r in rs if r["input"] == k], "rel_l2")
        row.update(mean_rel=_mean(rs, "mean_rel"), max_abs=max(_num(r["max_abs"]) for r in rs),
                   cosine_min=min(_num(r["cosine"]) for r in rs), kl=_mean(rs, "kl"),
                   recall=_mean(rs, "recall"), cache_ratio=_mean(rs, "cache_ratio"),
                   label_overhead=_mean(rs, "label_overhead"))
        out.append(row)
    return out


def _table(study: Study, rows: list[dict], L: int, causal: bool) -> str:
    kinds = list(study.inputs)
    head = ("| method | " + " | ".join(f"rel L2 {k}" for k in kinds)
            + " | mean rel (all) | max abs (all) | cosine min | KL | recall | cache x |")
    lines = [head, "|" + "---|" * (len(kinds) + 7)]
    for t in table_rows(study, rows, L, causal):
        per = [_fmt(t[f"rel_l2_{k}"]) for k in kinds]
        cache, lo = t["cache_ratio"], t["label_overhead"]
        cache_s = _fmt(cache, ".2f") if not math.isnan(cache) else (
            f"+{lo * 100:.1f}% labels" if not math.isnan(lo) else "–")
        lines.append(f"| `{t['variant']}` | " + " | ".join(per)
                     + f" | {_fmt(t['mean_rel'])} | {_fmt(t['max_abs'])}"
                     + f" | {t['cosine_min']:.6f} | {_fmt(t['kl'])} | {_fmt(t['recall'], '.3f')}"
                     + f" | {cache_s} |")
    return "\n".join(lines)


def _plots(study: Study, rows: list[dict], out_dir: Path) -> list[str]:
    """The figures (style: :mod:`qsattn.plotstyle`), each with a CSV of its plotted numbers."""
    from qsattn import plotstyle as ps

    files = []
    L = max(study.lengths)
    names = [v.name for v in study.variants]
    styles = ps.variant_styles(names)
    kinds = list(study.inputs)
    for causal in study.causal:
        # one panel per input kind: a bar per variant, coloured by its method
        fig, axes = ps.figure(1, len(kinds), width=10.5, row_height=0.26 * len(names) + 1.4,
                              sharey=True)
        data = []
        for ax, kind in zip(axes[0], kinds):
            ys = [_mean([r for r in rows if r["method"] == n and r["input"] == kind
                         and r["L"] == L and r["causal"] == causal], "rel_l2") for n in names]
            pos = np.arange(len(names))[::-1]
            ax.barh(pos, ys, color=[styles[n]["color"] for n in names], height=0.72)
            base = ys[names.index("fp16_flash")] if "fp16_flash" in names else None
            if base is not None and not math.isnan(base):
                ax.axvline(base, color="0.2", lw=0.9, ls="--")
            ax.set_xscale("log")
            ax.set_title(f"{kind} inputs")
            ax.set_yticks(pos)
            ax.set_yticklabels(names)
            ax.grid(True, axis="x", which="major")
            ax.grid(False, axis="y")
            data += [{"variant": n, "input": kind, "L": L, "causal": causal, "rel_l2_mean": y}
                     for n, y in zip(names, ys)]
        fig.supxlabel("relative L2 error vs float64 (mean over seeds; dashed: fp16_flash)",
                      fontsize=ps.RC["axes.labelsize"])
        fig.suptitle(f"Simulator accuracy, L = {L}, {'causal' if causal else 'non-causal'}",
                     x=0.02, ha="left")
        fname = f"rel_l2_L{L}_{'causal' if causal else 'full'}.png"
        ps.save(fig, out_dir / fname, data)
        files.append(fname)
    if len(study.lengths) > 1:
        kind = kinds[0]
        groups = ps.facet_by_family(names)
        ncols = min(3, len(groups))
        nrows = -(-len(groups) // ncols)
        fig, axes = ps.figure(nrows, ncols, width=10.5, row_height=3.6, sharey=True)
        data = []
        base = ([_mean([r for r in rows if r["method"] == "fp16_flash" and r["input"] == kind
                        and r["L"] == L_], "rel_l2") for L_ in study.lengths]
                if "fp16_flash" in names else None)
        for ax, (fam, labs) in zip(axes.flat, groups.items()):
            if base is not None and fam != "fp16_flash":
                ax.plot(study.lengths, base, color="0.55", lw=1.0, ls="--",
                        label="fp16_flash (baseline)")
            for n in labs:
                ys = [_mean([r for r in rows if r["method"] == n and r["input"] == kind
                             and r["L"] == L_], "rel_l2") for L_ in study.lengths]
                ax.plot(study.lengths, ys, label=n, **styles[n])
                data += [{"variant": n, "family": fam, "input": kind, "L": L_,
                          "rel_l2_mean": y} for L_, y in zip(study.lengths, ys)]
            ax.set_yscale("log")
            ax.set_title(fam)
            ps.length_axis(ax, study.lengths, label="sequence length (tokens)")
            ps.legend_below(ax, ncol=1)
        for ax in list(axes.flat)[len(groups):]:
            ax.set_visible(False)
        for r in range(nrows):
            axes[r, 0].set_ylabel(f"relative L2 error vs float64")
        fig.suptitle(f"Error vs length per method ({kind} inputs, mean over seeds and causal)",
                     x=0.02, ha="left")
        ps.save(fig, out_dir / "rel_l2_vs_length.png", data)
        files.append("rel_l2_vs_length.png")
    return files


def write_report(study: Study, rows: list[dict], out_dir: Path, command: str,
                 problems: list, computed: int = 0) -> str:
    """Write README.md + PNGs into ``out_dir``; returns the summary markdown."""
    files = _plots(study, rows, out_dir)
    s = study.shape
    setup = (f"Shape B={s['batch']}, Hq={s['q_heads']}, Hkv={s['kv_heads']}, D={s['head_dim']}, "
             f"Lq = Lk in {study.lengths}, seeds {study.seeds}; inputs: "
             + ", ".join(f"`{k}` ({v})" for k, v in study.inputs.items())
             + f". Config: `{study.path.relative_to(provenance.ROOT) if study.path.is_relative_to(provenance.ROOT) else study.path}`.")
    claim = claim_lines(study, rows)
    points = (f"Points: {len(rows) - computed} reused from the stored results, {computed} computed "
              f"in this run; every point is keyed by the code digest `{code_digest()}` (simulator, "
              f"references, point functions, numpy version), so none comes from other code.")
    parts = [provenance.header("Accuracy of the simulated methods on synthetic tensors", command,
                               measured=False),
             setup, "", points, "",
             "Errors against float64 `ref.attention` on the same fp16 inputs. Metric definitions: "
             "`qsattn/accuracy.py`. Turbo `*_prefill*` rows are the INT8 compute path alone; "
             "`turbo_int4/int2/mixed` read K/V from the progressive cache (kv_cache=True); "
             "`*_exp2` rows turn SAS off. KL is reported where the method exposes its row "
             "distribution (double_sparse).", "",
             "## INT-FlashAttention's claim: \"82% smaller error than FP8\"", "",
             *(claim or ["- (the claim's rows are not in this run)"]), ""]
    if problems:
        parts += ["Store lines set aside and recomputed: "
                  + ", ".join(f"line {n} ({w})" for n, w in problems), ""]
    for L in study.lengths:
        for causal in study.causal:
            parts += [f"## L = {L}, {'causal' if causal else 'non-causal'}", "",
                      _table(study, rows, L, causal), ""]
    from qsattn.plotstyle import write_csv
    write_csv(out_dir / "tables.csv", [t for L in study.lengths for causal in study.causal
                                       for t in table_rows(study, rows, L, causal)])
    parts += ["Data of every table above: [`tables.csv`](tables.csv) (one row per variant, "
              "length and mask; every point: `results.jsonl`).", ""]
    parts += ["## Plots", ""] + [f"![{f}]({f})\n\nData: [`{Path(f).stem}.csv`]({Path(f).stem}.csv)"
                                 for f in files]
    (out_dir / "README.md").write_text("\n".join(parts) + "\n")
    L = max(study.lengths)
    summary = [setup, "", points, "", "INT-FlashAttention claim (int8_flash vs fp8 E4M3, mean relative error):",
               "", *(claim or ["- not in this run"]), "",
               f"Non-causal, L = {L}:", "", _table(study, rows, L, False if False in study.causal
                                                     else study.causal[0]), "",
               f"Details and plots: [{out_dir.name}/README.md]({out_dir.name}/README.md)"]
    return "\n".join(summary)


# --------------------------------------------------------------------------------------------
# CLI and report
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    from qsattn import cliopts
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="experiment YAML (default: configs/experiments/accuracy_synthetic.yaml)")
    p.add_argument("--quick", action="store_true", help="the config's quick subset (< 1 minute)")
    p.add_argument("--rerun", action="store_true", help="recompute finished points")
    cliopts.add_common(p, out_help="output directory (default: reports/accuracy, "
                                   "reports/accuracy/quick with --quick)")
    p.add_argument("--allow-large", action="store_true",
                   help="run a study larger than the work bound (hours of CPU, GBs of memory)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="shard the inputs over a Ray cluster (an address for ray.init, 'auto', "
                        "or 'local'); needs `pip install ray`")


def _command(config: Path, out: Path, quick: bool) -> str:
    cmd = "qsattn accuracy"
    if Path(config).resolve() != DEFAULT_CONFIG.resolve():
        cmd += f" --config {config}"
    if Path(out).resolve() != default_out(quick).resolve():
        cmd += f" --out {out}"
    return cmd + (" --quick" if quick else "")


def execute(config: Path, out: Path, *, quick: bool, rerun: bool, progress: bool,
            tables: list | None = None, allow_large: bool = False, ray: str | None = None
            ) -> str:
    """Run (resume) the study and write its report; returns the summary markdown. ``tables``
    (a list) receives the summary tables' rows (:func:`table_rows`, every length and mask);
    ``ray``: shard the inputs over that Ray cluster (:mod:`qsattn.distributed`)."""
    study = load_study(config, quick=quick, allow_large=allow_large)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, problems, computed = run_study(study, out, rerun=rerun, progress=progress,
                                         name="results_quick" if quick else "results", ray=ray)
    if tables is not None:
        tables += [t for L in study.lengths for c in study.causal
                   for t in table_rows(study, rows, L, c)]
    return write_report(study, rows, out, _command(config, out, quick), problems, computed)


def default_out(quick: bool) -> Path:
    """reports/accuracy, or its quick/ folder for --quick (a quick run never overwrites the
    full study's page)."""
    return provenance.REPORTS / "accuracy" / ("quick" if quick else "")


def run(args: argparse.Namespace) -> int:
    import sys

    from qsattn import cliopts
    out = args.out if args.out is not None else default_out(args.quick)
    tables: list = []
    summary = execute(args.config, out, quick=args.quick, rerun=args.rerun,
                      progress=not args.no_progress, tables=tables,
                      allow_large=args.allow_large, ray=args.ray)
    cliopts.emit(cliopts.render(tables, args.format, markdown=summary))
    print(f"wrote {Path(out) / 'README.md'}", file=sys.stderr)
    return 0


def report_section(ctx) -> str:
    """``qsattn report`` section: the default study (quick subset with ``ctx.quick``)."""
    return execute(DEFAULT_CONFIG, Path(ctx.out) / "accuracy", quick=ctx.quick, rerun=ctx.rerun,
                   progress=getattr(ctx, "progress", True))
