"""Initialisers that reproduce the PyTorch defaults the official SimSiam code relies on.

docs/recipe.md / paper App. A: the heads keep PyTorch's default `nn.Linear` init (an fc init with
std 0.01 "may not converge"), and the ResNet keeps torchvision's init (Kaiming-normal, fan-out).
"""

import math

import keras


def conv_kernel():
    """Torchvision ResNet conv init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def linear_kernel():
    """`nn.Linear` default weight init: `kaiming_uniform_(a=sqrt(5))` = U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


@keras.saving.register_keras_serializable(package="simsiam_keras")
class LinearBias(keras.initializers.Initializer):
    """`nn.Linear` default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Keras passes a bias initialiser only the bias shape, so the layer's fan-in is stored here.

    Args:
        fan_in: number of inputs of the dense layer the bias belongs to.
        seed: optional seed.
    """

    def __init__(self, fan_in, seed=None):
        self.fan_in = fan_in
        self.seed = seed

    def __call__(self, shape, dtype=None):
        bound = 1.0 / math.sqrt(self.fan_in)
        return keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}
