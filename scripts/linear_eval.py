r"""Linear evaluation of a pretrained backbone (paper Sec. 4, App. A; official main_lincls.py).

  python scripts/linear_eval.py --flagfile configs/in1k_linear.cfg --pretrained WORKDIR
  python scripts/linear_eval.py --flagfile configs/cifar10_linear.cfg --pretrained model.keras
  python scripts/linear_eval.py --pretrained model.keras            # embedded digits, seconds

The backbone is frozen and in inference mode. Two protocols for the linear layer on its pooled
features (`--protocol`; "auto" picks "features" up to 200,000 training images, else "official"):
"official" trains it with LARS (or `--optimizer sgd`) on augmented views, top-1 / top-5 on the
validation split every epoch (ImageNet: configs/in1k_linear.cfg); "features" extracts the
features once and fits the same layer exactly by L-BFGS (`linear.fit_on_features`), where
LARS's small steps would not get anywhere in a small run. At the end, the check that no
backbone weight or BN statistic changed. Writes `linear_eval.json` and
`linear_eval.png` into `--workdir`; the last printed line is one JSON object.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simsiam_keras import cli  # noqa: E402 (no TensorFlow import)

cli.quiet_logs()  # before anything imports TensorFlow

from absl import flags  # noqa: E402

_PRETRAINED = flags.DEFINE_string(
    "pretrained", None, "A .keras SimSiam/backbone file, an exported SavedModel or a workdir."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go (default: beside --pretrained).")
_DATASET = flags.DEFINE_string("dataset", "digits", "'digits' (embedded) or a TFDS name.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", None, "Labelled image folder <class>/<image>.")
_VAL_DIR = flags.DEFINE_string("val_dir", None, "Labelled validation image folder.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Input height and width (default: the size the model was built for)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs (paper: 90).")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "lars", ["lars", "sgd"], "LARS or plain SGD.")
_BASE_LR = flags.DEFINE_float("base_lr", None, "lr per 256 images (LARS 0.1, SGD 30).")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "L2 weight decay (paper: 0).")
_STEPS = flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (smoke runs).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_PROTOCOL = flags.DEFINE_enum(
    "protocol", "auto", ["auto", "official", "features"],
    "official: LARS/SGD on augmented views (paper); features: L-BFGS on frozen features; "
    "auto: features up to 200,000 training images.",
)  # fmt: skip
_L2 = flags.DEFINE_float(
    "l2", 1.0, "--protocol=features: inverse L2 strength on standardised features."
)
_PROGRESS = flags.DEFINE_float(
    "progress_every_s", 30.0, "Seconds between progress lines when not on a terminal."
)
FEATURES_MAX_IMAGES = 200_000


def _validate():
    if not _PRETRAINED.value:
        raise cli.UsageError("--pretrained is required.")
    if not os.path.exists(_PRETRAINED.value):
        raise cli.UsageError(f"--pretrained: not found: {_PRETRAINED.value!r}")
    for name in ("image_size", "batch_size", "epochs"):
        if flags.FLAGS[name].value is not None and flags.FLAGS[name].value <= 0:
            raise cli.UsageError(f"--{name} must be positive; got {flags.FLAGS[name].value}.")
    if _STEPS.value is not None and _STEPS.value <= 0:
        raise cli.UsageError("--steps_per_epoch must be positive.")
    if _PROGRESS.value < 0:
        raise cli.UsageError("--progress_every_s must be >= 0.")
    if not _L2.value > 0:
        raise cli.UsageError(f"--l2 must be positive; got {_L2.value}.")
    if bool(_TRAIN_DIR.value) != bool(_VAL_DIR.value):
        raise cli.UsageError("--train_dir and --val_dir go together (both labelled folders).")
    workdir = _WORKDIR.value or _default_workdir(_PRETRAINED.value)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cli.UsageError(f"--workdir {workdir!r} is a file.")
    return workdir


def _default_workdir(pretrained):
    path = os.path.abspath(pretrained)
    return path if os.path.isdir(path) and not path.endswith("backbone") else os.path.dirname(path)


def main(argv):
    del argv
    workdir = _validate()
    import keras

    from simsiam_keras import data, linear

    keras.utils.set_random_seed(_SEED.value)
    size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
    try:
        backbone = linear.load_backbone(_PRETRAINED.value, size)
        size = size or linear.input_size(backbone)
        if size is None:
            raise ValueError(f"{_PRETRAINED.value!r} takes any input size: give --image_size.")
        train = data.load_source(_DATASET.value, "train", _DATA_DIR.value, _TRAIN_DIR.value, size)
        val = data.load_source(_DATASET.value, "validation", _DATA_DIR.value, _VAL_DIR.value, size)
        for source in (train, val):
            if not source.labeled:
                raise ValueError(f"{source.name} has no labels; linear evaluation needs them.")
        if train.size < batch:
            raise ValueError(f"{train.name} has {train.size} images, fewer than one batch.")
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    protocol = _PROTOCOL.value
    if protocol == "auto":
        protocol = "features" if train.size <= FEATURES_MAX_IMAGES else "official"
    model = linear.LinearClassifier(backbone, train.num_classes)
    val_ds = data.labeled_dataset(val, batch, size)
    model(next(iter(val_ds))[0][:1])  # build the linear layer before the snapshot
    before = linear.snapshot(backbone)
    start = time.time()
    if protocol == "features":
        fit = linear.fit_on_features(
            model, data.labeled_dataset(train, batch, size), val_ds, _L2.value,
            progress_every_s=_PROGRESS.value,
        )  # fmt: skip
        linear.check_unchanged(backbone, before)
        results = {
            "val_top1": fit["top1"],
            "val_top5": fit["top5"],
            "best_val_top1": fit["top1"],
            "train_top1": fit["train_top1"],
            "iterations": fit["iterations"],
            "l2": _L2.value,
        }
        _write(workdir, protocol, train, batch, results, start, history=None)
        return
    steps = train.size // batch
    if _STEPS.value:
        steps = min(steps, _STEPS.value)
    train_ds = data.labeled_dataset(train, batch, size, train=True, seed=_SEED.value, repeat=True)
    model.compile(
        optimizer=linear.linear_optimizer(
            _OPTIMIZER.value, batch, _EPOCHS.value, steps, _BASE_LR.value, _WEIGHT_DECAY.value
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )
    from simsiam_keras import monitors

    progress = monitors.TrainingProgress(
        _EPOCHS.value, steps, batch, _PROGRESS.value, shown=("loss", "top1"), unit="images/s"
    )
    history = model.fit(
        train_ds,
        epochs=_EPOCHS.value,
        steps_per_epoch=steps,
        validation_data=val_ds,
        verbose=0,
        shuffle=False,
        callbacks=[progress],
        # Without it Keras warns "Your input ran out of data" at the end of each validation.
        validation_steps=-(-val.size // batch),
    ).history
    linear.check_unchanged(backbone, before)  # raises if the frozen backbone moved
    val_top1 = [100 * v for v in history["val_top1"]]
    results = {
        "val_top1": val_top1[-1],
        "val_top5": 100 * history["val_top5"][-1],
        "best_val_top1": max(val_top1),
        "optimizer": _OPTIMIZER.value,
        "epochs": _EPOCHS.value,
    }
    _write(workdir, protocol, train, batch, results, start, history)


def _write(workdir, protocol, train, batch, results, start, history):
    from simsiam_keras import report

    results = {
        "pretrained": os.path.abspath(_PRETRAINED.value),
        "dataset": train.name,
        "protocol": protocol,
        "batch_size": batch,
        **results,
        "backbone_unchanged": True,
        "wall_s": time.time() - start,
    }
    os.makedirs(workdir, exist_ok=True)
    if history is not None:
        results["history"] = {k: [float(x) for x in v] for k, v in history.items()}
        report.plot_history(
            {"val_top1": [100 * v for v in history["val_top1"]], "loss": history["loss"]},
            os.path.join(workdir, "linear_eval.png"),
            "linear evaluation",
        )
    report.write_json(os.path.join(workdir, "linear_eval.json"), results)
    keys = ("protocol", "val_top1", "val_top5", "best_val_top1", "epochs")
    print(report.json_line({"what": "linear_eval", **{k: results.get(k) for k in keys}}))


if __name__ == "__main__":
    cli.run(main)
