"""Checkpoints every N steps that survive a kill at any moment, and resuming from them.

A checkpoint is a directory `WORKDIR/checkpoints/ckpt-<step>/` holding `model.weights.npz` (every
model variable, BN statistics included), `optimizer.npz` (every optimizer variable: iteration,
momentum buffers), `metrics.npz` (the running means of the epoch so far) and `state.json`
(global step, epoch, step within the epoch). It is written
under a temporary name and renamed into place; then the `latest` file, the pointer, is replaced
atomically (`os.replace`). A kill during a write leaves a stray temporary directory and the
previous `latest`: the last usable checkpoint is never touched. Older checkpoints beyond `keep`
are deleted after the pointer moves. NumPy files keep checkpoints backend-neutral.

A model that names `checkpoint_variables` is saved with those only: a linear classifier keeps
its linear layer and not the frozen backbone, which the run reloads from `--pretrained`.
`fit_from` runs `model.fit` from a checkpointed step to the end, as a resumed run must.
"""

import contextlib
import json
import os
import shutil
import threading

import keras
import numpy as np

from simsiam_keras import signals

LATEST = "latest"


def _to_numpy(variables):
    return {f"{i:05d}": np.asarray(keras.ops.convert_to_numpy(v)) for i, v in enumerate(variables)}


def model_variables(model):
    """The variables of `model` a checkpoint holds: `model.checkpoint_variables`, else all."""
    return getattr(model, "checkpoint_variables", None) or model.variables


def save(directory, model, step, epoch, step_in_epoch, keep=2, running_metrics=True):
    """Writes checkpoint `step` atomically under `directory`; returns its path.

    `running_metrics=False` leaves out `metrics.npz`: under multi-worker training reading the
    metrics is a collective, which the chief alone cannot run.
    """
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"ckpt-{step}")
    tmp = os.path.join(directory, f".tmp-ckpt-{step}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.savez(os.path.join(tmp, "model.weights.npz"), **_to_numpy(model_variables(model)))
    np.savez(os.path.join(tmp, "optimizer.npz"), **_to_numpy(model.optimizer.variables))
    if running_metrics:
        np.savez(os.path.join(tmp, "metrics.npz"), **_to_numpy(model.metrics_variables))
    state = {"step": int(step), "epoch": int(epoch), "step_in_epoch": int(step_in_epoch)}
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
    for name in os.listdir(tmp):  # data on disk before the rename makes it visible
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = os.path.join(directory, f".{LATEST}.tmp")
    with open(pointer, "w") as f:
        f.write(os.path.basename(final))
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(directory, LATEST))
    _prune(directory, keep)
    return final


def _prune(directory, keep):
    steps = sorted(int(n.split("-")[1]) for n in os.listdir(directory) if n.startswith("ckpt-"))
    for step in steps[:-keep]:
        shutil.rmtree(os.path.join(directory, f"ckpt-{step}"), ignore_errors=True)
    for name in os.listdir(directory):
        if name.startswith(".tmp-ckpt-") and not name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)  # a killed write


def latest(directory):
    """The path of the last complete checkpoint under `directory`, or None."""
    try:
        with open(os.path.join(directory, LATEST)) as f:
            path = os.path.join(directory, f.read().strip())
    except OSError:
        return None
    return path if os.path.exists(os.path.join(path, "state.json")) else None


def read_state(path):
    """The `state.json` of checkpoint `path`: `{"step", "epoch", "step_in_epoch"}`."""
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def restore(path, model):
    """Loads checkpoint `path` into a built, compiled `model`; returns its state dict."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for variables, name in (
        (model_variables(model), "model.weights.npz"),
        (model.optimizer.variables, "optimizer.npz"),
    ):
        with np.load(os.path.join(path, name)) as arrays:
            if len(arrays.files) != len(variables):
                raise ValueError(
                    f"Checkpoint {path!r} holds {len(arrays.files)} {name} arrays; the model has "
                    f"{len(variables)}: it was written by a different model or flags."
                )
            for key, variable in zip(sorted(arrays.files), variables):
                if tuple(arrays[key].shape) != tuple(variable.shape):
                    raise ValueError(
                        f"Checkpoint {path!r}: {variable.path} has shape {arrays[key].shape}, "
                        f"the model {tuple(variable.shape)}: different model or flags."
                    )
                variable.assign(arrays[key])
    _restore_metrics(path, model)
    return read_state(path)


def _restore_metrics(path, model):
    """The running metrics of the epoch the checkpoint is inside, where they match the model.

    Absent from checkpoints of earlier versions, and not comparable when the model builds its
    compiled metrics only at its first step: then the resumed epoch's numbers are those of
    its remaining steps.
    """
    file = os.path.join(path, "metrics.npz")
    if not os.path.exists(file):  # also under multi-worker training (`save`)
        return
    variables = model.metrics_variables
    with np.load(file) as arrays:
        keys = sorted(arrays.files)
        if len(keys) != len(variables) or any(
            tuple(arrays[k].shape) != tuple(v.shape) for k, v in zip(keys, variables)
        ):
            return
        for key, variable in zip(keys, variables):
            variable.assign(arrays[key])


class StepCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint every `every_steps` optimizer steps and at every epoch end.

    The save at an epoch's last step waits for `on_epoch_end`: put this callback last in
    `callbacks`, after the monitors and the `history.HistoryLogger`, so that a checkpoint at
    the end of an epoch is written only once that epoch's numbers (its kNN pass included) are
    on disk. A kill before then resumes inside the epoch and computes them again.

    A run resumed inside an epoch restores the epoch's running metrics (the loss and z_std
    means, `metrics.npz` of the checkpoint) after `fit` resets them, so the epoch's logged
    numbers are those of all its steps, as in an uninterrupted run.

    Stops training with a clear message, keeping the last good checkpoint, when the loss is NaN
    or infinite (the step is not saved). After `request_stop(signum)` (a signal handler calls
    it) it saves at the end of the current step and stops training; `stop_signal` tells why.

    Args:
        directory: checkpoint directory.
        every_steps: steps between checkpoints.
        steps_per_epoch: steps in one epoch (for the position in the epoch).
        initial_step: the global step training starts from (after a resume).
        keep: checkpoints kept.
        save: whether this process writes (only the chief does under multi-worker training).
        running_metrics: keep the epoch's running metrics in the checkpoints (not under
            multi-worker training, where a resumed epoch's numbers are those of its remaining
            steps).
    """

    def __init__(
        self,
        directory,
        every_steps,
        steps_per_epoch,
        initial_step=0,
        keep=2,
        save=True,
        running_metrics=True,
    ):
        super().__init__()
        self.directory = directory
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.step = initial_step
        self.keep = keep
        self.save_enabled = save
        self.running_metrics = running_metrics
        self.nan_message = None
        self.stop_signal = None
        self._saved_step = None
        self._carried_metrics = None

    def on_train_begin(self, logs=None):
        # A resumed epoch: the restored running metrics, which `fit` resets at the epoch start.
        if self.step % self.steps_per_epoch and self.running_metrics:
            self._carried_metrics = [
                (v, keras.ops.convert_to_numpy(v)) for v in self.model.metrics_variables
            ]

    def on_epoch_begin(self, epoch, logs=None):
        for variable, value in self._carried_metrics or ():
            variable.assign(value)
        self._carried_metrics = None

    def request_stop(self, signum):
        """Save after the current step and stop training (safe to call from a signal handler)."""
        self.stop_signal = signum
        if self.model is not None:
            self.model.stop_training = True

    def _save(self):
        if self.save_enabled and self._saved_step != self.step:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            save(
                self.directory,
                self.model,
                self.step,
                epoch,
                in_epoch,
                self.keep,
                self.running_metrics,
            )
        self._saved_step = self.step

    def on_train_batch_end(self, batch, logs=None):
        loss = float(keras.ops.convert_to_numpy(logs["loss"])) if logs and "loss" in logs else 0.0
        if not np.isfinite(loss):
            self.nan_message = (
                f"The loss became {loss} at step {self.step + 1}; training stopped. The last good "
                f"checkpoint is {latest(self.directory)!r}. Lower the learning rate or check the "
                "data (and, with float16, the loss scaling)."
            )
            self.model.stop_training = True
            return
        self.step += 1
        at_epoch_end = self.step % self.steps_per_epoch == 0  # saved by on_epoch_end
        if (self.step % self.every_steps == 0 or self.stop_signal is not None) and not at_epoch_end:
            self._save()
        if self.stop_signal is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_message is None:
            self._save()


def fit_from(
    model, dataset_from, epochs, steps_per_epoch, ckpt, callbacks, graceful=True, **fit_kwargs
):
    """`model.fit` from `ckpt.step` (a restored checkpoint's step) to the end of `epochs`.

    A run resumed mid-epoch first finishes that epoch (`fit` with the remaining steps), then
    trains the remaining epochs; `dataset_from(step)` must give the batches from global step
    `step` on (the pipelines' `start_batch`), so the resumed run sees exactly the batches the
    uninterrupted one would have. Stops early on a NaN loss or, when `graceful`, on SIGINT /
    SIGTERM after saving (`StepCheckpoint.request_stop`; the caller raises `errors.Interrupted`).

    Args:
        model: a compiled model.
        dataset_from: `step -> dataset` of repeated training batches.
        epochs: epochs of the whole run.
        steps_per_epoch: steps in one epoch.
        ckpt: the run's `StepCheckpoint`, also in `callbacks`.
        callbacks: every callback of the run.
        graceful: catch SIGINT / SIGTERM (only from the main thread, and not under
            multi-worker training: workers signalled at different moments would stop after
            different steps, and the one still training would wait in a collective for ever;
            there a signal ends the process and the run resumes from the last checkpoint).
        **fit_kwargs: more `fit` arguments (`validation_data`, say).

    Returns:
        This process's history: `{metric: [per-epoch values]}`.
    """
    history, step, total = {}, ckpt.step, epochs * steps_per_epoch
    graceful = graceful and threading.current_thread() is threading.main_thread()
    stopping = signals.stop_on_signals(ckpt.request_stop) if graceful else contextlib.nullcontext()
    with stopping:
        while step < total and ckpt.nan_message is None and ckpt.stop_signal is None:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            logs = model.fit(
                dataset_from(step),
                initial_epoch=epoch,
                epochs=epoch + 1 if in_epoch else epochs,
                steps_per_epoch=steps_per_epoch - in_epoch if in_epoch else steps_per_epoch,
                callbacks=callbacks,
                verbose=0,
                shuffle=False,
                **fit_kwargs,
            ).history
            for key, values in logs.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            step = ckpt.step
    return history
