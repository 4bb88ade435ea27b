"""The README's run contract, tested where the user goes on: Ctrl-C anywhere, then the same
command finishes the run with the files an uninterrupted run leaves; two runs on one workdir;
the kNN monitor on the user's data only; `model.keras` loaded the Keras way in a new process.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from simsiam_keras import checkpoint, workdir_lock
from simsiam_keras.history import EpochHistory
from tests.helpers import ROOT, last_json, run_script, user_environ

SCRIPT = os.path.join(ROOT, "scripts", "pretrain.py")
# Three epochs of 6 steps on the digits, kNN on epochs 1, 2 and 3 (every 2, plus the first and
# the last), deterministic so that an interrupted run can be compared with an uninterrupted one.
RUN = [
    "--backbone=resnet18_cifar", "--width=0.125", "--image_size=16", "--dim=64",
    "--pred_dim=16", "--batch_size=32", "--epochs=3", "--steps_per_epoch=6", "--knn_every=2",
    "--knn_k=20", "--checkpoint_every=4", "--compare_random_init=false", "--deterministic",
    "--progress_every_s=0", "--seed=1",
]  # fmt: skip


def _rows(work):
    with open(work / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    with np.load(os.path.join(path, "model.weights.npz")) as f:
        return [f[k] for k in sorted(f.files)]


def _signal_when(args, ready, signum=signal.SIGINT, timeout=600):
    """Runs pretrain.py, sends `signum` once `ready(line)` holds for a line of its stdout (or
    once `ready(None)` holds, polled); returns (returncode, stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env=user_environ(),
    )  # fmt: skip
    seen, deadline = [], time.time() + timeout
    if ready(None) is None:  # wait for a line
        for line in proc.stdout:
            seen.append(line)
            if ready(line):
                break
    else:  # poll the file system
        while time.time() < deadline and proc.poll() is None and not ready(None):
            time.sleep(0.005)
    assert proc.poll() is None, "".join(seen) + proc.stderr.read()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + out, err


def test_interrupted_anywhere_then_rerun_finishes_like_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    reference = last_json(run_script("pretrain", *RUN, f"--workdir={straight}"))
    assert reference["steps"] == 18
    work = tmp_path / "interrupted"
    args = [*RUN, f"--workdir={work}"]

    # 1. Ctrl-C in the first epoch, before any kNN pass (what broke the history before).
    code, out, err = _signal_when(args, lambda line: line and line.startswith("epoch 1/3  3/6"))
    assert code == 130 and "Interrupted at step" in err, err
    assert not (work / "history.csv").exists()  # no row for an epoch cut short
    # 2. Mid-epoch later, after a kNN epoch.
    code, out, err = _signal_when(args, lambda line: line and line.startswith("epoch 2/3  2/6"))
    assert code == 130 and "Resuming from" in out, (out, err)
    assert [r["epoch"] for r in _rows(work)] == ["0"]
    # 3. During the kNN pass at the end of epoch 2: the pass ends, its row is written, the
    # checkpoint at the end of the epoch follows it.
    code, out, err = _signal_during_knn(args)
    assert code == 130, err
    assert [r["epoch"] for r in _rows(work)] == ["0", "1"] and _rows(work)[1]["knn_top1"]
    assert checkpoint.read_state(checkpoint.latest(str(work / "checkpoints")))["step"] == 12
    # 4. During the export, after model.keras: the rerun exports and writes the summary.
    export = work / "export"

    def exporting(_):
        return export.exists() and any(".tmp-" in n for n in os.listdir(export))

    code, out, err = _signal_when(args, exporting)
    assert code == 130 and (work / "model.keras").exists(), err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not (work / "summary.json").exists() and not (export / "backbone").exists()
    # 5. The same command finishes the run.
    finished = last_json(run_script("pretrain", *args))
    assert finished["steps"] == 18 and finished["export"]
    assert (export / "backbone" / "saved_model.pb").exists()

    # The same files as the uninterrupted run: history row by row, weights, kNN figure.
    mine, theirs = _rows(work), _rows(straight)
    assert list(mine[0]) == list(theirs[0]) and len(mine) == len(theirs) == 3
    for a, b in zip(mine, theirs):
        assert a.keys() == b.keys()
        for name in a:
            if a[name] or b[name]:
                np.testing.assert_allclose(float(a[name]), float(b[name]), rtol=1e-4, atol=1e-6)
    for x, y in zip(_weights(work / "checkpoints" / "ckpt-18"),
                    _weights(straight / "checkpoints" / "ckpt-18")):  # fmt: skip
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert finished["knn_top1"] == pytest.approx(reference["knn_top1"], abs=0.5)
    assert not (work / workdir_lock.FILE).exists()


def _signal_during_knn(args):
    """SIGINT while the kNN pass after epoch 2's last step extracts features."""
    state = {"epoch2_done": False}

    def ready(line):
        if line is None:
            return None
        if line.startswith("epoch 2/3  6/6"):
            state["epoch2_done"] = True
        return state["epoch2_done"] and line.startswith("features")

    return _signal_when(args, ready)


# --- history.csv ----------------------------------------------------------------------------


def test_history_keeps_its_columns_whatever_the_first_epoch_logged(tmp_path):
    path = tmp_path / "history.csv"
    history = EpochHistory(str(path))
    history.record(0, {"loss": -0.1, "z_std": 0.02, "lr": 0.05})
    history.write()
    resumed = EpochHistory.load(str(path), before_epoch=1)
    resumed.record(1, {"loss": -0.2, "z_std": 0.02, "lr": 0.04, "knn_top1": 50.0})
    resumed.record(2, {"loss": -0.3, "z_std": 0.02, "lr": 0.03})
    resumed.write()
    rows = _rows(tmp_path)
    assert list(rows[0]) == ["epoch", "loss", "z_std", "lr", "knn_top1"]
    assert [r["knn_top1"] for r in rows] == ["", "50.0", ""]
    assert [float(r["loss"]) for r in rows] == [-0.1, -0.2, -0.3]
    # A resume inside epoch 2 keeps epochs 0 and 1 only; a later one writes epoch 2 again.
    assert sorted(EpochHistory.load(str(path), before_epoch=2).rows) == [0, 1]
    assert EpochHistory.load(str(path)).last() == {
        "loss": -0.3, "z_std": 0.02, "lr": 0.03, "knn_top1": 50.0
    }  # fmt: skip


def test_a_history_written_by_csvlogger_across_a_resume_is_repaired(tmp_path):
    # What the previous version left after Ctrl-C in epoch 1 and a resume with kNN epochs:
    # CSVLogger's header from the cut-short epoch (no kNN, val_* copies), then longer rows.
    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,loss,lr,probe_z_std,z_std,val_loss,val_lr,val_probe_z_std,val_z_std\n"
        "0,-0.01,0.03,0.05,0.12,NA,NA,NA,NA\n"
        "0,55.5,91.5,-0.02,0.03,0.06,0.12,NA,NA,NA,NA,NA,NA\n"  # sorted: knn_* first
        "1,56.5,92.5,-0.03,0.01,0.07,0.12,NA,NA,NA,NA,NA,NA\n"
    )
    history = EpochHistory.load(str(path))
    assert history.rows[0] == {"knn_top1": 55.5, "knn_top5": 91.5, "loss": -0.02, "lr": 0.03,
                               "probe_z_std": 0.06, "z_std": 0.12, "val_knn_top1": None,
                               "val_knn_top5": None, "val_loss": None, "val_lr": None,
                               "val_probe_z_std": None, "val_z_std": None}  # fmt: skip
    assert history.rows[1]["knn_top1"] == 56.5 and history.rows[1]["loss"] == -0.03
    history.write()  # the columns that are empty everywhere are dropped
    assert _rows(tmp_path)[0].keys() == {"epoch", "loss", "z_std", "lr", "probe_z_std",
                                         "knn_top1", "knn_top5"}  # fmt: skip
    path.write_text("epoch,loss\n0,-0.1,1,2,3,4,5\n")  # not what any version wrote
    with pytest.raises(ValueError, match="line 2, does not match its header; move the file"):
        EpochHistory.load(str(path))
