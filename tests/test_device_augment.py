"""The on-device (keras.ops) view augmentation against NumPy references; runs on every backend."""

import colorsys

import keras
import numpy as np
import pytest
from keras import ops

import simsiam_keras as sk
from simsiam_keras import device_augment as da

pytestmark = pytest.mark.multibackend

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
