"""Linear evaluation, export and the evaluation scripts, end to end on the embedded digits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import simsiam_keras as sk
from simsiam_keras import augment, data, export, linear, report, sources
from simsiam_keras.history import EpochHistory
from tests.helpers import ROOT, SIZE, last_json, run_command, tiny_backbone

_backbone = tiny_backbone


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny SimSiam saved as .keras and its backbone exported as a SavedModel."""
    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("pretrained")
    model = sk.SimSiam(_backbone(), dim=32, pred_dim=8, projector_layers=2)
    model.save(tmp / "model.keras")
    export.export_backbone(model.backbone, str(tmp / "export"), SIZE, "resnet18_cifar", 0.125)
    return tmp, model


def _digits(split, batch, train=False):
    return data.labeled_dataset(sources.embedded_digits(split, SIZE), batch, SIZE, train=train)


def test_linear_eval_trains_and_keeps_the_backbone_frozen():
    keras.utils.set_random_seed(0)
    backbone = _backbone()
    model = linear.LinearClassifier(backbone, 10)
    model.compile(
        optimizer=linear.linear_optimizer("sgd", 128, 3, 11, base_lr=2.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")],
    )
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    fc = model.fc.kernel.numpy()
    assert abs(fc.std() - 0.01) < 0.003 and not model.fc.bias.numpy().any()  # N(0, 0.01), 0
    before = linear.snapshot(backbone)
    # Centre views for training too: 8% crops of a 16 px digit would say little about learning.
    train = _digits("train", 128)
    history = model.fit(train.repeat(), epochs=3, steps_per_epoch=11, verbose=0)
    linear.check_unchanged(backbone, before)  # BN statistics and weights did not move
    top1 = model.evaluate(_digits("test", 128), verbose=0, return_dict=True)["top1"]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert top1 > 0.3, top1  # chance is 0.1


def test_frozen_check_trips_when_batchnorm_trains():
    backbone = _backbone()
    model = linear.LinearClassifier(backbone, 10, freeze_backbone=False)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    before = linear.snapshot(backbone)
    x = np.random.default_rng(0).normal(size=(8, SIZE, SIZE, 3)).astype("float32")
    model.fit(x, np.zeros(8, "int64"), epochs=1, verbose=0)  # lr 0: only BN statistics move
    with pytest.raises(RuntimeError, match="frozen backbone changed"):
        linear.check_unchanged(backbone, before)


def test_linear_optimizers():
    lars = linear.linear_optimizer("lars", 4096, 90, 312)
    assert lars.learning_rate.numpy() == pytest.approx(1.6)  # 0.1 x 4096 / 256
    sgd = linear.linear_optimizer("sgd", 256, 90, 5004)
    assert sgd.learning_rate.numpy() == pytest.approx(30.0)
    with pytest.raises(ValueError, match="lars"):
        linear.linear_optimizer("adam", 256, 1, 1)


def test_export_round_trip_and_loading(saved):
    tmp, model = saved
    images = np.random.default_rng(1).uniform(0, 1, (4, SIZE, SIZE, 3)).astype("float32")
    normalised = (images - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    expected = model.backbone(normalised.astype("float32"), training=False).numpy()
    loaded = tf.saved_model.load(str(tmp / "export"))
    served = loaded.signatures["serving_default"](images=tf.constant(images * 255.0))
    np.testing.assert_allclose(served["features"].numpy(), expected, atol=1e-4)
    meta = json.load(open(tmp / "export" / "assets" / export.META_FILE))
    assert meta == {
        "backbone": "resnet18_cifar",
        "width": 0.125,
        "image_size": 16,
        "feature_dim": expected.shape[1],
    }
    for path in (tmp / "model.keras", tmp / "export", tmp):  # file, SavedModel, workdir
        backbone = linear.load_backbone(str(path), SIZE)
        out = backbone.predict_on_batch(normalised.astype("float32"))
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)
    with pytest.raises(ValueError, match="not found"):
        linear.load_backbone(str(tmp / "missing.keras"))
    with pytest.raises(ValueError, match="16 px"):
        linear.load_backbone(str(tmp / "model.keras"), 32)
    with pytest.raises(ValueError, match="exported for 16 px"):
        linear.load_backbone(str(tmp / "export"), 32)


def _script(name, *args):
    """The evaluation command `name` in this process, on the embedded digits."""
    return run_command(name.removesuffix(".py"), "--dataset=digits", *args)


def test_linear_eval_and_knn_eval_scripts(saved, tmp_path):
    tmp, _ = saved
    result = _script(
        "linear_eval.py",
        f"--pretrained={tmp / 'model.keras'}",
        f"--workdir={tmp_path}",
        "--image_size=16",
        "--batch_size=128",
        "--epochs=2",
        "--steps_per_epoch=3",
        "--protocol=official",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = last_json(result)
    assert last["what"] == "linear_eval" and 0 <= last["val_top1"] <= 100
    saved_results = json.load(open(tmp_path / "linear_eval.json"))
    assert saved_results["backbone_unchanged"] and len(saved_results["history"]["loss"]) == 2
    assert saved_results["protocol"] == "official"
    assert (tmp_path / "linear_eval.png").stat().st_size > 0
    tops = []
    for pretrained in (tmp / "model.keras", tmp / "export"):
        result = _script("knn_eval.py", f"--pretrained={pretrained}")  # size from the model
        assert result.returncode == 0, result.stderr[-3000:]
        tops.append(last_json(result)["knn_top1"])
    assert tops[0] == pytest.approx(tops[1], abs=0.5) and tops[0] > 20  # chance is 10
    # The quickstart's evaluation on a small dataset (auto -> features) learns: at least the
    # kNN accuracy of the same backbone, as a linear probe on the same features normally does.
    # No --image_size: read from the model (16 px here).
    result = _script(
        "linear_eval.py",
        f"--flagfile={ROOT}/configs/quickstart_linear.cfg",
        f"--pretrained={tmp / 'model.keras'}",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = last_json(result)
    print(f"linear (features) {last['val_top1']:.1f} vs kNN {tops[0]:.1f}")
    assert last["protocol"] == "features" and last["val_top1"] >= tops[0]


def test_scripts_reject_bad_input(saved, tmp_path):
    tmp, _ = saved
    result = _script("knn_eval.py", f"--pretrained={tmp / 'nope.keras'}")
    assert result.returncode != 0 and "not found" in result.stderr
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    Image.new("RGB", (20, 20)).save(flat / "a.png")
    result = _script(
        "knn_eval.py",
        f"--pretrained={tmp / 'model.keras'}",
        "--image_size=16",
        f"--train_dir={flat}",
        f"--val_dir={flat}",
    )
    assert result.returncode != 0 and "no labels" in result.stderr
    result = _script("linear_eval.py", f"--pretrained={tmp / 'model.keras'}", "--epochs=0")
    assert result.returncode != 0 and "--epochs must be a positive integer" in result.stderr
    result = _script("linear_eval.py", f"--pretrained={tmp / 'model.keras'}", "--l2=0")
    assert result.returncode != 0 and "--l2 must be positive" in result.stderr
    result = _script("linear_eval.py", f"--pretrained={tmp / 'model.keras'}", "--image_size=32")
    assert result.returncode != 0 and "16 px" in result.stderr


def test_fit_on_features_matches_the_classifier_and_learns():
    keras.utils.set_random_seed(0)
    model = linear.LinearClassifier(_backbone(), 10)
    model(np.zeros((1, SIZE, SIZE, 3), "float32"))
    before = linear.snapshot(model.backbone)
    result = linear.fit_on_features(model, _digits("train", 256), _digits("test", 256))
    linear.check_unchanged(model.backbone, before)
    # The folded layer gives the solver's accuracy through the classifier itself.
    correct = total = 0
    for images, labels in _digits("test", 256):
        logits = keras.ops.convert_to_numpy(model(images))
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        total += len(labels)
    top1 = 100.0 * correct / total
    assert top1 == pytest.approx(result["top1"], abs=0.5)
    assert result["top1"] > 50 and result["train_top1"] >= result["top1"]  # chance is 10


def test_report_json_and_plot(tmp_path):
    path = report.write_json(str(tmp_path / "r.json"), {"a": np.float32(1.5)})
    assert json.load(open(path)) == {"a": 1.5}
    history = {"loss": [-0.1, -0.5, -0.7], "z_std": [0.05, 0.06, 0.07], "knn_top1": [20.0, 40.0]}
    history["knn_top1_epochs"] = [1, 3]
    assert report.plot_history(history, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert report.plot_history({}, str(tmp_path / "none.png")) is None


def test_a_history_file_spans_a_resumed_run_and_plots(tmp_path):
    # An epoch written twice (cut short, then whole) counts once, with its last row; the kNN
    # column is empty where the monitor did not run.
    path = tmp_path / "history.csv"
    path.write_text("epoch,knn_top1,loss\n0,20.5,-0.1\n1,NA,-0.3\n1,,-0.4\n2,41.0,-0.6\n")
    history = EpochHistory.load(str(path)).as_dict()
    assert history["loss"] == [-0.1, -0.4, -0.6] and history["loss_epochs"] == [1, 2, 3]
    assert history["knn_top1"] == [20.5, None, 41.0]
    assert report.plot_history(history, str(tmp_path / "h.png"))
    assert EpochHistory.load(str(tmp_path / "missing.csv")).rows == {}
    (tmp_path / "empty.csv").write_text("epoch,loss\n")
    assert EpochHistory.load(str(tmp_path / "empty.csv")).as_dict() == {}
    # A column with no value at all gets no panel (here: nothing to plot).
    assert report.plot_history({"loss": [None, None]}, str(tmp_path / "n.png")) is None


def test_linear_classifier_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = linear.LinearClassifier(_backbone(), 10)
    images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    model.save(tmp_path / "linear.keras")
    loaded = keras.models.load_model(tmp_path / "linear.keras")
    assert loaded.num_classes == 10 and loaded.freeze_backbone and not loaded.backbone.trainable
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-6)
