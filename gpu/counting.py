"""The kernel counter of the cost model's calibrated tier (:mod:`sim.cost.counted`).

For a :class:`sim.cost.counted.KernelRequest` it builds the argument set the real launch would
pass, on ``meta`` tensors of the request's shape (no GPU, no data), lets Triton's JIT binder
specialize it exactly as ``kernel[grid](...)`` would on a device (divisibility and equal-to-1
attributes, constexprs, options), and

* ``key``: a digest of the kernel's ``cache_key`` (its source and the sources of every
  ``@triton.jit`` function it calls), the specialization, the options and the target: two
  points with the same key run the same binary;
* ``count``: compiles it for the architecture's target on the CPU, disassembles the cubin with
  the triton wheel's ``cuobjdump -sass -res-usage`` and returns the record (listing with
  control codes, registers, shared memory, warps, source).

Kernels it knows (``KERNELS``): ``prefill`` (gpu/kernels/flash_fwd.py ``attn_fwd_kernel`` with
:func:`gpu.prefill.prefill_call`'s arguments) and the foreign kernels registered in
:mod:`gpu.foreign`. :func:`install` registers it with the cost model (the qsattn commands do).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from sim.arch import arch as arch_info
from sim.cost.counted import KernelRequest, register_counter

__all__ = ["install", "KernelCounter", "KERNELS", "register_kernel", "bound_call"]


class BoundCall:
    """A JIT function with the arguments of one launch: ``fn``, positional ``args``, keyword
    ``kwargs`` (constexprs and ``num_warps``/``num_stages``/...), a ``name``, whether it is a
    Gluon kernel, and for a warp-specialized kernel the ``partition`` the cost model runs
    (``{"name": "default", "warps": n}``: the consumers; the producer feeds them)."""

    __slots__ = ("fn", "args", "kwargs", "name", "gluon", "partition")

    def __init__(self, fn, args, kwargs, name, gluon=False, partition=None):
        self.fn, self.args, self.kwargs, self.name = fn, tuple(args), dict(kwargs), name
        self.gluon, self.partition = bool(gluon), partition


# kernel name -> builder(request) -> BoundCall
KERNELS: dict[str, Callable[[KernelRequest], BoundCall]] = {}


def register_kernel(name: str):
    """Decorator: ``builder(request) -> BoundCall`` for requests of kernel ``name``."""
    def deco(fn):
        KERNELS[name] = fn
        return fn
    return deco


def _meta(*shape, dtype=None):
    import torch
    return torch.empty(shape, dtype=dtype or torch.float16, device="meta")


@register_kernel("prefill")
def _prefill(req: KernelRequest) -> BoundCall:
    """The prefill forward the launcher would run for ``req.launch`` (``kernel: triton``:
    gpu/kernels/flash_fwd.py ``attn_fwd_kernel`` with :func:`gpu.prefill.prefill_call`'s
    arguments; ``kernel: gluon``: the sm_90 kernel with :func:`gpu.prefill_sm90.sm90_call`'s),
    on meta tensors of the request's shape, through :func:`gpu.prefill.forward_kernel`."""
    import torch
    from sim.checks import check_sm_scale
    from . import common, prefill
    from .methods import KERNEL_PATHS
    spec, s, lc = req.spec, req.shape, req.launch_dict
    KERNEL_PATHS.get(spec.method).check_spec(spec)
    B, H, Hk, Lq, Lk, D = s.batch, s.q_heads, s.kv_heads, s.q_len, s.kv_len, s.head_dim
    q, k, v = _meta(B, H, Lq, D), _meta(B, Hk, Lk, D), _meta(B, Hk, Lk, D)
    kernel, cfg = prefill.forward_kernel(spec, D, "float16", "meta", lc)
    kw = dict(causal=s.causal, sm_scale=check_sm_scale(None, D), out_dtype=torch.float16)
    if spec.integer:
        bn = spec.tiling.block_n
        bm = 128 if kernel == "gluon" else cfg["block_m"]
        ops = (common.empty_quantized(q, spec.q, bm), common.empty_quantized(k, spec.k, bn),
               common.empty_quantized(v, spec.v, bn, transpose=True))
        raw = {}
    else:
        ops, raw = (None, None, None), dict(q=q, k=k, v=v)
    if kernel == "gluon":
        from .prefill_sm90 import sm90_call
        call = sm90_call(*ops, spec, stages=cfg["num_stages"], options=cfg["gluon"], **raw,
                         **kw)
        # the consumers (two warpgroups: one 8-warp partition, or two 4-warp ones running
        # the same code) are what the model runs
        part = {"name": "default", "warps": 8}
    else:
        call = prefill.prefill_call(*ops, spec, launch=cfg or None, **raw, **kw)
        part = None
    return BoundCall(call.fn(), call.args, dict(call.constexprs, **call.options),
                     "attn_fwd_sm90_kernel" if kernel == "gluon" else "attn_fwd_kernel",
                     gluon=kernel == "gluon", partition=part)


def bound_call(req: KernelRequest) -> BoundCall:
    if req.kernel.startswith("foreign."):
        from . import foreign
        return BoundCall(*foreign.bound_call(req))
    b = KERNELS.get(req.kernel)
    if b is None:
        raise ValueError(f"kernel request: unknown kernel {req.kernel!r}; known: "
                         f"{sorted(KERNELS)} and foreign.<name> (gpu.foreign)")
    return b(req)


def _bind(call: BoundCall, arch: str):
    """(backend, bound args, specialization, options, target) as JITFunction.run computes."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    fn = call.fn
    tgt = GPUTarget("cuda", arch_info(arch).sm, 32)
    backend = make_backend(tgt)
    kwargs = dict(call.kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*call.args, **kwargs)
    return backend, kwargs, bound, specialization, options, tgt


def _key(call: BoundCall, arch: str) -> str:
    from triton.runtime.jit import compute_cache_key
    _, _, _, specialization, options, tgt = _bind(call, arch)
    text = "|".join((call.fn.cache_key, compute_cache_key({}, specialization, options),
                     str(tgt)))
    return f"{call.name}-{arch_info(arch).target}-" + \
        hashlib.sha256(text.encode()).hexdigest()[:16]


def _compile(call: BoundCall, arch: str):
    import triton
    from triton.compiler import ASTSource
    if call.gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as ASTSource  # noqa: F811
    backend, kwargs, bound, specialization, options, tgt = _bind(call, arch)
    fn = call.fn
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=tgt,
                          options=options.__dict__)


def _in_subprocess(req: KernelRequest) -> str:
    """Key of ``req``, its record counted into the user cache when neither shipped nor cached,
    by a child process without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled:
    under the interpreter every ``@triton.jit`` function, triton's own included, is an
    interpreter object)."""
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in
                                                        env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-m", "gpu.counting"], input=pickle.dumps(req),
                       capture_output=True, env=env, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"gpu.counting: counting {req.kernel!r} in a child process failed:\n"
                           f"{r.stderr.decode(errors='replace')[-3000:]}")
    return r.stdout.decode().strip().splitlines()[-1]


def request_key(req: KernelRequest) -> str:
    if req.kernel.startswith("foreign."):
        from sim.cost.counted import request_key as sim_key
        return sim_key(req)
    return _key(bound_call(req), req.arch)


def _ensure_counted(req: KernelRequest) -> str:
    """Key of ``req`` with its record present in the shipped data or the user cache."""
    from sim.cost.counted import RECORD_VERSION, cached_path, shipped_path, write_record
    key = request_key(req)
    if not (shipped_path(req.arch, key).is_file() or cached_path(req.arch, key).is_file()):
        rec = dict(KernelCounter().count(req), version=RECORD_VERSION, key=key, arch=req.arch)
        write_record(cached_path(req.arch, key), rec)
    return key


class KernelCounter:
    """The counter :func:`install` registers (see the module docstring)."""

    def __init__(self):
        self._keys: dict = {}

    def key(self, req: KernelRequest) -> str:
        from .common import interpreting
        if not interpreting() or req.kernel.startswith("foreign."):
            return request_key(req)
        got = self._keys.get(req)
        if got is None:
            got = self._keys[req] = _in_subprocess(req)
        return got

    def count(self, req: KernelRequest) -> dict:
        from .common import interpreting
        if interpreting():
            from sim.cost.counted import cached_path, read_record, shipped_path
            key = self.key(req)
            paths = (shipped_path(req.arch, key), cached_path(req.arch, key))
            if not any(p.is_file() for p in paths):
                # a foreign kernel's key needs no compile (key() made no child): count it now
                _in_subprocess(req)
            for path in paths:
                if path.is_file():
                    return read_record(path)
            raise RuntimeError(f"gpu.counting: the child process did not write {key}")
        import triton
        from .sass import disassemble, git_revision
        call = bound_call(req)
        if req.kernel.startswith("foreign."):
            _check_foreign_class(req, call)
        ck = _compile(call, req.arch)
        listing, regs = disassemble(ck.asm["cubin"])
        src = getattr(call.fn, "fn", None)
        return {
            "name": call.name,
            "partition": call.partition,
            "warps": int(ck.metadata.num_warps),
            "registers": regs,
            "shared": int(ck.metadata.shared),
            "listing": listing,
            "source": {
                "kernel": f"{getattr(src, '__module__', '?')}.{call.name}",
                "source_digest": call.fn.cache_key,
                "triton": triton.__version__,
                "target": arch_info(req.arch).target,
                "launch": req.launch_dict,
                "num_stages": int(getattr(ck.metadata, "num_stages", 0) or 0),
                "git_revision": git_revision(),
                "command": "gpu.counting (calibrated-tier prediction)",
            },
        }


def _check_foreign_class(req: KernelRequest, call: BoundCall) -> None:
    """Triton's binder must specialize the integer arguments as sim.cost.foreign's key assumes
    (divisibility by 16, equal to 1, 64-bit), else two different binaries would share a key."""
    from sim.cost.foreign import arg_values, value_class
    from .foreign import launch_of
    desc, la = launch_of(req)
    _, _, _, specialization, _, _ = _bind(call, req.arch)
    for i, (a, (ty, attr)) in enumerate(zip(arg_values(la, desc.env(req.shape)),
                                            specialization)):
        if a[0] != "int":
            continue
        want = value_class(a[1])
        got = ("L" if ty == "i64" else "") + ("1" if ty == "constexpr" and attr == 1 else
                                              "16" if attr == "D" else "x")
        if want != got:
            raise RuntimeError(f"foreign kernel {req.kernel!r}: argument {i} = {a[1]} is "
                               f"specialized as {ty!r}/{attr!r} by triton, the key assumes "
                               f"{want!r}; sim.cost.foreign.value_class needs updating")


def install() -> KernelCounter:
    """Register the counter with sim.cost.counted; returns it."""
    c = KernelCounter()
    register_counter(c)
    return c


def main() -> int:
    """``python -m gpu.counting`` < pickled KernelRequest: print its key after making sure its
    record is shipped or cached (the interpreter's path, :func:`_in_subprocess`)."""
    import pickle
    import sys
    req = pickle.loads(sys.stdin.buffer.read())
    print(_ensure_counted(req))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
