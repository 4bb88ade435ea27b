"""The paper's Fig. 2 mechanism on a real (small) ResNet: without stop-gradient SimSiam collapses.

The signal is the paper's: the per-channel std of z/||z|| during training (`z_std`, logged by
`SimSiam` every step), in units of its healthy value 1/sqrt(dim). The ranges this set-up gives
over seeds 0-2 under `TF_ENABLE_ONEDNN_OPTS=0` and `=1` (the CPU kernel paths differ, and 128
steps amplify the last-bit differences) are in docs/quality.md ("Fig. 2"), measured by
`TF_ENABLE_ONEDNN_OPTS=0 python -m tests.test_collapse` (raw:
`benchmarks/results/collapse_test_seeds.jsonl`); the `CollapseMonitor` (defaults) warned once
on every run without stop-gradient and never on the others.

The thresholds below sit between those ranges with a margin on both sides. The inference-mode
probe value (`probe_z_std`) is not asserted: it swings widely on the collapsing side with the
kernel path.
"""

import math
import warnings

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import simsiam_keras as sk
from simsiam_keras import monitors

EPOCHS = 16
DIM = 128
WIDTH = 0.125  # the smallest model that shows both sides with a margin


def _digits(n=512, size=16):
    images = load_digits().images[:n].astype("float32") / 16.0  # [n, 8, 8] in [0, 1]
    images = images.repeat(size // 8, axis=1).repeat(size // 8, axis=2)
    return np.repeat(images[..., None], 3, axis=-1)


def _view(images, rng):
    n, size = images.shape[0], images.shape[1]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ys, xs = rng.integers(0, 5, n), rng.integers(0, 5, n)
    out = np.stack([padded[i, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    out = out * rng.uniform(0.6, 1.4, (n, 1, 1, 1)) + 0.1 * rng.normal(size=out.shape)
    return ((out - 0.5) / 0.25).astype("float32")


def _train(stop_gradient, images, seed=0, epochs=EPOCHS):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    backbone = sk.build_resnet("resnet18_cifar", width=WIDTH, image_size=16)
    model = sk.SimSiam(
        backbone, dim=DIM, pred_dim=32, projector_layers=2, stop_gradient=stop_gradient
    )
    steps = len(images) // 64
    model.compile(
        optimizer=sk.simsiam_optimizer(
            base_lr=0.8, batch_size=64, epochs=10 * epochs, steps_per_epoch=steps, weight_decay=5e-4
        )
    )
    monitor = monitors.CollapseMonitor()  # the defaults a pretraining run uses
    history = {"loss": [], "z_std": []}
    for _ in range(epochs):  # fresh random views every epoch
        x1, x2 = _view(images, rng), _view(images, rng)
        logs = model.fit(
            (x1, x2), batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=[monitor]
        ).history
        history["loss"] += logs["loss"]
        history["z_std"] += [s * math.sqrt(DIM) for s in logs["z_std"]]  # 1 = healthy
    return history, monitor


@pytest.mark.long
def test_removing_stop_gradient_collapses_and_keeping_it_does_not():
    images = _digits()
    sg, monitor_sg = _train(True, images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", monitors.CollapseWarning)
        nosg, monitor_nosg = _train(False, images)
    for name, h in (("stop-grad", sg), ("no stop-grad", nosg)):
        print(f"{name}: loss {np.round(h['loss'], 3)}, z_std x sqrt(dim) {np.round(h['z_std'], 2)}")
    # Fig. 2 left: without stop-gradient the loss heads to its minimum, -1.
    assert np.mean(nosg["loss"][-4:]) < -0.75
    # Fig. 2 middle: its output std collapses; with stop-gradient it stays near 1/sqrt(d).
    assert np.mean(nosg["z_std"][-4:]) < 0.65
    assert min(sg["z_std"]) > 0.85
    # The collapse monitor warns once on the ablation and stays silent on the real recipe.
    assert monitor_nosg.collapsed, monitor_nosg.history
    assert sum(issubclass(w.category, monitors.CollapseWarning) for w in caught) == 1
    assert not monitor_sg.collapsed, monitor_sg.history


if __name__ == "__main__":  # the measurement the docstring quotes: one JSON line per seed
    import json
    import os

    for seed in range(3):
        sg, monitor_sg = _train(True, _digits(), seed=seed)
        nosg, monitor_nosg = _train(False, _digits(), seed=seed)
        print(
            json.dumps(
                {
                    "seed": seed,
                    "width": WIDTH,
                    "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                    "sg_min_z_std": min(sg["z_std"]),
                    "sg_final_loss": sg["loss"][-1],
                    "nosg_z_std_last4": float(np.mean(nosg["z_std"][-4:])),
                    "nosg_loss_last4": float(np.mean(nosg["loss"][-4:])),
                    "monitor_warned": [monitor_sg.collapsed, monitor_nosg.collapsed],
                }
            )
        )
