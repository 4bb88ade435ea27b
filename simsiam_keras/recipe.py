"""The paper's view recipe as numbers, in one place (Sec. 4, App. A and D; docs/recipe.md).

Plain Python constants, no TensorFlow and no Keras: the host pipeline (`augment`, `data`), the
accelerator version (`device_augment`), the export (`export`) and linear evaluation all read
them here; the two settings that depend on others (`blur_by_default`, `projector_layers_for`)
are applied to a run's settings by `config.resolve`.
"""

import math

# Normalisation of every view and of the evaluation view (torchvision's ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision's Grayscale

# RandomResizedCrop of the pretraining views: area fraction and aspect ratio ranges.
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # torchvision's tries before the centre-crop fallback
# The linear-evaluation protocol's training crop (torchvision's default scale).
LINEAR_CROP_SCALE = (0.08, 1.0)

# ColorJitter(brightness, contrast, saturation, hue) and the probabilities of each step.
JITTER = (0.4, 0.4, 0.4, 0.1)
P_JITTER = 0.8
P_GRAY = 0.2
P_BLUR = 0.5  # only where the blur is on: above 32 px (off for CIFAR, App. D)
P_FLIP = 0.5
BLUR_SIGMA = (0.1, 2.0)
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])  # the kernel covers 3 sigma of the largest sigma

# Evaluation view: resize the short side to size x EVAL_RESIZE_RATIO, then centre-crop `size`
# (256 then 224 at ImageNet's size); 1 at CIFAR sizes (<= 32 px), as the CIFAR protocol.
EVAL_RESIZE_RATIO = 256 / 224
EVAL_NO_RESIZE_MAX_SIZE = 32


def blur_by_default(image_size):
    """Whether the recipe blurs at `image_size`: above 32 px (App. A), not at CIFAR's (App. D)."""
    return image_size > EVAL_NO_RESIZE_MAX_SIZE


def projector_layers_for(backbone):
    """The projector's Linear layers for `backbone`: 2 for the CIFAR variant (App. D), else 3."""
    return 2 if backbone == "resnet18_cifar" else 3
