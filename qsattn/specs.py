"""``qsattn specs``: list the shipped method specs, show one resolved, or check a YAML file."""
from __future__ import annotations

import argparse

import yaml

from sim import schema
from sim.spec import available_methods, load_method


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qsattn import cliopts
    p.add_argument("name", nargs="?", help="method name or YAML path to show (default: list all)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set p.rounding=half_even (repeatable)")
    cliopts.add_common(p, out_help="write the listing (or the resolved spec) to this file")


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


def methods_rows() -> list[dict]:
    """Every registered method and what each executor supports for it (the registries of
    ``sim.methods``, ``sim.cost.methods`` and ``gpu.methods``); lists joined by spaces."""
    import gpu
    from sim.cost.methods import COST_PATHS
    from sim.methods import SIMULATORS

    out = []
    for name, m in SIMULATORS.items():
        cost = COST_PATHS.get(name).kernels if name in COST_PATHS else {}
        kp = gpu.KERNEL_PATHS.get(name) if name in gpu.KERNEL_PATHS else None
        out.append({"method": name, "sections": " ".join(sorted(m.sections)),
                    "softmax": " ".join(m.exps), "simulator_modes": " ".join(("default",) + m.modes),
                    "cost_prefill_kernels": " ".join(cost.get("prefill", ())),
                    "cost_decode_kernels": " ".join(cost.get("decode", ())),
                    "gpu_prefill": bool(kp and kp.prefill), "gpu_decode": bool(kp and kp.decode)})
    return out


def methods_table() -> str:
    """:func:`methods_rows` as markdown."""
    rows = ["| method | spec sections | softmax | simulator modes | cost kernels (prefill; decode) "
            "| GPU prefill | GPU decode |", "|---|---|---|---|---|---|---|"]
    for r in methods_rows():
        sp = lambda x: ", ".join(x.split()) or "-"
        rows.append(f"| `{r['method']}` | {sp(r['sections'])} | {sp(r['softmax'])} | "
                    f"{sp(r['simulator_modes'])} | {sp(r['cost_prefill_kernels'])}; "
                    f"{sp(r['cost_decode_kernels'])} | {'yes' if r['gpu_prefill'] else '-'} | "
                    f"{'yes' if r['gpu_decode'] else '-'} |")
    return "\n".join(rows)


def rows() -> list[dict]:
    """One row per shipped spec: name, method, digest, tile and description."""
    out = []
    for name in available_methods():
        s = load_method(name)
        out.append({"spec": name, "method": s.method, "digest": s.digest,
                    "block_m": s.tiling.block_m, "block_n": s.tiling.block_n,
                    "description": s.description})
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from qsattn import cliopts
    if args.name is None:
        cliopts.emit(cliopts.render(rows(), args.format,
                                    markdown=table() + "\n\n" + methods_table()), args.out)
        return 0
    spec = load_method(args.name, **parse_overrides(args.set))
    d = spec.to_dict()
    if args.format == "json":
        text = json.dumps(cliopts.strict_json({**d, "digest": spec.digest}), indent=1) + "\n"
    elif args.format == "csv":
        flat = {}
        for k, v in d.items():
            if isinstance(v, dict):
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        flat["digest"] = spec.digest
        text = cliopts.render([{"field": k, "value": v} for k, v in flat.items()], "csv")
    else:
        text = yaml.safe_dump(d, sort_keys=False, width=100) + f"# digest {spec.digest}\n"
    cliopts.emit(text, args.out)
    return 0
