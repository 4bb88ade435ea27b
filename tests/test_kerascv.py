"""The keras-cv views (`augment_impl="kerascv"`): frequencies, shapes, a pretraining run."""

import numpy as np
import pytest

from simsiam_keras import config, recipe
from tests.helpers import SMALL_PRETRAIN, last_json, run_command, run_script

N = 400  # images per frequency: a binomial standard deviation of at most 0.025


def _recipe(size=32, blur=True, seed=3):
    import tensorflow as tf

    from simsiam_keras.kerascv_views import KerasCVRecipe

    tf.random.set_seed(seed)
    return KerasCVRecipe(size, blur, seed)


def _images(size=32):
    """N copies of a colourful image whose left and right halves differ."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (size, size, 3)).astype("float32")
    image[:, : size // 2, 0] = 0.9  # a red left half: a flip moves it
    return np.repeat(image[None], N, axis=0), image


def _fraction(changed):
    return float(np.mean(changed))


def test_each_step_is_applied_with_the_recipes_probability():
    views = _recipe()
    batch, image = _images()
    jittered = np.asarray(views.jitter(batch))
    changed = np.abs(jittered - image).reshape(N, -1).max(axis=1) > 1e-4
    assert abs(_fraction(changed) - recipe.P_JITTER) < 0.08
    gray = np.asarray(views.grayscale(batch))
    equal_channels = np.ptp(gray, axis=-1).reshape(N, -1).max(axis=1) < 1e-6
    assert abs(_fraction(equal_channels) - recipe.P_GRAY) < 0.08
    blurred = np.asarray(views.blur(batch))
    changed = np.abs(blurred - image).reshape(N, -1).max(axis=1) > 1e-4
    assert abs(_fraction(changed) - recipe.P_BLUR) < 0.08
    flipped = np.asarray(views.flip(batch))
    moved = np.all(np.abs(flipped[:, :, -1, 0] - 0.9) < 1e-6, axis=1)  # red on the right
    assert abs(_fraction(moved) - recipe.P_FLIP) < 0.08
    assert _recipe(blur=False).blur is None  # the CIFAR variant


def test_the_keras_cv_arguments_mean_the_papers_values():
    from simsiam_keras import kerascv_views

    low, high = kerascv_views.SATURATION_FACTOR  # keras-cv scales saturation by f / (1 - f)
    assert low / (1 - low) == pytest.approx(0.6) and high / (1 - high) == pytest.approx(1.4)
    assert kerascv_views.blur_kernel_size(224) == 23 and kerascv_views.blur_kernel_size(32) % 2
    views = _recipe()
    jitter = views.jitter._layer  # keras-cv keeps the wrapped layer there
    assert jitter.hue_factor == 0.2  # keras-cv shifts by half its factor: U(-0.1, 0.1)
    assert (jitter.brightness_factor, jitter.contrast_factor) == (0.4, 0.4)


def test_pipeline_views_shapes_and_range():
    from simsiam_keras import data, sources

    src = sources.embedded_digits("train", 16)
    ds = data.two_view_dataset(src, 32, 16, blur=True, augment_impl="kerascv", seed=1)
    ((x1, x2),) = next(iter(ds))
    x1, x2 = np.asarray(x1), np.asarray(x2)
    assert x1.shape == x2.shape == (32, 16, 16, 3) and x1.dtype == np.float32
    mean, std = np.array(recipe.IMAGENET_MEAN), np.array(recipe.IMAGENET_STD)
    for x in (x1, x2):
        pixels = x * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert np.abs(x1 - x2).mean() > 0.1  # two different views
    with pytest.raises(ValueError, match="augment_impl"):
        data.two_view_dataset(src, 32, 16, augment_impl="albumentations")
    with pytest.raises(ValueError, match="runs on the host"):
        data.two_view_dataset(src, 32, 16, augment_impl="kerascv", augment_on="device")


def test_the_setting_lists_the_implementations():
    from simsiam_keras import data

    assert config.AUGMENT_IMPLS == data.AUGMENT_IMPLS


def test_pretraining_with_kerascv_views_trains_and_resumes(tmp_path):
    work = tmp_path / "run"
    args = [
        *SMALL_PRETRAIN,
        "--augment_impl=kerascv",
        f"--workdir={work}",
        "--export=false",
        "--steps_per_epoch=2",
    ]
    first = last_json(run_command("pretrain", *args, "--epochs=1"))
    assert first["steps"] == 2
    # Resumed in a process of its own: TensorFlow's C++ warnings would go to its stderr.
    more = run_script("pretrain", *args, "--epochs=2")
    assert "(step 2 of 4)" in more.stdout and last_json(more)["steps"] == 4
    assert "while_loop" not in more.stderr, more.stderr[-2000:]
