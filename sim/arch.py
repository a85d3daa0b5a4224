"""GPU architectures and the kernels' per-architecture data, as data.

``configs/kernels/archs.yaml`` lists the architectures (compile target, compute capabilities);
``configs/kernels/<arch>/`` holds the kernels' data for each: ``launch.yaml`` (default launches),
``mixes.yaml`` (prefill SASS mixes), ``decode.yaml`` (decode SASS tables). The launchers
(:mod:`gpu`) and the cost model (:mod:`sim.cost`) both read them from here, so they cannot
drift apart. A missing file is a clear error naming the file and the command that generates it.

>>> arch("hopper").sm, arch_of_capability((8, 0)).name
(90, 'ampere')
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check_launch
from .schema import ConfigError, build, load_yaml, meta
from .spec import config_dir

__all__ = ["Arch", "arch", "archs", "arch_of_capability", "kernel_data", "prefill_launch",
           "prefill_kernel_launch", "DATA_FILES", "KERNELS", "GLUON_OPTIONS", "GLUON_DEFAULTS",
           "TENSOR_DTYPES",
           "missing_kernel_data"]

# Tensor-core operand dtypes the cost model knows (a Hardware has a tc_<dtype> rate for each).
TENSOR_DTYPES = ("fp16", "bf16", "tf32", "int8", "int4", "fp8")

# file -> how to (re)generate it
DATA_FILES = {
    "launch": "tune on a GPU of this architecture (`qsattn bench` prints the launch sweep) or "
              "copy another architecture's table, saying so in its header",
    "mixes": "python -m gpu.sass --arch {arch} --write   (compiles on any CPU)",
    "decode": "python -m gpu.sass --arch {arch} --decode --write   (compiles on any CPU)",
    "pipeline": "write the SM pipeline latencies of the architecture by hand, each with its "
                "source (configs/kernels/hopper/pipeline.yaml shows the fields)",
}


@dataclass(frozen=True)
class Arch:
    """One SM generation."""

    name: str = field(metadata=meta("architecture id (key in archs.yaml)"))
    sm: int = field(metadata=meta("compile target sm_XX", min=70, max=200))
    capabilities: tuple[str, ...] = field(metadata=meta("CUDA compute capabilities, 'major.minor'"))
    async_mma: bool = field(metadata=meta("warpgroup MMA reads shared-memory operands itself"))
    tensor_dtypes: tuple[str, ...] = field(metadata=meta(
        "operand dtypes its tensor cores multiply (hardware tc_<dtype> rates); of "
        "fp16, bf16, tf32, int8, int4, fp8"))

    def __post_init__(self):
        bad = [d for d in self.tensor_dtypes if d not in TENSOR_DTYPES]
        if bad or not self.tensor_dtypes:
            raise ConfigError(str(config_dir() / "kernels" / "archs.yaml"),
                              f"{self.name}.tensor_dtypes", f"a non-empty subset of {TENSOR_DTYPES}",
                              list(self.tensor_dtypes))

    @property
    def target(self) -> str:
        return f"sm_{self.sm}"


@functools.lru_cache(maxsize=1)
def archs() -> dict[str, Arch]:
    """Every known architecture by name."""
    path = config_dir() / "kernels" / "archs.yaml"
    doc = load_yaml(path)
    return {name: build(Arch, dict(d, name=name) if isinstance(d, dict) else d, where=str(path),
                        path=name) for name, d in doc.items()}


def arch(name: str) -> Arch:
    known = archs()
    if name not in known:
        raise ValueError(f"arch: expected one of {sorted(known)}, got {name!r}")
    return known[name]


def arch_of_capability(cc: tuple[int, int]) -> Arch:
    """The architecture of a CUDA compute capability ``(major, minor)``."""
    key = f"{cc[0]}.{cc[1]}"
    for a in archs().values():
        if key in a.capabilities:
            return a
    raise ValueError(f"compute capability {key}: no architecture in "
                     f"{config_dir() / 'kernels' / 'archs.yaml'} lists it")


@functools.lru_cache(maxsize=32)
def kernel_data(arch_name: str, name: str) -> dict:
    """``configs/kernels/<arch>/<name>.yaml`` as a mapping (cached)."""
    if name not in DATA_FILES:
        raise ValueError(f"name: expected one of {sorted(DATA_FILES)}, got {name!r}")
    a = arch(arch_name)
    path = config_dir() / "kernels" / a.name / f"{name}.yaml"
    if not path.is_file():
        how = DATA_FILES[name].format(arch=a.name)
        raise FileNotFoundError(f"{path}: the {name} data of the {a.name} architecture is missing; "
                                f"generate it with: {how}")
    return load_yaml(path)


_LAUNCH_KEYS = {"block_m", "num_warps", "num_stages"}
KERNELS = ("triton", "gluon")
# Launch-table options of the Gluon sm_90 forward (gpu/kernels/flash_fwd_sm90.py) and their
# types; ``block_n`` maps a spec block_n to overrides of these for specs with that tile.
GLUON_OPTIONS = {"merged": bool, "unroll": bool, "one_loop": bool, "k_perm": bool,
                 "defer_pv": bool, "skip_rescale": bool}
# the value of each option a launch leaves unset (gpu.prefill_sm90 runs these; the cost model
# counts the same kernel)
GLUON_DEFAULTS = {"merged": False, "unroll": True, "one_loop": False, "k_perm": True,
                  "defer_pv": False, "skip_rescale": False}


def _check_entry(where: str, path: str, launch) -> None:
    if not isinstance(launch, dict) or not _LAUNCH_KEYS <= set(launch) or \
            not set(launch) <= _LAUNCH_KEYS | {"kernel", "gluon"}:
        raise ConfigError(where, path, f"a launch with keys {sorted(_LAUNCH_KEYS)} (and "
                          f"optionally kernel, gluon)", launch)
    kernel = launch.get("kernel", "triton")
    if kernel not in KERNELS:
        raise ConfigError(where, f"{path}.kernel", f"one of {list(KERNELS)}", kernel)
    g = launch.get("gluon")
    if g is None:
        return
    if kernel != "gluon":
        raise ConfigError(where, f"{path}.gluon", "gluon options only with kernel: gluon", g)
    if launch["block_m"] != 128:
        raise ConfigError(where, f"{path}.block_m", "128 (the Gluon forward's CTA rows)",
                          launch["block_m"])

    def opts(d, at):
        if not isinstance(d, dict):
            raise ConfigError(where, at, "a mapping of Gluon options", d)
        for k, v in d.items():
            if k == "block_n" and at.endswith(".gluon"):
                if not isinstance(v, dict):
                    raise ConfigError(where, f"{at}.block_n", "a mapping block_n -> options", v)
                for bn, o in v.items():
                    opts(o, f"{at}.block_n.{bn}")
            elif k not in GLUON_OPTIONS or not isinstance(v, GLUON_OPTIONS[k]):
                raise ConfigError(where, f"{at}.{k}", f"one of {sorted(GLUON_OPTIONS)} with a "
                                  f"{GLUON_OPTIONS.get(k, bool).__name__} value", v)
    opts(g, f"{path}.gluon")


def _launch_entry(arch_name: str, method: str, head_dim: int) -> dict:
    doc = kernel_data(arch_name, "launch")
    where = str(config_dir() / "kernels" / arch_name / "launch.yaml")
    pre = doc.get("prefill")
    if not isinstance(pre, dict) or "default" not in pre:
        raise ConfigError(where, "prefill.default", "a mapping head_dim -> launch", pre)
    key = method if method in pre else "default"
    table = pre[key]
    if not isinstance(table, dict) or not table:
        raise ConfigError(where, f"prefill.{key}", "a mapping head_dim -> launch", table)
    for d, launch in table.items():
        if not isinstance(d, int):
            raise ConfigError(where, f"prefill.{key}.{d}", "an integer head dim", d)
        _check_entry(where, f"prefill.{key}.{d}", launch)
        try:    # the values by the rule every launcher applies to a caller's launch
            check_launch({k: v for k, v in launch.items() if k in _LAUNCH_KEYS}, "prefill")
        except (TypeError, ValueError) as e:
            raise ConfigError(where, f"prefill.{key}.{d}", "a valid launch", str(e)) from None
    fits = [d for d in table if d <= head_dim]
    return table[max(fits) if fits else min(table)]


def prefill_launch(arch_name: str, method: str, head_dim: int) -> dict:
    """The prefill forward's default program config on ``arch_name`` for ``method`` (its own
    table, else ``default``) at ``head_dim`` (the entry for the largest tabulated head dim <=
    head_dim, else the smallest): ``{block_m, num_warps, num_stages}``, what the cost model
    prices (for a Gluon entry: 128 rows, the consumer warps, the K/V ring depth)."""
    e = _launch_entry(arch_name, method, head_dim)
    return {k: e[k] for k in sorted(_LAUNCH_KEYS)}


def prefill_kernel_launch(arch_name: str, method: str, head_dim: int,
                          block_n: int | None = None) -> dict:
    """The full table entry the launchers run: :func:`prefill_launch`'s keys plus ``kernel``
    (``triton``: gpu/kernels/flash_fwd.py, ``gluon``: gpu/kernels/flash_fwd_sm90.py) and, for
    Gluon, ``gluon`` (its options, with the ``block_n`` overrides for that spec tile applied)."""
    e = _launch_entry(arch_name, method, head_dim)
    out = {k: e[k] for k in sorted(_LAUNCH_KEYS)}
    out["kernel"] = e.get("kernel", "triton")
    if out["kernel"] == "gluon":
        g = dict(e.get("gluon") or {})
        per_bn = g.pop("block_n", {}) or {}
        g.update(per_bn.get(block_n, {}))
        out["gluon"] = g
    return out


def missing_kernel_data(arch_name: str) -> dict[str, str]:
    """``{file: how to generate it}`` for each per-architecture data file that is absent (empty
    when the architecture is complete); the cost model's tiled tiers and the launchers need all
    three."""
    a = arch(arch_name)
    out = {}
    for name, how in DATA_FILES.items():
        path = config_dir() / "kernels" / a.name / f"{name}.yaml"
        if not path.is_file():
            out[str(path)] = how.format(arch=a.name)
    return out


def data_path(arch_name: str, name: str) -> Path:
    """Where ``kernel_data(arch_name, name)`` lives (for generators that write it)."""
    return config_dir() / "kernels" / arch(arch_name).name / f"{name}.yaml"
