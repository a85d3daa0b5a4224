"""Block granularity: one ``block`` shape for per-tensor, per-token, per-head, per-channel, per-group.

A block spec has one entry per axis of the data: an int block length (>= 1) or None for the whole
axis. The data is split into a grid of ``ceil(n_i / b_i)`` blocks per axis; when ``b_i`` does not
divide ``n_i`` the last block along that axis is partial (what kernels do with a length that does
not divide the tile). A block length larger than the axis means one (partial) block; it is
normalized to the axis length. ``block=None`` means per tensor.

Examples on ``x`` of shape ``[B, H, L, D]``:

==============================  ===============================  ==================
granularity                     block                            scale shape
==============================  ===============================  ==================
per tensor                      ``None`` or ``(None,)*4``        ``(1, 1, 1, 1)``
per token                       ``(1, 1, 1, None)``              ``(B, H, L, 1)``
per head                        ``(1, 1, None, None)``           ``(B, H, 1, 1)``
per block of N tokens per head  ``(1, 1, N, None)``              ``(B, H, ceil(L/N), 1)``
per channel                     ``(None, None, None, 1)``        ``(1, 1, 1, D)``
per channel per head            ``(1, 1, None, 1)``              ``(B, H, 1, D)``
per group of G channels         ``(1, 1, 1, G)``                 ``(B, H, L, ceil(D/G))``
==============================  ===============================  ==================
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["normalize_block", "grid_shape", "block_reduce", "expand"]


def normalize_block(block, shape: tuple[int, ...], arg: str = "block") -> tuple[int, ...]:
    """Effective block lengths (ints, each in [1, n_i]) for data of ``shape``.

    >>> normalize_block((1, None, 4), (2, 3, 10))
    (1, 3, 4)
    >>> normalize_block(None, (2, 3))
    (2, 3)
    """
    if block is None:
        return tuple(max(int(n), 1) for n in shape)
    if not isinstance(block, (tuple, list)):
        raise ValueError(
            f"{arg}: expected None or a tuple with one entry (int or None) per axis of the "
            f"{len(shape)}-d data, got {block!r}"
        )
    if len(block) != len(shape):
        raise ValueError(
            f"{arg}: expected {len(shape)} entries (one per axis of data of shape {tuple(shape)}), "
            f"got {len(block)}: {tuple(block)!r}"
        )
    out = []
    for i, (b, n) in enumerate(zip(block, shape)):
        if b is None:
            out.append(max(int(n), 1))
            continue
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, numbers.Integral) or b < 1:
            raise ValueError(
                f"{arg}: entry {i} must be a positive int or None, got {b!r} (block={tuple(block)!r})"
            )
        out.append(max(min(int(b), int(n)), 1))
    return tuple(out)


def grid_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """Number of blocks per axis: ``ceil(n_i / b_i)`` (the shape of the per-block scale array)."""
    return tuple(-(-int(n) // int(b)) for n, b in zip(shape, block))


def _blocked(x: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """View-or-copy of ``x`` padded to whole blocks and reshaped to (g0, b0, g1, b1, ...).

    Padding replicates the last element along each axis ('edge'): it lies in the same (last)
    block, so min, max and max-abs of every block are unchanged.
    """
    grid = grid_shape(x.shape, block)
    pad = [(0, g * b - n) for g, b, n in zip(grid, block, x.shape)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="edge")
    inter = [d for gb in zip(grid, block) for d in gb]
    return x.reshape(inter)


def block_reduce(x: np.ndarray, block: tuple[int, ...], op: str) -> np.ndarray:
    """Per-block ``op`` ("max", "min" or "absmax") with the grid shape (same ndim as ``x``)."""
    if op == "absmax":
        x, op = np.abs(x), "max"
    y = _blocked(x, block)
    axes = tuple(range(1, y.ndim, 2))
    return getattr(y, op)(axis=axes)


def expand(s: np.ndarray, block: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast per-block values ``s`` (grid shape) back to one value per element of ``shape``."""
    grid = s.shape
    inter_s = [d for g in grid for d in (g, 1)]
    inter = [d for gb in zip(grid, block) for d in gb]
    full = np.broadcast_to(s.reshape(inter_s), inter).reshape([g * b for g, b in zip(grid, block)])
    if full.shape != tuple(shape):
        full = full[tuple(slice(0, n) for n in shape)]
    return full
