"""The Python blocks of the README and the docs run as written, in order, in an empty folder."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# The docs whose Python blocks run here (docs/convert.md's need an official checkpoint file).
DOCS = ("api.md", "pretraining.md", "pipeline.md", "evaluation.md", "speed.md", "quality.md")


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.long
def test_readme_and_docs_python_blocks_run_as_written(tmp_path):
    paths = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", d) for d in DOCS]
    blocks = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            blocks += python_blocks(f.read())
    with open(paths[0], encoding="utf-8") as f:
        assert len(python_blocks(f.read())) >= 2, "the model.fit and export examples"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "simsiam.keras").exists() and (tmp_path / "export" / "backbone").is_dir()
    assert "shuffle=True" not in result.stderr  # the model.fit example is quiet
