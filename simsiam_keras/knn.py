"""The weighted kNN classifier that the authors use to monitor training (InstDisc style).

The train set's L2-normalised pooled backbone features are the memory; each query votes with
its k = 200 nearest memory features by cosine similarity, each vote weighted exp(sim / 0.2)
(Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
CVPR 2018; docs/recipe.md, "Monitors"). NumPy only: it runs on every Keras backend and on
machines without TensorFlow, and queries go in chunks so that the full query x memory
similarity matrix is never held (10k CIFAR queries x 50k memory would be 2 GB in float32).
"""

import keras
import numpy as np

from simsiam_keras import distribute, report

_EPSILON = 1e-8  # the norm clamp of losses.l2_normalize / torch's cosine_similarity
# A chunk's [queries, memory] similarities and argpartition indices take 12 bytes per entry:
# 2**25 entries is about 400 MB, whatever `chunk_size` asks (ImageNet's 1.28M memory: 26 rows).
_MAX_CHUNK_ENTRIES = 2**25


def _l2_normalize(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPSILON)


def _batches(dataset, batch_size):
    """Yields `(images, labels)` NumPy batches from a dataset, an iterable or an array pair."""
    if isinstance(dataset, tuple) and len(dataset) == 2 and hasattr(dataset[0], "shape"):
        images, labels = dataset
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]
        return
    if hasattr(dataset, "as_numpy_iterator"):  # tf.data: skip the per-element eager tensors
        dataset = dataset.as_numpy_iterator()
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) < 2:
            raise ValueError(
                "Each dataset element must be an `(images, labels)` batch. "
                f"Received an element of type {type(element).__name__}"
            )
        yield element[0], element[1]


def extract_features(backbone, dataset, batch_size=256, normalize=True, progress_every_s=None):
    """Pooled backbone features of a labelled dataset, in inference mode, L2-normalised.

    Args:
        backbone: a `keras.Model` mapping images `[N, H, W, 3]` to features `[N, C]`, e.g.
            `model.backbone` of a `SimSiam`. Run in inference mode through `predict_on_batch`
            (BatchNorm uses its moving statistics), on whichever Keras backend is active.
        dataset: batches of `(images, labels)`: a `tf.data.Dataset`, any iterable of array
            pairs, or one pair of arrays `(images, labels)` that is cut into batches of
            `batch_size`. Images must already be preprocessed the way the backbone expects
            (resized and normalised); extra element entries (e.g. sample weights) are ignored.
        batch_size: batch size when `dataset` is a pair of arrays; ignored otherwise.
        normalize: L2-normalise each row (False: the raw pooled features).
        progress_every_s: show a progress line (`report.Progress`) at this interval when not
            on a terminal; None: silent.

    Returns:
        `(features, labels)`: float32 `[N, C]` with unit L2 norm per row, and int64 `[N]`.

    Raises:
        ValueError: if the dataset is empty or a batch's labels do not match its images.

    Example:
        >>> features, labels = extract_features(model.backbone, (images, labels))
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    features, all_labels = [], []
    # predict_on_batch runs compiled (tf.function / jax.jit) and without autograd on torch:
    # faster than an eager `backbone(images, training=False)` (README, "Measured speed").
    predict = distribute.local_predict(backbone)
    progress = None
    if progress_every_s is not None:
        total = _cardinality(dataset)
        progress = report.Progress("features", total, "images/s", 1, progress_every_s)
    done = 0
    for images, labels in _batches(dataset, batch_size):
        out = np.asarray(keras.ops.convert_to_numpy(predict(images)))
        labels = np.asarray(keras.ops.convert_to_numpy(labels)).reshape(-1)
        if out.ndim != 2 or out.shape[0] != labels.shape[0]:
            raise ValueError(
                "The backbone must map a batch of images to [N, C] features, one per label. "
                f"Received features of shape {out.shape} for {labels.shape[0]} labels"
            )
        features.append(_l2_normalize(out) if normalize else out.astype(np.float32))
        all_labels.append(labels.astype(np.int64))
        done += 1
        if progress is not None:
            progress.units_per_step = len(labels)
            progress.update(done)
    if not features:
        raise ValueError("`dataset` yielded no batches.")
    return np.concatenate(features), np.concatenate(all_labels)


def _cardinality(dataset):
    """The number of batches of a `tf.data.Dataset` or sized iterable, or None if unknown."""
    if hasattr(dataset, "cardinality"):
        n = int(dataset.cardinality())
        return n if n > 0 else None
    return len(dataset) if hasattr(dataset, "__len__") and not isinstance(dataset, tuple) else None


def knn_predict(
    train_features,
    train_labels,
    query_features,
    num_classes,
    k=200,
    temperature=0.2,
    chunk_size=1024,
):
    """Class scores of the weighted kNN classifier (InstDisc style, as the SimSiam authors use).

    For each query: cosine similarity to every train feature, the k most similar, and for each
    class the sum of exp(sim / temperature) over those of the k neighbours that carry that label.
    Queries go in chunks of `chunk_size`, further capped so that a chunk's similarities stay
    within 2**25 entries (about 400 MB with the top-k indices); the full query x memory matrix
    is never built.

    Args:
        train_features: the memory, `[N, C]`. Rows are L2-normalised here (a no-op for the
            output of `extract_features`).
        train_labels: int labels of the memory, `[N]`, in `[0, num_classes)`.
        query_features: `[M, C]`, normalised likewise.
        num_classes: number of classes.
        k: neighbours per query; clamped to `N` when larger.
        temperature: the vote temperature (0.2 in InstDisc and the SimSiam monitor).
        chunk_size: queries per chunk (at most `2**25 // N`).

    Returns:
        float32 scores `[M, num_classes]`; the predicted class is `scores.argmax(-1)` and
        `np.argsort(-scores, axis=-1)` ranks the classes. Classes without a vote score 0.

    Raises:
        ValueError: on mismatched shapes, labels out of range or non-positive `k`,
            `temperature`, `chunk_size` or `num_classes`.

    Example:
        >>> scores = knn_predict(train_feats, train_labels, val_feats, num_classes=10)
        >>> top1 = 100 * np.mean(scores.argmax(-1) == val_labels)
    """
    train_features = _l2_normalize(train_features)
    query_features = _l2_normalize(query_features)
    train_labels = np.asarray(train_labels).reshape(-1).astype(np.int64)
    for name, value in (("k", k), ("chunk_size", chunk_size), ("num_classes", num_classes)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature!r}")
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError(
            "Features must be 2-D [N, C]. Received: train_features.shape="
            f"{train_features.shape}, query_features.shape={query_features.shape}"
        )
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            "Train and query features must have the same width. Received: "
            f"{train_features.shape[1]} and {query_features.shape[1]}"
        )
    if len(train_labels) != len(train_features) or len(train_labels) == 0:
        raise ValueError(
            "Need one label per train feature and at least one. Received: "
            f"{len(train_labels)} labels for {len(train_features)} features"
        )
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(
            f"`train_labels` must lie in [0, {num_classes}). Received labels in "
            f"[{train_labels.min()}, {train_labels.max()}]"
        )
    k = min(int(k), len(train_features))
    chunk_size = max(1, min(int(chunk_size), _MAX_CHUNK_ENTRIES // len(train_features)))
    num_queries = len(query_features)
    scores = np.zeros((num_queries, num_classes), np.float32)
    for start in range(0, num_queries, chunk_size):
        sim = query_features[start : start + chunk_size] @ train_features.T  # [chunk, N]
        rows = np.arange(len(sim))[:, None]
        # The k largest, unordered: their order does not change the vote sums.
        top = np.argpartition(sim, len(train_features) - k, axis=1)[:, -k:]
        weights = np.exp(sim[rows, top].astype(np.float64) / temperature)
        # Scatter-add the votes: bincount over (row, class) pairs, no [chunk, k, classes] one-hot.
        flat = (rows * num_classes + train_labels[top]).ravel()
        votes = np.bincount(flat, weights=weights.ravel(), minlength=len(sim) * num_classes)
        scores[start : start + len(sim)] = votes.reshape(len(sim), num_classes)
    return scores


def knn_accuracy(
    train_features,
    train_labels,
    query_features,
    query_labels,
    num_classes=None,
    k=200,
    temperature=0.2,
    chunk_size=1024,
):
    """Top-1 (and top-5) accuracy of the weighted kNN classifier, in percent.

    Args:
        train_features: the memory, `[N, C]`.
        train_labels: `[N]` int labels.
        query_features: `[M, C]`.
        query_labels: `[M]` int labels.
        num_classes: number of classes; None infers `max label + 1` over both label sets.
        k: neighbours per query (clamped to `N`).
        temperature: vote temperature.
        chunk_size: queries per chunk (see `knn_predict`).

    Returns:
        `{"knn_top1": float}` in percent (87.3 means 87.3 %), plus `"knn_top5"` when there
        are more than 5 classes (with 5 or fewer it would always be 100). Class ties go to the
        lower class index.

    Example:
        >>> train = extract_features(model.backbone, train_ds)
        >>> val = extract_features(model.backbone, val_ds)
        >>> knn_accuracy(*train, *val)
        {'knn_top1': 87.3, 'knn_top5': 99.4}
    """
    query_labels = np.asarray(query_labels).reshape(-1).astype(np.int64)
    if len(query_labels) != len(query_features) or len(query_labels) == 0:
        raise ValueError(
            "Need one label per query feature and at least one. Received: "
            f"{len(query_labels)} labels for {len(query_features)} features"
        )
    if num_classes is None:
        num_classes = int(max(np.max(train_labels), np.max(query_labels))) + 1
    scores = knn_predict(
        train_features, train_labels, query_features, num_classes, k, temperature, chunk_size
    )
    # Stable sort of the negated scores: ties keep the lower class index first.
    ranking = np.argsort(-scores, axis=-1, kind="stable")[:, :5]
    hits = ranking == query_labels[:, None]
    result = {"knn_top1": 100.0 * float(np.mean(hits[:, 0]))}
    if num_classes > 5:
        result["knn_top5"] = 100.0 * float(np.mean(hits.any(axis=-1)))
    return result


def backbone_knn_accuracy(
    backbone, train_data, val_data, num_classes=None, k=200, temperature=0.2, batch_size=256,
    progress_every_s=None,
):  # fmt: skip
    """The kNN accuracy of `backbone`: features of `train_data` (the memory) and `val_data`.

    The one entry point used by `KNNMonitor`, `scripts/knn_eval.py` and the pretraining run.
    Arguments as `extract_features` and `knn_accuracy`; returns `knn_accuracy`'s dict.
    """
    every = progress_every_s
    train_features, train_labels = extract_features(backbone, train_data, batch_size, True, every)
    val_features, val_labels = extract_features(backbone, val_data, batch_size, True, every)
    return knn_accuracy(
        train_features, train_labels, val_features, val_labels, num_classes, k, temperature
    )


def _batch_norm_layers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += _batch_norm_layers(layer)
    return found


def recalibrated_copy(backbone, dataset, max_batches=20, batch_size=256):
    """A copy of `backbone` whose BN moving statistics are recomputed on `dataset`.

    The fair random-init baseline for kNN or linear evaluation: a freshly built network has
    BN moving mean 0 and variance 1, far from its real activation statistics, so its
    inference-mode features are poor for a reason that has nothing to do with learning. Any
    training run, even at a loss of 0, fixes that within its first few dozen steps (the
    moving averages follow the batches). Measured on the digits (width-0.25 ResNet-18, 32 px,
    seed 0, k=200): random-init kNN top-1 41.1 with the built statistics, 56.2 with recomputed
    ones, the level the former 6-epoch quickstart ended at (56.6): BN adapting, not
    self-supervised learning. This copy runs
    `max_batches` forward passes in training mode, with no weight update, and sets each BN
    layer's moving mean and variance to the average of its batch statistics ("precise BN").

    Args:
        backbone: a `keras.Model` (left unchanged).
        dataset: `(images, labels)` batches, as `extract_features` takes them.
        max_batches: number of batches to average over.
        batch_size: batch size when `dataset` is a pair of arrays.

    Returns:
        A new `keras.Model` with the weights of `backbone` and recomputed BN statistics.
    """
    copy = keras.models.clone_model(backbone)
    copy.set_weights(backbone.get_weights())
    layers = _batch_norm_layers(copy)
    momenta = [layer.momentum for layer in layers]
    try:
        for i, (images, _) in enumerate(_batches(dataset, batch_size)):
            if i == max_batches:
                break
            for layer in layers:  # moving = m * moving + (1 - m) * batch: a running mean
                layer.momentum = i / (i + 1)
            copy(keras.ops.convert_to_tensor(images), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return copy


def run(config):
    """The kNN accuracy of a pretrained backbone (`KnnConfig`); returns a dict.

    Features of the evaluation views (resize + centre crop) of the labelled train split (the
    memory) and validation split (the queries).

    Returns:
        `{"train", "val"}` (the sources' names) and `knn_accuracy`'s `knn_top1`, `knn_top5`.

    Raises:
        ConfigError: a bad setting; ValueError: unusable data.
    """
    from simsiam_keras import data, linear

    c = config
    backbone, size, train, val = linear.load_evaluation(c)
    datasets = [data.labeled_dataset(s, c.batch_size, size) for s in (train, val)]
    result = backbone_knn_accuracy(backbone, *datasets, train.num_classes, c.k, c.temperature)
    return {"train": train.name, "val": val.name, **result}
