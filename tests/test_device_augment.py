"""The on-device (keras.ops) view augmentation against NumPy references; runs on every backend."""

import colorsys

import keras
import numpy as np
import pytest
from keras import ops

import simsiam_keras as sk
from simsiam_keras import device_augment as da

# keras.ops on every backend: the numerics against NumPy, the randomness per image and call, and
# training with the whole recipe inside the step also run under JAX and PyTorch; the recipe's
# semantics (orders, rates, flags) are the same code and are checked on TensorFlow.
multibackend = pytest.mark.multibackend

GRAY = np.array([0.299, 0.587, 0.114], "float32")


def _images(n=3, h=6, w=5, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, h, w, 3)).astype("float32")


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _ref_brightness(x, f):
    return np.clip(x * f, 0, 1)


def _ref_contrast(x, f):
    return np.clip(f * x + (1 - f) * (x @ GRAY).mean(), 0, 1)


def _ref_saturation(x, f):
    return np.clip(f * x + (1 - f) * (x @ GRAY)[..., None], 0, 1)


def _ref_hue(x, d):
    out = [
        [
            colorsys.hsv_to_rgb((h + d) % 1.0, s, v)
            for h, s, v in map(lambda p: colorsys.rgb_to_hsv(*p), row)
        ]
        for row in x
    ]
    return np.clip(np.array(out, "float32"), 0, 1)


REFS = (_ref_brightness, _ref_contrast, _ref_saturation, _ref_hue)


@multibackend
def test_colour_ops_match_numpy_per_image():
    x = _images()
    factors = np.array([0.6, 1.0, 1.4], "float32")
    deltas = np.array([-0.1, 0.03, 0.1], "float32")
    ops_ = (da.adjust_brightness, da.adjust_contrast, da.adjust_saturation)
    for op, ref in zip(ops_, REFS[:3]):
        out = _np(op(x, factors))
        for i in range(3):
            np.testing.assert_allclose(
                out[i], ref(x[i], factors[i]), atol=1e-5, err_msg=op.__name__
            )
    out = _np(da.adjust_hue(x, deltas))
    for i in range(3):
        np.testing.assert_allclose(out[i], _ref_hue(x[i], deltas[i]), atol=1e-4)
    gray = _np(da.grayscale(x))
    np.testing.assert_allclose(gray, np.repeat((x @ GRAY)[..., None], 3, -1), atol=1e-6)


def test_jitter_applies_each_images_own_order():
    x = _images(2)
    factors = np.array([[0.7, 1.3, 0.5, 0.08], [1.2, 0.8, 1.5, -0.05]], "float32")
    order = np.array([[3, 0, 2, 1], [1, 2, 0, 3]], "int32")
    out = _np(da.color_jitter(x, factors, order))
    for i in range(2):
        ref = x[i]
        for op_id in order[i]:
            ref = REFS[op_id](ref, factors[i, op_id])
        np.testing.assert_allclose(out[i], ref, atol=1e-4)


def _ref_blur(img, sigma, r=da.BLUR_RADIUS):
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    h, w, _ = img.shape
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = np.stack([(p[i : i + 2 * r + 1] * k[:, None, None]).sum(0) for i in range(h)])
    return np.stack([(rows[:, j : j + 2 * r + 1] * k[None, :, None]).sum(1) for j in range(w)], 1)


def test_blur_uses_each_images_sigma():
    x = _images(3, 12, 10)
    sigma = np.array([0.1, 0.9, 2.0], "float32")
    out = _np(da.gaussian_blur(x, sigma))
    for i in range(3):
        np.testing.assert_allclose(out[i], _ref_blur(x[i], sigma[i]), atol=1e-5)
    np.testing.assert_allclose(out[0], x[0], atol=1e-6)  # sigma 0.1: next to no blur


def test_parameter_frequencies_and_ranges():
    params = da.sample_params(20_000, keras.random.SeedGenerator(0))
    p = {k: _np(v) for k, v in params.items()}
    for name, expected in [("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)]:
        assert abs(p[name].mean() - expected) < 0.015, name
    assert (np.sort(p["order"], 1) == np.arange(4)).all()  # a permutation per image
    assert len({tuple(o) for o in p["order"]}) == 24  # every order occurs
    for j, (low, high) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        f = p["factors"][:, j]
        assert f.min() >= low and f.max() <= high and abs(f.mean() - (low + high) / 2) < 0.01
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    no_blur = da.sample_params(100, keras.random.SeedGenerator(0), blur=False)
    assert not _np(no_blur["blur"]).any()


def test_apply_params_follows_each_flag():
    x = _images(4, 8, 8)
    n = 4
    params = {
        "jitter": np.array([False, True, False, False]),
        "factors": np.tile(np.array([[1.3, 0.7, 1.2, 0.05]], "float32"), (n, 1)),
        "order": np.tile(np.arange(4, dtype="int32"), (n, 1)),
        "gray": np.array([False, False, True, False]),
        "blur": np.array([False, False, False, True]),
        "sigma": np.full(n, 1.0, "float32"),
        "flip": np.array([False, False, False, True]),
    }
    out = _np(da.apply_params(x, params))
    norm = lambda v: (v - np.array(da.IMAGENET_MEAN)) / np.array(da.IMAGENET_STD)  # noqa: E731
    np.testing.assert_allclose(out[0], norm(x[0]), atol=1e-5)  # nothing applied
    jit = x[1]
    for op_id in range(4):
        jit = REFS[op_id](jit, params["factors"][1, op_id])
    np.testing.assert_allclose(out[1], norm(jit), atol=1e-4)
    np.testing.assert_allclose(out[2], norm(np.repeat((x[2] @ GRAY)[..., None], 3, -1)), atol=1e-5)
    np.testing.assert_allclose(out[3], norm(_ref_blur(x[3], 1.0)[:, ::-1]), atol=1e-5)


@multibackend
def test_layer_is_random_per_image_and_per_call_and_normalises_at_inference():
    layer = da.ViewAugment(blur=True, seed=3)
    x = np.repeat(_images(1, 8, 8), 6, axis=0)  # six copies of one image
    a, b = _np(layer(x, training=True)), _np(layer(x, training=True))
    assert not np.allclose(a, b)
    assert len({round(float(v.sum()), 4) for v in a}) > 1  # copies got different views
    plain = _np(layer(x, training=False))
    np.testing.assert_allclose(plain, da.normalize(x), atol=1e-6)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert again.blur and again.seed == 3


def test_simsiam_trains_with_the_device_augmentation():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))  # tiny: the JAX compile of a ResNet takes ~40 s here
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    backbone = keras.Model(inputs, features)
    model = sk.SimSiam(backbone, dim=32, pred_dim=8, projector_layers=2, augment=da.ViewAugment())
    model.compile(optimizer=sk.SGD(0.05, momentum=0.9))
    x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    state = _np(model.augment.seed_generator.state)
    history = model.fit((x, x), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Identical inputs, yet the loss is not the trivial -1: the views were augmented.
    assert history.history["loss"][0] > -0.999
    assert not np.array_equal(state, _np(model.augment.seed_generator.state))


def _ref_crop_and_resize(image, box, size):
    """NumPy: crop, then bilinear with half-pixel centres (PyTorch align_corners=False)."""
    top, left, h, w = box
    crop = image[top : top + h, left : left + w]

    def taps(extent):
        src = np.maximum((np.arange(size) + 0.5) * extent / size - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, extent - 1), (src - i0)[:, None]

    y0, y1, fy = taps(h)
    x0, x1, fx = taps(w)
    rows = crop[y0] * (1 - fy[..., None]) + crop[y1] * fy[..., None]
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


@multibackend
def test_crop_and_resize_matches_numpy_per_image():
    x = _images(4, 12, 10)
    boxes = np.array([[0, 0, 12, 10], [3, 2, 5, 7], [1, 4, 11, 6], [6, 5, 2, 3]], "int32")
    for size in (8, 16):  # downscale and upscale
        out = _np(da.crop_and_resize(x, boxes, size))
        assert out.shape == (4, size, size, 3)
        for i in range(4):
            ref = _ref_crop_and_resize(x[i], boxes[i], size)
            np.testing.assert_allclose(out[i], ref, atol=1e-5)


def _box_stats(boxes, h, w):
    """Quantiles (10/50/90 %) of area fraction and aspect, mean relative centre (y, x)."""
    top, left, ch, cw = boxes.T.astype("float64")
    qs = (0.1, 0.5, 0.9)
    centre = [((top + ch / 2) / h).mean(), ((left + cw / 2) / w).mean()]
    return np.concatenate([np.quantile(ch * cw / (h * w), qs), np.quantile(cw / ch, qs), centre])


def test_crop_boxes_follow_the_host_sampler():
    """Batched device boxes vs `augment.sample_crop` (torchvision's sampler) over 4000 draws.

    The host sampler is TensorFlow's: skipped in the JAX / PyTorch runs, which block it.
    """
    tf = pytest.importorskip("tensorflow")

    from simsiam_keras import augment

    for h, w in ((32, 32), (24, 40)):
        dev = _np(da.sample_crop_boxes(4000, h, w, keras.random.SeedGenerator(1)))
        seeds = tf.random.experimental.stateless_split([7, 1], 4000)

        def one(seed, h=h, w=w):
            return tf.cast(tf.stack(augment.sample_crop(h, w, seed)), tf.int32)

        host = tf.function(lambda s: tf.map_fn(one, s, fn_output_signature=tf.int32))(seeds)
        host = host.numpy()
        for boxes in (dev, host):
            top, left, ch, cw = boxes.T
            assert (ch > 0).all() and (cw > 0).all()
            assert (top >= 0).all() and (left >= 0).all()
            assert (top + ch <= h).all() and (left + cw <= w).all()

        d, t = _box_stats(dev, h, w), _box_stats(host, h, w)
        np.testing.assert_allclose(d, t, atol=0.04)


def test_layer_crops_uint8_images_and_resizes_at_inference():
    layer = da.ViewAugment(blur=False, seed=0, crop_size=8)
    x = (_images(5, 12, 12) * 255).astype("uint8")
    out = _np(layer(x, training=True))
    assert out.shape == (5, 8, 8, 3) and np.isfinite(out).all()
    plain = _np(layer(x, training=False))
    whole = np.stack([_ref_crop_and_resize(v / 255.0, (0, 0, 12, 12), 8) for v in x])
    np.testing.assert_allclose(plain, _np(da.normalize(whole.astype("float32"))), atol=1e-5)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert again.crop_size == 8 and again.crop_scale == (0.2, 1.0)
    with pytest.raises(ValueError, match="crop_size"):
        da.ViewAugment(crop_size=0)


@multibackend
def test_simsiam_trains_from_uint8_arrays_with_the_whole_recipe_on_device():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    backbone = keras.Model(inputs, features)
    augment = da.ViewAugment(blur=False, crop_size=16)
    model = sk.SimSiam(backbone, dim=32, pred_dim=8, projector_layers=2, augment=augment)
    model.compile(optimizer=sk.SGD(0.05, momentum=0.9))
    images = np.random.default_rng(0).integers(0, 256, (10, 20, 20, 3), dtype="uint8")
    feed = sk.ArrayViews(images, batch_size=4, seed=0)
    assert len(feed) == 2  # the incomplete batch is dropped
    first = feed[0][0][0].copy()
    history = model.fit(feed, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][0] > -0.999  # two different views of each image
    assert not np.array_equal(first, feed[0][0][0])  # a new order in the next epoch
    with pytest.raises(ValueError, match="batch_size"):
        sk.ArrayViews(images, batch_size=11)
