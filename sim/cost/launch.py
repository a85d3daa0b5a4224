"""The kernels' default launch configs (``configs/kernels/launch_sm90.yaml``), read by both the
launcher (``gpu.ops.default_launch``) and the cost model, so they cannot drift apart."""
from __future__ import annotations

from functools import lru_cache

from ..schema import ConfigError, load_yaml
from ..spec import config_dir

TABLE = "kernels/launch_sm90.yaml"  # under sim.spec.config_dir()
_KEYS = {"block_m", "num_warps", "num_stages"}


@lru_cache(maxsize=None)
def _table() -> dict[int, dict]:
    path = config_dir() / TABLE
    doc = load_yaml(path).get("prefill")
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(str(path), "prefill", "a mapping head_dim -> launch", doc)
    out = {}
    for d, launch in doc.items():
        if not isinstance(d, int) or not isinstance(launch, dict) or set(launch) != _KEYS:
            raise ConfigError(str(path), f"prefill.{d}", f"a launch with keys {sorted(_KEYS)}",
                              launch)
        out[d] = dict(launch)
    return out


def prefill_launch(head_dim: int) -> dict:
    """The forward launch for ``head_dim`` (the entry for the largest tabulated head dim that is
    <= head_dim, else the smallest)."""
    table = _table()
    fits = [d for d in table if d <= head_dim]
    return dict(table[max(fits) if fits else min(table)])
