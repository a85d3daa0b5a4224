"""``qsattn validate``: simulator vs kernel numerics and predicted vs measured time, per point.

For every method x shape of the sweep (``configs/experiments/validate_h100.yaml``):

1. numerics -- the kernel (``gpu.attention_trace``) and ``sim.simulate`` run on the same inputs,
   batch 0 and the first ``numerics.max_heads`` query heads (fewer when ``heads x Lq x Lk``
   exceeds ``numerics.max_elements``; a point above it for one head skips numerics and says so;
   attention heads are independent, so a head subset computes exactly what the full launch
   computes for those heads). Reported: % identical per integer intermediate (over the visible
   (row, key) pairs for S and P), % of output elements within ``ulp_bound`` fp16 ULPs of the
   simulator, max and relative-L2 error of kernel and simulator vs float64 ``ref.attention``.
2. timing -- the attention kernel alone on the full shape (integer methods on pre-quantized
   operands, as the cost model prices them), ``gpu.bench`` (CUDA events, median, cold L2), and
   ``sim.cost.predict`` at the roofline, tiled (spec ceilings) and calibrated (measured) tiers.
3. one row per point in ``reports/validation/results.jsonl`` (:class:`qsattn.store.ResultStore`):
   a rerun skips finished points; a corrupt or truncated file is an error naming its lines.
4. ``reports/validation/summary.md`` + ``pred_vs_meas.png`` (:mod:`qsattn.validation_summary`).

``--out DIR`` copies the store, summary and figure there too (``$OUT`` on the device machine).
Without a CUDA GPU the command prints how to run it on the device and exits with status 3;
``qsattn report`` shows the last committed summary (:func:`report_section`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

from qsattn import provenance
from qsattn.calibrate import NO_GPU_EXIT, DEVICE_COMMAND, cuda_available, hardware_for_device, \
    no_gpu_message
from qsattn.store import ResultStore, point_id
from qsattn import validation_summary as vs

DEFAULT_CONFIG = provenance.ROOT / "configs" / "experiments" / "validate_h100.yaml"
REPORT_DIR = provenance.ROOT / "reports" / "validation"
STORE_NAME = "results.jsonl"
SUMMARY_NAME = "summary.md"
FIGURE_NAME = "pred_vs_meas.png"
TIERS = ("roofline", "tiled", "calibrated")
SHAPE_KEYS = ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal")
_TOP_KEYS = {"hardware", "dtype", "seed", "prefill_methods", "decode_methods", "numerics",
             "timing", "shapes"}


# -- config ----------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict:
    """Read and check a validation sweep config (see validate_h100.yaml for the fields)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--config: no such file {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(cfg).__name__}")
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    for key in ("prefill_methods", "shapes"):
        if not isinstance(cfg.get(key), list) or not cfg[key]:
            raise ValueError(f"{path}: {key}: expected a non-empty list, got {cfg.get(key)!r}")
    if cfg.get("dtype", "float16") not in ("float16", "bfloat16"):
        raise ValueError(f"{path}: dtype: expected float16 or bfloat16, got {cfg['dtype']!r}")
    num = cfg.setdefault("numerics", {})
    num.setdefault("max_heads", 2)
    num.setdefault("max_elements", 1 << 24)
    bounds = num.setdefault("ulp_bound", {})
    for m in cfg["prefill_methods"]:
        if not isinstance(bounds.get(m), (int, float)):
            raise ValueError(f"{path}: numerics.ulp_bound.{m}: expected a number of fp16 ULPs, "
                             f"got {bounds.get(m)!r}")
    for i, s in enumerate(cfg["shapes"]):
        if not isinstance(s, dict) or set(s) != set(SHAPE_KEYS):
            raise ValueError(f"{path}: shapes[{i}]: expected exactly the keys {list(SHAPE_KEYS)}, "
                             f"got {s!r}")
    cfg.setdefault("decode_methods", [])
    cfg.setdefault("timing", {}).setdefault("cold_l2", True)
    cfg.setdefault("seed", 0)
    cfg.setdefault("dtype", "float16")
    cfg.setdefault("hardware", "auto")
    return cfg


def shape_label(s: dict) -> str:
    return (f"B{s['batch']} H{s['q_heads']}/{s['kv_heads']} Lq{s['q_len']} Lk{s['kv_len']} "
            f"D{s['head_dim']}{' causal' if s['causal'] else ''}")


def sim_heads(s: dict, max_heads: int, max_elements: int) -> tuple[int, int]:
    """(query heads, KV heads) of batch 0 to simulate: at most ``max_heads`` and
    ``max_elements // (Lq * Lk)`` query heads, whole GQA groups when more than one group.

    >>> sim_heads(dict(q_heads=32, kv_heads=8, q_len=1024, kv_len=1024), 2, 1 << 24)
    (2, 1)
    >>> sim_heads(dict(q_heads=32, kv_heads=32, q_len=4096, kv_len=4096), 2, 1 << 24)
    (1, 1)
    >>> sim_heads(dict(q_heads=32, kv_heads=32, q_len=8192, kv_len=8192), 2, 1 << 24)
    (0, 0)
    """
    g = s["q_heads"] // s["kv_heads"]
    h = min(max_heads, s["q_heads"], max_elements // (s["q_len"] * s["kv_len"]))
    if h <= 0:
        return 0, 0
    if h <= g:
        return h, 1
    h = h // g * g
    return h, h // g


# -- one point (GPU) -------------------------------------------------------------------------
def _fp16_ulp(x):
    import numpy as np
    a = np.maximum(np.abs(x), 2.0 ** -14)
    return 2.0 ** (np.floor(np.log2(a)) - 10)


# kernel trace name -> simulator trace name; codes and S never touch exp.
_INT_PAIRS = (("q_codes", "q_codes"), ("k_codes", "k_codes"), ("v_codes", "v_codes"),
              ("S", "s_int"), ("P", "p_codes"), ("O_int", "o_int"))
_EXP_FREE_ALWAYS = {"q_codes", "k_codes", "v_codes", "S"}


def numerics(method: str, spec, q, k, v, causal: bool, hq: int, hkv: int,
             ulp_bound: float) -> dict:
    """Kernel vs simulator vs float64 on batch 0, query heads [0, hq), KV heads [0, hkv)."""
    import numpy as np

    import gpu
    import ref
    from sim import simulate

    qs, ks, vs_ = (x[:1, :h].contiguous() for x, h in ((q, hq), (k, hkv), (v, hkv)))
    tr = gpu.attention_trace(qs, ks, vs_, method=method, causal=causal, spec=spec)
    import torch
    # fp16 inputs go to the simulator as float16; bf16 ones as their exact float32 values.
    qn, kn, vn = (x.cpu().numpy() if x.dtype == torch.float16 else x.float().cpu().numpy()
                  for x in (qs, ks, vs_))
    t0 = time.perf_counter()
    sim = simulate(qn, kn, vn, spec, causal=causal, trace=True)
    t_sim = time.perf_counter() - t0
    want = ref.attention(qn.astype(np.float64), kn.astype(np.float64), vn.astype(np.float64),
                         causal=causal)
    got = tr["out"].float().cpu().numpy().astype(np.float64)
    so = sim.out.astype(np.float64)
    ints = {}
    if spec.integer:
        vis = sim.trace["visible"]
        sas = spec.softmax.exp == "sas"
        for kname, sname in _INT_PAIRS:
            if kname not in tr or sname not in sim.trace:
                continue
            a = tr[kname].cpu().numpy()
            b = sim.trace[sname]
            if a.shape != b.shape:
                ints[kname] = {"identical_pct": None, "exp_free": kname in _EXP_FREE_ALWAYS or sas,
                               "note": f"shapes differ: kernel {a.shape}, sim {b.shape}"}
                continue
            eq = (a.astype(np.int64) == b.astype(np.int64))
            if kname in ("S", "P"):
                eq = eq[vis]
            ints[kname] = {"identical_pct": 100.0 * float(eq.mean()) if eq.size else 100.0,
                           "exp_free": kname in _EXP_FREE_ALWAYS or sas}
    diff = np.abs(got - so)
    within = diff <= ulp_bound * _fp16_ulp(so)

    def err(x):
        d = x - want
        nr = float(np.linalg.norm(want))
        return float(np.abs(d).max()), (float(np.linalg.norm(d)) / nr if nr else 0.0)

    km, kr = err(got)
    sm, sr = err(so)
    return {"heads": hq, "kv_heads": hkv, "ints": ints, "ulp_bound": ulp_bound,
            "within_ulp_pct": 100.0 * float(within.mean()),
            "max_ulp": float((diff / _fp16_ulp(so)).max()),
            "kernel_max_err": km, "kernel_rel_l2": kr, "sim_max_err": sm, "sim_rel_l2": sr,
            "sim_seconds": t_sim}


def time_kernel(method: str, spec, q, k, v, causal: bool, cold_l2: bool) -> float:
    """Median seconds of the attention kernel alone (integer methods: pre-quantized operands)."""
    from gpu import ops
    from gpu.microbench import bench_timer

    sm = 1.0 / math.sqrt(q.shape[-1])
    if spec.integer:
        qq, kq, vq = ops.quantize_qkv(q, k, v, spec, check=False)
        fn = lambda: ops.attention_quantized(qq, kq, vq, spec, causal=causal, sm_scale=sm,
                                             out_dtype=q.dtype)
    else:
        fn = lambda: ops.attention_quantized(None, None, None, spec, causal=causal, sm_scale=sm,
                                             out_dtype=q.dtype, q=q, k=k, v=v)
    fn()
    return bench_timer()(fn, cold_l2=cold_l2)


def predictions(spec, s: dict, hardware: str) -> tuple[dict, dict, dict]:
    """({tier: us}, {tier: bound}, {tier: error}) from sim.cost.predict at every tier."""
    from gpu.ops import default_launch
    from sim.cost import Shape, predict

    shape = Shape(**{k: s[k] for k in SHAPE_KEYS})
    # the launch time_kernel's attention_quantized call makes (no launch= given)
    launch = default_launch(s["head_dim"], s["q_len"], spec.integer, s["causal"])
    pred, bound, errors = {}, {}, {}
    for tier in TIERS:
        try:
            p = predict(spec, shape, hardware, phase="prefill", tier=tier, launch=launch)
        except (FileNotFoundError, ValueError) as e:
            errors[tier] = str(e)
            continue
        pred[tier], bound[tier] = p.time * 1e6, p.bound
    return pred, bound, errors


def run_point(method: str, s: dict, cfg: dict, hardware: str) -> dict:
    import torch

    from gpu.ops import resolve_spec

    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator(device="cuda").manual_seed(int(cfg["seed"]))
    q = torch.randn(s["batch"], s["q_heads"], s["q_len"], s["head_dim"], device="cuda",
                    dtype=dtype, generator=g)
    k = torch.randn(s["batch"], s["kv_heads"], s["kv_len"], s["head_dim"], device="cuda",
                    dtype=dtype, generator=g)
    v = torch.randn_like(k)
    k[..., :2] *= 4.0          # a few outlier channels, as real keys have
    spec = resolve_spec(method, None, dtype)
    row = {"method": method, "phase": "prefill", "shape": s, "label": shape_label(s),
           "shape_key": shape_label(s), "dtype": cfg["dtype"], "seed": cfg["seed"],
           "hardware": hardware, "device": torch.cuda.get_device_name()}
    hq, hkv = sim_heads(s, int(cfg["numerics"]["max_heads"]), int(cfg["numerics"]["max_elements"]))
    if hq:
        row["numerics"] = numerics(method, spec, q, k, v, s["causal"], hq, hkv,
                                   float(cfg["numerics"]["ulp_bound"][method]))
    else:
        row["numerics"] = None
        row["numerics_skipped"] = (f"Lq x Lk = {s['q_len'] * s['kv_len']} above "
                                   f"numerics.max_elements for one head")
    row["measured_us"] = time_kernel(method, spec, q, k, v, s["causal"],
                                     bool(cfg["timing"]["cold_l2"])) * 1e6
    row["pred_us"], row["bound"], errs = predictions(spec, s, hardware)
    if errs:
        row["pred_errors"] = errs
    row["git"] = provenance.git_revision()
    row["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return row


# -- summary ---------------------------------------------------------------------------------
def write_summary(rows: list[dict], out_dir: Path, *, command: str, not_run: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = vs.scatter(rows, out_dir / FIGURE_NAME)
    devices = sorted({r.get("device", "?") for r in rows})
    dates = sorted(r["date"] for r in rows if r.get("date"))
    when = (f"Measured on {', '.join(devices)} between {dates[0]} and {dates[-1]}"
            if dates else "Measurement dates not recorded")
    text = (provenance.header("GPU validation: simulator vs kernel, predicted vs measured",
                              command) + f"\n{when}; {len(rows)} points.\n\n"
            + vs.markdown(rows, not_run=not_run, images=[fig.name]))
    path = out_dir / SUMMARY_NAME
    path.write_text(text)
    return path


def _root_cause(e: BaseException) -> str:
    """'Type: last line' of the innermost cause (Triton compile errors chain the real one)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:400]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="sweep config (default: configs/experiments/validate_h100.yaml)")
    p.add_argument("--dir", type=Path, default=REPORT_DIR,
                   help="results store + summary folder (default: reports/validation/)")
    p.add_argument("--out", type=Path, default=None,
                   help="also copy store, summary and figure here (e.g. $OUT on the device)")
    p.add_argument("--hardware", default=None, help="configs/hardware id (default: config/auto)")
    p.add_argument("--rerun", action="store_true", help="recompute finished points")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new point after this many seconds (the rest resume later)")


def run(args: argparse.Namespace) -> int:
    if not cuda_available():
        print(no_gpu_message("validate"), file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    import gpu

    t_start = time.perf_counter()
    cfg = load_config(args.config)
    hw = args.hardware or (cfg["hardware"] if cfg["hardware"] != "auto"
                           else hardware_for_device(torch.cuda.get_device_name()))
    store = ResultStore(args.dir / STORE_NAME, rerun=args.rerun)
    command = provenance.command_line()
    not_run = []
    if not hasattr(gpu, "decode"):
        not_run += [f"decode {m}: gpu.decode does not exist yet" for m in cfg["decode_methods"]]
    points = [(m, s) for m in cfg["prefill_methods"] for s in cfg["shapes"]]
    print(f"qsattn validate: {len(points)} points on {torch.cuda.get_device_name()} ({hw}); "
          f"store {store.path} has {len(store)} rows", flush=True)
    stopped = 0
    for i, (m, s) in enumerate(points, 1):
        pid = point_id(method=m, phase="prefill", shape=s, dtype=cfg["dtype"], seed=cfg["seed"],
                       hardware=hw, numerics=cfg["numerics"], cold_l2=cfg["timing"]["cold_l2"])
        tag = f"[{i}/{len(points)}] {m} {shape_label(s)}"
        if pid in store:
            print(f"{tag}: done earlier, skipped", flush=True)
            continue
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            stopped += 1
            continue
        t0 = time.perf_counter()
        try:
            row = run_point(m, s, cfg, hw)
        except Exception as e:   # one failing point is recorded, the sweep goes on
            why = _root_cause(e)
            print(f"{tag}: FAILED {why}", flush=True)
            not_run.append(f"{m} {shape_label(s)}: {why}")
            torch.cuda.empty_cache()
            continue
        store.add(pid, row)
        nm = row.get("numerics") or {}
        p = row["pred_us"]
        print(f"{tag}: {row['measured_us']:.1f} us (pred tiled {p.get('tiled', float('nan')):.1f}"
              f", calibrated {p.get('calibrated', float('nan')):.1f}); within-ulp "
              f"{nm.get('within_ulp_pct', float('nan')):.3f}%; "
              + ", ".join(f"{k} {d['identical_pct']:.3f}%" for k, d in nm.get("ints", {}).items()
                          if d.get("identical_pct") is not None)
              + f" ({time.perf_counter() - t0:.1f} s)", flush=True)
        torch.cuda.empty_cache()
    if stopped:
        not_run.append(f"{stopped} points left for a rerun (--budget-s reached)")
    rows = [r for r in store.rows() if r.get("hardware") == hw]
    summary = write_summary(rows, args.dir, command=command, not_run=not_run)
    print(summary.read_text())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in (STORE_NAME, SUMMARY_NAME, FIGURE_NAME):
            shutil.copy2(args.dir / name, args.out / name)
        print(f"copied results to {args.out}")
    return 0


# -- qsattn report ---------------------------------------------------------------------------
def report_section(ctx) -> str:
    """The last committed validation summary (no GPU needed): where/when, targets, link."""
    path = Path(ctx.out) / "validation" / SUMMARY_NAME
    if not path.exists():
        path = REPORT_DIR / SUMMARY_NAME
    if not path.exists():
        return ("No GPU validation results are committed yet (`reports/validation/summary.md` "
                "does not exist). They need a CUDA GPU; on the device machine run\n\n"
                f"    {DEVICE_COMMAND}\n\nand copy `$OUT` into `reports/validation/` and "
                "`configs/hardware/measured/` (README: 'GPU validation run').\n")
    text = path.read_text()
    lines = text.splitlines()
    keep = [ln for ln in lines if ln.startswith(("Regenerate with:", "Generated ", "Measured on",
                                                 "Measurement dates"))]
    body, grab = [], False
    for ln in lines:
        if ln.startswith("### "):
            grab = ln.startswith(("### Targets", "### Predicted vs measured time"))
            if grab:
                body.append(ln.replace("### ", "#### ", 1))
            continue
        if grab:
            body.append(ln)
    try:
        rel = path.relative_to(provenance.ROOT)
    except ValueError:
        rel = path
    return ("Last committed GPU validation run (this section does not need a GPU).\n\n"
            + "\n\n".join(keep) + "\n\n" + "\n".join(body).strip() + "\n\n"
            + f"Full results, outliers, numerics table and figure: [{rel}]({rel}).\n")
