"""BatchNormalization whose training-mode pass is one fused kernel on TensorFlow and PyTorch.

Keras 3.15's `BatchNormalization` computes the batch statistics with `ops.moments` and
normalises with `ops.batch_normalization`: on TensorFlow and PyTorch that is half a dozen
element-wise kernels forward and more backward for every BN of the ResNet (the TensorFlow
profile of the CIFAR ResNet-18 step puts Mul, Mean, SquaredDifference, Sum and Tile at ~20 % of
the op time: docs/speed.md). `BatchNorm` keeps the layer, its weights, its config and its
semantics, and in training mode calls the framework's fused kernel instead
(`FusedBatchNormV3` on TensorFlow, `aten::native_batch_norm` on PyTorch), whose gradients are
fused kernels too. Measured in the step benchmark (docs/speed.md). JAX keeps Keras's path: XLA
fuses it already. Synchronized BN (several replicas), masks and renorm keep Keras's path too.

Semantics kept exactly: normalisation by the biased batch variance, and the moving variance
updated with the biased variance, as Keras does (tests/test_batch_norm.py compares outputs,
moving statistics and gradients with `keras.layers.BatchNormalization` on every backend).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="simsiam_keras")
class BatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused training pass on TensorFlow and PyTorch.

    Same arguments, weights and config as `keras.layers.BatchNormalization`.
    """

    def _fused(self, inputs, training, mask):
        rank = len(inputs.shape)
        return (
            training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and rank in (2, 4)
            and self.axis in (-1, rank - 1)
            and keras.backend.backend() in ("tensorflow", "torch")
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,))
        if keras.backend.backend() == "tensorflow":
            outputs, mean, variance = _tensorflow_train(x, gamma, beta, self.epsilon)
        else:
            outputs, mean, variance = _torch_train(x, gamma, beta, self.epsilon)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)


def _tensorflow_train(x, gamma, beta, epsilon):
    """`FusedBatchNormV3` (NHWC; an [N, C] batch as [N, 1, 1, C]): outputs, mean, biased var."""
    import tensorflow as tf

    images = x if len(x.shape) == 4 else x[:, None, None, :]
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        images, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True
    )
    # The kernel returns the Bessel-corrected variance for the moving average; Keras uses the
    # biased one (the one it normalises with).
    count = tf.cast(tf.size(images) // tf.shape(images)[-1], tf.float32)
    variance = variance * (count - 1.0) / count
    return tf.reshape(outputs, tf.shape(x)), mean, variance


def _torch_train(x, gamma, beta, epsilon):
    """`aten::native_batch_norm` on NCHW (a view of NHWC): outputs, mean, biased var."""
    import torch

    channels_first = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    outputs, mean, inv_std = torch.ops.aten.native_batch_norm(
        channels_first, gamma, beta, None, None, True, 0.0, epsilon
    )
    variance = inv_std.detach().pow(-2) - epsilon  # inv_std = 1 / sqrt(var + eps)
    outputs = outputs.permute(0, 2, 3, 1) if x.ndim == 4 else outputs
    return outputs, mean.detach(), variance
