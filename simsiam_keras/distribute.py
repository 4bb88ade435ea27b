"""Choosing the distribution per backend, and the few places where multi-worker training differs.

`make_strategy(name)` maps `--strategy` to what the active backend offers:

- `auto`: TensorFlow, MirroredStrategy over the local GPUs when there are 2+, else one device;
  JAX, DataParallel over the local devices when there are 2+; PyTorch, one device.
- `one_device`: one device on every backend.
- `mirrored`: TensorFlow, MirroredStrategy (SyncBN across replicas); JAX, DataParallel;
  PyTorch, an error.
- `multi_worker`: TensorFlow, MultiWorkerMirroredStrategy from `TF_CONFIG`; elsewhere an error.

Multi-worker training (TF backend) needs two workarounds of upstream bugs, reproduced on
keras 3.15 / TF 2.21 with two localhost workers (tests/test_distributed.py): `SimSiam`
reshapes its logs and skips Keras's symbolic build (`workarounds.py`), and inference for the
monitors goes through `local_predict`, because `predict_on_batch` under
MultiWorkerMirroredStrategy gathers every worker's outputs (8 images in, 16 rows out with two
workers) and is a collective that every worker must join, and under a one-worker
MirroredStrategy runs the whole batch on every replica.
"""

import contextlib
import json
import os
import weakref

import keras
import numpy as np

from simsiam_keras.errors import ConfigError
from simsiam_keras.names import STRATEGIES

_LOCAL_CALLS = weakref.WeakKeyDictionary()


def make_strategy(name):
    """The distribution for `--strategy` on the active backend (list above).

    Under TensorFlow a `tf.distribute` strategy is returned, for the caller to build the model
    in its scope; under JAX, DataParallel is installed globally with
    `keras.distribution.set_distribution` and the strategy returned is None.
    MultiWorkerMirroredStrategy must be created before TensorFlow runs any op ("Collective ops
    must be configured at program startup"): call this first.

    Args:
        name: one of `STRATEGIES`.

    Returns:
        `(strategy or None, number of replicas in sync)`.

    Raises:
        ConfigError: for an unknown name or one the backend cannot do.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"{{}} must be one of {list(STRATEGIES)}; got {name!r}.", "strategy")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if name == "multi_worker":
            _check_tf_config(os.environ.get("TF_CONFIG"))
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            return strategy, strategy.num_replicas_in_sync
        gpus = tf.config.list_logical_devices("GPU")
        if name == "one_device" or (name == "auto" and len(gpus) < 2):
            return None, 1
        strategy = tf.distribute.MirroredStrategy()
        return strategy, strategy.num_replicas_in_sync
    if backend == "jax":
        if name == "multi_worker":
            raise ConfigError(
                "{}=multi_worker is TensorFlow-only; use KERAS_BACKEND=tensorflow.", "strategy"
            )
        devices = keras.distribution.list_devices()
        if name == "one_device" or len(devices) < 2:
            return None, 1
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return None, len(devices)
    if name in ("mirrored", "multi_worker"):
        raise ConfigError(
            f"{{}}={name} is not available on the {backend} backend, which trains on "
            "one device here; use KERAS_BACKEND=tensorflow (mirrored, multi_worker) or jax "
            "(mirrored).",
            "strategy",
        )
    return None, 1


def start(strategy_name, mixed_precision, batch_size):
    """The precision policy and the distribution of a run, before its model is built.

    Args:
        strategy_name: `--strategy` (one of `STRATEGIES`).
        mixed_precision: "none", "float16" or "bfloat16" (`--mixed_precision`): sets Keras's
            global policy, `mixed_<value>` or float32 for "none" (so that a run after a mixed
            one in the same process computes in float32 again).
        batch_size: the global batch size, which must split evenly over the replicas.

    Returns:
        `(strategy or None, replicas)`, as `make_strategy`.

    Raises:
        ConfigError: a strategy the backend cannot do, or a batch that does not split.
    """
    policy = "float32" if mixed_precision == "none" else f"mixed_{mixed_precision}"
    keras.mixed_precision.set_global_policy(policy)
    strategy, replicas = make_strategy(strategy_name)
    if batch_size % replicas:
        raise ConfigError(
            f"{{}} {batch_size} is not divisible by {replicas} replicas.", "batch_size"
        )
    return strategy, replicas


def scope(strategy):
    """`strategy.scope()`, or a context that does nothing when `strategy` is None."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def deterministic_kernels():
    """Makes the backend's kernels deterministic: the same command gives the same figures.

    TensorFlow's CPU kernels (oneDNN's among them) may split reductions over threads in a
    different order from run to run; over hundreds of steps those last-bit differences grow
    into different kNN figures. `enable_op_determinism` picks deterministic kernels instead.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def per_worker_dataset(strategy, batch_size, make):
    """The training batches for `strategy`: `make(batch_size, input_context)` once or per worker.

    Under multi-worker training each worker builds its own pipeline, which reads its own
    stride of the data in batches of `batch_size / replicas`
    (`distribute_datasets_from_function`); otherwise one pipeline of global batches
    (`input_context` None), which a MirroredStrategy splits over its replicas.
    """
    if not is_multi_worker(strategy):
        return make(batch_size, None)
    return strategy.distribute_datasets_from_function(
        lambda context: make(context.get_per_replica_batch_size(batch_size), context)
    )


def check_same_start(strategy, start_step):
    """Stops every worker when they would resume from different steps (no shared workdir).

    A collective: under multi-worker training every worker calls it, before restoring.
    """
    import tensorflow as tf

    with strategy.scope():
        steps = strategy.run(lambda: tf.constant([start_step], tf.int64))
        every = sorted(set(strategy.gather(steps, axis=0).numpy().tolist()))
    if len(every) > 1:
        raise ConfigError(
            f"The workers would resume from different steps {every}: {{}} must "
            "be the same path on storage that every worker reads (only the chief writes).",
            "workdir",
        )


def _check_tf_config(text):
    """Raises ValueError naming what is wrong with `TF_CONFIG` for multi-worker training."""
    where = "(docs/pretraining.md, 'Several machines')"
    if not text:
        raise ConfigError(
            "{}=multi_worker reads the cluster from the TF_CONFIG environment "
            f"variable, which is not set {where}.",
            "strategy",
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}) {where}.") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' and a 'task' object {where}.")
    members = cluster.get(task.get("type"))
    index = task.get("index", 0)
    if (
        not isinstance(members, list)
        or not isinstance(index, int)
        or not (0 <= index < len(members))
    ):
        raise ValueError(
            f"TF_CONFIG's task {task!r} is not one of its cluster's members "
            f"{sorted(cluster)} {where}."
        )


def is_chief():
    """True unless `TF_CONFIG` names this process a worker other than the chief.

    Only the chief writes checkpoints, logs, summaries and exports. Without a `chief` task in
    the cluster, worker 0 is the chief (TensorFlow's convention).
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if not task or task.get("type") == "chief":
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not has_chief


def is_multi_worker(strategy):
    """True for a TF MultiWorkerMirroredStrategy that spans several workers."""
    if strategy is None or keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", ())) + len(cluster.get("worker", ())) > 1


def local_predict(model):
    """A function `images -> outputs` running `model` in inference mode, each image once.

    - No strategy, or one replica: `predict_on_batch` (compiled, no autograd).
    - Multi-worker training: `predict_on_batch` would gather all workers' outputs and is a
      collective; instead a `tf.function` of the plain call, which reads the local copy of
      each variable and starts no collective (this worker's images only).
    - One worker with several replicas (MirroredStrategy): `predict_on_batch` of a plain array
      runs the whole batch on every replica and returns the copies (keras 3.15: 4 images in,
      8 rows out on 2 replicas); instead each batch is split over the replicas.

    Inference is per image, so outputs do not depend on the split (BN in inference mode).
    """
    strategy = getattr(model, "_distribute_strategy", None)
    replicas = getattr(strategy, "num_replicas_in_sync", 1)
    if strategy is None or (replicas == 1 and not is_multi_worker(strategy)):
        return model.predict_on_batch
    import tensorflow as tf

    call = _LOCAL_CALLS.get(model)
    if call is None:  # one traced function per model, reused by every evaluation
        ref = weakref.ref(model)  # the cache must not keep the model alive
        if is_multi_worker(strategy):
            call = tf.function(lambda images: ref()(images, training=False), reduce_retracing=True)
        else:

            def call(values):
                return strategy.run(lambda images: ref()(images, training=False), args=(values,))

            call = tf.function(call, reduce_retracing=True)
        _LOCAL_CALLS[model] = call
    if is_multi_worker(strategy):
        return lambda images: call(tf.convert_to_tensor(images, tf.float32))

    def split_over_replicas(images):
        images = np.asarray(images, np.float32)
        # Equal parts, the last image repeated to fill them: a replica given no image fails
        # (TF 2.21 CPU), and equal shapes trace once. The copies are dropped.
        padding = -len(images) % replicas
        images = np.concatenate([images, np.repeat(images[-1:], padding, axis=0)])
        parts = np.split(images, replicas)
        values = strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group]
        )
        outputs = strategy.experimental_local_results(call(values))
        return np.concatenate([np.asarray(output) for output in outputs])[: len(images) - padding]

    return split_over_replicas
