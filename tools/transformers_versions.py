#!/usr/bin/env python3
"""Run the transformers-facing tests on the oldest and the newest transformers the pin allows.

    python tools/transformers_versions.py            # versions from pyproject's pin
    python tools/transformers_versions.py 5.23.0     # given versions

The pin is ``project.optional-dependencies.model``'s ``transformers`` requirement. The versions
it allows are asked from the package index (``pip index versions``); each is installed with
``--no-deps`` into ``.cache/transformers-<version>/`` (the rest of the environment is the
current one) and put first on ``PYTHONPATH`` for a pytest run of ``TESTS``. Prints one line per
version and exits non-zero when one fails. Needs network access the first time per version.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/qsattn/test_hf.py", "tests/ref/test_hf_attention.py", "tests/qsattn/test_model.py"]


def pin() -> str:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for req in doc["project"]["optional-dependencies"]["model"]:
        if req.replace(" ", "").startswith("transformers"):
            return req
    raise SystemExit("pyproject.toml: no transformers requirement in the `model` extra")


def allowed(requirement: str) -> list[str]:
    """Released versions (no pre-releases) the requirement allows, oldest first."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    spec = Requirement(requirement).specifier
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "transformers"],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Available versions:"))
    vers = [Version(v.strip()) for v in line.split(":", 1)[1].split(",")]
    return [str(v) for v in sorted(v for v in vers if v in spec and not v.is_prerelease)]


def run(version: str) -> int:
    target = ROOT / ".cache" / f"transformers-{version}"
    if not (target / "transformers").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target),
                        f"transformers=={version}"], check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(target), env_path] if (env_path := os.environ.get("PYTHONPATH")) else [str(target)]))
    got = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    if got != version:
        raise SystemExit(f"expected transformers {version} from {target}, imported {got}")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-W", "error::FutureWarning", *TESTS], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    tail = [ln for ln in r.stdout.splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    print(f"transformers {version}: {'ok' if r.returncode == 0 else 'FAILED'} "
          f"({tail[-1] if tail else 'no summary'})", flush=True)
    if r.returncode:
        print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")
    return r.returncode


def main(argv: list[str]) -> int:
    if argv:
        versions = argv
    else:
        vs = allowed(pin())
        if not vs:
            raise SystemExit(f"no released transformers satisfies {pin()!r}")
        versions = sorted({vs[0], vs[-1]}, key=vs.index)
        print(f"{pin()}: allows {len(vs)} releases; testing the oldest and newest: "
              f"{', '.join(versions)}", flush=True)
    return max(run(v) for v in versions)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
