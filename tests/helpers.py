"""What many tests share: paths, running a script, reading its last JSON line, tiny models."""

import io
import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16  # the image size of the tiny models
# A few steps of a tiny pretraining run: the flags most CLI tests start from.
SMALL_PRETRAIN = [
    "--dataset=digits",
    "--backbone=resnet18_cifar",
    "--width=0.125",
    "--image_size=16",
    "--dim=64",
    "--pred_dim=16",
    "--batch_size=64",
    "--knn_every=0",
    "--compare_random_init=false",
]


def backend_environ(backend, env=None, **overrides):
    """`env` (default `os.environ`) for a test process: `KERAS_BACKEND=backend`, `overrides`.

    Under JAX, XLA compiles each new train step with its LLVM optimisations off
    (`--xla_backend_optimization_level=0`, added to any `XLA_FLAGS` in `overrides`): the tests
    run a few steps of many small programs, so compiling dominates, and the optimisations change
    speed, not what is computed. Users' runs keep XLA's default; TensorFlow processes are left
    alone (the host views run in a TF XLA function).
    """
    env = dict(os.environ if env is None else env)
    env.update(overrides, KERAS_BACKEND=backend)
    if backend == "jax":
        flags = ["--xla_backend_optimization_level=0", overrides.get("XLA_FLAGS", "")]
        env["XLA_FLAGS"] = " ".join(flags).strip()
    return env


def user_environ(**overrides):
    """The environment a user's shell has: without the TF_CPP_MIN_LOG_LEVEL conftest sets."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(overrides)
    return env


def run_script(name, *args, cwd=ROOT, env=None, timeout=900):
    """Runs `scripts/<name>.py args` (or `benchmarks/<name>.py`) in a subprocess.

    Returns:
        The `CompletedProcess`.
    """
    path = os.path.join(ROOT, "scripts", f"{name}.py")
    if not os.path.exists(path):
        path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    cmd = [sys.executable, path, *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or user_environ()
    )


# The scripts and the command each one calls (`scripts/<name>.py` is `commands.<command>()`).
COMMANDS = {
    "pretrain": "pretrain",
    "linear_eval": "linear_eval",
    "knn_eval": "knn_eval",
    "export": "export",
    "convert_checkpoint": "convert",
}


def run_command(name, *args, cwd=None, stdout=None):
    """`scripts/<name>.py args` in this process: the same command, without a new interpreter.

    What a script does is `commands.<command>()` on `sys.argv`; this calls it with stdout and
    stderr captured and its `SystemExit` turned into the exit code. Tests of what needs a
    process of its own (signals, kills, the logs TensorFlow prints at start-up, a fresh import)
    use `run_script`. `stdout`: a text stream to write to instead of a fresh `io.StringIO` (one
    that watches the lines, say). Returns a `CompletedProcess` like `run_script`.
    """
    import contextlib
    import io

    from simsiam_keras import commands

    argv = [os.path.join(ROOT, "scripts", f"{name}.py"), *map(str, args)]
    out, err, code = stdout or io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    try:
        sys.argv = argv
        os.chdir(cwd or ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                getattr(commands, COMMANDS[name])()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


class SignalOnLine(io.StringIO):
    """A stdout that signals this process once `ready(line)` holds for a line written to it.

    Ctrl-C as the user presses it, at a moment the output names: the signal arrives while the
    command runs in this process (`run_command`), through the handlers the command installed.
    """

    def __init__(self, ready, signum=signal.SIGINT):
        super().__init__()
        self.ready, self.signum, self.sent, self.partial = ready, signum, False, ""

    def write(self, text):
        written = super().write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if not self.sent and self.ready(line):
                self.sent = True
                os.kill(os.getpid(), self.signum)
        return written


_KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
savez = np.savez
def savez_or_die(path, *args, **kwargs):
    if ".tmp-ckpt-{step}-" in str(path) and str(path).endswith("optimizer.npz"):
        os.kill(os.getpid(), signal.SIGKILL)
    return savez(path, *args, **kwargs)
np.savez = savez_or_die
from simsiam_keras import commands
sys.argv = sys.argv[1:]
commands.{command}()
"""


def run_killed_mid_checkpoint(name, step, *args):
    """`scripts/<name>.py args` in a process that SIGKILLs itself inside checkpoint `step`'s save.

    The weights are on disk, the optimizer state not yet: the same moment every time, where a
    kill from outside lands wherever the race puts it. Returns the `CompletedProcess`.
    """
    code = _KILLED_MID_WRITE.format(step=step, command=COMMANDS[name])
    cmd = [sys.executable, "-c", code, os.path.join(ROOT, "scripts", f"{name}.py"), *map(str, args)]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=user_environ()
    )


def last_json(result):
    """The JSON object a script printed last; fails with its stderr when it did not succeed."""
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_backbone(size=SIZE, width=0.125):
    """A width-0.125 CIFAR ResNet-18 (64 features at the end)."""
    import simsiam_keras as sk

    return sk.build_resnet("resnet18_cifar", width=width, image_size=size)


def tiny_simsiam(size=SIZE, dim=32, pred_dim=8):
    """A `SimSiam` over `tiny_backbone`, with the CIFAR variant's 2-layer projector."""
    import simsiam_keras as sk

    return sk.SimSiam(tiny_backbone(size), dim=dim, pred_dim=pred_dim, projector_layers=2)


def logical_cpus(count=2):
    """Splits TensorFlow's CPU into `count` logical devices; returns their names.

    Must run before TensorFlow initialises its devices: in a process of its own
    (`tests/logical_cpus.py`, `tests/distributed_run.py`).
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
    return [f"/cpu:{i}" for i in range(count)]


def built_once(tmp_path_factory, name, build):
    """A directory that `build(path)` fills once per test run, shared by the parallel workers.

    A module fixture runs once per worker that runs one of its tests; for what takes a process
    of its own to build, the first worker builds it under a lock and the other reads it.
    """
    import fcntl
    import shutil

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the base directory every worker's own is in
    path = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            build(path)
            (path / ".built").touch()
    return path
