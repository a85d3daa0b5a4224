"""``pip install .`` (a real, non-editable wheel) works outside the repository.

The wheel is built from the checkout and installed into a fresh virtual environment whose only
other packages are the test venv's (reached through a plain path entry, so the repository's
editable install is not on the path); every command then runs from an empty directory, and the
packages must come from the new environment, with the configs it ships.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("install")
    # build from a copy of the sources: setuptools' build/ folder must not land in (or be
    # reused from) the checkout
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("sim", "ref", "gpu", "qsattn", "configs"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(base / "dist"), str(src)], cwd=base)
    (wheel,) = (base / "dist").glob("qsattn-*.whl")
    env_dir = base / "venv"
    _run([sys.executable, "-m", "venv", str(env_dir)], cwd=base)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=base)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=base).strip())
    # the dependencies (numpy, torch, ...) of the test environment, without its .pth files
    (site / "qsattn_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = base / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QSATTN_CONFIG_DIR")}
    return py, env_dir / "bin" / "qsattn", work, env


@pytest.mark.slow
def test_wheel_works_outside_the_repository(installed):
    py, cli, work, env = installed
    code = (
        "import sim, sim.cost, gpu, qsattn, numpy as np\n"
        "from sim import load_method, simulate\n"
        "from sim.cost import predict, Shape\n"
        f"assert not sim.__file__.startswith({str(ROOT)!r}), sim.__file__\n"
        "print(sim.spec.config_dir())\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.standard_normal((1, 2, 17, 64)).astype(np.float16); k = q[:, :1]; v = k\n"
        "for m in ('fp16_flash', 'int8_flash', 'turbo', 'double_sparse', 'fp8_flash'):\n"
        "    assert simulate(q, k, v, m, causal=True).out.shape == (1, 2, 17, 64)\n"
        "p = predict('turbo', Shape(4, 32, 32, 8192, 8192, 128), 'h100_sxm')\n"
        "a = predict('int8_flash', Shape(4, 32, 32, 8192, 8192, 64), 'a100_80gb_sxm')\n"
        "from sim.cost import predict_foreign\n"
        "f = predict_foreign('int_fa_full_int8', Shape(4, 32, 32, 4096, 4096, 64), 'rtx4090')\n"
        "assert 'site-packages' in str(sim.arch.data_path('ada', 'mixes'))\n"
        "print(p.time, a.time, f.time)\n")
    out = _run([str(py), "-c", code], cwd=work, env=env)
    assert "site-packages" in out.splitlines()[0] and "sim/configs" in out.splitlines()[0]
    specs = _run([str(cli), "specs"], cwd=work, env=env)
    assert "int8_flash" in specs and "double_sparse" in specs
    _run([str(cli), "specs", "turbo", "--set", "p.rounding=half_even"], cwd=work, env=env)
    _run([str(cli), "roofline", "--out", str(work / "roof")], cwd=work, env=env)
    assert (work / "roof" / "README.md").is_file()
