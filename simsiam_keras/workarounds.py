"""Workarounds of upstream bugs, each naming the issue it works around.

Both bugs are in `tf.distribute.MultiWorkerMirroredStrategy.reduce` across several workers, and
both hit Keras's TensorFlow trainer. tests/distributed_run.py reproduces each one on two
localhost workers (the two-worker test of tests/test_distributed.py), and that test fails once
an upstream release fixes it, saying which workaround can then be removed.
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
    # `_distribute_strategy`: Keras's private name for the strategy the model was built under.
    return distribute.is_multi_worker(getattr(model, "_distribute_strategy", None))


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
