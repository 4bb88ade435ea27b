"""Sources: the embedded digits, image folders and TFDS datasets, as `Source`s.

A `Source` is a dataset of `(item, label)` where the item is a decoded image, encoded image
bytes or a file path; `data.py` builds the pipelines from it. `load_source` picks the source
that the settings name.

Decoding never crashes a run: every image becomes float32 RGB in [0, 1] (grayscale, palette,
RGBA, CMYK and 16-bit files included; `decode_image`); files that are not images or are
truncated are found when the folder is listed, skipped and reported in one warning
(`verify=True` also fully decodes each file first); anything that still fails to decode is
dropped by the pipeline's `ignore_errors`.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"BM": "bmp", b"GIF8": "gif"}
# What a complete file ends with (searched in its last bytes; JPEGs may carry trailing padding).
_TRAILER = {"jpeg": b"\xff\xd9", "png": b"IEND", "gif": b"\x3b"}
_TAIL_BYTES = 1024
EMBEDDED = "digits"


@dataclasses.dataclass
class Source:
    """A dataset of images with labels.

    Attributes:
        dataset: a `tf.data.Dataset` of `(item, label)`; label is -1 for unlabelled data.
        kind: what an item is: "pixels" (float32 [H, W, 3] in [0, 1]), "encoded" (the bytes of
            a JPEG/PNG/BMP/GIF file) or "path" (a file name).
        size: number of images.
        name: where the images come from (for messages).
        class_names: the label names (empty when unlabelled).
        skipped: files skipped as unreadable.
        items: the items as one array (file names or pixels) when the source can be read in
            any order, else None (a TFDS stream). With it, pipelines draw a full random
            permutation every epoch; without it, a file-level shuffle plus a buffer.
        labels: the labels as one array, beside `items`.
    """

    dataset: tf.data.Dataset
    kind: str
    size: int
    name: str
    class_names: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    items: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def labeled(self):
        return self.num_classes > 0


def embedded_digits(split="train", image_size=32):
    """scikit-learn's 8x8 handwritten digits (1,797 real images, shipped with the package).

    Upsampled to `image_size` and repeated on 3 channels: an offline dataset for the quickstart
    and the tests. The first 1,500 images are "train", the other 297 "test" (also "validation").

    Args:
        split: "train", "test" or "validation".
        image_size: output height and width.

    Returns:
        A labelled `Source` of pixels.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test", "validation"):
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target
    sl = slice(0, 1500) if split == "train" else slice(1500, None)
    images = images[sl, :, :, None].astype("float32")
    resized = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    rgb = np.clip(np.repeat(resized, 3, axis=-1), 0.0, 1.0)
    labels = labels[sl].astype("int64")
    dataset = tf.data.Dataset.from_tensor_slices((rgb, labels))
    name = f"embedded digits ({split})"
    return Source(dataset, "pixels", len(rgb), name, list("0123456789"), [], rgb, labels)


def _check_file(path):
    """The image kind of `path` if its header and trailer look complete, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
            if kind is None or kind not in _TRAILER:
                return kind
            f.seek(max(0, os.path.getsize(path) - _TAIL_BYTES))
            return kind if _TRAILER[kind] in f.read() else None
    except OSError:
        return None


def decode_image(contents):
    """Encoded image bytes (JPEG, PNG, BMP, GIF) -> float32 RGB [H, W, 3] in [0, 1]."""
    return tf.io.decode_image(contents, channels=3, dtype=tf.float32, expand_animations=False)


def _undecodable(files):
    """The files of `files` that TensorFlow cannot decode (a parallel full decode of each)."""
    paths = tf.data.Dataset.from_tensor_slices(files)
    ok = tf.data.Dataset.zip(tf.data.Dataset.range(len(files)), paths).map(
        lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p)))), tf.data.AUTOTUNE
    )
    good = {int(i) for i, _ in ok.ignore_errors().as_numpy_iterator()}
    return [f for i, f in enumerate(files) if i not in good]


def _warn_skipped(skipped, where):
    if skipped:
        names = ", ".join(os.path.basename(p) for p in skipped[:5])
        more = ", ..." if len(skipped) > 5 else ""
        logging.warning(
            "Skipped %d unreadable file(s) in %s (not an image, truncated or corrupt): %s%s",
            len(skipped),
            where,
            names,
            more,
        )


def list_image_folder(path, labeled=False, verify=False):
    """Lists an image folder: flat (unlabelled) or `<class>/<file>` (labels from folder names).

    Files named like images whose first bytes are not an image, and JPEG/PNG/GIF files without
    their end marker (truncated), are skipped; other files (README.txt) are ignored.

    Args:
        path: the folder.
        labeled: labels are needed (evaluation): the folder must have class subfolders.
        verify: also decode every file once and skip those that fail (costs a full pass).

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
    for root, dirs, names in os.walk(path):
        dirs.sort()
        rel = os.path.relpath(root, path)
        for name in sorted(names):
            full = os.path.join(root, name)
            if _check_file(full) is None:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append(full)  # named like an image but is not a complete one
                continue
            if labeled and rel == ".":
                continue  # loose files beside the class folders have no label
            files.append(full)
            labels.append(classes.index(rel.split(os.sep)[0]) if classes and rel != "." else -1)
    if verify and files:
        bad = set(_undecodable(files))
        skipped += sorted(bad)
        keep = [i for i, f in enumerate(files) if f not in bad]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    if not files:
        raise ValueError(f"No readable images (JPEG/PNG/BMP/GIF) found under {path!r}")
    return files, (np.array(labels, "int64") if labeled else None), classes, skipped


def image_folder(path, labeled=False, verify=False):
    """A `Source` of the image files under `path` (see `list_image_folder`).

    Unreadable files are skipped and reported in one warning with their count and a few names.
    """
    files, labels, classes, skipped = list_image_folder(path, labeled, verify)
    _warn_skipped(skipped, path)
    if labels is None:
        labels = np.full(len(files), -1, "int64")
    files = np.array(files)
    dataset = tf.data.Dataset.from_tensor_slices((files, labels))
    classes = classes if labeled else []
    return Source(dataset, "path", len(files), path, classes, skipped, files, labels)


HOLDOUT_FRACTION = 0.1  # of each class, for `holdout_split`'s default
HOLDOUT_MAX = 10_000  # images in all, for `holdout_split`'s default


def _subset(source, keep, name):
    """The `Source` of the items of `source` (read in any order) where `keep` is True."""
    items, labels = source.items[keep], source.labels[keep]
    dataset = tf.data.Dataset.from_tensor_slices((items, labels))
    return Source(dataset, source.kind, len(items), name, source.class_names, [], items, labels)


def holdout_split(source, count=None, seed=0):
    """Splits a labelled `source` into training images and held-out images, class-balanced.

    Each class gives the same share of its images (at least one from a class of two or more),
    drawn with `seed`; the same folder and seed give the same split.

    Args:
        source: a labelled `Source` with `items` (an image folder, the embedded digits).
        count: images to hold out in all (default: `HOLDOUT_FRACTION` of each class, at most
            `HOLDOUT_MAX` in all).
        seed: the draw's seed.

    Returns:
        `(training source, held-out source)`; the held-out one is named
        `"<name> (held out)"`.

    Raises:
        ValueError: a source without labels or items, or a count that leaves no training image.
    """
    if not source.labeled or source.items is None:
        raise ValueError(f"{source.name}: only labelled sources read in any order can be split.")
    if count is None:
        count = min(int(round(HOLDOUT_FRACTION * source.size)), HOLDOUT_MAX)
    if not 0 < count < source.size:
        raise ValueError(
            f"cannot hold out {count} of the {source.size} images of {source.name} and keep "
            "some to train on."
        )
    rng = np.random.default_rng(seed)
    held = np.zeros(source.size, bool)
    classes, sizes = np.unique(source.labels, return_counts=True)
    share = count / source.size
    for label, size in zip(classes, sizes):
        members = np.flatnonzero(source.labels == label)
        take = min(size - 1, max(1 if size > 1 else 0, int(round(share * size))))
        held[rng.choice(members, take, replace=False)] = True
    return _subset(source, ~held, source.name), _subset(source, held, f"{source.name} (held out)")


def exclude_files(source, files):
    """Splits an image-folder `source` into its files not in `files` and those in it.

    Returns:
        `(the other files' source, the source of `files`)`.

    Raises:
        ValueError: a name of `files` that is not (or no longer) a readable file of `source`.
    """
    names = np.array([os.path.normpath(f) for f in source.items.tolist()])
    wanted = {os.path.normpath(f) for f in files}
    held = np.isin(names, np.array(sorted(wanted)))
    missing = len(wanted) - int(held.sum())
    if missing:
        raise ValueError(
            f"{missing} of the {len(files)} images held out of {source.name} (knn_holdout.txt) "
            "are no longer in it; restore them, or give a new --workdir."
        )
    return _subset(source, ~held, source.name), _subset(source, held, f"{source.name} (held out)")


def tfds_source(name, split="train", data_dir=None, download=True):
    """A TFDS dataset by name, its images left encoded (decoded with the crop, in the pipeline).

    `imagenet2012` must first be prepared from the manual download as TFDS documents; datasets
    that TFDS can download (cifar10) are downloaded when `download`. A "validation" split falls
    back to "test" for datasets without one (cifar10).

    Args:
        name: a TFDS builder name, e.g. "cifar10" or "imagenet2012".
        split: "train", "validation" or "test" (or any TFDS split string).
        data_dir: the TFDS data directory (default: TFDS's).
        download: download and prepare the dataset if it is not there.

    Returns:
        A labelled `Source` of encoded images.

    Raises:
        ValueError: an unknown name, a dataset without an image feature, or one not prepared.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError, bad version strings, ...
        raise ValueError(f"Unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    features = builder.info.features
    if "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature.")
    splits = set(builder.info.splits)
    if split == "validation" and "validation" not in splits and ("test" in splits or not splits):
        split = "test"
    if not builder.is_prepared():
        if not download:
            raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}.")
        _prepare_tfds(builder, name)
    dataset = builder.as_dataset(
        split=split, shuffle_files=True, decoders={"image": tfds.decode.SkipDecoding()}
    )
    has_label = "label" in features
    classes = list(features["label"].names) if has_label else []
    dataset = dataset.map(
        lambda ex: (ex["image"], ex["label"] if has_label else tf.constant(-1, tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    size = int(dataset.cardinality())
    if size < 0:
        size = builder.info.splits[split].num_examples
    return Source(dataset, "encoded", size, f"tfds:{name}/{split}", classes)


def _prepare_tfds(builder, name):
    """Downloads and prepares `builder`; a clear ValueError when that cannot work here.

    Checked first, before minutes of retries: a manual-download dataset (imagenet2012) needs
    its files in `<data_dir>/downloads/manual`; a downloadable one needs its host reachable.
    """
    manual_dir = os.path.join(str(builder.data_dir_root), "downloads", "manual")
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
        what = " ".join(instructions.split())
        raise ValueError(
            f"TFDS dataset {name!r} needs a manual download: put its files in {manual_dir} "
            f"({what}), then run the same command to prepare it."
        )
    hint = (
        f"Prepare it where there is a network (`tfds build {name} --data_dir DIR`) and pass "
        "--data_dir DIR, or train on an image folder with --train_dir."
    )
    if not instructions:
        for url in builder.url_infos or ():
            host = _unreachable(url)
            if host:
                raise ValueError(f"Cannot download TFDS dataset {name!r}: {host}. {hint}")
    try:
        builder.download_and_prepare()
    except OSError as e:  # requests' ConnectionError is an OSError
        raise ValueError(
            f"Could not download TFDS dataset {name!r} (network?): {e}. {hint}"
        ) from None
    except Exception as e:  # noqa: BLE001 (TFDS raises many kinds; the first line says which)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"Could not prepare TFDS dataset {name!r}: {first}") from None


def _unreachable(url, timeout=10):
    """Why `url`'s host cannot be reached (or the proxy the environment names); None if it can."""
    import socket
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and urllib.request.proxy_bypass(parsed.hostname):
        proxy = None
    target = urllib.parse.urlparse(proxy) if proxy else parsed
    host = target.hostname
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        via = f"the proxy {host}:{port}" if proxy else f"{host}:{port}"
        return f"no network connection to {via} ({e.strerror or e})"
    return None


def load_source(dataset=EMBEDDED, split="train", data_dir=None, image_dir=None, image_size=32):
    """The source a script's flags name: an image folder, the embedded digits, or TFDS.

    Args:
        dataset: "digits" (embedded) or a TFDS name; ignored when `image_dir` is given.
        split: "train" or "validation"/"test".
        data_dir: the TFDS data directory.
        image_dir: an image folder (labels from class subfolders when there are any).
        image_size: the embedded dataset's stored size.
    """
    if image_dir:
        labeled = os.path.isdir(image_dir) and any(
            os.path.isdir(os.path.join(image_dir, d)) for d in os.listdir(image_dir)
        )
        return image_folder(image_dir, labeled=labeled)
    if dataset == EMBEDDED:
        return embedded_digits("train" if split == "train" else "test", image_size)
    return tfds_source(dataset, split, data_dir)
