"""Parity with the official PyTorch formulation: outputs, loss and gradients in train mode."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import simsiam_keras as sk  # noqa: E402
from tests._backend import model_loss_and_grads  # noqa: E402
from tests.torch_simsiam import (  # noqa: E402
    TorchSimSiamCifar,
    copy_keras_weights,
    official_loss,
    torch_param_for,
)

pytestmark = pytest.mark.multibackend


def test_keras_model_matches_pytorch_in_train_mode():
    width, dim, pred_dim = 0.125, 32, 8
    backbone = sk.build_resnet("resnet18_cifar", width=width, image_size=8)
    model = sk.SimSiam(backbone, dim=dim, pred_dim=pred_dim, projector_layers=2)
    # Nonzero gammas everywhere, so that the zero-init residual branches are exercised too.
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        if v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    ref = TorchSimSiamCifar([8, 16, 32, 64], dim, pred_dim)
    copy_keras_weights(model, ref)
    ref.train()

    x1 = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    x2 = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    outputs, loss, grads = model_loss_and_grads(model, (x1, x2), model.compute_simsiam_loss)

    t1, t2 = (torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (x1, x2))
    p1, p2, z1, z2 = ref(t1, t2)
    ref_loss = official_loss(p1, p2, z1, z2)
    ref.zero_grad()
    ref_loss.backward()

    for name, t in (("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2)):
        np.testing.assert_allclose(outputs[name], t.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-5, atol=1e-6)
    assert len(grads) == len([p for p in ref.parameters()])
    for v, g in zip(model.trainable_variables, grads):
        tensor, layout = torch_param_for(ref, v)
        expected = tensor.grad.numpy()
        scale = np.abs(expected).max() + 1e-12
        np.testing.assert_allclose(
            layout(g), expected, rtol=1e-3, atol=1e-3 * scale, err_msg=v.path
        )
