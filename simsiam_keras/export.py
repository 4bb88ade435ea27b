"""Export a pretrained backbone as a TensorFlow SavedModel for serving and evaluation.

The serving signature takes float32 images `[N, H, W, 3]` with values in [0, 255] and returns
`{"features": [N, C]}`, the pooled features, with the ImageNet normalisation inside. Beside it,
`assets/simsiam_backbone.json` names the backbone, width, image size and feature dimension.
Needs the TensorFlow backend (the backbone is traced by `tf.function`).
"""

import json
import os

import keras

from simsiam_keras import augment, backbones

META_FILE = "simsiam_backbone.json"


def export_backbone(backbone, path, image_size, name=None, width=None):
    """Writes `backbone` as a SavedModel at `path` (see the module docstring).

    Args:
        backbone: a `keras.Model` mapping normalised images to `[N, C]`.
        path: output directory.
        image_size: the input height and width it was trained at.
        name: backbone architecture name, for the JSON asset.
        width: channel width multiplier, for the JSON asset.

    Returns:
        `path`.
    """
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "SavedModel export needs the TensorFlow backend; save the weights and run "
            "`KERAS_BACKEND=tensorflow python scripts/export.py ...`."
        )
    dim = backbones.feature_dim(backbone)
    mean = tf.constant(augment.IMAGENET_MEAN, tf.float32)
    std = tf.constant(augment.IMAGENET_STD, tf.float32)

    class Backbone(tf.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
        def serve(self, images):
            normalised = (images / 255.0 - mean) / std
            return {"features": self.backbone(normalised, training=False)}

    module = Backbone()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    meta = {"backbone": name, "width": width, "image_size": image_size, "feature_dim": dim}
    with open(os.path.join(path, "assets", META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return path
