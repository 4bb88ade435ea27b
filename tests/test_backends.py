"""Runs every `multibackend` test again under JAX and PyTorch, each in its own process.

Keras fixes its backend at import, so each backend needs a fresh interpreter. TensorFlow is
blocked in those runs (SIMSIAM_BLOCK_TF=1, see conftest.py): the model, losses, heads,
backbones and optimiser must import and train without it, as on the accelerator machines.
"""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, backend_environ


@pytest.mark.long
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_multibackend_suite(backend):
    pytest.importorskip(backend)
    env = backend_environ(backend, SIMSIAM_BLOCK_TF="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "multibackend",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::DeprecationWarning",
        os.path.join(ROOT, "tests"),
    ]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]
