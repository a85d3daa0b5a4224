"""Swap qsattn attention into a transformers model through ``AttentionInterface``.

A study selects a method by name, nothing monkey-patched::

    backend = SimAttention(load_method("int8_flash"))
    name = register("int8_flash", backend)          # -> "qsattn_int8_fa"
    model.set_attn_implementation(name)             # every layer now calls backend

(``qsattn.hf`` is the public helper built on this: registered names for every method, caches
for ``generate()``.)

:func:`register` puts ``backend`` into ``transformers.AttentionInterface`` and transformers'
``sdpa_mask`` into ``AttentionMaskInterface`` under the same name (without the mask entry the
model would silently build no mask at all). ``sdpa_mask`` gives ``None`` where the mask is plain
causal and a boolean ``[B, 1, Lq, Lk]`` tensor otherwise; :class:`SimAttention` accepts exactly
the masks its executors can run -- none, all-visible, the bottom-right aligned causal pattern
(``j <= i + Lk - Lq``, which is also what decode with a KV cache produces), and either of those
with **left padding** (the first ``p_b`` keys of batch row ``b`` hidden from every query) --
and raises ValueError for anything else (right padding, sliding windows, per-head masks), never
dropping a mask. A left-padded batch runs one sequence at a time on its unpadded keys and the
query rows that see at least one of them (rows that see none output 0); a method's "oracle"
calibration (none given) is then computed per sequence.

The attention function receives post-RoPE ``query [B, Hq, T, D]`` and ``key``/``value``
``[B, Hkv, Lk, D]`` (torch, any float dtype, CPU), converts them exactly to float32 numpy, runs
the executor and returns ``[B, T, Hq, D]`` in the query's dtype, as transformers' own
attention functions do. Executors:

- a :class:`sim.MethodSpec`: ``sim.simulate`` (bit-accurate CPU simulator), with a per-layer
  calibration (Double Sparsity channels, Turbo head priority) and ``kv_cache`` for turbo;
- ``reference`` ``"exact"`` (float64 :func:`ref.attention`), ``"fp32"`` or ``"fp16"``
  (:func:`ref.sdpa` in that precision).

``dense_layers=n`` runs layers ``0..n-1`` with the ``dense_reference`` instead of the spec
(Double Sparsity keeps its first layers dense). ``capture_layers`` keeps a float32 copy of the
q/k/v each chosen layer received (for calibration and per-layer error studies).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

import ref
from sim.checks import last_visible_key

__all__ = ["SimAttention", "register", "registered_name", "REFERENCES", "check_head_dim"]

REFERENCES = ("exact", "fp32", "fp16")
PREFIX = "qsattn_"


def registered_name(name: str) -> str:
    """``"qsattn_<name>"``, the ``attn_implementation`` string, in a form transformers' public
    setters accept: transformers treats every name containing ``"flash"`` as a FlashAttention
    request (and ``"sdpa"``, ``"flex_attention"`` as its own backends), so ``"flash"`` is written
    ``"fa"`` (``int8_flash`` -> ``qsattn_int8_fa``) and the other two are refused.

    >>> registered_name("int8_flash"), registered_name("qsattn_turbo")
    ('qsattn_int8_fa', 'qsattn_turbo')
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"name: expected a non-empty identifier-like str, got {name!r}")
    full = (name if name.startswith(PREFIX) else PREFIX + name).replace("flash", "fa")
    for reserved in ("sdpa", "flex_attention", "paged"):
        if reserved in full:
            raise ValueError(f"name: transformers reserves names containing {reserved!r}, "
                             f"got {name!r}")
    return full


def check_head_dim(spec: Any, head_dim: int, *, kv_cache: bool = False) -> None:
    """ValueError when ``spec`` cannot run at ``head_dim``: the spec's own head-dim constraints
    (e.g. Double Sparsity's label channels r <= D) are checked by running it on a tiny tensor of
    that head dim, so a model/method mismatch fails before any long work."""
    from sim import simulate

    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim: expected a positive int, got {head_dim!r}")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 4, head_dim)).astype(np.float32)
    k = rng.standard_normal((1, 1, 4, head_dim)).astype(np.float32)
    try:
        simulate(q, k, k, spec, causal=True, kv_cache=kv_cache)
    except ValueError as e:
        raise ValueError(f"method {getattr(spec, 'name', spec)!r} does not support head dim "
                         f"{head_dim}: {e}") from None


def _to_numpy(x: Any) -> np.ndarray:
    # float32 holds fp16/bf16/fp32 exactly; fp64 model activations are rounded (documented).
    return x.detach().to("cpu").float().contiguous().numpy()


def _mask_kind(mask: Any, Lq: int, Lk: int) -> tuple[bool, np.ndarray | None]:
    """``(causal, pad)`` equivalent to a boolean ``[B, 1|H, Lq, Lk]`` mask: ``pad`` is None
    without padding, else int ``[B]``, the leading keys hidden from batch row ``b`` (left
    padding). ValueError for any other mask."""
    import torch

    if mask.dtype != torch.bool:
        raise ValueError(f"attention_mask: expected a boolean mask from sdpa_mask, got "
                         f"{mask.dtype}; register the attention with ref.hf_attention.register")
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (Lq, Lk):
        raise ValueError(f"attention_mask: expected a [B, 1|H, {Lq}, {Lk}] mask, got "
                         f"{tuple(mask.shape)}")
    m = mask.detach().cpu().numpy()
    if m.all():
        return False, None
    causal = np.arange(Lk)[None, :] <= last_visible_key(np.arange(Lq), Lq, Lk)[:, None]
    if (m == causal).all():
        return True, None
    if not (m == m[:, :1]).all():
        raise ValueError("attention_mask: per-head masks are not supported")
    m = m[:, 0]
    seen = m.any(axis=1)                                   # [B, Lk]: key visible to some row
    pad = np.where(seen.any(axis=1), seen.argmax(axis=1), Lk)
    keys = np.arange(Lk)[None, None, :] >= pad[:, None, None]
    for is_causal, pattern in ((True, causal[None] & keys), (False, np.broadcast_to(keys, m.shape))):
        rows = pattern.any(axis=2, keepdims=True)            # rows that see a key must match;
        if ((m == pattern) | ~rows).all() and not (m & ~rows).any():   # the others see none
            return is_causal, pad.astype(np.int64)
    raise ValueError("attention_mask: only no mask, all-visible or bottom-right causal masks, "
                     "optionally with left padding, are supported (right padding and windowed "
                     "masks are not); pad on the left (tokenizer.padding_side = 'left')")


class SimAttention:
    """Callable for ``AttentionInterface``; see the module docstring.

    Args:
        spec: a ``sim.MethodSpec`` (or method name) run by ``sim.simulate``; None with
            ``reference``.
        reference: ``"exact"``, ``"fp32"`` or ``"fp16"`` instead of a spec.
        kv_cache: the method's KV-cache mode (turbo: K/V read from the progressive INT8/INT4/INT2
            cache); methods without one refuse it.
        calibration: ``{layer_idx: calibration}`` of the method's calibration kind
            (``sim.methods``: double_sparse channels, turbo head priority);
            None lets each call calibrate on its own inputs ("oracle").
        dense_layers: layers with index < this run ``dense_reference``.
        capture_layers: layer indices whose inputs are kept in :attr:`captured`
            (``{layer: {"q", "k", "v"}}`` float32, last call wins; call :meth:`clear`).

    Attributes:
        info: ``{layer_idx: SimResult.info}`` of the last call per layer (e.g. turbo cache bytes).
        calls: number of calls made.
    """

    def __init__(self, spec: Any = None, *, reference: str | None = None, kv_cache: bool = False,
                 calibration: Mapping[int, Any] | None = None, dense_layers: int = 0,
                 dense_reference: str = "fp16", capture_layers: Iterable[int] = ()):
        if (spec is None) == (reference is None):
            raise ValueError("spec/reference: give exactly one of a method spec or a reference "
                             f"name, got spec={spec!r}, reference={reference!r}")
        if reference is not None and reference not in REFERENCES:
            raise ValueError(f"reference: expected one of {REFERENCES}, got {reference!r}")
        if dense_reference not in REFERENCES:
            raise ValueError(f"dense_reference: expected one of {REFERENCES}, got {dense_reference!r}")
        if not isinstance(dense_layers, int) or dense_layers < 0:
            raise ValueError(f"dense_layers: expected a non-negative int, got {dense_layers!r}")
        if spec is not None:
            from sim import load_method

            from sim.methods import SIMULATORS

            spec = load_method(spec)
            m = SIMULATORS.get(spec.method)
            if kv_cache and "kv_cache" not in m.modes:
                raise ValueError(f"kv_cache: method {spec.method!r} has no KV-cache mode")
            if calibration is not None and ("kv_cache" if kv_cache else None) not in m.calibrated:
                raise ValueError(f"calibration: method {spec.method!r} takes none"
                                 f"{' with kv_cache' if kv_cache else ''}")
        if calibration is not None and not isinstance(calibration, Mapping):
            raise TypeError(f"calibration: expected a mapping layer -> calibration, got "
                            f"{type(calibration).__name__}")
        self.spec, self.reference, self.kv_cache = spec, reference, bool(kv_cache)
        self.calibration = dict(calibration) if calibration is not None else None
        self.dense_layers, self.dense_reference = dense_layers, dense_reference
        self.capture_layers = frozenset(int(i) for i in capture_layers)
        self.captured: dict[int, dict[str, np.ndarray]] = {}
        self.info: dict[int, dict] = {}
        self.calls = 0

    @property
    def label(self) -> str:
        if self.spec is None:
            return f"reference:{self.reference}"
        return self.spec.name + (" +kv_cache" if self.kv_cache else "") + (
            f" dense<{self.dense_layers}" if self.dense_layers else "")

    def clear(self) -> None:
        self.captured.clear()
        self.info.clear()

    def run(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool,
            sm_scale: float, layer: int | None) -> np.ndarray:
        """The executor on numpy float32 q/k/v; returns float32 ``[B, Hq, Lq, Dv]``."""
        dense = layer is not None and layer < self.dense_layers
        reference = self.dense_reference if dense and self.spec is not None else self.reference
        if self.spec is None or dense:
            if reference == "exact":
                return ref.attention(q, k, v, causal=causal, sm_scale=sm_scale).astype(np.float32)
            return ref.sdpa(q, k, v, causal=causal, sm_scale=sm_scale, dtype=reference)
        from sim import simulate

        cal = None
        if self.calibration is not None:
            if layer not in self.calibration:
                raise ValueError(f"calibration: no entry for layer {layer} "
                                 f"(have {sorted(self.calibration)})")
            cal = self.calibration[layer]
        res = simulate(q, k, v, self.spec, causal=causal, sm_scale=sm_scale, calibration=cal,
                       kv_cache=self.kv_cache)
        if layer is not None and res.info:
            self.info[layer] = dict(res.info)
        return res.out

    def run_padded(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pad: np.ndarray, *,
                   causal: bool, sm_scale: float, layer: int | None) -> np.ndarray:
        """:meth:`run` on a left-padded batch, one sequence at a time: batch row ``b`` on keys
        ``pad[b]:`` and (causal) the query rows that see one of them; the other rows are 0."""
        if self.kv_cache:
            raise ValueError(
                "attention_mask: left-padded batches cannot run a method's KV-cache mode: its "
                "cache blocks are aligned at each sequence's first token, and padding would "
                "enter them; run the sequences one at a time (or unpadded, equal lengths)")
        B, Hq, Lq, _ = q.shape
        Lk = k.shape[2]
        out = np.zeros((B, Hq, Lq, v.shape[-1]), np.float32)
        for b in range(B):
            p = int(pad[b])
            r0 = max(0, p - (Lk - Lq)) if causal else 0
            if p >= Lk or r0 >= Lq:
                continue
            out[b:b + 1, :, r0:] = self.run(
                np.ascontiguousarray(q[b:b + 1, :, r0:]), np.ascontiguousarray(k[b:b + 1, :, p:]),
                np.ascontiguousarray(v[b:b + 1, :, p:]), causal=causal, sm_scale=sm_scale,
                layer=layer)
        return out

    def __call__(self, module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                 scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
        import torch

        if dropout:
            raise ValueError(f"dropout: qsattn attention is inference-only, got {dropout}")
        if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
            raise ValueError("qsattn attention supports neither softcap nor sliding windows")
        if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
            raise ValueError(f"query/key/value: expected 4-D [B, H, T, D] tensors, got "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        Lq, Lk = query.shape[2], key.shape[2]
        pad = None
        if attention_mask is None:
            causal = bool(getattr(module, "is_causal", True))
        else:
            causal, pad = _mask_kind(attention_mask, Lq, Lk)
        D = query.shape[-1]
        sm_scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(D)
        layer = getattr(module, "layer_idx", None)
        q, k, v = _to_numpy(query), _to_numpy(key), _to_numpy(value)
        if layer is not None and layer in self.capture_layers:
            self.captured[layer] = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
        if pad is None:
            out = self.run(q, k, v, causal=causal, sm_scale=sm_scale, layer=layer)
        else:
            out = self.run_padded(q, k, v, pad, causal=causal, sm_scale=sm_scale, layer=layer)
        self.calls += 1
        o = torch.from_numpy(np.ascontiguousarray(out)).to(device=query.device, dtype=query.dtype)
        return o.transpose(1, 2).contiguous(), None


def register(name: str, backend: Callable) -> str:
    """Register ``backend`` (and transformers' ``sdpa_mask``) as :func:`registered_name`
    ``(name)``; returns that name for ``model.set_attn_implementation`` or
    ``from_pretrained(attn_implementation=...)``. Re-registering a name replaces it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if not callable(backend):
        raise TypeError(f"backend: expected a callable attention function, got "
                        f"{type(backend).__name__}")
    full = registered_name(name)
    AttentionInterface.register(full, backend)
    AttentionMaskInterface.register(full, sdpa_mask)
    return full
