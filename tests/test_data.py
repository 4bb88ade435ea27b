import os

import numpy as np
import pytest
import tensorflow as tf
from absl import logging
from PIL import Image

from simsiam_keras import augment, data, sources


def _take(ds):
    ((x1, x2),) = next(iter(ds))
    return x1.numpy(), x2.numpy()


def test_embedded_digits_offline_two_views():
    source = sources.embedded_digits("train", image_size=16)
    assert source.size == 1500 and source.num_classes == 10 and source.kind == "pixels"
    ds = data.two_view_dataset(
        source, batch_size=8, image_size=16, blur=False, seed=1, deterministic=True
    )
    x1, x2 = _take(ds)
    assert x1.shape == (8, 16, 16, 3) and x1.dtype == np.float32
    # Normalised [0, 1] images: within [-mean/std, (1-mean)/std].
    low = -np.array(augment.IMAGENET_MEAN) / augment.IMAGENET_STD
    high = (1 - np.array(augment.IMAGENET_MEAN)) / augment.IMAGENET_STD
    assert (x1 >= low - 1e-5).all() and (x1 <= high + 1e-5).all()
    assert not np.allclose(x1, x2)  # two views differ
    # Randomness per image: no two images of the batch share a crop (compare their views).
    assert len({round(float(np.abs(v).sum()), 3) for v in x1}) == 8
    again = _take(
        data.two_view_dataset(
            source, batch_size=8, image_size=16, blur=False, seed=1, deterministic=True
        )
    )
    np.testing.assert_array_equal(x1, again[0])  # same seed, same views
    other = _take(
        data.two_view_dataset(
            source, batch_size=8, image_size=16, blur=False, seed=2, deterministic=True
        )
    )
    assert not np.allclose(x1, other[0])
    with pytest.raises(ValueError, match="split"):
        sources.embedded_digits("unlabelled")


def test_labeled_eval_dataset_keeps_order_and_labels():
    source = sources.embedded_digits("test", image_size=16)
    images, labels = [], []
    for x, y in data.labeled_dataset(source, batch_size=100, image_size=16, deterministic=True):
        images.append(x.numpy())
        labels.append(y.numpy())
    labels = np.concatenate(labels)
    assert len(labels) == 297  # every image once, last partial batch kept
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(labels, load_digits().target[1500:])
    x, y = next(iter(data.labeled_dataset(source, batch_size=8, image_size=16, train=True)))
    assert x.shape == (8, 16, 16, 3) and y.dtype == tf.int64


def _save_corrupt_jpeg(path, reference):
    """Intact markers (start, end) but a corrupt frame header: passes the listing check."""
    raw = bytearray(open(reference, "rb").read())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = b"\x00\x00\x00\x00"  # height = width = 0
    open(path, "wb").write(bytes(raw))


@pytest.fixture
def bad_folder(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((40, 52, 3)) * 255).astype("uint8")
    good = {
        "rgb.jpg": Image.fromarray(rgb),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray.jpg": Image.fromarray(rgb).convert("L"),
        "gray.png": Image.fromarray(rgb).convert("L"),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "deep16.png": Image.fromarray((rng.random((30, 20)) * 65535).astype("uint16")),
        "tiny.png": Image.fromarray(rgb[:3, :2]),  # smaller than any crop
        "large.bmp": Image.fromarray(rgb),
        "anim.gif": Image.fromarray(rgb).convert("P"),
    }
    for name, image in good.items():
        image.save(tmp_path / name)
    jpeg = (tmp_path / "rgb.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "README.txt").write_text("ignored: not named or made like an image")
    _save_corrupt_jpeg(tmp_path / "corrupt.jpg", tmp_path / "rgb.jpg")
    return tmp_path, sorted(good)


def test_image_folder_with_every_bad_file(bad_folder, monkeypatch):
    path, good = bad_folder
    warnings = []
    monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
    source = sources.image_folder(str(path))
    # Listing catches non-images and truncated files; one warning with the count and names.
    assert len(warnings) == 1 and "Skipped 3" in warnings[0] and "truncated.jpg" in warnings[0]
    assert sorted(os.path.basename(p) for p in source.skipped) == [
        "empty.png",
        "text.jpg",
        "truncated.jpg",
    ]
    assert source.size == len(good) + 1  # + corrupt.jpg, whose markers look fine
    # The run never crashes: the corrupt JPEG is dropped at decode time, the rest is RGB.
    views = list(data.two_view_dataset(source, 1, 24, seed=0, deterministic=True))
    assert len(views) == len(good)
    for ((x1, _),) in views:
        assert x1.shape == (1, 24, 24, 3) and np.isfinite(x1.numpy()).all()
    images = list(data.labeled_dataset(source, 1, 24, deterministic=True, require_labels=False))
    assert len(images) == len(good)
    # `verify` decodes every file and also reports the corrupt one.
    warnings.clear()
    verified = sources.image_folder(str(path), verify=True)
    assert verified.size == len(good) and "Skipped 4" in warnings[0]
    assert "corrupt.jpg" in " ".join(verified.skipped)


def test_decoded_formats_become_rgb_in_unit_range(bad_folder):
    path, _ = bad_folder
    for name, mode in [("cmyk.jpg", "CMYK"), ("deep16.png", "I;16"), ("rgba.png", "RGBA")]:
        contents = tf.io.read_file(str(path / name))
        image = sources.decode_image(contents).numpy()
        expected = np.asarray(Image.open(path / name).convert("RGB"), "float32") / 255.0
        assert image.shape[-1] == 3 and 0.0 <= image.min() and image.max() <= 1.0, name
        if mode != "I;16":  # PIL clips 16-bit to 8-bit on convert; TF rescales: check range only
            np.testing.assert_allclose(image, expected, atol=2 / 255, err_msg=name)


def test_fused_jpeg_crop_equals_decode_then_crop(bad_folder):
    path, _ = bad_folder
    contents = tf.io.read_file(str(path / "rgb.jpg"))
    seeds = [tf.constant([3, 4], tf.int64), tf.constant([5, 6], tf.int64)]
    fused = augment.crops(contents, "encoded", seeds, 24, (0.2, 1.0), fused=True)
    plain = augment.crops(contents, "encoded", seeds, 24, (0.2, 1.0), fused=False)
    # Equal but at the crop's border, where libjpeg upsamples chroma without the neighbour
    # block the full decode has: a few border columns/rows differ a little.
    diff = np.abs(fused.numpy() - plain.numpy())
    assert (diff < 1e-5).mean() > 0.95 and diff.mean() < 2e-3


def test_image_folder_listing_and_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        sources.image_folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="No readable images"):
        sources.image_folder(str(tmp_path))
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((9, 7, 3), "uint8")).save(tmp_path / cls / "a.png")
    (tmp_path / "loose.png").write_bytes((tmp_path / "cat" / "a.png").read_bytes())
    source = sources.image_folder(str(tmp_path), labeled=True)
    assert source.class_names == ["cat", "dog"] and source.size == 2
    labels = [int(y) for _, y in source.dataset]
    assert labels == [0, 1]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((9, 7, 3), "uint8")).save(flat / "b.png")
    with pytest.raises(ValueError, match="class subfolders"):
        sources.image_folder(str(flat), labeled=True)
    unlabelled = sources.image_folder(str(flat))
    assert not unlabelled.labeled and [int(y) for _, y in unlabelled.dataset] == [-1]
    with pytest.raises(ValueError, match="no labels"):
        data.labeled_dataset(unlabelled, 1, 8)


def test_tfds_source_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data makes preparing a no-op; the check for the download host, which this machine
    # cannot reach, is skipped as it would pass on a machine with the network.
    monkeypatch.setattr(sources, "_unreachable", lambda url: None)
    with tfds.testing.mock_data(num_examples=12):
        source = sources.tfds_source("cifar10", "train")
        assert source.size == 12 and source.num_classes == 10 and source.kind == "encoded"
        x1, x2 = _take(data.two_view_dataset(source, 4, 32, blur=False, seed=0))
        assert x1.shape == (4, 32, 32, 3) and not np.allclose(x1, x2)
        val = sources.tfds_source("cifar10", "validation")
        assert val.name == "tfds:cifar10/test"  # cifar10 has no validation split
        x, y = next(iter(data.labeled_dataset(val, 5, 32)))
        assert x.shape == (5, 32, 32, 3) and y.shape == (5,)
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset'"):
        sources.tfds_source("no_such_dataset")


def test_sharding_gives_each_worker_its_own_images():
    source = sources.embedded_digits("test", image_size=8)
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        ds = data.labeled_dataset(source, 300, 8, input_context=context, deterministic=True)
        seen.append(next(iter(ds))[0].numpy())
    assert len(seen[0]) + len(seen[1]) == 297
    assert not np.isclose(seen[0][: len(seen[1])], seen[1]).all(axis=(1, 2, 3)).any()


def test_device_mode_yields_unaugmented_crops():
    source = sources.embedded_digits("train", image_size=16)
    x1, x2 = _take(data.two_view_dataset(source, 4, 16, augment_on="device", deterministic=True))
    assert x1.min() >= 0.0 and x1.max() <= 1.0 and not np.allclose(x1, x2)
    with pytest.raises(ValueError, match="augment_on"):
        data.two_view_dataset(source, 4, 16, augment_on="gpu")


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        data.two_view_dataset(sources.embedded_digits(), batch_size=0, image_size=16)


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory):
    """10 classes x 500 tiny PNGs, listed class by class (as ImageNet's folders are)."""
    root = tmp_path_factory.mktemp("sorted")
    pixels = np.zeros((4, 4, 3), np.uint8)
    for c in range(10):
        os.makedirs(root / f"class{c}")
        for i in range(500):
            Image.fromarray(pixels + c).save(root / f"class{c}" / f"{i:03d}.png")
    return str(root)


def _labels(ds, batches):
    return [y.numpy() for _, y in ds.take(batches)]


def test_every_epoch_is_a_full_random_permutation(sorted_folder, monkeypatch):
    from scipy import stats

    # A buffer of 10% of the data, as 10,000 is of a 100,000-image folder: the old buffer
    # shuffle gave batches of 1-2 neighbouring classes here.
    monkeypatch.setattr(data, "STREAM_SHUFFLE_BUFFER", 500)
    source = sources.image_folder(sorted_folder, labeled=True)
    assert source.size == 5000 and source.items is not None

    def stream(start_batch=0):
        return data.labeled_dataset(
            source,
            100,
            4,
            train=True,
            seed=3,
            repeat=True,
            deterministic=True,
            start_batch=start_batch,
        )

    batches = _labels(stream(), 100)  # two epochs of 50 batches
    assert len(set(batches[0])) >= 9  # the first batch already mixes (nearly) all classes
    epochs = [np.concatenate(batches[:50]), np.concatenate(batches[50:])]
    for epoch in epochs:  # every image once per epoch
        np.testing.assert_array_equal(np.bincount(epoch, minlength=10), [500] * 10)
    assert (epochs[0] != epochs[1]).mean() > 0.5  # a new order every epoch
    # Per-batch class counts against uniform sampling: chi-square over 50 batches x 10 classes.
    counts = np.stack([np.bincount(b, minlength=10) for b in batches[:50]])
    chi2 = ((counts - 10.0) ** 2 / 10.0).sum()
    p_value = stats.chi2.sf(chi2, df=49 * 9)
    print(f"chi2 {chi2:.1f} on {49 * 9} dof, p {p_value:.3f}")
    assert p_value > 1e-3
    # Resuming at batch 73 (mid second epoch) gives exactly the uninterrupted stream.
    resumed = _labels(stream(start_batch=73), 27)
    np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(batches[73:]))
    # Two workers: disjoint halves of the same permutation, together the whole folder.
    halves = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        ds = data._prepare(source, 3, True, context, repeat=False)
        halves.append([p.numpy().decode() for _, (p, _) in ds])
    assert len(halves[0]) == len(halves[1]) == 2500
    assert sorted(halves[0] + halves[1]) == sorted(source.items.tolist())


def test_unrepeated_dataset_reshuffles_every_iteration():
    source = sources.embedded_digits("test", image_size=8)
    ds = data.labeled_dataset(source, 297, 8, train=True, drop_remainder=False)
    first, second = (next(iter(ds))[1].numpy() for _ in range(2))
    assert sorted(first) == sorted(second) and (first != second).mean() > 0.5


def _class_sorted_builder():
    """A tiny TFDS builder whose generator yields 10 classes x 60 images, class by class."""
    import tensorflow_datasets as tfds

    class SimsiamSortedDigits(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(8, 8, 3)),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for c in range(10):
                for i in range(60):
                    image = np.full((8, 8, 3), 20 * c + i % 20, np.uint8)
                    yield f"{c}-{i}", {"image": image, "label": c}

    return SimsiamSortedDigits


def test_tfds_prepare_for_real_then_train_batches_mix_classes(tmp_path):
    # A real download_and_prepare (no network: the generator is local), then the pipeline.
    _class_sorted_builder()  # registers "simsiam_sorted_digits"
    source = sources.tfds_source("simsiam_sorted_digits", "train", data_dir=str(tmp_path))
    assert source.size == 600 and source.num_classes == 10 and source.items is None
    # TFDS wrote the class-sorted examples in a hash-shuffled order: even without any
    # shuffling in the pipeline a batch mixes classes.
    unshuffled = data.labeled_dataset(source, 100, 8, train=True, shuffle=False)
    assert len(set(next(iter(unshuffled))[1].numpy())) >= 9
    x1, x2 = _take(data.two_view_dataset(source, 8, 8, blur=False, seed=0))
    assert x1.shape == (8, 8, 8, 3) and not np.allclose(x1, x2)


_PACKAGED_BUILDER = """
import numpy as np
import tensorflow_datasets as tfds


class SimsiamPackagedDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(16, 16, 3)),
                 "label": tfds.features.ClassLabel(num_classes=4)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0), "test": self._generate_examples(1)}

    def _generate_examples(self, offset):
        rng = np.random.default_rng(offset)
        for i in range(64):
            image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            yield str(i), {"image": image, "label": i % 4}
"""


def test_tfds_builder_in_a_package_prepares_and_trains_a_step(tmp_path, monkeypatch):
    # A builder that lives in a package, as every TFDS catalogue dataset does: preparing it
    # resolves its code path, which needs importlib_resources (missing from TFDS 4.9.10's
    # dependencies on Python >= 3.9; the cause of "No module named 'importlib_resources'").
    import importlib

    import keras

    from simsiam_keras import backbones
    from simsiam_keras.model import SimSiam

    package = tmp_path / "simsiam_tfds_fixture"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "packaged_digits.py").write_text(_PACKAGED_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("simsiam_tfds_fixture.packaged_digits")
    source = sources.load_source("simsiam_packaged_digits", "train", str(tmp_path / "tfds"))
    assert source.size == 64 and source.num_classes == 4
    assert sources.load_source("simsiam_packaged_digits", "validation", str(tmp_path / "tfds")).size
    model = SimSiam(backbones.build_resnet("resnet18_cifar", 0.125, 16), 32, 8, 2)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    ds = data.two_view_dataset(source, 16, 16, blur=False, seed=0, repeat=True)
    logs = model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])


def test_tfds_manual_download_says_where_the_files_go(tmp_path):
    with pytest.raises(ValueError) as error:
        sources.load_source("imagenet2012", "train", str(tmp_path))
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert f"put its files in {manual}" in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert not os.path.exists(manual) or not os.listdir(manual)


def test_tfds_without_network_says_so_at_once(tmp_path, monkeypatch):
    # cifar10 is downloadable; the proxy on a closed local port stands for "no network" (even
    # on a machine that has one), and the check fails before TFDS's minutes of retries.
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ValueError, match=r"Cannot download TFDS dataset 'cifar10': no network"):
        sources.load_source("cifar10", "train", str(tmp_path))
