"""The paper's optimiser recipe (Sec. 4, App. A): SGD with PyTorch semantics and a cosine schedule.

Why not `keras.optimizers.SGD(weight_decay=...)`: Keras's weight decay is decoupled
(w -= lr * wd * w, docs/keras_notes.md, trap 9) and Keras's momentum keeps the lr inside the
velocity (m = mu * m - lr * g; trap 17). The official code uses `torch.optim.SGD`, where the L2 term
is added to the gradient before momentum and the lr multiplies the momentum buffer; the two differ
whenever the lr changes, i.e. every epoch of a cosine schedule. `SGD` below is PyTorch's rule.
"""

import math
import re

import keras
from keras import ops


def _check_non_negative(**values):
    for name, value in values.items():
        if isinstance(value, (int, float)) and not value >= 0:
            raise ValueError(f"`{name}` must be >= 0. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="simsiam_keras")
class SimSiamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-epoch cosine decay as the official code: peak * 0.5 * (1 + cos(pi * epoch / epochs)).

    The lr is constant within an epoch (the official `adjust_learning_rate` runs at epoch start).
    With `warmup_epochs > 0` (the paper uses 10 for batch >= 1024, Sec. 4.2 / Table 2), the lr
    rises linearly per step from peak / warmup_steps to the peak, then the cosine runs over the
    remaining epochs.

    Args:
        peak_lr: lr after warm-up, `base_lr * global_batch / 256`.
        steps_per_epoch: optimiser steps per epoch.
        epochs: total epochs.
        warmup_epochs: epochs of linear warm-up.
    """

    def __init__(self, peak_lr, steps_per_epoch, epochs, warmup_epochs=0):
        _check_non_negative(peak_lr=peak_lr, warmup_epochs=warmup_epochs)
        for name, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        if warmup_epochs >= epochs and warmup_epochs > 0:
            raise ValueError(
                f"`warmup_epochs` must be < epochs={epochs}. "
                f"Received: warmup_epochs={warmup_epochs}"
            )
        self.peak_lr = peak_lr
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs

    def __call__(self, step):
        step = ops.cast(step, "float32")
        epoch = ops.floor(step / self.steps_per_epoch)
        decay_epochs = float(self.epochs - self.warmup_epochs)
        progress = ops.maximum(epoch - self.warmup_epochs, 0.0) / decay_epochs
        cosine = self.peak_lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if not self.warmup_epochs:
            return cosine
        warmup_steps = float(self.warmup_epochs * self.steps_per_epoch)
        warmup = self.peak_lr * (step + 1.0) / warmup_steps
        return ops.where(step < warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }


@keras.saving.register_keras_serializable(package="simsiam_keras")
class SGD(keras.optimizers.Optimizer):
    """SGD with momentum exactly as `torch.optim.SGD` (the optimiser of the official code).

    Per variable w with gradient g: g += weight_decay * w (L2 in the gradient, on every weight,
    BN included); b = momentum * b + g; w -= lr * b.

    `fixed_lr_pattern` implements the paper's `fix_pred_lr` (Table 1): variables whose path
    matches the regex (`re.search`) always use `fixed_lr`, while the others follow the schedule.
    Paths in a subclassed model start with the outer model's name, hence a search, not a match
    (docs/keras_notes.md, trap 8).

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: momentum factor.
        weight_decay: L2 coefficient added to the gradient (PyTorch semantics, not decoupled).
            Named like PyTorch's argument; Keras's own decoupled `weight_decay` is not used.
        fixed_lr_pattern: optional regex over `variable.path` selecting constant-lr variables.
        fixed_lr: the constant lr for them; defaults to the schedule's value at step 0.
        name: optimiser name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (e.g. `clipnorm`).
    """

    def __init__(
        self,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=0.0,
        fixed_lr_pattern=None,
        fixed_lr=None,
        name="simsiam_sgd",
        **kwargs,
    ):
        _check_non_negative(learning_rate=learning_rate, weight_decay=weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum!r}")
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        # Kept apart from the base class's `weight_decay`, which would add a decoupled decay.
        self.l2_weight_decay = weight_decay
        self.fixed_lr_pattern = fixed_lr_pattern
        if fixed_lr is None and fixed_lr_pattern is not None:
            fixed_lr = (
                float(learning_rate(0))
                if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
                else float(learning_rate)
            )
        self.fixed_lr = fixed_lr

    def build(self, var_list):
        """Creates one momentum buffer per variable and marks the constant-lr variables."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = self.add_optimizer_variables(var_list, "momentum")
        pattern = re.compile(self.fixed_lr_pattern) if self.fixed_lr_pattern else None
        self._fixed = [bool(pattern and pattern.search(v.path)) for v in var_list]
        if pattern is not None and not any(self._fixed):
            raise ValueError(
                f"`fixed_lr_pattern` matched no variable. Received: "
                f"fixed_lr_pattern={self.fixed_lr_pattern!r}; paths look like {var_list[0].path!r}"
            )

    def update_step(self, gradient, variable, learning_rate):
        """One PyTorch SGD step for one variable."""
        index = self._get_variable_index(variable)
        if self._fixed[index]:
            learning_rate = self.fixed_lr
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2_weight_decay:
            gradient = ops.add(gradient, ops.multiply(self.l2_weight_decay, variable))
        buf = self.momentums[index]
        self.assign(buf, ops.add(ops.multiply(self.momentum, buf), gradient))
        self.assign_sub(variable, ops.multiply(lr, buf))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.l2_weight_decay,
                "fixed_lr_pattern": self.fixed_lr_pattern,
                "fixed_lr": self.fixed_lr,
            }
        )
        return config


def simsiam_optimizer(
    base_lr=0.05,
    batch_size=512,
    epochs=100,
    steps_per_epoch=2502,
    weight_decay=1e-4,
    momentum=0.9,
    fix_pred_lr=True,
    warmup_epochs=0,
):
    """The paper's optimiser for `model.compile(optimizer=...)` (Sec. 4, App. A; CIFAR: App. D).

    lr = base_lr * batch_size / 256 with per-epoch cosine decay; PyTorch SGD with momentum and
    L2 weight decay on every weight; with `fix_pred_lr` the predictor keeps the initial lr.
    Defaults are the ImageNet recipe (ResNet-50, batch 512, 100 epochs: lr 0.1, wd 1e-4);
    CIFAR-10 uses base_lr=0.03, weight_decay=5e-4, epochs=800.

    Args:
        base_lr: lr per 256 images.
        batch_size: global batch size.
        epochs: total epochs of the run.
        steps_per_epoch: optimiser steps per epoch (ImageNet at batch 512: 1281167 // 512).
        weight_decay: L2 coefficient (PyTorch semantics).
        momentum: SGD momentum.
        fix_pred_lr: hold the predictor's lr constant (paper Table 1).
        warmup_epochs: linear warm-up epochs (paper: 10 for batch >= 1024).

    Returns:
        A `simsiam_keras.optim.SGD`.

    Example:
        >>> model.compile(optimizer=simsiam_optimizer(batch_size=512, steps_per_epoch=len(ds)))
    """
    _check_non_negative(base_lr=base_lr, weight_decay=weight_decay)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    peak_lr = base_lr * batch_size / 256
    schedule = SimSiamSchedule(peak_lr, steps_per_epoch, epochs, warmup_epochs)
    return SGD(
        learning_rate=schedule,
        momentum=momentum,
        weight_decay=weight_decay,
        fixed_lr_pattern=r"(^|/)predictor(_\w+)?/" if fix_pred_lr else None,
        fixed_lr=peak_lr if fix_pred_lr else None,
    )
