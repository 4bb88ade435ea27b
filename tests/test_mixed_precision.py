"""Mixed precision: low-precision compute, float32 variables, loss and BN statistics."""

import keras
import numpy as np
import pytest

from simsiam_keras import config
from simsiam_keras.apps import pretrain


def _config(precision):
    return config.PretrainConfig(
        workdir="unused",
        backbone="resnet18_cifar",
        width=0.125,
        image_size=16,
        dim=64,
        pred_dim=16,
        batch_size=16,
        epochs=1,
        base_lr=0.05,
        mixed_precision=precision,
    )


def _fit(precision, weights, x1, x2):
    policy = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    keras.mixed_precision.set_global_policy(policy[precision])
    try:
        model = pretrain.build_model(_config(precision), steps_per_epoch=4)
        if weights is not None:
            model.set_weights(weights)
        outputs = model((x1, x2), training=False)
        loss = model.compute_simsiam_loss(outputs)
        history = model.fit((x1, x2), batch_size=16, epochs=3, shuffle=False, verbose=0)
        return model, outputs, loss, history.history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision, dtype", [("float16", "float16"), ("bfloat16", "bfloat16")])
def test_mixed_precision_policies(precision, dtype):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(16, 16, 16, 3)).astype("float32") for _ in range(2))
    reference, _, _, ref_losses = _fit("none", None, x1, x2)
    model, outputs, loss, losses = _fit(precision, reference.get_weights(), x1, x2)
    conv = model.backbone.get_layer("stem_conv")
    assert conv.compute_dtype == dtype and conv.variable_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.variables)  # incl. BN moving statistics
    assert keras.backend.standardize_dtype(outputs["p1"].dtype) == dtype
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (precision == "float16")
    tolerance = 0.02 if precision == "float16" else 0.06  # bfloat16 keeps 8 mantissa bits
    np.testing.assert_allclose(losses, ref_losses, atol=tolerance)
