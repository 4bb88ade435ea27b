"""SavedModel export from the TensorFlow and the JAX backend, reloaded with plain TensorFlow.

The TensorFlow export runs in this process; the JAX (and PyTorch) ones run this file as a script
in a process of their own (Keras fixes its backend at import):
    KERAS_BACKEND=jax python tests/test_export.py OUT_DIR
which exports a tiny backbone to OUT_DIR/export and writes the in-memory backbone's features on
the same images to OUT_DIR/reference.npz.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")  # the JAX/PyTorch suite runs with TensorFlow blocked

from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

import simsiam_keras as sk  # noqa: E402
from simsiam_keras import augment, export, linear  # noqa: E402
from tests.helpers import ROOT, backend_environ, built_once  # noqa: E402

SIZE = 16
OTHER_SIZES = {"larger": (40, 24), "smaller": (8, 8)}  # not square, and an upscale


def _normalise(pixels):
    mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
    return ((pixels / 255.0 - mean) / std).astype("float32")


def _export_and_reference(out):
    """Exports a tiny backbone under the current backend; saves what it computes in memory."""
    keras.utils.set_random_seed(0)
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=SIZE)
    rng = np.random.default_rng(0)
    for v in backbone.weights:  # BN parameters and statistics away from 0/1 (and zero gamma)
        kind = v.path.split("/")[-1]
        if kind in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif kind in ("beta", "moving_mean"):
            v.assign(rng.normal(0.0, 0.2, v.shape).astype("float32"))
    export.export_backbone(backbone, os.path.join(out, "export"), SIZE, "resnet18_cifar", 0.125)

    def features(pixels):
        return keras.ops.convert_to_numpy(backbone(_normalise(pixels), training=False))

    images = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    arrays = {"images": images, "features": features(images)}
    for key, (h, w) in OTHER_SIZES.items():
        other = rng.uniform(0, 255, (3, h, w, 3)).astype("float32")
        resized = tf.image.resize(other, (SIZE, SIZE), method="bilinear", antialias=True)
        arrays[key] = other
        arrays[f"{key}_features"] = features(resized.numpy())
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in backbone.weights)
    conv_layers = sum(isinstance(layer, keras.layers.Conv2D) for layer in backbone.layers)
    np.savez(
        os.path.join(out, "reference.npz"),
        weight_bytes=weight_bytes,
        conv_layers=conv_layers,
        **arrays,
    )


def _in_subprocess(backend, out):
    env = backend_environ(backend, PYTHONPATH=ROOT)
    env.pop("SIMSIAM_BLOCK_TF", None)
    cmd = [sys.executable, os.path.abspath(__file__), str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def exported(request, tmp_path_factory):
    """(backend, export dir, reference arrays) for an export written under each backend."""
    backend = request.param
    if backend != keras.backend.backend():
        pytest.importorskip(backend)

    def build(out):
        if backend == keras.backend.backend():
            _export_and_reference(str(out))
        else:
            result = _in_subprocess(backend, out)
            assert result.returncode == 0, result.stderr[-4000:]

    out = built_once(tmp_path_factory, f"export_{keras.backend.backend()}_{backend}", build)
    with np.load(out / "reference.npz") as f:
        reference = dict(f)
    return backend, out / "export", reference


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


def test_reloaded_model_is_callable_and_serves_the_same_features(exported):
    _, path, ref = exported
    # Features that tell images apart (a dead network would pass the comparisons below).
    assert ref["features"].std(axis=0).mean() > 0.05 and ref["larger_features"].std() > 0.05
    loaded = tf.saved_model.load(str(path))
    called = loaded(tf.constant(ref["images"]))
    assert isinstance(called, tf.Tensor) and called.dtype == tf.float32
    assert _max_diff(called.numpy(), ref["features"]) < 1e-4
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_outputs) == ["features"]
    served = serve(images=tf.constant(ref["images"]))["features"].numpy()
    assert _max_diff(served, ref["features"]) < 1e-4
    assert _max_diff(loaded(ref["images"]).numpy(), ref["features"]) < 1e-4  # NumPy input too


def test_other_sizes_are_resized_inside_with_antialiasing(exported):
    _, path, ref = exported
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    for key in OTHER_SIZES:
        images, expected = tf.constant(ref[key]), ref[f"{key}_features"]
        assert _max_diff(loaded(images).numpy(), expected) < 1e-4, key
        assert _max_diff(serve(images=images)["features"].numpy(), expected) < 1e-4, key
    # A uniform image is the same picture at any size.
    grey = np.full((1, 37, 53, 3), 100.0, "float32")
    grey_features = loaded(grey[:, :SIZE, :SIZE]).numpy()
    assert _max_diff(loaded(grey).numpy(), grey_features) < 1e-4


def test_json_asset_and_linear_load_backbone(exported):
    _, path, ref = exported
    meta = json.load(open(path / "assets" / export.META_FILE))
    assert meta == {
        "backbone": "resnet18_cifar",
        "width": 0.125,
        "image_size": SIZE,
        "feature_dim": ref["features"].shape[1],
    }
    if keras.backend.backend() != "tensorflow":
        return  # `linear.SavedModelBackbone` is a TensorFlow-backend layer
    backbone = linear.load_backbone(str(path), SIZE)
    out = np.asarray(backbone.predict_on_batch(_normalise(ref["images"])))
    assert _max_diff(out, ref["features"]) < 1e-4


def test_savedmodel_holds_the_weights_and_the_graph_once(exported):
    backend, path, ref = exported
    weights = int(ref["weight_bytes"])
    stored = os.path.getsize(path / "variables" / "variables.data-00000-of-00001")
    assert weights <= stored < 1.1 * weights + 64 * 1024, (stored, weights)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    assert total < 3 * weights + 2**20, (total, weights)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = [n.op for f in graph.library.function for n in f.node_def] + [n.op for n in graph.node]
    # __call__ and the serving signature share one trace of the backbone.
    if backend == "tensorflow":
        assert ops.count("Conv2D") == int(ref["conv_layers"]), ops.count("Conv2D")
    else:  # jax2tf: the backbone is one serialised StableHLO module
        assert ops.count("XlaCallModule") == 1 and "Conv2D" not in ops


def test_torch_backend_raises_a_useful_error(tmp_path):
    pytest.importorskip("torch")
    result = _in_subprocess("torch", tmp_path)
    assert result.returncode != 0
    assert "RuntimeError: SavedModel export works under the TensorFlow and JAX" in result.stderr
    assert "scripts/export.py" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "export").exists()


def test_bad_image_size_is_rejected_before_writing(tmp_path):
    backbone = sk.build_resnet("resnet18_cifar", width=0.125, image_size=SIZE)
    with pytest.raises(ValueError, match="takes 16 px images, not image_size=32"):
        export.export_backbone(backbone, str(tmp_path / "a"), 32)
    with pytest.raises(ValueError, match="positive int"):
        export.export_backbone(backbone, str(tmp_path / "b"), 0)
    assert not any(tmp_path.iterdir())


if __name__ == "__main__":
    _export_and_reference(sys.argv[1])


@pytest.mark.parametrize(
    "shape",
    [(SIZE, SIZE, 3), (2, SIZE, SIZE, 1), (2, 3, SIZE, SIZE)],
    ids=["no batch", "1 channel", "NCHW"],
)
def test_a_wrong_shape_is_named_in_the_error_without_the_array(exported, shape):
    _, path, _ = exported
    loaded = tf.saved_model.load(str(path))
    images = np.full(shape, 7.0, "float32")
    for call in (loaded, lambda x: loaded.signatures["serving_default"](images=tf.constant(x))):
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            call(images)
        text = str(caught.value)
        assert export.SHAPE_MESSAGE in text and " ".join(map(str, shape)) in text, text
        assert "7." not in text and len(text) < 1000, text  # no dump of the input
    # An export replaced in place (the pretraining run's rerun) leaves no temporary directory.
    assert not [n for n in os.listdir(path.parent) if ".tmp-" in n or ".old-" in n]
