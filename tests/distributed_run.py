"""A few SimSiam steps on one device or on 2 logical CPU devices (MirroredStrategy, SyncBN).

Run by tests/test_distributed.py, each mode in its own process (KERAS_NOTES trap 3):
    python tests/distributed_run.py MODE INIT.npz OUT.npz     (MODE: single | mirrored)
Writes INIT.npz (initial weights) when it does not exist, else starts from it.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

STRATEGY = None
if sys.argv[1] == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

import keras  # noqa: E402
import numpy as np  # noqa: E402

from simsiam_keras import pretrain  # noqa: E402


def main(mode, init_path, out_path):
    keras.utils.set_random_seed(0)
    config = pretrain.PretrainConfig(
        workdir="unused", backbone="resnet18_cifar", width=0.125, image_size=16, dim=32,
        pred_dim=8, batch_size=16, epochs=1, base_lr=0.5, weight_decay=1e-4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(48, 16, 16, 3)).astype("float32") for _ in range(2))
    dataset = tf.data.Dataset.from_tensor_slices(((x1, x2),)).batch(16)
    if STRATEGY is not None:
        assert STRATEGY.num_replicas_in_sync == 2
        with STRATEGY.scope():
            model = pretrain.build_model(config, steps_per_epoch=3, distributed=True)
    else:
        model = pretrain.build_model(config, steps_per_epoch=3)
    if os.path.exists(init_path):
        with np.load(init_path) as f:
            model.set_weights([f[k] for k in sorted(f.files)])
    else:
        np.savez(init_path, **{f"{i:05d}": w for i, w in enumerate(model.get_weights())})
    history = model.fit(dataset, epochs=1, verbose=0).history
    weights = {f"{i:05d}": w for i, w in enumerate(model.get_weights())}
    np.savez(out_path, loss=np.array(history["loss"]), **weights)


if __name__ == "__main__":
    main(*sys.argv[1:])
