"""The view recipe against NumPy / PIL references of torchvision's definitions."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simsiam_keras import augment


def _seed(i):
    return tf.constant([7, i], tf.int64)


def _image(h=24, w=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype("float32")


def _torchvision_crop_params(height, width, rng, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """NumPy port of torchvision.transforms.RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height, width", [(375, 500), (40, 400)])
def test_crop_sampler_matches_torchvision_distribution(height, width):
    rng = np.random.default_rng(0)
    n = 1500
    ref = np.array([_torchvision_crop_params(height, width, rng) for _ in range(n)], "float64")
    sample = tf.function(lambda s: tf.stack(augment.sample_crop(height, width, s)))
    ours = np.array([sample(_seed(i)).numpy() for i in range(n)], "float64")
    for params in (ref, ours):
        top, left, h, w = params.T
        assert np.all(top >= 0) and np.all(left >= 0)
        assert np.all(top + h <= height) and np.all(left + w <= width)
    area = lambda p: p[:, 2] * p[:, 3] / (height * width)  # noqa: E731
    log_aspect = lambda p: np.log(p[:, 3] / p[:, 2])  # noqa: E731
    for stat in (area, log_aspect):
        q = [0.1, 0.25, 0.5, 0.75, 0.9]
        np.testing.assert_allclose(np.quantile(stat(ours), q), np.quantile(stat(ref), q), atol=0.04)
    # Corners spread over the valid range, as torch.randint does.
    slack = lambda p: p[:, 1] / np.maximum(width - p[:, 3], 1)  # noqa: E731
    np.testing.assert_allclose(slack(ours).mean(), slack(ref).mean(), atol=0.05)


def test_crop_falls_back_to_centre_crop_like_torchvision():
    # A 10x400 strip: no attempt can fit with aspect in [3/4, 4/3] and area >= 0.2.
    top, left, h, w = (int(v) for v in augment.sample_crop(10, 400, _seed(0)))
    assert (top, left, h, w) == _torchvision_crop_params(10, 400, np.random.default_rng(0))


def test_colour_ops_match_torchvision_formulas():
    img = _image()
    gray = img @ np.array([0.299, 0.587, 0.114], "float32")
    np.testing.assert_allclose(augment.grayscale(img)[..., 1], gray, atol=1e-6)
    np.testing.assert_allclose(
        augment.adjust_brightness(img, 1.3), np.clip(img * 1.3, 0, 1), atol=1e-6
    )
    np.testing.assert_allclose(
        augment.adjust_contrast(img, 0.7), np.clip(0.7 * img + 0.3 * gray.mean(), 0, 1), atol=1e-6
    )
    np.testing.assert_allclose(
        augment.adjust_saturation(img, 1.4),
        np.clip(1.4 * img - 0.4 * gray[..., None], 0, 1),
        atol=1e-6,
    )


def test_grayscale_matches_pil():
    img = (_image() * 255).round().astype("uint8")
    pil = np.asarray(Image.fromarray(img).convert("L"), "float32") / 255
    ours = augment.grayscale(img.astype("float32") / 255)[..., 0].numpy()
    np.testing.assert_allclose(ours, pil, atol=1.0 / 255 + 1e-6)


def test_hue_matches_hsv_rotation():
    import colorsys

    img = _image(6, 5)
    ours = augment.adjust_hue(img, 0.1).numpy()
    ref = np.array(
        [
            [
                colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v)
                for h, s, v in (colorsys.rgb_to_hsv(*px) for px in row)
            ]
            for row in img
        ]
    )
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_gaussian_blur_matches_numpy_reference():
    img = _image(20, 20)
    sigma = 1.3
    r = augment.BLUR_RADIUS
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = np.stack([(p[i : i + 2 * r + 1] * k[:, None, None]).sum(0) for i in range(20)])
    ref = np.stack([(rows[:, j : j + 2 * r + 1] * k[None, :, None]).sum(1) for j in range(20)], 1)
    np.testing.assert_allclose(augment.gaussian_blur(img, tf.constant(sigma)), ref, atol=1e-5)


def _views(seeds, image, size=16, **kwargs):
    fn = tf.function(lambda s: augment.simsiam_view(image, size, s, **kwargs))
    return np.stack([fn(_seed(i)).numpy() for i in seeds])


def test_view_shape_range_and_determinism():
    img = _image(40, 30)
    views = _views(range(4), img)
    assert views.shape == (4, 16, 16, 3) and views.dtype == np.float32
    lo = (0 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    hi = (1 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    assert np.all(views >= lo - 1e-5) and np.all(views <= hi + 1e-5)
    np.testing.assert_array_equal(views, _views(range(4), img))  # same seeds, same views
    assert not np.allclose(views[0], views[1])  # different seeds, different views


def test_flip_and_grayscale_frequencies():
    # Full-image crops of a square image, so only the colour steps and the flip act.
    img = np.zeros((16, 16, 3), "float32")
    img[:, :8] = [0.9, 0.2, 0.1]
    img[:, 8:] = [0.1, 0.3, 0.8]
    views = _views(range(600), img, scale=(1.0, 1.0), blur=False)
    views = views * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)
    flipped = views[:, :, :4].mean((1, 2, 3)) < views[:, :, -4:].mean((1, 2, 3))
    is_gray = np.abs(views[..., 0] - views[..., 2]).max((1, 2)) < 1e-4
    assert abs(flipped.mean() - 0.5) < 0.07
    assert abs(is_gray.mean() - 0.2) < 0.05


def test_same_view_eagerly_and_inside_tf_data():
    img = _image(30, 40)
    eager = augment.simsiam_view(tf.constant(img), 16, _seed(3)).numpy()
    ds = tf.data.Dataset.from_tensors(img).map(lambda x: augment.simsiam_view(x, 16, _seed(3)))
    np.testing.assert_allclose(eager, next(iter(ds)).numpy(), atol=1e-5)


def test_eval_view_resizes_short_side_and_centre_crops():
    img = _image(50, 100)
    out = augment.eval_view(img, 16).numpy()
    assert out.shape == (16, 16, 3)
    small = augment.eval_view(_image(5, 7), 16).numpy()  # smaller than the crop: upsampled
    assert small.shape == (16, 16, 3)
    # At CIFAR size (<= 32 px) a 32x32 image is used as it is (App. D), only normalised.
    cifar = _image(32, 32)
    expected = (cifar - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    np.testing.assert_allclose(augment.eval_view(cifar, 32).numpy(), expected, atol=1e-5)
    # Above 32 px: short side to size * 256/224 (a 64x128 image -> 73x146), centre crop 64.
    big = _image(64, 128)
    resized = tf.image.resize(big, (73, 146), antialias=True).numpy()[4:68, 41:105]
    expected = (np.clip(resized, 0, 1) - augment.IMAGENET_MEAN) / np.array(augment.IMAGENET_STD)
    np.testing.assert_allclose(augment.eval_view(big, 64).numpy(), expected, atol=1e-5)


def _params(n, blur=True):
    ds = tf.data.Dataset.range(n).map(lambda i: augment.view_params(tf.stack([9, i]), blur))
    return next(iter(ds.batch(n)))


def test_random_step_frequencies_and_ranges():
    p = {k: v.numpy() for k, v in _params(8000).items()}
    for name, expected in [("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)]:
        assert abs(p[name].mean() - expected) < 0.02, name
    assert (np.sort(p["order"], 1) == np.arange(4)).all()
    assert len({tuple(o) for o in p["order"]}) == 24
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert not _params(100, blur=False)["blur"].numpy().any()


def test_views_apply_jitter_and_blur_at_their_rates():
    # Output-based: a view differs from the same view with the step switched off exactly when
    # the step was drawn; a pipeline that skipped a step would fail this.
    img = tf.constant(_image(12, 12))
    changed = {"jitter": [], "blur": []}
    for i in range(300):
        seed = _seed(i)
        params = augment.view_params(seed)
        view = augment.augment_cropped(img, seed).numpy()
        for step in changed:
            off = augment.apply_view(img, {**params, step: tf.constant(False)}).numpy()
            changed[step].append(not np.allclose(view, off, atol=1e-6))
    assert abs(np.mean(changed["jitter"]) - 0.8) < 0.07
    assert abs(np.mean(changed["blur"]) - 0.5) < 0.08


def test_host_and_device_paths_agree_on_the_same_draws():
    from simsiam_keras import device_augment

    n = 16
    images = np.stack([_image(14, 14, seed=i) for i in range(n)])
    params = _params(n)
    host = np.stack(
        [augment.apply_view(images[i], {k: v[i] for k, v in params.items()}) for i in range(n)]
    )
    device = device_augment.apply_params(images, {k: v.numpy() for k, v in params.items()})
    np.testing.assert_allclose(host, np.asarray(device), atol=1e-4)


def test_compiled_view_equals_eager_view():
    # What the pipeline runs (`augment_cropped(compiled=True)`) against the same ops one by one,
    # with the parameters drawn the XLA way: XLA's stateless random numbers are not those of
    # TensorFlow's kernels for the same seed (docs/keras_notes.md, trap 22), so the compiled
    # path draws other (equally distributed) views than the uncompiled one.
    img = tf.constant(_image(16, 16))
    xla_params = tf.function(augment.view_params, jit_compile=True)
    for i in range(6):
        for blur in (True, False):
            params = xla_params(_seed(i), blur)
            np.testing.assert_allclose(
                augment.augment_cropped(img, _seed(i), blur, compiled=True),
                augment.apply_view(img, params),
                atol=1e-5,
            )
