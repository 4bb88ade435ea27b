r"""Writes a PNG grid of what the SimSiam recipe does to a dataset: original | view 1 | view 2.

  python scripts/show_views.py --out views.png                      # embedded digits
  python scripts/show_views.py --train_dir ~/my_images --image_size 224 --out views.png
  python scripts/show_views.py --dataset cifar10 --image_size 32 --blur=false --out views.png
  python scripts/show_views.py --augment_impl kerascv --out views_kerascv.png   # keras-cv's

One row per image: the evaluation view of the original (resize + centre crop) and two views
from the training pipeline (the same code `pretrain.py` uses), un-normalised for display.
"""

import os

from simsiam_keras import cli  # no TensorFlow import

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "views.png", "Output PNG file.")
_NUM = flags.DEFINE_integer("num_images", 8, "Rows (images) in the grid.", lower_bound=1)
_DATASET = flags.DEFINE_string("dataset", "digits", "'digits' (embedded) or a TFDS name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", None, "An image folder (overrides --dataset).")
_SIZE = flags.DEFINE_integer("image_size", 96, "View height and width.", lower_bound=8)
_BLUR = flags.DEFINE_bool("blur", True, "Include the Gaussian blur (false: CIFAR variant).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the views.")
_IMPL = flags.DEFINE_enum(
    "augment_impl",
    "simsiam_keras",
    ["simsiam_keras", "kerascv"],
    "The views: this package's ops or keras-cv's layers (docs/pipeline.md, 'KerasCV views').",
)


def view_grid(source, num_images, image_size, blur=True, seed=0, augment_impl="simsiam_keras"):
    """A uint8 [rows * size, 3 * size, 3] grid: original | view 1 | view 2 for each image."""
    import numpy as np
    import tensorflow as tf

    from simsiam_keras import augment, data, sources

    mean, std = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)
    shown = source.dataset.take(num_images)
    subset = sources.Source(shown, source.kind, min(num_images, source.size), source.name)
    originals, _ = next(
        iter(
            data.labeled_dataset(
                subset, num_images, image_size, deterministic=True, require_labels=False
            )
        )
    )
    ((v1, v2),) = next(
        iter(
            data.two_view_dataset(
                subset,
                len(originals),
                image_size,
                blur=blur,
                seed=seed,
                shuffle=False,
                deterministic=True,
                augment_impl=augment_impl,
            )
        )
    )
    columns = [tf.convert_to_tensor(x).numpy() * std + mean for x in (originals, v1, v2)]
    rows = np.concatenate(columns, axis=2)  # [N, size, 3 * size, 3]
    grid = rows.reshape(-1, rows.shape[2], 3)
    return (np.clip(grid, 0, 1) * 255).round().astype("uint8")


def main(argv):
    del argv
    from PIL import Image

    from simsiam_keras import sources

    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(out_dir):
        raise cli.UsageError(f"--out: folder {out_dir!r} does not exist.")
    try:
        source = sources.load_source(
            _DATASET.value, "train", _DATA_DIR.value, _TRAIN_DIR.value, _SIZE.value
        )
    except ValueError as e:  # a bad --dataset / --train_dir
        raise cli.UsageError(str(e)) from None
    grid = view_grid(source, _NUM.value, _SIZE.value, _BLUR.value, _SEED.value, _IMPL.value)
    Image.fromarray(grid).save(_OUT.value)
    print(f"wrote {_OUT.value} ({grid.shape[0] // _SIZE.value} images: original | view 1 | view 2)")


if __name__ == "__main__":
    cli.run(main)
