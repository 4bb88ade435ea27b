"""The README's Python blocks run as written, in order, in an empty folder."""

import os
import re
import subprocess
import sys

from tests.helpers import ROOT


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_python_blocks_run_as_written(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 3, "the API, input pipeline and SavedModel examples"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "simsiam.keras").exists() and (tmp_path / "export" / "backbone").is_dir()
