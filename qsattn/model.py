"""``qsattn model``: accuracy of every method inside a real language model on real text.

Default: SmolLM2-135M-Instruct and Wikipedia lead sections, both embedded
(:mod:`qsattn.model_assets`); the config (``configs/experiments/model_smollm2.yaml``) names the
token counts. Each method runs through ``transformers.AttentionInterface``
(:mod:`ref.hf_attention`) with the bit-accurate CPU simulator, and the study writes to the output
directory (default ``reports/model/``):

- ``README.md``: pass-through perplexity (transformers' SDPA; the issue measured ~12.1), perplexity
  per variant with the paired delta to the baseline (mean +- standard error over windows),
  needle retrieval accuracy per length, per-layer error summary, KV-cache bytes;
- ``results.jsonl``: the resumable results store (one row per finished point);
- ``per_layer_error.png``; ``qkv_<model>.npz``: captured fp16 Q/K/V of a few layers.

Calibrations (Double Sparsity channels, Turbo head priority) come from a calibration slice that
must not overlap the evaluation slice; they are saved under ``$QSATTN_CACHE/calibration`` and
reused. All inputs (model, text length, windows, head-dim support of every method) are checked
before any long work.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
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
           "Study"]


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
# Work a config may ask for without --allow-large, in simulated (query, key) pairs per layer and
# head (x 270 for SmolLM2's 30 layers x 9 heads, ~0.5 us per score): the default study is ~1e7
# (~30 minutes on 2 cores), its largest window 256^2.
POINT_PAIRS = 1 << 26
TOTAL_PAIRS = 1 << 27

# The stored rows by kind, as the report reads them.
ROW_SCHEMA = {
    "passthrough": {"start": int, "length": int, "nll": NUMBER, "tokens": int, "seconds": NUMBER},
    "ppl": {"variant": str, "start": int, "length": int, "nll": NUMBER, "tokens": int,
            "seconds": NUMBER},
    "needle": {"variant": str, "length": int, "trial": int, "correct": bool},
    "layer_error": {"variant": str, "layers": list, "rel_err": list},
}


def load_config(path: str | Path | None = None, *, quick: bool = False,
                allow_large: bool = False) -> dict:
    """The experiment config (schema: :class:`qsattn.configs.ModelConfig`), with its ``quick:``
    overrides applied when ``quick``. Its simulated work is bounded before the model loads
    (:data:`POINT_PAIRS`, :data:`TOTAL_PAIRS`; ``allow_large`` lifts the bound)."""
    from qsattn.configs import ModelConfig, check_work, load_experiment
    p = Path(path) if path is not None else DEFAULT_CONFIG
    cfg = load_experiment(p, ModelConfig, quick=quick)
    columns = len(cfg["variants"]) + len(cfg["references"])
    ev, le, nd = cfg["evaluation"], cfg["layer_error"], cfg["needle"]
    decode = [L * nd["decode_tail"] for L in nd["lengths"]]
    check_work(str(p), "evaluation.window", largest=max(ev["window"] ** 2, le["window"] ** 2,
                                                         *decode),
               total=columns * (ev["windows"] * ev["window"] ** 2 + le["window"] ** 2)
               + len(nd["variants"]) * nd["trials"] * sum(decode),
               point_limit=POINT_PAIRS, total_limit=TOTAL_PAIRS,
               unit="simulated (query, key) pairs per layer and head", allow_large=allow_large)
    cfg["_path"] = str(p)
    cfg["_quick"] = quick
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

    @property
    def key(self) -> dict:
        """What defines the variant's numerics (part of every point id)."""
        if self.spec is None:
            return {"reference": self.reference}
        return {"spec": self.spec.digest, "method": self.spec.method, "kv_cache": self.kv_cache,
                "dense_layers": self.dense_layers}

    @property
    def needs_calibration(self) -> str | None:
        """The name of the calibration kind this variant takes (``sim.methods``), or None."""
        if self.spec is None:
            return None
        from sim.methods import SIMULATORS
        m = SIMULATORS.get(self.spec.method)
        return m.calibration.name if ("kv_cache" if self.kv_cache else None) in m.calibrated \
            else None


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
                           dense_layers=int(item.get("dense_layers", 0)), overrides=over))
    ids = [v.id for v in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"--config: duplicate variant ids {dup}")
    if cfg["baseline"] not in ids:
        raise ValueError(f"--config: baseline {cfg['baseline']!r} is not a variant id {ids}")
    return out


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
class Study:
    """Model, tokens, variants and calibrations of one run; every check happens in __init__."""

    def __init__(self, cfg: dict, out: Path, *, rerun: bool = False, progress: bool = True,
                 executor: str = "sim"):
        import torch

        from qsattn import model_assets as ma
        from ref.hf_attention import check_head_dim

        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.variants = build_variants(cfg)
        self.executor, self.kernel_variants = _check_executor(executor, self.variants)
        # Points run on the kernels are keyed apart from simulator points (the simulator's keys
        # predate the executor and stay valid).
        self.key_extra = {} if executor == "sim" else {"executor": executor}
        self.by_id = {v.id: v for v in self.variants}
        for sec in ("needle",):
            for vid in cfg[sec].get("variants", []):
                if vid not in self.by_id:
                    raise ValueError(f"--config: {sec}.variants names unknown variant {vid!r}")
        t0 = time.perf_counter()
        self.model, self.tok = ma.load_model(cfg.get("model"), gguf_file=cfg.get("gguf_file"))
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
        text = ma.read_text(cfg.get("text"))
        self.text_digest = point_id(text=text[:4096], n=len(text))
        self.ids = ma.token_ids(self.tok, text)
        self.model_id = str(cfg.get("model") or ma.GGUF_FILE)
        self._check_slices()
        torch.set_grad_enabled(False)
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = ResultStore(self.out / "results.jsonl", rerun=rerun, on_corrupt="quarantine",
                                 required=by_kind(ROW_SCHEMA))
        self.calibrations: dict[str, dict[int, Any]] = {}

    # -- input checks --------------------------------------------------------------------
    def _check_slices(self) -> None:
        n = len(self.ids)
        spans = {}
        for sec in ("passthrough", "calibration", "evaluation"):
            s = self.cfg[sec]
            end = s["offset"] + s["window"] * s["windows"]
            if end > n:
                raise ValueError(f"text: {sec} needs tokens [{s['offset']}, {end}) but the text has "
                                 f"only {n} tokens; lower {sec}.windows/window/offset or use a "
                                 f"longer text")
            if self.max_pos and s["window"] > self.max_pos:
                raise ValueError(f"--config: {sec}.window {s['window']} exceeds the model's "
                                 f"{self.max_pos} positions")
            spans[sec] = (s["offset"], end)
        (c0, c1), (e0, e1) = spans["calibration"], spans["evaluation"]
        if c0 < e1 and e0 < c1:
            raise ValueError(f"--config: the calibration slice [{c0}, {c1}) overlaps the "
                             f"evaluation slice [{e0}, {e1})")
        nd = self.cfg["needle"]
        longest = max(nd["lengths"]) if nd["lengths"] else 0
        if self.max_pos and longest > self.max_pos:
            raise ValueError(f"--config: needle length {longest} exceeds the model's "
                             f"{self.max_pos} positions")
        if nd["offset"] + longest > n:
            raise ValueError(f"text: the needle filler needs tokens [{nd['offset']}, "
                             f"{nd['offset'] + longest}) but the text has only {n}")
        if nd["offset"] < c1 and c0 < nd["offset"] + longest:
            raise ValueError("--config: the needle filler overlaps the calibration slice")

    # -- helpers -------------------------------------------------------------------------
    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=True, dynamic_ncols=True)

    def windows(self, sec: str) -> list[tuple[int, int]]:
        s = self.cfg[sec]
        return [(s["offset"] + i * s["window"], s["window"]) for i in range(s["windows"])]

    def backend(self, v: Variant, **kw):
        from ref.hf_attention import SimAttention

        if v.spec is None:
            return SimAttention(reference=v.reference, **kw)
        cal = self.calibrations.get(v.needs_calibration) if v.needs_calibration else None
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
        """Summed next-token NLL (nats) over a window, and the number of predicted tokens."""
        import torch

        x = torch.from_numpy(self.ids[start:start + length][None])
        logits = self.model(x).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        return float(loss), length - 1

    # -- calibration ---------------------------------------------------------------------
    def calibrate(self) -> None:
        """Per-layer calibrations of every kind the variants take (``sim.methods``' calibration
        kinds: Double Sparsity's channels, Turbo's head priority) from the calibration slice
        (captured with the fp32 reference), loaded from the cache when present."""
        from sim.methods import SIMULATORS

        from qsattn import model_assets as ma

        kinds = {}
        for v in self.variants:
            if v.needs_calibration:
                kind = SIMULATORS.get(v.spec.method).calibration
                keys = kinds.setdefault(kind.name, (kind, v.spec, set()))[2]
                keys.add(kind.key(v.spec))
        if not kinds:
            return
        for name, (_, _, keys) in kinds.items():
            if len(keys) > 1:
                raise ValueError(f"--config: the variants that take a {name} calibration need "
                                 f"different ones {sorted(map(str, keys))}; use one")
        c = self.cfg["calibration"]
        tag = point_id(model=self.model_id, text=self.text_digest, offset=c["offset"],
                       window=c["window"], windows=c["windows"],
                       kinds={n: str(next(iter(k))) for n, (_, _, k) in sorted(kinds.items())})
        d = ma.cache_dir() / "calibration" / tag
        paths = {n: [d / f"{n}_L{i:02d}{kind.suffix}" for i in range(self.n_layers)]
                 for n, (kind, _, _) in kinds.items()}
        if not all(p.is_file() for ps in paths.values() for p in ps):
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
                for n, (kind, spec, _) in kinds.items():
                    kind.compute(q, k, v, spec, src).save(paths[n][i])
        for n, (kind, _, _) in kinds.items():
            self.calibrations[n] = {i: kind.load(p) for i, p in enumerate(paths[n])}
        self.calibration_dir = d

    # -- pass-through --------------------------------------------------------------------
    def passthrough(self) -> dict:
        """transformers' own SDPA (no qsattn code): the ~12.1 check."""
        todo = []
        for start, length in self.windows("passthrough"):
            pid = point_id(kind="passthrough", model=self.model_id, text=self.text_digest,
                           start=start, length=length)
            if pid not in self.store:
                todo.append((pid, start, length))
        if todo:
            self.model.set_attn_implementation("sdpa")
            bar = self._bar(len(todo), "pass-through perplexity")
            for pid, start, length in todo:
                t0 = time.perf_counter()
                s, n = self.nll(start, length)
                self.store.add(pid, {"kind": "passthrough", "start": start, "length": length,
                                     "nll": s, "tokens": n, "seconds": time.perf_counter() - t0})
                bar.update(1)
            bar.close()
        rows = [r for r in self.store if r.get("kind") == "passthrough"
                and (r["start"], r["length"]) in set(self.windows("passthrough"))]
        nll = sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows)
        return {"ppl": math.exp(nll), "tokens": sum(r["tokens"] for r in rows),
                "windows": len(rows), "seconds": sum(r["seconds"] for r in rows)}

    # -- perplexity ----------------------------------------------------------------------
    def _ppl_pid(self, v: Variant, start: int, length: int) -> str:
        return point_id(kind="ppl", model=self.model_id, text=self.text_digest, start=start,
                        length=length, calibration=self.cfg["calibration"], **v.key,
                        **self.key_extra)

    def perplexity(self) -> dict[str, list[dict]]:
        wins = self.windows("evaluation")
        todo = [(v, s, n) for v in self.variants for s, n in wins
                if self._ppl_pid(v, s, n) not in self.store]
        bar = self._bar(len(todo), "perplexity")
        current = None
        for v, start, length in todo:
            if current is not v:
                be = self.backend(v)
                self.use(be, v.id)
                current = v
            be.clear()
            t0 = time.perf_counter()
            s, n = self.nll(start, length)
            self.store.add(self._ppl_pid(v, start, length), {
                "kind": "ppl", "variant": v.id, "start": start, "length": length, "nll": s,
                "tokens": n, "seconds": time.perf_counter() - t0})
            bar.update(1)
            bar.set_postfix_str(f"{v.id} ppl {math.exp(s / n):.2f}")
        bar.close()
        return {v.id: [self.store.get(self._ppl_pid(v, s, n)) for s, n in wins]
                for v in self.variants}

    # -- needle --------------------------------------------------------------------------
    def _needle_prompt(self, length: int, trial: int) -> tuple[np.ndarray, int, str]:
        """Token ids of one trial (prompt + answer), the number of answer (digit) tokens, the key."""
        nd = self.cfg["needle"]
        rng = np.random.default_rng([length, trial, 7])
        digits = nd["digits"]
        key = str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))
        depth = 0.1 + 0.8 * (trial + 0.5) / max(1, nd["trials"])
        enc = lambda s: np.asarray(self.tok(s, add_special_tokens=False)["input_ids"], np.int64)
        needle = enc(f" The secret passkey is {key}. Remember the secret passkey {key}.\n")
        question = enc(f"\nWhat is the secret passkey? The secret passkey is")
        answer = enc(f" {key}")
        lead = self.tok.decode(answer[:1].tolist())
        if not lead.strip():  # a lone space token: part of the prompt, only digits are scored
            question, answer = np.concatenate([question, answer[:1]]), answer[1:]
        n_fill = length - len(needle) - len(question) - len(answer)
        if n_fill < 16:
            raise ValueError(f"--config: needle length {length} is too short for the prompt")
        filler = self.ids[nd["offset"]:nd["offset"] + n_fill]
        at = int(depth * n_fill)
        seq = np.concatenate([filler[:at], needle, filler[at:], question, answer])
        return seq, len(answer), key

    def needle(self) -> list[dict]:
        import torch

        from qsattn.hf import cache_keyword, output_cache

        from ref.hf_attention import SimAttention

        nd = self.cfg["needle"]
        vids = ["ref_exact" if "ref_exact" in self.by_id else None] + list(nd.get("variants", []))
        vids = [v for v in dict.fromkeys(vids) if v]
        pts = [(L, t) for L in nd["lengths"] for t in range(nd["trials"])]
        todo = {(L, t): [v for v in vids if self._needle_pid(self.by_id[v], L, t) not in self.store]
                for L, t in pts}
        bar = self._bar(sum(len(x) for x in todo.values()), "needle")
        tail = nd["decode_tail"]
        for (L, t), vs in todo.items():
            if not vs:
                continue
            seq, n_ans, key = self._needle_prompt(L, t)
            x = torch.from_numpy(seq[None])
            split = len(seq) - n_ans - tail  # prefill [0, split) densely, decode the rest
            self.use(SimAttention(reference="fp32"), "needle_prefill")
            t0 = time.perf_counter()
            pre = self.model(x[:, :split], use_cache=True)
            prefill_s = time.perf_counter() - t0
            cache = output_cache(pre)
            for vid in vs:
                v = self.by_id[vid]
                self.use(self.backend(v), vid)
                t0 = time.perf_counter()
                out = self.model(x[:, split:-1], use_cache=True,
                                 **{cache_keyword(self.model): cache})
                cache.crop(-(len(seq) - 1 - split))  # drop the decoded tokens again
                pred = out.logits[0].argmax(-1).numpy()
                target = seq[split + 1:]
                ok = bool((pred[-n_ans:] == target[-n_ans:]).all())
                got = self.tok.decode(pred[-n_ans:].tolist()).strip()
                self.store.add(self._needle_pid(v, L, t), {
                    "kind": "needle", "variant": vid, "length": L, "trial": t, "correct": ok,
                    "key": key, "predicted": got, "prefill_seconds": prefill_s,
                    "seconds": time.perf_counter() - t0})
                bar.update(1)
        bar.close()
        return [self.store.get(self._needle_pid(self.by_id[v], L, t)) for v in vids for L, t in pts]

    def _needle_pid(self, v: Variant, L: int, t: int) -> str:
        nd = self.cfg["needle"]
        return point_id(kind="needle", model=self.model_id, text=self.text_digest, length=L,
                        trial=t, trials=nd["trials"], offset=nd["offset"], digits=nd["digits"],
                        tail=nd["decode_tail"], prompt=2, calibration=self.cfg["calibration"], **v.key,
                        **self.key_extra)

    # -- per-layer error -----------------------------------------------------------------
    def captured_window(self, window: int, layers) -> dict[int, dict[str, np.ndarray]]:
        from ref.hf_attention import SimAttention

        start = self.cfg["evaluation"]["offset"]
        be = SimAttention(reference="exact", capture_layers=layers)
        self.use(be, "capture")
        self.nll(start, window)
        return be.captured

    def layer_error(self) -> tuple[dict[str, np.ndarray], list[int]]:
        """Relative Frobenius error per (layer, head) of each spec variant vs float64."""
        import ref as refmod

        le = self.cfg["layer_error"]
        layers = list(range(self.n_layers)) if le["layers"] == "all" else list(le["layers"])
        specs = [v for v in self.variants if v.spec is not None] + \
            [v for v in self.variants if v.reference == "fp16"]
        pid = lambda v: point_id(kind="layer_error", model=self.model_id, text=self.text_digest,
                                 window=le["window"], layers=layers,
                                 calibration=self.cfg["calibration"], **v.key, **self.key_extra)
        todo = [v for v in specs if pid(v) not in self.store]
        if todo:
            cap = self.captured_window(le["window"], layers)
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
                                        "rel_err": errs, "seconds": time.perf_counter() - t0})
            bar.close()
        return {v.id: np.asarray(self.store.get(pid(v))["rel_err"]) for v in specs}, layers

    # -- capture file --------------------------------------------------------------------
    def capture_file(self) -> Path:
        cp = self.cfg["capture"]
        path = self.out / cp["file"]
        cap = self.captured_window(cp["window"], cp["layers"])
        arrays = {}
        for i, c in cap.items():
            for n in ("q", "k", "v"):
                arrays[f"L{i:02d}_{n}"] = c[n].astype(np.float16)
        meta = {"model": self.model_id, "layers": list(cp["layers"]),
                "tokens": [self.cfg["evaluation"]["offset"],
                           self.cfg["evaluation"]["offset"] + cp["window"]],
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
        cals = self.calibrations.get(v.needs_calibration) if v.needs_calibration else None
        total = 0.0
        for i in range(L):
            if i < v.dense_layers:
                total += fp16
                continue
            total += m.kv_bytes(v.spec, tokens=tokens, head_dim=D, kv_heads=H, mode=mode,
                                calibration=cals[i] if cals else None)
        return total


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def _ppl_table(study: Study, ppl: dict[str, list[dict]]) -> tuple[str, dict]:
    base_id = study.cfg["baseline"]
    base = ppl[base_id]
    bn = np.array([r["nll"] / r["tokens"] for r in base])
    rows = ["| variant | perplexity | delta vs " + base_id + " | delta NLL (nats/token) +- s.e. | "
            "windows | s/window |", "|---|---:|---:|---:|---:|---:|"]
    summary = {}
    base_ppl = math.exp(sum(r["nll"] for r in base) / sum(r["tokens"] for r in base))
    for v in study.variants:
        rs = ppl[v.id]
        tot = sum(r["nll"] for r in rs) / sum(r["tokens"] for r in rs)
        p = math.exp(tot)
        d = np.array([r["nll"] / r["tokens"] for r in rs]) - bn
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
        secs = float(np.mean([r["seconds"] for r in rs]))
        summary[v.id] = {"ppl": p, "delta_ppl": p - base_ppl, "delta_nll": float(d.mean()),
                         "delta_nll_se": se, "seconds_per_window": secs}
        rows.append(f"| `{v.id}` | {p:.3f} | {p - base_ppl:+.3f} ({100 * (p / base_ppl - 1):+.2f}%) "
                    f"| {d.mean():+.4f} +- {se:.4f} | {len(rs)} | {secs:.1f} |")
    return "\n".join(rows), summary


def _needle_table(rows: list[dict], lengths: list[int]) -> tuple[str, dict]:
    acc: dict[str, dict[int, list[bool]]] = {}
    for r in rows:
        acc.setdefault(r["variant"], {}).setdefault(r["length"], []).append(r["correct"])
    head = "| variant | " + " | ".join(f"{L} tokens" for L in lengths) + " |"
    out = [head, "|---|" + "---:|" * len(lengths)]
    summ = {}
    for vid, d in acc.items():
        cells = []
        for L in lengths:
            xs = d.get(L, [])
            cells.append(f"{sum(xs)}/{len(xs)}")
            summ.setdefault(vid, {})[L] = sum(xs) / len(xs) if xs else None
        out.append(f"| `{vid}` | " + " | ".join(cells) + " |")
    return "\n".join(out), summ


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
    fig.suptitle("Attention output error per layer, captured SmolLM2 activations", x=0.02,
                 ha="left")
    data = [{"variant": vid, "layer": L, "rel_err_mean_over_heads": float(e[i].mean()),
             "rel_err_worst_head": float(e[i].max()), "worst_head": int(e[i].argmax())}
            for vid, e in errs.items() for i, L in enumerate(layers)]
    ps.save(fig, path, data)


def write_tables(out: Path, summary: dict) -> list[Path]:
    """The report's tables as CSV beside it: ``perplexity.csv``, ``needle.csv`` and
    ``kv_bytes.csv`` (from ``summary``, the study's ``summary.json``)."""
    from qsattn.plotstyle import write_csv
    out = Path(out)
    ppl = [{"variant": v, **d} for v, d in summary["perplexity"].items()]
    needle = [{"variant": v, "tokens": int(L), "accuracy": a}
              for v, d in summary["needle"].items() for L, a in d.items()]
    kv = [{"variant": v, "tokens": int(T), "bytes": b}
          for v, d in summary["kv_bytes"].items() for T, b in d.items()]
    return [write_csv(out / "perplexity.csv", ppl), write_csv(out / "needle.csv", needle),
            write_csv(out / "kv_bytes.csv", kv)]


def redraw(out: Path) -> list[Path]:
    """Redraw ``per_layer_error.png`` (+ CSV) and write the tables' CSVs of a finished study in
    ``out`` from its stored results, without loading the model (``qsattn report`` does this when
    it reuses a stored run, so figures follow the current style)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    made = write_tables(out, summary)
    rows = [r for r in ResultStore(out / "results.jsonl").rows() if r.get("kind") == "layer_error"]
    keep = summary.get("layer_error_mean") or {}
    errs, layers = {}, None
    for r in rows:
        if r["variant"] in keep:
            errs[r["variant"]] = np.asarray(r["rel_err"])
            layers = r["layers"]
    if errs:
        order = [v for v in keep if v in errs]
        _layer_plot({v: errs[v] for v in order}, list(layers), out / "per_layer_error.png")
        made.append(out / "per_layer_error.png")
    return made


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
                               if kernel_supports(v.spec, kv_cache=v.kv_cache))


def run_study(cfg: dict, out: Path, *, rerun: bool = False, progress: bool = True,
              executor: str = "sim") -> dict:
    """Run every part (resuming finished points) and write ``out/README.md`` and
    ``out/summary.json``; returns the summary. ``executor="gpu"`` runs every variant that has a
    Triton prefill kernel through ``gpu.attention``; the rest stay on the simulator."""
    t_start = time.perf_counter()
    st = Study(cfg, out, rerun=rerun, progress=progress, executor=executor)
    st.calibrate()
    pt = st.passthrough()
    ppl = st.perplexity()
    needle_rows = st.needle()
    errs, layers = st.layer_error()
    cap_path = st.capture_file()
    ppl_md, ppl_sum = _ppl_table(st, ppl)
    needle_md, needle_sum = _needle_table(needle_rows, cfg["needle"]["lengths"])
    _layer_plot(errs, layers, st.out / "per_layer_error.png")
    kv_tokens = cfg["kv_bytes_tokens"]
    kv = {v.id: {int(T): st.kv_bytes(v, int(T)) for T in kv_tokens} for v in st.variants}
    fp16 = {int(T): st.kv_bytes(st.by_id[cfg["baseline"]], int(T)) for T in kv_tokens}
    kv_md = ["| variant | " + " | ".join(f"{T} tokens (MiB, x vs fp16)" for T in kv_tokens) + " |",
             "|---|" + "---:|" * len(kv_tokens)]
    for vid, d in kv.items():
        kv_md.append(f"| `{vid}` | " + " | ".join(
            f"{d[T] / 2**20:.2f} ({fp16[T] / d[T]:.2f}x)" for T in d) + " |")
    err_md = ["| variant | mean rel. error | worst layer (error) | worst head (layer, head, error) |",
              "|---|---:|---:|---:|"]
    for vid, e in errs.items():
        wl = int(np.argmax(e.mean(axis=1)))
        li, hi = np.unravel_index(int(np.argmax(e)), e.shape)
        err_md.append(f"| `{vid}` | {e.mean():.2e} | {layers[wl]} ({e[wl].mean():.2e}) | "
                      f"({layers[li]}, {hi}, {e[li, hi]:.2e}) |")
    ev, ca = cfg["evaluation"], cfg["calibration"]
    quick = " --quick" if cfg.get("_quick") else ""
    quick += "" if st.executor == "sim" else f" --executor {st.executor}"
    cmd = f"qsattn model --config {Path(cfg['_path']).relative_to(provenance.ROOT) if Path(cfg['_path']).is_relative_to(provenance.ROOT) else cfg['_path']}{quick}"
    where = ("the bit-accurate CPU simulator" if not st.kernel_variants else
             "the Triton kernels (`gpu.attention`) for " +
             ", ".join(f"`{v}`" for v in sorted(st.kernel_variants)) +
             " and the bit-accurate CPU simulator for the rest")
    total_s = time.perf_counter() - t_start
    md = [provenance.header("Accuracy inside a real model: " + st.model_id, cmd),
          f"Model: `{st.model_id}` ({st.n_layers} layers, {st.hq} query heads, {st.hkv} KV heads, "
          f"head dim {st.head_dim}), text: {len(st.ids)} tokens "
          f"({'embedded Wikipedia summaries' if not cfg.get('text') else cfg['text']}). "
          f"Every method runs through `transformers.AttentionInterface` (`qsattn_<variant>`) on "
          f"{where}. Wall time of this run (resumed points excluded): "
          f"{total_s:.0f} s.\n",
          "## Pass-through perplexity\n",
          f"transformers' own SDPA, no qsattn code: **{pt['ppl']:.3f}** over {pt['tokens']} "
          f"predicted tokens ({pt['windows']} windows of {cfg['passthrough']['window']} from token "
          f"{cfg['passthrough']['offset']}; the issue measured about 12.1 over 32K tokens in "
          f"2048-token windows).\n",
          "## Perplexity per variant\n",
          f"{ev['windows']} windows of {ev['window']} tokens from token {ev['offset']} (evaluation "
          f"slice); calibration from {ca['windows']} x {ca['window']} tokens at {ca['offset']} "
          f"(no overlap). Delta NLL is paired per window against `{cfg['baseline']}`; +- is the "
          f"standard error over windows. `ref_exact` = float64 attention, `ref_fp16` = torch fp16 "
          f"SDPA. Turbo variants read K/V from the progressive cache (`kv_cache=True`). "
          f"`dense2` = first two layers dense fp16.\n", ppl_md, "",
          "## Key-value retrieval (needle)\n",
          f"Passkey of {cfg['needle']['digits']} digits at depths spread over 10-90% of real "
          f"filler text; prompt prefilled with fp32 attention, the last "
          f"{cfg['needle']['decode_tail']} prompt tokens and the answer decoded through the "
          f"method; correct = every digit is the greedy choice. Cells: correct/trials.\n",
          needle_md, "",
          "## Per-layer error on captured activations\n",
          f"One evaluation window of {cfg['layer_error']['window']} tokens; each layer's captured "
          f"post-RoPE Q/K/V (exact forward) run standalone through each variant; relative "
          f"Frobenius error per head against float64. Figure: `per_layer_error.png`.\n",
          "\n".join(err_md), "", "![per-layer error](per_layer_error.png)\n",
          "Data: `per_layer_error.csv` (per variant and layer); the tables' numbers: "
          "`perplexity.csv`, `needle.csv`, `kv_bytes.csv`.\n",
          "## KV-cache bytes\n",
          "All layers, batch 1: K and V plus every side structure (scales, zero points, label "
          "cache, INT8 buffer).\n", "\n".join(kv_md), "",
          "## Captured Q/K/V\n",
          f"`{cap_path.name}` ({cap_path.stat().st_size / 2**20:.1f} MiB): layers "
          f"{cfg['capture']['layers']}, {cfg['capture']['window']} tokens from token {ev['offset']},"
          f" fp16, keys `L<layer>_q|k|v`, `meta` (JSON) — inputs for kernel validation runs.\n"]
    if getattr(st, "calibration_dir", None):
        md.append(f"Calibration files: `{st.calibration_dir}`.\n")
    text = "\n".join(md)
    (st.out / "README.md").write_text(text)
    summary = {"quick": bool(cfg.get("_quick")), "complete": True, "executor": st.executor,
               "kernel_variants": sorted(st.kernel_variants), "passthrough": pt,
               "perplexity": ppl_sum, "needle": {k: {str(L): a for L, a in d.items()}
                                                 for k, d in needle_sum.items()},
               "kv_bytes": {k: {str(T): b for T, b in d.items()} for k, d in kv.items()},
               "layer_error_mean": {k: float(e.mean()) for k, e in errs.items()},
               "capture": cap_path.name, "seconds": total_s, "config": cfg["_path"],
               "load_seconds": st.load_s}
    (st.out / "summary.json").write_text(dumps(summary, indent=1))   # strict: null, never NaN
    write_tables(st.out, summary)
    return summary


# --------------------------------------------------------------------------------------------
# CLI and report
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="experiment YAML (default: configs/experiments/model_smollm2.yaml)")
    p.add_argument("--quick", action="store_true", help="small smoke run (~3 minutes)")
    p.add_argument("--rerun", action="store_true", help="recompute finished points")
    from qsattn import cliopts
    cliopts.add_common(p, out_help="output directory (default: reports/model, reports/model/"
                                   "quick with --quick)")
    p.add_argument("--allow-large", action="store_true",
                   help="run a config larger than the work bound (hours of CPU)")
    p.add_argument("--executor", choices=EXECUTORS, default="sim",
                   help="sim: bit-accurate CPU simulator (default); gpu: the Triton kernels for "
                        "methods that have one (CUDA, or TRITON_INTERPRET=1), simulator for the rest")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, quick=args.quick, allow_large=args.allow_large)
    sub = "gpu" if args.executor == "gpu" else ""
    out = args.out or (provenance.REPORTS / "model" / sub / ("quick" if args.quick else ""))
    s = run_study(cfg, Path(out), rerun=args.rerun, progress=not args.no_progress,
                  executor=args.executor)
    import sys

    from qsattn import cliopts
    rows = [{"variant": v, **d} for v, d in s["perplexity"].items()]
    md = (f"pass-through perplexity {s['passthrough']['ppl']:.3f}\n\n"
          + cliopts.render(rows, "md"))
    cliopts.emit(cliopts.render(rows, args.format, markdown=md))
    print(f"wrote {Path(out) / 'README.md'}", file=sys.stderr)
    return 0


def _stored_summary(path: Path) -> dict:
    """A stored ``summary.json`` with the fields :func:`report_section` reads; ValueError naming
    the file when it is not one (a damaged file is reported, never a traceback)."""
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun `qsattn model` to rewrite "
                         f"it") from None
    need = {"quick": bool, "passthrough": dict, "perplexity": dict, "kv_bytes": dict,
            "needle": dict}
    bad = [k for k, t in need.items() if not isinstance(s, dict) or not isinstance(s.get(k), t)]
    if bad:
        raise ValueError(f"{path}: not a model summary (fields {bad} missing or of the wrong "
                         f"type); rerun `qsattn model` to rewrite it")
    return s


def report_section(ctx) -> str:
    """Reuses a finished default run under ``<out>/model`` when there is one; otherwise runs
    the ``--quick`` study into ``<out>/model/quick`` (resumable, ~3 minutes)."""
    full = Path(ctx.out) / "model"
    summ = full / "summary.json"
    if not ctx.quick and summ.is_file() and not ctx.rerun:
        s = _stored_summary(summ)
        where = full
        redraw(full)    # figure and table CSVs in the current style, from the stored results
    else:
        cfg = load_config(DEFAULT_CONFIG, quick=True)
        where = full / "quick"
        s = strict_json(run_study(cfg, where, rerun=ctx.rerun,
                                  progress=getattr(ctx, "progress", True)))
    rows = sorted(s["perplexity"].items(), key=lambda kv: kv[1]["ppl"])
    reused = where == full
    lines = [("Reused from the stored default run (" if reused else "Computed or resumed in this "
              "run (") + f"{'quick' if s['quick'] else 'default'} study); details in "
             f"[`{where.relative_to(ctx.out)}/README.md`]({where.relative_to(ctx.out)}/README.md).\n",
             f"Pass-through perplexity (transformers SDPA): **{s['passthrough']['ppl']:.3f}** over "
             f"{s['passthrough']['tokens']} tokens.\n",
             "| variant | perplexity | delta NLL +- s.e. | KV bytes vs fp16 | needle accuracy |",
             "|---|---:|---:|---:|---:|"]
    base_kv = None
    for vid, r in rows:
        kvb = s["kv_bytes"].get(vid, {})
        T = max(kvb, key=int) if kvb else None
        if base_kv is None:
            ref_kv = s["kv_bytes"].get("ref_exact") or next(iter(s["kv_bytes"].values()))
            base_kv = ref_kv
        ratio = f"{base_kv[T] / kvb[T]:.2f}x @ {T}" if T else "-"
        nd = s["needle"].get(vid)
        acc = ", ".join(f"{L}: {a:.0%}" for L, a in nd.items() if a is not None) if nd else "-"
        se = r.get("delta_nll_se")
        lines.append(f"| `{vid}` | {r['ppl']:.3f} | {r['delta_nll']:+.4f} +- "
                     f"{'n/a' if se is None else format(se, '.4f')} | {ratio} | {acc} |")
    return "\n".join(lines) + "\n"
