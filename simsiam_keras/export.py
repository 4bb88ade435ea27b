"""Export a pretrained backbone as a TensorFlow SavedModel for serving and evaluation.

The SavedModel takes float32 images `[N, H, W, 3]` with values in [0, 255] and returns their
pooled features `[N, C]`, with the ImageNet normalisation inside. Two ways to call it, with the
same preprocessing and the same result:

    m = tf.saved_model.load(path)
    features = m(images)                                                # tf.Tensor [N, C]
    features = m.signatures["serving_default"](images=images)["features"]  # TF Serving

Another shape fails with an error that names the expected one (`SHAPE_MESSAGE`). Beside it,
`assets/simsiam_backbone.json` names the backbone, width, image size and feature
dimension.

Other input sizes are resized inside to the size the backbone was exported at (bilinear with
antialiasing, the resize of the evaluation view); images already at that size are used as they
are. Serving clients send images of whatever size they have, and a global-pooled ResNet would
otherwise accept any size silently and return features from a different scale than it was
trained and evaluated at. It is a plain resize of the whole image to a square, not the
evaluation view's short-side resize and centre crop (which also keeps the aspect ratio): for
features comparable with `knn_eval.py`/`linear_eval.py`, crop the images first (e.g. with
`augment.eval_view`).

Works under the TensorFlow and the JAX backend; TensorFlow must be installed either way. Under
JAX the backbone is converted by `keras.export.ExportArchive` (jax2tf: one serialised StableHLO
module, called by an `XlaCallModule` op), lowered for both CPU and CUDA so that an export made
on either loads in a CPU or a GPU TensorFlow (only the CPU path is tested here), and without a
gradient function (inference only). Not under PyTorch (Keras converts PyTorch models only
through torch_xla): export in a TensorFlow- or JAX-backend process, e.g. `scripts/export.py`;
the saved weights load on every backend.
"""

import json
import numbers
import os
import shutil

import keras
import tensorflow as tf

from simsiam_keras import backbones, recipe

META_FILE = "simsiam_backbone.json"
SUPPORTED_BACKENDS = ("tensorflow", "jax")

# Any shape: a wrong one is named in the error of the check in `_preprocess`, where TensorFlow
# would otherwise print the whole input array beside the signature it did not match.
_IMAGES = tf.TensorSpec(None, tf.float32, name="images")
SHAPE_MESSAGE = (
    "Expected float32 images [N, H, W, 3] (a batch, channels last) with values in [0, 255]; "
    "got shape"
)


class _ServedBackbone(tf.Module):
    """The saved root object: `__call__` and `serve` around the backbone's forward pass."""

    def __init__(self, forward, variables, image_size):
        super().__init__(name="simsiam_backbone")
        self._forward = forward  # normalised [N, S, S, 3] -> [N, C], traced once
        self.backbone_variables = list(variables)
        self._size = image_size
        self._mean = tf.constant(recipe.IMAGENET_MEAN, tf.float32)
        self._std = tf.constant(recipe.IMAGENET_STD, tf.float32)

    def _preprocess(self, images):
        size = self._size
        rank_4 = tf.equal(tf.rank(images), 4)
        rgb = tf.cond(rank_4, lambda: tf.equal(tf.shape(images)[-1], 3), lambda: False)

        def wrong_shape():  # the branch raises: what follows cannot run before it
            check = tf.debugging.Assert(False, [SHAPE_MESSAGE, tf.shape(images)], summarize=8)
            with tf.control_dependencies([check]):
                return tf.zeros([0, size, size, 3])

        images = tf.ensure_shape(tf.cond(rgb, lambda: images, wrong_shape), [None, None, None, 3])
        shape = tf.shape(images)
        images = tf.cond(
            (shape[1] == size) & (shape[2] == size),
            lambda: images,
            lambda: tf.image.resize(images, (size, size), method="bilinear", antialias=True),
        )
        images = tf.ensure_shape(images, [None, size, size, 3])
        return (images / 255.0 - self._mean) / self._std

    @tf.function(input_signature=[_IMAGES])
    def __call__(self, images):
        """Features `[N, C]` of float32 images `[N, H, W, 3]` in [0, 255]."""
        return self._forward(self._preprocess(images))

    @tf.function(input_signature=[_IMAGES])
    def serve(self, images):
        """The serving signature: `{"features": self(images)}`."""
        return {"features": self.__call__(images)}


def _traced_forward(backbone, image_size):
    """The backbone's inference pass as a `tf.function` and the variables it reads."""
    archive = keras.export.ExportArchive()
    archive.track(backbone)
    kwargs = {}
    if keras.backend.backend() == "jax":
        # Lowered for both platforms: a CPU export still serves on a GPU TensorFlow and back.
        # No gradient function: a reloaded SavedModel could not use it (TF warns at load).
        kwargs["jax2tf_kwargs"] = {
            "native_serialization_platforms": ("cpu", "cuda"),
            "with_gradient": False,
        }
    spec = keras.InputSpec(shape=(None, image_size, image_size, 3), dtype="float32")
    forward = archive.add_endpoint(
        "features", lambda images: backbone(images, training=False), [spec], **kwargs
    )
    return forward, archive.variables


def export_backbone(backbone, path, image_size, name=None, width=None):
    """Writes `backbone` as a SavedModel at `path` (see the module docstring).

    Args:
        backbone: a built `keras.Model` mapping normalised images to `[N, C]`.
        path: output directory.
        image_size: the input height and width it was trained at; other sizes are resized
            to it inside the SavedModel.
        name: backbone architecture name, for the JSON asset.
        width: channel width multiplier, for the JSON asset.

    Returns:
        `path`.

    Raises:
        RuntimeError: under the PyTorch backend.
        ValueError: a non-positive `image_size`, or a backbone built for another size.
    """
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"SavedModel export works under the TensorFlow and JAX backends, not {backend!r}: "
            "Keras can only convert a PyTorch-backend model through torch_xla. The weights are "
            "backend-neutral: save the model (`model.save('model.keras')`, as pretraining does) "
            "and export it in another process, e.g. "
            "`KERAS_BACKEND=tensorflow python scripts/export.py --workdir RUN_DIR`."
        )
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"`image_size` must be a positive int. Received: {image_size!r}")
    image_size = int(image_size)
    if image_size <= 0:
        raise ValueError(f"`image_size` must be a positive int. Received: {image_size!r}")
    built_for = backbone.input_shape[1] if len(backbone.input_shape) == 4 else None
    if built_for is not None and built_for != image_size:
        raise ValueError(f"The backbone takes {built_for} px images, not image_size={image_size}.")
    dim = backbones.feature_dim(backbone)
    forward, variables = _traced_forward(backbone, image_size)
    module = _ServedBackbone(forward, variables, image_size)
    # Written beside `path` and renamed into place: an interrupted export leaves the previous
    # one (or none), never half a SavedModel.
    path = os.path.normpath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
    meta = {"backbone": name, "width": width, "image_size": image_size, "feature_dim": dim}
    with open(os.path.join(tmp, "assets", META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_meta(path):
    """What `export_backbone` wrote beside the SavedModel at `path`: backbone, width, size, dim."""
    with open(os.path.join(path, "assets", META_FILE)) as f:
        return json.load(f)
