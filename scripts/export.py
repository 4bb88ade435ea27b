r"""Export a pretraining run's backbone as a TensorFlow SavedModel.

  python scripts/export.py --workdir runs/quickstart            # -> runs/quickstart/export/backbone
  python scripts/export.py --workdir runs/in1k --checkpoint     # from the last checkpoint

The serving signature takes float32 images [N, H, W, 3] in [0, 255] and returns
{"features": [N, C]}; `assets/simsiam_backbone.json` names backbone, width, image size and
feature dim. Reads the run's `model.keras` (or, with --checkpoint, its last step checkpoint,
rebuilt from the run's `config.json`). Needs KERAS_BACKEND=tensorflow.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simsiam_keras import cli  # noqa: E402 (no TensorFlow import)

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A pretraining workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export/backbone).")
_CHECKPOINT = flags.DEFINE_bool("checkpoint", False, "Export the last step checkpoint.")


def main(argv):
    del argv
    import keras

    if keras.backend.backend() != "tensorflow":
        raise cli.UsageError("Export needs KERAS_BACKEND=tensorflow (the weights load anywhere).")
    from simsiam_keras import checkpoint, export, linear, pretrain

    workdir = _WORKDIR.value
    if not os.path.isdir(workdir):
        raise cli.UsageError(f"--workdir: not a directory: {workdir!r}")
    out = _OUT.value or os.path.join(workdir, "export", "backbone")
    config_path = os.path.join(workdir, "config.json")  # written when the run starts
    config = json.load(open(config_path)) if os.path.exists(config_path) else {}
    if _CHECKPOINT.value:
        found = checkpoint.latest(os.path.join(workdir, "checkpoints"))
        if not found or not config:
            raise cli.UsageError(f"No checkpoint and config.json in {workdir!r}.")
        cfg = pretrain.PretrainConfig(**config)
        model = pretrain.build_model(cfg, steps_per_epoch=1)
        checkpoint.restore(found, model)
        backbone = model.backbone
    else:
        try:
            backbone = linear.load_backbone(workdir)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    size = config.get("image_size") or backbone.input_shape[1]
    export.export_backbone(backbone, out, size, config.get("backbone"), config.get("width"))
    print(json.dumps({"what": "export", "path": out, "image_size": size}))


if __name__ == "__main__":
    cli.run(main)
