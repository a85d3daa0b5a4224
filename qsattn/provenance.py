"""Where a result came from: command, git revision, versions, machine. Every report carries it."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("numpy", "numba", "scipy", "torch", "triton", "transformers")


def git_revision(root: Path = ROOT) -> str:
    """Short revision, with '+dirty' when tracked files differ from it.

    Outside a git checkout (e.g. a copy of the tree sent to a GPU machine) the revision comes
    from ``$QSATTN_GIT_REVISION`` (set it in the remote command), else 'unknown'."""
    env = os.environ.get("QSATTN_GIT_REVISION")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return env or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    """CPU (and GPU when torch sees one) in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            desc += f"; GPU {torch.cuda.get_device_name()}"
    return desc


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    prog = "qsattn" if argv and Path(argv[0]).name in ("qsattn", "__main__.py") else argv[0]
    return " ".join([prog, *map(shlex.quote, argv[1:])])


def header(title: str, command: str | None = None) -> str:
    """Markdown header every generated report starts with."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (f"# {title}\n\n"
            f"Regenerate with: `{command or command_line()}`\n\n"
            f"Generated {now} at git {git_revision()} on {machine()}; {vers}.\n")
