"""The view recipe after the crop as a Keras layer in `keras.ops`, for the accelerator.

`augment_on="device"` (`data.two_view_dataset`) leaves only decoding, RandomResizedCrop and the
resize to the host; `ViewAugment` then applies ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 (random
order per image), grayscale p=0.2, Gaussian blur sigma ~ U[0.1, 2] p=0.5, horizontal flip p=0.5
and the ImageNet normalisation to the whole batch inside the train step (`SimSiam(augment=...)`),
with every random draw per image. It is written in `keras.ops` and imports no TensorFlow, so it
runs under JAX and PyTorch on a GPU (the accelerator image has no TensorFlow). The crop stays on
the host: images of different sizes only become a batch once cropped and resized.

Same definitions as `augment.py` (torchvision's), batched: every colour op is computed for every
image and selected per image with `where`, the four jitter ops at each of the four positions of
the random order. The blur kernel has radius 6 (= ceil(3 x 2.0), the largest sigma's), the
same kernel as `augment.gaussian_blur`.

`augment.py` stays the host path: per-image TF ops in a tf.data map measured faster on CPU
than batched layers (module docstring there), and tf.data cannot run `keras.ops` of the JAX or
PyTorch backends.
"""

import keras
from keras import ops

from simsiam_keras import recipe

IMAGENET_MEAN = recipe.IMAGENET_MEAN
IMAGENET_STD = recipe.IMAGENET_STD
_GRAY_WEIGHTS = recipe.GRAY_WEIGHTS
BLUR_RADIUS = recipe.BLUR_RADIUS


def _per_image(x):
    return ops.reshape(x, (-1, 1, 1, 1))


def _blend(image, other, factor):
    factor = _per_image(factor)
    return ops.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def luma(images):
    """[N, H, W, 1] L = 0.299 R + 0.587 G + 0.114 B."""
    return ops.matmul(images, ops.convert_to_tensor(_GRAY_WEIGHTS, images.dtype)[:, None])


def grayscale(images):
    """L repeated on 3 channels (torchvision `Grayscale(3)`)."""
    return ops.repeat(luma(images), 3, axis=-1)


def adjust_brightness(images, factor):
    """Per image: image * factor, clipped."""
    return _blend(images, ops.zeros_like(images), factor)


def adjust_contrast(images, factor):
    """Per image: blend with the mean of its grayscale."""
    return _blend(images, ops.mean(luma(images), axis=(1, 2, 3), keepdims=True), factor)


def adjust_saturation(images, factor):
    """Per image: blend with its grayscale."""
    return _blend(images, luma(images), factor)


def rgb_to_hsv(images):
    """Torchvision's `_rgb2hsv`: hue, saturation, value in [0, 1], channels last."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    maxc = ops.max(images, axis=-1)
    minc = ops.min(images, axis=-1)
    equal = ops.equal(maxc, minc)
    chroma = maxc - minc
    ones = ops.ones_like(maxc)
    s = chroma / ops.where(equal, ones, maxc)
    divisor = ops.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    is_r = ops.equal(maxc, r)
    is_g = ops.logical_and(ops.equal(maxc, g), ops.logical_not(is_r))
    is_b = ops.logical_and(ops.logical_not(ops.equal(maxc, g)), ops.logical_not(is_r))
    h = (
        ops.where(is_r, bc - gc, 0.0)
        + ops.where(is_g, 2.0 + rc - bc, 0.0)
        + ops.where(is_b, 4.0 + gc - rc, 0.0)
    )
    h = ops.mod(h / 6.0 + 1.0, 1.0)
    return ops.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv):
    """Torchvision's `_hsv2rgb`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = ops.floor(h * 6.0)
    f = h * 6.0 - i
    i = ops.mod(i, 6.0)
    p = ops.clip(v * (1.0 - s), 0.0, 1.0)
    q = ops.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = ops.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    sector = ops.cast(ops.equal(i[..., None], ops.arange(6, dtype=h.dtype)), h.dtype)
    r = ops.stack([v, q, p, p, t, v], axis=-1)
    g = ops.stack([t, v, v, q, p, p], axis=-1)
    b = ops.stack([p, p, t, v, v, q], axis=-1)
    return ops.stack([ops.sum(sector * c, axis=-1) for c in (r, g, b)], axis=-1)


def adjust_hue(images, delta):
    """Per image: rotate the hue by `delta` of a full turn."""
    hsv = rgb_to_hsv(images)
    h = ops.mod(hsv[..., 0] + ops.reshape(delta, (-1, 1, 1)), 1.0)
    return ops.clip(hsv_to_rgb(ops.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)), 0.0, 1.0)


def color_jitter(images, factors, order):
    """ColorJitter with per-image factors `[N, 4]` (b, c, s, hue) and order `[N, 4]` (op ids)."""
    ops_ = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for position in range(4):
        out = images
        for op_id, op in enumerate(ops_):
            chosen = _per_image(ops.equal(order[:, position], op_id))
            out = ops.where(chosen, op(images, factors[:, op_id]), out)
        images = out
    return images


def gaussian_blur(images, sigma, radius=BLUR_RADIUS):
    """Separable Gaussian blur with a per-image std `sigma` [N], reflect padding.

    The batch is folded into channels so one depthwise convolution gives every image its own
    kernel.
    """
    _, h, w, c = ops.shape(images)  # h, w, c static; the batch may not be
    radius = min(radius, h - 1, w - 1)
    x = ops.arange(-radius, radius + 1, dtype="float32")
    kernel = ops.exp(-0.5 * ops.square(x[None, :] / ops.reshape(sigma, (-1, 1))))
    kernel = kernel / ops.sum(kernel, axis=1, keepdims=True)  # [N, K]
    kernel = ops.reshape(ops.repeat(kernel[:, None, :], c, axis=1), (-1, 2 * radius + 1))
    kernel = ops.cast(ops.transpose(kernel), images.dtype)  # [K, N*C]
    folded = ops.reshape(ops.transpose(images, (1, 2, 0, 3)), (1, h, w, -1))
    pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
    folded = ops.pad(folded, pad, mode="reflect")
    folded = ops.depthwise_conv(folded, kernel[:, None, :, None], padding="valid")
    folded = ops.depthwise_conv(folded, kernel[None, :, :, None], padding="valid")
    return ops.transpose(ops.reshape(folded, (h, w, -1, c)), (2, 0, 1, 3))


def normalize(images, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(image - mean) / std per channel."""
    images = ops.convert_to_tensor(images)
    mean = ops.convert_to_tensor(mean, images.dtype)
    return ops.divide(ops.subtract(images, mean), ops.convert_to_tensor(std, images.dtype))


def sample_params(batch_size, seed, blur=True, jitter=recipe.JITTER):
    """Per-image random parameters of one view (each a tensor with leading dim `batch_size`).

    Args:
        batch_size: number of images.
        seed: a `keras.random.SeedGenerator` or an int.
        blur: draw the blur step.
        jitter: ColorJitter strengths (brightness, contrast, saturation, hue).

    Returns:
        A dict: `jitter` [N] bool (p=0.8), `factors` [N, 4], `order` [N, 4], `gray` [N] bool
        (p=0.2), `blur` [N] bool (p=0.5, all False without blur), `sigma` [N] in [0.1, 2],
        `flip` [N] bool (p=0.5).
    """
    n = batch_size

    def uniform(shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, low, high, seed=seed)

    b, c, s, hue = jitter
    factors = ops.stack(
        [
            uniform((n,), 1 - b, 1 + b),
            uniform((n,), 1 - c, 1 + c),
            uniform((n,), 1 - s, 1 + s),
            uniform((n,), -hue, hue),
        ],
        axis=1,
    )
    return {
        "jitter": uniform((n,)) < recipe.P_JITTER,
        "factors": factors,
        "order": ops.argsort(uniform((n, 4)), axis=1),
        "gray": uniform((n,)) < recipe.P_GRAY,
        "blur": (uniform((n,)) < recipe.P_BLUR) if blur else ops.zeros((n,), "bool"),
        "sigma": uniform((n,), *recipe.BLUR_SIGMA),
        "flip": uniform((n,)) < recipe.P_FLIP,
    }


def apply_params(images, params, blur=True):
    """The view steps after the crop with the given per-image parameters, then normalisation."""
    images = ops.clip(images, 0.0, 1.0)
    jittered = color_jitter(images, params["factors"], params["order"])
    images = ops.where(_per_image(params["jitter"]), jittered, images)
    images = ops.where(_per_image(params["gray"]), grayscale(images), images)
    if blur:
        blurred = gaussian_blur(images, params["sigma"])
        images = ops.where(_per_image(params["blur"]), blurred, images)
    images = ops.where(_per_image(params["flip"]), ops.flip(images, axis=2), images)
    return normalize(images)


@keras.saving.register_keras_serializable(package="simsiam_keras")
class ViewAugment(keras.layers.Layer):
    """SimSiam's view augmentation after the crop, on a batch, on any backend and device.

    In training mode: jitter, grayscale, blur (if `blur`), flip with per-image randomness,
    then normalisation; in inference mode: normalisation only. Inputs are crops in [0, 1]
    (`data.two_view_dataset(..., augment_on="device")`).

    Args:
        blur: include the Gaussian blur (False for the CIFAR variant).
        seed: int seed of the layer's `SeedGenerator`.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, blur=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.blur = blur
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        images = ops.cast(images, self.compute_dtype)
        if not training:
            return normalize(ops.clip(images, 0.0, 1.0))
        params = sample_params(ops.shape(images)[0], self.seed_generator, self.blur)
        return apply_params(images, params, self.blur)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"blur": self.blur, "seed": self.seed})
        return config
