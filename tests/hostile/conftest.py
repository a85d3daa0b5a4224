"""The hostile-input suite: malformed and extreme inputs to every public entry point.

Every case ends in exactly one of two outcomes (docs/architecture.md, "The error contract"):

- a clear error: ``ValueError``/``TypeError`` (or a documented subclass: ``ConfigError``,
  ``CorruptStoreError``, ``UnsupportedOnHardware``) whose message names the argument or the
  dotted config field (for the CLI: a non-zero exit and one line on stderr, no traceback);
- a correct result, checked against an oracle (a reference, an invariant or an equal call).

Anything else fails the case: an internal exception (ZeroDivisionError, KeyError, numpy's own
messages, RecursionError, ...), a message that names something else, or a result that is
silently wrong. The :class:`Hostile` fixture runs and counts the cases; the terminal summary
prints the tally (per file and in all), merged across xdist workers.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable

import pytest

# Kernels run through the Triton interpreter unless the GPU tests are asked for (as tests/gpu).
if os.environ.get("QSATTN_GPU_TESTS") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

ERRORS = (ValueError, TypeError)
_KEY = "hostile_tally"


class HostileFailure(AssertionError):
    """A case that neither raised a clear error nor returned a correct result."""


class Hostile:
    """Runs hostile cases and counts their outcomes under the test file's name."""

    def __init__(self, tally: Counter, where: str):
        self.tally, self.where = tally, where

    def _count(self, outcome: str) -> None:
        self.tally[f"{self.where}|{outcome}"] += 1

    def error(self, fn: Callable, names: str | Iterable[str], *, exc=ERRORS,
              start: bool = False, case: str = ""):
        """``fn()`` must raise ``exc`` whose message names one of ``names`` (as a word;
        ``start``: the message starts with it). Returns the exception."""
        names = (names,) if isinstance(names, str) else tuple(names)
        label = case or getattr(fn, "__name__", "case")
        try:
            got = fn()
        except exc as e:
            msg = str(e)
            ok = any(msg.startswith(n) if start else _names(msg, n) for n in names)
            if not ok:
                self._count("failure")
                raise HostileFailure(f"{label}: {type(e).__name__} does not name {names}: "
                                     f"{msg!r}") from e
            self._count("error")
            return e
        except Exception as e:   # an internal exception leaked
            self._count("failure")
            raise HostileFailure(f"{label}: leaked {type(e).__name__}: {e}") from e
        self._count("failure")
        raise HostileFailure(f"{label}: expected an error naming {names}, got a result "
                             f"{_short(got)}")

    def correct(self, fn: Callable, check: Callable, *, case: str = ""):
        """``fn()`` must return; ``check(result)`` must hold (a bool, or raise AssertionError).
        Returns the result."""
        label = case or getattr(fn, "__name__", "case")
        try:
            got = fn()
        except Exception as e:
            self._count("failure")
            raise HostileFailure(f"{label}: expected a correct result, got "
                                 f"{type(e).__name__}: {e}") from e
        try:
            ok = check(got)
        except AssertionError as e:
            self._count("failure")
            raise HostileFailure(f"{label}: silently wrong result: {e}") from e
        if ok is False:
            self._count("failure")
            raise HostileFailure(f"{label}: silently wrong result {_short(got)}")
        self._count("correct")
        return got

    def either(self, fn: Callable, names: str | Iterable[str], check: Callable, *,
               case: str = ""):
        """One of the two outcomes, whichever the input deserves (property-based cases):
        a clear error naming ``names``, or a result that passes ``check``."""
        names = (names,) if isinstance(names, str) else tuple(names)
        try:
            got = fn()
        except ERRORS as e:
            err = e
            return self.error(lambda: _raise(err), names, case=case)
        except Exception as e:
            self._count("failure")
            raise HostileFailure(f"{case}: leaked {type(e).__name__}: {e}") from e
        return self.correct(lambda: got, check, case=case)


def _raise(e: BaseException):
    raise e


def _names(msg: str, name: str) -> bool:
    """``name`` appears in ``msg`` as a whole word or dotted path (not inside another name)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", msg) is not None


def _short(x) -> str:
    text = repr(x)
    return text if len(text) < 160 else text[:160] + "..."


# ---- tally across tests and xdist workers -------------------------------------------------
def pytest_configure(config):
    setattr(config, _KEY, Counter())


@pytest.fixture
def hostile(request) -> Hostile:
    return Hostile(getattr(request.config, _KEY), request.node.path.stem)


def pytest_sessionfinish(session):
    cfg = session.config
    if hasattr(cfg, "workeroutput"):          # an xdist worker: hand the tally to the controller
        cfg.workeroutput[_KEY] = json.dumps(dict(getattr(cfg, _KEY)))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    data = getattr(node, "workeroutput", {}).get(_KEY)
    if data:
        getattr(node.config, _KEY).update(json.loads(data))


def pytest_terminal_summary(terminalreporter, config):
    tally = getattr(config, _KEY, None)
    if not tally:
        return
    per: dict[str, Counter] = {}
    for key, n in tally.items():
        where, outcome = key.split("|")
        per.setdefault(where, Counter())[outcome] += n
    total = Counter()
    for c in per.values():
        total.update(c)
    tr = terminalreporter
    tr.section("hostile inputs")
    for where in sorted(per):
        c = per[where]
        tr.write_line(f"{where:<22} {sum(c.values()):5d} cases: {c['error']:4d} clear errors, "
                      f"{c['correct']:4d} correct results, {c['failure']:3d} failures")
    tr.write_line(f"{'all':<22} {sum(total.values()):5d} cases: {total['error']:4d} clear "
                  f"errors, {total['correct']:4d} correct results, {total['failure']:3d} "
                  f"failures")
