"""The SimSiam loss: symmetric negative cosine similarity with a stop-gradient (paper Sec. 3).

Pure `keras.ops`, so it runs on every Keras backend. The loss and the normalisation are computed
in float32 whatever the compute dtype (mixed precision keeps reductions in full precision).
"""

from keras import ops

# torch.nn.functional.cosine_similarity clamps the norm at 1e-8; the same guard here.
_EPSILON = 1e-8


def l2_normalize(x, axis=-1):
    """Divides `x` by its L2 norm along `axis` (norm clamped at 1e-8), in float32.

    Args:
        x: a tensor.
        axis: the axis to normalise.

    Returns:
        The normalised float32 tensor.
    """
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, _EPSILON)


def negative_cosine_similarity(p, z, stop_gradient=True):
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (paper Eq. 1 and Eq. 3).

    Args:
        p: predictor output, shape `[batch, dim]`.
        z: projector output (the target), shape `[batch, dim]`.
        stop_gradient: if True (the paper), no gradient flows into `z`. False is the collapse
            ablation of paper Sec. 4.1, Fig. 2.

    Returns:
        A float32 scalar in [-1, 1].
    """
    z = ops.convert_to_tensor(z)
    if stop_gradient:
        z = ops.stop_gradient(z)
    return -ops.mean(ops.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def simsiam_loss(p1, p2, z1, z2, stop_gradient=True):
    """The symmetric SimSiam loss L = 1/2 D(p1, z2) + 1/2 D(p2, z1) (paper Eq. 2 and Eq. 4).

    Args:
        p1: predictor output for view 1.
        p2: predictor output for view 2.
        z1: projector output for view 1.
        z2: projector output for view 2.
        stop_gradient: see `negative_cosine_similarity`.

    Returns:
        A float32 scalar in [-1, 1]; -1 when every prediction points along its target.

    Example:
        >>> out = model((x1, x2), training=True)
        >>> loss = simsiam_loss(out["p1"], out["p2"], out["z1"], out["z2"])
    """
    return 0.5 * negative_cosine_similarity(
        p1, z2, stop_gradient
    ) + 0.5 * negative_cosine_similarity(p2, z1, stop_gradient)


def output_std(z):
    """The collapse signal of paper Sec. 4.1: per-channel std of z/||z|| over the batch, averaged.

    About 1/sqrt(dim) when the outputs spread over the unit sphere, 0 when they collapse to a
    constant vector.

    Args:
        z: projector outputs, shape `[batch, dim]`.

    Returns:
        A float32 scalar.
    """
    return ops.mean(ops.std(l2_normalize(z), axis=0))


def effective_rank(x):
    """The effective rank of a batch of embeddings: exp of the entropy of its singular values.

    RankMe (Garrido et al., 2023; Roy & Vetterli, 2007): with sigma the singular values of `x`
    and p = sigma / sum(sigma) + 1e-7, the rank is exp(-sum p log p). It is k for k orthogonal
    directions of equal weight, 1 when every embedding lies on one line, and at most
    min(batch, dim). Li et al. (2022) show SimSiam's *partial* dimensional collapse (a small
    model on a large dataset) in this spectrum while z_std still looks healthy: the signal
    falls with a few directions carrying the variance, not only with one vector for all.

    Args:
        x: embeddings, shape `[batch, dim]` (no centring or normalisation, as RankMe).

    Returns:
        A float32 scalar in [1, min(batch, dim)].
    """
    sigma = ops.svd(ops.cast(x, "float32"), compute_uv=False)
    p = sigma / ops.maximum(ops.sum(sigma), _EPSILON) + 1e-7
    return ops.exp(-ops.sum(p * ops.log(p)))
