"""The counter's side of foreign kernels (:mod:`sim.cost.foreign`): the described Triton
function, imported from its package (or loaded from a source file) and checked against the
description's SHA-256, with the argument set of one launch on ``meta`` tensors.

A file source (``path`` in the description: a paper's repository, not redistributed with qsattn)
is looked up under ``$QSATTN_FOREIGN_SRC`` (a directory holding each repository's files under
``<owner>/<name>/``, the form of ``path``); without it, only the shipped counted records can price
that kernel. A file source is executed as its repository would run it: its own directory first on
``sys.path`` (sibling modules such as a ``configs.py`` resolve to the repository's, whose SHA-256
the description lists under ``support``), and, on a machine without a GPU, Triton's active driver
answering ``get_current_target()`` with the compile target (module-level code that asks which
backend runs, e.g. ``is_hip()``). A function wrapped by ``@triton.autotune`` is compiled with the
description's constexprs and options, which must be one of the autotuner's own configs.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import contextlib
import inspect
import os
import sys
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


def _source_root() -> Path:
    root = os.environ.get("QSATTN_FOREIGN_SRC")
    if not root:
        raise RuntimeError("foreign kernel source: set $QSATTN_FOREIGN_SRC to a directory holding "
                           "the repository's files (<owner>/<name>/<path>)")
    return Path(root)


class _TargetOnlyDriver:
    """Triton's active driver on a machine without a GPU, for module-level code of a foreign
    source that asks for the current target (nothing else is answered)."""

    def __init__(self, sm: int):
        self.sm = sm

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.sm, 32)


@contextlib.contextmanager
def _as_in_repository(directory: Path, sm: int):
    """Import context of a file source (see the module docstring); restores sys.path,
    sys.modules and the driver afterwards."""
    from triton.runtime import driver
    siblings = {p.stem for p in directory.glob("*.py")}
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in siblings}
    sys.path.insert(0, str(directory))
    fake = None
    try:
        driver.active.get_current_target()
    except Exception:                      # no GPU driver here: answer with the compile target
        fake = _TargetOnlyDriver(sm)
        driver.set_active(fake)
    try:
        yield
    finally:
        if fake is not None:
            driver.set_active(None)        # back to "not yet created" (DriverConfig's start)
        sys.path.remove(str(directory))
        for n in [n for n in sys.modules if n.split(".")[0] in siblings]:
            del sys.modules[n]
        sys.modules.update(saved)


def _file_path(la) -> Path:
    path = _source_root() / la.path
    if not path.is_file():
        raise RuntimeError(f"foreign kernel source: {path} does not exist "
                           f"($QSATTN_FOREIGN_SRC/{la.path})")
    return path


def _check_support(desc, la, path: Path) -> None:
    """The sibling files the description lists (``support``) have the recorded SHA-256."""
    repo = path.parent
    for name, want in desc.support:
        f = repo / name
        if not f.is_file():
            raise RuntimeError(f"foreign kernel {desc.name!r}: {f} (support file of {la.path}) "
                               f"does not exist")
        got = hashlib.sha256(f.read_bytes()).hexdigest()
        if got != want:
            raise RuntimeError(f"foreign kernel {desc.name!r}: the support file {f} has SHA-256 "
                               f"{got}, the description was written for {want} ({desc.source})")


def _load_module(la, sm: int = 80, desc=None):
    if la.module:
        try:
            return importlib.import_module(la.module)
        except ImportError as e:
            raise RuntimeError(f"foreign kernel source {la.module!r} is not installed "
                               f"({e}); install the package the description names") from None
    path = _file_path(la)
    if desc is not None:
        _check_support(desc, la, path)
    name = "_qsattn_foreign_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    with _as_in_repository(path.parent, sm):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return mod


def _jit_of(fn, desc, la, kwargs: dict):
    """The @triton.jit function under ``fn``; when ``fn`` is an autotuner, the launch's
    constexprs and options must be one of its configs (the configs it would time)."""
    configs = getattr(fn, "configs", None)
    if configs is not None and hasattr(fn, "fn"):
        def matches(c):
            return all(kwargs.get(k) == v for k, v in c.kwargs.items()) and all(
                kwargs.get(k, v) == v for k, v in (("num_warps", c.num_warps),
                                                   ("num_stages", c.num_stages)))
        if not any(matches(c) for c in configs):
            raise ValueError(
                f"foreign kernel {desc.name!r} launch {la.name!r}: constexprs/options "
                f"{ {k: kwargs[k] for k in sorted(kwargs)} } are not one of the configs of "
                f"{la.function!r}'s @triton.autotune ({len(configs)} configs, e.g. "
                f"{configs[0].all_kwargs()})")
        fn = fn.fn
    while not hasattr(fn, "cache_key") and hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def source_text(la) -> str:
    if la.module:
        return inspect.getsource(_load_module(la))
    return _file_path(la).read_text()


def bound_call(req: KernelRequest) -> tuple:
    """``(fn, args, kwargs, name)`` of a foreign launch at the request's shape (what
    :class:`gpu.counting.BoundCall` holds)."""
    import torch
    from sim.arch import arch as arch_info
    desc, la = launch_of(req)
    mod = _load_module(la, arch_info(req.arch).sm, desc)
    text = Path(mod.__file__).read_bytes()
    got = hashlib.sha256(text).hexdigest()
    if got != la.sha256:
        raise RuntimeError(f"foreign kernel {desc.name!r} launch {la.name!r}: the source "
                           f"{mod.__file__} has SHA-256 {got}, the description was written for "
                           f"{la.sha256} ({desc.source})")
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
    fn = _jit_of(getattr(mod, la.function), desc, la, kwargs)
    return fn, args, kwargs, f"{desc.name}.{la.name}"
