"""A few SimSiam steps in one of several distributed set-ups, for tests/test_distributed.py.

    python tests/distributed_run.py local INIT.npz OUT_DIR
        three runs in one process, each to OUT_DIR/<run>.npz:
        single    arrays, one device
        mirrored  arrays, MirroredStrategy on 2 logical CPU devices (SyncBN); and
                  OUT_DIR/sync_bn.json, what `synchronized_bn="auto"` resolves to under it
                  (tests/test_sync_bn.py), and OUT_DIR/knn_extraction.json, features
                  extracted over its replicas (tests/test_knn.py)
        pipeline  the real input pipeline (`pretrain.train_dataset`) on the embedded digits,
                  one device, with the kNN and collapse monitors
    python tests/distributed_run.py worker INIT.npz OUT.npz
        the pipeline run under MultiWorkerMirroredStrategy from TF_CONFIG: each worker reads
        its own shard of the digits through `distribute_datasets_from_function`
One MirroredStrategy per process (docs/keras_notes.md, trap 3): the other runs of `local` use
no strategy. Writes INIT.npz (initial weights) when it does not exist, else starts from it.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

MODE = sys.argv[1]
if MODE == "local":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
if MODE == "worker":  # before any TF op: collectives are configured at startup
    from simsiam_keras import distribute  # noqa: E402

    WORKER, _ = distribute.make_strategy("multi_worker")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from simsiam_keras import config, data, monitors, sources  # noqa: E402
from simsiam_keras.apps import pretrain  # noqa: E402

STEPS = 3


def _config():
    return config.PretrainConfig(
        workdir="unused",
        backbone="resnet18_cifar",
        width=0.125,
        image_size=16,
        dim=32,
        pred_dim=8,
        batch_size=16,
        epochs=1,
        base_lr=0.5,
        weight_decay=1e-4,
        deterministic=True,
    )


def _build(config, strategy):
    if strategy is None:
        return pretrain.build_model(config, steps_per_epoch=STEPS)
    with strategy.scope():
        return pretrain.build_model(config, steps_per_epoch=STEPS, distributed=True)


def _init(model, init_path):
    if os.path.exists(init_path):
        with np.load(init_path) as f:
            model.set_weights([f[k] for k in sorted(f.files)])
    else:
        np.savez(init_path, **{f"{i:05d}": w for i, w in enumerate(model.get_weights())})


def _upstream_bugs(strategy):
    """1 for each upstream bug of `simsiam_keras.workarounds` that still happens here, else 0."""
    found = {}
    scalar = strategy.run(lambda: tf.constant(1.0))
    batch = next(
        iter(
            strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensor_slices(((tf.ones([8, 4]), tf.ones([8, 4])),)).batch(4)
            )
        )
    )
    for name, value, axis in (("tf_72388", scalar, 0), ("keras_20585", batch, None)):
        try:
            strategy.reduce("MEAN", value, axis=axis)
            found[name] = np.array(0)
        except ValueError:
            found[name] = np.array(1)
    return found


def run(run_name, strategy, init_path, out_path):
    """One run: `run_name` is "single", "mirrored" (arrays) or "pipeline" (the digits)."""
    keras.utils.set_random_seed(0)
    config = _config()
    callbacks, extra = [], {}
    if run_name in ("single", "mirrored"):
        rng = np.random.default_rng(0)
        x1, x2 = (rng.normal(size=(48, 16, 16, 3)).astype("float32") for _ in range(2))
        dataset = tf.data.Dataset.from_tensor_slices(((x1, x2),)).batch(16)
    else:
        source = sources.embedded_digits("train", config.image_size)
        dataset = pretrain.train_dataset(source, config, strategy, shuffle=False)
        val = sources.embedded_digits("validation", config.image_size)
        knn_data = [data.labeled_dataset(s, 256, config.image_size) for s in (source, val)]
        knn_monitor = monitors.KNNMonitor(*knn_data, k=20)
        probe = next(iter(knn_data[1]))[0]
        collapse = monitors.CollapseMonitor(np.asarray(probe))
        callbacks = [knn_monitor, collapse]
    model = _build(config, strategy)
    _init(model, init_path)
    history = model.fit(dataset, epochs=1, steps_per_epoch=STEPS, callbacks=callbacks, verbose=0)
    if callbacks:
        extra = {
            "knn": np.array(knn_monitor.history[-1][1]),
            "z_std": collapse.probe_history[-1][1],
        }
    if MODE == "worker":
        extra.update(_upstream_bugs(strategy))
    weights = {f"{i:05d}": w for i, w in enumerate(model.get_weights())}
    np.savez(out_path, loss=np.array(history.history["loss"]), **extra, **weights)


if __name__ == "__main__":
    init_path, out = sys.argv[2:]
    if MODE == "local":
        from tests.test_knn import mirrored_extraction
        from tests.test_sync_bn import mirrored_report

        for name, report in (("sync_bn", mirrored_report), ("knn_extraction", mirrored_extraction)):
            with open(os.path.join(out, f"{name}.json"), "w") as f:
                json.dump(report(MIRRORED), f)
        for name, strategy in (("single", None), ("mirrored", MIRRORED), ("pipeline", None)):
            run(name, strategy, init_path, os.path.join(out, f"{name}.npz"))
    else:
        run("pipeline", WORKER, init_path, out)
