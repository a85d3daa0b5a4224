"""Method specs: the one frozen description of a method that every executor consumes.

A spec is loaded from ``configs/methods/<name>.yaml`` (or any path) by :func:`load_method` and
is the single source of every numeric choice: the simulator (``sim.simulate``), the cost model
(``sim.cost.predict``) and the Triton kernels (``gpu``) read the same object, so a choice made
here (a rounding mode, a tile, a scale dtype) cannot drift between them.

Every spec has ``tiling`` and ``softmax``; which of the optional sections (``operands``, ``q``,
``k``, ``v``, ``p``, ``kvcache``, ``sparse``) it must have, and which ``softmax.exp`` values it may
use, is declared by its method's simulator module (``sim.methods.<method>.METHOD``), found through
the registry ``sim.methods.SIMULATORS``: ``qsattn specs`` prints the table.

Example::

    >>> from sim import load_method
    >>> spec = load_method("int8_flash", p__rounding="half_even", p__arithmetic="fp32")
    >>> spec.p.rounding
    'half_even'
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import schema
from .methods import SECTIONS, SIMULATORS
from .schema import ConfigError, meta

RoundingName = Literal["half_even", "half_away", "half_up", "floor", "toward_zero"]
FloatName = Literal["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]
ScaleDtype = Literal["fp16", "fp32"]


def config_dir() -> Path:
    """Root of the shipped configs: ``$QSATTN_CONFIG_DIR`` if set; else ``configs/`` beside the
    packages in a source checkout, or ``sim/configs/`` inside an installed wheel (pyproject maps
    the repository's ``configs/`` there)."""
    env = os.environ.get("QSATTN_CONFIG_DIR")
    if env:
        return Path(env)
    return _shipped_config_dir()


@functools.lru_cache(maxsize=1)
def _shipped_config_dir() -> Path:
    # resolved once per process: predictions look configs up at >= 10k calls per second
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs", here / "configs"):
        if (cand / "methods").is_dir():
            return cand
    raise FileNotFoundError(f"configs: no configs/methods folder beside {here} or inside it "
                            f"(set QSATTN_CONFIG_DIR to the folder holding methods/, hardware/)")


@dataclass(frozen=True)
class Tiling:
    """FlashAttention tile: a CTA owns ``block_m`` query rows and walks K/V ``block_n`` at a time."""

    block_m: int = field(metadata=meta("query rows per tile", min=1, max=256))
    block_n: int = field(metadata=meta("key/value rows per tile", min=1, max=256))

    def __post_init__(self):
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"tiling.{name} must be a power of two (Triton tiles are), got {v}")


@dataclass(frozen=True)
class FloatOperands:
    """Q/K/V held in a float format (fp16_flash, fp8_flash, double_sparse)."""

    format: FloatName = field(metadata=meta("format of Q, K and V as fed to the QK^T and PV dots"))
    scale: Literal["none", "per_tensor"] = field(
        metadata=meta("none: cast directly; per_tensor: x / (absmax / max_normal) before the cast"))
    scale_dtype: ScaleDtype = field(default="fp32", metadata=meta("dtype the scale is stored in"))
    p_format: FloatName | Literal["input"] = field(
        default="input", metadata=meta("format P is cast to before PV ('input': same as format)"))

    def __post_init__(self):
        if self.format.startswith("fp8") and self.scale == "none":
            raise ValueError("operands.scale must be 'per_tensor' for fp8 formats "
                             f"(format {self.format!r} would overflow/underflow unscaled)")

    @property
    def p(self) -> str:
        return self.format if self.p_format == "input" else self.p_format


Granularity = Literal["per_tensor", "per_head", "per_token", "per_block", "per_channel",
                      "per_channel_block"]


@dataclass(frozen=True)
class OperandQuant:
    """Integer quantization of one attention operand (Q, K or V).

    Granularities, on a [B, H, L, D] tensor (as ``sim.numerics.quantize`` block shapes):
    per_tensor (None, None, None, None); per_head (1, 1, None, None); per_token (1, 1, 1, None);
    per_block (1, 1, T, None) with T = ``block_tokens`` or the kernel tile; per_channel
    (1, 1, None, 1); per_channel_block (1, 1, T, 1).
    """

    bits: int = field(metadata=meta("code width", min=2, max=8))
    granularity: Granularity = field(metadata=meta("what one scale covers"))
    rounding: RoundingName = field(metadata=meta("float -> int rounding mode"))
    scale_dtype: ScaleDtype = field(metadata=meta("dtype the scale is stored (and rounded) in"))
    symmetric: bool = field(default=True, metadata=meta("absmax (True) or min/max with zero point"))
    block_tokens: int | None = field(
        default=None, metadata=meta("tokens per scale for per_block granularities (None: the tile)",
                                    min=1))
    arithmetic: Literal["fp32", "fp16"] = field(default="fp32", metadata=meta(
        "working precision of the quantizer: fp32 (the input rounded to f32, f32 division); fp16 "
        "(the input rounded to fp16, absmax / levels and x / scale each one fp16 operation: the "
        "INT-FlashAttention authors' torch quantizer on fp16 tensors)"))

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"bits must be one of (2, 3, 4, 8), got {self.bits}")
        if self.block_tokens is not None and self.granularity not in ("per_block",
                                                                      "per_channel_block"):
            raise ValueError(f"block_tokens only applies to per_block granularities, "
                             f"not {self.granularity!r}")

    def block(self, tile: int) -> tuple[int | None, ...]:
        """The ``quantize`` block shape on a [B, H, L, D] tensor; ``tile`` is the kernel's
        token tile along L (block_m for Q, block_n for K/V)."""
        t = self.block_tokens or tile
        return {
            "per_tensor": (None, None, None, None),
            "per_head": (1, 1, None, None),
            "per_token": (1, 1, 1, None),
            "per_block": (1, 1, t, None),
            "per_channel": (1, 1, None, 1),
            "per_channel_block": (1, 1, t, 1),
        }[self.granularity]


@dataclass(frozen=True)
class PQuant:
    """Quantization of the softmax numerator P (values in [0, 1]) before the PV product.

    code = round(p * levels) computed in ``arithmetic`` precision; the dequantization scale is
    the fixed 1 / levels (INT-FlashAttention: levels = 127)."""

    bits: int = field(metadata=meta("code width of P", min=8, max=8))
    levels: int = field(metadata=meta("P code of p = 1; dequant scale is 1/levels", min=1, max=255))
    arithmetic: Literal["fp16", "fp32", "fp32_fma"] = field(metadata=meta(
        "precision of p * levels (+ 0.5); fp32_fma: the exact product rounded once to the "
        "integer grid (one FMA with 1.5 * 2^23), rounding half_even only"))
    rounding: RoundingName = field(metadata=meta("rounding of p * levels"))
    saturate: bool = field(metadata=meta("clamp codes to [0, levels] before the int8 cast"))
    rowsum: Literal["unquantized", "quantized"] = field(
        metadata=meta("the softmax denominator sums the fp32 P (unquantized) or codes / levels"))

    def __post_init__(self):
        if self.arithmetic == "fp32_fma" and self.rounding != "half_even":
            raise ValueError(f"p.rounding: arithmetic fp32_fma rounds half_even (the FMA onto "
                             f"1.5 * 2^23), got {self.rounding!r}")


@dataclass(frozen=True)
class SAS:
    """TurboAttention's Sparsity-Aware Softmax: 2^x for x <= 0 as LUT(int part) x poly(fraction).

    With n = floor(-x) and f = -x - n in [0, 1): 2^x = 2^-n * 2^-f; 2^-n comes from a table of
    ``lut_entries`` fp16 values, 2^-f from ``coefficients`` (c0 + c1 f + ... , Horner, fp16 FMA).
    x < ``threshold`` gives exactly 0."""

    degree: int = field(metadata=meta("polynomial degree", min=1, max=6))
    coefficients: tuple[float, ...] = field(metadata=meta("c0..c_degree, fp16-representable"))
    max_rel_error: float = field(
        metadata=meta("max |poly(f) / 2^-f - 1| on [0, 1), evaluated as the kernel does", min=0))
    fit: str = field(metadata=meta("how the coefficients were obtained (command)"))
    lut_entries: int = field(metadata=meta("LUT holds 2^-n for n = 0 .. lut_entries-1", min=1,
                                           max=32))
    threshold: float = field(metadata=meta("x below this (log2 domain) gives p = 0", max=0))
    arithmetic: Literal["fp16", "fp32"] = field(default="fp16",
                                                metadata=meta("precision of the Horner FMAs"))

    def __post_init__(self):
        if len(self.coefficients) != self.degree + 1:
            raise ValueError(f"sas.coefficients must have degree + 1 = {self.degree + 1} entries, "
                             f"got {len(self.coefficients)}")
        if -self.threshold > self.lut_entries:
            raise ValueError(f"sas.threshold {self.threshold} needs {math.ceil(-self.threshold)} "
                             f"LUT entries, lut_entries is {self.lut_entries}")


@dataclass(frozen=True)
class Arithmetic:
    """How the integer path combines its f32 values (docs/numerics.md "int8_flash"). The
    defaults are INT-FlashAttention's unfused sequence; the others are named fast variants that
    fuse operations (one rounding instead of two), implemented by the simulator and the sm_90
    kernels alike.

    ``scores: fma``: ``t = f32(S_int) * k_scale`` (one rounding), ``m_new = max(m, qf *
    rowmax(t))`` (one rounding; rounding is monotone and qf > 0, so this is the max of the
    products), ``x = fma(t, qf, -m_new)`` (one rounding). exp2 only.
    ``v_scale: deferred`` (per-head V scales): ``acc = fma(acc, alpha, f32(O_int))``, the V
    scale applied once at the end: ``out = f32(acc * vf) / l``."""

    scores: Literal["separate", "fma"] = field(
        default="separate", metadata=meta("s = (f32(S_int) * qf) * k_scale, then s - m_new; or "
                                          "the fused sequence above"))
    v_scale: Literal["per_tile", "deferred"] = field(
        default="per_tile", metadata=meta("acc = acc * alpha + f32(O_int) * vf per tile; or "
                                          "deferred to the end (per-head V scales)"))

    @property
    def fused(self) -> bool:
        return self.scores != "separate" or self.v_scale != "per_tile"


@dataclass(frozen=True)
class Softmax:
    exp: Literal["exp2", "sas"] = field(metadata=meta("exp2 (hardware MUFU.EX2) or SAS"))
    sas: SAS | None = None

    def __post_init__(self):
        if self.exp == "sas" and self.sas is None:
            raise ValueError("softmax.exp is 'sas' but the softmax.sas section is missing")


KVGroups = Literal["per_channel", "per_token"]


@dataclass(frozen=True)
class KVCache:
    """FlashQ progressive KV cache (TurboAttention): INT8 buffer + INT4/INT2 per-head storage.

    Each flushed INT8 block of ``buffer_tokens`` tokens is re-quantized with one integer scale
    and zero point per group. ``k_groups`` / ``v_groups`` name what one scale/zero belongs to,
    and ``k_group_size`` / ``v_group_size`` how many elements it covers *along the other axis*:

    - ``per_channel``: one scale/zero per channel over ``group_size`` consecutive tokens of a
      flushed block (``group_size`` divides ``buffer_tokens``);
    - ``per_token``: one scale/zero per token over ``group_size`` consecutive channels.

    The default (configs/methods/turbo.yaml) is KIVI's choice (Liu et al., KIVI, ICML 2024):
    K per channel (K's outliers are whole channels), V per token. The opposite layout (K per
    token over 32 channels, V per channel over 64 tokens) is ``configs/methods/turbo_token_k.yaml``.
    """

    buffer_tokens: int = field(metadata=meta("newest tokens kept INT8 (nb)", min=1))
    high_bits: int = field(metadata=meta("bits for high-priority heads", min=2, max=8))
    low_bits: int = field(metadata=meta("bits for low-priority heads", min=2, max=8))
    low_share: float = field(metadata=meta("share of heads given low_bits", min=0, max=1))
    priority: Literal["range_std"] = field(
        metadata=meta("head ranking metric: (max - min) * std of the head's K and V entries"))
    k_groups: KVGroups = field(metadata=meta(
        "K requant groups: per_channel (one scale/zero per channel over k_group_size tokens) "
        "or per_token (one per token over k_group_size channels)"))
    k_group_size: int = field(metadata=meta("K requant group length along the other axis "
                                            "(tokens for per_channel, channels for per_token)",
                                            min=1))
    v_groups: KVGroups = field(metadata=meta(
        "V requant groups: per_token (one scale/zero per token over v_group_size channels) "
        "or per_channel (one per channel over v_group_size tokens)"))
    v_group_size: int = field(metadata=meta("V requant group length along the other axis "
                                            "(channels for per_token, tokens for per_channel)",
                                            min=1))
    scale_bits: int = field(default=8, metadata=meta("storage of one integer scale", min=1))
    zero_bits: int = field(default=8, metadata=meta("storage of one integer zero point", min=1))

    def __post_init__(self):
        for name in ("high_bits", "low_bits"):
            if getattr(self, name) not in (2, 4, 8):
                raise ValueError(f"kvcache.{name} must be 2, 4 or 8, got {getattr(self, name)}")
        for name in ("k", "v"):
            groups, size = getattr(self, f"{name}_groups"), getattr(self, f"{name}_group_size")
            if groups == "per_channel" and self.buffer_tokens % size:
                raise ValueError(f"kvcache.{name}_group_size: per_channel groups run along the "
                                 f"tokens of a flushed block, so the size must divide "
                                 f"buffer_tokens ({self.buffer_tokens}), got {size}")


@dataclass(frozen=True)
class Sparse:
    """Double Sparsity: label-channel scores select the top-k tokens per query row."""

    channel_metric: Literal["q", "k", "qk"] = field(
        metadata=meta("rank channels by mean |q|, mean |k| or mean |q * k|"))
    label_fraction: float = field(metadata=meta("r = round(D * label_fraction) label channels",
                                                min=0, max=1))
    label_bits: int = field(metadata=meta("label cache: asymmetric int bits per token, or 16 = fp16",
                                          min=2, max=16))
    token_fraction: float = field(metadata=meta("token budget k = ceil(Lk * token_fraction)",
                                                min=0, max=1))
    min_tokens: int = field(default=1, metadata=meta("k is at least this", min=1))
    label_channels: int | None = field(default=None, metadata=meta("explicit r (overrides fraction)",
                                                                   min=1))
    token_budget: int | None = field(default=None, metadata=meta("explicit k (overrides fraction)",
                                                                 min=1))
    sink_tokens: int = field(default=0, metadata=meta("first tokens always kept", min=0))
    recent_tokens: int = field(default=0, metadata=meta("last tokens always kept", min=0))
    selection: Literal["labels", "exact", "recent"] = field(default="labels", metadata=meta(
        "what ranks the keys: labels (Double Sparsity's approximate scores), exact (fp16 q.k "
        "scores in f32: the oracle top-k the labels approximate) or recent (position: with "
        "sink_tokens this is StreamingLLM's sink + recent window at the same budget)"))
    label_scope: Literal["kv_head", "q_head"] = field(default="kv_head", metadata=meta(
        "label channels per KV head (statistics summed over its query heads) or per query "
        "head (G label caches per KV head)"))
    q_label_bits: int = field(default=16, metadata=meta(
        "query labels: 16 = fp16, else asymmetric per-row int bits", min=2, max=16))
    short_rows: Literal["error", "dense"] = field(default="error", metadata=meta(
        "an explicit token_budget above the keys: error, or dense (rows that see at most k "
        "keys attend to all of them, the Double Sparsity code's rule)"))

    def __post_init__(self):
        if self.q_label_bits not in (2, 4, 8, 16):
            raise ValueError(f"sparse.q_label_bits must be 2, 4, 8 or 16 (fp16), got "
                             f"{self.q_label_bits}")
        if self.label_bits not in (2, 4, 8, 16):
            raise ValueError(f"sparse.label_bits must be 2, 4, 8 or 16 (fp16), got {self.label_bits}")
        if self.label_fraction == 0 and self.label_channels is None:
            raise ValueError("sparse.label_fraction is 0 and no label_channels is given")
        if self.token_fraction == 0 and self.token_budget is None:
            raise ValueError("sparse.token_fraction is 0 and no token_budget is given")

    def r(self, head_dim: int) -> int:
        """Label channels for head dim D (ValueError when r > D)."""
        r = self.label_channels or max(1, round(head_dim * self.label_fraction))
        if r > head_dim:
            raise ValueError(f"sparse.label_channels: r = {r} exceeds head dim D = {head_dim}")
        return r

    def k(self, kv_len: int) -> int:
        """Token budget for kv_len keys (ValueError when it exceeds kv_len)."""
        k = self.token_budget or max(self.min_tokens, math.ceil(kv_len * self.token_fraction))
        if self.token_budget is not None and k > kv_len and self.short_rows == "error":
            raise ValueError(f"sparse.token_budget: k = {k} exceeds the {kv_len} keys")
        return min(k, kv_len)


@dataclass(frozen=True)
class MethodSpec:
    """A validated method description. Build with :func:`load_method`."""

    name: str = field(metadata=meta("spec name (the file stem unless given)"))
    method: str = field(metadata=meta("which algorithm executes the spec (a registered method)"))
    description: str = field(metadata=meta("one line"))
    source: str = field(metadata=meta("paper / code the choices follow"))
    tiling: Tiling = field(metadata=meta("kernel tile"))
    softmax: Softmax = field(metadata=meta("exponential used by the online softmax"))
    arith: Arithmetic = field(default_factory=Arithmetic,
                              metadata=meta("fused-arithmetic variants of the integer path"))
    operands: FloatOperands | None = None
    q: OperandQuant | None = None
    k: OperandQuant | None = None
    v: OperandQuant | None = None
    p: PQuant | None = None
    kvcache: KVCache | None = None
    sparse: Sparse | None = None

    def __post_init__(self):
        if self.method not in SIMULATORS:
            raise ConfigError("", "method", f"one of {list(SIMULATORS.names())}", self.method)
        m = SIMULATORS.get(self.method)
        for sec in SECTIONS:
            present = getattr(self, sec) is not None
            if sec in m.sections and not present:
                raise ValueError(f"method {self.method!r} needs a '{sec}' section")
            if sec not in m.sections and present:
                raise ValueError(f"method {self.method!r} does not use a '{sec}' section")
        if self.softmax.exp not in m.exps:
            raise ValueError(f"softmax.exp: method {self.method!r} implements {list(m.exps)}, "
                             f"got {self.softmax.exp!r}")
        if self.arith.fused and self.q is None:
            raise ValueError(f"arith: the fused variants apply to integer operands (q, k, v, p "
                             f"sections); method {self.method!r} has none")
        if self.arith.scores == "fma" and self.softmax.exp != "exp2":
            raise ValueError(f"arith.scores: 'fma' is defined with exp2 (x may round above 0, "
                             f"outside SAS's domain), got softmax.exp {self.softmax.exp!r}")
        if self.arith.v_scale == "deferred" and self.v.granularity not in ("per_head",
                                                                          "per_tensor"):
            raise ValueError(f"arith.v_scale: 'deferred' needs one V scale per head "
                             f"(v.granularity per_head or per_tensor), got {self.v.granularity!r}")
        if m.check_spec is not None:
            m.check_spec(self)

    # -- derived -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @functools.cached_property
    def digest(self) -> str:
        """Short content hash: equal specs (whatever their name) share it; used as a cache key
        (computed once per spec object). Fields at their default are left out, so adding a
        field with a default to the schema changes no digest."""
        d = schema.to_dict(self, drop_defaults=True)
        d.pop("name"), d.pop("description")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def replace(self, **overrides) -> "MethodSpec":
        """A new validated spec with ``overrides`` (dotted or ``__`` keys, or nested dicts)."""
        where = f"spec {self.name!r} + overrides"
        return _build(_merge(self.to_dict(), overrides, where), where)

    @property
    def integer(self) -> bool:
        """True when QK^T and PV run as integer GEMMs."""
        return self.q is not None


_SHIPPED: dict = {}


def _resolve(name_or_path: str | os.PathLike) -> Path:
    if isinstance(name_or_path, str):
        hit = _SHIPPED.get((name_or_path, os.environ.get("QSATTN_CONFIG_DIR")))
        if hit is not None:
            return hit
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = config_dir() / "methods" / f"{name_or_path}.yaml"
    if cand.exists():
        # a shipped name: remembered (the file's content is still checked by its stat)
        _SHIPPED[(str(name_or_path), os.environ.get("QSATTN_CONFIG_DIR"))] = cand
    else:
        known = sorted(x.stem for x in (config_dir() / "methods").glob("*.yaml"))
        raise ValueError(f"method: expected one of {known} or a path to a YAML spec, "
                         f"got {str(name_or_path)!r}")
    return cand


def resolve_spec(spec: "MethodSpec | str | os.PathLike", method: str | None = None, *,
                 arg: str = "spec") -> MethodSpec:
    """The one spec resolver of every executor: ``spec`` as a MethodSpec, a shipped spec name or
    a YAML path, loaded once per distinct name (:func:`load_method` caches by file content).
    ``method``: the method the caller runs (a spec of another method is refused). ``arg`` names
    the argument in error messages."""
    if isinstance(spec, MethodSpec):
        s = spec
    elif isinstance(spec, (str, os.PathLike)):
        try:
            s = load_method(spec)
        except ConfigError:
            raise
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
    else:
        raise TypeError(f"{arg}: expected a MethodSpec, a spec name or a YAML path, got "
                        f"{type(spec).__name__}")
    if method is not None and s.method != method:
        raise ValueError(f"{arg}: method {method!r} was asked for, but spec {s.name!r} describes "
                         f"{s.method!r}")
    return s


def _merge(data: dict, overrides: dict, where: str) -> dict:
    """``schema.merge`` with its errors located in ``where`` (the spec the overrides apply to)."""
    try:
        return schema.merge(data, overrides)
    except ConfigError as e:
        raise ConfigError(where, e.field, e.expected, e.got, detail=e.detail) from None


def _build(data: dict, where: str) -> MethodSpec:
    """``schema.build`` of a MethodSpec, after refusing sections the method does not read (an
    override ``p.levels`` on fp16_flash names the section ``p``, not a missing ``p.bits``)."""
    method = data.get("method")
    if isinstance(method, str) and method in SIMULATORS:
        used = SIMULATORS.get(method).sections
        for sec in SECTIONS:
            if data.get(sec) is not None and sec not in used:
                raise ConfigError(where, sec, f"no '{sec}' section: method {method!r} reads "
                                  f"{sorted(used)} besides tiling and softmax", data[sec])
    return schema.build(MethodSpec, data, where=where)


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, size: int) -> MethodSpec:
    p = Path(path)
    data = schema.load_yaml(p)
    data.setdefault("name", p.stem)
    return _build(data, str(p))


def load_method(name_or_path: "str | os.PathLike | MethodSpec", **overrides) -> MethodSpec:
    """Load and validate a method spec.

    ``name_or_path``: a shipped method name (``configs/methods/<name>.yaml``), a YAML path, or a
    spec (then only the overrides apply). ``overrides``: field paths with ``__`` or ``.``
    separators (``p__rounding="half_even"``) or nested mappings (``p={"rounding": ...}``).
    Errors name the file, the dotted field, the expectation and the value found."""
    if isinstance(name_or_path, MethodSpec):
        return name_or_path.replace(**overrides) if overrides else name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a method name, path or MethodSpec, "
                        f"got {type(name_or_path).__name__}")
    path = _resolve(name_or_path)
    if not overrides:  # specs are frozen: one object per file version, no YAML parsing per call
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(str(path), "", "an existing YAML file", "no such file") from None
        return _load_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)
    data = schema.load_yaml(path)
    data.setdefault("name", path.stem)
    where = f"{path} + overrides"
    return _build(_merge(data, overrides, where), where)


def available_methods() -> list[str]:
    """Names of the shipped method specs."""
    return sorted(p.stem for p in (config_dir() / "methods").glob("*.yaml"))


__all__ = ["MethodSpec", "Tiling", "FloatOperands", "OperandQuant", "PQuant", "SAS", "Softmax",
           "Arithmetic",
           "KVCache", "KVGroups", "Sparse", "ConfigError", "load_method", "resolve_spec",
           "available_methods",
           "config_dir"]
