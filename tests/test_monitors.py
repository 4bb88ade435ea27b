"""KNNMonitor and CollapseMonitor in real `fit` runs of a tiny SimSiam (no TensorFlow needed)."""

import csv
import math
import types
import warnings

import keras
import numpy as np
import pytest

import simsiam_keras as sk
from simsiam_keras import knn, monitors

SIZE, DIM = 8, 32


def _tiny_simsiam():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    return sk.SimSiam(backbone, dim=DIM, pred_dim=8, projector_layers=2)


def _images(n, seed):
    return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


def _views(n=64):
    return _images(n, 1), _images(n, 2)


@pytest.mark.multibackend
def test_knn_monitor_logs_on_first_every_nth_and_last_epoch(tmp_path):
    model = _tiny_simsiam()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    train = (_images(48, 3), np.arange(48) % 4)
    val = (_images(20, 4), np.arange(20) % 4)
    monitor = monitors.KNNMonitor(train, val, every=2, k=10, batch_size=16)
    csv_path = str(tmp_path / "log.csv")
    history = model.fit(
        _views(),
        batch_size=32,
        epochs=5,
        verbose=0,
        callbacks=[monitor, keras.callbacks.CSVLogger(csv_path)],
    ).history
    # Epochs (from 1) 1 (first), 2 and 4 (every 2nd), 5 (last); 3 carries no key.
    assert [epoch for epoch, _ in monitor.history] == [1, 2, 4, 5]
    assert history["knn_top1"] == [value for _, value in monitor.history]
    assert "knn_top5" not in history  # 4 classes
    assert all(0.0 <= value <= 100.0 for value in history["knn_top1"])
    assert len(history["loss"]) == 5
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [row["knn_top1"] for row in rows][2] == "NA"
    assert [float(rows[i]["knn_top1"]) for i in (0, 1, 3, 4)] == history["knn_top1"]
    # The logged number is the kNN accuracy of the backbone as it is at the end of training.
    features = [knn.extract_features(model.backbone, data) for data in (train, val)]
    expected = knn.knn_accuracy(*features[0], *features[1], k=10)
    assert monitor.history[-1][1] == pytest.approx(expected["knn_top1"])


def test_knn_monitor_reads_tf_data_and_logs_top5():
    import tensorflow as tf

    model = _tiny_simsiam()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    labels = np.arange(40) % 8
    train = tf.data.Dataset.from_tensor_slices((_images(40, 5), labels)).batch(16)
    val = tf.data.Dataset.from_tensor_slices((_images(40, 5), labels)).batch(16)
    monitor = monitors.KNNMonitor(train, val, every=3, k=1)
    history = model.fit(_views(), batch_size=32, epochs=2, verbose=0, callbacks=[monitor]).history
    assert [epoch for epoch, _ in monitor.history] == [1, 2]
    # Val == train and k = 1: every image is its own nearest neighbour.
    assert history["knn_top1"] == [100.0, 100.0]
    assert history["knn_top5"] == [100.0, 100.0]


def test_knn_monitor_rejects_a_model_without_backbone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    monitor = monitors.KNNMonitor((np.zeros((4, 4)), np.zeros(4)), (np.zeros((4, 4)), np.zeros(4)))
    with pytest.raises(ValueError, match="backbone"):
        model.fit(np.zeros((4, 4)), np.zeros((4, 2)), epochs=1, verbose=0, callbacks=[monitor])


def _fit_with_collapse_monitor(model, epochs):
    # lr = 0: the weights stay as built; training mode still moves the BN statistics to the
    # data, as they would in the first epochs of a real run.
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    monitor = monitors.CollapseMonitor(_images(64, 7), patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            _views(), batch_size=8, epochs=epochs, verbose=0, callbacks=[monitor]
        ).history
    return monitor, history, [w for w in caught if issubclass(w.category, monitors.CollapseWarning)]


def test_collapse_monitor_warns_once_on_a_collapsed_model():
    model = _tiny_simsiam()
    # Collapse by construction: the last projector Linear is zero and its (frozen) non-affine BN
    # shifts by a constant, so z is the same vector for every image.
    dense = model.projector.get_layer("projector_dense_2")
    dense.kernel.assign(np.zeros(dense.kernel.shape, np.float32))
    bn = model.projector.get_layer("projector_bn_2")
    bn.moving_mean.assign(-np.ones(DIM, np.float32))
    bn.trainable = False
    monitor, history, caught = _fit_with_collapse_monitor(model, epochs=6)
    assert history["probe_z_std"] == pytest.approx([0.0] * 6, abs=1e-6)
    assert history["z_rank"] == pytest.approx([1.0] * 6, abs=1e-3)  # one vector for all
    assert [std for _, std in monitor.history] == pytest.approx([0.0] * 6, abs=1e-6)
    assert len(caught) == 1  # patience 3: at epoch 3, and not again at epochs 4-6
    assert monitor.collapsed and monitor.collapse_epoch == 3
    message = str(caught[0].message)
    for cause in ("collapsed", "learning rate", "augmentation", "--nostop_gradient"):
        assert cause in message


def test_collapse_monitor_is_silent_on_a_healthy_model():
    monitor, history, caught = _fit_with_collapse_monitor(_tiny_simsiam(), epochs=5)
    healthy = 1.0 / math.sqrt(DIM)
    print("probe z_std x sqrt(dim):", [s / healthy for s in history["probe_z_std"]])
    # Once the BN statistics follow the data the random network spreads its outputs: near
    # 1/sqrt(dim), as a healthy run (paper Sec. 4.1).
    assert 0.8 * healthy < history["probe_z_std"][-1] < 1.1 * healthy
    assert 0.8 * healthy < monitor.history[-1][1] < 1.1 * healthy  # the training-time value
    assert caught == [] and not monitor.collapsed and monitor.collapse_epoch is None
    assert [epoch for epoch, _ in monitor.history] == [1, 2, 3, 4, 5]
    # The ranks logged are those of the probe's embeddings, as `losses.effective_rank` gives.
    features = np.asarray(monitor.model.backbone(_images(64, 7)))
    z = np.asarray(monitor.model.projector(features))
    assert history["feature_rank"][-1] == pytest.approx(_rank(features), rel=1e-3)
    assert history["z_rank"][-1] == pytest.approx(_rank(z), rel=1e-3)
    assert 1 < history["feature_rank"][-1] <= 64 and 1 < history["z_rank"][-1] <= 64


def _rank(x):
    sigma = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_collapse_monitor_warns_on_a_low_feature_rank_with_min_rank():
    model = _tiny_simsiam()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    monitor = monitors.CollapseMonitor(_images(64, 7), patience=2, min_rank=1e6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(_views(), batch_size=8, epochs=3, verbose=0, callbacks=[monitor])
    caught = [w for w in caught if issubclass(w.category, monitors.CollapseWarning)]
    assert len(caught) == 1 and "dimensional collapse" in str(caught[0].message)
    assert monitor.rank_collapsed and not monitor.collapsed
    assert [epoch for epoch, *_ in monitor.rank_history] == [1, 2, 3]
    with pytest.raises(ValueError, match="min_rank"):
        monitors.CollapseMonitor(min_rank=10)


def test_collapse_monitor_needs_patience_consecutive_epochs_and_warns_once():
    low, ok = 0.005, 0.08  # dim 100: healthy 0.1, threshold 0.05
    stds = [ok, low, low, ok, low, low, low, low, ok, low, low, low]
    monitor = monitors.CollapseMonitor(patience=3)
    monitor.set_model(types.SimpleNamespace(dim=100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, std in enumerate(stds):
            monitor.on_epoch_end(epoch, {"z_std": np.float32(std)})
    assert [std for _, std in monitor.history] == pytest.approx(stds)
    assert len(caught) == 1 and issubclass(caught[0].category, monitors.CollapseWarning)
    assert monitor.collapse_epoch == 7  # the dip at epochs 2-3 was too short
    with pytest.raises(ValueError, match="z_std"):
        monitor.on_epoch_end(12, {"loss": -0.5})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probe_images": np.zeros((1, 4, 4, 3))}, "at least 2"),
        ({"probe_images": np.zeros((4, 4, 3))}, "at least 2"),
        ({"threshold": 0.0}, "threshold"),
        ({"patience": 0}, "patience"),
    ],
)
def test_collapse_monitor_rejects_bad_arguments(kwargs, match):
    args = {"probe_images": np.zeros((4, 4, 4, 3)), **kwargs}
    with pytest.raises(ValueError, match=match):
        monitors.CollapseMonitor(**args)


def test_progress_lines_when_not_on_a_terminal():
    import io

    from simsiam_keras import report

    quiet = report.Progress("epoch 1/2", 10, "pairs/s", 64, every_s=1e9, stream=io.StringIO())
    quiet.update(3, {"loss": -0.5})
    assert quiet.stream.getvalue() == "" and not quiet.due()  # not yet time for a line
    quiet.done(10, {"loss": -0.5})
    assert quiet.stream.getvalue().startswith("epoch 1/2  10/10 (100%)  ")
    every = report.Progress("epoch 1/2", 10, "pairs/s", 64, every_s=0, stream=io.StringIO())
    every.update(5, {"loss": -0.25}, ran=2)  # a resumed epoch: 3 steps ran before this process
    line = every.stream.getvalue().strip()
    assert line.startswith("epoch 1/2  5/10 (50%)  ") and "pairs/s  ETA " in line
    assert line.endswith("loss -0.25")
