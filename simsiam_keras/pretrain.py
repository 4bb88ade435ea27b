"""A whole SimSiam pretraining run: data, model, optimiser, monitors, checkpoints, export.

`PretrainConfig` keeps the paper's ImageNet recipe as its defaults (ResNet-50, batch 512,
lr 0.05 x batch/256, weight decay 1e-4, 100 epochs, fix_pred_lr); `scripts/pretrain.py` sets the
quickstart's values as its flag defaults. `run(config)` validates everything before any work,
resumes from the workdir's last checkpoint when there is one, and writes into the workdir:
`checkpoints/`, `history.csv`, `tensorboard/`, `model.keras`, `export/backbone` (SavedModel, TF
backend), `summary.json` and `history.png`.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np

from simsiam_keras import backbones, checkpoint, knn, monitors, report
from simsiam_keras.model import SimSiam
from simsiam_keras.optim import simsiam_optimizer

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "float16", "bfloat16")


@dataclasses.dataclass
class PretrainConfig:
    """Everything a run needs. Defaults: the paper's ImageNet recipe (Sec. 4, App. A)."""

    workdir: str
    dataset: str = "imagenet2012"
    data_dir: str | None = None
    train_dir: str | None = None
    val_dir: str | None = None
    backbone: str = "resnet50"
    width: float = 1.0
    image_size: int = 224
    batch_size: int = 512
    epochs: int = 100
    base_lr: float = 0.05
    weight_decay: float = 1e-4
    fix_pred_lr: bool = True
    warmup_epochs: int = 0
    dim: int = 2048
    pred_dim: int = 512
    projector_layers: int | None = None  # None: 2 for resnet18_cifar (App. D), else 3
    blur: bool | None = None  # None: no blur at <= 32 px (CIFAR variant), else blur
    strategy: str = "auto"
    mixed_precision: str = "none"
    seed: int = 0
    stop_gradient: bool = True
    knn_every: int = 1  # epochs; 0 turns the kNN monitor off
    knn_k: int = 200
    checkpoint_every: int = 1000  # steps
    steps_per_epoch: int | None = None  # cap (smoke runs); None: the whole split
    deterministic: bool = False
    export: bool = True
    compare_random_init: bool = False


def validate(config):
    """Raises ValueError with a clear message for any bad value, before any work."""
    c = config
    positive = {
        "image_size": c.image_size,
        "batch_size": c.batch_size,
        "epochs": c.epochs,
        "dim": c.dim,
        "pred_dim": c.pred_dim,
        "checkpoint_every": c.checkpoint_every,
        "knn_k": c.knn_k,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"--{name} must be a positive integer; got {value!r}.")
    for name, value in {"base_lr": c.base_lr, "width": c.width}.items():
        if not value > 0:
            raise ValueError(f"--{name} must be positive; got {value!r}.")
    for name, value in {"weight_decay": c.weight_decay, "warmup_epochs": c.warmup_epochs,
                        "knn_every": c.knn_every}.items():  # fmt: skip
        if value < 0:
            raise ValueError(f"--{name} must be >= 0; got {value!r}.")
    if c.steps_per_epoch is not None and c.steps_per_epoch <= 0:
        raise ValueError(f"--steps_per_epoch must be positive; got {c.steps_per_epoch!r}.")
    if c.backbone not in backbones.BACKBONES:
        raise ValueError(
            f"--backbone must be one of {sorted(backbones.BACKBONES)}; got {c.backbone!r}."
        )
    if c.strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}; got {c.strategy!r}.")
    if c.mixed_precision not in PRECISIONS:
        raise ValueError(
            f"--mixed_precision must be one of {PRECISIONS}; got {c.mixed_precision!r}."
        )
    if os.path.exists(c.workdir) and not os.path.isdir(c.workdir):
        raise ValueError(f"--workdir {c.workdir!r} exists and is a file.")
    if c.val_dir and not c.train_dir:
        raise ValueError("--val_dir needs --train_dir (the kNN memory).")
    for name in ("train_dir", "val_dir"):
        path = getattr(c, name)
        if path and not os.path.isdir(path):
            raise ValueError(f"--{name}: image folder not found: {path!r}")
    if c.warmup_epochs >= c.epochs:
        raise ValueError(f"--warmup_epochs ({c.warmup_epochs}) must be < --epochs ({c.epochs}).")


def make_strategy(name):
    """The distribution for `--strategy` on the active backend; returns (strategy, replicas).

    TensorFlow: `auto` = MirroredStrategy over the local GPUs when there are several, else the
    default; `one_device`; `mirrored` = MirroredStrategy (SyncBN across replicas);
    `multi_worker` = MultiWorkerMirroredStrategy from TF_CONFIG (refused for now: it failed in
    testing). JAX: `auto`/`mirrored` =
    `keras.distribution.DataParallel` over the local devices (strategy None). PyTorch: one device.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        if name == "one_device" or (name == "auto" and len(gpus) < 2):
            return None, 1
        if name == "multi_worker":
            # Two localhost workers failed inside Keras 3 `fit` ("Attempt to convert a value
            # (PerReplica ...)") in this project's test: refuse clearly instead of at step one.
            raise ValueError(
                "--strategy=multi_worker is not supported yet (Keras 3 fit under "
                "MultiWorkerMirroredStrategy failed in testing); use mirrored on one machine."
            )
        strategy = tf.distribute.MirroredStrategy()
        return strategy, strategy.num_replicas_in_sync
    if backend == "jax":
        if name == "multi_worker":
            raise ValueError(
                "--strategy=multi_worker is TensorFlow-only; use KERAS_BACKEND=tensorflow."
            )
        devices = keras.distribution.list_devices()
        if name == "one_device" or len(devices) < 2:
            return None, 1
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return None, len(devices)
    if name in ("mirrored", "multi_worker"):
        raise ValueError(
            f"--strategy={name} is not available on the {backend} backend (one device)."
        )
    return None, 1


def _is_chief():
    """True unless TF_CONFIG names this process a worker other than the chief."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    if not task or task.get("type") == "chief":
        return True
    has_chief = "chief" in tf_config.get("cluster", {})
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not has_chief


def _git_commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions():
    import importlib.metadata as md

    names = ("keras", "tensorflow", "tensorflow-datasets", "jax", "torch", "numpy")
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def _knn(backbone, train_eval, val_eval, k):
    return knn.backbone_knn_accuracy(backbone, train_eval, val_eval, k=k)["knn_top1"]


def run(config, log=print):
    """Runs (or resumes) the pretraining described by `config`; returns the summary dict."""
    from simsiam_keras import data  # TensorFlow (tf.data) from here on

    validate(config)
    c = config
    blur = c.blur if c.blur is not None else c.image_size > 32
    if c.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{c.mixed_precision}")
    strategy, replicas = make_strategy(c.strategy)
    if c.batch_size % replicas:
        raise ValueError(f"--batch_size {c.batch_size} is not divisible by {replicas} replicas.")
    source = data.load_source(c.dataset, "train", c.data_dir, c.train_dir, c.image_size)
    steps = source.size // c.batch_size
    if steps == 0:
        raise ValueError(f"{source.name} has {source.size} images, fewer than one batch.")
    steps = min(steps, c.steps_per_epoch or steps)
    knn_data = None
    if c.knn_every or c.compare_random_init:
        val = data.load_source(c.dataset, "validation", c.data_dir, c.val_dir, c.image_size)
        if source.labeled and val.labeled:
            knn_data = [data.labeled_dataset(s, 256, c.image_size) for s in (source, val)]
        else:
            log("kNN monitor off: it needs labelled train and validation data.")
    keras.utils.set_random_seed(c.seed)
    chief = _is_chief()
    os.makedirs(c.workdir, exist_ok=True)
    if chief:  # at the start, so a killed run's checkpoints can still be exported
        report.write_json(os.path.join(c.workdir, "config.json"), dataclasses.asdict(c))
    ckpt_dir = os.path.join(c.workdir, "checkpoints")

    if strategy is not None:
        with strategy.scope():
            model = build_model(c, steps, distributed=True)
    else:
        model = build_model(c, steps)
    summary = {"random_init_knn_top1": None}
    if c.compare_random_init and knn_data:
        summary["random_init_knn_top1"] = _knn(model.backbone, *knn_data, c.knn_k)
        log(f"kNN top-1 of the random-init encoder: {summary['random_init_knn_top1']:.2f}")

    start_step = 0
    found = checkpoint.latest(ckpt_dir)
    if found:
        state = checkpoint.restore(found, model)
        start_step = state["step"]
        log(f"Resuming from {found} (step {start_step}).")
    total = c.epochs * steps
    history = {}
    ckpt = checkpoint.StepCheckpoint(ckpt_dir, c.checkpoint_every, steps, start_step, save=chief)
    callbacks = [ckpt]
    knn_monitor = None
    if knn_data and c.knn_every:
        knn_monitor = monitors.KNNMonitor(*knn_data, every=c.knn_every, k=c.knn_k)
        callbacks.append(knn_monitor)
    probe = next(iter(data.labeled_dataset(source, 256, c.image_size, require_labels=False)))[0]
    collapse = monitors.CollapseMonitor(np.asarray(probe))
    callbacks.append(collapse)
    if chief:
        callbacks.append(keras.callbacks.CSVLogger(os.path.join(c.workdir, "history.csv"),
                                                   append=start_step > 0))  # fmt: skip
        if keras.backend.backend() == "tensorflow":
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(c.workdir, "tensorboard")))

    def dataset(start):
        return data.two_view_dataset(
            source, c.batch_size, c.image_size, blur=blur, seed=c.seed, repeat=True,
            deterministic=c.deterministic, start_batch=start,
        )  # fmt: skip

    began = time.time()
    step = start_step
    while step < total and ckpt.nan_message is None:
        epoch, in_epoch = divmod(step, steps)
        # A resumed run first finishes its epoch, then runs whole epochs.
        logs = model.fit(
            dataset(step), initial_epoch=epoch, epochs=epoch + 1 if in_epoch else c.epochs,
            steps_per_epoch=steps - in_epoch if in_epoch else steps, callbacks=callbacks,
            verbose=2,
        ).history  # fmt: skip
        for key, values in logs.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        step = ckpt.step
    if ckpt.nan_message:
        raise FloatingPointError(ckpt.nan_message)
    seconds = time.time() - began

    final_knn = knn_monitor.history[-1][1] if knn_monitor and knn_monitor.history else None
    if knn_data and final_knn is None and (c.compare_random_init or c.knn_every):
        final_knn = _knn(model.backbone, *knn_data, c.knn_k)
    summary.update(
        {
            "final": {k: v[-1] for k, v in history.items() if v},
            "knn_top1": final_knn,
            "collapsed": collapse.collapsed,
            "config": dataclasses.asdict(c),
            "steps": step,
            "wall_s": seconds,
            "pairs_per_s": (step - start_step) * c.batch_size / max(seconds, 1e-9),
            "backend": keras.backend.backend(),
            "replicas": replicas,
            "seed": c.seed,
            "versions": _versions(),
            "git_commit": _git_commit(),
            "python": sys.version.split()[0],
        }
    )
    if chief:
        model.save(os.path.join(c.workdir, "model.keras"))
        if c.export:
            summary["export"] = export_or_explain(model, c, log)
        if knn_monitor:
            history["knn_top1"] = [v for _, v in knn_monitor.history]
            history["knn_top1_epochs"] = [e for e, _ in knn_monitor.history]
        history["probe_z_std"] = [v for _, v in collapse.history]
        report.plot_history(history, os.path.join(c.workdir, "history.png"), "SimSiam pretraining")
        report.write_json(os.path.join(c.workdir, "summary.json"), summary)
    return summary


def build_model(config, steps_per_epoch, distributed=False):
    """The compiled SimSiam of `config` (SyncBN when `distributed`; float16 loss scaling)."""
    c = config
    layers = c.projector_layers or (2 if c.backbone == "resnet18_cifar" else 3)
    backbone = backbones.build_resnet(c.backbone, c.width, c.image_size, distributed)
    model = SimSiam(backbone, c.dim, c.pred_dim, layers, c.stop_gradient, distributed)
    optimizer = simsiam_optimizer(
        c.base_lr, c.batch_size, c.epochs, steps_per_epoch, c.weight_decay,
        fix_pred_lr=c.fix_pred_lr, warmup_epochs=c.warmup_epochs,
    )  # fmt: skip
    if c.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    return model


def export_or_explain(model, config, log=print):
    """Exports the backbone (TF backend); elsewhere logs the command that does it."""
    path = os.path.join(config.workdir, "export", "backbone")
    if keras.backend.backend() != "tensorflow":
        log(
            "SavedModel export needs TensorFlow; the weights are in model.keras. Export with: "
            f"KERAS_BACKEND=tensorflow python scripts/export.py --workdir {config.workdir}"
        )
        return None
    from simsiam_keras import export

    export.export_backbone(model.backbone, path, config.image_size, config.backbone, config.width)
    log(f"Exported the backbone to {path}")
    return path
