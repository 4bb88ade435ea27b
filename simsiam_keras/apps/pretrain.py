"""A whole SimSiam pretraining run: data, model, optimiser, monitors, checkpoints, export.

`PretrainConfig` (`config.py`) keeps the paper's ImageNet recipe as its defaults (ResNet-50,
batch 512, lr 0.05 x batch/256, weight decay 1e-4, 100 epochs, fix_pred_lr); the command line
without a flagfile uses its `QUICKSTART` values. `run(config)` validates everything before any work,
resumes from the workdir's last checkpoint when there is one, and writes into the workdir:
`checkpoints/`, `history.csv`, `tensorboard/`, `model.keras`, `export/backbone` (SavedModel, TF
backend), `summary.json` and `history.png`; `run.lock` while it runs (`workdir_lock`: one run
per workdir) and, for an image folder, `knn_holdout.txt` (the images held out as kNN queries).

The order of the end is what keeps the trained weights safe: the last checkpoint, then
`model.keras`, then the export, `history.png` and `summary.json`; a failure of one of the last
three is one line saying how to redo it, and `summary.json` is written whatever they did.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np

from simsiam_keras import (
    backbones,
    checkpoint,
    distribute,
    errors,
    knn,
    monitors,
    report,
    workarounds,
    workdir_lock,
)
from simsiam_keras.config import ConfigError, PretrainConfig, resolve, resumable, validate
from simsiam_keras.device_augment import ViewAugment
from simsiam_keras.distribute import is_chief, is_multi_worker
from simsiam_keras.history import FILE as HISTORY_FILE
from simsiam_keras.history import EpochHistory, HistoryLogger
from simsiam_keras.model import SimSiam
from simsiam_keras.optim import simsiam_optimizer

__all__ = ["build_model", "check_workdir", "run", "train_dataset"]


def _git_commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
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


def check_workdir(config):
    """Checks that `config` may run in its workdir; returns its finished summary, if any.

    Reads only. A workdir whose `config.json` differs from `config` in a setting that changes
    what is trained (one not `resumable`) stops with a `ConfigError` naming those settings.

    Returns:
        The workdir's `summary.json` dict when the run is finished at `config.epochs` (its
        last checkpoint is at the end of the last epoch), else None.
    """
    c = config
    found = checkpoint.latest(os.path.join(c.workdir, "checkpoints"))
    path = os.path.join(c.workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except ValueError as e:  # a truncated or edited file
            raise ConfigError(
                f"{path} is not valid JSON ({e}); give a new {{}}, or restore that file.",
                "workdir",
            ) from None
        mine, free = dataclasses.asdict(c), resumable(PretrainConfig)
        differ = [k for k in mine if k not in free and k in previous and previous[k] != mine[k]]
        if differ:
            shown = ", ".join(f"{{}}={previous[k]!r} (now {mine[k]!r})" for k in differ)
            raise ConfigError(
                f"{{}} {c.workdir!r} holds a run with other settings: {shown}. Give a new "
                "{}, or the settings of that run to resume it.",
                "workdir",
                *differ,
                "workdir",
            )
    elif found:
        raise ConfigError(f"{{}} {c.workdir!r} has checkpoints but no config.json.", "workdir")
    summary_path = os.path.join(c.workdir, "summary.json")
    if found and os.path.exists(summary_path):
        state = checkpoint.read_state(found)
        if state["epoch"] >= c.epochs and state["step_in_epoch"] == 0:
            with open(summary_path) as f:
                return json.load(f)
    return None


def run(config, log=print):
    """Runs (or resumes) the pretraining described by `config`; returns the summary dict.

    Every check (settings, data, the workdir's earlier run, another process in the workdir)
    passes before anything is written. A finished run is not run again: its summary comes
    back with `"already_finished": True`. SIGINT / SIGTERM during training save a checkpoint
    after the current step and raise `errors.Interrupted` (the same call resumes).

    Raises:
        ConfigError: a bad setting, a workdir that holds another run or is in use.
        ValueError: data that cannot train this config (too few images, say).
    """
    c = resolve(validate(config))
    if not is_chief():  # only the chief writes, so only the chief holds the workdir's lock
        return _run(c, log)
    try:
        lock = workdir_lock.WorkdirLock(c.workdir).acquire()
    except workdir_lock.WorkdirBusy as e:
        raise ConfigError(f"{{}} {e}", "workdir") from None
    try:
        if lock.taken_over is not None:
            log(
                f"Took over the workdir's lock from a run that is gone "
                f"({workdir_lock.describe(lock.taken_over)})."
            )
        return _run(c, log)
    finally:
        lock.release()


def _run(c, log):
    finished = check_workdir(c)
    if finished is not None:
        log(
            f"The run in {c.workdir!r} is finished (epochs: {c.epochs}); raise --epochs to "
            "train on, or give a new --workdir."
        )
        return {**finished, "already_finished": True}
    found = checkpoint.latest(os.path.join(c.workdir, "checkpoints"))
    state = checkpoint.read_state(found) if found else {"step": 0, "epoch": 0}
    # The epochs before the checkpoint's; one that the checkpoint is inside is trained again.
    history = EpochHistory.load(os.path.join(c.workdir, HISTORY_FILE), state["epoch"])
    strategy, replicas = distribute.start(c.strategy, c.mixed_precision, c.batch_size)
    source, steps, knn_data, holdout = _data(c, log, resuming=found is not None)
    model = _model(c, strategy, steps)
    # Before a checkpoint is restored into the model.
    random_init_knn = _random_init_knn(c, model, knn_data, log)
    start_step = _restore(c, model, strategy, steps, found, holdout, history, log)
    ckpt, knn_monitor, collapse, callbacks = _callbacks(
        c, model, strategy, source, knn_data, steps, start_step, history
    )
    began = time.time()
    _train(model, source, c, strategy, steps, ckpt, callbacks)
    seconds = time.time() - began
    if ckpt.nan_message:
        raise FloatingPointError(ckpt.nan_message)
    if ckpt.stop_signal is not None:
        raise errors.Interrupted(ckpt.step, ckpt.stop_signal)
    final_knn = knn_monitor.history[-1][1] if knn_monitor and knn_monitor.history else None
    if knn_data and final_knn is None:  # no epoch trained here, or no monitor during training
        final_knn = _knn(model.backbone, *knn_data.datasets, c.knn_k)
    summary = {
        "train": source.name,
        "train_images": source.size,
        "random_init_knn_top1": random_init_knn,
        "final": history.last(),
        "knn_top1": final_knn,
        "knn": knn_data.describe(c.knn_k) if knn_data else None,
        "collapsed": collapse.collapsed,
        "config": dataclasses.asdict(c),
        "steps": ckpt.step,
        "wall_s": seconds,
        # Of this process (None when it trained no step: a resume at the very end).
        "pairs_per_s": (
            (ckpt.step - start_step) * c.batch_size / seconds if ckpt.step > start_step else None
        ),
        "backend": keras.backend.backend(),
        "replicas": replicas,
        "seed": c.seed,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
    }
    if is_chief():
        _finish(c, model, history, summary, log)
    return summary


class KnnData:
    """The kNN monitor's data: the memory (training images) and the queries, with names."""

    def __init__(self, memory, queries, image_size):
        from simsiam_keras import data

        self.memory, self.queries = memory, queries
        self.datasets = [
            knn.SizedBatches(data.labeled_dataset(s, 256, image_size), s.size, 256)
            for s in (memory, queries)
        ]

    def describe(self, k):
        """What a kNN figure of this data means, for `summary.json`."""
        return {
            "memory": self.memory.name,
            "memory_images": self.memory.size,
            "queries": self.queries.name,
            "query_images": self.queries.size,
            "k": min(k, self.memory.size),
        }

    def __str__(self):
        return (
            f"memory {self.memory.name} ({self.memory.size:,} images), queries "
            f"{self.queries.name} ({self.queries.size:,} images)"
        )


def _data(c, log, resuming):
    """The training source, its steps per epoch, the kNN data and the held-out files.

    Returns `(source, steps, KnnData or None, names)`: `names` are the files held out of an
    image folder as kNN queries, to record in the workdir (None: nothing to record).
    The monitor evaluates only data the user gave or chose: `--val_dir`; without it, for
    `--train_dir`, images held out of that folder (`_hold_out`); for a dataset (the digits, a
    TFDS name), its validation split. Never another dataset.
    """
    from simsiam_keras import sources  # TensorFlow (tf.data) from here on

    try:
        source = sources.load_source(c.dataset, "train", c.data_dir, c.train_dir, c.image_size)
    except ValueError as e:
        if c.train_dir or c.dataset != PretrainConfig.dataset:
            raise
        # The paper's ImageNet, the default, not prepared: most likely a first try.
        raise ValueError(f"{e} A first run offline: --flagfile configs/quickstart.cfg.") from None
    held, holdout = None, None
    if c.train_dir:
        source, held, holdout = _hold_out(c, source, log, resuming)
    steps = source.size // c.batch_size
    if steps == 0:
        raise ValueError(f"{source.name} has {source.size} images, fewer than one batch.")
    steps = min(steps, c.steps_per_epoch or steps)
    if not (c.knn_every or c.compare_random_init) or not is_chief():  # others would only wait
        return source, steps, None, holdout
    if not source.labeled:
        log(
            f"kNN monitor off: {source.name} has no class subfolders (<class>/<image>), so no "
            "labels."
        )
        return source, steps, None, holdout
    if c.val_dir:
        queries = sources.load_source(c.dataset, "validation", c.data_dir, c.val_dir, c.image_size)
    elif c.train_dir:
        queries = held
    else:
        queries = sources.load_source(c.dataset, "validation", c.data_dir, None, c.image_size)
    if queries is None:
        log(
            "kNN monitor off: this run holds out no images of --train_dir (it started "
            "without the monitor or with --knn_holdout=0); give --val_dir for it."
        )
        return source, steps, None, holdout
    if not queries.labeled:
        log(f"kNN monitor off: {queries.name} has no class subfolders (<class>/<image>).")
        return source, steps, None, holdout
    knn_data = KnnData(source, queries, c.image_size)
    log(f"kNN monitor: {knn_data}, k={min(c.knn_k, source.size)}.")
    return source, steps, knn_data, holdout


HOLDOUT_FILE = "knn_holdout.txt"
PROBE_IMAGES = 512  # the collapse monitor's fixed probe: z std and effective ranks


def _hold_out(c, source, log, resuming):
    """Splits the labelled `--train_dir` into training images and kNN queries.

    A new run holds out `--knn_holdout` images (default: 10% of each class, at most 10,000
    in all; `sources.holdout_split`, seeded) when it has a kNN monitor and no `--val_dir`,
    and none otherwise. The held-out files are recorded in `WORKDIR/knn_holdout.txt` (empty
    when none), so a resumed run trains on the same images whatever its flags.

    Returns:
        `(training source, held-out source or None, relative paths to record or None)`.
    """
    from simsiam_keras import sources

    path = os.path.join(c.workdir, HOLDOUT_FILE)
    if os.path.exists(path):
        with open(path) as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
        if not names:
            return source, None, None
        train, held = sources.exclude_files(source, [os.path.join(c.train_dir, n) for n in names])
        return train, held, None
    wanted = (c.knn_every or c.compare_random_init) and not c.val_dir and c.knn_holdout != 0
    if resuming:  # a run started before holdouts were recorded trained on every image
        return source, None, None
    if not (wanted and source.labeled):
        return source, None, []
    try:
        train, held = sources.holdout_split(source, c.knn_holdout, c.seed)
    except ValueError as e:  # a count that leaves no training image: the flag's fault
        raise ConfigError(f"{{}}: {e}", "knn_holdout") from None
    names = [os.path.relpath(f, c.train_dir) for f in held.items.tolist()]
    log(
        f"Holding out {held.size:,} of the {source.size:,} images of {source.name} as kNN "
        f"queries (class-balanced, seed {c.seed}; listed in {path}); --val_dir gives other "
        "queries, --knn_holdout=0 none."
    )
    return train, held, names


def _model(c, strategy, steps):
    """The compiled model, seeded, built in the strategy's scope."""
    keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        distribute.deterministic_kernels()
    with distribute.scope(strategy):
        return build_model(c, steps, distributed=strategy is not None)


def _random_init_knn(c, model, knn_data, log):
    """The kNN top-1 of the untrained encoder (`compare_random_init`), else None.

    With its BN statistics recomputed on the training images: the built ones (mean 0,
    variance 1) would make the baseline look worse than it is (`knn.recalibrated_copy`).
    """
    if not (c.compare_random_init and knn_data):
        return None
    baseline = knn.recalibrated_copy(model.backbone, knn_data.datasets[0])
    top1 = _knn(baseline, *knn_data.datasets, c.knn_k)
    log(
        f"kNN top-1 of the random-init encoder (BN statistics recomputed on the training "
        f"images): {top1:.2f}"
    )
    return top1


def _restore(c, model, strategy, steps, found, holdout, history, log):
    """Restores checkpoint `found`, if any, then writes config.json; returns its step.

    config.json (with `knn_holdout.txt` and a repaired or trimmed `history.csv`) is written
    only now, after every check passed, and before training, so a killed run's checkpoints
    can still be exported.
    """
    start_step = checkpoint.read_state(found)["step"] if found else 0
    if is_multi_worker(strategy):  # before the restore: no worker may be left waiting
        distribute.check_same_start(strategy, start_step)
    if found:
        checkpoint.restore(found, model)  # raises before anything is written on a mismatch
        log(f"Resuming from {found} (step {start_step} of {c.epochs * steps}).")
    if is_chief():
        os.makedirs(c.workdir, exist_ok=True)
        report.write_json(os.path.join(c.workdir, "config.json"), dataclasses.asdict(c))
        if holdout is not None:
            text = "".join(f"{name}\n" for name in holdout)
            report.write_text(os.path.join(c.workdir, HOLDOUT_FILE), text)
        if os.path.exists(history.path):
            history.write()
    return start_step


def _finish(c, model, history, summary, log):
    """The chief's outputs: model.keras, then the export, history.png and summary.json.

    The checkpoint at the last step is on disk already. A failure of the export or the plot is
    one line saying how to redo that step, and summary.json is still written.
    """
    path = os.path.join(c.workdir, "model.keras")
    try:
        tmp = os.path.join(c.workdir, f".model.tmp-{os.getpid()}.keras")
        model.save(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 (the checkpoint holds the weights; say so)
        last = checkpoint.latest(os.path.join(c.workdir, "checkpoints"))
        raise OSError(
            f"Writing {path} failed ({_reason(e)}); the trained weights are in the checkpoint "
            f"{last}: run the same command to write it."
        ) from None
    if c.export:
        try:
            summary["export"] = export_or_explain(model, c, log)
        except Exception as e:  # noqa: BLE001 (one line; the weights are in model.keras)
            summary["export"] = None
            log(
                f"The SavedModel export failed ({_reason(e)}); the weights are in {path}. "
                f"Export with: python scripts/export.py --workdir {c.workdir}"
            )
    try:
        random_init = (summary.get("random_init_knn_top1"), "random init (BN recomputed)")
        report.plot_history(
            history.as_dict(),
            os.path.join(c.workdir, "history.png"),
            f"SimSiam pretraining: {c.backbone} x{c.width:g}, {c.image_size} px, batch "
            f"{c.batch_size}, base lr {c.base_lr:g}",
            references={"knn_top1": random_init},
        )
    except Exception as e:  # noqa: BLE001 (a plot is not worth the run)
        log(f"history.png was not written ({_reason(e)}); the numbers are in {history.path}.")
    report.write_json(os.path.join(c.workdir, "summary.json"), summary)


def _reason(error):
    first = (str(error).strip().splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _callbacks(c, model, strategy, source, knn_data, steps, start_step, history):
    """The run's callbacks, in the order their logs need: monitors, writers, the checkpoint."""
    from simsiam_keras import data

    chief = is_chief()
    ckpt_dir = os.path.join(c.workdir, "checkpoints")
    ckpt = checkpoint.StepCheckpoint(
        ckpt_dir,
        c.checkpoint_every,
        steps,
        start_step,
        save=chief,
        running_metrics=not is_multi_worker(strategy),
    )
    callbacks = []
    knn_monitor = None
    if knn_data and c.knn_every:
        knn_monitor = monitors.KNNMonitor(
            *knn_data.datasets,
            every=c.knn_every,
            k=c.knn_k,
            progress_every_s=c.progress_every_s,
            epochs=c.epochs,
        )
        callbacks.append(knn_monitor)
    # A fixed sample of the training images (a folder is listed class by class: a permutation;
    # TFDS shuffled its files when it prepared them). 512 images: the ranks are at most that.
    probe = data.labeled_dataset(
        source, PROBE_IMAGES, c.image_size, shuffle=source.items is not None, require_labels=False
    )
    collapse = monitors.CollapseMonitor(np.asarray(next(iter(probe))[0]))
    callbacks.append(collapse)
    callbacks.append(HistoryLogger(history, write=chief))
    if chief:
        if _has_tensorflow():
            # Per-epoch points plus loss, z_std and lr every 100 steps (an ImageNet epoch is
            # 2,500 steps at batch 512). tf.summary writes them whatever the Keras backend.
            callbacks.append(
                workarounds.GlobalStepTensorBoard(
                    os.path.join(c.workdir, "tensorboard"), update_freq=min(100, steps)
                )
            )
        callbacks.append(
            monitors.TrainingProgress(c.epochs, steps, c.batch_size, c.progress_every_s, start_step)
        )
    callbacks.append(ckpt)  # last: an epoch's end is saved once its numbers are written
    return ckpt, knn_monitor, collapse, callbacks


def _train(model, source, c, strategy, steps, ckpt, callbacks):
    """`model.fit` from the checkpoint's step to the end (`checkpoint.fit_from`).

    Stops early on a NaN loss or a signal.
    """
    checkpoint.fit_from(
        model,
        lambda step: train_dataset(source, c, strategy, start_batch=step),
        c.epochs,
        steps,
        ckpt,
        callbacks,
        graceful=not is_multi_worker(strategy),
    )


def _has_tensorflow():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def train_dataset(source, config, strategy=None, start_batch=0, shuffle=True):
    """The repeated two-view batches of `config` from batch `start_batch` on.

    Under multi-worker training each worker reads its own shard of `source`, in batches of
    `batch_size / replicas`; otherwise one pipeline yields global batches, which a
    MirroredStrategy splits over its replicas (`distribute.per_worker_dataset`).
    `shuffle=False` keeps the source order (worker w of n then reads images w, w + n, ...).
    """
    from simsiam_keras import data

    c = resolve(config)

    def views(batch_size, input_context):
        return data.two_view_dataset(
            source,
            batch_size,
            c.image_size,
            blur=c.blur,
            seed=c.seed,
            shuffle=shuffle,
            repeat=True,
            deterministic=c.deterministic,
            input_context=input_context,
            start_batch=start_batch,
            augment_impl=c.augment_impl,
            augment_on=c.augment_on,
        )

    return distribute.per_worker_dataset(strategy, c.batch_size, views)


def build_model(config, steps_per_epoch, distributed=False):
    """The compiled SimSiam of `config` (SyncBN when `distributed`; float16 loss scaling)."""
    c = resolve(config)
    backbone = backbones.build_resnet(c.backbone, c.width, c.image_size, distributed)
    augment = ViewAugment(blur=c.blur, seed=c.seed) if c.augment_on == "device" else None
    model = SimSiam(
        backbone,
        c.dim,
        c.pred_dim,
        c.projector_layers,
        c.stop_gradient,
        distributed,
        augment=augment,
    )
    optimizer = simsiam_optimizer(
        c.base_lr,
        c.batch_size,
        c.epochs,
        steps_per_epoch,
        c.weight_decay,
        fix_pred_lr=c.fix_pred_lr,
        warmup_epochs=c.warmup_epochs,
    )
    if c.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer)
    # Its variables now, in the caller's strategy scope: creating them is a collective under
    # multi-worker training, which every worker must join whether or not it then restores.
    optimizer.build(model.trainable_variables)
    return model


def export_or_explain(model, config, log=print):
    """Exports the backbone to `WORKDIR/export/backbone`; returns the path, or None on failure.

    TensorFlow and JAX export in this process (`export.export_backbone`). PyTorch cannot: a
    TensorFlow-backend subprocess exports `WORKDIR/model.keras` (saved just before), which
    holds the same weights.
    """
    path = os.path.join(config.workdir, "export", "backbone")
    if keras.backend.backend() != "torch":
        from simsiam_keras import export

        export.export_backbone(
            model.backbone, path, config.image_size, config.backbone, config.width
        )
        log(f"Exported the backbone to {path}")
        return path
    code = f"from simsiam_keras.apps import export; export.run({config.workdir!r})"
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log(
            f"The SavedModel export failed ({reason}); the weights are in model.keras. Export "
            f"with: KERAS_BACKEND=tensorflow python scripts/export.py --workdir {config.workdir}"
        )
        return None
    log(f"Exported the backbone to {path} (in a TensorFlow-backend process)")
    return path
