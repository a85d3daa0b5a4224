"""Scale-out of the accuracy studies over a Ray cluster (``--ray ADDRESS``); optional.

The unit of work is a **sample** (a window, a decode sample, a passkey trial, or a synthetic
input): a worker runs every variant still missing on its sample, so paired differences are
always computed from one worker's numbers. The driver keeps the one results store: it plans the
missing points, ships the work, and adds the rows that come back, so an interrupted distributed
run resumes like a local one (single-process or distributed, the same store and keys).

``qsattn model``: one actor per worker process holds the model; the calibration is computed once
by the driver and shipped to every actor as file bytes (its content digest travels in every
point key, and the driver refuses rows whose code digest differs from its own). Each actor runs
torch with the driver's thread count, so results equal the single-process run's.

``qsattn accuracy``: plain tasks, one per input (every variant on it).

ADDRESS: ``local`` starts a Ray instance on this machine (``ray.init()``), anything else is
passed to ``ray.init(address=...)`` (``auto``, ``ray://host:port``, ...). Without Ray installed
the option fails with the install command; the default runs never import Ray.
"""
from __future__ import annotations

import os
from typing import Callable

__all__ = ["init", "run_actors", "run_tasks"]


def init(address: str):
    """Connect to (or, with ``local``, start) a Ray cluster; returns the ``ray`` module."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"--ray: expected a cluster address, 'auto' or 'local', got {address!r}")
    try:
        import ray
    except ImportError:
        raise ValueError("--ray: Ray is not installed; run `python -m pip install 'ray>=2.40'` "
                         "(or the project's [ray] extra)") from None
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            ray.init(**kw)
        else:
            ray.init(address=address, **kw)
    return ray


def run_actors(worker_cls, init_args: tuple, items: list, address: str, sink: Callable, *,
               threads: int = 1, check: Callable | None = None) -> None:
    """Start ``worker_cls(*init_args)`` actors (one per ``threads`` CPUs of the cluster, each
    with that many threads) and ``sink`` every ``actor.run(*item)`` result as it finishes.
    ``check(actors)`` runs once after start-up (e.g. code digests)."""
    ray = init(address)
    if not items:
        return
    n_workers = max(1, min(len(items), int(ray.cluster_resources().get("CPU", 1)) // threads))
    env = {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "PYTHONPATH": os.pathsep.join(p for p in (_repo_root(),
                                                      os.environ.get("PYTHONPATH")) if p)}}
    Worker = ray.remote(num_cpus=threads)(worker_cls).options(runtime_env=env)
    workers = [Worker.remote(*init_args) for _ in range(n_workers)]
    try:
        if check is not None:
            check(ray, workers)
        pool = ray.util.ActorPool(workers)
        for result in pool.map_unordered(lambda w, item: w.run.remote(*item), items):
            sink(result)
    finally:
        for w in workers:
            ray.kill(w)


def run_tasks(fn: Callable, items: list, address: str, sink: Callable) -> None:
    """``sink(fn(item))`` for every item, ``fn`` run as Ray tasks (results as they finish)."""
    ray = init(address)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (_repo_root(), os.environ.get("PYTHONPATH")) if p)}}
    remote = ray.remote(num_cpus=1)(fn).options(runtime_env=env)
    pending = [remote.remote(it) for it in items]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        sink(ray.get(done[0]))


def _repo_root() -> str:
    from qsattn import provenance

    return str(provenance.ROOT)
