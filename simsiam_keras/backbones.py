"""ResNet backbones as the paper used them: torchvision's ResNet-18/50 (v1.5), NHWC.

Differences from `keras.applications.ResNet50` that matter here (docs/keras_notes.md, trap 13): the
stride of a bottleneck block sits on its 3x3 conv (v1.5), convolutions have no bias, BN uses
PyTorch's momentum/epsilon, padding is symmetric like PyTorch's (Keras "same" pads stride-2
convs asymmetrically), and the last BN of every residual block starts with gamma = 0
(`zero_init_residual=True` in the official code). Every backbone ends with global average
pooling, so it maps images `[N, H, W, 3]` to features `[N, C]`.
"""

import keras

from simsiam_keras import heads, initializers, names

STAGE_WIDTHS = (64, 128, 256, 512)  # torchvision's widths of the four stages; the stem's is 64
_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet18_cifar": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
BACKBONES = names.BACKBONES


def channels(base, width):
    """The channels of a layer torchvision gives `base` channels, at width multiplier `width`."""
    return max(8, int(round(base * width)))


def _conv(filters, kernel_size, stride, name):
    # Explicit symmetric zero padding + "valid", as PyTorch's Conv2d(padding=k // 2).
    def apply(x):
        if kernel_size > 1:
            x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=stride,
            use_bias=False,
            kernel_initializer=initializers.conv_kernel(),
            name=name,
        )(x)

    return apply


_bn = heads.batch_norm


def _shortcut(x, filters, stride, name, sync):
    if stride == 1 and x.shape[-1] == filters:
        return x
    x = _conv(filters, 1, stride, f"{name}_down_conv")(x)
    return _bn(f"{name}_down_bn", synchronized=sync)(x)


def _basic_block(x, filters, stride, name, sync):
    shortcut = _shortcut(x, filters, stride, name, sync)
    y = _conv(filters, 3, stride, f"{name}_conv1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1", synchronized=sync)(y))
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2", zero_gamma=True, synchronized=sync)(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, stride, name, sync):
    shortcut = _shortcut(x, 4 * filters, stride, name, sync)
    y = _conv(filters, 1, 1, f"{name}_conv1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1", synchronized=sync)(y))
    y = _conv(filters, 3, stride, f"{name}_conv2")(y)  # v1.5: the stride is here
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2", synchronized=sync)(y))
    y = _conv(4 * filters, 1, 1, f"{name}_conv3")(y)
    y = _bn(f"{name}_bn3", zero_gamma=True, synchronized=sync)(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_resnet(name="resnet18_cifar", width=1.0, image_size=None, synchronized_bn="auto"):
    """Builds a ResNet backbone ending in global average pooling.

    Args:
        name: "resnet18", "resnet50" (both torchvision's ImageNet layout: 7x7/2 stem and 3x3/2
            max-pool) or "resnet18_cifar" (3x3 stride-1 stem, no max-pool; paper App. D).
        width: multiplier on every stage's channels (1.0 is the paper's network); small values
            make CPU-sized experiments. Each stage keeps at least 8 channels.
        image_size: optional fixed input height/width; None accepts any size.
        synchronized_bn: BN statistics across replicas (SyncBN): True, False or "auto"
            (default): True when built under a `tf.distribute` strategy with more than one
            replica (TensorFlow backend), else False; always False on JAX and PyTorch, where
            True raises (docs/keras_notes.md, trap 2). Resolved here, so every BatchNormalization
            layer stores a bool. See `heads.resolve_synchronized_bn`.

    Returns:
        A functional `keras.Model` from `[N, H, W, 3]` normalised images to `[N, C]` features,
        with `C = 512 * width` (ResNet-18) or `2048 * width` (ResNet-50).

    Raises:
        ValueError: for an unknown name, a non-positive width or image size, or a
            `synchronized_bn` other than True, False or "auto".
    """
    if name not in _BLOCKS:
        raise ValueError(f"Unknown backbone. Expected one of {BACKBONES}. Received: name={name!r}")
    if not width > 0:
        raise ValueError(f"`width` must be positive. Received: width={width!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(
            f"`image_size` must be a positive int. Received: image_size={image_size!r}"
        )
    sync = heads.resolve_synchronized_bn(synchronized_bn)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    stem = channels(64, width)
    if name == "resnet18_cifar":
        x = _conv(stem, 3, 1, "stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn", synchronized=sync)(x))
    else:
        x = _conv(stem, 7, 2, "stem_conv")(inputs)
        x = keras.layers.ReLU(name="stem_relu")(_bn("stem_bn", synchronized=sync)(x))
        # After a ReLU, zero padding is the same as PyTorch's -inf padding of MaxPool2d.
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    block = _bottleneck_block if name == "resnet50" else _basic_block
    for stage, (base, blocks) in enumerate(zip(STAGE_WIDTHS, _BLOCKS[name]), start=1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(x, channels(base, width), stride, f"stage{stage}_block{i + 1}", sync)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)


def feature_dim(backbone):
    """The width of a backbone's pooled features.

    Args:
        backbone: a `keras.Model` mapping images to `[N, C]` features.

    Returns:
        C, as an int.

    Raises:
        ValueError: if the backbone output is not 2-D or its width is unknown.
    """
    shape = tuple(backbone.output.shape) if hasattr(backbone, "output") else None
    if shape is None or len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "The backbone must map images to pooled 2-D features [batch, channels] with a known "
            f"channel count (end it with global average pooling). Received output shape: {shape}"
        )
    return int(shape[-1])
