"""The official linear protocol at ImageNet scale: distributed, checkpointed, resumable.

`main_lincls.py` trains the linear layer for 90 epochs at batch 4096 on 8 GPUs; an epoch of
ImageNet is 312 steps and a run takes hours, so it gets what pretraining has:

* the strategies of `--strategy` (`distribute.start`): MirroredStrategy or
  MultiWorkerMirroredStrategy on TensorFlow, DataParallel on JAX; the backbone stays frozen
  and in inference mode on every replica (`LinearClassifier`), so nothing about it needs
  synchronising;
* step checkpoints (`checkpoint.StepCheckpoint`, atomic) of the linear layer and the
  optimizer only: the frozen backbone is reloaded from `--pretrained`, and the run's
  directory is keyed by its weights' fingerprint and the settings (`run_directory`);
* resume at the exact data position (the seeded, repeated pipeline from `start_batch`), so a
  killed and rerun evaluation ends with the classifier of an uninterrupted one;
* per-epoch history in `WORKDIR/linear_eval/run-<key>/history.csv` (`history.EpochHistory`,
  whole epochs across resumes), progress lines within epochs, and every file written by the
  chief only.

Layout: `WORKDIR/linear_eval/run-<key>/{config.json, history.csv, checkpoints/}`;
`apps.linear_eval.run` writes `WORKDIR/linear_eval.json` and `.png` (the last evaluation's).
"""

import hashlib
import json
import os

import keras

from simsiam_keras import checkpoint, data, distribute, errors, monitors, report
from simsiam_keras.history import EpochHistory, HistoryLogger
from simsiam_keras.linear import linear_optimizer

SUBDIR = "linear_eval"


def run_directory(trained, workdir, weights_id):
    """`WORKDIR/linear_eval/run-<key>` and what it holds: the evaluation `trained` describes.

    The key hashes every setting that changes what is trained (`trained`: the caller leaves out
    where things are and what is reported) and the fingerprint of the pretrained weights, so
    the same command resumes its own run, while other settings (SGD instead of LARS, another
    model in the same place) start their own beside it and leave the earlier one intact.
    """
    settings = {**trained, "weights_fingerprint": weights_id}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(workdir, SUBDIR, f"run-{key}"), settings


def _validation_dataset(source, batch_size, image_size):
    """The validation batches, the last one padded to `batch_size` with weight-0 images.

    Every batch then splits evenly over any number of replicas (JAX's DataParallel shards a
    batch only when it divides), and the weights keep the padding out of the accuracies.
    """
    import tensorflow as tf

    def pad(images, labels):
        n = tf.shape(images)[0]
        missing = batch_size - n
        images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
        weights = tf.concat([tf.ones([n]), tf.zeros([missing])], 0)
        return images, tf.pad(labels, [[0, missing]]), weights

    ds = data.labeled_dataset(source, batch_size, image_size)
    # Repeated, and read `validation_steps` = one pass at a time: Keras keeps one validation
    # iterator for the whole `fit` when the steps are given, and a finite one ends with an
    # uncaught StopIteration under a tf.distribute strategy (measured: keras 3.15, TF 2.21).
    return ds.map(pad).repeat().prefetch(tf.data.AUTOTUNE)


def _train_dataset(source, config, image_size, strategy, start_batch):
    """The protocol's augmented training batches from global batch `start_batch` on.

    Under multi-worker training each worker reads its own stride of the permutation, in
    batches of `batch_size / replicas` (`distribute.per_worker_dataset`), as pretraining.
    """
    c = config

    def batches(batch_size, input_context):
        return data.labeled_dataset(
            source,
            batch_size,
            image_size,
            train=True,
            seed=c.seed,
            repeat=True,
            deterministic=c.deterministic,
            input_context=input_context,
            start_batch=start_batch,
        )

    return distribute.per_worker_dataset(strategy, c.batch_size, batches)


def fit_on_views(
    config,
    model,
    train_source,
    val_source,
    image_size,
    strategy,
    workdir,
    weights_id,
    trained,
    log=print,
):
    """Trains `model`'s linear layer on augmented views (the official protocol), resuming.

    Args:
        config: the `LinearConfig`.
        model: a built `linear.LinearClassifier`, in `strategy`'s scope.
        train_source: the labelled training `sources.Source`.
        val_source: the labelled validation `sources.Source`.
        image_size: the backbone's input size.
        strategy: the `tf.distribute` strategy, or None.
        workdir: where `linear_eval/` goes.
        weights_id: `linear.fingerprint` of the frozen backbone (part of the run's key).
        trained: the settings that change what is trained (the rest of the run's key).
        log: where messages go.

    Returns:
        The per-epoch history of the whole run (across resumed processes): `loss`, `top1`,
        `top5`, `val_loss`, `val_top1`, `val_top5` as fractions.

    Raises:
        FloatingPointError: a NaN loss (the last good checkpoint is kept).
        errors.Interrupted: SIGINT / SIGTERM; a checkpoint was saved.
    """
    c = config
    chief = distribute.is_chief()
    multi_worker = distribute.is_multi_worker(strategy)
    directory, settings = run_directory(trained, workdir, weights_id)
    csv_path, ckpt_dir = (os.path.join(directory, n) for n in ("history.csv", "checkpoints"))
    steps = min(train_source.size // c.batch_size, c.steps_per_epoch or train_source.size)
    with distribute.scope(strategy):
        model.compile(
            optimizer=linear_optimizer(
                c.optimizer, c.batch_size, c.epochs, steps, c.base_lr, c.weight_decay
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            # Weighted: the padding of the last validation batch has weight 0.
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
            ],
            # Only the float32 linear layer trains, so no loss scaling under float16.
            auto_scale_loss=False,
        )
        model.optimizer.build(model.trainable_variables)
    found = checkpoint.latest(ckpt_dir)
    start_step = checkpoint.read_state(found)["step"] if found else 0
    if multi_worker:  # a collective: before the restore, so that no worker is left waiting
        distribute.check_same_start(strategy, start_step)
    if found:
        checkpoint.restore(found, model)
        log(
            f"Resuming the linear evaluation from {found} (step {start_step} of "
            f"{c.epochs * steps})."
        )
    if chief:  # what the run is, for whoever finds the directory
        os.makedirs(directory, exist_ok=True)
        report.write_json(os.path.join(directory, "config.json"), settings)
    ckpt = checkpoint.StepCheckpoint(
        ckpt_dir,
        c.checkpoint_every,
        steps,
        start_step,
        save=chief,
        running_metrics=not multi_worker,
    )
    record = EpochHistory.load(csv_path, start_step // steps)  # the whole epochs before
    callbacks = [HistoryLogger(record, write=chief)]
    if chief:
        callbacks.append(
            monitors.TrainingProgress(
                c.epochs,
                steps,
                c.batch_size,
                c.progress_every_s,
                start_step,
                shown=("loss", "top1"),
                unit="images/s",
            )
        )
    callbacks.append(ckpt)  # last: an epoch's end is saved once its row is written
    val_ds = _validation_dataset(val_source, c.batch_size, image_size)
    history = checkpoint.fit_from(
        model,
        lambda step: _train_dataset(train_source, c, image_size, strategy, step),
        c.epochs,
        steps,
        ckpt,
        callbacks,
        graceful=not multi_worker,
        validation_data=val_ds,
        validation_steps=-(-val_source.size // c.batch_size),  # one pass of the repeated set
    )
    if ckpt.nan_message:
        raise FloatingPointError(ckpt.nan_message)
    if ckpt.stop_signal is not None:
        raise errors.Interrupted(ckpt.step, ckpt.stop_signal)
    if not chief:
        return history
    whole = record.as_dict()
    if not whole.get("val_top1"):
        raise ValueError(f"No epoch of the linear evaluation in {workdir!r} finished.")
    return whole
