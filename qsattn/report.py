"""``qsattn report``: one command that shows where the project stands.

Each capability contributes a section: a module exposing ``report_section(ctx) -> str``
(markdown). A section runs its job on the embedded defaults (expensive ones resume from their
results store, so a rerun is cheap) and returns a summary that links its detailed report under
``reports/<name>/``. A section whose module does not exist yet is listed as not built; a section
that fails is shown with its error and makes the command exit non-zero.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import importlib.util
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from qsattn import provenance

# (key, title, module, issue that delivers it)
SECTIONS: list[tuple[str, str, str, int]] = [
    ("foundation", "Foundation: method specs and numerics self-check", "qsattn.selfcheck", 2),
    ("accuracy", "Accuracy on synthetic tensors (simulator vs float64)", "qsattn.accuracy", 3),
    ("roofline", "Analytical roofline (A100, H100, H200)", "qsattn.roofline", 4),
    ("bench", "GPU kernels: H100 and H200 benchmarks against SDPA and SageAttention", "qsattn.bench", 5),
    ("validation", "GPU validation: simulator vs kernel, predicted vs measured", "qsattn.validate", 6),
    ("model", "Accuracy inside a real model (SmolLM2-135M)", "qsattn.model", 7),
]


RUN_LOG = "last_run.txt"


@dataclass(frozen=True)
class ReportContext:
    out: Path          # reports/ root; sections write under out/<key>/
    quick: bool        # smaller defaults (CI smoke); sections say when they use it
    rerun: bool        # recompute finished points instead of resuming
    progress: bool = True   # progress bars (stderr) in the sections that run long work


def add_arguments(p: argparse.ArgumentParser) -> None:
    from qsattn import cliopts
    cliopts.add_common(p, out_default=provenance.REPORTS,
                       out_help="reports directory (default: reports/ in the repository)")
    p.add_argument("--only", default=None,
                   help="comma-separated section keys: " + ", ".join(s[0] for s in SECTIONS))
    p.add_argument("--quick", action="store_true",
                   help="smaller defaults (smoke run), written under <out>/quick/")
    p.add_argument("--rerun", action="store_true", help="recompute instead of resuming")


def run(args: argparse.Namespace) -> int:
    keys = [s[0] for s in SECTIONS]
    only = keys if args.only is None else [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in only if k not in keys]
    if bad:
        raise ValueError(f"--only: expected section keys from {keys}, got {bad}")
    out = Path(args.out) / ("quick" if args.quick else "")
    ctx = ReportContext(out=out, quick=args.quick, rerun=args.rerun,
                        progress=not args.no_progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    parts = [provenance.header("qsattn report", "qsattn report" + (" --quick" if args.quick
                                                                     else ""), measured=False),
             f"Machine, versions and section times of the last run: `{RUN_LOG}` beside this "
             f"file (not tracked: it differs on every machine).\n"]
    log = [f"qsattn report: {provenance.environment()}"]
    failed = []
    timings = []
    chosen = [s for s in SECTIONS if s[0] in only]
    for n, (key, title, module, issue) in enumerate(chosen, 1):
        # progress: one line per section on stderr when it starts (long sections add a bar)
        print(f"[{n}/{len(chosen)}] {title} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if importlib.util.find_spec(module) is None:
            body = f"_Not built yet: delivered by issue {issue}._\n"
        else:
            try:
                body = importlib.import_module(module).report_section(ctx)
            except (ValueError, TypeError, OSError) as e:  # bad input or data: one line
                failed.append(key)
                body = f"**This section failed:** {e}\n"
            except Exception:  # an internal error: shown with its traceback, never hidden
                failed.append(key)
                body = "**This section failed:**\n\n```\n" + traceback.format_exc() + "```\n"
        dt = time.perf_counter() - t0
        parts.append(f"## {title}\n\n{body.rstrip()}\n")
        log.append(f"{key}: {dt:.1f} s{' (failed)' if key in failed else ''}")
        timings.append({"section": key, "title": title, "seconds": dt,
                        "status": "failed" if key in failed else "ok"})
        print(f"[{n}/{len(chosen)}] {title}: {'FAILED' if key in failed else 'done'} "
              f"({dt:.1f} s)", file=sys.stderr, flush=True)
        if args.format == "md":
            print(f"## {title}\n\n{body.rstrip()}\n", flush=True)
    text = "\n".join(parts)
    path = ctx.out / "REPORT.md"
    path.write_text(text)
    (ctx.out / RUN_LOG).write_text("\n".join(log) + "\n")
    if args.format != "md":
        from qsattn import cliopts
        cliopts.emit(cliopts.render(timings, args.format))
    print(f"wrote {path} and {ctx.out / RUN_LOG}", file=sys.stderr)
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
