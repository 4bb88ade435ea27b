"""The pretraining CLI end to end: smoke run, configs, bad flags, kill and resume, quickstart."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from simsiam_keras import checkpoint
from tests.helpers import (
    ROOT,
    SMALL_PRETRAIN,
    backend_environ,
    last_json,
    run_command,
    run_killed_mid_checkpoint,
    run_script,
)

SCRIPT = os.path.join(ROOT, "scripts", "pretrain.py")
SMALL = SMALL_PRETRAIN


def _run(*args, timeout=None):
    """`scripts/pretrain.py args`, in this process (`run_command`)."""
    return run_command("pretrain", *args)


def test_smoke_run_writes_everything(tmp_path):
    import tensorflow as tf

    work = tmp_path / "run"
    summary = last_json(
        _run(*SMALL, f"--workdir={work}", "--epochs=2", "--steps_per_epoch=2", "--knn_every=1")
    )
    assert summary["steps"] == 4 and summary["knn_top1"] is not None
    for name in ("summary.json", "history.csv", "history.png", "model.keras"):
        assert (work / name).exists(), name
    assert (work / "export" / "backbone" / "saved_model.pb").exists()
    tags = {}  # TensorBoard: per-epoch and per-step scalars, steps counted globally
    for events in (work / "tensorboard").glob("train/events*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    epoch_tags = ("loss", "z_std", "learning_rate", "knn_top1", "probe_z_std")
    for name in (*epoch_tags, "feature_rank", "z_rank"):
        assert tags.get(f"epoch_{name}") == [0, 1], (name, tags)
    assert "epoch_lr" not in tags  # the same curve as Keras's epoch_learning_rate
    for name in ("loss", "z_std", "lr"):
        assert tags.get(f"batch_{name}") == [2, 4], (name, tags)
    saved = json.load(open(work / "summary.json"))
    for key in ("config", "wall_s", "pairs_per_s", "backend", "seed", "versions", "final"):
        assert key in saved, key
    assert saved["config"]["image_size"] == 16 and "loss" in saved["final"]


def test_views_augmented_on_the_device(tmp_path):
    """--augment_on=device: crops from tf.data, the rest of the recipe inside the step."""
    import keras

    work = tmp_path / "run"
    summary = last_json(
        _run(
            *SMALL, f"--workdir={work}", "--epochs=1", "--steps_per_epoch=2", "--augment_on=device"
        )
    )
    assert summary["steps"] == 2
    saved = json.load(open(work / "summary.json"))
    assert np.isfinite(saved["final"]["loss"]) and saved["config"]["augment_on"] == "device"
    import simsiam_keras as sk

    assert sk.SimSiam  # registers the package's classes (the module is imported on first use)
    model = keras.models.load_model(work / "model.keras", compile=False)
    assert isinstance(model.augment, sk.ViewAugment)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size=0"], "--batch_size must be a positive integer"),
        (["--epochs=-1"], "--epochs must be a positive integer"),
        (["--base_lr=0"], "--base_lr must be positive"),
        (["--backbone=vgg"], "flag --backbone=vgg: value should be one of"),
        (["--train_dir=/no/such/dir"], "image folder not found"),
        (["--dataset=no_such_tfds_name"], "Unknown TFDS dataset"),
        (["--dataset=imagenet2012"], "A first run offline: --flagfile configs/quickstart.cfg"),
        (["--strategy=everything"], "strategy"),
        (["--strategy=multi_worker"], "which is not set"),  # no TF_CONFIG
        (["--augment_on=device", "--augment_impl=kerascv"], "--augment_impl=kerascv runs on"),
    ],
)
def test_bad_flags_stop_with_a_message(tmp_path, args, message):
    result = _run(*SMALL, f"--workdir={tmp_path / 'w'}", *args, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()  # stopped before any work


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "needs a 'cluster' and a 'task'"),
        (
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
            "is not one of its cluster's members",
        ),
    ],
)
def test_multi_worker_bad_tf_config_stops_with_a_message(monkeypatch, tf_config, message):
    from simsiam_keras import distribute

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribute.make_strategy("multi_worker")


@pytest.mark.multibackend
def test_each_backend_refuses_the_strategies_it_cannot_run():
    # A --strategy flag naming what the backend cannot do: a `ConfigError` naming the flag
    # (the command line prints it as one line, exit 2), before any work.
    import keras

    from simsiam_keras import distribute, errors

    backend = keras.backend.backend()
    refused = {"torch": ["mirrored", "multi_worker"], "jax": ["multi_worker"]}.get(backend, [])
    for name in refused:
        with pytest.raises(errors.ConfigError) as caught:
            distribute.make_strategy(name)
        assert caught.value.render("--").startswith(f"--strategy={name} is ")
    with pytest.raises(errors.ConfigError, match="strategy must be one of"):
        distribute.make_strategy("everything")
    assert distribute.make_strategy("one_device") == (None, 1)


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _run(*SMALL, f"--workdir={tmp_path / 'file'}", timeout=300)
    assert result.returncode != 0 and "is a file" in result.stderr


def test_every_config_parses_and_smoke_runs(tmp_path):
    configs = sorted(p for p in os.listdir(os.path.join(ROOT, "configs")) if p.endswith(".cfg"))
    assert {"in1k.cfg", "cifar10.cfg", "quickstart.cfg"} <= set(configs)
    linear = [name for name in configs if name.endswith("_linear.cfg")]
    assert linear == [
        "cifar10_cpu_linear.cfg",
        "cifar10_linear.cfg",
        "in1k_linear.cfg",
        "quickstart_linear.cfg",
    ]
    knn = [name for name in configs if name.endswith("_knn.cfg")]
    for name in configs:
        text = open(os.path.join(ROOT, "configs", name)).read()
        assert text.startswith("#") and "python scripts/" in text, name
    # Each recipe, overridden to one step of a tiny model on the embedded data.
    for name in sorted(set(configs) - set(linear) - set(knn)):
        result = _run(
            f"--flagfile={os.path.join(ROOT, 'configs', name)}",
            *SMALL,
            "--dataset=digits",
            "--epochs=1",
            "--steps_per_epoch=1",
            f"--workdir={tmp_path / name}",
            "--export=false",
            "--strategy=auto",
            "--compare_random_init=false",
        )
        assert last_json(result)["steps"] == 1, name
    # Each linear protocol on the model the quickstart config left, one step / one fit.
    model = tmp_path / "quickstart.cfg" / "model.keras"
    for name in linear:
        result = run_command(
            "linear_eval",
            f"--flagfile={os.path.join(ROOT, 'configs', name)}",
            f"--pretrained={model}",
            "--dataset=digits",
            "--image_size=16",
            "--batch_size=64",
            "--epochs=1",
            "--steps_per_epoch=1",
            f"--workdir={tmp_path / name}",
        )
        assert last_json(result)["val_top1"] is not None, name
    for name in knn:
        result = run_command(
            "knn_eval",
            f"--flagfile={os.path.join(ROOT, 'configs', name)}",
            f"--pretrained={model}",
            "--batch_size=64",
        )
        assert last_json(result)["knn_top1"] is not None, name


def _weights(path):
    with np.load(path / "model.weights.npz") as f:
        return [f[k] for k in sorted(f.files)]


def test_a_kill_mid_checkpoint_keeps_the_last_one_and_the_rerun_matches(tmp_path):
    common = [
        *SMALL,
        "--epochs=2",
        "--steps_per_epoch=4",
        "--checkpoint_every=1",
        "--deterministic",
        "--export=false",
        "--seed=3",
    ]
    straight = tmp_path / "straight"
    assert last_json(_run(*common, f"--workdir={straight}"))["steps"] == 8
    final = _weights(straight / "checkpoints" / "ckpt-8")

    work = tmp_path / "killed"
    killed = run_killed_mid_checkpoint("pretrain", 5, *common, f"--workdir={work}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    directory = work / "checkpoints"
    assert [n for n in os.listdir(directory) if n.startswith(".tmp-ckpt-5-")]  # the cut write
    usable = checkpoint.latest(str(directory))  # the one before it, intact
    assert checkpoint.read_state(usable)["step"] == 4
    with np.load(os.path.join(usable, "model.weights.npz")) as f:
        assert all(np.isfinite(f[k]).all() for k in f.files)

    summary = last_json(_run(*common, f"--workdir={work}"))  # the same command resumes
    assert summary["steps"] == 8
    for x, y in zip(final, _weights(directory / "ckpt-8")):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp")]


@pytest.mark.long
def test_quickstart_learns_and_its_linear_evaluation_beats_knn(tmp_path):
    # The README's quickstart, in a process of its own as a user runs it.
    work = tmp_path / "qs"
    quickstart = os.path.join(ROOT, "configs", "quickstart.cfg")
    summary = last_json(
        run_script("pretrain", f"--flagfile={quickstart}", f"--workdir={work}", "--seed=0")
    )
    # Against the random-init encoder with its BN statistics recomputed on the training images;
    # the margin of 5 points sits below the gains measured over seeds and both oneDNN settings
    # (docs/quality.md, "The quickstart").
    assert summary["knn_top1"] > summary["random_init_knn_top1"] + 5, summary
    assert summary["export"] and os.path.exists(summary["export"])
    history = json.load(open(work / "summary.json"))["final"]
    assert history["loss"] < -0.3, history  # from ~0 at the start
    # The README's linear-evaluation command on that model: a linear probe on the same
    # features reaches at least their kNN accuracy.
    linear_cfg = os.path.join(ROOT, "configs", "quickstart_linear.cfg")
    result = run_command(
        "linear_eval", f"--flagfile={linear_cfg}", f"--pretrained={work / 'model.keras'}"
    )
    linear = last_json(result)
    print(f"quickstart: kNN {summary['knn_top1']:.1f}, linear {linear['val_top1']:.1f}")
    assert linear["val_top1"] >= summary["knn_top1"], (linear, summary)


def test_export_script_from_model_and_from_checkpoint(tmp_path):
    import tensorflow as tf

    work = tmp_path / "run"
    last_json(
        _run(
            *SMALL,
            f"--workdir={work}",
            "--epochs=1",
            "--steps_per_epoch=1",
            "--export=false",
            "--checkpoint_every=1",
        )
    )
    images = tf.random.uniform([2, 16, 16, 3], 0, 255, seed=1)
    features = []
    for extra in ([], ["--checkpoint", f"--out={tmp_path / 'from_ckpt'}"]):
        out = last_json(run_command("export", f"--workdir={work}", *extra))
        loaded = tf.saved_model.load(out["path"]).signatures["serving_default"]
        features.append(loaded(images=images)["features"].numpy())
    np.testing.assert_allclose(features[0], features[1], atol=1e-5)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    work = tmp_path / "nan"
    result = _run(
        *SMALL,
        f"--workdir={work}",
        "--epochs=1",
        "--steps_per_epoch=4",
        "--checkpoint_every=1",
        "--base_lr=1e30",
        "--export=false",
    )
    assert result.returncode != 0 and "The loss became nan" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    latest = (work / "checkpoints" / "latest").read_text()
    assert latest in result.stderr  # the message names the last good checkpoint
    assert not (work / "summary.json").exists()
    with np.load(work / "checkpoints" / latest / "model.weights.npz") as f:
        assert all(np.isfinite(f[k]).all() for k in f.files)


@pytest.mark.long
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_backend_exports_and_writes_summaries(tmp_path, backend):
    # The whole flow on JAX (DataParallel over 2 host devices) and PyTorch: the run leaves a
    # SavedModel whose features equal those of the saved model's backbone, and TensorBoard
    # summaries, as on TensorFlow.
    import keras
    import tensorflow as tf

    from simsiam_keras import augment, linear

    pytest.importorskip(backend)
    work = tmp_path / backend
    devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if backend == "jax" else {}
    env = backend_environ(backend, **devices)
    strategy = "mirrored" if backend == "jax" else "auto"
    cmd = [
        sys.executable,
        SCRIPT,
        *SMALL,
        f"--workdir={work}",
        "--epochs=1",
        "--steps_per_epoch=2",
        f"--strategy={strategy}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    summary = last_json(result)
    saved = json.load(open(work / "summary.json"))
    assert saved["backend"] == backend and saved["replicas"] == (2 if backend == "jax" else 1)
    assert summary["export"] == str(work / "export" / "backbone")
    assert any(
        name.startswith("events") for _, _, names in os.walk(work / "tensorboard") for name in names
    )
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    served = tf.saved_model.load(summary["export"])(images).numpy()
    backbone = linear.load_backbone(str(work / "model.keras"))
    normalised = (images / 255.0 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
    expected = keras.ops.convert_to_numpy(backbone(normalised.astype("float32"), training=False))
    np.testing.assert_allclose(served, expected, atol=1e-4)
