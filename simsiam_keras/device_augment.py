"""The view recipe after the crop as a Keras layer in `keras.ops`, for the accelerator.

`augment_on="device"` (`data.two_view_dataset`) leaves only decoding, RandomResizedCrop and the
resize to the host; `ViewAugment` then applies ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 (random
order per image), grayscale p=0.2, Gaussian blur sigma ~ U[0.1, 2] p=0.5, horizontal flip p=0.5
and the ImageNet normalisation to the whole batch inside the train step (`SimSiam(augment=...)`),
with every random draw per image. It is written in `keras.ops` and imports no TensorFlow, so it
runs under JAX and PyTorch on a GPU (the accelerator image has no TensorFlow). The crop stays on
the host for image folders and TFDS (images of different sizes only become a batch once cropped
and resized); for a decoded array of images of one size (`arrays.ArrayViews`, e.g. CIFAR as
uint8) `ViewAugment(crop_size=...)` also draws each image's RandomResizedCrop box here
(`sample_crop_boxes`, torchvision's sampler, batched) and resamples it (`crop_and_resize`,
bilinear with half-pixel centres), so the whole recipe runs on the accelerator. Unlike the host
path that resample has no antialiasing: an upscaled crop (every CIFAR crop) is identical, a
downscaled one is sharper than PIL's.

Same definitions as `augment.py` (torchvision's), batched: every colour op is computed for every
image and selected per image with `where`, the four jitter ops at each of the four positions of
the random order. The blur kernel has radius 6 (= ceil(3 x 2.0), the largest sigma's), the
same kernel as `augment.gaussian_blur`.

`augment.py` stays the host path: per-image TF ops in a tf.data map measured faster on CPU
than batched layers (module docstring there), and tf.data cannot run `keras.ops` of the JAX or
PyTorch backends.
"""

import math

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


def sample_crop_boxes(
    batch_size, height, width, seed, scale=recipe.CROP_SCALE, ratio=recipe.CROP_RATIO
):
    """Torchvision's `RandomResizedCrop.get_params` for a batch: `[N, 4]` (top, left, h, w).

    The same sampler as `augment.sample_crop` (the host's), batched: each image gets
    `recipe.CROP_ATTEMPTS` candidate boxes (area ~ U(scale) x image area, log-aspect ~
    U(log ratio), w = round(sqrt(area x aspect)), h = round(sqrt(area / aspect))), takes the first
    that fits with a uniform top-left corner, else a centre crop with the aspect clamped to
    `ratio`.

    Args:
        batch_size: number of images N.
        height: image height (a Python int: every image of the batch has it).
        width: image width.
        seed: a `keras.random.SeedGenerator` or an int.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the aspect ratio w / h.

    Returns:
        int32 tensor `[N, 4]`.
    """
    tries = (batch_size, recipe.CROP_ATTEMPTS)
    target = height * width * keras.random.uniform(tries, scale[0], scale[1], seed=seed)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = ops.exp(keras.random.uniform(tries, *log_ratio, seed=seed))
    ws = ops.cast(ops.round(ops.sqrt(target * aspect)), "int32")
    hs = ops.cast(ops.round(ops.sqrt(target / aspect)), "int32")
    fits = (ws > 0) & (hs > 0) & (ws <= width) & (hs <= height)
    first = ops.expand_dims(ops.argmax(ops.cast(fits, "int32"), axis=1), 1)
    ok = ops.any(fits, axis=1)
    # Fallback (torchvision): the whole image cropped to the nearest allowed aspect ratio.
    in_ratio = width / height
    fb_w = round(height * ratio[1]) if in_ratio > ratio[1] else width
    fb_h = round(width / ratio[0]) if in_ratio < ratio[0] else height
    crop_h = ops.where(ok, ops.take_along_axis(hs, first, axis=1)[:, 0], fb_h)
    crop_w = ops.where(ok, ops.take_along_axis(ws, first, axis=1)[:, 0], fb_w)

    def corner(extent, crop):  # torch.randint(0, extent - crop + 1), or centred
        u = keras.random.uniform((batch_size,), seed=seed)
        drawn = ops.cast(ops.floor(u * ops.cast(extent - crop + 1, "float32")), "int32")
        return ops.where(ok, drawn, (extent - crop) // 2)

    return ops.stack([corner(height, crop_h), corner(width, crop_w), crop_h, crop_w], axis=1)


def _source_coords(start, extent, size):
    """Bilinear taps along one axis: `(i0, i1, frac)`, each `[N, size]` (half-pixel centres)."""
    extent_f = ops.cast(extent, "float32")[:, None]
    out = (ops.arange(size, dtype="float32")[None, :] + 0.5) * extent_f / size - 0.5
    out = ops.maximum(out, 0.0)
    i0 = ops.floor(out)
    frac = out - i0
    i0 = ops.cast(i0, "int32")
    i1 = ops.minimum(i0 + 1, ops.cast(extent, "int32")[:, None] - 1)
    return i0 + start[:, None], i1 + start[:, None], frac


def crop_and_resize(images, boxes, size):
    """Each image's box resampled to `size` x `size`, bilinear with half-pixel centres.

    The kernel of `tf.image.resize(method="bilinear")` and of PyTorch's `interpolate(...,
    align_corners=False)` applied to the cropped image, without antialiasing.

    Args:
        images: `[N, H, W, C]` float.
        boxes: `[N, 4]` int (top, left, height, width), as `sample_crop_boxes`.
        size: output height and width.

    Returns:
        `[N, size, size, C]`, the dtype of `images`.
    """
    n, _, w, c = ops.shape(images)
    boxes = ops.cast(boxes, "int32")
    y0, y1, fy = _source_coords(boxes[:, 0], boxes[:, 2], size)
    x0, x1, fx = _source_coords(boxes[:, 1], boxes[:, 3], size)

    def rows(index):
        index = ops.broadcast_to(index[:, :, None, None], (n, size, w, c))
        return ops.take_along_axis(images, index, axis=1)

    def cols(image_rows, index):
        index = ops.broadcast_to(index[:, None, :, None], (n, size, size, c))
        return ops.take_along_axis(image_rows, index, axis=2)

    fy = ops.cast(fy, images.dtype)[:, :, None, None]
    fx = ops.cast(fx, images.dtype)[:, None, :, None]
    picked = rows(y0) * (1 - fy) + rows(y1) * fy
    return cols(picked, x0) * (1 - fx) + cols(picked, x1) * fx


@keras.saving.register_keras_serializable(package="simsiam_keras")
class ViewAugment(keras.layers.Layer):
    """SimSiam's view augmentation after the crop, on a batch, on any backend and device.

    In training mode: jitter, grayscale, blur (if `blur`), flip with per-image randomness,
    then normalisation; in inference mode: normalisation only. Inputs are crops in [0, 1]
    (`data.two_view_dataset(..., augment_on="device")`), or, with `crop_size`, whole images of
    one size (float in [0, 1], or integers in [0, 255] such as `arrays.ArrayViews`' uint8): each
    first gets its own RandomResizedCrop (scale `crop_scale`) resampled to `crop_size`, and in
    inference mode the whole image resized to `crop_size`.

    Args:
        blur: include the Gaussian blur (False for the CIFAR variant).
        seed: int seed of the layer's `SeedGenerator`.
        crop_size: crop the views here too, to this size (None: inputs are already crops).
        crop_scale: area range of the crop (`recipe.CROP_SCALE`, the paper's).
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(
        self, blur=True, seed=None, crop_size=None, crop_scale=recipe.CROP_SCALE, **kwargs
    ):
        super().__init__(**kwargs)
        if crop_size is not None and (not isinstance(crop_size, int) or crop_size <= 0):
            raise ValueError(f"`crop_size` must be a positive int or None. Received: {crop_size!r}")
        self.blur = blur
        self.seed = seed
        self.crop_size = crop_size
        self.crop_scale = tuple(crop_scale)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _crop(self, images, training):
        if "int" in keras.backend.standardize_dtype(images.dtype):
            images = ops.cast(images, "float32") / 255.0
        images = ops.cast(images, "float32")
        n, h, w, _ = ops.shape(images)
        if training:
            boxes = sample_crop_boxes(n, h, w, self.seed_generator, self.crop_scale)
        else:
            boxes = ops.broadcast_to(ops.convert_to_tensor([[0, 0, h, w]], "int32"), (n, 4))
        return crop_and_resize(images, boxes, self.crop_size)

    def call(self, images, training=False):
        if self.crop_size is not None:
            images = self._crop(images, training)
        images = ops.cast(images, self.compute_dtype)
        if not training:
            return normalize(ops.clip(images, 0.0, 1.0))
        params = sample_params(ops.shape(images)[0], self.seed_generator, self.blur)
        return apply_params(images, params, self.blur)

    def compute_output_shape(self, input_shape):
        if self.crop_size is None:
            return input_shape
        return (input_shape[0], self.crop_size, self.crop_size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "blur": self.blur,
                "seed": self.seed,
                "crop_size": self.crop_size,
                "crop_scale": self.crop_scale,
            }
        )
        return config
