import numpy as np
import pytest

from simsiam_keras import losses
from tests._backend import grads_wrt_inputs, to_numpy

pytestmark = pytest.mark.multibackend


def _np_neg_cos(p, z):
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-8)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-8)
    return -np.mean(np.sum(p * z, axis=1))


def _inputs(seed=0, n=16, d=32):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)).astype("float32") for _ in range(4)]


def test_loss_matches_numpy_reference():
    p1, p2, z1, z2 = _inputs()
    expected = 0.5 * _np_neg_cos(p1, z2) + 0.5 * _np_neg_cos(p2, z1)
    got = float(to_numpy(losses.simsiam_loss(p1, p2, z1, z2)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_loss_is_symmetric_and_bounded():
    p1, p2, z1, z2 = _inputs(1)
    a = float(to_numpy(losses.simsiam_loss(p1, p2, z1, z2)))
    b = float(to_numpy(losses.simsiam_loss(p2, p1, z2, z1)))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert -1.0 <= a <= 1.0
    # Predictions equal to their targets reach the minimum, -1; opposite ones the maximum, 1.
    assert float(to_numpy(losses.simsiam_loss(z2, z1, z1, z2))) == pytest.approx(-1.0, abs=1e-6)
    assert float(to_numpy(losses.simsiam_loss(-z2, -z1, z1, z2))) == pytest.approx(1.0, abs=1e-6)


def test_gradient_to_target_branch_is_exactly_zero():
    _, grads = grads_wrt_inputs(losses.simsiam_loss, *_inputs(2))
    gp1, gp2, gz1, gz2 = grads
    assert np.all(gz1 == 0.0) and np.all(gz2 == 0.0)
    assert np.abs(gp1).max() > 0 and np.abs(gp2).max() > 0


def test_ablation_without_stop_gradient_lets_gradient_reach_target():
    def fn(p1, p2, z1, z2):
        return losses.simsiam_loss(p1, p2, z1, z2, stop_gradient=False)

    _, grads = grads_wrt_inputs(fn, *_inputs(3))
    assert np.abs(grads[2]).max() > 0 and np.abs(grads[3]).max() > 0


def test_output_std_is_inverse_sqrt_dim_when_spread_and_zero_when_collapsed():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4096, 64)).astype("float32")
    np.testing.assert_allclose(float(to_numpy(losses.output_std(z))), 1 / 8, rtol=0.05)
    collapsed = np.tile(rng.normal(size=(1, 64)), (32, 1)).astype("float32")
    assert float(to_numpy(losses.output_std(collapsed))) < 1e-6
    ref = (z / np.linalg.norm(z, axis=1, keepdims=True)).std(axis=0).mean()
    np.testing.assert_allclose(float(to_numpy(losses.output_std(z))), ref, rtol=1e-5)
