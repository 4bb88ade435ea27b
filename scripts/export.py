r"""Export a pretraining run's backbone as a TensorFlow SavedModel.

  python scripts/export.py --workdir runs/quickstart            # -> runs/quickstart/export/backbone
  python scripts/export.py --workdir runs/in1k --checkpoint     # from the last checkpoint

The serving signature takes float32 images [N, H, W, 3] in [0, 255] and returns
{"features": [N, C]}; `assets/simsiam_backbone.json` names backbone, width, image size and
feature dim. Reads the run's `model.keras` (or, with --checkpoint, its last step checkpoint,
rebuilt from the run's `config.json`). Needs KERAS_BACKEND=tensorflow (default) or jax.
"""

from simsiam_keras import commands

if __name__ == "__main__":
    commands.export()  # simsiam_keras/commands.py: flags from the config, then apps.export.run
