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

Decode points (``decode_methods`` x ``decode_shapes``, :func:`run_decode_point`; rows of the same
schema with ``phase: "decode"``): the numerics part builds a cache (``gpu.build_cache``) of batch 0,
the first ``decode_numerics.max_heads`` query heads (whole GQA groups) and the first
``decode_numerics.max_context`` tokens (the row says when the context was cut), runs
``gpu.decode_trace`` and the simulator on the same inputs and compares them as
``tests/gpu/test_decode.py`` does (:func:`decode_numerics`); the timing part times
``gpu.decode`` alone on the full shape over rotated caches (cold L2, :func:`time_decode`); the
predictions are ``sim.cost.predict(..., phase="decode")`` at every tier. A decode method that
cannot run is listed as ``decode <method>: not run: <reason>`` (:func:`decode_not_run`).

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
DECODE_SHAPE_KEYS = ("batch", "q_heads", "kv_heads", "kv_len", "head_dim")
_TOP_KEYS = {"hardware", "dtype", "seed", "prefill_methods", "decode_methods", "numerics",
             "timing", "shapes", "decode_shapes", "decode_numerics"}


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
    cfg.setdefault("decode_shapes", [])
    if not isinstance(cfg["decode_methods"], list) or not isinstance(cfg["decode_shapes"], list):
        raise ValueError(f"{path}: decode_methods, decode_shapes: expected lists, got "
                         f"{cfg['decode_methods']!r}, {cfg['decode_shapes']!r}")
    if cfg["decode_methods"] and not cfg["decode_shapes"]:
        raise ValueError(f"{path}: decode_shapes: expected a non-empty list when decode_methods "
                         f"{cfg['decode_methods']} are given, got none")
    for i, s in enumerate(cfg["decode_shapes"]):
        if not isinstance(s, dict) or set(s) != set(DECODE_SHAPE_KEYS):
            raise ValueError(f"{path}: decode_shapes[{i}]: expected exactly the keys "
                             f"{list(DECODE_SHAPE_KEYS)}, got {s!r}")
    dn = cfg.setdefault("decode_numerics", {})
    if not isinstance(dn, dict):
        raise ValueError(f"{path}: decode_numerics: expected a mapping, got {dn!r}")
    dn.setdefault("max_heads", 8)
    dn.setdefault("max_context", 1 << 15)
    dn.setdefault("abs_slack", {})
    dbounds = dn.setdefault("ulp_bound", {})
    for m in cfg["decode_methods"]:
        if not isinstance(dbounds.get(m), (int, float)):
            raise ValueError(f"{path}: decode_numerics.ulp_bound.{m}: expected a number of "
                             f"ULPs, got {dbounds.get(m)!r}")
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
def _errors(x, want) -> tuple[float, float]:
    """(max |x - want|, relative L2 error ||x - want|| / ||want||) against the float64 reference."""
    import numpy as np

    d = x - want
    nr = float(np.linalg.norm(want))
    return float(np.abs(d).max()), (float(np.linalg.norm(d)) / nr if nr else 0.0)


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

    km, kr = _errors(got, want)
    sm, sr = _errors(so, want)
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


# -- decode points ---------------------------------------------------------------------------
def decode_shape(s: dict) -> dict:
    """A ``decode_shapes`` entry as a full shape (one query row per head, no mask)."""
    return {"batch": s["batch"], "q_heads": s["q_heads"], "kv_heads": s["kv_heads"], "q_len": 1,
            "kv_len": s["kv_len"], "head_dim": s["head_dim"], "causal": False}


def decode_label(s: dict) -> str:
    """The label (and shape key) of a decode point; ``decode`` keeps it apart from prefill.

    >>> decode_label(dict(batch=8, q_heads=32, kv_heads=8, kv_len=4096, head_dim=128))
    'decode B8 H32/8 L4096 D128'
    """
    return f"decode B{s['batch']} H{s['q_heads']}/{s['kv_heads']} L{s['kv_len']} D{s['head_dim']}"


def decode_not_run(method: str, cfg: dict) -> str | None:
    """Why ``method`` cannot be validated at decode with this config (None: it can run)."""
    from sim.cost.methods import KERNELS
    try:
        import gpu
    except ImportError as e:
        return f"the gpu package does not import ({e})"

    if not hasattr(gpu, "decode") or not hasattr(gpu, "build_cache"):
        return "gpu.decode / gpu.build_cache do not exist"
    cache_methods = tuple(getattr(gpu, "CACHE_METHODS", ()))
    if method not in cache_methods:
        return f"gpu.build_cache has no {method!r} cache (it builds {list(cache_methods)})"
    if method == "double_sparse" and cfg["dtype"] != "float16":
        return f"double_sparse caches are fp16 only; the sweep's dtype is {cfg['dtype']}"
    if not (KERNELS.get(method) or {}).get("decode"):
        return f"sim.cost has no decode kernel for {method!r}"
    return None


def _decode_spec(method: str, dtype_name: str):
    from sim import load_method
    if method == "fp16_flash" and dtype_name == "bfloat16":   # as tests/gpu/test_decode.py
        return load_method(method, **{"operands.format": "bf16", "operands.p_format": "bf16"})
    return load_method(method)


def _np32(x):
    return x.detach().float().cpu().numpy()


def _ulp(x, dtype_name: str):
    """Spacing of float16 / bfloat16 around |x| (subnormal spacing below the normal range)."""
    import numpy as np
    mant, emin = (10, -14) if dtype_name == "float16" else (7, -126)
    a = np.maximum(np.abs(x), 2.0 ** emin)
    return 2.0 ** (np.floor(np.log2(a)) - mant)


def _pct(eq) -> float:
    return 100.0 * float(eq.mean()) if eq.size else 100.0


def _same(a, b, exp_free: bool = True) -> dict:
    """% of elements identical (shapes must agree; a mismatch is reported, not compared)."""
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return {"identical_pct": None, "exp_free": exp_free,
                "note": f"shapes differ: kernel {a.shape}, sim {b.shape}"}
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        eq = a.astype(np.float64) == b.astype(np.float64)
    else:
        eq = a.astype(np.int64) == b.astype(np.int64)
    return {"identical_pct": _pct(eq), "exp_free": exp_free}


def _decode_calibration(method: str, q, k, v):
    """The calibration handed to build_cache and the simulator alike: turbo the oracle head
    priority of these K/V (``sim.kvcache.head_priority``), double_sparse the ``qk`` channel metric
    of the step's own queries (``sim.sparse.calibrate``; with one query row it pairs the last key
    only, so only that key is read), fp16_flash none."""
    if method == "turbo":
        from sim.kvcache import head_priority
        return head_priority(_np32(k), _np32(v))
    if method == "double_sparse":
        from sim.sparse import calibrate
        return calibrate(_np32(q), _np32(k[:, :, -1:]), "qk")
    return None


def _turbo_ints(tr, res, cache, Hq: int, k, v, priority) -> dict:
    """Kernel trace vs simulator as tests/gpu/test_decode.py compares them: q codes; the packed
    low-bit store and INT8 block scales against ``sim.kvcache.TurboCache``; S_int against the
    simulator's q codes . INT8 cache read-back; the running max per tile; P codes against the
    simulator's ``sas_exp2``/``pquant`` of the kernel's f32 scores and the simulator's max;
    O_int per tile against the kernel's P . the simulator's INT8 V. All exp-free (SAS)."""
    import numpy as np

    from sim.kvcache import TurboCache
    from sim.operands import pquant
    from sim.softmax import sas_exp2

    T, spec = res.trace, res.spec
    nb = spec.tiling.block_n
    Hkv = T["k_cache_int8"].shape[1]
    G = Hq // Hkv
    L = T["k_cache_int8"].shape[2]
    k8 = np.repeat(T["k_cache_int8"], G, 1).astype(np.int64)
    v8 = np.repeat(T["v_cache_int8"], G, 1).astype(np.int64)
    ints = {"q_codes": _same(tr["q_codes"].cpu().numpy(), T["q_codes"])}
    sc = TurboCache.from_prefill(k, v, spec, priority=priority)
    eq_bytes = tot_bytes = 0
    notes = []
    for h in range(Hkv):
        got = cache.packed(h)
        want = sc.store[h]
        for name, a in got.items():
            b = np.asarray(getattr(want, name))
            if a.shape != b.shape:
                notes.append(f"head {h} {name}: kernel {a.shape}, sim {b.shape}")
                continue
            eq_bytes += int((a.astype(np.int64) == b.astype(np.int64)).sum())
            tot_bytes += a.size
    ints["packed"] = ({"identical_pct": 100.0 * eq_bytes / tot_bytes if tot_bytes else 100.0,
                       "exp_free": True, "elements": tot_bytes}
                      if not notes else {"identical_pct": None, "exp_free": True,
                                         "note": "; ".join(notes)[:300]})
    ks8, vs8 = cache.scales8()
    nblk = ks8.shape[2]
    ints["scales8"] = _same(np.concatenate([ks8, vs8], 1),
                            np.concatenate([sc.k_scale8[:, :, :nblk], sc.v_scale8[:, :, :nblk]], 1))
    S = np.einsum("bhd,bhld->bhl", T["q_codes"][:, :, 0].astype(np.int64), k8)
    ints["S"] = _same(tr["S"].cpu().numpy(), S)
    m = T["m"][:, :, 0, :]
    ints["m"] = _same(np.maximum.accumulate(tr["tile_max"].cpu().numpy(), axis=2), m)
    s = tr["s"].cpu().numpy()
    m_key = np.repeat(m, nb, axis=2)[:, :, :L]
    P = pquant(sas_exp2((s - m_key).astype(np.float32), spec.softmax.sas), spec.p)
    Pk = tr["P"].cpu().numpy()
    ints["P"] = _same(Pk, P, exp_free=spec.softmax.exp == "sas")
    nt = -(-L // nb)
    O = np.stack([np.einsum("bhl,bhld->bhd", Pk[..., t * nb:(t + 1) * nb].astype(np.int64),
                            v8[:, :, t * nb:(t + 1) * nb]) for t in range(nt)], 2)
    ints["O_int"] = _same(tr["O_int"].cpu().numpy(), O, exp_free=spec.softmax.exp == "sas")
    return ints


def _sparse_ints(tr, res) -> tuple[dict, "np.ndarray", dict]:
    """Selected indices per query row vs the simulator's, as tests/gpu/test_decode.py: a row
    with a near tie at the selection boundary (the k-th and (k+1)-th best approximate scores
    within 4x the largest label-score error) may legitimately select differently; it is counted
    apart. Returns (ints, rows whose selection is identical [B, Hq], extras)."""
    import numpy as np
    T = res.trace
    approx = tr["approx_scores"].cpu().numpy()
    ref_s = T["approx_scores"][:, :, 0]
    scale = np.abs(ref_s).max(axis=-1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    rel = np.abs(approx - ref_s) / scale
    got, want = tr["indices"].cpu().numpy(), T["indices"]
    extras = {"approx_scores_max_rel_err": float(rel.max())}
    if got.shape != want.shape:
        same_rows = np.zeros(got.shape[:2], bool)
        return {"indices": {"identical_pct": None, "exp_free": True,
                            "note": f"shapes differ: kernel {got.shape}, sim {want.shape}"}}, \
            same_rows, extras
    same_rows = ~np.any(got != want, axis=-1)[..., 0]
    L = ref_s.shape[-1]
    srt = -np.sort(-ref_s, axis=-1)
    kb = int(T["budget"][0])
    if not 1 <= kb < L:
        near = np.zeros(same_rows.shape, bool)
    else:
        near = (srt[..., kb - 1] - srt[..., kb]) <= 4 * float((rel * scale).max())
    clear = ~near
    d = {"identical_pct": _pct(same_rows[clear]), "exp_free": True,
         "rows": int(same_rows.size), "near_tie_rows": int(near.sum()),
         "near_tie_identical": int((same_rows & near).sum())}
    return {"indices": d}, same_rows, extras


def decode_numerics(method: str, spec, q, k, v, ulp_bound: float, abs_slack: float = 0.0,
                    launch: dict | None = None) -> dict:
    """Kernel (``gpu.decode_trace`` on a cache of these K/V) vs simulator vs float64 for one
    decode step; ``q`` ``[B, Hq, 1, D]``, ``k``/``v`` ``[B, Hkv, L, D]`` on the kernel's device
    (a CUDA GPU, or the CPU under ``TRITON_INTERPRET=1``).

    Output agreement: % of output elements with ``|kernel - sim| <= ulp_bound * ulp(sim) +
    abs_slack`` (ULPs of the sweep's dtype), over every row (double_sparse: the rows whose
    selection equals the simulator's; the others attend over other tokens)."""
    import numpy as np

    import gpu
    import ref
    from sim import simulate

    dtype_name = str(q.dtype).replace("torch.", "")
    cal = _decode_calibration(method, q, k, v)
    cache = gpu.build_cache(k, v, method, spec=spec, calibration=cal)
    out, tr = gpu.decode_trace(q, cache, launch=launch)
    qn, kn, vn = _np32(q), _np32(k), _np32(v)
    t0 = time.perf_counter()
    if method == "turbo":
        res = simulate(qn, kn, vn, spec, kv_cache=True, trace=True, calibration=cal)
    elif method == "double_sparse":
        res = simulate(qn, kn, vn, spec, calibration=cal, trace=True)
    else:
        res = simulate(qn, kn, vn, spec)
    extras, rows_ok = {}, None
    if method == "turbo":
        ints = _turbo_ints(tr, res, cache, q.shape[1], kn, vn, cal)
        extras["head_bits"] = [int(b) for b in res.trace["head_bits"]]
        extras["splits"] = int(tr["splits"])
    elif method == "double_sparse":
        ints, rows_ok, extras = _sparse_ints(tr, res)
    else:
        ints = {}
    t_sim = time.perf_counter() - t0
    want = ref.attention(qn.astype(np.float64), kn.astype(np.float64), vn.astype(np.float64))
    got = _np32(out).astype(np.float64)
    so = res.out.astype(np.float64)
    if rows_ok is None:
        rows_ok = np.ones(got.shape[:2], bool)
    diff = np.abs(got - so)[rows_ok]
    u = _ulp(so, dtype_name)[rows_ok]
    within = diff <= ulp_bound * u + abs_slack

    km, kr = _errors(got, want)
    sm, sr = _errors(so, want)
    return {"heads": int(q.shape[1]), "kv_heads": int(k.shape[1]), "context": int(k.shape[2]),
            "ints": ints, "ulp_bound": ulp_bound, "abs_slack": abs_slack,
            "rows_compared": int(rows_ok.sum()), "within_ulp_pct": _pct(within),
            "max_ulp": float((diff / u).max()) if diff.size else 0.0,
            "kernel_max_err": km, "kernel_rel_l2": kr, "sim_max_err": sm, "sim_rel_l2": sr,
            "sim_seconds": t_sim, **extras}


class _Bytes:
    """Stands in a ``gpu.bench.time_cuda`` input set for the bytes of a cache (it counts the
    size of the items that have ``numel``)."""

    def __init__(self, n: int):
        self.n = int(n)

    def numel(self) -> int:
        return self.n

    def element_size(self) -> int:
        return 1


def time_decode(method: str, spec, q, k, v, calibration, cold_l2: bool) -> dict:
    """``gpu.decode`` alone on the full shape (caches built outside the timed region):
    ``gpu.bench.time_cuda`` over rotated caches built from the same K/V until they exceed 4x
    L2 (cold L2; at least 2), or 2 caches with ``cold_l2=False``. The step is checked once with
    :func:`gpu.decode`; the timed calls are ``gpu.decode.decode_unchecked`` (no host sync).
    Returns ``{"us", "min_us", "max_us", "spread", "caches", "cache_bytes"}``."""
    import gpu
    from gpu.bench import time_cuda
    from gpu.decode import decode_unchecked

    sm = 1.0 / math.sqrt(q.shape[-1])
    first = [gpu.build_cache(k, v, method, spec=spec, calibration=calibration)]
    gpu.decode(q, first[0])                 # checks the inputs once; compiles

    def make():
        c = first.pop() if first else gpu.build_cache(k, v, method, spec=spec,
                                                      calibration=calibration)
        return (q, c, _Bytes(c.nbytes()))

    r = time_cuda(lambda qq, c, _n: decode_unchecked(qq, c, sm), make,
                  cold_bytes=None if cold_l2 else 0)
    nbytes = make()[1].nbytes()
    return {"us": r["ms"] * 1e3, "min_us": r["min_ms"] * 1e3, "max_us": r["max_ms"] * 1e3,
            "spread": r["spread"], "caches": r["sets"], "cache_bytes": nbytes}


def decode_predictions(spec, s: dict, hardware: str) -> tuple[dict, dict, dict, dict]:
    """({tier: us}, {tier: bound}, {tier: error}, {tier: [[launch, CTAs], ...]}) from
    ``sim.cost.predict(phase="decode")``; the model picks its own split-K (decode takes no
    ``launch``), shown as the CTAs of each launch."""
    from sim.cost import Shape, predict

    shape = Shape(**decode_shape(s))
    pred, bound, errors, launches = {}, {}, {}, {}
    for tier in TIERS:
        try:
            p = predict(spec, shape, hardware, phase="decode", tier=tier)
        except (FileNotFoundError, ValueError) as e:
            errors[tier] = str(e)
            continue
        pred[tier], bound[tier] = p.time * 1e6, p.bound
        launches[tier] = [[str(x[0]), int(x[1])] for x in p.launches]
    return pred, bound, errors, launches


def run_decode_point(method: str, s: dict, cfg: dict, hardware: str, *,
                     device: str = "cuda") -> dict:
    """One decode row (same schema as :func:`run_point`'s, ``phase: "decode"``): numerics on
    batch 0, the first query heads and the first ``max_context`` tokens; timing of the full
    shape (CUDA only: on the CPU, i.e. under the Triton interpreter, ``measured_us`` is None and
    ``timing_skipped`` says why); predictions at every tier."""
    import torch

    from gpu.ops import interpreting

    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator(device=device).manual_seed(int(cfg["seed"]))
    B, Hq, Hkv, L, D = (s[x] for x in DECODE_SHAPE_KEYS)
    q = torch.randn(B, Hq, 1, D, device=device, dtype=dtype, generator=g)
    k = torch.randn(B, Hkv, L, D, device=device, dtype=dtype, generator=g)
    v = torch.randn_like(k)
    k[..., :2] *= 4.0          # a few outlier channels, as real keys have
    spec = _decode_spec(method, cfg["dtype"])
    full = decode_shape(s)
    row = {"method": method, "phase": "decode", "shape": full, "label": decode_label(s),
           "shape_key": decode_label(s), "dtype": cfg["dtype"], "seed": cfg["seed"],
           "hardware": hardware,
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)"}
    dn = cfg["decode_numerics"]
    ctx = min(L, int(dn["max_context"]))
    hq, hkv = sim_heads(dict(full, kv_len=ctx), int(dn["max_heads"]),
                        int(cfg["numerics"]["max_elements"]))
    if hq:
        row["numerics"] = decode_numerics(
            method, spec, q[:1, :hq].contiguous(), k[:1, :hkv, :ctx].contiguous(),
            v[:1, :hkv, :ctx].contiguous(), float(dn["ulp_bound"][method]),
            float((dn.get("abs_slack") or {}).get(method, 0.0)))
        if ctx < L:
            row["numerics"]["context_subsampled"] = (
                f"numerics on the first {ctx} of {L} tokens (decode_numerics.max_context)")
    else:
        row["numerics"] = None
        row["numerics_skipped"] = (f"L = {ctx} above numerics.max_elements for one head")
    cal_note = {"turbo": "oracle head priority of the step's own K/V",
                "double_sparse": "qk channel metric of the step's own queries (oracle)"}
    if method in cal_note:
        row["calibration"] = cal_note[method]
    if device == "cuda" and not interpreting():
        cal = _decode_calibration(method, q, k, v) if method == "double_sparse" else None
        t = time_decode(method, spec, q, k, v, cal, bool(cfg["timing"]["cold_l2"]))
        row["measured_us"] = t.pop("us")
        row["timing"] = t
    else:
        row["measured_us"] = None
        row["timing_skipped"] = "no CUDA timing on the CPU (Triton interpreter)"
    row["pred_us"], row["bound"], errs, row["pred_launches"] = decode_predictions(spec, s,
                                                                                  hardware)
    if errs:
        row["pred_errors"] = errs
    row["git"] = provenance.git_revision()
    row["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return row


# -- summary ---------------------------------------------------------------------------------
def write_summary(rows: list[dict], out_dir: Path, *, command: str, not_run: list[str],
                  note: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = vs.scatter(rows, out_dir / FIGURE_NAME)
    devices = sorted({r.get("device", "?") for r in rows})
    dates = sorted(r["date"] for r in rows if r.get("date"))
    when = (f"Measured on {', '.join(devices)} between {dates[0]} and {dates[-1]}"
            if dates else "Measurement dates not recorded")
    text = (provenance.header("GPU validation: simulator vs kernel, predicted vs measured",
                              command) + f"\n{when}; {len(rows)} points."
            + (f" Note: {note}." if note else "") + "\n\n"
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
    p.add_argument("--repredict", action="store_true",
                   help="no GPU needed: re-predict the stored rows with the current cost model "
                        "and rewrite the summary (measurements are kept as they are)")


def point_key(method: str, phase: str, s: dict, cfg: dict, hardware: str) -> str:
    """The store id of a point: method, phase, shape and everything its numbers depend on."""
    return point_id(method=method, phase=phase, shape=s, dtype=cfg["dtype"], seed=cfg["seed"],
                    hardware=hardware,
                    numerics=cfg["decode_numerics" if phase == "decode" else "numerics"],
                    cold_l2=cfg["timing"]["cold_l2"])


def decode_points(cfg: dict, not_run: list[str]) -> list[tuple[str, str, dict]]:
    """``(method, "decode", shape)`` for every decode method that can run; for each one that
    cannot, appends ``"decode <method>: not run: <reason>"`` to ``not_run`` (never silent)."""
    out = []
    for m in cfg["decode_methods"]:
        why = decode_not_run(m, cfg)
        if why:
            not_run.append(f"decode {m}: not run: {why}")
        else:
            out += [(m, "decode", s) for s in cfg["decode_shapes"]]
    return out


def repredicted(row: dict) -> dict:
    """``row`` with ``pred_us``/``bound`` re-made by the current cost model; the predictions
    made at measurement time stay under ``pred_us_at_measurement``."""
    import torch

    from gpu.ops import resolve_spec

    out = dict(row, pred_us_at_measurement=row.get("pred_us"))
    if row.get("phase") == "decode":
        spec = _decode_spec(row["method"], row["dtype"])
        s = {k: row["shape"][k] for k in ("batch", "q_heads", "kv_heads", "kv_len", "head_dim")}
        out["pred_us"], out["bound"], errs, out["pred_launches"] = decode_predictions(
            spec, s, row["hardware"])
    else:
        spec = resolve_spec(row["method"], None, getattr(torch, row["dtype"]))
        out["pred_us"], out["bound"], errs = predictions(spec, row["shape"], row["hardware"])
    out.pop("pred_errors", None)
    if errs:
        out["pred_errors"] = errs
    return out


def _repredict_summary(args: argparse.Namespace) -> int:
    store = ResultStore(args.dir / STORE_NAME)
    rows = [repredicted(r) for r in store.rows()]
    if not rows:
        raise ValueError(f"--repredict: no stored rows in {store.path}")
    note = (f"predictions re-made at git {provenance.git_revision()} with the current cost model "
            f"(`qsattn validate --repredict`); measured times, numerics and the predictions made "
            f"at measurement time (`pred_us_at_measurement`) are as stored")
    summary = write_summary(rows, args.dir, command=provenance.command_line(), not_run=[],
                            note=note)
    print(summary.read_text())
    return 0


def run(args: argparse.Namespace) -> int:
    if args.repredict:
        return _repredict_summary(args)
    if not cuda_available():
        print(no_gpu_message("validate"), file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    t_start = time.perf_counter()
    cfg = load_config(args.config)
    hw = args.hardware or (cfg["hardware"] if cfg["hardware"] != "auto"
                           else hardware_for_device(torch.cuda.get_device_name()))
    store = ResultStore(args.dir / STORE_NAME, rerun=args.rerun)
    command = provenance.command_line()
    not_run = []
    points = [(m, "prefill", s) for m in cfg["prefill_methods"] for s in cfg["shapes"]]
    points += decode_points(cfg, not_run)
    print(f"qsattn validate: {len(points)} points on {torch.cuda.get_device_name()} ({hw}); "
          f"store {store.path} has {len(store)} rows", flush=True)
    for line in not_run:
        print(line, flush=True)
    stopped = 0
    for i, (m, phase, s) in enumerate(points, 1):
        decode = phase == "decode"
        pid = point_key(m, phase, s, cfg, hw)
        label = decode_label(s) if decode else shape_label(s)
        tag = f"[{i}/{len(points)}] {m} {label}"
        if pid in store:
            print(f"{tag}: done earlier, skipped", flush=True)
            continue
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            stopped += 1
            continue
        t0 = time.perf_counter()
        try:
            row = run_decode_point(m, s, cfg, hw) if decode else run_point(m, s, cfg, hw)
        except Exception as e:   # one failing point is recorded, the sweep goes on
            why = _root_cause(e)
            print(f"{tag}: FAILED {why}", flush=True)
            not_run.append(f"{m} {label}: {why}")
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
