"""Foreign kernels: Triton kernels qsattn did not write, priced like our own.

A foreign kernel is described as data (``configs/kernels/foreign/<name>.yaml``): for each launch
it makes, in order, the Triton function (its package and module, or a repository file, with the
SHA-256 of the source text the description was written against), the positional arguments as
the real call passes them (tensors by shape and dtype, integers and floats by expression), the
constexprs and launch options, the grid, and the trip count of every loop of the kernel body per
CTA, as expressions of the problem shape and the program ids. Launches that are not Triton
(e.g. a torch reduction) are listed with their HBM bytes and priced as memory traffic, flagged.

Expressions (:func:`evaluate`) are Python arithmetic over the names ``batch``, ``q_heads``,
``kv_heads``, ``q_len``, ``kv_len``, ``head_dim``, ``causal``, ``group`` (and ``pid0``,
``pid1``, ``pid2`` in trips), with ``cdiv``, ``min``, ``max``, ``floor``; nothing else.

The counted-kernel key of a foreign launch is computed here without triton or the source
(:func:`launch_key`): the description's digest, the source digest, the constexprs and options,
the target, and the specialization class of every integer argument as Triton 3.6's binder makes
it (``1``: equal to one; ``16``: divisible by 16; else none; pointers 16-byte aligned). So shipped
records (configs/kernels/<arch>/counted/) price a foreign kernel whose source is not installed
(e.g. a paper's repository, not redistributed), and the counter (gpu.foreign), when the source
is present, checks that Triton's binder agrees with the class before compiling.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..schema import ConfigError, load_yaml
from ..spec import config_dir

__all__ = ["ForeignKernel", "ForeignLaunch", "load_foreign", "available_foreign", "evaluate",
           "launch_key", "grid_trips", "SHAPE_NAMES", "foreign_request_key", "value_class",
           "arg_values"]

SHAPE_NAMES = ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "causal", "group")
_FUNCS = {"cdiv": lambda a, b: -(-a // b), "min": min, "max": max, "floor": math.floor}
_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call,
          ast.Name, ast.Load, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
          ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq,
          ast.Lt, ast.LtE, ast.Gt, ast.GtE)


@functools.lru_cache(maxsize=512)
def _compiled(expr: str, names: tuple):
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"expression {expr!r}: not valid arithmetic ({e.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"expression {expr!r}: {type(node).__name__} is not allowed "
                             f"(arithmetic, comparisons and {sorted(_FUNCS)} only)")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                               and node.func.id in _FUNCS):
            raise ValueError(f"expression {expr!r}: only {sorted(_FUNCS)} may be called")
        if isinstance(node, ast.Name) and node.id not in names and node.id not in _FUNCS:
            raise ValueError(f"expression {expr!r}: unknown name {node.id!r}; expected one of "
                             f"{sorted(names)}")
    return compile(tree, f"<{expr}>", "eval")


def evaluate(expr, env: dict):
    """Value of a description expression (see the module docstring); numbers pass through.

    >>> evaluate("cdiv(q_len, 128) * max(1, group)", {"q_len": 1000, "group": 4})
    32
    """
    if isinstance(expr, bool) or isinstance(expr, (int, float)):
        return expr
    if not isinstance(expr, str):
        raise ValueError(f"expression: expected a number or a string, got {expr!r}")
    code = _compiled(expr, tuple(sorted(env)))
    return eval(code, {"__builtins__": {}, **_FUNCS}, env)


@dataclass(frozen=True)
class ForeignLaunch:
    """One launch of a foreign kernel (see the module docstring)."""

    name: str
    function: str                 # the @triton.jit function's name; "" for a non-Triton launch
    module: str                   # importable module, or "" when the source is a file
    path: str                     # repository path of the source file ("" for a module)
    sha256: str                   # of the source text the description was written for
    args: tuple                   # ({"tensor": [exprs], "dtype": str} | {"int": expr} |
    #                                {"float": expr}, ...)
    constexprs: tuple             # ((name, expr), ...)
    options: tuple                # ((num_warps | num_stages, expr), ...)
    grid: tuple                   # 3 expressions
    trips: tuple                  # per loop of the body, in program order
    hbm_bytes: str                # expression
    when: str = "True"            # the launch runs when this holds (e.g. "causal")

    @property
    def triton(self) -> bool:
        return bool(self.function)


@dataclass(frozen=True)
class ForeignKernel:
    """A described foreign kernel (``configs/kernels/foreign/<name>.yaml``)."""

    name: str
    description: str
    source: str                   # where the code comes from (package version / repo@commit)
    requires: str                 # shape condition, e.g. "q_len == kv_len or not causal"
    launches: tuple
    digest: str
    # file sources: sibling files the kernel's module imports, ((name, sha256), ...), checked
    # by the counter (gpu.foreign) before it executes the module
    support: tuple = ()

    def env(self, shape) -> dict:
        env = {n: getattr(shape, n) for n in SHAPE_NAMES}
        if not evaluate(self.requires, env):
            raise ValueError(f"shape: foreign kernel {self.name!r} requires {self.requires} "
                             f"({self.description}); got {shape.label()}")
        return env

    def active(self, shape) -> list:
        env = self.env(shape)
        return [la for la in self.launches if evaluate(la.when, env)]


_ARG_KEYS = {"tensor", "dtype", "int", "float", "const"}


def _launch(doc: dict, where: str, i: int) -> ForeignLaunch:
    at = f"launches[{i}]"
    if not isinstance(doc, dict) or "name" not in doc:
        raise ConfigError(where, at, "a mapping with a name", doc)
    fn = doc.get("function", "")
    args = []
    for j, a in enumerate(doc.get("args", []) if fn else []):
        scalar = set(a) - {"const"} if isinstance(a, dict) else set()
        if not isinstance(a, dict) or not set(a) <= _ARG_KEYS or not (
                ("tensor" in a and "dtype" in a) or len(scalar) == 1 and scalar & {"int", "float"}):
            raise ConfigError(where, f"{at}.args[{j}]",
                              "{tensor: [exprs], dtype: name} | {int: expr[, const: true]} | "
                              "{float: expr}", a)
        args.append(a)
    if fn:
        for k in ("sha256", "grid", "trips", "options"):
            if k not in doc:
                raise ConfigError(where, f"{at}.{k}", "present for a Triton launch", None)
        if not (doc.get("module") or doc.get("path")):
            raise ConfigError(where, f"{at}.module", "a module or a path", None)
        if len(doc["grid"]) != 3:
            raise ConfigError(where, f"{at}.grid", "3 expressions", doc["grid"])
    if "hbm_bytes" not in doc:
        raise ConfigError(where, f"{at}.hbm_bytes", "an expression of the shape", None)
    return ForeignLaunch(
        name=str(doc["name"]), function=str(fn), module=str(doc.get("module", "")),
        path=str(doc.get("path", "")), sha256=str(doc.get("sha256", "")), args=tuple(
            json.dumps(a, sort_keys=True) for a in args),
        constexprs=tuple(sorted((str(k), v) for k, v in doc.get("constexprs", {}).items())),
        options=tuple(sorted((str(k), v) for k, v in doc.get("options", {}).items())),
        grid=tuple(doc.get("grid", ())), trips=tuple(doc.get("trips", ())),
        hbm_bytes=str(doc["hbm_bytes"]), when=str(doc.get("when", "True")))


def foreign_dir() -> Path:
    return config_dir() / "kernels" / "foreign"


def available_foreign() -> list[str]:
    d = foreign_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


@functools.lru_cache(maxsize=32)
def load_foreign(name_or_path: str) -> ForeignKernel:
    """A foreign kernel description by name (``configs/kernels/foreign/<name>.yaml``) or path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = foreign_dir() / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ValueError(f"foreign kernel: expected one of {available_foreign()} or a path "
                             f"to a description, got {name_or_path!r}")
    doc = load_yaml(p)
    where = str(p)
    for k in ("name", "description", "source", "launches"):
        if k not in doc:
            raise ConfigError(where, k, "present", None)
    if not isinstance(doc["launches"], list) or not doc["launches"]:
        raise ConfigError(where, "launches", "a non-empty list", doc["launches"])
    launches = tuple(_launch(d, where, i) for i, d in enumerate(doc["launches"]))
    support = doc.get("support", {})
    if not isinstance(support, dict) or not all(
            isinstance(v, str) and len(v) == 64 for v in support.values()):
        raise ConfigError(where, "support", "a mapping file name -> SHA-256 (64 hex digits)",
                          support)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return ForeignKernel(str(doc["name"]), str(doc["description"]), str(doc["source"]),
                         str(doc.get("requires", "True")), launches, digest[:16],
                         tuple(sorted((str(k), v) for k, v in support.items())))


def value_class(v) -> str:
    """Specialization class of one scalar argument (see the module docstring)."""
    # Triton 3.6's binder: ints equal to 1 are specialized, ints divisible by 16 get the
    # divisibility attribute; floats and pointers (16-byte aligned) carry no value class
    if isinstance(v, bool):
        return f"b{int(v)}"
    if isinstance(v, int):
        wide = "L" if not -2 ** 31 <= v < 2 ** 31 else ""       # passed as i64
        return wide + ("1" if v == 1 else "16" if v % 16 == 0 else "x")
    return "f"


def arg_values(la: ForeignLaunch, env: dict) -> list:
    """The evaluated positional arguments: ("tensor", shape tuple, dtype) | ("int", value) |
    ("const", value) (a ``tl.constexpr`` parameter passed positionally) | ("float", value)."""
    out = []
    for a in la.args:
        d = json.loads(a)
        if "tensor" in d:
            out.append(("tensor", tuple(int(evaluate(x, env)) for x in d["tensor"]),
                        d["dtype"]))
        elif "int" in d:
            out.append(("const" if d.get("const") else "int", int(evaluate(d["int"], env))))
        else:
            out.append(("float", float(evaluate(d["float"], env))))
    return out


def launch_key(kernel: ForeignKernel, la: ForeignLaunch, env: dict, target: str) -> str:
    """Counted-record key of a foreign launch at a shape (see the module docstring)."""
    classes = []
    for a in arg_values(la, env):
        if a[0] == "tensor":
            classes.append(f"p:{a[2]}")
        elif a[0] == "int":
            classes.append(value_class(a[1]))
        elif a[0] == "const":                 # a tl.constexpr parameter: its value
            classes.append(f"c{a[1]}")
        else:
            classes.append("f")
    consts = [(k, evaluate(v, env)) for k, v in la.constexprs]
    opts = [(k, evaluate(v, env)) for k, v in la.options]
    text = json.dumps([kernel.name, la.name, la.sha256, classes, consts, opts, target],
                      default=str)
    return f"foreign-{kernel.name}-{la.name}-{target}-" + \
        hashlib.sha256(text.encode()).hexdigest()[:16]


def foreign_request_key(request) -> str:
    """:func:`launch_key` of a ``foreign.<kernel>.<launch>`` KernelRequest."""
    from ..arch import arch
    parts = request.kernel.split(".")
    desc = load_foreign(dict(request.extra).get("description", parts[1]))
    la = next((x for x in desc.launches if x.name == parts[-1]), None)
    if la is None or not la.triton:
        raise ValueError(f"kernel request {request.kernel!r}: {desc.name!r} has no Triton launch "
                         f"{parts[-1]!r}")
    return launch_key(desc, la, desc.env(request.shape), arch(request.arch).target)


def grid_trips(la: ForeignLaunch, env: dict) -> tuple:
    """Per CTA in launch order (``pid0`` fastest), the tuple of its loop trips."""
    g = [int(evaluate(x, env)) for x in la.grid]
    if any(n < 1 for n in g):
        return ()
    e = dict(env, pid0=0, pid1=0, pid2=0)
    uses = {n for t in la.trips if isinstance(t, str)
            for n in ("pid1", "pid2") if n in t}

    def column():
        col = []
        for p0 in range(g[0]):
            e["pid0"] = p0
            col.append(tuple(max(0, int(evaluate(t, e))) for t in la.trips))
        return tuple(col)

    if not uses:                       # every column alike: evaluate one
        return column() * (g[1] * g[2])
    out = []
    for p2 in range(g[2]):
        e["pid2"] = p2
        for p1 in range(g[1]):
            e["pid1"] = p1
            out.extend(column())
    return tuple(out)
