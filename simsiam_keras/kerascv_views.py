"""The view recipe with KerasCV layers: `two_view_dataset(..., augment_impl="kerascv")`.

The paper's parameters (`recipe.py`) given to keras-cv 0.9's stock layers, as a user of KerasCV
would write them (each argument's meaning read from keras-cv's source). docs/pipeline.md, "KerasCV
views", has the table; in short, the differences from torchvision's recipe:
the crop's aspect ratio is uniform (not log-uniform) and relative to the image, a crop outside
the image is clipped (no 10 attempts and centre fallback), the resize has no antialiasing;
brightness is additive; contrast works around each channel's mean; saturation scales HSV
saturation instead of blending with grey; the jitter's order is fixed; the blur pads with zeros.

Every layer draws per image. Their randomness comes from keras-cv's stateful generators, not
from the pipeline's per-image stateless seeds: the data order, sharding and resume position are
the pipeline's, but the views of a resumed run, or of two runs with one seed, are not the same
(`deterministic` does not apply to them). keras-cv layers are TensorFlow ops: this runs in the
tf.data pipeline under any Keras backend's training, and keras-cv is imported only here.
"""

from simsiam_keras import recipe

# keras-cv's RandomSaturation multiplies HSV saturation by f / (1 - f): f in [0.375, 0.5833]
# is a multiplier in [0.6, 1.4], torchvision's range for saturation 0.4.
_S = recipe.JITTER[2]
SATURATION_FACTOR = ((1 - _S) / (2 - _S), (1 + _S) / (2 + _S))


def blur_kernel_size(image_size):
    """An odd kernel of about 10% of the image size (SimCLR's convention): 23 px at 224."""
    return 2 * int(0.05 * image_size) + 1


class KerasCVRecipe:
    """The paper's views made of keras-cv layers.

    Args:
        image_size: the views' height and width.
        blur: include the Gaussian blur (off for the CIFAR variant).
        seed: seeds the layers' generators (keras-cv treats seed 0 as "unseeded": 1 is added).

    Raises:
        ImportError: keras-cv is not installed.
    """

    def __init__(self, image_size, blur, seed=0):
        try:
            import keras_cv
        except ImportError as e:  # a regular dependency, but the rest of the package runs without
            raise ImportError(
                f"augment_impl='kerascv' needs keras-cv (pip install keras-cv): {e}"
            ) from None
        import tensorflow as tf

        layers = keras_cv.layers
        seed = int(seed) + 1
        # Layers built without a seed (RandomColorJitter itself) take TensorFlow's global
        # generator, which TensorFlow refuses to create under op determinism (--deterministic)
        # unless it was set: set it, from the seed.
        tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
        b, c, _, h = recipe.JITTER
        self.image_size = image_size
        self.crop = layers.RandomCropAndResize(
            (image_size, image_size),
            crop_area_factor=recipe.CROP_SCALE,
            aspect_ratio_factor=recipe.CROP_RATIO,
            interpolation="bilinear",
            seed=seed,
        )
        jitter = layers.RandomColorJitter(
            value_range=(0, 1),
            brightness_factor=b,
            contrast_factor=c,
            saturation_factor=SATURATION_FACTOR,
            hue_factor=2 * h,
            seed=seed + 1,
        )
        self.jitter = layers.RandomApply(jitter, rate=recipe.P_JITTER, seed=seed + 2)
        gray = layers.Grayscale(output_channels=3)
        self.grayscale = layers.RandomApply(gray, rate=recipe.P_GRAY, seed=seed + 3)
        self.blur = None
        if blur:
            blurring = layers.RandomGaussianBlur(
                kernel_size=blur_kernel_size(image_size), factor=recipe.BLUR_SIGMA, seed=seed + 4
            )
            self.blur = layers.RandomApply(blurring, rate=recipe.P_BLUR, seed=seed + 5)
        self.flip = layers.RandomFlip("horizontal", rate=recipe.P_FLIP, seed=seed + 6)

    def crop_view(self, image):
        """One random resized crop of one image `[H, W, 3]` in [0, 1] (any size)."""
        return self.crop(image[None])[0]

    def finish_views(self, crops):
        """The rest of the recipe on a batch of crops `[N, S, S, 3]`, normalised."""
        import tensorflow as tf

        x = self.grayscale(self.jitter(crops))
        if self.blur is not None:
            x = self.blur(x)
        x = self.flip(x)
        mean = tf.constant(recipe.IMAGENET_MEAN, tf.float32)
        std = tf.constant(recipe.IMAGENET_STD, tf.float32)
        return (tf.clip_by_value(x, 0.0, 1.0) - mean) / std
