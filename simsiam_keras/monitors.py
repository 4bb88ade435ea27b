"""Training monitors: a kNN accuracy monitor and a collapse detector, as Keras callbacks.

Both write into the epoch `logs`, so their numbers reach the progress bar, `History`,
`CSVLogger` and `TensorBoard`, provided those come after the monitor in the `callbacks` list
(Keras appends its own `History` and progress bar last). Both are NumPy after the forward pass
and need no TensorFlow, so they run on every Keras backend.
"""

import math
import time
import warnings

import keras
import numpy as np

from simsiam_keras import distribute, knn, losses, report
from simsiam_keras.history import EpochSteps, numbers


class CollapseWarning(UserWarning):
    """Emitted once by `CollapseMonitor` when the SimSiam output has collapsed."""


def _backbone_of(model, monitor):
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, keras.Model):
        raise ValueError(
            f"{monitor} needs a model with a `backbone` attribute (a keras.Model mapping images "
            f"to [N, C] features), such as `SimSiam`. Received: {type(model).__name__}"
        )
    return backbone


class KNNMonitor(EpochSteps):
    """Weighted kNN top-1 accuracy of the backbone's features during training (InstDisc style).

    At the end of epoch 1, of every `every`-th epoch (epoch numbers counted from 1 across
    resumes, so `every=10` evaluates epochs 1, 10, 20, ...) and of the last epoch, it
    extracts L2-normalised features of `train_data` (the memory) and `val_data` with
    `model.backbone` in inference mode, classifies the val features with the k = 200 nearest,
    votes weighted exp(sim / 0.2) (docs/recipe.md, "Monitors"; `knn.knn_predict`), and writes
    `logs["knn_top1"]` (percent), plus `logs["knn_top5"]` when there are more than 5 classes.
    Other epochs carry no such key, as Keras does for `validation_freq` (`history.HistoryLogger`
    keeps the columns of such logs; Keras's `CSVLogger` fixes them at its first epoch). Epoch 1
    is evaluated so that a broken pipeline shows within one epoch. Which epochs are evaluated
    depends only on their numbers, so a resumed run evaluates the epochs an uninterrupted one
    does.

    Args:
        train_data: labelled train batches `(images, labels)`: a `tf.data.Dataset`, any
            iterable of array pairs or one pair of arrays (see `knn.extract_features`), with
            evaluation preprocessing (no augmentation; normalised as the training views).
        val_data: labelled validation batches, in the same forms.
        every: evaluate every this many epochs.
        k: neighbours per query (clamped to the train set size).
        temperature: vote temperature.
        num_classes: number of classes; None infers `max label + 1` at each evaluation.
        batch_size: batch size when the data are array pairs.
        progress_every_s: show feature-extraction progress at this interval (None: silent).
        epochs: the epochs of the whole run, whose last is evaluated (default: `fit`'s
            `epochs`; give it when a run is trained in several `fit` calls).

    An epoch cut short by `model.stop_training` set during the epoch (an interrupt, a NaN
    loss) is not evaluated.

    Attributes:
        history: list of `(epoch, knn_top1)`, epochs counted from 1.

    Example:
        >>> monitor = KNNMonitor((train_images, train_labels), (val_images, val_labels), every=5)
        >>> model.fit(views, epochs=100, callbacks=[monitor, keras.callbacks.CSVLogger(path)])
        >>> monitor.history[-1]
        (100, 87.3)
    """

    def __init__(
        self,
        train_data,
        val_data,
        every=1,
        k=200,
        temperature=0.2,
        num_classes=None,
        batch_size=256,
        progress_every_s=None,
        epochs=None,
    ):
        super().__init__()
        if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
            raise ValueError(f"`every` must be a positive int. Received: every={every!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"`k` must be a positive int. Received: k={k!r}")
        if not temperature > 0:
            raise ValueError(
                f"`temperature` must be positive. Received: temperature={temperature!r}"
            )
        self.train_data = train_data
        self.val_data = val_data
        self.every = every
        self.k = k
        self.temperature = temperature
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.progress_every_s = progress_every_s
        self.epochs = epochs
        self.history = []

    def on_train_begin(self, logs=None):
        _backbone_of(self.model, "KNNMonitor")  # fail before the first epoch, not after it

    def evaluate(self):
        """Runs the kNN evaluation now; returns `{"knn_top1": ...}` (plus `"knn_top5"`)."""
        backbone = _backbone_of(self.model, "KNNMonitor")
        return knn.backbone_knn_accuracy(
            backbone,
            self.train_data,
            self.val_data,
            self.num_classes,
            self.k,
            self.temperature,
            self.batch_size,
            self.progress_every_s,
        )

    def on_epoch_end(self, epoch, logs=None):
        if not self.epoch_complete():
            return  # cut short: the user is waiting for the interrupt to take effect
        number = epoch + 1
        last = number == (self.epochs or (self.params or {}).get("epochs"))
        if not (number == 1 or number % self.every == 0 or last):
            return
        result = self.evaluate()
        if logs is not None:
            logs.update(result)
        self.history.append((number, result["knn_top1"]))


class CollapseMonitor(EpochSteps):
    """Warns once when the SimSiam output collapses (paper Sec. 4.1, Fig. 2).

    The signal is the paper's: the per-channel std of z/||z|| during training
    (`losses.output_std`), about 1/sqrt(dim) when the outputs spread over the sphere (0.0221 at
    dim 2048), lower when they collapse towards one vector. `SimSiam` logs it as `z_std` every
    step; at every epoch end this monitor reads its epoch mean from `logs` and, when it has
    stayed below `threshold / sqrt(dim)` for `patience` consecutive epochs, emits one
    `CollapseWarning` that names the likely causes and sets `collapsed` and `collapse_epoch`.
    One warning per monitor instance, across `fit` calls. An epoch cut short (an interrupt, a
    NaN loss) is not counted.

    With `probe_images` it also logs, from a fixed probe batch in inference mode,
    `logs["probe_z_std"]` (the same statistic), and the effective rank
    (`losses.effective_rank`, RankMe) of the backbone features, `logs["feature_rank"]`, and of
    z, `logs["z_rank"]`: the spectrum shows *partial* dimensional collapse (a few directions
    carry the variance; Li et al., 2022), which z_std misses. `probe_z_std` is only reported,
    not used to decide: the final BN's moving statistics re-scale whatever variation is left,
    and it was measured to swing with the CPU's kernels (oneDNN on or off) where the
    training-time value did not. With `min_rank`, a second warning (once) reports the feature
    rank staying below it for `patience` epochs.

    Why `threshold=0.6` and `patience=3`, in units of 1/sqrt(dim), measured on the digits run
    of `tests/test_collapse.py` (ResNet-18 width 0.25, 16 px, dim 128, 16 epochs of 8 steps),
    seeds 0-2 with `TF_ENABLE_ONEDNN_OPTS=0` and `=1`: with stop-gradient the training value
    stayed between 0.91 and 1.00 in every epoch of every run; without it (loss -0.85 to -0.93)
    it fell below 0.6 by epoch 4-7 with short bounces above, and averaged 0.36-0.50 over the
    last 4 epochs. The inference-mode probe value of the collapsing runs swung between 0.07
    and 0.99 from epoch to epoch, and depended on the kernel path.

    Args:
        probe_images: optional fixed batch of preprocessed images `[N, H, W, 3]` whose
            inference-mode z std and feature / z ranks are logged (a few hundred images; the
            ranks are at most N).
        threshold: warn below `threshold / sqrt(dim)`.
        patience: consecutive epochs below the threshold before warning.
        batch_size: probe images per forward pass.
        min_rank: optional; warn once when the probe's feature rank stays below this for
            `patience` epochs (needs `probe_images`).

    Attributes:
        collapsed: True once the warning has been emitted.
        collapse_epoch: the epoch (counted from 1) of the warning, else None.
        history: list of `(epoch, z_std)`, epochs counted from 1.
        probe_history: list of `(epoch, probe_z_std)` when there is a probe.
        rank_history: list of `(epoch, feature_rank, z_rank)` when there is a probe.
        rank_collapsed: True once the rank warning has been emitted.

    Example:
        >>> monitor = CollapseMonitor()
        >>> model.fit(views, epochs=100, callbacks=[monitor])
        >>> monitor.collapsed
        False
    """

    def __init__(self, probe_images=None, threshold=0.6, patience=3, batch_size=256, min_rank=None):
        super().__init__()
        if probe_images is not None:
            probe_images = np.asarray(keras.ops.convert_to_numpy(probe_images))
            if probe_images.ndim != 4 or len(probe_images) < 2:
                raise ValueError(
                    "`probe_images` must be a batch of at least 2 images [N, H, W, C]. "
                    f"Received shape {probe_images.shape}"
                )
        if not threshold > 0:
            raise ValueError(f"`threshold` must be positive. Received: threshold={threshold!r}")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience <= 0:
            raise ValueError(f"`patience` must be a positive int. Received: patience={patience!r}")
        if min_rank is not None and (probe_images is None or not min_rank >= 1):
            raise ValueError(
                "`min_rank` needs `probe_images` and must be at least 1. Received: "
                f"min_rank={min_rank!r}, probe_images given: {probe_images is not None}"
            )
        self.probe_images = probe_images
        self.threshold = threshold
        self.patience = patience
        self.batch_size = batch_size
        self.collapsed = False
        self.collapse_epoch = None
        self.history = []
        self.probe_history = []
        self.min_rank = min_rank
        self.rank_collapsed = False
        self.rank_history = []
        self._epochs_below = 0
        self._epochs_low_rank = 0

    def probe_embeddings(self):
        """`(features, z)` of the probe batch in inference mode, as NumPy arrays."""
        backbone = _backbone_of(self.model, "CollapseMonitor")
        projector = getattr(self.model, "projector", None)
        if not isinstance(projector, keras.Model):
            raise ValueError(
                "CollapseMonitor needs a model with a `projector` (a keras.Model), such as "
                f"`SimSiam`. Received: {type(self.model).__name__}"
            )
        features, z = [], []
        features_of, z_of = distribute.local_predict(backbone), distribute.local_predict(projector)
        for start in range(0, len(self.probe_images), self.batch_size):
            f = features_of(self.probe_images[start : start + self.batch_size])
            features.append(np.asarray(keras.ops.convert_to_numpy(f)))
            z.append(np.asarray(keras.ops.convert_to_numpy(z_of(f))))
        return np.concatenate(features), np.concatenate(z)

    def z_std_of(self, logs):
        """`(z_std, dim)`: the epoch's training-time z std from `logs` and the output dim."""
        if logs is None or "z_std" not in logs:
            raise ValueError(
                "CollapseMonitor reads `z_std` from the epoch logs, as `SimSiam` logs it; "
                f"these logs have none: {sorted(logs or {})}"
            )
        dim = getattr(self.model, "dim", None)
        if not isinstance(dim, int):
            raise ValueError("CollapseMonitor needs a model with an int `dim`, such as `SimSiam`.")
        return float(np.mean(keras.ops.convert_to_numpy(logs["z_std"]))), dim

    def on_epoch_end(self, epoch, logs=None):
        if not self.epoch_complete():
            return
        std, dim = self.z_std_of(logs)
        if self.probe_images is not None:
            features, z = self.probe_embeddings()
            probe_std = float(keras.ops.convert_to_numpy(losses.output_std(z)))
            ranks = [
                float(keras.ops.convert_to_numpy(losses.effective_rank(x))) for x in (features, z)
            ]
            logs["probe_z_std"], logs["feature_rank"], logs["z_rank"] = probe_std, *ranks
            self.probe_history.append((epoch + 1, probe_std))
            self.rank_history.append((epoch + 1, *ranks))
            self._check_rank(epoch, ranks[0], features.shape[-1])
        self.history.append((epoch + 1, std))
        healthy = 1.0 / math.sqrt(dim)
        self._epochs_below = self._epochs_below + 1 if std < self.threshold * healthy else 0
        if self._epochs_below < self.patience or self.collapsed:
            return
        self.collapsed = True
        self.collapse_epoch = epoch + 1
        warnings.warn(
            f"SimSiam output has collapsed: at epoch {epoch + 1} the std of z/||z|| is "
            f"{std:.2e} and has been below {self.threshold} x 1/sqrt(dim) = "
            f"{self.threshold * healthy:.2e} for {self._epochs_below} epochs (healthy: about "
            f"1/sqrt({dim}) = {healthy:.4f}; paper Sec. 4.1, Fig. 2). The encoder is mapping "
            "every image towards one vector; a fully collapsed encoder gives chance-level kNN "
            "and linear accuracy. Likely causes: (1) the learning rate is too high "
            "(check base_lr and its batch/256 scaling); (2) the augmentation is too weak (both "
            "views nearly the same: check crop scale, colour jitter, grayscale, blur); (3) the "
            "stop-gradient is off (--nostop_gradient / SimSiam(stop_gradient=False), which "
            "collapses by design). Look at the logged `loss` (near -1 together with a small "
            "z_std means collapse), `z_std`, `knn_top1`, `lr` and the "
            "augmentation settings of the run config.",
            CollapseWarning,
            stacklevel=1,  # point at this monitor: the caller is Keras's callback loop
        )

    def _check_rank(self, epoch, rank, channels):
        if self.min_rank is None:
            return
        self._epochs_low_rank = self._epochs_low_rank + 1 if rank < self.min_rank else 0
        if self._epochs_low_rank < self.patience or self.rank_collapsed:
            return
        self.rank_collapsed = True
        warnings.warn(
            f"SimSiam features show dimensional collapse: at epoch {epoch + 1} the effective "
            f"rank of the probe's backbone features is {rank:.1f} of {channels} channels and "
            f"{len(self.probe_images)} images, below min_rank={self.min_rank} for "
            f"{self._epochs_low_rank} epochs (Li et al., 2022: partial collapse, a model small "
            "for its data). A few directions carry the features; in RankMe's and Li et al.'s "
            "measurements downstream accuracy falls with this rank. Likely causes: a backbone "
            "too narrow for the dataset (--width / build_resnet(width=...)), too high a "
            "learning rate or weight decay. Look at `feature_rank`, `z_rank` and `knn_top1`.",
            CollapseWarning,
            stacklevel=1,
        )


class TrainingProgress(keras.callbacks.Callback):
    """Progress within each epoch and one line per epoch (`report.Progress`).

    Within an epoch: steps, pairs/s, ETA of the epoch, loss and z_std, rewritten in place on a
    terminal, else one line every `every_s` seconds. At each epoch end: one line with every
    number in the epoch logs (put it after the monitors in `callbacks` to see theirs); its
    rate and time are those of the training steps, without the monitors' passes.

    Args:
        epochs: epochs of the whole run.
        steps_per_epoch: steps in a whole epoch.
        batch_size: images per step (pairs/s = steps/s x batch size).
        every_s: seconds between lines when not on a terminal.
        initial_step: the global step of a resumed run's first step.
        stream: where to write (default: stdout).
        shown: the logged numbers shown within an epoch.
        unit: the rate's unit (steps x batch size per second).
    """

    def __init__(
        self,
        epochs,
        steps_per_epoch,
        batch_size,
        every_s=30.0,
        initial_step=0,
        stream=None,
        shown=("loss", "z_std", "lr"),
        unit="pairs/s",
    ):
        super().__init__()
        self.shown = shown
        self.unit = unit
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.every_s = every_s
        self.stream = stream
        self.in_epoch = initial_step % steps_per_epoch
        self.progress = None
        self._epoch_start = 0  # the step within the epoch this process started it at
        self._steps_ended = None  # when the last training step ended

    def on_epoch_begin(self, epoch, logs=None):
        self.progress = report.Progress(
            f"epoch {epoch + 1}/{self.epochs}",
            self.steps_per_epoch,
            self.unit,
            self.batch_size,
            self.every_s,
            self.stream,
        )
        self._epoch_start = self.in_epoch

    def on_train_batch_end(self, batch, logs=None):
        self.in_epoch += 1
        self._steps_ended = time.monotonic()
        if not self.progress.due():  # the common case: no device-to-host copies every step
            return
        shown = {k: v for k, v in (logs or {}).items() if k in self.shown}
        self.progress.update(self.in_epoch, numbers(shown), self.in_epoch - self._epoch_start)

    def on_epoch_end(self, epoch, logs=None):
        ran = self.in_epoch - self._epoch_start
        until = self._steps_ended if ran else None
        self.progress.done(self.in_epoch, numbers(logs), ran, until)
        if self.in_epoch >= self.steps_per_epoch:
            self.in_epoch = 0
