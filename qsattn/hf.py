"""qsattn inside a transformers model: public attention names, one helper, KV caches.

Importing this module registers one ``attn_implementation`` name per method and mode, so
transformers' public API selects them::

    import qsattn.hf
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="qsattn_int8_fa")
    model.set_attn_implementation("qsattn_turbo_kvcache")        # any time later

Names (:func:`attn_name`, :func:`names`): ``qsattn_<method>`` runs the method's default spec on
the bit-accurate CPU simulator; ``_kvcache`` adds the method's KV-cache mode (turbo: K/V read
from its progressive INT8/INT4/INT2 cache); ``qsattn_gpu_<method>`` runs its Triton prefill
kernel (CUDA, or the CPU under ``TRITON_INTERPRET=1``). transformers treats every name that
contains ``"flash"`` as a FlashAttention request, so ``flash`` is spelled ``fa`` in names:
``fp16_flash`` -> ``qsattn_fp16_fa``.

:func:`use` selects a method with options (spec overrides, calibration, dense layers) and
returns the backend, whose ``calls`` and per-layer ``info`` tell what ran::

    backend = qsattn.hf.use(model, "double_sparse", set={"sparse.token_fraction": 0.125})

:func:`make_cache` gives the cache a method decodes through in ``generate()``: Turbo's
progressive cache (:class:`TurboCache`) and Double Sparsity's label cache
(:class:`LabelCache`) are transformers ``Cache`` subclasses holding the simulator's state
(``sim.methods.turbo.TurboCache``, ``sim.methods.double_sparse.label_cache``) and fixing the
per-layer calibration at the prompt (head bits, label channels), so every step of a generation
reads the same cache; ``kv_bytes()`` reports what the method keeps (the method registry's
accounting, ``SimMethod.kv_bytes``) next to FP16. :func:`generate` passes the cache under the
keyword the installed transformers expects (``cache`` from 5.24, ``past_key_values`` before),
so no deprecation warning is raised::

    cache = qsattn.hf.make_cache(model)
    ids = qsattn.hf.generate(model, prompt_ids, cache=cache, max_new_tokens=16)
    cache.kv_bytes()          # {"method": ..., "fp16": ..., "ratio": ..., "tokens": ...}

Batches: left-padded batches run (each sequence on its own keys, ``ref.hf_attention``);
right padding, and left padding with a KV-cache mode, are refused with a ValueError saying so.
Beam search (reordering a qsattn cache) is refused.

Numerics: the simulator executor computes each step as ``sim.simulate`` on the K/V history the
cache also holds, with the calibration the cache fixed -- for turbo that is the cache of
``TurboCache.from_prefill`` over the history (``SimMethod.decode_mode``); the progressive state
grown by ``append`` differs from it only in the still-open INT8 block, whose scale an appended
token can raise (``TurboCache.append``).
"""
from __future__ import annotations

import inspect
import itertools
import weakref
from typing import Any, Iterable, Mapping

import numpy as np

from qsattn.kernel_attention import KernelAttention
from ref.hf_attention import REFERENCES, SimAttention, register, registered_name

__all__ = ["attn_name", "names", "register_names", "use", "backend_of", "make_cache",
           "TurboCache", "LabelCache", "generate", "cache_keyword", "output_cache", "EXECUTORS"]

EXECUTORS = ("sim", "gpu")
_COUNTER = itertools.count(1)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
def attn_name(method: str, *, executor: str = "sim", kv_cache: bool = False) -> str:
    """The registered ``attn_implementation`` name of a method's default spec.

    >>> attn_name("int8_flash"), attn_name("turbo", kv_cache=True), attn_name("fp16_flash", executor="gpu")
    ('qsattn_int8_fa', 'qsattn_turbo_kvcache', 'qsattn_gpu_fp16_fa')
    """
    from sim.methods import SIMULATORS

    if executor not in EXECUTORS:
        raise ValueError(f"executor: expected one of {EXECUTORS}, got {executor!r}")
    if not isinstance(method, str) or method not in SIMULATORS:
        raise ValueError(f"method: expected one of {SIMULATORS.names()}, got {method!r}")
    if kv_cache and "kv_cache" not in SIMULATORS.get(method).modes:
        raise ValueError(f"kv_cache: method {method!r} has no KV-cache mode")
    stem = ("gpu_" if executor == "gpu" else "") + method + ("_kvcache" if kv_cache else "")
    return registered_name(stem)


def names() -> dict[str, dict]:
    """Every name :func:`register_names` registers -> ``{method, executor, kv_cache}``: each
    method (and KV-cache mode) on the simulator, each method with a prefill kernel on the GPU."""
    import gpu
    from sim.methods import SIMULATORS

    out = {}
    for m in SIMULATORS.names():
        out[attn_name(m)] = {"method": m, "executor": "sim", "kv_cache": False}
        if "kv_cache" in SIMULATORS.get(m).modes:
            out[attn_name(m, kv_cache=True)] = {"method": m, "executor": "sim", "kv_cache": True}
    for m in gpu.prefill_methods():
        out[attn_name(m, executor="gpu")] = {"method": m, "executor": "gpu", "kv_cache": False}
    return out


class _Deferred:
    """A registered default name: builds its backend on the first call (no spec is loaded and
    no GPU touched at import), then forwards every call to it."""

    def __init__(self, method: str, executor: str, kv_cache: bool):
        self.method, self.executor, self.kv_cache = method, executor, kv_cache
        self.backend = None

    def __call__(self, *args, **kw):
        if self.backend is None:
            self.backend = _backend(self.method, executor=self.executor, kv_cache=self.kv_cache)
        return self.backend(*args, **kw)


def register_names() -> list[str]:
    """Register :func:`names` with transformers (done on import); returns them."""
    out = []
    for name, d in names().items():
        register(name, _Deferred(d["method"], d["executor"], d["kv_cache"]))
        out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------
class _CacheAware:
    """Mixin of the backends ``use`` builds: when the K/V a layer receives are those a qsattn
    cache (:func:`make_cache`) just returned, the layer runs with that cache's calibration (fixed
    at the prompt), so every step of a generation sees one cache."""

    _cache_ref = None

    def bind(self, cache: "_QsattnCache | None") -> None:
        self._cache_ref = None if cache is None else weakref.ref(cache)
        self._active = None

    def _layer_state(self, layer: int | None, key: Any):
        cache = self._cache_ref() if self._cache_ref is not None else None
        if cache is None or layer is None or layer >= len(cache.layers):
            return None
        st = cache.layers[layer]
        return st if getattr(st, "keys", None) is key else None

    def __call__(self, module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                 *args, **kw):
        st = self._layer_state(getattr(module, "layer_idx", None), key)
        if st is not None and hasattr(st, "prepare") and self.spec is not None:
            st.prepare(_np(query), _np(key))     # whole batch: calibration, label growth
        self._active = st if hasattr(st, "prepare") else None
        try:
            return super().__call__(module, query, key, value, attention_mask, *args, **kw)
        finally:
            self._active = None

    def run(self, q, k, v, *, causal, sm_scale, layer):
        st = getattr(self, "_active", None)
        if st is None or self.spec is None or (layer is not None and layer < self.dense_layers):
            return super().run(q, k, v, causal=causal, sm_scale=sm_scale, layer=layer)
        saved = self.calibration
        self.calibration = {layer: st.calibration}
        try:
            return super().run(q, k, v, causal=causal, sm_scale=sm_scale, layer=layer)
        finally:
            self.calibration = saved


class HFAttention(_CacheAware, SimAttention):
    """:class:`ref.hf_attention.SimAttention` that decodes through a qsattn cache."""


class HFKernelAttention(_CacheAware, KernelAttention):
    """:class:`qsattn.kernel_attention.KernelAttention` (Triton prefill kernels) for ``use``."""


def _backend(method: str, *, executor: str = "sim", kv_cache: bool = False,
             overrides: Mapping | None = None, calibration: Mapping | None = None,
             dense_layers: int = 0, dense_reference: str = "fp16", device: str | None = None):
    from sim import load_method

    if executor not in EXECUTORS:
        raise ValueError(f"executor: expected one of {EXECUTORS}, got {executor!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"set: expected a mapping field -> value, got {type(overrides).__name__}")
    over = {k.replace(".", "__"): v for k, v in (overrides or {}).items()}
    spec = load_method(method, **over)
    kw = dict(kv_cache=kv_cache, calibration=calibration, dense_layers=dense_layers,
              dense_reference=dense_reference)
    if executor == "sim":
        if device is not None:
            raise ValueError("device: only the gpu executor takes a device")
        return HFAttention(spec, **kw)
    import os

    import torch
    dev = device or ("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
    if str(dev).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("executor: 'gpu' runs the Triton kernels on a CUDA device and this "
                         "torch has none; use executor='sim' (the bit-accurate simulator) or "
                         "TRITON_INTERPRET=1 to run the kernels on the CPU")
    return HFKernelAttention(spec, device=dev, **kw)


def use(model: Any, method: str, *, executor: str = "sim", kv_cache: bool = False,
        set: Mapping | None = None, calibration: Mapping | None = None, dense_layers: int = 0,
        dense_reference: str = "fp16", device: str | None = None):
    """Run ``method`` in every attention layer of ``model`` (through transformers' public
    ``set_attn_implementation``); returns the backend (``.calls``, ``.info`` per layer).

    Args:
        method: a method id (``qsattn specs``), or a reference: ``"exact"`` (float64),
            ``"fp32"``, ``"fp16"``.
        executor: ``"sim"`` (bit-accurate CPU simulator) or ``"gpu"`` (the Triton prefill
            kernel; methods without one are refused).
        kv_cache: the method's KV-cache mode (turbo).
        set: spec overrides, ``{"sparse.token_fraction": 0.125}`` (``qsattn specs NAME``).
        calibration: ``{layer: calibration}`` (double_sparse channels, turbo head priority);
            None: calibrated on the prompt when generating through :func:`make_cache`, else on
            each call's own inputs.
        dense_layers: layers ``< dense_layers`` run ``dense_reference`` (Double Sparsity keeps
            its first layers dense).
        device: the gpu executor's device (default ``cuda``; ``cpu`` under TRITON_INTERPRET=1).
    """
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"model: expected a transformers PreTrainedModel, got "
                        f"{type(model).__name__}")
    if method in REFERENCES:
        if executor != "sim" or kv_cache or set or calibration or dense_layers:
            raise ValueError(f"method: the reference {method!r} takes no executor, kv_cache, "
                             f"set, calibration or dense_layers")
        backend = HFAttention(reference=method)
        stem = f"ref_{method}"
    else:
        backend = _backend(method, executor=executor, kv_cache=kv_cache, overrides=set,
                           calibration=calibration, dense_layers=dense_layers,
                           dense_reference=dense_reference, device=device)
        stem = attn_name(method, executor=executor, kv_cache=kv_cache)
    name = registered_name(f"{stem}_{next(_COUNTER)}")     # one name per use: its own state
    register(name, backend)
    model.set_attn_implementation(name)
    return backend


def backend_of(model: Any):
    """The qsattn backend ``model`` currently runs (selected by :func:`use` or by a registered
    name), or None when it runs another attention."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(getattr(model, "config", None), "_attn_implementation", None)
    be = ALL_ATTENTION_FUNCTIONS.get(name) if isinstance(name, str) else None
    if isinstance(be, _Deferred):
        if be.backend is None:
            be.backend = _backend(be.method, executor=be.executor, kv_cache=be.kv_cache)
        be = be.backend
    return be if isinstance(be, SimAttention) else None


# --------------------------------------------------------------------------------------------
# caches
# --------------------------------------------------------------------------------------------
def _transformers_cache():
    from transformers.cache_utils import Cache, DynamicLayer
    return Cache, DynamicLayer


def _np(x) -> np.ndarray:
    return x.detach().to("cpu").float().contiguous().numpy()


def _cache_classes():
    """The Cache/layer classes, built on first use (transformers is imported then)."""
    global _LAYERS
    if _LAYERS is not None:
        return _LAYERS
    Cache, DynamicLayer = _transformers_cache()

    class _MethodLayer(DynamicLayer):
        """A DynamicLayer (the K/V history, which the simulator computes from) that also keeps
        the method's own cache state and the calibration fixed at the prompt."""

        is_croppable = False

        def __init__(self, spec, calibration=None, **kw):
            super().__init__(**kw)
            self.spec, self.calibration = spec, calibration

        def crop(self, tokens_to_remove: int) -> None:
            raise ValueError("cache: a qsattn method cache cannot drop tokens (its compressed "
                             "state has no undo); build a new cache with make_cache(model)")

        def _no_beams(self, *a, **k):
            raise ValueError("cache: beam search (reordering or repeating a qsattn method "
                             "cache) is not supported; use greedy or sampled generation")

        reorder_cache = batch_repeat_interleave = batch_select_indices = _no_beams

    class TurboLayer(_MethodLayer):
        """Turbo's progressive cache of one layer: ``state`` is a ``sim.methods.turbo
        .TurboCache`` (INT8 buffer + INT4/INT2 store), built from the prompt and grown token by
        token; its head bits come from ``calibration`` (a HeadPriority) or, None, the prompt's
        K/V (source "prompt")."""

        def __init__(self, spec, calibration=None, **kw):
            super().__init__(spec, calibration, **kw)
            self.state = None

        def update(self, key_states, value_states, *args, **kwargs):
            from sim.methods.turbo import TurboCache as SimTurboCache, head_priority

            keys, values = super().update(key_states, value_states, *args, **kwargs)
            k, v = _np(key_states), _np(value_states)
            if self.state is None:
                if self.calibration is None:
                    self.calibration = head_priority(k, v, source="prompt")
                self.state = SimTurboCache.from_prefill(k, v, self.spec,
                                                        priority=self.calibration)
            else:
                self.state.append(k, v)
            return keys, values

        def prepare(self, q: np.ndarray, k: np.ndarray) -> None:
            """Nothing to do before a step: ``update`` built or grew the state."""

        def reset(self) -> None:
            super().reset()
            self.state = None

        def nbytes(self) -> float:
            return 0.0 if self.state is None else float(self.state.nbytes())

    class LabelLayer(_MethodLayer):
        """Double Sparsity's state of one layer: the full FP16 K/V (the method gathers the
        selected tokens from it) and the label cache of K's calibrated channels, grown with
        every token. The channels come from ``calibration`` or, None, the prompt's Q/K at the
        first step (source "prompt")."""

        def __init__(self, spec, calibration=None, **kw):
            super().__init__(spec, calibration, **kw)
            self.labels: list = []            # sim LabelCache per appended chunk
            self._labelled = 0

        def prepare(self, q: np.ndarray, k: np.ndarray) -> None:
            """Before a step over the whole batch: calibrate on the prompt (first step, when no
            calibration was given) and label the tokens appended since the last step."""
            from sim.methods.double_sparse import calibrate, label_cache

            if self.calibration is None:
                self.calibration = calibrate(q, k, self.spec.sparse.channel_metric,
                                             source="prompt")
            sp = self.spec.sparse
            ch = self.calibration.channels(sp.r(k.shape[-1]))
            L = k.shape[2]
            if L > self._labelled:            # per-token labels: growing = building on all K
                self.labels.append(label_cache(k[:, :, self._labelled:], ch, sp.label_bits))
                self._labelled = L

        def reset(self) -> None:
            super().reset()
            self.labels, self._labelled = [], 0

        def label_values(self) -> np.ndarray | None:
            """The label cache as the decode step reads it, ``[B, Hkv, L, r]``."""
            if not self.labels:
                return None
            return np.concatenate([lc.values for lc in self.labels], axis=2)

        def nbytes(self) -> float:
            if self.keys is None or not self.is_initialized:
                return 0.0
            B, H, L, D = self.keys.shape
            return float(2 * 2 * B * H * L * D + sum(lc.nbytes for lc in self.labels))

    class _QsattnCache(Cache):
        """A transformers Cache of one method layer class per decoder layer; see
        :func:`make_cache`."""

        def __init__(self, layer_cls, spec, n_layers: int, calibration=None,
                     dense_layers: int = 0):
            cal = calibration or {}
            layers = [DynamicLayer() if i < dense_layers else layer_cls(spec, cal.get(i))
                      for i in range(n_layers)]
            super().__init__(layers=layers)
            self.spec, self.dense_layers = spec, dense_layers

        def kv_bytes(self) -> dict:
            """Bytes the method keeps for the tokens in the cache, all layers and sequences
            (``SimMethod.kv_bytes`` with each layer's calibration; dense layers FP16), and the
            FP16 K+V of the same tokens."""
            from sim.methods import SIMULATORS

            m = SIMULATORS.get(self.spec.method)
            mode = "kv_cache" if self.spec.method == "turbo" else None
            total = fp16 = 0.0
            tokens = self.get_seq_length()
            for i, layer in enumerate(self.layers):
                if not getattr(layer, "is_initialized", False) or layer.keys is None:
                    continue
                B, H, L, D = layer.keys.shape
                f = 2.0 * 2 * B * H * L * D
                fp16 += f
                if i < self.dense_layers:
                    total += f
                    continue
                total += B * m.kv_bytes(self.spec, tokens=L, head_dim=D, kv_heads=H, mode=mode,
                                        calibration=layer.calibration)
            return {"method": total, "fp16": fp16, "ratio": fp16 / total if total else None,
                    "tokens": tokens}

    class TurboCache(_QsattnCache):
        """Turbo's progressive KV cache for ``generate()`` (see the module docstring)."""

        def __init__(self, spec, n_layers: int, calibration=None, dense_layers: int = 0):
            super().__init__(TurboLayer, spec, n_layers, calibration, dense_layers)

    class LabelCache(_QsattnCache):
        """Double Sparsity's label cache for ``generate()`` (see the module docstring)."""

        def __init__(self, spec, n_layers: int, calibration=None, dense_layers: int = 0):
            super().__init__(LabelLayer, spec, n_layers, calibration, dense_layers)

    _LAYERS = {"TurboCache": TurboCache, "LabelCache": LabelCache, "TurboLayer": TurboLayer,
               "LabelLayer": LabelLayer, "_QsattnCache": _QsattnCache}
    return _LAYERS


_LAYERS = None


def __getattr__(name: str):
    # TurboCache / LabelCache subclass transformers' Cache: built when first asked for, so
    # `import qsattn.hf` costs no transformers import beyond the registration.
    if name in ("TurboCache", "LabelCache"):
        return _cache_classes()[name]
    raise AttributeError(f"module 'qsattn.hf' has no attribute {name!r}")


def make_cache(model: Any, backend: Any = None):
    """The cache ``model``'s qsattn method decodes through in ``generate()``: a
    :class:`TurboCache` for turbo's KV-cache mode, a :class:`LabelCache` for double_sparse,
    transformers' ``DynamicCache`` for the others (they keep plain K/V). The cache is bound to
    the backend (default: :func:`backend_of` ``(model)``), one cache at a time: a new
    ``make_cache`` rebinds it. Pass it to :func:`generate`."""
    from transformers import DynamicCache

    be = backend if backend is not None else backend_of(model)
    if be is None:
        raise ValueError("model: runs no qsattn attention; select one with qsattn.hf.use(model, "
                         "METHOD) or set_attn_implementation('qsattn_...') first")
    spec = getattr(be, "spec", None)
    if spec is None or not isinstance(be, _CacheAware):
        return DynamicCache(config=model.config)
    n = model.config.num_hidden_layers
    classes = _cache_classes()
    if spec.method == "turbo" and be.kv_cache:
        cls = classes["TurboCache"]
    elif spec.method == "double_sparse":
        cls = classes["LabelCache"]
    else:
        return DynamicCache(config=model.config)
    cache = cls(spec, n, calibration=be.calibration, dense_layers=be.dense_layers)
    be.bind(cache)
    return cache


# --------------------------------------------------------------------------------------------
# transformers versions
# --------------------------------------------------------------------------------------------
def cache_keyword(model: Any) -> str:
    """The keyword the installed transformers' forward and ``generate`` take a cache under:
    ``"cache"`` (5.24+, ``past_key_values`` deprecated) or ``"past_key_values"`` (5.23)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(outputs: Any):
    """The cache of a model output, read without touching a deprecated attribute."""
    for key in ("cache", "past_key_values"):
        if key in outputs:
            return outputs[key]
    return None


def generate(model: Any, inputs: Any, *, cache: Any = None, **kwargs: Any):
    """``model.generate(inputs, **kwargs)`` with ``cache`` (e.g. :func:`make_cache`) passed
    under the keyword this transformers version expects."""
    if cache is not None:
        kwargs[cache_keyword(model)] = cache
    return model.generate(inputs, **kwargs)


register_names()
