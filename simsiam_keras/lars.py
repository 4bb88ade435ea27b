"""LARS for the linear evaluation (paper App. A; official `main_lincls.py --lars`).

The official code wraps `torch.optim.SGD(momentum=0.9)` in NVIDIA apex
`LARC(trust_coefficient=0.001, clip=False)`. LARC rescales each parameter's gradient before the
inner SGD step and takes over its weight decay (the inner SGD runs with weight_decay=0). Per
parameter w with gradient g, n_w = ||w||, n_g = ||g|| (Frobenius norms over the whole tensor):

    if n_w > 0 and n_g > 0:
        g = (g + wd * w) * trust * n_w / (n_g + wd * n_w + eps)
    else:
        g unchanged (no scaling and no weight decay)
    b = momentum * b + g;  w -= lr * b            (torch.optim.SGD, b starts at 0)

With clip=False the effective lr is the scheduled lr times the adaptive factor, not a minimum of
the two. Every parameter is adapted, biases included, so the zero-initialised fc bias takes the
raw scheduled lr on its first step. Keras has no LARS (docs/keras_notes.md, trap 16), and its
SGD puts the lr inside the velocity (trap 17), hence this class.
"""

import keras
from keras import ops

from simsiam_keras.optim import _check_non_negative


def _l2_norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


@keras.saving.register_keras_serializable(package="simsiam_keras")
class LARS(keras.optimizers.Optimizer):
    """apex `LARC(clip=False)` around `torch.optim.SGD` with momentum, as the official linear eval.

    Per variable w with gradient g and norms n_w = ||w||, n_g = ||g||: when both are nonzero,
    g = (g + weight_decay * w) * trust_coefficient * n_w / (n_g + weight_decay * n_w + eps);
    otherwise g is left unchanged (and no weight decay is added). Then the PyTorch momentum
    step: b = momentum * b + g; w -= lr * b. Applied to every variable, biases included.

    The recipe (docs/recipe.md, linear evaluation): trust_coefficient=0.001, momentum=0.9,
    weight_decay=0, lr = 0.1 * batch / 256 with cosine decay over 90 epochs.

    Args:
        learning_rate: a float or a `LearningRateSchedule`; the adaptive factor multiplies it.
        momentum: momentum factor (PyTorch semantics: the lr multiplies the momentum buffer).
        weight_decay: L2 coefficient, folded into the LARC-scaled gradient as apex does. Keras's
            own decoupled `weight_decay` is not used.
        trust_coefficient: LARC trust coefficient (eta in You et al., arXiv 1708.03888).
        eps: added to the adaptive factor's denominator.
        name: optimiser name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. `clipnorm`).
    """

    def __init__(
        self,
        learning_rate=1.6,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.001,
        eps=1e-8,
        name="simsiam_lars",
        **kwargs,
    ):
        _check_non_negative(learning_rate=learning_rate, weight_decay=weight_decay, eps=eps)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        if not trust_coefficient > 0:
            raise ValueError(
                "`trust_coefficient` must be > 0. "
                f"Received: trust_coefficient={trust_coefficient!r}"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        # Kept apart from the base class's `weight_decay`, which would add a decoupled decay.
        self.l2_weight_decay = weight_decay
        self.trust_coefficient = trust_coefficient
        self.eps = eps

    def build(self, var_list):
        """Creates one momentum buffer per variable."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = self.add_optimizer_variables(var_list, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        """One LARC-scaled PyTorch SGD step for one variable."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        w_norm = _l2_norm(variable)
        g_norm = _l2_norm(gradient)
        adapt = ops.logical_and(ops.not_equal(w_norm, 0.0), ops.not_equal(g_norm, 0.0))
        # The guard keeps the unused branch finite when eps = 0 and both norms are zero.
        denominator = ops.where(
            adapt,
            ops.add(ops.add(g_norm, ops.multiply(self.l2_weight_decay, w_norm)), self.eps),
            1.0,
        )
        adaptive_lr = ops.divide(ops.multiply(self.trust_coefficient, w_norm), denominator)
        scaled = gradient
        if self.l2_weight_decay:
            scaled = ops.add(scaled, ops.multiply(self.l2_weight_decay, variable))
        gradient = ops.where(adapt, ops.multiply(scaled, adaptive_lr), gradient)
        buf = self.momentums[self._get_variable_index(variable)]
        self.assign(buf, ops.add(ops.multiply(self.momentum, buf), gradient))
        self.assign_sub(variable, ops.multiply(lr, buf))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.l2_weight_decay,
                "trust_coefficient": self.trust_coefficient,
                "eps": self.eps,
            }
        )
        return config
