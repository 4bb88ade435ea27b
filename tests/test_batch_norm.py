"""The fused `BatchNorm` against `keras.layers.BatchNormalization`, on every backend."""

import keras
import numpy as np
import pytest

from simsiam_keras.batch_norm import BatchNorm
from tests import _backend

pytestmark = pytest.mark.multibackend


def _pair(shape, momentum=0.9, **kwargs):
    layers = [
        cls(momentum=momentum, epsilon=1e-5, **kwargs)
        for cls in (BatchNorm, keras.layers.BatchNormalization)
    ]
    rng = np.random.default_rng(0)
    for layer in layers:
        layer.build(shape)
    for weights in zip(*(layer.weights for layer in layers)):
        value = rng.uniform(0.5, 1.5, weights[0].shape).astype("float32")
        for w in weights:
            w.assign(value)
    return layers


@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (8, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_training_pass_matches_keras_batch_normalization(shape, affine):
    stds = np.geomspace(0.03, 3.0, shape[-1])  # small variances: eps matters there
    x = np.random.default_rng(1).normal(0.5, stds, shape).astype("float32")
    upstream = np.random.default_rng(2).normal(size=shape).astype("float32")
    fused, plain = _pair(shape, center=affine, scale=affine)

    def loss(layer):
        return lambda t: keras.ops.sum(
            layer(t, training=True) * keras.ops.convert_to_tensor(upstream)
        )

    value_f, (grad_f,) = _backend.grads_wrt_inputs(loss(fused), x)
    value_p, (grad_p,) = _backend.grads_wrt_inputs(loss(plain), x)
    assert value_f == pytest.approx(value_p, rel=1e-4, abs=1e-3)
    np.testing.assert_allclose(grad_f, grad_p, rtol=1e-3, atol=1e-3)
    # Untraced, for the updates; momentum 0: the moving statistics are the batch's own.
    fused, plain = _pair(shape, momentum=0.0, center=affine, scale=affine)
    out_f, out_p = (_backend.to_numpy(layer(x, training=True)) for layer in (fused, plain))
    np.testing.assert_allclose(out_f, out_p, rtol=1e-4, atol=1e-4)
    for a, b in zip(fused.non_trainable_weights, plain.non_trainable_weights):
        np.testing.assert_allclose(_backend.to_numpy(a), _backend.to_numpy(b), rtol=1e-4)
    out_f = _backend.to_numpy(fused(x, training=False))  # inference: the moving statistics
    np.testing.assert_allclose(out_f, _backend.to_numpy(plain(x, training=False)), atol=1e-4)


def test_weight_gradients_match_and_config_round_trips():
    shape = (4, 3, 3, 5)
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    grads = []
    for layer in _pair(shape):
        inputs = keras.Input(shape[1:])
        model = keras.Model(inputs, {"y": layer(inputs)})
        _, _, g = _backend.model_loss_and_grads(model, x, lambda out: keras.ops.sum(out["y"] ** 3))
        grads.append(g)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    again = keras.layers.deserialize(keras.layers.serialize(BatchNorm(momentum=0.9)))
    assert isinstance(again, BatchNorm) and again.momentum == 0.9
