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


def _numpy_effective_rank(x):
    """RankMe's definition in float64: exp(entropy(sigma / sum(sigma) + 1e-7))."""
    sigma = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("rank", [1, 3, 16, 64])
def test_effective_rank_is_k_for_k_equal_orthogonal_directions(rank):
    rng = np.random.default_rng(rank)
    basis, _ = np.linalg.qr(rng.normal(size=(128, rank)))  # 128-dim, `rank` orthonormal columns
    rows, _ = np.linalg.qr(rng.normal(size=(256, rank)))
    x = (rows @ basis.T * 5.0).astype("float32")  # 256 x 128, singular values all 5
    got = float(to_numpy(losses.effective_rank(x)))
    assert got == pytest.approx(rank, rel=1e-3)
    assert got == pytest.approx(_numpy_effective_rank(x), rel=1e-4)


def test_effective_rank_matches_numpy_on_a_decaying_spectrum_and_sees_partial_collapse():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(512, 128)))
    v, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    ranks = []
    for decay in (0.0, 0.02, 0.1, 0.5):  # singular values exp(-decay * i): flat to a few directions
        x = (u * np.exp(-decay * np.arange(128)) @ v.T).astype("float32")
        ranks.append(float(to_numpy(losses.effective_rank(x))))
        assert ranks[-1] == pytest.approx(_numpy_effective_rank(x), rel=1e-4)
    assert ranks[0] == pytest.approx(128, rel=1e-3) and ranks[-1] < 6  # 6 of 128: partial collapse
    assert ranks == sorted(ranks, reverse=True)
    full = float(to_numpy(losses.effective_rank(rng.normal(size=(512, 128)).astype("float32"))))
    assert 110 < full <= 128  # isotropic Gaussian: nearly full rank
    collapsed = np.tile(rng.normal(size=(1, 128)), (64, 1)).astype("float32")
    assert float(to_numpy(losses.effective_rank(collapsed))) == pytest.approx(1.0, abs=1e-3)
