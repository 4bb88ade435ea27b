"""The official linear protocol at scale: replicas, mixed precision, kill and resume (CLI runs).

Every run is the user's command, `scripts/linear_eval.py --protocol=official`: in this process
where it can be (`run_command`), in a process of its own for TensorFlow's MirroredStrategy over 2
logical CPU devices (`tests/logical_cpus.py`), JAX's DataParallel over 2 host devices
(`XLA_FLAGS`), and a SIGKILL in the middle of a checkpoint.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import simsiam_keras as sk
from tests.helpers import (
    ROOT,
    backend_environ,
    built_once,
    last_json,
    run_command,
    run_killed_mid_checkpoint,
    user_environ,
)

SCRIPT = os.path.join(ROOT, "scripts", "linear_eval.py")
# 2 epochs of 3 steps at batch 64, a checkpoint every step, deterministic data and kernels.
COMMON = [
    "--dataset=digits",
    "--batch_size=64",
    "--epochs=2",
    "--steps_per_epoch=3",
    "--protocol=official",
    "--deterministic",
    "--checkpoint_every=1",
    "--optimizer=sgd",
    "--base_lr=2",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("pretrained") / "model.keras"
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=16)
    sk.SimSiam(backbone, dim=32, pred_dim=8, projector_layers=2).save(path)
    return path


@pytest.fixture(scope="module")
def one_device(pretrained, tmp_path_factory):
    """The workdir of the uninterrupted one-device run of COMMON that several tests compare
    with, run once for both test workers."""

    def build(workdir):
        last_json(_run(pretrained, workdir, "--strategy=one_device"))

    return built_once(tmp_path_factory, "linear_one_device", build)


def _run(pretrained, workdir, *args, backend="tensorflow", devices=1):
    if backend == "tensorflow" and devices == 1:
        return run_command(
            "linear_eval", f"--pretrained={pretrained}", f"--workdir={workdir}", *COMMON, *args
        )
    cmd = [sys.executable, SCRIPT]
    if backend == "tensorflow" and devices > 1:
        cmd = [sys.executable, os.path.join(ROOT, "tests", "logical_cpus.py"), str(devices), SCRIPT]
    jax_devices = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env = backend_environ(backend, user_environ(), **(jax_devices if backend == "jax" else {}))
    cmd += [f"--pretrained={pretrained}", f"--workdir={workdir}", *COMMON, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def _classifier(workdir, step=6):
    """The linear layer (kernel, bias) of checkpoint `step` of the workdir's one evaluation."""
    (path,) = glob.glob(
        os.path.join(
            workdir, "linear_eval", "run-*", "checkpoints", f"ckpt-{step}", "model.weights.npz"
        )
    )
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files)]


# Under JAX both runs in one process with 2 host devices: `--strategy=one_device` uses one.
_JAX_ONE_THEN_TWO = """
import sys
from tests.helpers import run_command
one, two, *args = sys.argv[1:]
for workdir, strategy in ((one, "one_device"), (two, "mirrored")):
    result = run_command("linear_eval", f"--workdir={workdir}", f"--strategy={strategy}", *args)
    print(result.stdout, result.stderr, file=sys.stderr)
    if result.returncode:
        sys.exit(result.returncode)
"""


@pytest.mark.long
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_replicas_give_the_one_device_classifier(pretrained, one_device, tmp_path, backend):
    pytest.importorskip(backend)
    if backend == "jax":
        env = backend_environ(
            "jax", user_environ(), XLA_FLAGS="--xla_force_host_platform_device_count=2"
        )
        cmd = [
            sys.executable,
            "-c",
            _JAX_ONE_THEN_TWO,
            str(tmp_path / "one"),
            str(tmp_path / "two"),
            f"--pretrained={pretrained}",
            *COMMON,
        ]
        both = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert both.returncode == 0, both.stderr[-4000:]
    else:
        shutil.copytree(one_device, tmp_path / "one")
        two = _run(pretrained, tmp_path / "two", "--strategy=mirrored", devices=2)
        assert last_json(two)["protocol"] == "official"
    saved = [json.load(open(tmp_path / w / "linear_eval.json")) for w in ("one", "two")]
    assert [s["replicas"] for s in saved] == [1, 2]
    assert all(s["backbone_unchanged"] and s["backend"] == backend for s in saved)
    # The same global batch of 64 in 2 x 32: the same gradients, up to float sums.
    single, mirrored = _classifier(tmp_path / "one"), _classifier(tmp_path / "two")
    worst = max(np.abs(a - b).max() for a, b in zip(single, mirrored))
    assert worst < 1e-4, worst
    assert np.abs(single[1]).max() > 100 * worst  # the bias started at 0: the steps moved it
    assert saved[0]["val_top1"] == pytest.approx(saved[1]["val_top1"], abs=1e-6)


def test_mixed_precision_runs_the_backbone_in_bfloat16(pretrained, one_device, tmp_path):
    last_json(_run(pretrained, tmp_path / "bf16", "--mixed_precision=bfloat16"))
    saved = json.load(open(tmp_path / "bf16" / "linear_eval.json"))
    assert saved["mixed_precision"] == "bfloat16" and saved["backbone_unchanged"]
    # bfloat16 features (8 bits of mantissa): close to float32's classifier, not equal.
    for a, b in zip(_classifier(one_device), _classifier(tmp_path / "bf16")):
        scale = np.abs(a).max()
        assert 0 < np.abs(a - b).max() < 0.1 * scale


def test_sigkill_then_rerun_gives_the_uninterrupted_classifier(pretrained, one_device, tmp_path):
    expected = json.load(open(one_device / "linear_eval.json"))
    final = _classifier(one_device)
    work = tmp_path / "killed"
    latest = os.path.join(work, "linear_eval", "run-*", "checkpoints", "latest")
    killed = run_killed_mid_checkpoint(
        "linear_eval", 3, f"--pretrained={pretrained}", f"--workdir={work}", *COMMON
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not os.path.exists(os.path.join(work, "linear_eval.json"))
    killed_at = open(glob.glob(latest)[0]).read().strip()
    assert killed_at == "ckpt-2"  # the last whole checkpoint before the cut write
    resumed = _run(pretrained, work)
    assert "Resuming the linear evaluation from" in resumed.stdout, resumed.stdout[-2000:]
    assert last_json(resumed)["val_top1"] == pytest.approx(expected["val_top1"], abs=1e-6)
    for a, b in zip(final, _classifier(work)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=killed_at)
    # Other settings in the same workdir: a run of their own beside it; the first is kept.
    other = _run(pretrained, work, "--base_lr=1")
    last_json(other)
    assert len(glob.glob(os.path.join(work, "linear_eval", "run-*"))) == 2
    # The finished run again: nothing to train, the same numbers.
    again = last_json(_run(pretrained, work))
    assert again["val_top1"] == pytest.approx(expected["val_top1"], abs=1e-6)
