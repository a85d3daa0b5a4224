"""The layers hold (docs/architecture.md): imports point downward only (configs <- sim <- ref <-
gpu <- qsattn), ``sim`` never imports torch or triton, no module imports a private name of
another, there is no import cycle (function-level imports included: a deferred import does not
make a cycle acceptable), nothing below ``qsattn`` reads ``reports/``, and shared machinery
branches on no method name."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sim", "ref", "gpu", "qsattn")
# what each layer may import from the project (itself included)
ALLOWED = {"sim": {"sim"}, "ref": {"sim", "ref"}, "gpu": {"sim", "ref", "gpu"},
           "qsattn": {"sim", "ref", "gpu", "qsattn"}}
METHOD_NAMES = ("fp16_flash", "fp8_flash", "int8_flash", "turbo", "double_sparse")
# shared machinery: may not branch on (or list) a method by name
SHARED = ["sim/dense.py", "sim/engine.py", "sim/operands.py", "sim/simulate.py", "sim/spec.py",
          "sim/checks.py", "sim/registry.py", "sim/arch.py", "sim/cost/model.py",
          "sim/cost/kernels.py", "sim/cost/paths.py", "sim/cost/hardware.py", "gpu/api.py",
          "gpu/common.py", "gpu/prefill.py", "gpu/decoding.py", "gpu/compare.py"]


def _modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


MODULES = dict(_modules())


def _is_module(name: str) -> bool:
    return name in MODULES


def _imports(name: str, path: Path):
    """(imported module, imported name or None, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                yield mod, a.name, node.lineno


def _edges():
    for name, path in MODULES.items():
        for mod, sym, line in _imports(name, path):
            target = f"{mod}.{sym}" if sym and _is_module(f"{mod}.{sym}") else mod
            yield name, target, sym if target == mod else None, line


EDGES = list(_edges())


def test_imports_point_downward():
    bad = []
    for src, target, _, line in EDGES:
        top = target.split(".")[0]
        layer = src.split(".")[0]
        if top in PACKAGES and top not in ALLOWED[layer]:
            bad.append(f"{src}:{line} imports {target}")
        if layer == "sim" and top in ("torch", "triton"):
            bad.append(f"{src}:{line} imports {target} (sim runs without torch and triton)")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_modules():
    bad = [f"{src}:{line} imports {sym} from {target}" for src, target, sym, line in EDGES
           if sym and sym.startswith("_") and not sym.startswith("__") and target != src
           and target.split(".")[0] in PACKAGES]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for src, target, _, _ in EDGES:
        if target in MODULES and target != src and not src.startswith(target + "."):
            graph.setdefault(src, set()).add(target)
    # a package's __init__ re-exporting its submodules is not a cycle of theirs
    graph = {s: {t for t in ts if not t.startswith(s + ".")} for s, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_below_qsattn_reads_reports():
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] == "qsattn":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"""["']reports\b""", code):
                bad.append(f"{name}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rel", SHARED)
def test_shared_machinery_names_no_method(rel):
    """Shared modules ask the registries; a method name in their code (not docstrings or
    comments) means a method-specific branch or list crept in."""
    tree = ast.parse((ROOT / rel).read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    # a public function's default argument is an API choice, not a branch
    docs |= {id(d) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             for d in n.args.defaults + [x for x in n.args.kw_defaults if x is not None]}
    bad = [f"{rel}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
           if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
           and n.value in METHOD_NAMES]
    assert not bad, "\n".join(bad)
