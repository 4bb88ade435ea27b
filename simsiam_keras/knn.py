"""The weighted kNN classifier that the authors use to monitor training (InstDisc style).

The train set's L2-normalised pooled backbone features are the memory; each query votes with
its k = 200 nearest memory features by cosine similarity, each vote weighted exp(sim / 0.2)
(Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
CVPR 2018; docs/recipe.md, "Monitors").

Memory at ImageNet scale (docs/knn_memory.md). A `FeatureBank` holds the memory in chunks of
`chunk_rows` rows, L2-normalised, as float16 by default (half of float32) and, given a
`directory`, as one `.npy` file per chunk, so that none of it stays resident. The queries meet
one memory chunk at a time, `chunk_size` queries per block: similarities in float32 (the chunk
is converted and re-normalised), the chunk's k best per query, merged into each query's running
k best (similarity, label). Ties go to the lower memory index, as in a full stable sort, so the
answer does not depend on the chunk sizes. In bytes, for N memory rows, M queries, C channels,
L classes, s = 2 (float16) or 4 (float32) bytes per stored value, R = `chunk_rows` and Q
queries per block (`chunk_size`, capped at 2**25 // R):

    memory    N*C*s + 8*N (labels); with a directory 8*N, plus R*C*s while a chunk is read
    queries   M*C*s + 8*M, in RAM
    kNN step  4*R*C + 4*Q*C + 13*Q*R + 12*M*k, plus 4*M*L for `knn_predict`'s scores

The kNN step is the chunk in float32, a query block in float32, a block's similarities with
their argpartition indices and tie mask, and the running top-k: it does not grow with N.
While the memory is extracted, one chunk (R*C*s) and one batch of float32 features are open.
ImageNet (N = 1.28M, M = 50k, C = 2048, k = 200, R = 8192, Q = 1024): the memory takes
10.5 GB as float32, 5.2 GB as float16 and 10 MB (its labels) on disk; the queries 205 MB; the
kNN step about 300 MB. Measured peaks: docs/knn_memory.md (benchmarks/knn_memory.py).

NumPy, not `keras.ops`: one [1024, 2048] x [2048, 8192] block and its top 200 took 1.22x
(PyTorch), 1.37x (TensorFlow) and 2.07x (JAX) NumPy's time (matmul, argpartition) with
`keras.ops.matmul` and `keras.ops.top_k` on the 2-core CPU here (`benchmarks/knn_memory.py
--blocks`); NumPy also runs without TensorFlow. On a GPU the backend would win (not done).

Replicas. Features are computed by `distribute.local_predict`: `predict_on_batch`, each batch
split over the replicas of a one-worker tf.distribute strategy (MirroredStrategy), where
`predict_on_batch` would run the whole batch on every replica and return the copies (keras
3.15). Under multi-worker training every worker would extract the whole split on its own; the
pretraining run evaluates on the chief only, and the memory is not sharded across workers.
"""

import keras
import numpy as np

from simsiam_keras import distribute, report
from simsiam_keras.feature_bank import (  # FEATURE_DTYPES, FeatureBank: re-exported
    FEATURE_DTYPES,  # noqa: F401
    FeatureBank,
    array_bank,
    check_positive_ints,
    l2_normalize,
)

# A block's [queries, chunk] similarities, argpartition indices and tie mask take 13 bytes per
# entry: queries per block are capped so that a block has at most 2**25 entries (~440 MB).
_MAX_BLOCK_ENTRIES = 2**25


class SizedBatches:
    """Batches `(images, labels)` of a dataset whose count is known though tf.data's is not.

    tf.data reports an unknown cardinality for pipelines that may skip an undecodable image;
    with the source's size the feature extraction shows a total and an ETA.

    Args:
        dataset: a `tf.data.Dataset` (or iterable) of `(images, labels)` batches.
        images: the number of images it holds.
        batch_size: images per batch.
    """

    def __init__(self, dataset, images, batch_size):
        self.dataset = dataset
        self.batches = -(-images // batch_size)

    def __len__(self):
        return self.batches

    def __iter__(self):
        return iter(_batches(self.dataset, None))


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


def _predicted(backbone, dataset, batch_size, progress_every_s):
    """Yields each batch's raw features, float32 `[B, C]`, and int64 labels `[B]`."""
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
        yield out.astype(np.float32, copy=False), labels.astype(np.int64)
        done += 1
        if progress is not None:
            progress.units_per_step = len(labels)
            progress.update(done)
    if not done:
        raise ValueError("`dataset` yielded no batches.")


def _check_batch_size(batch_size):
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )


def extract_features(backbone, dataset, batch_size=256, normalize=True, progress_every_s=None):
    """Pooled backbone features of a labelled dataset, in inference mode, L2-normalised.

    Args:
        backbone: a `keras.Model` mapping images `[N, H, W, 3]` to features `[N, C]`, e.g.
            `model.backbone` of a `SimSiam`. Run in inference mode through `predict_on_batch`
            (BatchNorm uses its moving statistics), on whichever Keras backend is active; built
            under a MirroredStrategy, each batch is split over its replicas.
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
        For a large memory, `extract_bank` stores float16 and can spill to disk.

    Raises:
        ValueError: if the dataset is empty or a batch's labels do not match its images.

    Example:
        >>> features, labels = extract_features(model.backbone, (images, labels))
    """
    _check_batch_size(batch_size)
    features, all_labels = [], []
    # predict_on_batch runs compiled (tf.function / jax.jit) and without autograd on torch:
    # faster than an eager `backbone(images, training=False)` (docs/pipeline.md).
    for out, labels in _predicted(backbone, dataset, batch_size, progress_every_s):
        features.append(l2_normalize(out) if normalize else out)
        all_labels.append(labels)
    return np.concatenate(features), np.concatenate(all_labels)


def extract_bank(
    backbone,
    dataset,
    batch_size=256,
    dtype="float16",
    directory=None,
    chunk_rows=8192,
    progress_every_s=None,
):
    """The L2-normalised features of a labelled dataset in a `FeatureBank` (the kNN memory).

    Args:
        backbone: as `extract_features`.
        dataset: as `extract_features`.
        batch_size: batch size when `dataset` is a pair of arrays.
        dtype: "float16" or "float32" storage.
        directory: None keeps the bank in RAM; a folder: one `.npy` file per chunk, in a
            temporary folder inside it that `close` removes.
        chunk_rows: rows per chunk.
        progress_every_s: as `extract_features`.

    Returns:
        A `FeatureBank`; close it (or use it in a `with` block) to free it.

    Raises:
        ValueError: as `extract_features` and `FeatureBank`.

    Example:
        >>> with extract_bank(model.backbone, train_ds, directory="/scratch") as memory:
        ...     knn_accuracy(memory, None, *extract_features(model.backbone, val_ds))
    """
    _check_batch_size(batch_size)
    bank = FeatureBank(dtype, directory, chunk_rows)
    try:
        for features, labels in _predicted(backbone, dataset, batch_size, progress_every_s):
            bank.append(features, labels)
    except BaseException:
        bank.close()
        raise
    return bank


def _cardinality(dataset):
    """The number of batches of a `tf.data.Dataset` or sized iterable, or None if unknown."""
    if hasattr(dataset, "cardinality"):
        n = int(dataset.cardinality())
        return n if n > 0 else None
    return len(dataset) if hasattr(dataset, "__len__") and not isinstance(dataset, tuple) else None


def _memory_bank(features, labels, chunk_rows):
    """The memory as a `FeatureBank`: a bank as it is, arrays as a chunked view."""
    if isinstance(features, FeatureBank):
        if labels is not None:
            raise ValueError("A FeatureBank holds its labels: pass `train_labels=None`.")
        return features
    if labels is None:
        raise ValueError("`train_labels` is required when the memory is an array.")
    features = np.asarray(features)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if features.ndim != 2:
        raise ValueError(
            f"Features must be 2-D [N, C]. Received: train_features.shape={features.shape}"
        )
    if len(labels) != len(features):
        raise ValueError(
            "Need one label per train feature. Received: "
            f"{len(labels)} labels for {len(features)} features"
        )
    return array_bank(features, labels, chunk_rows)


def _query_blocks(query_features, block, dim):
    """The queries as a list of arrays of at most `block` rows (views, no copies)."""
    if isinstance(query_features, FeatureBank):
        parts = [features for features, _ in query_features.chunks()]  # loaded into RAM
    else:
        parts = [np.asarray(query_features)]
        if parts[0].ndim != 2:
            raise ValueError(
                f"Features must be 2-D [M, C]. Received: query_features.shape={parts[0].shape}"
            )
    for part in parts:
        if part.shape[1] != dim:
            raise ValueError(
                "Train and query features must have the same width. Received: "
                f"{dim} and {part.shape[1]}"
            )
    return [part[s : s + block] for part in parts for s in range(0, len(part), block)]


def _neighbours(memory, query_features, num_classes, k, temperature, chunk_size):
    """Checks the arguments; returns each query block's k nearest `(sims, labels)`."""
    check_positive_ints(k=k, chunk_size=chunk_size, num_classes=num_classes)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature!r}")
    labels = memory.labels
    if len(labels) == 0:
        raise ValueError("Need at least one train feature. Received: an empty memory")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`train_labels` must lie in [0, {num_classes}). Received labels in "
            f"[{labels.min()}, {labels.max()}]"
        )
    block = max(1, min(int(chunk_size), _MAX_BLOCK_ENTRIES // memory.chunk_rows))
    blocks = _query_blocks(query_features, block, memory.dim)
    return _nearest(memory, blocks, min(int(k), len(labels)))


def _nearest(memory, blocks, k):
    """The k most similar memory rows of each query block, in one pass over the memory.

    Returns `[(sims [Q, k] float32, labels [Q, k] int64), ...]`, one pair per block, most
    similar first and equal similarities in memory order.
    """
    best = [(np.zeros((len(b), 0), np.float32), np.zeros((len(b), 0), np.int64)) for b in blocks]
    for features, labels in memory.chunks():
        chunk = l2_normalize(features)  # float32, re-normalised after the float16 rounding
        del features  # as stored; released, like `chunk` below, before the next chunk is read
        for i, block in enumerate(blocks):
            # Normalised again for every chunk rather than held as float32 copies: that would
            # double the queries' memory to save ~5 % of the block's matmul time (measured,
            # [1024, 2048] float16 block vs its product with an [8192, 2048] chunk, 2-core CPU).
            sims = l2_normalize(block) @ chunk.T  # [Q, R]
            best[i] = _merge(best[i], _chunk_top_k(sims, labels, k), k)
        del chunk
    return best


def _chunk_top_k(sims, labels, k):
    """The k largest of each row of `sims` `[Q, R]`, in memory order: `(sims, labels)`."""
    num_rows = sims.shape[1]
    if k >= num_rows:
        return sims, np.broadcast_to(labels, sims.shape)
    top = np.argpartition(sims, num_rows - k, axis=1)[:, num_rows - k :]
    threshold = sims[np.arange(len(sims)), top[:, 0]]  # the k-th largest
    # argpartition keeps an arbitrary few of the values equal to the threshold; where it had to
    # choose, keep the lowest memory indices, as a stable sort would (rare but for duplicates).
    tied = np.count_nonzero(sims == threshold[:, None], axis=1)
    tied_kept = np.count_nonzero(np.take_along_axis(sims, top, 1) == threshold[:, None], axis=1)
    for i in np.flatnonzero(tied > tied_kept):
        above = np.flatnonzero(sims[i] > threshold[i])
        at = np.flatnonzero(sims[i] == threshold[i])[: k - len(above)]
        top[i] = np.concatenate([above, at])
    top.sort(axis=1)
    return np.take_along_axis(sims, top, 1), labels[top]


def _merge(best, new, k):
    """The k best of two `(sims, labels)` candidate sets, `best` from earlier memory rows."""
    sims = np.concatenate([best[0], new[0]], axis=1)
    labels = np.concatenate([best[1], new[1]], axis=1)
    # Stable: of equal similarities the earlier memory row stays ahead.
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(labels, order, 1)


def _votes(sims, labels, num_classes, temperature):
    """Class scores `[Q, L]`: the sum of exp(sim / temperature) over the neighbours per class."""
    rows = np.arange(len(sims))[:, None]
    weights = np.exp(sims.astype(np.float64) / temperature)
    # Scatter-add the votes: bincount over (row, class) pairs, no [Q, k, classes] one-hot.
    flat = (rows * num_classes + labels).ravel()
    votes = np.bincount(flat, weights=weights.ravel(), minlength=len(sims) * num_classes)
    return votes.reshape(len(sims), num_classes).astype(np.float32)


def knn_predict(
    train_features,
    train_labels,
    query_features,
    num_classes,
    k=200,
    temperature=0.2,
    chunk_size=1024,
    *,
    chunk_rows=8192,
):
    """Class scores of the weighted kNN classifier (InstDisc style, as the SimSiam authors use).

    For each query: cosine similarity to every train feature, the k most similar (of equal
    similarities, the lower memory index first), and for each class the sum of
    exp(sim / temperature) over those of the k neighbours that carry that label. The memory is
    read chunk by chunk and the queries go in blocks of `chunk_size`, so the full query x
    memory matrix is never built (memory formula: module docstring).

    Args:
        train_features: the memory: a `FeatureBank` (then `train_labels` is None), or `[N, C]`
            features, read `chunk_rows` rows at a time. Rows are L2-normalised here, in
            float32 (a no-op for the output of `extract_features`).
        train_labels: int labels of an array memory, `[N]`, in `[0, num_classes)`.
        query_features: `[M, C]`, normalised likewise, or a `FeatureBank` (read into RAM).
        num_classes: number of classes.
        k: neighbours per query; clamped to `N` when larger.
        temperature: the vote temperature (0.2 in InstDisc and the SimSiam monitor).
        chunk_size: queries per block (at most `2**25 // chunk_rows`).
        chunk_rows: memory rows per chunk of an array memory (a bank has its own).

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
    memory = _memory_bank(train_features, train_labels, chunk_rows)
    nearest = _neighbours(memory, query_features, num_classes, k, temperature, chunk_size)
    scores = np.zeros((sum(len(sims) for sims, _ in nearest), num_classes), np.float32)
    start = 0
    for sims, labels in nearest:
        scores[start : start + len(sims)] = _votes(sims, labels, num_classes, temperature)
        start += len(sims)
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
    *,
    chunk_rows=8192,
):
    """Top-1 (and top-5) accuracy of the weighted kNN classifier, in percent.

    Args:
        train_features: the memory, `[N, C]` or a `FeatureBank` (see `knn_predict`).
        train_labels: `[N]` int labels; None with a `FeatureBank`.
        query_features: `[M, C]` or a `FeatureBank`.
        query_labels: `[M]` int labels; None with a `FeatureBank` (its labels).
        num_classes: number of classes; None infers `max label + 1` over both label sets.
        k: neighbours per query (clamped to `N`).
        temperature: vote temperature.
        chunk_size: queries per block (see `knn_predict`).
        chunk_rows: memory rows per chunk of an array memory.

    Returns:
        `{"knn_top1": float}` in percent (87.3 means 87.3 %), plus `"knn_top5"` when there
        are more than 5 classes (with 5 or fewer it would always be 100). Class ties go to the
        lower class index. Scores are ranked block by block: no `[M, num_classes]` matrix.

    Example:
        >>> train = extract_features(model.backbone, train_ds)
        >>> val = extract_features(model.backbone, val_ds)
        >>> knn_accuracy(*train, *val)
        {'knn_top1': 87.3, 'knn_top5': 99.4}
    """
    if isinstance(query_features, FeatureBank) and query_labels is None:
        query_labels, num_queries = query_features.labels, len(query_features)
    else:
        num_queries = len(query_features)
    query_labels = np.asarray(query_labels).reshape(-1).astype(np.int64)
    if len(query_labels) != num_queries or num_queries == 0:
        raise ValueError(
            "Need one label per query feature and at least one. Received: "
            f"{len(query_labels)} labels for {num_queries} features"
        )
    memory = _memory_bank(train_features, train_labels, chunk_rows)
    if num_classes is None:
        num_classes = int(max(np.max(memory.labels, initial=0), np.max(query_labels))) + 1
    nearest = _neighbours(memory, query_features, num_classes, k, temperature, chunk_size)
    # Stable sort of the negated scores: ties keep the lower class index first.
    ranking = np.concatenate(
        [
            np.argsort(-_votes(sims, labels, num_classes, temperature), axis=-1, kind="stable")[
                :, :5
            ]
            for sims, labels in nearest
        ]
    )
    hits = ranking == query_labels[:, None]
    result = {"knn_top1": 100.0 * float(np.mean(hits[:, 0]))}
    if num_classes > 5:
        result["knn_top5"] = 100.0 * float(np.mean(hits.any(axis=-1)))
    return result


def backbone_knn_accuracy(
    backbone,
    train_data,
    val_data,
    num_classes=None,
    k=200,
    temperature=0.2,
    batch_size=256,
    progress_every_s=None,
    *,
    feature_dtype="float16",
    memory_dir=None,
    chunk_rows=8192,
):
    """The kNN accuracy of `backbone`: features of `train_data` (the memory) and `val_data`.

    The one entry point used by `KNNMonitor`, `scripts/knn_eval.py` and the pretraining run.
    Arguments as `extract_features` and `knn_accuracy`; returns `knn_accuracy`'s dict. Both
    feature sets are stored as `feature_dtype` (`extract_bank`); the memory goes to `.npy`
    files in a temporary folder inside `memory_dir` when it is given, removed at the end.
    """
    every = progress_every_s
    with (
        extract_bank(
            backbone, train_data, batch_size, feature_dtype, memory_dir, chunk_rows, every
        ) as memory,
        extract_bank(backbone, val_data, batch_size, feature_dtype, None, 1024, every) as queries,
    ):
        return knn_accuracy(memory, None, queries, None, num_classes, k, temperature)


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
    moving averages follow the batches), so a gain over the built statistics can be BN adapting
    rather than self-supervised learning (docs/quality.md, "The quickstart"). This copy runs
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
