"""``qsattn specs``: list the shipped method specs, show one resolved, or check a YAML file."""
from __future__ import annotations

import argparse

import yaml

from sim import schema
from sim.spec import available_methods, load_method


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="method name or YAML path to show (default: list all)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set p.rounding=half_even (repeatable)")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--set: expected FIELD=VALUE with a field name, got {item!r}")
        try:
            out[key] = schema.parse_value(value)    # the configs' YAML: only true/false are bools
        except ValueError as e:
            raise ValueError(f"--set: {key}: {e}") from None
    return out


def table() -> str:
    rows = ["| spec | method | digest | tile | description |", "|---|---|---|---|---|"]
    for name in available_methods():
        s = load_method(name)
        rows.append(f"| `{name}` | {s.method} | `{s.digest}` | {s.tiling.block_m}x{s.tiling.block_n}"
                    f" | {s.description} |")
    return "\n".join(rows)


def methods_table() -> str:
    """Every registered method and what each executor supports for it (the registries of
    ``sim.methods``, ``sim.cost.methods`` and ``gpu.methods``)."""
    import gpu
    from sim.cost.methods import COST_PATHS
    from sim.methods import SIMULATORS

    rows = ["| method | spec sections | softmax | simulator modes | cost kernels (prefill; decode) "
            "| GPU prefill | GPU decode |", "|---|---|---|---|---|---|---|"]
    for name, m in SIMULATORS.items():
        cost = COST_PATHS.get(name).kernels if name in COST_PATHS else {}
        kp = gpu.KERNEL_PATHS.get(name) if name in gpu.KERNEL_PATHS else None
        rows.append(f"| `{name}` | {', '.join(sorted(m.sections))} | {', '.join(m.exps)} | "
                    f"{', '.join(('default',) + m.modes)} | "
                    f"{', '.join(cost.get('prefill', ())) or '-'}; "
                    f"{', '.join(cost.get('decode', ())) or '-'} | "
                    f"{'yes' if kp and kp.prefill else '-'} | {'yes' if kp and kp.decode else '-'} |")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        print(table())
        print()
        print(methods_table())
        return 0
    spec = load_method(args.name, **parse_overrides(args.set))
    print(yaml.safe_dump(spec.to_dict(), sort_keys=False, width=100), end="")
    print(f"# digest {spec.digest}")
    return 0
