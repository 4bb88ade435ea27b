"""Floating-point operations of a model, counted from its layers, for utilisation figures.

The convention of FLOP counters (fvcore, `torch.utils.flop_counter`): a multiply-add is 2 FLOPs,
convolutions and dense layers are counted, normalisation, activations and additions are not
(< 1 % of a ResNet's). A training step costs about 3x its forward pass (the backward pass
computes gradients for inputs and for weights, each about one forward), the usual estimate for
model FLOP utilisation.
"""

import math

import keras


def _layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def forward_flops(model):
    """FLOPs of one example through a built functional `model` (nested models included).

    Args:
        model: a functional `keras.Model` (its layers' output shapes are known).

    Returns:
        int: 2 x the multiply-adds of its `Conv2D` and `Dense` layers for one example.
    """
    macs = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape  # cin per group
            macs += math.prod(layer.output.shape[1:3]) * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            macs += math.prod(layer.kernel.shape)
    return 2 * macs


def simsiam_train_flops(model):
    """FLOPs of one image pair through a SimSiam train step: 2 views x 3 x (f + h) forward."""
    encoder = forward_flops(model.backbone) + forward_flops(model.projector)
    return 2 * 3 * (encoder + forward_flops(model.predictor))
