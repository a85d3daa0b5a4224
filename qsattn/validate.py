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

``--out DIR`` is the results folder (default ``reports/validation/``; a new folder starts from
the default's stored points); ``--copy-to DIR`` also copies store, summary, figure and tables
there. Without a CUDA GPU the command prints how to run it and exits with status 3;
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


from qsattn import provenance
from sim.spec import config_dir
from qsattn.calibrate import NO_GPU_EXIT, DEVICE_COMMAND, cuda_available, hardware_for_device, \
    no_gpu_message
from qsattn.store import ResultStore, point_id
from qsattn import validation_summary as vs
from gpu.counting import install as _install_counter

# the calibrated tier prices the SASS of the kernel that would run, compiled on the CPU
_install_counter()

DEFAULT_CONFIG = config_dir() / "experiments" / "validate_h100.yaml"
REPORT_DIR = provenance.REPORTS / "validation"
STORE_NAME = "results.jsonl"
ROW_SCHEMA = vs.ROW_SCHEMA     # a stored row as the summary and --repredict read it
SUMMARY_NAME = "summary.md"
FIGURE_NAME = "pred_vs_meas.png"
TIERS = ("roofline", "tiled", "pipeline", "calibrated")
SHAPE_KEYS = ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal")
DECODE_SHAPE_KEYS = ("batch", "q_heads", "kv_heads", "kv_len", "head_dim")


# -- config ----------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict:
    """Read and check a validation sweep config (schema: :class:`qsattn.configs.ValidateConfig`;
    see validate_h100.yaml for the fields)."""
    from qsattn.configs import ValidateConfig, load_experiment
    return load_experiment(path, ValidateConfig)


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


def numerics(method: str, spec, q, k, v, causal: bool, hq: int, hkv: int,
             ulp_bound: float) -> dict:
    """Kernel vs simulator (:mod:`gpu.compare`) vs float64 on batch 0, query heads [0, hq), KV
    heads [0, hkv)."""
    import numpy as np
    import torch

    import gpu
    import ref
    from gpu.compare import compare
    from sim import simulate

    qs, ks, vs_ = (x[:1, :h].contiguous() for x, h in ((q, hq), (k, hkv), (v, hkv)))
    kr = gpu.attention_trace(qs, ks, vs_, method=method, causal=causal, spec=spec)
    # fp16 inputs go to the simulator as float16; bf16 ones as their exact float32 values.
    qn, kn, vn = (x.cpu().numpy() if x.dtype == torch.float16 else x.float().cpu().numpy()
                  for x in (qs, ks, vs_))
    t0 = time.perf_counter()
    sim = simulate(qn, kn, vn, spec, causal=causal, trace=True)
    t_sim = time.perf_counter() - t0
    want = ref.attention(qn.astype(np.float64), kn.astype(np.float64), vn.astype(np.float64),
                         causal=causal)
    cmp = compare(sim, kr, dtype=str(q.dtype).removeprefix("torch."), ulp_bound=ulp_bound)
    km, kr_ = _errors(kr.out.float().cpu().numpy().astype(np.float64), want)
    sm, sr = _errors(sim.out.astype(np.float64), want)
    return {"heads": hq, "kv_heads": hkv, **cmp.to_row(), "kernel_max_err": km,
            "kernel_rel_l2": kr_, "sim_max_err": sm, "sim_rel_l2": sr, "sim_seconds": t_sim}


def time_kernel(method: str, spec, q, k, v, causal: bool, cold_l2: bool) -> dict:
    """The attention kernel alone (integer methods: pre-quantized operands), timed by
    :func:`gpu.bench.time_gpu` (GPU time only); its host time per call apart."""
    from gpu.bench import host_time, time_gpu
    from gpu.common import quantize_qkv
    from gpu.prefill import launch_prefill

    sm = 1.0 / math.sqrt(q.shape[-1])
    if spec.integer:
        def make():
            return quantize_qkv(q.clone(), k.clone(), v.clone(), spec, check=False)

        def fn(qq, kq, vq):
            return launch_prefill(qq, kq, vq, spec, causal=causal, sm_scale=sm,
                                  out_dtype=q.dtype)
    else:
        def make():
            return q.clone(), k.clone(), v.clone()

        def fn(q_, k_, v_):
            return launch_prefill(None, None, None, spec, causal=causal, sm_scale=sm,
                                  out_dtype=q.dtype, q=q_, k=k_, v=v_)
    t = time_gpu(fn, make, cold_l2=cold_l2)
    return {"us": t.ms * 1e3, "min_us": t.min_ms * 1e3, "max_us": t.max_ms * 1e3,
            "spread": t.spread, "mode": t.mode, "sets": t.sets,
            "host_us": host_time(fn, make())}


def cost_shape(s: dict):
    """The ``sim.cost.Shape`` of a stored prefill shape dict."""
    from sim.cost import Shape
    return Shape(**{k: s[k] for k in SHAPE_KEYS})


def prefill_inputs(s: dict, cfg: dict):
    """Q, K, V of a prefill point on the current CUDA device (seeded by ``cfg``), with a few
    outlier key channels, as real keys have; ours and the peers' points time the same data."""
    import torch
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator(device="cuda").manual_seed(int(cfg["seed"]))
    q = torch.randn(s["batch"], s["q_heads"], s["q_len"], s["head_dim"], device="cuda",
                    dtype=dtype, generator=g)
    k = torch.randn(s["batch"], s["kv_heads"], s["kv_len"], s["head_dim"], device="cuda",
                    dtype=dtype, generator=g)
    v = torch.randn_like(k)
    k[..., :2] *= 4.0
    return q, k, v


def table_launch(method: str, s: dict, hardware: str, block_n: int | None = None) -> dict:
    """The launch time_kernel's launch_prefill call makes (no launch= given): the entry of the
    hardware architecture's table (which kernel, its program config), which
    gpu.prefill.default_launch reads on the device. Stored with each prefill row."""
    from sim.arch import prefill_kernel_launch
    from sim.cost import load_hardware
    return prefill_kernel_launch(load_hardware(hardware).arch, method, s["head_dim"], block_n)


def predictions(spec, s: dict, hardware: str, tiers=TIERS,
                launch: dict | None = None) -> tuple[dict, dict, dict]:
    """({tier: us}, {tier: bound}, {tier: error}) from sim.cost.predict at every tier, for the
    kernel ``launch`` (default: :func:`table_launch`)."""
    from sim.cost import predict

    shape = cost_shape(s)
    if launch is None:
        launch = table_launch(spec.method, s, hardware, spec.tiling.block_n)
    pred, bound, errors = {}, {}, {}
    for tier in tiers:
        try:
            p = predict(spec, shape, hardware, phase="prefill", tier=tier, launch=launch)
        except (FileNotFoundError, ValueError) as e:
            errors[tier] = str(e)
            continue
        pred[tier], bound[tier] = p.time * 1e6, p.bound
    return pred, bound, errors


def _telemetry():
    """SM clock, memory clock, power and temperature sampled around a timing (an empty summary
    where neither NVML nor nvidia-smi is available)."""
    from gpu.telemetry import Telemetry
    return Telemetry(required=False)


# Foreign kernels the sweep can time as peers: name -> call on fp16 [B, H, L, D] q, k, v. Their
# kernels are described for the cost model in configs/kernels/foreign/<name>.yaml.
def _sage_call(q, k, v, causal):
    from sageattention import sageattn
    return sageattn(q, k, v, tensor_layout="HND", is_causal=causal)


PEERS = {"sage_v1": ("fp16_flash", _sage_call,
                     "SageAttention 1.0.6 sageattn (the whole call: K smoothing, Q/K "
                     "quantization, attention)")}


def run_peer_point(name: str, s: dict, cfg: dict, hardware: str, tiers=TIERS) -> dict:
    """A foreign kernel at a prefill shape: its public call timed like ours (cold L2, GPU time;
    twice with ``timing.repeat``) and predicted at every tier (the counted tiers price its own
    kernels from their SASS, sim.cost.foreign). No numerics: qsattn has no simulator of it."""
    import torch

    from gpu.bench import host_time, time_gpu
    if name not in PEERS:
        raise ValueError(f"peers: expected names from {sorted(PEERS)}, got {name!r}")
    method, call, what = PEERS[name]
    q, k, v = prefill_inputs(s, cfg)

    def make():
        return q.clone(), k.clone(), v.clone()

    def fn(q_, k_, v_):
        return call(q_, k_, v_, s["causal"])

    fn(*make())                                  # compiles; checks the call once
    with _telemetry() as tel:
        t = time_gpu(fn, make, cold_l2=bool(cfg["timing"]["cold_l2"]))
    row = {"method": name, "phase": "prefill", "shape": s, "label": shape_label(s),
           "shape_key": shape_label(s), "dtype": cfg["dtype"], "seed": cfg["seed"],
           "hardware": hardware, "device": torch.cuda.get_device_name(), "peer": what,
           "numerics": None, "numerics_skipped": "peer kernel: qsattn has no simulator of it",
           "measured_us": t.ms * 1e3,
           "timing": {"min_us": t.min_ms * 1e3, "max_us": t.max_ms * 1e3, "spread": t.spread,
                      "mode": t.mode, "sets": t.sets, "host_us": host_time(fn, make())},
           "telemetry": tel.summary()}
    if cfg["timing"].get("repeat"):
        row["timing"]["repeat_us"] = time_gpu(fn, make, cold_l2=bool(cfg["timing"]["cold_l2"])
                                              ).ms * 1e3
    pred, bound, errs, analytical = peer_predictions(name, s, hardware, tiers)
    if analytical:
        row["pred_analytical"] = analytical
    row["pred_us"], row["bound"] = pred, bound
    if errs:
        row["pred_errors"] = errs
    row["git"] = provenance.git_revision()
    row["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return row


def peer_predictions(name: str, s: dict, hardware: str, tiers=TIERS):
    """({tier: us}, {tier: bound}, {tier: error}, {tier: [[launch, why], ...]}) of a peer at a
    prefill shape: the analytical launches are the ones no counted kernel prices."""
    from sim.cost import predict
    method = PEERS[name][0]
    shape = cost_shape(s)
    pred, bound, errs, analytical = {}, {}, {}, {}
    for tier in tiers:
        try:
            p = predict(method, shape, hardware, phase="prefill", kernel=name, tier=tier)
        except (FileNotFoundError, ValueError) as e:
            errs[tier] = str(e)
            continue
        pred[tier], bound[tier] = p.time * 1e6, p.bound
        if p.analytical:
            analytical[tier] = [list(x) for x in p.analytical]
    return pred, bound, errs, analytical


def run_point(method: str, s: dict, cfg: dict, hardware: str, tiers=TIERS) -> dict:
    import torch

    import gpu

    q, k, v = prefill_inputs(s, cfg)
    spec = gpu.resolve(method, None, q.dtype)
    row = {"method": method, "phase": "prefill", "shape": s, "label": shape_label(s),
           "launch": table_launch(spec.method, s, hardware, spec.tiling.block_n),
           "shape_key": shape_label(s), "dtype": cfg["dtype"], "seed": cfg["seed"],
           "hardware": hardware, "device": torch.cuda.get_device_name()}
    def timed():
        return time_kernel(method, spec, q, k, v, s["causal"], bool(cfg["timing"]["cold_l2"]))

    with _telemetry() as tel:
        t = timed()
    row["measured_us"] = t.pop("us")
    row["timing"] = t
    row["telemetry"] = tel.summary()
    hq, hkv = sim_heads(s, int(cfg["numerics"]["max_heads"]), int(cfg["numerics"]["max_elements"]))
    if hq:
        row["numerics"] = numerics(method, spec, q, k, v, s["causal"], hq, hkv,
                                   float(cfg["numerics"]["ulp_bound"][method]))
    else:
        row["numerics"] = None
        row["numerics_skipped"] = (f"Lq x Lk = {s['q_len'] * s['kv_len']} above "
                                   f"numerics.max_elements for one head")
    if cfg["timing"].get("repeat"):
        row["timing"]["repeat_us"] = timed()["us"]
    row["pred_us"], row["bound"], errs = predictions(spec, s, hardware, tiers, row["launch"])
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
    from sim.cost.methods import COST_PATHS
    try:
        import gpu
    except ImportError as e:
        return f"the gpu package does not import ({e})"

    cache_methods = gpu.decode_methods()
    if method not in cache_methods:
        return f"gpu.build_cache has no {method!r} cache (it builds {list(cache_methods)})"
    dtypes = gpu.KERNEL_PATHS.get(method).cache_dtypes
    if cfg["dtype"] not in dtypes:
        return f"{method} caches take {list(dtypes)}; the sweep's dtype is {cfg['dtype']}"
    if method not in COST_PATHS or not COST_PATHS.get(method).kernels.get("decode"):
        return f"sim.cost has no decode kernel for {method!r}"
    return None


def _decode_spec(method: str, dtype_name: str):
    """The shipped spec the kernels run on inputs of ``dtype_name`` (``gpu.resolve``)."""
    import gpu
    return gpu.resolve(method, None, dtype_name, phase="decode")


def _np32(x):
    return x.detach().float().cpu().numpy()


def _decode_calibration(spec, q, k, v):
    """The calibration handed to build_cache and the simulator alike, when the method's decode
    mode takes one: its calibration kind computed on the step's own inputs ("oracle"; turbo: the
    head priority of these K/V; double_sparse: the ``qk`` channel metric of the step's query,
    which with one query row pairs the last key only). None otherwise."""
    from sim.methods import SIMULATORS
    m = SIMULATORS.get(spec.method)
    if m.decode_mode not in m.calibrated:
        return None
    return m.calibration.compute(_np32(q), _np32(k), _np32(v), spec, "oracle")


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

    from gpu.compare import compare

    dtype_name = str(q.dtype).replace("torch.", "")
    from sim.methods import SIMULATORS

    cal = _decode_calibration(spec, q, k, v)
    cache = gpu.build_cache(k, v, method, spec=spec, calibration=cal)
    kr = gpu.decode_trace(q, cache, launch=launch)
    qn, kn, vn = _np32(q), _np32(k), _np32(v)
    t0 = time.perf_counter()
    mode = SIMULATORS.get(spec.method).decode_mode
    res = simulate(qn, kn, vn, spec, kv_cache=mode == "kv_cache", trace=True, calibration=cal)
    t_sim = time.perf_counter() - t0
    cmp = compare(res, kr, dtype=dtype_name, ulp_bound=ulp_bound, abs_slack=abs_slack)
    path = gpu.KERNEL_PATHS.get(spec.method)
    if path.compare_cache is not None:
        cmp.ints.update(path.compare_cache(cache, kn, vn, cal))
    extras = {}
    if "head_bits" in res.trace:
        extras["head_bits"] = [int(b) for b in res.trace["head_bits"]]
    if "splits" in kr.trace:
        extras["splits"] = int(kr.trace["splits"])
    want = ref.attention(qn.astype(np.float64), kn.astype(np.float64), vn.astype(np.float64))
    km, kr_ = _errors(_np32(kr.out).astype(np.float64), want)
    sm, sr = _errors(res.out.astype(np.float64), want)
    return {"heads": int(q.shape[1]), "kv_heads": int(k.shape[1]), "context": int(k.shape[2]),
            **cmp.to_row(), "kernel_max_err": km, "kernel_rel_l2": kr_, "sim_max_err": sm,
            "sim_rel_l2": sr, "sim_seconds": t_sim, **extras}


def time_decode(method: str, spec, q, k, v, calibration, cold_l2: bool) -> dict:
    """``gpu.decode`` alone on the full shape (caches built outside the timed region), timed by
    :func:`gpu.bench.time_gpu` over caches built from the same K/V until they exceed 4x L2
    (cold L2; at least 2), or one cache with ``cold_l2=False``. The step is checked once with
    :func:`gpu.decode`; the timed calls are ``gpu.api.decode_unchecked`` (no host sync); the
    checked call's host time is measured apart. Returns ``{"us", "min_us", "max_us",
    "spread", "mode", "caches", "cache_bytes", "host_us"}``."""
    import gpu
    from gpu.api import decode_unchecked
    from gpu.bench import host_time, time_gpu

    sm = 1.0 / math.sqrt(q.shape[-1])
    first = [gpu.build_cache(k, v, method, spec=spec, calibration=calibration)]
    gpu.decode(q, first[0])                 # checks the inputs once; compiles
    host = host_time(lambda: gpu.decode(q, first[0]), ())
    made = []

    def make():
        c = first.pop() if first else gpu.build_cache(k, v, method, spec=spec,
                                                      calibration=calibration)
        made.append(c)
        return q, c, _CacheBytes(c)

    t = time_gpu(lambda qq, c, _b: decode_unchecked(qq, c, sm), make, cold_l2=cold_l2)
    return {"us": t.ms * 1e3, "min_us": t.min_ms * 1e3, "max_us": t.max_ms * 1e3,
            "spread": t.spread, "mode": t.mode, "caches": t.sets,
            "cache_bytes": made[0].nbytes(), "host_us": host}


class _CacheBytes:
    """A cache's bytes as an input-set item the harness counts toward its 4x L2."""

    def __init__(self, cache):
        self.n = int(cache.nbytes())

    def numel(self) -> int:
        return self.n

    def element_size(self) -> int:
        return 1


def decode_predictions(spec, s: dict, hardware: str,
                       tiers=TIERS) -> tuple[dict, dict, dict, dict]:
    """({tier: us}, {tier: bound}, {tier: error}, {tier: [[launch, CTAs], ...]}) from
    ``sim.cost.predict(phase="decode")``; the model picks its own split-K (decode takes no
    ``launch``), shown as the CTAs of each launch."""
    from sim.cost import Shape, predict

    shape = Shape(**decode_shape(s))
    pred, bound, errors, launches = {}, {}, {}, {}
    for tier in tiers:
        try:
            p = predict(spec, shape, hardware, phase="decode", tier=tier)
        except (FileNotFoundError, ValueError) as e:
            errors[tier] = str(e)
            continue
        pred[tier], bound[tier] = p.time * 1e6, p.bound
        launches[tier] = [[str(x[0]), int(x[1])] for x in p.launches]
    return pred, bound, errors, launches


def run_decode_point(method: str, s: dict, cfg: dict, hardware: str, *,
                     device: str = "cuda", tiers=TIERS) -> dict:
    """One decode row (same schema as :func:`run_point`'s, ``phase: "decode"``): numerics on
    batch 0, the first query heads and the first ``max_context`` tokens; timing of the full
    shape (CUDA only: on the CPU, i.e. under the Triton interpreter, ``measured_us`` is None and
    ``timing_skipped`` says why); predictions at every tier."""
    import torch

    import gpu
    from gpu.common import interpreting

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
    from sim.methods import SIMULATORS
    m = SIMULATORS.get(spec.method)
    if m.decode_mode in m.calibrated:
        row["calibration"] = f"oracle: {m.calibration.name} of the step's own inputs"
    if device == "cuda" and not interpreting():
        # a cache that can calibrate itself on the device ("oracle") does; a required one is
        # computed here
        cal = _decode_calibration(spec, q, k, v) \
            if gpu.KERNEL_PATHS.get(spec.method).cache_needs_calibration else None
        with _telemetry() as tel:
            t = time_decode(method, spec, q, k, v, cal, bool(cfg["timing"]["cold_l2"]))
        row["measured_us"] = t.pop("us")
        row["timing"] = t
        row["telemetry"] = tel.summary()
        if cfg["timing"].get("repeat"):
            row["timing"]["repeat_us"] = time_decode(method, spec, q, k, v, cal,
                                                     bool(cfg["timing"]["cold_l2"]))["us"]
    else:
        row["measured_us"] = None
        row["timing_skipped"] = "no CUDA timing on the CPU (Triton interpreter)"
    row["pred_us"], row["bound"], errs, row["pred_launches"] = decode_predictions(
        spec, s, hardware, tiers)
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
    vs.write_tables(rows, out_dir)
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
    from qsattn import cliopts
    cliopts.add_common(p, out_default=REPORT_DIR,
                       out_help="results store + summary folder (default: reports/validation/); "
                            "a new folder starts from the default folder's stored points")
    p.add_argument("--dir", type=Path, dest="out", help=argparse.SUPPRESS)  # old name of --out
    p.add_argument("--copy-to", type=Path, default=None,
                   help="also copy store, summary, figure and tables here (for machines you "
                        "can only copy files back from)")
    p.add_argument("--hardware", default=None,
                   help="hardware id or YAML path (default: the config's, or from the GPU name)")
    p.add_argument("--rerun", action="store_true", help="recompute finished points")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new point after this many seconds (the rest resume later)")
    p.add_argument("--predict-tiers", default=",".join(TIERS),
                   help="cost-model tiers to predict at measurement time (default all: "
                        f"{','.join(TIERS)}); a GPU run can leave the counted tiers to "
                        "--repredict on any CPU, under the same frozen model digest")
    p.add_argument("--repredict", action="store_true",
                   help="no GPU needed: re-predict the stored rows with the current cost model "
                        "and rewrite the summary (measurements are kept as they are)")
    p.add_argument("--launch", type=_launch_arg, default=None, metavar="JSON",
                   help="with --repredict: the prefill launch that stored rows recording none "
                        "ran, by head dim, e.g. '{\"128\": {\"kernel\": \"triton\", "
                        "\"block_m\": 128, \"num_warps\": 8, \"num_stages\": 3}}' "
                        "(default: today's launch table)")


def _launch_arg(text: str) -> dict:
    """``--launch``: a JSON object ``{head_dim: launch}``, each launch checked as predict checks
    it."""
    import json

    from sim.checks import check_launch
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})")
    if not isinstance(doc, dict) or not doc:
        raise argparse.ArgumentTypeError(f"expected a JSON object {{head_dim: launch}}, "
                                         f"got {text!r}")
    out = {}
    for d, la in doc.items():
        if not str(d).isdigit():
            raise argparse.ArgumentTypeError(f"expected head dims as keys, got {d!r}")
        try:
            out[str(int(d))] = check_launch(la, "prefill", f"--launch[{d}]")
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e))
    return out


def point_key(method: str, phase: str, s: dict, cfg: dict, hardware: str) -> str:
    """The store id of a point: method, phase, shape and everything its numbers depend on."""
    return point_id(method=method, phase=phase, shape=s, dtype=cfg["dtype"], seed=cfg["seed"],
                    hardware=hardware,
                    numerics=cfg["decode_numerics" if phase == "decode" else "numerics"],
                    cold_l2=cfg["timing"]["cold_l2"])


def peer_points(cfg: dict, s: dict, not_run: list[str]) -> list[tuple[str, str, dict]]:
    """``(peer, "peer", s)`` for every configured peer whose foreign description accepts the
    shape (its ``requires``); for each one that does not, appends the reason to ``not_run``
    instead of timing a call the peer refuses."""
    from sim.cost.foreign import load_foreign
    out = []
    for p in cfg.get("peers", ()):
        try:
            load_foreign(p).env(cost_shape(s))
        except ValueError as e:
            not_run.append(f"{p} {shape_label(s)}: not run: {e}")
            continue
        out.append((p, "peer", s))
    return out


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


def repredicted(row: dict, launch: dict | None = None) -> dict:
    """``row`` with ``pred_us``/``bound`` re-made by the current cost model; the predictions
    made at measurement time stay under ``pred_us_at_measurement``. A prefill row is priced
    as the kernel it ran: its stored ``launch``, else ``launch`` (``{head_dim: launch}`` for
    rows that record none, ``--launch``), else today's table."""
    import torch

    from gpu import resolve as resolve_spec

    out = dict(row, pred_us_at_measurement=row.get("pred_us"))
    if row.get("peer"):
        out["pred_us"], out["bound"], errs, analytical = peer_predictions(
            row["method"], row["shape"], row["hardware"])
        out.pop("pred_analytical", None)
        if analytical:
            out["pred_analytical"] = analytical
    elif row.get("phase") == "decode":
        spec = _decode_spec(row["method"], row["dtype"])
        s = {k: row["shape"][k] for k in ("batch", "q_heads", "kv_heads", "kv_len", "head_dim")}
        out["pred_us"], out["bound"], errs, out["pred_launches"] = decode_predictions(
            spec, s, row["hardware"])
    else:
        spec = resolve_spec(row["method"], None, getattr(torch, row["dtype"]))
        ran = row.get("launch") or (launch or {}).get(str(row["shape"]["head_dim"]))
        out["pred_us"], out["bound"], errs = predictions(spec, row["shape"], row["hardware"],
                                                         launch=ran)
    out.pop("pred_errors", None)
    if errs:
        out["pred_errors"] = errs
    return out


def _repredict_summary(args: argparse.Namespace) -> int:
    store = ResultStore(args.out / STORE_NAME, required=ROW_SCHEMA)
    digests: dict = {}
    rows = []
    for r in store.rows():
        h = r.get("hardware")
        if h not in digests:
            digests[h] = model_state(h)
        rows.append(dict(repredicted(r, args.launch), pred_model_digest=digests[h]))
    if not rows:
        raise ValueError(f"--repredict: no stored rows in {store.path}")
    note = (f"predictions re-made at git {provenance.git_revision()} with the current cost model "
            f"(`qsattn validate --repredict`); measured times, numerics and the predictions made "
            f"at measurement time (`pred_us_at_measurement`) are as stored")
    summary = write_summary(rows, args.out, command=provenance.command_line(), not_run=[],
                            note=note)
    _print_summary(rows, summary, args.format)
    return 0


def _print_summary(rows: list[dict], summary: Path, fmt: str) -> None:
    """The summary page (md), or the per-point table's rows (csv/json)."""
    from qsattn import cliopts
    cliopts.emit(cliopts.render(vs.table_rows(rows)["points"], fmt,
                                markdown=summary.read_text()))


def run(args: argparse.Namespace) -> int:
    if args.repredict:
        return _repredict_summary(args)
    cfg = load_config(args.config)          # a bad config is reported on any machine
    if args.hardware is not None:
        from sim.cost.hardware import load_hardware
        load_hardware(args.hardware)
    if not cuda_available():
        print(no_gpu_message("validate"), file=sys.stderr)
        return NO_GPU_EXIT
    import torch

    t_start = time.perf_counter()
    hw = args.hardware or (cfg["hardware"] if cfg["hardware"] != "auto"
                           else hardware_for_device(torch.cuda.get_device_name()))
    _seed_store(args.out)
    store = ResultStore(args.out / STORE_NAME, rerun=args.rerun, required=ROW_SCHEMA)
    command = provenance.command_line()
    not_run = []
    # shape by shape (every method and peer of a shape together): a sweep cut short by
    # --budget-s keeps whole shapes, so its speedup ratios stay complete
    points = [pt for s in cfg["shapes"]
              for pt in [(m, "prefill", s) for m in cfg["prefill_methods"]]
              + peer_points(cfg, s, not_run)]
    points += decode_points(cfg, not_run)
    digest = model_state(hw)
    tiers = _tiers(args.predict_tiers)
    print(f"qsattn validate: cost model frozen at digest {digest} (sim.cost.calibrated."
          f"model_digest: its sources, latencies and every hardware value it reads)", flush=True)
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
            if not args.no_progress:
                print(f"{tag}: done earlier, skipped", flush=True, file=sys.stderr)
            continue
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            stopped += 1
            continue
        t0 = time.perf_counter()
        try:
            row = run_decode_point(m, s, cfg, hw, tiers=tiers) if decode else \
                run_peer_point(m, s, cfg, hw, tiers) if phase == "peer" else \
                run_point(m, s, cfg, hw, tiers)
            row["model_digest"] = row["pred_model_digest"] = digest
            row["held_out"] = bool(cfg.get("held_out"))
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
    summary = write_summary(rows, args.out, command=command, not_run=not_run)
    _print_summary(rows, summary, args.format)
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for f in sorted(args.out.iterdir()):
            if f.is_file() and (f.name in (STORE_NAME, SUMMARY_NAME) or f.suffix in (".png", ".csv")):
                shutil.copy2(f, args.copy_to / f.name)
        print(f"copied results to {args.copy_to}", file=sys.stderr)
    return 0


def _tiers(text: str) -> tuple:
    got = tuple(t.strip() for t in str(text).split(",") if t.strip())
    bad = [t for t in got if t not in TIERS]
    if bad or not got:
        raise ValueError(f"--predict-tiers: expected a comma list of {list(TIERS)}, got {text!r}")
    return got


def model_state(hardware: str) -> str:
    """The cost model's digest on ``hardware`` (its measured overlay applied when one exists):
    computed once before a sweep measures anything, stored in every row it makes."""
    from sim.cost import load_hardware
    from sim.cost.calibrated import model_digest
    from sim.cost.hardware import apply_measured
    hw = load_hardware(hardware)
    try:
        hw = apply_measured(hw)
    except FileNotFoundError:
        pass
    return model_digest(hw)


def _seed_store(out: Path) -> None:
    """A results folder other than the default starts from the default's stored points (so a
    run into a fresh folder resumes instead of measuring everything again)."""
    dest, src = Path(out) / STORE_NAME, REPORT_DIR / STORE_NAME
    if not dest.exists() and src.is_file() and dest.resolve() != src.resolve():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        print(f"qsattn validate: {dest} starts from the {sum(1 for _ in src.open())} points "
              f"stored in {src}", file=sys.stderr)


# -- qsattn report ---------------------------------------------------------------------------
def report_section(ctx) -> str:
    """The last committed validation summary (no GPU needed): where/when, targets, link."""
    path = Path(ctx.out) / "validation" / SUMMARY_NAME
    if not path.exists():
        path = REPORT_DIR / SUMMARY_NAME
    if not path.exists():
        return ("No GPU validation results are committed yet (`reports/validation/summary.md` "
                "does not exist). They need a CUDA GPU: run\n\n"
                f"    {DEVICE_COMMAND}\n\non a CUDA machine and commit what it writes "
                "(README: 'GPU runs on any CUDA machine').\n")
    text = path.read_text()
    lines = text.splitlines()
    keep = [ln for ln in lines if ln.startswith(("Regenerate with:", "Generated ", "Measured on",
                                                 "Measurement dates"))]
    body, grab = [], False
    for ln in lines:
        if ln.startswith("### "):
            grab = ln.startswith(("### Cost model on held-out", "### Targets",
                                  "### Predicted vs measured time"))
            if grab:
                body.append(ln.replace("### ", "#### ", 1))
            continue
        if grab:
            body.append(ln)
    try:                                   # the link is read from REPORT.md, in ctx.out
        rel = path.resolve().relative_to(Path(ctx.out).resolve()).as_posix()
    except ValueError:
        rel = path.as_posix()
    return ("Reused from the last committed GPU validation run (this section does not need a "
            "GPU and runs nothing).\n\n"
            + "\n\n".join(keep) + "\n\n" + "\n".join(body).strip() + "\n\n"
            + f"Full results, outliers, numerics table and figure: [{rel}]({rel}).\n")
