r"""Export a pretraining run's backbone as a TensorFlow SavedModel.

  python scripts/export.py --workdir runs/quickstart            # -> runs/quickstart/export/backbone
  python scripts/export.py --workdir runs/in1k --checkpoint     # from the last checkpoint

The serving signature takes float32 images [N, H, W, 3] in [0, 255] and returns
{"features": [N, C]}; `assets/simsiam_backbone.json` names backbone, width, image size and
feature dim. Reads the run's `model.keras` (or, with --checkpoint, its last step checkpoint,
rebuilt from the run's `config.json`). Needs KERAS_BACKEND=tensorflow (default) or jax.
"""

import json
import os

from simsiam_keras import cli

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export/backbone).")
_CHECKPOINT = flags.DEFINE_bool("checkpoint", False, "Export the last step checkpoint.")


def main(argv):
    del argv
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise cli.UsageError(
            "Export needs KERAS_BACKEND=tensorflow or jax (the weights load on every backend)."
        )
    if not os.path.isdir(_WORKDIR.value):
        raise cli.UsageError(f"--workdir: not a directory: {_WORKDIR.value!r}")
    from simsiam_keras import export

    path, size = export.run(_WORKDIR.value, _OUT.value, _CHECKPOINT.value)
    print(json.dumps({"what": "export", "path": path, "image_size": size}))


if __name__ == "__main__":
    cli.run(main)
