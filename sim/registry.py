"""A registry of per-method entries, keyed by ``spec.method``.

Each executor keeps one: the simulator (:data:`sim.methods.SIMULATORS`), the cost model
(:data:`sim.cost.methods.COST_PATHS`) and the kernels (:data:`gpu.methods.KERNEL_PATHS`). An
executor's shared machinery asks its registry for the method's entry and never branches on a
method name; the application asks the registries what they support instead of keeping lists.

>>> r = Registry("simulator")
>>> r.register("toy", object())
>>> "toy" in r, r.names()
(True, ('toy',))
>>> r.get("nope")
Traceback (most recent call last):
...
ValueError: method: the simulator has no path for 'nope'; registered methods: ['toy']
"""
from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Method name -> entry. ``what`` names the executor in error messages."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, method: str, entry: T) -> T:
        """Add ``entry`` for ``method``; a second entry for the same method is an error."""
        if not isinstance(method, str) or not method.isidentifier():
            raise ValueError(f"method: expected an identifier, got {method!r}")
        if method in self._entries:
            raise ValueError(f"method: the {self.what} already has a path for {method!r}")
        self._entries[method] = entry
        return entry

    def unregister(self, method: str) -> None:
        """Remove ``method`` (tests that add a toy method clean up with it)."""
        self._entries.pop(method, None)

    def get(self, method: str) -> T:
        try:
            return self._entries[method]
        except (KeyError, TypeError):
            raise ValueError(f"method: the {self.what} has no path for {method!r}; registered "
                             f"methods: {sorted(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __contains__(self, method: object) -> bool:
        return method in self._entries

    def items(self):
        return sorted(self._entries.items())
