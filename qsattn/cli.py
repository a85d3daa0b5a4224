"""``qsattn`` command line. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes to them and imports
the chosen command's module alone, so one command's imports (torch, triton, transformers)
never slow down another's start."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). A module is imported only when its command is chosen.
COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("qsattn.report", "run every section on the embedded defaults and write reports/REPORT.md"),
    "specs": ("qsattn.specs", "list, show or check method specs"),
    "model": ("qsattn.model", "accuracy of every method inside SmolLM2-135M on real text"),
    "bench": ("qsattn.bench", "time the Triton kernels against SDPA/SageAttention on a CUDA GPU"),
    "calibrate": ("qsattn.calibrate", "measure this GPU's ceilings into configs/hardware/measured/ (GPU)"),
    "validate": ("qsattn.validate", "simulator vs kernel numerics, predicted vs measured time (GPU)"),
    "accuracy": ("qsattn.accuracy", "simulator accuracy of every method on synthetic tensors vs float64"),
    "roofline": ("qsattn.roofline", "analytical roofline report (sim.cost) for A100/H100/H200"),
    "predict": ("qsattn.predict", "predicted time, speedup and bound of one shape (sim.cost)"),
    "hardware": ("qsattn.hardware", "list, show or add GPU descriptions (configs/hardware)"),
    "cache": ("qsattn.cache", "list or clear qsattn's on-disk cache (model copies, tokens, "
                              "calibrations)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (to add its arguments)."""
    from qsattn import __version__
    parser = argparse.ArgumentParser(
        prog="qsattn",
        description="Simulator, cost model and reference kernels for quantized and sparse attention.")
    parser.add_argument("--version", action="version", version=f"qsattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, TypeError, OSError) as e:
        # Bad input from the user (an argument, a config, a data file, a path that cannot be
        # read or written): one clear line naming it, exit code 2, not a traceback. Other
        # exceptions are internal errors and keep their traceback.
        print(f"qsattn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"qsattn {args.command}: error: out of memory: the arguments or config ask for "
              f"more than this machine holds; use smaller sizes", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qsattn {args.command}: interrupted; finished work is kept and a rerun resumes",
              file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    """The exception's message on one line (an OSError with its path)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
