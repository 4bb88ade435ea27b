"""Projector and predictor MLPs, exactly as the paper (Sec. 3, App. A and D) and official code.

BatchNormalization uses PyTorch's settings (Keras momentum 0.9 == PyTorch momentum 0.1;
epsilon 1e-5): docs/keras_notes.md, trap 14.
"""

import keras

from simsiam_keras import initializers
from simsiam_keras.batch_norm import BatchNorm

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _dense(units, fan_in, use_bias, name):
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=initializers.linear_kernel(),
        bias_initializer=initializers.LinearBias(fan_in),
        name=name,
    )


def resolve_synchronized_bn(synchronized_bn="auto"):
    """The bool that `synchronized_bn` means where the model is being built.

    `"auto"` is resolved once, when a backbone or head is built, and the layers keep the bool
    (`BatchNormalization.synchronized`, `SimSiam.get_config()["synchronized_bn"]`), so a saved
    model reloads with the same setting wherever it is loaded. It is True when building inside
    the scope of a `tf.distribute` strategy with more than one replica in sync
    (`MirroredStrategy` over 2+ devices, `MultiWorkerMirroredStrategy` with 2+ workers in
    total) on the TensorFlow backend, and False otherwise, so one device trains as before.

    On JAX and PyTorch `"auto"` is always False: Keras's `BatchNormalization(synchronized=True)`
    is TensorFlow-only and raises a ValueError on other backends (keras 3.15), so an explicit
    True fails there. Under JAX's `keras.distribution.DataParallel` the step is one XLA program
    over the global (sharded) batch, so the BN statistics are already those of the global
    batch; the PyTorch backend trains on one device here.

    Args:
        synchronized_bn: True, False or "auto".

    Returns:
        A bool.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(synchronized_bn, bool):
        return synchronized_bn
    if synchronized_bn != "auto":
        raise ValueError(
            f'`synchronized_bn` must be True, False or "auto". Received: {synchronized_bn!r}'
        )
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


def batch_norm(name, affine=True, zero_gamma=False, synchronized=False):
    """BatchNormalization with PyTorch's momentum and epsilon (used by heads and backbones).

    A `batch_norm.BatchNorm`: Keras's layer with a fused training pass on TensorFlow and PyTorch.
    """
    return BatchNorm(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        center=affine,
        scale=affine,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=synchronized,
        name=name,
    )


def build_projector(in_dim, dim=2048, num_layers=3, synchronized_bn="auto", name="projector"):
    """The projection MLP of the encoder f (paper App. A; App. D for the 2-layer CIFAR variant).

    `num_layers - 1` blocks of Linear(in_dim, no bias)-BN-ReLU, then Linear(dim, no bias)-BN
    without affine parameters. The hidden width equals the backbone feature width (2048 for
    ResNet-50, 512 for ResNet-18), as in the official code. The last Linear has no bias because
    the non-affine BN after it removes any bias (the official code freezes it).

    Args:
        in_dim: backbone feature width.
        dim: output width (paper: 2048).
        num_layers: 3 for ImageNet, 2 for the CIFAR variant.
        synchronized_bn: BN statistics across replicas: True, False or "auto" (default): True
            under a multi-replica `tf.distribute` strategy (TensorFlow backend), else False;
            see `resolve_synchronized_bn`.
        name: model name.

    Returns:
        A functional `keras.Model` from `[batch, in_dim]` to `[batch, dim]`.
    """
    _check_positive(in_dim=in_dim, dim=dim, num_layers=num_layers)
    synchronized_bn = resolve_synchronized_bn(synchronized_bn)
    inputs = keras.Input((in_dim,), name=f"{name}_input")
    x = inputs
    for i in range(1, num_layers):
        x = _dense(in_dim, in_dim, False, f"{name}_dense_{i}")(x)
        x = batch_norm(f"{name}_bn_{i}", synchronized=synchronized_bn)(x)
        x = keras.layers.ReLU(name=f"{name}_relu_{i}")(x)
    x = _dense(dim, in_dim, False, f"{name}_dense_{num_layers}")(x)
    # Paper App. A: "BN is applied to its output fc layer" with no learnable affine.
    x = batch_norm(f"{name}_bn_{num_layers}", affine=False, synchronized=synchronized_bn)(x)
    return keras.Model(inputs, x, name=name)


def build_predictor(dim=2048, pred_dim=512, synchronized_bn="auto", name="predictor"):
    """The bottleneck prediction MLP h (paper App. A): Linear(dim->pred_dim)-BN-ReLU-Linear(dim).

    The output layer has a bias and neither BN nor ReLU (the paper: "h's output fc does not have
    BN or ReLU").

    Args:
        dim: input and output width.
        pred_dim: bottleneck width (paper: 512 = dim / 4).
        synchronized_bn: BN statistics across replicas: True, False or "auto" (default): True
            under a multi-replica `tf.distribute` strategy (TensorFlow backend), else False;
            see `resolve_synchronized_bn`.
        name: model name.

    Returns:
        A functional `keras.Model` from `[batch, dim]` to `[batch, dim]`.
    """
    _check_positive(dim=dim, pred_dim=pred_dim)
    synchronized_bn = resolve_synchronized_bn(synchronized_bn)
    inputs = keras.Input((dim,), name=f"{name}_input")
    x = _dense(pred_dim, dim, False, f"{name}_dense_1")(inputs)
    x = batch_norm(f"{name}_bn_1", synchronized=synchronized_bn)(x)
    x = keras.layers.ReLU(name=f"{name}_relu_1")(x)
    x = _dense(dim, pred_dim, True, f"{name}_dense_2")(x)
    return keras.Model(inputs, x, name=name)
