"""Counted kernels: the SASS of the kernel a prediction prices, compiled for that very point.

A :class:`KernelRequest` names what would run (kernel, method spec, shape, launch, architecture);
a *counter* turns it into the kernel's specialization key (Triton's own binder decides which
arguments specialize the compile) and, on a miss, compiles it on the CPU and disassembles it
(:mod:`gpu.counting` is the counter of qsattn's kernels and of foreign Triton kernels; the sim
layer imports neither triton nor gpu, so the counter is registered, :func:`register_counter`).

Records are data, cached by key (kernel source digest, specialization, launch, architecture):

* shipped with the package: ``configs/kernels/<arch>/counted/<key>.json.gz`` (the points the
  report and the validation sweeps price; tests/gpu/test_counted.py checks they are current);
* per user: ``$QSATTN_CACHE/counted/<arch>/<key>.json.gz`` (default ``~/.cache/qsattn``).

A record holds the full ``cuobjdump -sass`` listing (control codes included), the registers per
thread, the shared memory per CTA, the warps per CTA and its source (kernel, source digest,
triton version, target, the command that counted it). :class:`CountedKernel` parses it into the
regions of :func:`sim.cost.sass.structure` and times it with :mod:`sim.cost.pipeline`.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..arch import data_path
from . import pipeline as P
from . import sass as S
from .foreign import foreign_request_key

__all__ = ["KernelRequest", "CountedKernel", "Counter", "register_counter", "counter",
           "lookup", "cache_dir", "NoCounter", "RECORD_VERSION"]

RECORD_VERSION = 1


class NoCounter(RuntimeError):
    """A prediction needs a kernel's SASS that is neither shipped nor cached, and no counter is
    registered to compile it."""


@dataclass(frozen=True)
class KernelRequest:
    """What would run: ``kernel`` (a name the counter knows, e.g. ``"prefill"``,
    ``"decode.flash_decode_group"``, ``"foreign.sage_v1"``), the architecture, the method spec
    (or None), the problem shape (``sim.cost.Shape``) and the launch config (a dict)."""

    kernel: str
    arch: str
    spec: object = None
    shape: object = None
    launch: tuple = ()
    extra: tuple = ()

    @staticmethod
    def make(kernel: str, arch: str, spec=None, shape=None, launch: dict | None = None,
             **extra) -> "KernelRequest":
        return KernelRequest(kernel, arch, spec, shape, tuple(sorted((launch or {}).items())),
                             tuple(sorted(extra.items())))

    @property
    def launch_dict(self) -> dict:
        return dict(self.launch)

    @property
    def extra_dict(self) -> dict:
        return dict(self.extra)


class Counter(Protocol):
    """What :func:`register_counter` takes: ``key(request) -> str`` (cheap; the record's cache
    key) and ``count(request) -> dict`` (compiles; the record, see the module docstring)."""

    def key(self, request: KernelRequest) -> str: ...

    def count(self, request: KernelRequest) -> dict: ...


_COUNTER: list = []


def register_counter(c: Counter) -> None:
    """Make ``c`` the counter of :func:`lookup` (replaces a previous one)."""
    if not (callable(getattr(c, "key", None)) and callable(getattr(c, "count", None))):
        raise TypeError(f"counter: expected an object with key(request) and count(request), "
                        f"got {type(c).__name__}")
    _COUNTER[:] = [c]


def counter() -> Counter:
    if not _COUNTER:
        raise NoCounter("calibrated tier: the prediction needs the SASS of the kernel that would "
                        "run, and no kernel counter is registered; call gpu.counting.install() "
                        "(the qsattn commands do), which compiles kernels on the CPU with triton")
    return _COUNTER[0]


def cache_dir() -> Path:
    """Per-user record cache (``$QSATTN_CACHE/counted``, default ``~/.cache/qsattn/counted``)."""
    root = os.environ.get("QSATTN_CACHE") or Path.home() / ".cache" / "qsattn"
    return Path(root) / "counted"


def shipped_path(arch: str, key: str) -> Path:
    return data_path(arch, "mixes").parent / "counted" / f"{key}.json.gz"


def cached_path(arch: str, key: str) -> Path:
    return cache_dir() / arch / f"{key}.json.gz"


def read_record(path: Path) -> dict:
    try:
        with gzip.open(path, "rt") as f:
            rec = json.load(f)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a counted-kernel record ({e}); delete it to recount")
    for k in ("version", "key", "arch", "warps", "registers", "shared", "listing", "source"):
        if k not in rec:
            raise ValueError(f"{path}: counted-kernel record without {k!r}; delete it to recount")
    if rec["version"] != RECORD_VERSION:
        raise ValueError(f"{path}: record version {rec['version']}, expected {RECORD_VERSION}; "
                         f"delete it to recount")
    return rec


def write_record(path: Path, rec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    # mtime 0: the same record compresses to the same bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(rec, sort_keys=True).encode())
    os.replace(tmp, path)
    return path


_LOADED: dict = {}


def request_key(request: KernelRequest) -> str:
    """The record key of ``request``: computed here for a foreign kernel
    (:func:`sim.cost.foreign.launch_key`), by the counter for ours."""
    if request.kernel.startswith("foreign."):
        return foreign_request_key(request)
    return counter().key(request)


def lookup(request: KernelRequest) -> "CountedKernel":
    """The counted kernel of ``request``: shipped record, else cached, else counted now (and
    cached)."""
    key = request_key(request)
    got = _LOADED.get((request.arch, key))
    if got is not None:
        return got
    for path in (shipped_path(request.arch, key), cached_path(request.arch, key)):
        if path.is_file():
            rec = read_record(path)
            break
    else:
        rec = counter().count(request)
        rec = dict(rec, version=RECORD_VERSION, key=key, arch=request.arch)
        write_record(cached_path(request.arch, key), rec)
    ck = CountedKernel.from_record(rec)
    _LOADED[(request.arch, key)] = ck
    return ck


@dataclass(frozen=True, eq=False)
class CountedKernel:
    """One compiled kernel: its SASS, resources and source (see the module docstring)."""

    key: str
    arch: str
    name: str
    warps: int
    registers: int
    shared: int
    listing: str = field(repr=False)
    source: dict = field(default_factory=dict)
    # warp-specialized kernels: the partition the model runs and its warps (the workers feed
    # it through mbarriers, taken as ready: their issue slots are left out)
    partition: str | None = None
    partition_warps: int | None = None

    @staticmethod
    def from_record(rec: dict) -> "CountedKernel":
        part = rec.get("partition") or {}
        return CountedKernel(rec["key"], rec["arch"], rec.get("name", rec["key"]),
                             int(rec["warps"]), int(rec["registers"]), int(rec["shared"]),
                             rec["listing"], dict(rec["source"]), part.get("name"),
                             part.get("warps"))

    @property
    def sim_warps(self) -> int:
        """Warps of one CTA the pipeline model runs."""
        return self.partition_warps or self.warps

    @functools.cached_property
    def instrs(self) -> list:
        return S.parse(self.listing)

    @functools.cached_property
    def regions(self) -> tuple:
        return S.structure(self.instrs, self.partition)

    @functools.cached_property
    def loops(self) -> list:
        return S.loops_of(self.regions)

    def stream(self, trips) -> list:
        return S.flatten(self.regions, trips)

    def mix(self, trips) -> dict:
        """Thread instructions by mix class (``sim.cost.sass.CLASSES``) of one warp executing
        the body with ``trips``, times 32 threads."""
        out = dict.fromkeys(S.CLASSES, 0.0)
        cls = [S.classify(x.opcode) for x in self.instrs]
        for i in self.stream(trips):
            out[cls[i]] += 32.0
        return out

    def timing(self, params: P.SMParams, ctas: int, base: dict, vary: tuple) -> "CtaTiming":
        """Cycles of ``ctas`` co-resident CTAs as a linear function of the trips of the loops
        in ``vary`` (others at their ``base`` count): see :class:`CtaTiming`."""
        return _timing(self, params, ctas, tuple(sorted(base.items())), vary)


@dataclass(frozen=True)
class CtaTiming:
    """``cycles(trips) = fixed + sum_i per_iter[i] * trips[i]`` for ``ctas`` co-resident CTAs
    running in step: measured by the pipeline model at the base trips and at one more iteration
    of each varied loop (the difference is that loop's steady-state iteration)."""

    ctas: int
    fixed: float
    per_iter: dict
    issued: float

    def cycles(self, trips: dict) -> float:
        return self.fixed + sum(c * trips.get(i, 0) for i, c in self.per_iter.items())


_DECODED: dict = {}
_TIMINGS: dict = {}


def _decoded(ck: CountedKernel, params: P.SMParams) -> P.Decoded:
    k = (id(ck), params.key())
    d = _DECODED.get(k)
    if d is None:
        d = _DECODED[k] = P.decode(ck.instrs, params)
    return d


TIMING_VERSION = 2        # bump when the pipeline model's rules change: cached timings go stale


def _timing_path(k: tuple) -> Path:
    import hashlib
    h = hashlib.sha256(repr((TIMING_VERSION,) + k).encode()).hexdigest()[:24]
    return cache_dir().parent / "timings" / f"{h}.json"


def _timing(ck: CountedKernel, params: P.SMParams, ctas: int, base: tuple, vary: tuple):
    k = (ck.arch, ck.key, params.key(), ctas, base, vary)
    got = _TIMINGS.get(k)
    if got is not None:
        return got
    path = _timing_path(k)
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            got = _TIMINGS[k] = CtaTiming(d["ctas"], d["fixed"],
                                          {int(i): v for i, v in d["per_iter"].items()},
                                          d["issued"])
            return got
        except (OSError, ValueError, KeyError):
            pass                                   # recompute a damaged entry
    dec = _decoded(ck, params)
    trips = dict(base)
    known = {lp.index for lp in ck.loops}
    bad = (set(trips) | set(vary)) - known
    if bad or set(trips) != known:
        raise ValueError(f"trips: kernel {ck.name!r} has loops {sorted(known)}, got base "
                         f"{sorted(trips)} and varied {sorted(vary)}")
    t0 = P.simulate(dec, ck.stream(trips), ctas=ctas, warps=ck.sim_warps)
    per = {}
    for i in vary:
        more = dict(trips)
        more[i] += 1
        t1 = P.simulate(dec, ck.stream(more), ctas=ctas, warps=ck.sim_warps)
        per[i] = max(0.0, t1["cycles"] - t0["cycles"])
    fixed = t0["cycles"] - sum(per[i] * trips[i] for i in vary)
    got = _TIMINGS[k] = CtaTiming(ctas, max(0.0, fixed), per, t0["issued"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"ctas": got.ctas, "fixed": got.fixed, "issued": got.issued,
                                   "per_iter": got.per_iter}))
        os.replace(tmp, path)
    except OSError:
        pass                                       # a read-only home: no disk cache
    return got
