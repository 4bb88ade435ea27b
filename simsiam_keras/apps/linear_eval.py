"""The linear-evaluation application: `run(LinearConfig)`, and the evaluation data kNN shares.

Loads the frozen backbone (`linear.load_backbone`) and the labelled splits, picks the protocol,
runs it (`linear.fit_on_features` or `linear_official.fit_on_views`), checks that the backbone
did not move and writes `linear_eval.json` (and `linear_eval.png`) beside the pretrained model.
"""

import dataclasses
import os
import time

import keras
import numpy as np

from simsiam_keras import data, distribute, linear, linear_official, report, sources
from simsiam_keras.config import ConfigError, resumable, validate

FEATURES_MAX_IMAGES = 200_000  # --protocol=auto: "features" up to this many training images


def load_evaluation(config):
    """The frozen backbone and labelled data of a linear or kNN evaluation.

    Args:
        config: a `LinearConfig` or `KnnConfig` (validated here).

    Returns:
        `(backbone, image_size, train, val)`: `train` and `val` are `sources.Source`s.

    Raises:
        ConfigError: a bad setting, data without labels, or a model that cannot take the
            image size.
    """
    c = validate(config)
    try:
        backbone = linear.load_backbone(c.pretrained, c.image_size)
    except ValueError as e:
        raise ConfigError(f"{{}}: {e}", "pretrained") from None
    size = c.image_size or linear.input_size(backbone)
    if size is None:
        raise ConfigError(
            f"{{}} {c.pretrained!r} takes any input size: give {{}}.", "pretrained", "image_size"
        )
    train = sources.load_source(c.dataset, "train", c.data_dir, c.train_dir, size)
    val = sources.load_source(c.dataset, "validation", c.data_dir, c.val_dir, size)
    for source, folder in ((train, "train_dir"), (val, "val_dir")):
        if not source.labeled:  # a usage error: the flag names data without labels
            flag = folder if getattr(c, folder) else "dataset"
            raise ConfigError(
                f"{{}} {source.name!r} has no labels (an image folder needs <class>/<image> "
                "subfolders); the evaluation needs them.",
                flag,
            )
    return backbone, size, train, val


def default_workdir(pretrained):
    """Where a linear evaluation of `pretrained` writes by default: beside it."""
    path = os.path.abspath(pretrained)
    return path if os.path.isdir(path) and not path.endswith("backbone") else os.path.dirname(path)


def run(config, log=print):
    """A linear evaluation of a frozen backbone (`LinearConfig`); returns the results dict.

    The protocol (`config.protocol`; "auto" picks "features" up to `FEATURES_MAX_IMAGES`
    training images, else "official"): "official" trains the linear layer with LARS (or SGD)
    on augmented views, top-1 / top-5 on the validation split every epoch (paper App. A),
    with step checkpoints and resume (`linear_official.fit_on_views`); "features" fits it exactly on
    frozen features (`fit_on_features`). Both run under `config.strategy` and
    `config.mixed_precision` as pretraining does (the backbone in the mixed policy, the
    linear layer in float32). Either way the backbone is checked unchanged at the end
    (`check_unchanged`). The chief writes `linear_eval.json` (and, for the official protocol,
    `linear_eval.png`) into `config.workdir` (default: beside `config.pretrained`).

    Raises:
        ConfigError: a bad setting; ValueError: unusable data; RuntimeError: a backbone that
        moved; `errors.Interrupted`: SIGINT / SIGTERM (a checkpoint was saved: rerun to resume).
    """
    c = validate(config)
    workdir = c.workdir or default_workdir(c.pretrained)
    strategy, replicas = distribute.start(c.strategy, c.mixed_precision, c.batch_size)
    keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        distribute.deterministic_kernels()
    with distribute.scope(strategy):
        backbone, size, train, val = load_evaluation(c)
        if train.size < c.batch_size:
            raise ConfigError(
                f"{train.name} has {train.size} images, fewer than one batch ({{}}).", "batch_size"
            )
        backbone = linear.with_global_policy(backbone)
        keras.utils.set_random_seed(c.seed)  # the same linear layer whatever loading drew
        model = linear.LinearClassifier(backbone, train.num_classes)
        model(np.zeros((1, size, size, 3), "float32"))  # builds the linear layer
    protocol = c.protocol
    if protocol == "auto":
        protocol = "features" if train.size <= FEATURES_MAX_IMAGES else "official"
    before = linear.snapshot(backbone)
    start = time.time()
    history = None
    if protocol == "features":
        train_ds, val_ds = (data.labeled_dataset(s, c.batch_size, size) for s in (train, val))
        fit = linear.fit_on_features(
            model, train_ds, val_ds, c.l2, progress_every_s=c.progress_every_s
        )
        results = {
            "val_top1": fit["top1"],
            "val_top5": fit["top5"],
            "best_val_top1": fit["top1"],
            "train_top1": fit["train_top1"],
            "iterations": fit["iterations"],
            "l2": c.l2,
        }
    else:
        resolved = dataclasses.replace(c, protocol=protocol)  # "auto" keys the same run
        trained = {
            k: v for k, v in dataclasses.asdict(resolved).items() if k not in resumable(type(c))
        }
        history = linear_official.fit_on_views(
            resolved,
            model,
            train,
            val,
            size,
            strategy,
            workdir,
            linear.fingerprint(backbone),
            trained,
            log,
        )
    linear.check_unchanged(backbone, before)  # raises if the frozen backbone moved
    if not distribute.is_chief():  # the chief reports and writes
        return {"protocol": protocol, "chief": False, "backbone_unchanged": True}
    if history is not None:
        val_top1 = [100 * v for v in history["val_top1"]]
        results = {
            "val_top1": val_top1[-1],
            "val_top5": 100 * history["val_top5"][-1],
            "best_val_top1": max(val_top1),
            "optimizer": c.optimizer,
            "epochs": c.epochs,
        }
    results = {
        "pretrained": os.path.abspath(c.pretrained),
        "dataset": train.name,
        "protocol": protocol,
        "batch_size": c.batch_size,
        "replicas": replicas,
        "mixed_precision": c.mixed_precision,
        "backend": keras.backend.backend(),
        **results,
        "backbone_unchanged": True,
        "wall_s": time.time() - start,
    }
    os.makedirs(workdir, exist_ok=True)
    if history is not None:
        results["history"] = {
            k: [v for v in values] for k, values in history.items() if not k.endswith("_epochs")
        }
        report.plot_history(
            {"val_top1": [100 * v for v in history["val_top1"]], "loss": history["loss"]},
            os.path.join(workdir, "linear_eval.png"),
            "linear evaluation",
        )
    report.write_json(os.path.join(workdir, "linear_eval.json"), results)
    return results
