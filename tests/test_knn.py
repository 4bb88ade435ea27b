"""The weighted kNN classifier vs a brute-force NumPy reference and on data of known accuracy.

The classifier and the feature bank are NumPy whatever the backend: only the tests that run a
Keras model (feature extraction, the BN recalibration) also run under JAX and PyTorch.
"""

import dataclasses
import os

import keras
import numpy as np
import pytest

from simsiam_keras import config, knn


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_scores(train, train_labels, query, num_classes, k, temperature):
    """InstDisc's kNN written the obvious way: full similarity matrix, full sort, one-hot votes.

    In float64; a stable sort, so that equal similarities go to the lower memory index.
    """
    sim = _normalize(query.astype(np.float64)) @ _normalize(train.astype(np.float64)).T
    k = min(k, len(train))
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
    one_hot = np.eye(num_classes)[train_labels[top]]  # [M, k, classes]
    return np.sum(one_hot * weights[..., None], axis=1)


def _clusters(rng, num_classes, per_class, dim=32, noise=0.05):
    """Points around `num_classes` random unit centres, labelled by centre, on the sphere."""
    centers = _normalize(rng.normal(size=(num_classes, dim)))
    labels = np.repeat(np.arange(num_classes), per_class)
    points = centers[labels] + noise * rng.normal(size=(len(labels), dim))
    return _normalize(points).astype(np.float32), labels


def _near(rng, points, noise=0.02):
    return _normalize(points + noise * rng.normal(size=points.shape)).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 1024])
@pytest.mark.parametrize("k", [1, 10, 500])  # 500 > the 120 train samples: clamped
def test_knn_predict_matches_brute_force(chunk_size, k):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 16)).astype(np.float32)
    query = rng.normal(size=(50, 16)).astype(np.float32)
    labels = rng.integers(0, 6, 120)
    scores = knn.knn_predict(train, labels, query, 6, k=k, temperature=0.2, chunk_size=chunk_size)
    expected = _reference_scores(train, labels, query, 6, k, 0.2)
    assert scores.shape == (50, 6) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_array_equal(scores.argmax(-1), expected.argmax(-1))


def test_knn_predict_k_larger_than_train_set_equals_k_equal_to_it():
    rng = np.random.default_rng(1)
    train, labels = rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    query = rng.normal(size=(9, 8))
    np.testing.assert_allclose(
        knn.knn_predict(train, labels, query, 3, k=200),
        knn.knn_predict(train, labels, query, 3, k=30),
    )


def test_knn_predict_is_cosine_not_dot_product():
    rng = np.random.default_rng(2)
    train, labels = rng.normal(size=(40, 8)), rng.integers(0, 4, 40)
    query = rng.normal(size=(10, 8))
    scale_train = rng.uniform(0.1, 10.0, (40, 1))
    np.testing.assert_allclose(
        knn.knn_predict(train * scale_train, labels, 3.0 * query, 4, k=5),
        knn.knn_predict(train, labels, query, 4, k=5),
        rtol=1e-5,
    )


def test_well_separated_clusters_are_classified_perfectly():
    rng = np.random.default_rng(3)
    points, labels = _clusters(rng, 5, 60)
    train, train_labels = points[::2], labels[::2]
    val, val_labels = points[1::2], labels[1::2]
    result = knn.knn_accuracy(train, train_labels, val, val_labels)  # k = 200 > 150: clamped
    assert result == {"knn_top1": 100.0}  # 5 classes: no top-5
    result = knn.knn_accuracy(train, train_labels, val, val_labels, k=20, chunk_size=16)
    assert result == {"knn_top1": 100.0}


def test_known_accuracy_with_a_fifth_of_the_val_labels_wrong():
    rng = np.random.default_rng(5)
    train, train_labels = _clusters(rng, 10, 30)
    picks = rng.choice(len(train), 200, replace=False)
    val = _near(rng, train[picks])
    true = train_labels[picks]
    val_labels = true.copy()
    val_labels[:40] = (true[:40] + 1) % 10  # 20 % wrong, by construction
    result = knn.knn_accuracy(train, train_labels, val, val_labels, k=25, chunk_size=64)
    assert result["knn_top1"] == pytest.approx(80.0)
    # k = 25 < 30 per class: every vote goes to the true class; the 9 others tie at 0 and rank by
    # index (documented tie-break), so a wrong label c + 1 is in the top 5 when c <= 3, and the
    # wrong label 0 of class 9 ranks second.
    in_top5 = np.isin(true[:40], [0, 1, 2, 3, 9])
    assert result["knn_top5"] == pytest.approx(80.0 + 100.0 * in_top5.sum() / 200)


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(6)
    train, val = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    train_labels, val_labels = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    result = knn.knn_accuracy(train, train_labels, val, val_labels, num_classes=10)
    assert abs(result["knn_top1"] - 10.0) < 3.0  # chance; 3 points is ~4.5 standard errors
    assert abs(result["knn_top5"] - 50.0) < 5.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "`k`"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_classes": 2}, r"\[0, 2\)"),
    ],
)
def test_knn_predict_rejects_bad_arguments(kwargs, match):
    rng = np.random.default_rng(7)
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        knn.knn_predict(
            rng.normal(size=(6, 4)), [0, 1, 2, 0, 1, 2], rng.normal(size=(2, 4)), **args
        )


def _half_grid(rng, n, dim=8):
    """Unit vectors with four entries of +-0.5: every cosine similarity is a multiple of 0.25,
    exact in float16 and in any float32 summation order, so that exact ties abound."""
    x = np.zeros((n, dim), np.float32)
    columns = np.argsort(rng.random((n, dim)), axis=1)[:, :4]
    np.put_along_axis(x, columns, rng.choice([-0.5, 0.5], (n, 4)), axis=1)
    return x


def _assert_same_classes(scores, expected):
    """The same argmax wherever the reference's best class wins by more than rounding."""
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] > top2[:, 0] * (1 + 1e-6)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(scores.argmax(-1)[clear], expected.argmax(-1)[clear])


@pytest.mark.parametrize("storage", ["array", "float32", "float16", "float16_on_disk"])
@pytest.mark.parametrize("data", ["random", "ties"])
def test_chunked_memory_matches_brute_force(tmp_path, storage, data):
    rng = np.random.default_rng(10)
    if data == "ties":
        train, query = _half_grid(rng, 300), _half_grid(rng, 70)
    else:
        train, query = (rng.normal(size=(n, 16)).astype(np.float32) for n in (300, 70))
    labels = rng.integers(0, 7, 300)
    dtype, _, where = storage.partition("_on_")
    with knn.FeatureBank(
        "float32" if dtype == "array" else dtype, str(tmp_path) if where else None, chunk_rows=64
    ) as bank:
        for start in range(0, 300, 50):  # batches that straddle the chunks
            bank.append(train[start : start + 50], labels[start : start + 50])
        chunks = list(bank.chunks())
        assert [len(f) for f, _ in chunks] == [64, 64, 64, 64, 44]  # the last one uneven
        stored = np.concatenate([f for f, _ in chunks])
        assert stored.dtype == ("float32" if dtype == "array" else dtype)
        np.testing.assert_array_equal(np.concatenate([y for _, y in chunks]), labels)
        np.testing.assert_allclose(stored, _normalize(train), atol=1e-3)
        if where:
            files = sorted(os.listdir(bank.path))
            assert files == [f"chunk_{i:05d}.npy" for i in range(5)]
            assert os.path.dirname(bank.path) == str(tmp_path)
        # float32: against the original features; float16: against the stored, rounded ones.
        reference = stored if dtype == "float16" else train
        for k in (5, 100, 1000):  # 100 > a chunk; 1000 > the memory: clamped
            if dtype == "array":
                args = (train, labels, query, 7, k, 0.2, 32)
                scores = knn.knn_predict(*args, chunk_rows=64)
            else:
                scores = knn.knn_predict(bank, None, query, 7, k=k, chunk_size=32)
            expected = _reference_scores(reference, labels, query, 7, k, 0.2)
            np.testing.assert_allclose(scores, expected, rtol=1e-5)
            _assert_same_classes(scores, expected)
    assert os.listdir(tmp_path) == []  # close() removed the bank's folder
    with pytest.raises(ValueError, match="closed"):
        list(bank.chunks())


def test_the_chunking_does_not_change_the_answer_with_ties():
    rng = np.random.default_rng(11)
    train, query, labels = _half_grid(rng, 200), _half_grid(rng, 40), rng.integers(0, 5, 200)
    results = [
        knn.knn_predict(train, labels, query, 5, k=17, chunk_size=q, chunk_rows=r)
        for q, r in [(40, 200), (7, 1), (13, 16), (40, 33)]
    ]
    for scores in results[1:]:
        np.testing.assert_array_equal(scores, results[0])


def test_feature_bank_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        knn.FeatureBank("bfloat16")
    with pytest.raises(ValueError, match="chunk_rows"):
        knn.FeatureBank(chunk_rows=0)
    with pytest.raises(ValueError, match="existing folder"):
        knn.FeatureBank(directory=str(tmp_path / "missing"))
    with knn.FeatureBank() as bank:
        bank.append(np.ones((3, 4)), [0, 1, 2])
        with pytest.raises(ValueError, match="4 channels"):
            bank.append(np.ones((3, 5)), [0, 1, 2])
        with pytest.raises(ValueError, match="holds its labels"):
            knn.knn_predict(bank, [0, 1, 2], np.ones((1, 4)), 3)
        assert len(bank) == 3 and bank.nbytes == 3 * 4 * 2 and bank.dim == 4
    field = next(f for f in dataclasses.fields(config.KnnConfig) if f.name == "feature_dtype")
    assert field.metadata["choices"] == knn.FEATURE_DTYPES  # --feature_dtype


def _tiny_backbone():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(6, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )


@pytest.mark.multibackend
def test_extract_features_from_arrays_and_from_batches():
    backbone = _tiny_backbone()
    rng = np.random.default_rng(8)
    images = rng.normal(size=(10, 8, 8, 3)).astype(np.float32)
    labels = np.arange(10) % 3
    features, out_labels = knn.extract_features(backbone, (images, labels), batch_size=4)
    expected = keras.ops.convert_to_numpy(backbone(images, training=False))
    assert features.shape == (10, 6) and features.dtype == np.float32
    assert out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(features, _normalize(expected), rtol=1e-5, atol=1e-6)
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    features2, labels2 = knn.extract_features(backbone, batches)
    np.testing.assert_allclose(features2, features, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels2, labels)


def test_extract_features_from_tf_data():
    import tensorflow as tf

    backbone = _tiny_backbone()
    rng = np.random.default_rng(9)
    images = rng.normal(size=(10, 8, 8, 3)).astype(np.float32)
    labels = np.arange(10) % 3
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    features, out_labels = knn.extract_features(backbone, ds)
    reference, _ = knn.extract_features(backbone, (images, labels))
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)


def test_extract_features_rejects_unlabelled_batches():
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        knn.extract_features(_tiny_backbone(), [np.zeros((2, 8, 8, 3), np.float32)])


@pytest.mark.multibackend
def test_recalibrated_copy_averages_batch_statistics_and_leaves_the_original():
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 2.0, size=(4, 32, 2, 2, 3)).astype("float32")  # 4 batches of 32
    inputs = keras.Input((2, 2, 3))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    labels = np.zeros(32, "int64")
    copy = knn.recalibrated_copy(model, [(b, labels) for b in images], max_batches=3)
    bn, original = copy.layers[-1], model.layers[-1]
    # NumPy reference ("precise BN"): the plain average of the per-batch mean and biased variance.
    per_batch = images[:3].reshape(3, -1, 3)
    np.testing.assert_allclose(_np(bn.moving_mean), per_batch.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), per_batch.var(1).mean(0), rtol=1e-4)
    np.testing.assert_array_equal(_np(original.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(_np(original.moving_variance), np.ones(3))
    assert bn.momentum == original.momentum == 0.9


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_backbone_knn_accuracy_with_the_memory_on_disk(tmp_path):
    backbone = _tiny_backbone()
    rng = np.random.default_rng(12)
    train = (rng.normal(size=(40, 8, 8, 3)).astype(np.float32), np.arange(40) % 6)
    val = (rng.normal(size=(12, 8, 8, 3)).astype(np.float32), np.arange(12) % 6)
    features = [knn.extract_features(backbone, data) for data in (train, val)]
    expected = knn.knn_accuracy(*features[0], *features[1], k=10)
    result = knn.backbone_knn_accuracy(
        backbone,
        train,
        val,
        k=10,
        batch_size=16,
        feature_dtype="float32",
        memory_dir=str(tmp_path),
        chunk_rows=16,
    )
    assert result == pytest.approx(expected)
    assert os.listdir(tmp_path) == []
    broken = [(train[0][:8], train[1][:8]), (train[0][8:16],)]  # the second batch has no labels
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        knn.extract_bank(backbone, broken, directory=str(tmp_path), chunk_rows=4)
    assert os.listdir(tmp_path) == []  # removed on the error too


def check_mirrored_extraction(report):
    """The assertions on `mirrored_extraction`, which tests/distributed_run.py writes from the
    MirroredStrategy process of tests/test_distributed.py (2 logical CPU devices: a process of
    its own)."""
    assert report["replicas"] == 2
    # Batches of 4, 3 and 1 over 2 replicas: uneven splits and a replica without an image.
    for batch_size, (rows, error, labels_equal) in report["batches"].items():
        assert rows == 11 and labels_equal, batch_size
        assert error < 1e-5, batch_size


def mirrored_extraction(strategy):
    """Features of a backbone built under a 2-replica `strategy`, vs a plain call."""
    with strategy.scope():
        backbone = _tiny_backbone()
    rng = np.random.default_rng(13)
    images = rng.normal(size=(11, 8, 8, 3)).astype(np.float32)
    labels = np.arange(11) % 3
    expected = _normalize(_np(backbone(images, training=False)))
    batches = {}
    for batch_size in (4, 3, 1):
        features, out = knn.extract_features(backbone, (images, labels), batch_size=batch_size)
        error = float(np.abs(features - expected).max()) if features.shape == (11, 6) else 1.0
        batches[batch_size] = (len(features), error, bool(np.array_equal(out, labels)))
    return {"replicas": strategy.num_replicas_in_sync, "batches": batches}
