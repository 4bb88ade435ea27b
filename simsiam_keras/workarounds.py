"""Workarounds of upstream bugs, and every use of a private Keras name, each saying why.

The two bugs are in `tf.distribute.MultiWorkerMirroredStrategy.reduce` across several workers,
and both hit Keras's TensorFlow trainer. tests/distributed_run.py reproduces each one on two
localhost workers (the two-worker test of tests/test_distributed.py), and that test fails once
an upstream release fixes it, saying which workaround can then be removed. Where no public API
does the job, the private Keras name is used here only, and tests/test_workarounds.py fails
when Keras renames it: `_maybe_symbolic_build` (`SkipSymbolicBuild`, `LocalSymbolicBuild`) and
TensorBoard's `_global_train_batch` (`GlobalStepTensorBoard`).
"""

import keras

from simsiam_keras import distribute


def multi_worker_logs(logs, strategy):
    """`logs` with every scalar given shape [1] under multi-worker training.

    Keras reduces each log over the workers with `strategy.reduce("MEAN", value, axis=0)`,
    which fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388). A [1] tensor reduces to the same mean.
    """
    if not distribute.is_multi_worker(strategy):
        return logs
    import tensorflow as tf

    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def skip_symbolic_build(model):
    """Whether Keras's first-batch symbolic build must be skipped for `model`.

    Keras's TensorFlow trainer reduces the first batch with `strategy.reduce("MEAN", batch,
    axis=None)` to build the model symbolically; under MultiWorkerMirroredStrategy that fails
    on any nested batch ("Attempt to convert a value (PerReplica...) to a Tensor";
    keras-team/keras#20585). A model built in `__init__`, with no compiled loss or metrics,
    has nothing to build, so `SimSiam` skips it there.
    """
    return distribute.is_multi_worker(getattr(model, "distribute_strategy", None))


def first_replica_batch(model, iterator):
    """The next batch of Keras's epoch `iterator`, this worker's first replica's part of it.

    For a model whose compiled loss and metrics must still be built under multi-worker
    training: Keras would reduce the whole distributed batch to build them and fail
    (keras-team/keras#20585); the shapes of one replica's part build them just as well.
    """
    import tensorflow as tf

    for _, _, batches in iterator:
        batch = next(batches)
        break
    local = model.distribute_strategy.experimental_local_results

    def first(value):
        return local(value)[0] if isinstance(value, tf.distribute.DistributedValues) else value

    return tf.nest.map_structure(first, batch)


def tensorflow_logs(logs):
    """`multi_worker_logs` of a TensorFlow step's `logs` under the current strategy."""
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    return multi_worker_logs(logs, tf.distribute.get_strategy())


class SkipSymbolicBuild:
    """A `keras.Model` mixin: no symbolic build under multi-worker training (#20585).

    For a model built in `__init__` with no compiled loss or metrics (`SimSiam`): it has nothing
    to build, and Keras's build would fail (`skip_symbolic_build`). Overrides Keras's private
    `Trainer._maybe_symbolic_build`, which `fit` calls with the epoch iterator.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if skip_symbolic_build(self):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class LocalSymbolicBuild:
    """A `keras.Model` mixin: the symbolic build from one replica's batch under multi-worker.

    For a model whose compiled loss and metrics still need building (`LinearClassifier`):
    Keras would reduce the whole distributed batch and fail (keras-team/keras#20585);
    `first_replica_batch` builds them from this worker's first replica's part instead.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and skip_symbolic_build(self):
            data_batch = first_replica_batch(self, iterator)
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=data_batch)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


class GlobalStepTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard with batch points numbered by the optimiser's step, across resumes.

    Keras restarts its batch count (the private `_global_train_batch`, no public setter) at
    every `fit` call, and a resumed run calls `fit` again: its points would overwrite the
    first ones. SimSiam's `lr` log is dropped from the epoch logs: Keras adds the optimiser's
    `learning_rate`, the same curve.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if k != "lr"})
