"""The README's Python runs as written: every ```python block, in order, in one session."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_S

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


@pytest.mark.long  # a KAEM at the paper's size, a short training and Langevin chains: 15-45 s
def test_every_python_block_of_the_readme_runs_as_written(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3  # the package, training from Python, the criteria
    script = tmp_path / "readme.py"
    # One session, as a reader pastes them: a later block uses the names of earlier ones.
    script.write_text("\n".join(blocks))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=HANG_S,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "runs" / "tiny" / "checkpoint.pt").is_file()
