"""The README's run contract, tested where the user goes on: Ctrl-C anywhere, then the same
command finishes the run with the files an uninterrupted run leaves; two runs on one workdir;
the kNN monitor on the user's data only; `model.keras` loaded the Keras way in a new process.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from simsiam_keras import checkpoint, workdir_lock
from simsiam_keras.history import EpochHistory
from tests.helpers import (
    ROOT,
    SMALL_PRETRAIN,
    SignalOnLine,
    backend_environ,
    built_once,
    last_json,
    run_command,
    user_environ,
)

SCRIPT = os.path.join(ROOT, "scripts", "pretrain.py")
# Three epochs of 6 steps on the digits, kNN on epochs 1, 2 and 3 (every 2, plus the first and
# the last), deterministic so that an interrupted run can be compared with an uninterrupted one.
RUN = [
    *SMALL_PRETRAIN,  # later flags win
    "--batch_size=32",
    "--epochs=3",
    "--steps_per_epoch=6",
    "--knn_every=2",
    "--knn_k=20",
    "--checkpoint_every=4",
    "--deterministic",
    "--progress_every_s=0",
    "--seed=1",
]


def _rows(work):
    with open(work / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    with np.load(os.path.join(path, "model.weights.npz")) as f:
        return [f[k] for k in sorted(f.files)]


def _signal_when(args, ready):
    """`pretrain.py args` in this process, interrupted once `ready(line)` holds for a line of
    its output, or (with `ready(None)` not None) once `ready(None)` holds, polled from a thread;
    returns (returncode, stdout, stderr)."""
    stream = SignalOnLine(ready)
    polled = ready(None) is not None
    done = threading.Event()

    def poll():
        while not done.is_set() and not ready(None):
            time.sleep(0.002)
        if not done.is_set():
            stream.sent = True
            os.kill(os.getpid(), signal.SIGINT)

    if polled:
        stream.ready = lambda line: False
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
    try:
        result = run_command("pretrain", *args, stdout=stream)
    finally:
        done.set()
    assert stream.sent, result.stdout[-2000:] + result.stderr[-2000:]
    return result.returncode, result.stdout, result.stderr


@pytest.mark.long
def test_interrupted_anywhere_then_rerun_finishes_like_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    reference = last_json(run_command("pretrain", *RUN, f"--workdir={straight}"))
    assert reference["steps"] == 18
    work = tmp_path / "interrupted"
    args = [*RUN, f"--workdir={work}"]

    # 1. Ctrl-C in the first epoch, before any kNN pass.
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
    finished = last_json(run_command("pretrain", *args))
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
    for x, y in zip(
        _weights(work / "checkpoints" / "ckpt-18"), _weights(straight / "checkpoints" / "ckpt-18")
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert finished["knn_top1"] == pytest.approx(reference["knn_top1"], abs=0.5)
    assert not (work / workdir_lock.FILE).exists()
    # The user goes on: the finished run as an official checkpoint records its 3 epochs.
    torch = pytest.importorskip("torch")
    from simsiam_keras import convert

    convert.to_torch(str(work), str(tmp_path / "run.pth.tar"))
    assert torch.load(tmp_path / "run.pth.tar", weights_only=True)["epoch"] == 3


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
        "loss": -0.3,
        "z_std": 0.02,
        "lr": 0.03,
        "knn_top1": 50.0,
    }


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
    assert history.rows[0] == {
        "knn_top1": 55.5,
        "knn_top5": 91.5,
        "loss": -0.02,
        "lr": 0.03,
        "probe_z_std": 0.06,
        "z_std": 0.12,
        "val_knn_top1": None,
        "val_knn_top5": None,
        "val_loss": None,
        "val_lr": None,
        "val_probe_z_std": None,
        "val_z_std": None,
    }
    assert history.rows[1]["knn_top1"] == 56.5 and history.rows[1]["loss"] == -0.03
    history.write()  # the columns that are empty everywhere are dropped
    assert _rows(tmp_path)[0].keys() == {
        "epoch",
        "loss",
        "z_std",
        "lr",
        "probe_z_std",
        "knn_top1",
        "knn_top5",
    }
    path.write_text("epoch,loss\n0,-0.1,1,2,3,4,5\n")  # not what any version wrote
    with pytest.raises(ValueError, match="line 2, does not match its header; move the file"):
        EpochHistory.load(str(path))


# --- one workdir, one run -------------------------------------------------------------------


def test_a_second_run_on_a_busy_workdir_stops_at_once_naming_the_holder(tmp_path):
    work = tmp_path / "run"
    args = [*RUN, "--epochs=50", f"--workdir={work}"]
    first = subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=user_environ(),
    )
    try:
        for line in first.stdout:  # training: the lock is held
            if line.startswith("epoch 1/50  1/6"):
                break
        before = sorted(os.listdir(work))
        second = run_command("pretrain", *args)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert (
            f"--workdir {str(work)!r} is in use by another run: pid {first.pid} on host"
            in (lines[0])
        )
        assert "since" in lines[0]
        assert json.loads((work / workdir_lock.FILE).read_text())["pid"] == first.pid, before
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
    assert first.returncode == 130 and not (work / workdir_lock.FILE).exists()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path):
    lock = tmp_path / workdir_lock.FILE
    here = {"host": workdir_lock.socket.gethostname(), "since": "earlier"}
    # Same host, the process is gone (SIGKILL): taken over.
    lock.write_text(json.dumps({**here, "pid": _dead_pid(), "start_time": 1}))
    with workdir_lock.WorkdirLock(str(tmp_path)) as taken:
        assert taken.taken_over["since"] == "earlier" and taken.held()
    assert not lock.exists()
    # Same host, a live process: busy. The same pid with another start time (a reused pid):
    # taken over.
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = workdir_lock._start_time(alive.pid)
        lock.write_text(json.dumps({**here, "pid": alive.pid, "start_time": started}))
        with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {alive.pid} on host"):
            workdir_lock.WorkdirLock(str(tmp_path)).acquire()
        assert json.loads(lock.read_text())["pid"] == alive.pid  # untouched
        lock.write_text(json.dumps({**here, "pid": alive.pid, "start_time": started + 1}))
        with workdir_lock.WorkdirLock(str(tmp_path)) as taken:
            assert taken.taken_over["pid"] == alive.pid
    finally:
        alive.kill()
        alive.wait()
    # Another host (a shared file system): its heartbeat decides.
    other = {"host": "another-node", "pid": 1, "since": "earlier"}
    lock.write_text(json.dumps(other))
    with pytest.raises(workdir_lock.WorkdirBusy, match="on host 'another-node'"):
        workdir_lock.WorkdirLock(str(tmp_path), stale_s=300).acquire()
    old = time.time() - 600
    os.utime(lock, (old, old))
    with workdir_lock.WorkdirLock(str(tmp_path), stale_s=300) as taken:
        assert taken.taken_over == other


def test_the_lock_holder_refreshes_its_heartbeat(tmp_path):
    with workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05) as taken:
        old = time.time() - 600
        os.utime(taken.path, (old, old))
        time.sleep(0.3)
        assert time.time() - os.stat(taken.path).st_mtime < 60
        # A second process would see it as live even from another host.
        with pytest.raises(workdir_lock.WorkdirBusy):
            workdir_lock.WorkdirLock(str(tmp_path), stale_s=60).acquire()
    new = tmp_path / "new"  # a workdir the lock created is removed when nothing else is in it
    workdir_lock.WorkdirLock(str(new)).acquire().release()
    assert not new.exists()


# --- the kNN monitor evaluates the user's data only -----------------------------------------


def _folder(path, n=80, classes=2, size=16):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = path / f"c{i % classes}" if classes else path
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"{i}.png")
    return path


def _pretrain(tmp_path, log, **settings):
    from simsiam_keras.apps import pretrain

    settings = {
        "workdir": str(tmp_path / "run"),
        "dataset": "digits",
        "backbone": "resnet18_cifar",
        "width": 0.125,
        "image_size": 16,
        "dim": 32,
        "pred_dim": 8,
        "batch_size": 16,
        "epochs": 1,
        "steps_per_epoch": 1,
        "knn_every": 1,
        "knn_k": 5,
        "export": False,
        "progress_every_s": 1e9,
        **settings,
    }
    from simsiam_keras.config import PretrainConfig

    return pretrain.run(PretrainConfig(**settings), log=log.append)


def test_a_folder_without_val_dir_holds_out_its_own_images(tmp_path):
    images = _folder(tmp_path / "images")
    log = []
    # The CIFAR-10 recipe names a TFDS dataset; with --train_dir nothing of it is looked for.
    summary = _pretrain(tmp_path, log, dataset="cifar10", train_dir=str(images))
    held = (tmp_path / "run" / "knn_holdout.txt").read_text().splitlines()
    assert len(held) == 8 and {h.split("/")[0] for h in held} == {"c0", "c1"}  # 4 per class
    assert summary["train_images"] == 72
    queries = {"queries": f"{images} (held out)", "query_images": 8, "k": 5}
    assert summary["knn"] == {"memory": str(images), "memory_images": 72, **queries}
    assert any(line.startswith("Holding out 8 of the 80 images") for line in log), log
    assert not any("digits" in line or "tfds" in line for line in log), log
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["knn_holdout"] is None and config["train_dir"] == str(images)
    # A resume holds out the same images, even with the monitor switched off.
    again = _pretrain(tmp_path, [], dataset="cifar10", train_dir=str(images), epochs=2, knn_every=0)
    assert again["train_images"] == 72 and again["steps"] == 2
    assert (tmp_path / "run" / "knn_holdout.txt").read_text().splitlines() == held


def test_no_holdout_and_no_monitor_for_an_unlabelled_folder_or_when_switched_off(tmp_path):
    flat = _folder(tmp_path / "flat", n=40, classes=0)
    log = []
    summary = _pretrain(tmp_path, log, train_dir=str(flat))
    assert summary["knn"] is None and summary["knn_top1"] is None
    assert [line for line in log if "kNN" in line] == [
        f"kNN monitor off: {flat} has no class subfolders (<class>/<image>), so no labels."
    ]
    images = _folder(tmp_path / "images", n=40)
    # A count that leaves nothing to train on: the flag is named, before any work.
    from simsiam_keras.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _pretrain(tmp_path / "all", [], train_dir=str(images), knn_holdout=40)
    assert caught.value.render("--").startswith("--knn_holdout: cannot hold out 40 of the 40")
    assert not (tmp_path / "all" / "run").exists()
    log = []
    summary = _pretrain(tmp_path / "off", log, train_dir=str(images), knn_holdout=0)
    assert summary["train_images"] == 40 and summary["knn"] is None
    assert any(line.startswith("kNN monitor off: this run holds out no images") for line in log)
    # A labelled --val_dir: the queries are its images, nothing is held out.
    log = []
    summary = _pretrain(
        tmp_path / "val", log, train_dir=str(images), val_dir=str(flat.parent / "images")
    )
    assert summary["train_images"] == 40 and summary["knn"]["queries"] == str(images)


# --- model.keras loads the Keras way --------------------------------------------------------

_LOAD = """
import json, sys
{imports}
loaded = [keras.models.load_model(p) for p in sys.argv[1:]]
print(json.dumps([[type(m).__name__, type(getattr(m, "optimizer", None)).__name__,
                   float(sum(float(keras.ops.sum(w)) for w in m.weights))] for m in loaded]))
"""


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Every kind of `.keras` file the package writes, and what each must load as (built once
    for both test workers)."""
    directory = built_once(tmp_path_factory, "keras_files", _write_keras_files)
    with open(directory / "expected.json") as f:
        return json.load(f)


def _write_keras_files(directory):
    import keras

    import simsiam_keras as sk
    from simsiam_keras import linear
    from tests.helpers import tiny_simsiam

    keras.utils.set_random_seed(0)
    model = tiny_simsiam()
    model.compile(optimizer=sk.simsiam_optimizer(0.05, 8, 2, 1, 1e-4))
    views = np.random.default_rng(0).uniform(-1, 1, (2, 8, 16, 16, 3)).astype("float32")
    model.fit((views[0], views[1]), batch_size=8, epochs=1, shuffle=False, verbose=0)
    augmented = sk.SimSiam(tiny_simsiam().backbone, 32, 8, 2, augment=sk.ViewAugment())
    classifier = sk.LinearClassifier(tiny_simsiam().backbone, 10)
    classifier.compile(optimizer=linear.linear_optimizer("lars", 8, 1, 1), loss="mse")
    files = {
        "simsiam": model,
        "augmented": augmented,
        "backbone": model.backbone,
        "classifier": classifier,
    }
    paths, expected = [], []
    for name, saved in files.items():
        paths.append(str(directory / f"{name}.keras"))
        saved.save(paths[-1])
        total = float(sum(float(keras.ops.sum(w)) for w in saved.weights))
        expected.append(
            [type(saved).__name__, type(getattr(saved, "optimizer", None)).__name__, total]
        )
    with open(directory / "expected.json", "w") as f:
        json.dump([paths, expected], f)


@pytest.mark.parametrize(
    "backend, imports",
    [
        ("tensorflow", "import keras, simsiam_keras"),
        ("tensorflow", "import simsiam_keras, keras"),
        ("jax", "import keras, simsiam_keras"),
        ("torch", "import simsiam_keras, keras"),
    ],
)
def test_every_keras_file_loads_after_import_simsiam_keras_in_a_new_process(
    tmp_path, keras_files, backend, imports
):
    # The SimSiam of a run with its compiled optimiser and schedule, one with ViewAugment, a
    # backbone, a LinearClassifier with LARS; before, `import simsiam_keras` registered none.
    pytest.importorskip(backend)
    paths, expected = keras_files
    env = backend_environ(backend, user_environ(), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-c", _LOAD.format(imports=imports), *paths]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [row[:2] for row in loaded] == [row[:2] for row in expected]
    np.testing.assert_allclose([r[2] for r in loaded], [r[2] for r in expected], rtol=1e-5)


# --- smaller promises -----------------------------------------------------------------------


def test_the_epoch_line_rate_is_that_of_the_training_steps(monkeypatch):

    from simsiam_keras import monitors, report

    clock = [100.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    progress = monitors.TrainingProgress(1, 4, 32, every_s=1e9, stream=stream)
    progress.on_epoch_begin(0)
    for _ in range(4):  # 4 steps of 32 pairs in 2 s
        clock[0] += 0.5
        progress.on_train_batch_end(0, {"loss": 0.0})
    clock[0] += 30.0  # the kNN pass, then the epoch line
    progress.on_epoch_end(0, {"loss": -0.1, "knn_top1": 50.0})
    assert "epoch 1/1  4/4 (100%)  64.0 pairs/s  0:02  loss -0.1  knn_top1 50" in stream.getvalue()


def test_feature_extraction_of_a_folder_shows_a_total(tmp_path, capsys):
    from simsiam_keras import data, knn, sources
    from tests.helpers import tiny_backbone

    source = sources.image_folder(str(_folder(tmp_path / "images", n=20)), labeled=True)
    batches = knn.SizedBatches(data.labeled_dataset(source, 8, 16), source.size, 8)
    features, labels = knn.extract_features(tiny_backbone(), batches, progress_every_s=0)
    assert features.shape == (20, 64) and len(batches) == 3
    assert "features  3/3 (100%)" in capsys.readouterr().out


def test_fit_on_a_pipeline_does_not_warn_about_shuffle():
    # SimSiam on its two-view pipeline, LinearClassifier on a labelled one: Keras's warning
    # that `shuffle=True` is ignored for a tf.data dataset is not printed.
    import warnings

    import keras

    import simsiam_keras as sk
    from simsiam_keras import data, linear, sources
    from tests.helpers import tiny_simsiam

    digits = sources.embedded_digits("test", 16)
    model = tiny_simsiam()
    model.compile(optimizer=sk.simsiam_optimizer(0.05, 16, 1, 1))
    classifier = sk.LinearClassifier(tiny_simsiam().backbone, 10)
    classifier.compile(
        optimizer=linear.linear_optimizer("sgd", 16, 1, 1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fits = [
        (model, data.two_view_dataset(digits, 16, 16, repeat=True)),
        (classifier, data.labeled_dataset(digits, 16, 16, train=True).repeat()),
    ]
    for fitted, dataset in fits:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
        assert not [w for w in caught if "shuffle" in str(w.message)], type(fitted)
        assert keras.ops.convert_to_numpy(fitted.optimizer.iterations) == 1


def test_one_name_and_one_default_for_the_knn_k():
    from simsiam_keras import config

    names = {f.name for f in config.dataclasses.fields(config.KnnConfig)}
    assert "knn_k" in names and "k" not in names


def test_evaluating_on_an_unlabelled_folder_is_a_usage_error(tmp_path, keras_files):
    from simsiam_keras import config
    from simsiam_keras.apps import linear_eval

    flat = str(_folder(tmp_path / "flat", n=8, classes=0))
    backbone_file = keras_files[0][2]
    settings = config.LinearConfig(pretrained=backbone_file, train_dir=flat, val_dir=flat)
    with pytest.raises(config.ConfigError) as caught:
        linear_eval.load_evaluation(settings)
    assert caught.value.render("--").startswith(f"--train_dir {flat!r} has no labels")


def test_a_failed_export_or_plot_costs_neither_the_model_nor_the_summary(tmp_path, monkeypatch):
    from simsiam_keras import report
    from simsiam_keras.apps import pretrain

    def fail(*args, **kwargs):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(pretrain, "export_or_explain", fail)
    monkeypatch.setattr(report, "plot_history", fail)
    log = []
    summary = _pretrain(tmp_path, log, export=True)
    work = tmp_path / "run"
    assert summary["export"] is None and (work / "model.keras").exists()
    assert json.loads((work / "summary.json").read_text())["steps"] == 1
    assert (
        "The SavedModel export failed (RuntimeError: No space left on device); the weights are "
        f"in {work / 'model.keras'}. Export with: python scripts/export.py --workdir {work}"
    ) in log
    plot = "history.png was not written (RuntimeError: No space left on device); the numbers"
    assert f"{plot} are in {work / 'history.csv'}." in log
