"""Make triton 3.6's CPU interpreter work with numpy >= 2.4.

The interpreter holds every scalar (kernel int arguments, ``tl.program_id``) as a 1-element 1-D
numpy array and implements ``tensor.__index__`` as ``int(data)``; numpy 2.4 turned ``int()`` of
a 1-D array into an error, so any ``range(lo, hi, step)`` with runtime bounds fails inside the
interpreter ("only 0-dimensional arrays can be converted to Python scalars"). :func:`install`
re-registers ``__index__`` to read the single element. It only touches the interpreter's
per-launch language patching, never compiled kernels.
"""
from __future__ import annotations

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patch_lang_tensor
    _installed = True
