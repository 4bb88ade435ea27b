"""The paper's view recipe (Sec. 4, App. A; docs/recipe.md) with torchvision's semantics.

One image at a time, for `tf.data.Dataset.map`. Each op is written from torchvision's
definition, and randomness is drawn per image from a stateless seed (the same seed gives the same
views whatever the parallelism). Not Keras's or KerasCV's layers (docs/keras_notes.md, traps
4-5): their crop samples the aspect ratio uniformly and clips, their brightness is additive, the
jitter's order is fixed, Keras core's blur draws one sigma per batch. KerasCV's layers with the
paper's parameters are the other implementation, `kerascv_views.py` (`augment_impl="kerascv"`;
docs/pipeline.md, "KerasCV views", measures both). The steps after the crop run XLA-compiled in the
pipeline (`augment_cropped(..., compiled=True)`); `device_augment.py` has the same steps in
`keras.ops` for the accelerator.

Every image is float32 RGB in [0, 1] until `normalize`.
"""

import math

import tensorflow as tf

from simsiam_keras import recipe
from simsiam_keras.sources import decode_image

# The recipe's numbers live in `recipe.py`; these names stay for the callers that use them.
IMAGENET_MEAN = recipe.IMAGENET_MEAN
IMAGENET_STD = recipe.IMAGENET_STD
_GRAY_WEIGHTS = recipe.GRAY_WEIGHTS


def split_seed(seed, n):
    """N independent stateless seeds ([n, 2] int32-compatible) from one seed of shape [2]."""
    return tf.random.experimental.stateless_split(seed, n)


def _uniform(seed, minval=0.0, maxval=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval, maxval)


def sample_crop(height, width, seed, scale=recipe.CROP_SCALE, ratio=recipe.CROP_RATIO):
    """Torchvision's `RandomResizedCrop.get_params`: (top, left, crop_h, crop_w).

    Up to 10 attempts: area ~ U(scale) x image area, log-aspect ~ U(log ratio),
    w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)); the first that fits is taken
    with a uniform top-left corner; otherwise a centre crop with the aspect clamped to `ratio`.

    Args:
        height: image height (int32 scalar tensor).
        width: image width.
        seed: stateless seed, shape [2].
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the aspect ratio w / h.

    Returns:
        int32 scalars (top, left, crop_height, crop_width).
    """
    s_area, s_ratio, s_top, s_left = tf.unstack(split_seed(seed, 4))
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f
    tries = (recipe.CROP_ATTEMPTS,)
    target = area * _uniform(s_area, scale[0], scale[1], tries)
    aspect = tf.exp(_uniform(s_ratio, math.log(ratio[0]), math.log(ratio[1]), tries))
    ws = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (ws > 0) & (hs > 0) & (ws <= width) & (hs <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))
    # Fallback (torchvision): whole image cropped to the nearest allowed aspect ratio.
    in_ratio = w_f / h_f
    fb_w = tf.where(
        in_ratio < ratio[0],
        width,
        tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width),
    )
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
    ok = tf.reduce_any(fits)
    crop_h = tf.where(ok, hs[first], fb_h)
    crop_w = tf.where(ok, ws[first], fb_w)
    # torch.randint(0, n + 1): uniform over the valid corners.
    top_r = _uniform(s_top)
    left_r = _uniform(s_left)
    top = tf.where(
        ok,
        tf.cast(tf.floor(top_r * tf.cast(height - crop_h + 1, tf.float32)), tf.int32),
        (height - crop_h) // 2,
    )
    left = tf.where(
        ok,
        tf.cast(tf.floor(left_r * tf.cast(width - crop_w + 1, tf.float32)), tf.int32),
        (width - crop_w) // 2,
    )
    return top, left, crop_h, crop_w


def resize(image, size):
    """Bilinear resize to `size` x `size` with antialiasing (as PIL's, used by torchvision).

    Antialiasing only changes a downscale; an upscale on both axes takes the plain bilinear
    kernel, which gives the same values (to 2e-7) faster (docs/pipeline.md).
    """
    shape = tf.shape(image)

    def antialiased():
        return tf.image.resize(image, (size, size), method="bilinear", antialias=True)

    def plain():
        return tf.image.resize(image, (size, size), method="bilinear")

    return tf.cond((shape[0] <= size) & (shape[1] <= size), plain, antialiased)


def _luma(image):
    """[H, W, 1] L = 0.299 R + 0.587 G + 0.114 B (a matmul: faster than a channel reduce)."""
    return tf.tensordot(image, tf.constant(_GRAY_WEIGHTS, image.dtype)[:, None], 1)


def grayscale(image):
    """L = 0.299 R + 0.587 G + 0.114 B, repeated on 3 channels (torchvision `Grayscale(3)`)."""
    return tf.tile(_luma(image), [1, 1, 3])


def _blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
    """torchvision: image * factor, clipped to [0, 1]."""
    return _blend(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
    """torchvision: blend with the mean of the grayscale image."""
    # mean(L) = L(channel means): L is linear, and this reads the image once.
    mean = tf.tensordot(tf.reduce_mean(image, [0, 1]), tf.constant(_GRAY_WEIGHTS, image.dtype), 1)
    return _blend(image, mean, factor)


def adjust_saturation(image, factor):
    """torchvision: blend with the grayscale image."""
    return _blend(image, _luma(image), factor)


def adjust_hue(image, delta):
    """torchvision: rotate the hue by `delta` of a full turn (delta in [-0.5, 0.5])."""
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def jitter_params(
    seed,
    brightness=recipe.JITTER[0],
    contrast=recipe.JITTER[1],
    saturation=recipe.JITTER[2],
    hue=recipe.JITTER[3],
):
    """ColorJitter's random draws: factors [4] and the order [4] of the four ops.

    Brightness, contrast and saturation factors ~ U[1 - x, 1 + x], the hue shift ~ U[-h, h];
    the order is a random permutation of the op ids 0-3.
    """
    s_order, s_b, s_c, s_s, s_h = tf.unstack(split_seed(seed, 5))
    factors = tf.stack(
        [
            _uniform(s_b, 1 - brightness, 1 + brightness),
            _uniform(s_c, 1 - contrast, 1 + contrast),
            _uniform(s_s, 1 - saturation, 1 + saturation),
            _uniform(s_h, -hue, hue),
        ]
    )
    return factors, tf.argsort(_uniform(s_order, shape=(4,)))


def apply_jitter(image, factors, order):
    """Brightness, contrast, saturation and hue with `factors`, in `order` (op ids 0-3)."""
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for position in range(4):
        branches = [(lambda op=op, j=j, x=image: op(x, factors[j])) for j, op in enumerate(ops)]
        image = tf.switch_case(order[position], branches)
        image.set_shape([None, None, 3])
    return image


BLUR_RADIUS = recipe.BLUR_RADIUS


def gaussian_blur(image, sigma, radius=BLUR_RADIUS):
    """Separable Gaussian blur with std `sigma` px, reflect padding, kernel radius 6 px.

    The official code uses PIL's `GaussianBlur(radius=sigma)` (box blurs approximating a
    Gaussian); this is the Gaussian it approximates, truncated at 6 px = 3 x the largest sigma
    (so at >= 3 sigma for every sigma in [0.1, 2]), the same kernel as `device_augment`'s.
    Written as shifted sums: XLA fuses them (`augment_cropped(compiled=True)`), where a depthwise
    convolution under XLA was measured much slower (docs/pipeline.md).
    """
    image = tf.convert_to_tensor(image, tf.float32)
    h, w = image.shape[0], image.shape[1]
    if h is not None and w is not None:
        radius = max(1, min(radius, h - 1, w - 1))
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(image, [[radius, radius], [0, 0], [0, 0]], mode="REFLECT")
    image = tf.add_n([kernel[i] * padded[i : i + h] for i in range(2 * radius + 1)])
    padded = tf.pad(image, [[0, 0], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.add_n([kernel[i] * padded[:, i : i + w] for i in range(2 * radius + 1)])


def hflip(image):
    """Horizontal flip (`tf.reverse`, faster than a ::-1 slice)."""
    return tf.reverse(image, [1])


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(image - mean) / std per channel (as one multiply-add)."""
    inv_std = 1.0 / tf.constant(std, image.dtype)
    return image * inv_std - tf.constant(mean, image.dtype) * inv_std


def _maybe(apply, fn, image):
    return tf.cond(apply, lambda: fn(image), lambda: image)


def simsiam_view(image, size, seed, blur=True, scale=recipe.CROP_SCALE):
    """One SimSiam view of one decoded image (paper App. A; CIFAR variant: blur=False).

    RandomResizedCrop(size, scale) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 ->
    grayscale p=0.2 -> GaussianBlur sigma ~ U[0.1, 2] p=0.5 -> horizontal flip p=0.5 ->
    ImageNet normalisation.

    Args:
        image: float32 [H, W, 3] in [0, 1].
        size: output height and width.
        seed: stateless seed, shape [2].
        blur: apply the Gaussian blur step.
        scale: RandomResizedCrop area range.

    Returns:
        float32 [size, size, 3], normalised.
    """
    crop_seed, rest_seed = tf.unstack(split_seed(seed, 2))
    image = random_resized_crop(image, size, crop_seed, scale)
    return augment_cropped(image, rest_seed, blur)


def random_resized_crop(image, size, seed, scale=recipe.CROP_SCALE):
    """Torchvision's `RandomResizedCrop(size, scale)` of a decoded float image."""
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    top, left, h, w = sample_crop(shape[0], shape[1], seed, scale)
    return resize(image[top : top + h, left : left + w], size)


def view_params(seed, blur=True):
    """The random draws of one view after its crop, from one stateless seed.

    Returns:
        A dict: `jitter` (bool, p=0.8), `factors` [4] and `order` [4] (`jitter_params`),
        `gray` (p=0.2), `blur` (p=0.5; False without blur), `sigma` ~ U[0.1, 2], `flip` (p=0.5).
        `device_augment.sample_params` draws the same, batched.
    """
    s_jit_p, s_jit, s_gray, s_blur_p, s_sigma, s_flip = tf.unstack(split_seed(seed, 6))
    factors, order = jitter_params(s_jit)
    return {
        "jitter": _uniform(s_jit_p) < recipe.P_JITTER,
        "factors": factors,
        "order": order,
        "gray": _uniform(s_gray) < recipe.P_GRAY,
        "blur": (_uniform(s_blur_p) < recipe.P_BLUR) if blur else tf.constant(False),
        "sigma": _uniform(s_sigma, *recipe.BLUR_SIGMA),
        "flip": _uniform(s_flip) < recipe.P_FLIP,
    }


def apply_view(image, params):
    """ColorJitter, grayscale, blur and flip as `params` say, then normalisation."""
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = _maybe(
        params["jitter"], lambda x: apply_jitter(x, params["factors"], params["order"]), image
    )
    image = _maybe(params["gray"], grayscale, image)
    image = _maybe(params["blur"], lambda x: gaussian_blur(x, params["sigma"]), image)
    image = _maybe(params["flip"], hflip, image)
    return normalize(image)


def _augment_cropped(image, seed, blur):
    return apply_view(image, view_params(seed, blur))


# XLA-compiled versions. XLA fuses the colour ops, blur and normalisation into a few loops over
# the image, and the scalar ops that draw a view's parameters into the same call (docs/pipeline.md).
# Image shapes must be static (they are after the resize); one compile per image size. (The
# crop sampler is not compiled: inside tf.data that kept compiling and grew to GBs.)
_compiled_augment_cropped = tf.function(_augment_cropped, jit_compile=True)


def augment_cropped(image, seed, blur=True, compiled=False):
    """The steps of `simsiam_view` after the crop (also used after a fused JPEG decode+crop).

    Args:
        image: float32 [size, size, 3] crop in [0, 1].
        seed: stateless seed, shape [2].
        blur: apply the Gaussian blur step.
        compiled: run it XLA-compiled (needs a static image shape). XLA draws other random
            numbers than TensorFlow's kernels for the same seed (docs/keras_notes.md, trap 22):
            deterministic either way, but not the same views as `compiled=False`.

    Returns:
        The normalised view.
    """
    return (_compiled_augment_cropped if compiled else _augment_cropped)(image, seed, blur)


def eval_view(image, size, resize_ratio=None):
    """Evaluation transform: resize the short side to size * resize_ratio, centre-crop `size`.

    `resize_ratio` None: 256/224 above 32 px (at 224 the standard resize 256 + centre crop 224;
    other sizes keep the same shape of transform, so a folder of any image size works), and 1 at
    32 px and below, the CIFAR protocol (App. D; the official CIFAR code and the PyTorch quality
    peer evaluate 32x32 images as they are, where 256/224 would zoom in by 14%).
    """
    if resize_ratio is None:
        big = size > recipe.EVAL_NO_RESIZE_MAX_SIZE
        resize_ratio = recipe.EVAL_RESIZE_RATIO if big else 1.0
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.cast(tf.round(size * resize_ratio), tf.float32)
    scale = short / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    new = tf.maximum(new, size)
    image = tf.image.resize(image, new, method="bilinear", antialias=True)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    image = tf.clip_by_value(image[top : top + size, left : left + size], 0.0, 1.0)
    return normalize(image)


LINEAR_CROP_SCALE = recipe.LINEAR_CROP_SCALE


def linear_cropped(image, seed):
    """Linear-evaluation training view after its RandomResizedCrop: flip p=0.5, normalise."""
    image = tf.clip_by_value(image, 0.0, 1.0)
    return normalize(_maybe(_uniform(seed) < recipe.P_FLIP, hflip, image))


def crops(item, kind, seeds, size, scale, fused=True):
    """[len(seeds), size, size, 3] random resized crops of one source item, float32 in [0, 1].

    Args:
        item: a decoded image ("pixels"), encoded bytes ("bytes") or a file path ("path").
        kind: which of the three `item` is.
        seeds: one stateless seed per crop.
        size: the output height and width.
        scale: the crop's area range, as a fraction of the image.
        fused: decode only each crop's window of a JPEG (`tf.io.decode_and_crop_jpeg`), once
            per crop, instead of the whole image once.
    """

    def crop(image, s):
        return random_resized_crop(image, size, s, scale)

    if kind == "pixels":
        return tf.stack([crop(item, s) for s in seeds])
    contents = tf.io.read_file(item) if kind == "path" else item

    def decode_each_crop():  # JPEG: only the crop window is decoded (IDCT), once per view
        height, width = tf.unstack(tf.io.extract_jpeg_shape(contents)[:2])
        out = []
        for s in seeds:
            window = tf.stack(sample_crop(height, width, s, scale))
            crop = tf.io.decode_and_crop_jpeg(contents, window, channels=3)
            out.append(resize(tf.cast(crop, tf.float32), size) / 255.0)
        return tf.stack(out)

    def decode_once():
        image = decode_image(contents)
        return tf.stack([crop(image, s) for s in seeds])

    if not fused:
        return decode_once()
    return tf.cond(tf.io.is_jpeg(contents), decode_each_crop, decode_once)


def full_image(item, kind):
    """The whole decoded image of a source item (see `crops`), float32 in [0, 1]."""
    if kind == "pixels":
        return tf.convert_to_tensor(item, tf.float32)
    return decode_image(tf.io.read_file(item) if kind == "path" else item)
