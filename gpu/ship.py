"""Ship counted records of a described foreign kernel with the package.

``python -m gpu.ship NAME --arch ARCH --shape B,Hq,Hkv,Lq,Lk,D [--causal]`` compiles every Triton
launch of ``configs/kernels/foreign/NAME.yaml`` active at the shape for the architecture (on the
CPU, :mod:`gpu.counting`; a file source under ``$QSATTN_FOREIGN_SRC``, :mod:`gpu.foreign`) and
writes the records to ``configs/kernels/<arch>/counted/``: predictions of the kernel
(:func:`sim.cost.predict_foreign`) then need neither triton nor the source, which is never
copied into qsattn (a record is the SASS listing and where it came from).
"""
from __future__ import annotations

import sys
from pathlib import Path

from sim.cost.counted import (RECORD_VERSION, KernelRequest, request_key, shipped_path,
                              write_record)
from sim.cost.foreign import load_foreign

from .counting import KernelCounter

__all__ = ["ship"]


def ship(name: str, arch: str, shape, command: str = "") -> list[Path]:
    """Count every Triton launch of foreign kernel ``name`` active at ``shape`` for ``arch`` and
    store the records with the package (``configs/kernels/<arch>/counted/``), so that predictions
    of it need neither triton nor the kernel's source. A record already shipped is kept."""
    desc = load_foreign(name)
    out = []
    for la in desc.active(shape):
        if not la.triton:
            continue
        req = KernelRequest.make(f"foreign.{name}.{la.name}", arch, shape=shape)
        key = request_key(req)
        path = shipped_path(arch, key)
        if not path.is_file():
            rec = KernelCounter().count(req)
            rec["source"] = dict(rec["source"], kernel=f"{desc.name}.{la.name}",
                                 foreign_source=desc.source, path=la.path or la.module,
                                 sha256=la.sha256, command=command or rec["source"]["command"])
            write_record(path, dict(rec, version=RECORD_VERSION, key=key, arch=arch))
        out.append(path)
    return out


def main(argv=None) -> int:
    """``python -m gpu.ship NAME --arch ARCH --shape B,Hq,Hkv,Lq,Lk,D [--causal]``: ship the
    counted records of a described foreign kernel at a shape (see :func:`ship`)."""
    import argparse
    from sim.cost import Shape
    ap = argparse.ArgumentParser(prog="python -m gpu.ship", description=ship.__doc__.split(
        "\n")[0])
    ap.add_argument("name", help="a description of configs/kernels/foreign/")
    ap.add_argument("--arch", action="append", required=True, help="architecture (repeatable)")
    ap.add_argument("--shape", action="append", required=True,
                    help="B,Hq,Hkv,Lq,Lk,D (repeatable)")
    ap.add_argument("--causal", action="store_true")
    a = ap.parse_args(argv)
    cmd = "python -m gpu.ship " + " ".join(argv if argv is not None else sys.argv[1:])
    for arch in a.arch:
        for text in a.shape:
            try:
                b, hq, hk, lq, lk, d = (int(x) for x in text.split(","))
            except ValueError:
                ap.error(f"--shape: expected six integers B,Hq,Hkv,Lq,Lk,D, got {text!r}")
            for p in ship(a.name, arch, Shape(b, hq, hk, lq, lk, d, a.causal), cmd):
                print(f"{arch} {text}: {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
