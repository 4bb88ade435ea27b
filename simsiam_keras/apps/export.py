"""The export application: `run(workdir)` writes a pretraining run's backbone as a SavedModel."""

import json
import os

from simsiam_keras import checkpoint, export, linear
from simsiam_keras.apps.pretrain import build_model
from simsiam_keras.config import PretrainConfig


def run(workdir, out=None, from_checkpoint=False):
    """Exports the backbone of the pretraining run in `workdir` as a SavedModel.

    Args:
        workdir: a pretraining workdir (its `model.keras`, or its checkpoints and
            `config.json`).
        out: output directory (default: `WORKDIR/export/backbone`).
        from_checkpoint: export the last step checkpoint instead of `model.keras`.

    Returns:
        `(path, image_size)`.

    Raises:
        ValueError: no model to export in `workdir`.
        RuntimeError: under the PyTorch backend (export in a TensorFlow- or JAX-backend
            process; the weights load on every backend).
    """
    out = out or os.path.join(workdir, "export", "backbone")
    config_path = os.path.join(workdir, "config.json")  # written when the run starts
    config = {}
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    if from_checkpoint:
        found = checkpoint.latest(os.path.join(workdir, "checkpoints"))
        if not found or not config:
            raise ValueError(f"No checkpoint and config.json in {workdir!r}.")
        model = build_model(PretrainConfig(**config), steps_per_epoch=1)
        checkpoint.restore(found, model)
        backbone = model.backbone
    else:
        backbone = linear.load_backbone(workdir)
    size = config.get("image_size") or backbone.input_shape[1]
    export.export_backbone(backbone, out, size, config.get("backbone"), config.get("width"))
    return out, size
