"""The kNN-evaluation application: `run(KnnConfig)`, the monitor's classifier on a saved model."""

from simsiam_keras import data, knn
from simsiam_keras.apps.linear_eval import load_evaluation


def run(config):
    """The kNN accuracy of a pretrained backbone (`KnnConfig`); returns a dict.

    Features of the evaluation views (resize + centre crop) of the labelled train split (the
    memory, stored as `--feature_dtype`, on disk under `--memory_dir` when given) and
    validation split (the queries).

    Returns:
        `{"train", "val"}` (the sources' names), `train_images`, `val_images`, the `k` used
        and `knn_accuracy`'s `knn_top1`, `knn_top5`.

    Raises:
        ConfigError: a bad setting; ValueError: unusable data.
    """
    c = config
    backbone, size, train, val = load_evaluation(c)
    datasets = [
        knn.SizedBatches(data.labeled_dataset(s, c.batch_size, size), s.size, c.batch_size)
        for s in (train, val)
    ]
    result = knn.backbone_knn_accuracy(
        backbone,
        *datasets,
        train.num_classes,
        c.knn_k,
        c.temperature,
        feature_dtype=c.feature_dtype,
        memory_dir=c.memory_dir,
        chunk_rows=c.chunk_rows,
    )
    return {
        "train": train.name,
        "val": val.name,
        "train_images": train.size,
        "val_images": val.size,
        "k": min(c.knn_k, train.size),
        **result,
    }
