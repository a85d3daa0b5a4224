"""The README's Python blocks run as written (each in a fresh interpreter, from the repository
root). A block whose first line is ``# not run: <reason>`` is skipped, with its reason; a block
that imports ``gpu`` runs the kernels in Triton's interpreter (TRITON_INTERPRET=1) on the CPU."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    out = []
    for i, m in enumerate(BLOCK.finditer(text)):
        code = m.group(1)
        line = text[:m.start()].count("\n") + 1
        out.append((f"README.md:{line}", code))
    return out


def test_readme_has_python_blocks_and_each_skip_says_why():
    bs = blocks()
    assert len(bs) >= 5
    for where, code in bs:
        first = code.splitlines()[0]
        if first.startswith("# not run"):
            assert re.match(r"# not run: \S", first), f"{where}: a skipped block gives a reason"


@pytest.mark.slow
@pytest.mark.parametrize("where, code", blocks(), ids=[w for w, _ in blocks()])
def test_readme_block_runs(where, code):
    if code.startswith("# not run:"):
        pytest.skip(code.splitlines()[0])
    env = dict(os.environ)
    if re.search(r"^import gpu|^from gpu", code, re.M):
        env["TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    print(r.stdout[-2000:])
    assert r.returncode == 0, f"{where} failed:\n{r.stderr[-4000:]}"
    assert "Warning" not in r.stderr, f"{where} warned:\n{r.stderr[-2000:]}"
