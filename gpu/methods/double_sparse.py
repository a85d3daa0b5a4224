"""double_sparse, the kernel path (decode only): the FP16 K/V plus the label cache of the ``r``
calibrated channels (``sim.methods.double_sparse.label_cache``: packed asymmetric codes + fp16
scale + int32 zero point per token, or fp16 labels), then per step the label-score kernel
(approximate scores and selection keys, labels read once per KV head), the top-k select (a
sampled bracket, one counting pass, candidates refined on chip, one compaction pass:
gpu.kernels.labels), and the split-K flash-decode gathering the selected rows inside the
kernel. The token budget is computed once per (spec, length) on the host.

``calibration`` is required (a ``sim.methods.double_sparse.Calibration`` or a path): the ``qk``
channel metric needs queries, which a cache does not have. fp16 inputs only (the method's operand
format). Selection: the simulator's (best score first, ties to the lower index, sink/recent
tokens forced), ascending indices.
"""
from __future__ import annotations

import functools

import numpy as np

from sim.methods.double_sparse import as_calibration, row_budget

from ..common import capacity, cdiv, grow, interpreting, kernels, torch_module
from ..decoding import DenseKV, flash_decode
from .base import KernelPath


# The Double Sparsity protocol options the simulator implements and the kernels do not: the
# kernels rank by labels (fp16 query labels) from one label cache per KV head. A spec asking for
# another ranking is refused rather than run as label selection (a silently different answer).
_KERNEL_SPARSE = {"selection": "labels", "label_scope": "kv_head", "q_label_bits": 16}


@functools.lru_cache(maxsize=64)
def _check_spec(spec) -> None:
    sp = spec.sparse
    if sp.label_bits not in (2, 4, 8, 16):
        raise ValueError(f"spec.sparse.label_bits: expected 2, 4, 8 or 16, got {sp.label_bits}")
    for name, supported in _KERNEL_SPARSE.items():
        if getattr(sp, name) != supported:
            raise ValueError(f"spec.sparse.{name}: the double_sparse kernels implement "
                             f"{supported!r} only, got {getattr(sp, name)!r} (the simulator "
                             f"runs it: executor 'sim')")
    if spec.tiling.block_n not in (16, 32, 64, 128):
        raise ValueError(f"spec.tiling.block_n: expected 16, 32, 64 or 128, got "
                         f"{spec.tiling.block_n}")


class DoubleSparseCache(DenseKV):
    """FP16 K/V plus the label cache (see the module docstring)."""

    method = "double_sparse"
    dtypes = ("float16",)

    def __init__(self, k, v, spec, calibration):
        if calibration is None:
            raise ValueError("calibration: double_sparse needs a sim.methods.double_sparse.Calibration (or a "
                             "path to one); the 'qk' channel metric needs queries a cache lacks")
        B, Hkv, L, D = k.shape
        calibration = as_calibration(calibration, spec, Hkv, D)
        sp = spec.sparse
        r = sp.r(D)
        if r & (r - 1) or r < 2 or (sp.label_bits != 16 and r * sp.label_bits % 32):
            raise ValueError(f"spec.sparse: the label kernels need r = {r} label channels to be a "
                             f"power of two >= 2 filling whole 32-bit words of codes "
                             f"(r * label_bits a multiple of 32), got label_bits "
                             f"{sp.label_bits}")
        torch = torch_module()
        self.spec, self.calibration, self.r, self.bits = spec, calibration, r, sp.label_bits
        self.channels_np = calibration.channels(r)
        self.channels = torch.as_tensor(self.channels_np.astype(np.int32), device=k.device)
        self._init_dense(k, v)
        cap = self._k.shape[2]
        if self.bits == 16:
            self.labels = torch.zeros((B, Hkv, cap, r), dtype=torch.float16, device=k.device)
        else:
            self.labels = torch.zeros((B, Hkv, cap, r * self.bits // 8), dtype=torch.uint8,
                                      device=k.device)
        self.label_scale = torch.ones((B, Hkv, cap), dtype=torch.float16, device=k.device)
        self.label_zero = torch.zeros((B, Hkv, cap), dtype=torch.int32, device=k.device)
        self._write_labels(0, L, check=True)

    @property
    def label_words(self):
        """The labels as int32 words, what the score kernel reads (packed codes, or two fp16
        labels per word)."""
        return self.labels.view(torch_module().int32)

    def _write_labels(self, lo: int, hi: int, check: bool) -> None:
        """Label-build kernel over tokens [lo, hi) of the stored K; ``check``: one device
        reduction and sync refusing a label range beyond fp16 or a zero point beyond 2^16 (the
        tokens are written past ``length``: a refusal leaves the cache as it was)."""
        if hi <= lo:
            return
        kl = kernels("labels")
        n = hi - lo
        src = self._k[:, :, lo:hi]
        rows = 16 if interpreting() else 64
        kl.label_build_kernel[(cdiv(n, rows), self.B * self.Hkv)](
            src, self.channels, self.labels, self.label_scale, self.label_zero, n, self.Hkv, self.labels.shape[2],
            lo, *src.stride(), R=self.r, ROWS=rows, BITS=self.bits, num_warps=4,
            enable_fp_fusion=False)
        if self.bits != 16 and check:
            torch = torch_module()
            bad = torch.stack([torch.isinf(self.label_scale[:, :, lo:hi]).any(),
                               (self.label_zero[:, :, lo:hi].abs() > (1 << 16)).sum()]).cpu()
            if bad[0]:
                raise ValueError("k: a token's label range exceeds the fp16 scale maximum")
            if bad[1]:
                raise ValueError(f"k: {int(bad[1])} token(s) need a label zero point beyond "
                                 f"+-2^16 steps")

    def _append(self, k_new, v_new, check: bool) -> None:
        """fp16 tokens and their labels, written past ``length`` first; ``length`` moves only
        once every check passed (transactional)."""
        if check:
            self._check_values(k_new, v_new)
        lo, n = self.length, k_new.shape[2]
        if lo + n > self._k.shape[2]:
            cap = capacity(lo + n, self._k.shape[2], 64)
            self._k, self._v = grow(self._k, 2, cap), grow(self._v, 2, cap)
            self.labels, self.label_scale, self.label_zero = (
                grow(t, 2, cap) for t in (self.labels, self.label_scale, self.label_zero))
        self._k[:, :, lo:lo + n].copy_(k_new)
        self._v[:, :, lo:lo + n].copy_(v_new)
        self._write_labels(lo, lo + n, check=check)
        self.length = lo + n

    def label_arrays(self) -> dict:
        """Numpy copies comparable with ``sim.methods.double_sparse.label_cache``: ``codes`` (unpacked uint8
        [B, Hkv, L, r]), ``scale`` (f32 [B, Hkv, L, 1]), ``zero_point`` (int32), or ``values``
        (fp16 labels as f32) for 16 bits."""
        L = self.length
        if self.bits == 16:
            return {"values": self.labels[:, :, :L].float().cpu().numpy()}
        from sim.numerics import unpack
        raw = self.labels[:, :, :L].cpu().numpy()
        codes = raw if self.bits == 8 else unpack(raw, self.bits, self.r)
        return {"codes": codes, "packed": raw,
                "scale": self.label_scale[:, :, :L].float().cpu().numpy()[..., None],
                "zero_point": self.label_zero[:, :, :L].cpu().numpy()[..., None]}

    def nbytes(self) -> int:
        """FP16 K/V plus labels (``sim.methods.double_sparse.LabelCache.nbytes`` counts a 2-byte zero point;
        this cache stores 4)."""
        L = self.length
        lab = (self.r * 2 if self.bits == 16 else self.r * self.bits // 8 + 2 + 4)
        return self.B * self.Hkv * L * (2 * self.D * 2 + lab)


@functools.lru_cache(maxsize=4096)
def selected_count(sparse, L: int) -> int:
    """Keys a decode row over ``L`` keys keeps: the spec's budget ``min(L, sparse.k(L))``
    (``sim.methods.double_sparse.row_budget``) plus the sink and recent tokens, capped at L."""
    budget = int(row_budget(sparse, np.array([L]))[0])
    forced = min(L, sparse.sink_tokens + sparse.recent_tokens)
    return min(L, budget + forced)


def select(q, cache: DoubleSparseCache, want_approx: bool = True, method: str = "bracket",
           until: str | None = None):
    """Label scores, selection keys, top-k: (approx f32 [B, Hq, L] or None, idx int32
    [B*Hq, kcount] ascending). ``method`` "bracket" (:func:`gpu.kernels.labels.topk_select_kernel`)
    or "torch" (``torch.topk`` + ``torch.sort`` on int64 keys ``(key << 32) | ~index``); same
    indices. ``until="labels"`` stops after the label kernel (a timing variant: idx None)."""
    if method not in ("bracket", "torch"):
        raise ValueError(f"method: expected 'bracket' or 'torch', got {method!r}")
    torch = torch_module()
    kl = kernels("labels")
    B, Hq, _, D = q.shape
    L = cache.length
    sp = cache.spec.sparse
    G = Hq // cache.Hkv
    approx = torch.empty((B, Hq, L) if want_approx else (1,), dtype=torch.float32,
                         device=q.device)
    keys = torch.empty((B, Hq, L), dtype=torch.int32, device=q.device)
    block = 16 if interpreting() else 512
    kl.label_score_kernel[(cdiv(L, block), B * cache.Hkv)](
        q, cache.channels, cache.label_words, cache.label_scale, cache.label_zero, approx, keys,
        L, cache.labels.shape[2], Hq, cache.Hkv, G, sp.sink_tokens, sp.recent_tokens,
        q.stride(0), q.stride(1), q.stride(3), R=cache.r, BLOCK=block, BITS=cache.bits,
        BG=1 << (G - 1).bit_length(), WRITE_APPROX=want_approx, num_warps=4,
        enable_fp_fusion=False)
    if until == "labels":
        return (approx if want_approx else None), None
    kcount = selected_count(sp, L)
    rows = B * Hq
    if kcount >= L:
        idx = torch.arange(L, dtype=torch.int32, device=q.device).expand(rows, L).contiguous()
    elif method == "bracket":
        idx = torch.empty((rows, kcount), dtype=torch.int32, device=q.device)
        small = interpreting()      # the interpreter runs every tensor op in numpy: small tiles
        cap = 256 if small else 4096
        cand = torch.empty((rows, cap), dtype=torch.int64, device=q.device)
        kl.topk_select_kernel[(rows,)](keys, idx, cand, L, kcount, idx.stride(0),
                                       NSAMPLE=64 if small else 4096, CAP=cap,
                                       CH=128 if small else 2048, num_warps=8)
    else:
        signed = (keys.view(rows, L) ^ -2**31).to(torch.int64)     # int32 order = uint32 order
        k64 = (signed << 32) | (0xFFFFFFFF - torch.arange(L, device=q.device))
        top = torch.topk(k64, kcount, dim=1, sorted=False).indices
        idx = torch.sort(top, dim=1).values.to(torch.int32).contiguous()
    return (approx if want_approx else None), idx


def _decode(q, cache, sm_scale, launch, trace):
    launch = dict(launch or {})
    until = launch.pop("until", None)   # timing variants: "labels" or "select" (returns None)
    approx, idx = select(q, cache, want_approx=trace, method=launch.pop("select", "bracket"),
                         until=until)
    if until is not None:
        return None
    out = flash_decode(q, cache.k, cache.v, idx, idx.shape[1], sm_scale,
                       cache.spec.tiling.block_n, launch)
    if not trace:
        return out
    B, Hq = q.shape[:2]
    return out, {"approx_scores": approx.view(B, Hq, 1, -1),
                 "indices": idx.view(B, Hq, 1, idx.shape[1])}


PATH = KernelPath("double_sparse", check_spec=_check_spec, cache=DoubleSparseCache,
                  cache_dtypes=("float16",), cache_needs_calibration=True, decode=_decode)
