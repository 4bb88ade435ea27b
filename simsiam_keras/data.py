"""Sources (TFDS, image folders, an embedded offline dataset) -> two-view tf.data pipelines.

Both views of an image come from one read, in one map (DESIGN.md: never zip two separately
shuffled datasets). Elements are `((x1, x2),)`, the structure `SimSiam.fit` expects.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from simsiam_keras import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"BM": "bmp", b"GIF8": "gif"}


@dataclasses.dataclass
class Source:
    """A dataset of encoded or decoded images, with optional labels.

    Attributes:
        images: a `tf.data.Dataset` of float32 [H, W, 3] images in [0, 1].
        labels: an int array of labels, or None for unlabelled data.
        size: number of images.
        name: where the images come from (for messages).
        skipped: files skipped as unreadable, with their names.
    """

    images: tf.data.Dataset
    labels: np.ndarray | None
    size: int
    name: str
    skipped: list = dataclasses.field(default_factory=list)


def embedded_digits(split="train", image_size=32):
    """scikit-learn's 8x8 handwritten digits (1,797 real images, shipped with the package).

    Upsampled to `image_size` and repeated on 3 channels: an offline dataset for the quickstart
    and the tests. The first 1,500 images are "train", the other 297 "test".

    Args:
        split: "train" or "test".
        image_size: output height and width.

    Returns:
        A labelled `Source`.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target
    sl = slice(0, 1500) if split == "train" else slice(1500, None)
    images = images[sl, :, :, None].astype("float32")
    resized = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    rgb = np.clip(np.repeat(resized, 3, axis=-1), 0.0, 1.0)
    return Source(
        tf.data.Dataset.from_tensor_slices(rgb),
        labels[sl].astype("int64"),
        len(rgb),
        f"embedded digits ({split})",
    )


def _sniff(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def list_image_folder(path, labeled=False):
    """Lists an image folder: flat (unlabelled) or `<class>/<file>` (labels from folder names).

    Files whose first bytes are not an image are skipped and reported.

    Returns:
        (files, labels or None, class names, skipped files)

    Raises:
        ValueError: a missing path, no images, or no class subfolders when `labeled`.
    """
    if not os.path.isdir(path):
        raise ValueError(f"Image folder not found or not a directory: {path!r}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if labeled and not classes:
        raise ValueError(
            f"Labels are needed but {path!r} has no class subfolders (expected <class>/<image>)."
        )
    files, labels, skipped = [], [], []
    for root, _, names in sorted(os.walk(path)):
        for name in sorted(names):
            full = os.path.join(root, name)
            kind = _sniff(full)
            if kind is None:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append(full)  # named like an image but is not one
                continue  # neither by name nor content an image (e.g. README.txt): ignored

            rel = os.path.relpath(root, path)
            if labeled and rel == ".":
                continue  # loose files beside the class folders have no label
            files.append(full)
            labels.append(classes.index(rel.split(os.sep)[0]) if classes and rel != "." else -1)
    if not files:
        raise ValueError(f"No images (JPEG/PNG/BMP/GIF) found under {path!r}")
    return files, (np.array(labels, "int64") if labeled else None), classes, skipped


def two_view_dataset(
    source,
    batch_size,
    image_size,
    blur=True,
    seed=0,
    shuffle=True,
    deterministic=False,
    input_context=None,
    repeat=False,
):
    """Batches of `((x1, x2),)`: two independently augmented views of each image of `source`.

    Per-image randomness comes from a stateless seed derived from (seed, position in the
    shuffled stream), so `deterministic=True` gives the same views for the same seed whatever
    the parallelism, and a reshuffled epoch gives every image new views.

    Args:
        source: a `Source`.
        batch_size: per-worker batch size; the last partial batch is dropped (as the paper).
        image_size: output height and width.
        blur: include the Gaussian blur (False for the CIFAR variant, App. D).
        seed: base seed.
        shuffle: shuffle the images.
        deterministic: keep the element order fixed despite parallel maps.
        input_context: a `tf.distribute.InputContext`; each worker reads its own shard.
        repeat: repeat indefinitely.

    Returns:
        A `tf.data.Dataset`.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    ds = source.images
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        ds = ds.shuffle(min(source.size, 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)

    def two_views(index, image):
        s1, s2 = tf.unstack(augment.split_seed(tf.stack([tf.cast(seed, tf.int64), index]), 2))
        v1 = augment.simsiam_view(image, image_size, s1, blur=blur)
        v2 = augment.simsiam_view(image, image_size, s2, blur=blur)
        return v1, v2

    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda v1, v2: ((v1, v2),))
    return ds.prefetch(tf.data.AUTOTUNE)
