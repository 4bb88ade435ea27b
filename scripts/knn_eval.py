r"""kNN accuracy of a pretrained backbone (k=200, T=0.2, cosine, weighted vote; docs/recipe.md).

  python scripts/knn_eval.py --pretrained PATH --train_dir A --val_dir B --image_size 32
  python scripts/knn_eval.py --pretrained PATH --dataset cifar10 --image_size 32
  python scripts/knn_eval.py --pretrained model.keras            # embedded digits

PATH is a .keras SimSiam/backbone file, an exported SavedModel backbone or a workdir. Features of
the evaluation views (resize + centre crop), in batches; similarities in chunks. The last
printed line is one JSON object with `knn_top1`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simsiam_keras import cli  # noqa: E402 (no TensorFlow import)

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

_PRETRAINED = flags.DEFINE_string("pretrained", None, "Model file, SavedModel or workdir.")
_DATASET = flags.DEFINE_string("dataset", "digits", "'digits' (embedded) or a TFDS name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", None, "Labelled image folder (the kNN memory).")
_VAL_DIR = flags.DEFINE_string("val_dir", None, "Labelled image folder (the queries).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Input height and width (default: the size the model was built for)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Feature batch size.")
_K = flags.DEFINE_integer("k", 200, "Neighbours.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.2, "Vote temperature.")


def main(argv):
    del argv
    if not _PRETRAINED.value or not os.path.exists(_PRETRAINED.value):
        raise cli.UsageError(f"--pretrained: not found: {_PRETRAINED.value!r}")
    for name in ("image_size", "batch_size", "k"):
        if flags.FLAGS[name].value is not None and flags.FLAGS[name].value <= 0:
            raise cli.UsageError(f"--{name} must be positive; got {flags.FLAGS[name].value}.")
    if _TEMPERATURE.value <= 0:
        raise cli.UsageError("--temperature must be positive.")
    if bool(_TRAIN_DIR.value) != bool(_VAL_DIR.value):
        raise cli.UsageError("--train_dir and --val_dir go together (both labelled folders).")

    from simsiam_keras import data, knn, linear, report

    size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
    try:
        backbone = linear.load_backbone(_PRETRAINED.value, size)
        size = size or linear.input_size(backbone)
        if size is None:
            raise ValueError(f"{_PRETRAINED.value!r} takes any input size: give --image_size.")
        train = data.load_source(_DATASET.value, "train", _DATA_DIR.value, _TRAIN_DIR.value, size)
        val = data.load_source(_DATASET.value, "validation", _DATA_DIR.value, _VAL_DIR.value, size)
        datasets = [data.labeled_dataset(s, batch, size) for s in (train, val)]
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    result = knn.backbone_knn_accuracy(
        backbone, *datasets, train.num_classes, _K.value, _TEMPERATURE.value
    )
    print(report.json_line({"what": "knn_eval", "train": train.name, "val": val.name, **result}))


if __name__ == "__main__":
    cli.run(main)
