"""tf.data pipelines over a `sources.Source`: two-view batches and labelled batches.

* `two_view_dataset`: `((x1, x2),)` batches for `SimSiam.fit`. Both views of an image come from
  one read, in one map (never zip two separately shuffled datasets: the views would come from
  different images): the image is decoded once and cropped twice (`augment.crops`). For a
  single crop (the linear protocol's training view) JPEGs are decoded with the crop fused into
  the decode (`tf.io.decode_and_crop_jpeg`: only the crop's blocks are decoded; it differs from
  decode-then-crop only on the crop's border pixels, where libjpeg upsamples chroma without the
  neighbouring block).
* `labeled_dataset`: `(images, labels)` batches for kNN and linear evaluation (the evaluation
  transform, or the linear protocol's training crop and flip).

Order: every epoch a full seeded permutation of the source (`_permuted`), so a resumed run
continues at the exact position; a file that fails to decode is dropped (`ignore_errors`).

tf.data runs on TensorFlow whatever the Keras backend; JAX and PyTorch consume its NumPy
batches (`model.fit` accepts a `tf.data.Dataset` on every backend).
"""

import inspect

import tensorflow as tf

from simsiam_keras import augment, names, recipe

AUGMENT_IMPLS = names.AUGMENT_IMPLS

# Shuffle buffer for sources that can only be streamed (TFDS): TFDS writes the examples of a
# split in a hash-shuffled order at preparation time and `shuffle_files=True` reorders its
# files every epoch, so batches already mix classes; the buffer mixes neighbouring records.
STREAM_SHUFFLE_BUFFER = 10_000


def _permuted(source, seed, workers, worker, repeat):
    """`(item, label)` in a new full random permutation of the whole source every epoch.

    The official code (a `DistributedSampler` over the whole dataset) draws a full permutation
    per epoch; a shuffle buffer over a class-sorted folder does not: with 10,000 of ImageNet's
    1.28 M files in the buffer, a batch holds ~8 of its 1,000 classes. Only indices are
    permuted (8 bytes an image: 10 MB for ImageNet), and the items are gathered after.

    Repeated: epoch e is the stateless permutation of (seed, e), so a resumed run that skips
    to its position sees exactly the order an uninterrupted run would. Not repeated (a user's
    `fit(dataset, epochs=N)` iterates it again every epoch): a new random key per iteration.
    Every worker draws the same permutation and reads its own stride of it, as
    `DistributedSampler` does.
    """
    items, labels = tf.constant(source.items), tf.constant(source.labels)
    n = source.size
    if repeat:
        epochs = tf.data.Dataset.counter()
    else:
        epochs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

    def epoch_order(epoch):
        key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
        return tf.data.Dataset.from_tensor_slices(order[worker::workers])

    order = epochs.flat_map(epoch_order)
    return order.map(lambda i: (tf.gather(items, i), tf.gather(labels, i)))


def _prepare(source, seed, shuffle, input_context, repeat, start=0):
    workers, worker = 1, 0
    if input_context is not None and input_context.num_input_pipelines > 1:
        workers, worker = input_context.num_input_pipelines, input_context.input_pipeline_id
    if shuffle and source.items is not None:
        ds = _permuted(source, seed, workers, worker, repeat)
    else:
        ds = source.dataset
        if workers > 1:
            ds = ds.shard(workers, worker)
        if shuffle:
            buffer = min(source.size, STREAM_SHUFFLE_BUFFER)
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
    if start:
        ds = ds.skip(start)  # before decoding: skipping costs a pass over file names only
    # Position in the (shuffled) stream, interleaved over the workers' shards: the per-image
    # seed, new views every epoch and different draws on every worker. Without shuffling,
    # worker w's i-th image is image i * workers + w and gets the seed it gets in one process.
    return tf.data.Dataset.zip(tf.data.Dataset.counter(start * workers + worker, workers), ds)


def _check_batch(batch_size):
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )


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
    augment_on="host",
    start_batch=0,
    augment_impl="simsiam_keras",
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
        augment_on: "host" (the whole recipe here, in tf.data) or "device" (only decode, crop
            and resize here; views in [0, 1] for `device_augment.ViewAugment` in the step).
        start_batch: begin at this batch of the (repeated, seeded) stream: resuming mid-epoch
            gives exactly the batches an uninterrupted run would have seen next.
        augment_impl: "simsiam_keras" (this package's ops, torchvision's semantics, seeded per
            image) or "kerascv" (keras-cv's layers with the paper's parameters,
            `kerascv_views.py`: the same images in the same order, but views from keras-cv's
            own generators, so neither `deterministic` nor a resume reproduces them).

    Returns:
        A `tf.data.Dataset`.
    """
    # Every argument by name, plus the two choices `two_view_dataset_variant` exposes.
    return _two_view_dataset(**locals(), fused=False, compiled=True)


def two_view_dataset_variant(*args, fused=False, compiled=True, **kwargs):
    """`two_view_dataset` with the two choices it fixes, for the pipeline benchmark.

    Args:
        *args: as `two_view_dataset`.
        fused: decode each view's crop of a JPEG separately with the crop fused into the
            decode, instead of decoding the image once for both views. Off in
            `two_view_dataset`: two crops of scale 0.2-1 cover ~1.2x the image on average, and
            at 224 px the two were within noise (docs/pipeline.md), so the simpler
            decode-once path is kept.
        compiled: run the colour steps, blur and normalisation as one XLA-compiled function
            (on in `two_view_dataset`).
        **kwargs: as `two_view_dataset`.

    Returns:
        A `tf.data.Dataset`, as `two_view_dataset`.
    """
    settings = inspect.signature(two_view_dataset).bind(*args, **kwargs)
    settings.apply_defaults()
    return _two_view_dataset(**settings.arguments, fused=fused, compiled=compiled)


def _two_view_dataset(
    source,
    batch_size,
    image_size,
    blur,
    seed,
    shuffle,
    deterministic,
    input_context,
    repeat,
    augment_on,
    start_batch,
    augment_impl,
    fused,
    compiled,
):
    _check_batch(batch_size)
    if augment_on not in ("host", "device"):
        raise ValueError(f"`augment_on` must be 'host' or 'device'. Received: {augment_on!r}")
    if augment_impl not in AUGMENT_IMPLS:
        raise ValueError(
            f"`augment_impl` must be one of {AUGMENT_IMPLS}. Received: {augment_impl!r}"
        )
    if augment_impl == "kerascv" and augment_on != "host":
        raise ValueError("augment_impl='kerascv' runs on the host: augment_on='device' is ours.")
    ds = _prepare(source, seed, shuffle, input_context, repeat, start_batch * batch_size)
    if augment_impl == "kerascv":
        return _kerascv_views(ds, source, batch_size, image_size, blur, seed, deterministic)

    def two_views(index, element):
        item, _ = element
        seeds = augment.split_seed(tf.stack([tf.cast(seed, tf.int64), index]), 4)
        crops = augment.crops(
            item, source.kind, [seeds[0], seeds[1]], image_size, recipe.CROP_SCALE, fused
        )
        if augment_on == "device":
            return crops[0], crops[1]
        return (
            augment.augment_cropped(crops[0], seeds[2], blur, compiled),
            augment.augment_cropped(crops[1], seeds[3], blur, compiled),
        )

    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors()  # a file that passed the listing checks but fails to decode
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda v1, v2: ((v1, v2),))
    return ds.prefetch(tf.data.AUTOTUNE)


def _kerascv_views(ds, source, batch_size, image_size, blur, seed, deterministic):
    """`two_view_dataset` with keras-cv's layers (they draw per image).

    Per image two crops of one decode, then the rest of the recipe on each batch of crops.
    """
    from simsiam_keras.kerascv_views import KerasCVRecipe

    views = KerasCVRecipe(image_size, blur, seed)

    def two_crops(index, element):
        image = augment.full_image(element[0], source.kind)
        return views.crop_view(image), views.crop_view(image)

    ds = ds.map(two_crops, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors().batch(batch_size, drop_remainder=True)
    ds = ds.map(
        lambda c1, c2: ((views.finish_views(c1), views.finish_views(c2)),),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def labeled_dataset(
    source,
    batch_size,
    image_size,
    train=False,
    seed=0,
    shuffle=None,
    drop_remainder=None,
    deterministic=False,
    input_context=None,
    repeat=False,
    require_labels=True,
    start_batch=0,
):
    """Batches of `(images, labels)` for evaluation.

    `train=False`: the evaluation transform (resize to image_size * 256/224, centre crop), in
    order, every image once. `train=True`: the linear protocol's training view,
    RandomResizedCrop(scale 0.08-1) + horizontal flip, shuffled, last partial batch dropped.

    `require_labels=False` accepts unlabelled sources (labels -1). `start_batch` begins at that
    batch of the (repeated, seeded) stream, as in `two_view_dataset`.

    Raises:
        ValueError: the source has no labels.
    """
    _check_batch(batch_size)
    if require_labels and not source.labeled:
        raise ValueError(
            f"{source.name} has no labels; evaluation needs them (an image folder needs "
            "<class>/<image> subfolders)."
        )
    shuffle = train if shuffle is None else shuffle
    drop_remainder = train if drop_remainder is None else drop_remainder
    ds = _prepare(source, seed, shuffle, input_context, repeat, start_batch * batch_size)

    def view(index, element):
        item, label = element
        if not train:
            return augment.eval_view(augment.full_image(item, source.kind), image_size), label
        s_crop, s_flip = tf.unstack(
            augment.split_seed(tf.stack([tf.cast(seed, tf.int64), index]), 2)
        )
        crop = augment.crops(item, source.kind, [s_crop], image_size, augment.LINEAR_CROP_SCALE)[0]
        return augment.linear_cropped(crop, s_flip), label

    ds = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.ignore_errors().batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
