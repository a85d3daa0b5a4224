"""The counter's side of foreign kernels (:mod:`sim.cost.foreign`): the described Triton
function, imported from its package (or loaded from a source file) and checked against the
description's SHA-256, with the argument set of one launch on ``meta`` tensors.

A file source (``path`` in the description: a paper's repository, not redistributed with qsattn)
is looked up under ``$QSATTN_FOREIGN_SRC`` (a directory holding the repository's files at their
paths); without it, only the shipped counted records can price that kernel.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
from pathlib import Path

from sim.cost.counted import KernelRequest
from sim.cost.foreign import arg_values, evaluate, load_foreign

__all__ = ["bound_call", "source_text", "launch_of"]

_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "int8": "int8",
           "uint8": "uint8", "int32": "int32", "int64": "int64", "float8_e4m3fn": "float8_e4m3fn"}


def launch_of(req: KernelRequest):
    """(description, launch) of a ``foreign.<kernel>.<launch>`` request."""
    parts = req.kernel.split(".")
    if len(parts) != 3 or parts[0] != "foreign":
        raise ValueError(f"kernel request: expected 'foreign.<kernel>.<launch>', got "
                         f"{req.kernel!r}")
    desc = load_foreign(req.extra_dict.get("description", parts[1]))
    for la in desc.launches:
        if la.name == parts[2]:
            if not la.triton:
                raise ValueError(f"foreign kernel {desc.name!r}: launch {la.name!r} is not a "
                                 f"Triton kernel; it has no SASS to count")
            return desc, la
    raise ValueError(f"foreign kernel {desc.name!r}: no launch {parts[2]!r}; it has "
                     f"{[la.name for la in desc.launches]}")


def _load_module(la):
    if la.module:
        try:
            return importlib.import_module(la.module)
        except ImportError as e:
            raise RuntimeError(f"foreign kernel source {la.module!r} is not installed "
                               f"({e}); install the package the description names") from None
    root = os.environ.get("QSATTN_FOREIGN_SRC")
    if not root:
        raise RuntimeError(f"foreign kernel source {la.path!r}: set $QSATTN_FOREIGN_SRC to a "
                           f"directory holding that repository's files")
    path = Path(root) / la.path
    if not path.is_file():
        raise RuntimeError(f"foreign kernel source: {path} does not exist")
    name = "_qsattn_foreign_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def source_text(la) -> str:
    mod = _load_module(la)
    return inspect.getsource(mod) if la.module else Path(mod.__file__).read_text()


def bound_call(req: KernelRequest) -> tuple:
    """``(fn, args, kwargs, name)`` of a foreign launch at the request's shape (what
    :class:`gpu.counting.BoundCall` holds)."""
    import torch
    desc, la = launch_of(req)
    mod = _load_module(la)
    text = Path(mod.__file__).read_bytes()
    got = hashlib.sha256(text).hexdigest()
    if got != la.sha256:
        raise RuntimeError(f"foreign kernel {desc.name!r} launch {la.name!r}: the source "
                           f"{mod.__file__} has SHA-256 {got}, the description was written for "
                           f"{la.sha256} ({desc.source})")
    fn = getattr(mod, la.function)
    env = desc.env(req.shape)
    args = []
    for a in arg_values(la, env):
        if a[0] == "tensor":
            dt = getattr(torch, _DTYPES.get(a[2], a[2]))
            args.append(torch.empty(a[1], dtype=dt, device="meta"))
        else:
            args.append(a[1])
    kwargs = {k: evaluate(v, env) for k, v in la.constexprs}
    kwargs.update({k: int(evaluate(v, env)) for k, v in la.options})
    return fn, args, kwargs, f"{desc.name}.{la.name}"
