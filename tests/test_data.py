import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simsiam_keras import data


def test_embedded_digits_offline_two_views():
    source = data.embedded_digits("train", image_size=16)
    assert source.size == 1500 and source.labels.shape == (1500,)
    ds = data.two_view_dataset(
        source, batch_size=8, image_size=16, blur=False, seed=1, deterministic=True
    )
    ((x1, x2),) = next(iter(ds))
    assert x1.shape == (8, 16, 16, 3) and x1.dtype == tf.float32
    assert not np.allclose(x1.numpy(), x2.numpy())
    again = next(
        iter(
            data.two_view_dataset(
                source, batch_size=8, image_size=16, blur=False, seed=1, deterministic=True
            )
        )
    )
    np.testing.assert_array_equal(x1.numpy(), again[0][0].numpy())
    with pytest.raises(ValueError, match="split"):
        data.embedded_digits("validation")


def test_image_folder_listing_and_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        data.list_image_folder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="No images"):
        data.list_image_folder(str(tmp_path))
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((9, 7, 3), "uint8")).save(tmp_path / cls / "a.png")
    (tmp_path / "dog" / "fake.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    files, labels, classes, skipped = data.list_image_folder(str(tmp_path), labeled=True)
    assert classes == ["cat", "dog"] and list(labels) == [0, 1] and len(files) == 2
    assert [p.endswith("fake.jpg") for p in skipped] == [True]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((9, 7, 3), "uint8")).save(flat / "b.png")
    with pytest.raises(ValueError, match="class subfolders"):
        data.list_image_folder(str(flat), labeled=True)
    assert data.list_image_folder(str(flat))[1] is None


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        data.two_view_dataset(data.embedded_digits(), batch_size=0, image_size=16)
