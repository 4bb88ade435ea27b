"""Linear evaluation (paper Sec. 4, App. A; official `main_lincls.py`) and backbone loading.

The backbone is frozen and runs in inference mode for the whole run (its BatchNorm statistics
do not move); a linear layer on its pooled features, weights ~ N(0, 0.01) and bias 0, is trained
with LARS (batch 4096, lr 0.1 x batch / 256, cosine, 90 epochs) or plain SGD (lr 30, batch 256).
`snapshot` / `check_unchanged` are the official sanity check that no backbone weight and no BN
moving statistic changed.
"""

import dataclasses
import json
import os

import keras
import numpy as np

from simsiam_keras import model as _model  # noqa: F401 (registers SimSiam for load_model)
from simsiam_keras import recipe, workarounds
from simsiam_keras.lars import LARS
from simsiam_keras.optim import SGD, SimSiamSchedule

EXPORT_META = "simsiam_backbone.json"


@keras.saving.register_keras_serializable(package="simsiam_keras")
class LinearClassifier(keras.Model):
    """A linear layer on a frozen backbone's pooled features.

    Args:
        backbone: a `keras.Model` mapping images to `[N, C]`.
        num_classes: number of classes.
        freeze_backbone: freeze the backbone and always run it in inference mode (the
            protocol). False only to show that the sanity check catches a training backbone.
        **kwargs: `keras.Model` arguments.
    """

    def __init__(self, backbone, num_classes, freeze_backbone=True, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.trainable = False
        self.fc = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            bias_initializer="zeros",
            dtype="float32",  # float32 logits under mixed precision
            name="fc",
        )
        self.num_classes = num_classes

    def call(self, images, training=False):
        features = self.backbone(images, training=False if self.freeze_backbone else training)
        return self.fc(features)

    def train_step(self, *args):
        return workarounds.tensorflow_logs(super().train_step(*args))  # tensorflow#72388

    def test_step(self, *args):
        return workarounds.tensorflow_logs(super().test_step(*args))  # tensorflow#72388

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and workarounds.skip_symbolic_build(self):
            # keras-team/keras#20585: build the compiled loss and metrics from a local batch.
            data_batch = workarounds.first_replica_batch(self, iterator)
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=data_batch)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def checkpoint_variables(self):
        """What a step checkpoint saves (`checkpoint.save`): the linear layer when frozen."""
        return self.fc.variables if self.freeze_backbone else self.variables

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes,
                "freeze_backbone": self.freeze_backbone,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def linear_optimizer(name, batch_size, epochs, steps_per_epoch, base_lr=None, weight_decay=0.0):
    """The protocol's optimiser: "lars" (lr 0.1 x batch/256) or "sgd" (lr 30 x batch/256).

    Both with momentum 0.9 and the per-epoch cosine of the official code.
    """
    if name not in ("lars", "sgd"):
        raise ValueError(f"`optimizer` must be 'lars' or 'sgd'. Received: {name!r}")
    base_lr = base_lr if base_lr is not None else (0.1 if name == "lars" else 30.0)
    schedule = SimSiamSchedule(base_lr * batch_size / 256, steps_per_epoch, epochs)
    if name == "lars":
        return LARS(schedule, momentum=0.9, weight_decay=weight_decay, trust_coefficient=0.001)
    return SGD(schedule, momentum=0.9, weight_decay=weight_decay)


def fit_on_features(classifier, train_data, val_data, l2=1.0, max_iter=1000, progress_every_s=None):
    """The linear layer of `classifier` fitted on frozen features by L-BFGS (small datasets).

    The official protocol (LARS at trust 0.001, 90 epochs at batch 4096 with augmentation) is
    tuned for ImageNet: each LARS step moves the weights by about 1e-4 of their norm, which
    adds up over 90 x 312 steps and to nothing in a few hundred. On a dataset whose features
    fit in memory this fits the same linear layer exactly instead: features of the evaluation
    view (no augmentation) extracted once, standardised, and a multinomial logistic
    regression with an L2 penalty solved by L-BFGS (scikit-learn). The result is folded into
    `classifier.fc` (standardisation included), so the classifier maps images to logits.

    Args:
        classifier: a `LinearClassifier` (its backbone frozen).
        train_data: `(images, labels)` batches of the training split (evaluation view).
        val_data: `(images, labels)` batches of the validation split.
        l2: inverse regularisation strength (scikit-learn's `C`) on standardised features.
        max_iter: L-BFGS iterations.
        progress_every_s: feature-extraction progress lines at this interval (None: silent).

    Returns:
        A dict: `top1`, `top5` and `train_top1` (percent), `iterations`.
    """
    from sklearn.linear_model import LogisticRegression

    from simsiam_keras import knn

    every = progress_every_s
    train_x, train_y = knn.extract_features(classifier.backbone, train_data, 256, False, every)
    val_x, val_y = knn.extract_features(classifier.backbone, val_data, 256, False, every)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    solver = LogisticRegression(C=l2, max_iter=max_iter)
    solver.fit((train_x - mean) / std, train_y)
    # logits = ((f - mean) / std) W^T + b, as one Dense layer on f; classes absent from the
    # training labels get a large negative bias.
    weight = np.zeros((classifier.num_classes, train_x.shape[1]), np.float32)
    bias = np.full(classifier.num_classes, -1e9, np.float32)
    classes = solver.classes_.astype(int)
    coef, intercept = solver.coef_, solver.intercept_
    if len(classes) == 2:  # scikit-learn keeps one row for two classes: logit(1) - logit(0)
        coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-1, 1]) * intercept / 2
    weight[classes], bias[classes] = coef, intercept
    bias[classes] -= weight[classes] @ (mean / std)
    classifier.fc.set_weights([(weight / std).T, bias])

    kernel, bias = (keras.ops.convert_to_numpy(v) for v in classifier.fc.weights)

    def accuracy(x, y, k):
        logits = x @ kernel + bias
        top = np.argsort(-logits, axis=1)[:, :k]
        return 100.0 * float(np.mean((top == y[:, None]).any(axis=1)))

    return {
        "top1": accuracy(val_x, val_y, 1),
        "top5": accuracy(val_x, val_y, min(5, classifier.num_classes)),
        "train_top1": accuracy(train_x, train_y, 1),
        "iterations": int(np.max(solver.n_iter_)),
    }


def snapshot(model):
    """Copies of every variable of `model` (weights and BN moving statistics) by path."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.variables}


def check_unchanged(model, before):
    """Raises if any variable of `model` differs from `snapshot` `before` (official check)."""
    changed = [
        path
        for path, value in snapshot(model).items()
        if path not in before or not np.array_equal(value, before[path])
    ]
    if changed:
        raise RuntimeError(
            f"The frozen backbone changed during linear evaluation ({len(changed)} variables, "
            f"e.g. {changed[:3]}): BatchNorm ran in training mode or the backbone was trainable."
        )


class SavedModelBackbone(keras.layers.Layer):
    """An exported SavedModel backbone (`export.export_backbone`) as a Keras layer (TF only).

    Takes normalised images, as the pipelines give them, and feeds the SavedModel's serving
    function the [0, 255] images it expects.
    """

    def __init__(self, path, **kwargs):
        super().__init__(trainable=False, **kwargs)
        import tensorflow as tf

        self.saved_model_path = path
        self._loaded = tf.saved_model.load(path)
        self._serve = self._loaded.signatures["serving_default"]
        with open(os.path.join(path, "assets", EXPORT_META)) as f:
            self.meta = json.load(f)

    def call(self, images):
        mean = keras.ops.convert_to_tensor(recipe.IMAGENET_MEAN)
        std = keras.ops.convert_to_tensor(recipe.IMAGENET_STD)
        pixels = (images * std + mean) * 255.0
        return self._serve(images=pixels)["features"]


def load_backbone(path, image_size=None):
    """The backbone of a saved SimSiam (`.keras`), a saved backbone, or an exported SavedModel.

    Args:
        path: a `.keras` file (a `SimSiam` or any backbone model), a SavedModel directory
            written by `export.export_backbone`, or a directory holding `model.keras`.
        image_size: the input size the caller will use; checked against the model's.

    Returns:
        A `keras.Model` mapping normalised images `[N, H, W, 3]` to features `[N, C]`.

    Raises:
        ValueError: a missing or unreadable path, or an incompatible input size.
    """
    if not os.path.exists(path):
        raise ValueError(f"Pretrained model not found: {path!r}")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "model.keras")):
        path = os.path.join(path, "model.keras")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"{path!r} is neither a .keras file, a SavedModel nor a directory with model.keras"
            )
        layer = SavedModelBackbone(path)
        size = layer.meta["image_size"]
        if image_size is not None and size is not None and size != image_size:
            raise ValueError(
                f"{path!r} was exported for {size} px images, not image_size={image_size}."
            )
        inputs = keras.Input((image_size or size, image_size or size, 3))
        return keras.Model(inputs, layer(inputs), name="saved_model_backbone")
    try:
        model = keras.models.load_model(path)
    except Exception as e:
        first = str(e).split(". ")[0][:300]  # Keras appends the whole model config
        raise ValueError(f"Could not load a Keras model from {path!r}: {first}") from None
    backbone = getattr(model, "backbone", model)
    shape = backbone.input_shape
    if image_size is not None and shape[1] is not None and shape[1] != image_size:
        raise ValueError(
            f"The backbone in {path!r} takes {shape[1]} px images, not image_size={image_size}."
        )
    return backbone


def input_size(backbone):
    """The square input size a backbone was built or exported for, or None if it takes any.

    Args:
        backbone: a model from `load_backbone`.

    Returns:
        The height (= width) in pixels, or None.
    """
    shape = getattr(backbone, "input_shape", None)
    return int(shape[1]) if shape and len(shape) == 4 and shape[1] is not None else None


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
    from simsiam_keras import sources
    from simsiam_keras.config import ConfigError, validate

    c = validate(config)
    try:
        backbone = load_backbone(c.pretrained, c.image_size)
    except ValueError as e:
        raise ConfigError(f"{{}}: {e}", "pretrained") from None
    size = c.image_size or input_size(backbone)
    if size is None:
        raise ConfigError(f"{{}} {c.pretrained!r} takes any input size: give {{}}.",
                          "pretrained", "image_size")  # fmt: skip
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


def with_global_policy(backbone):
    """`backbone` rebuilt in Keras's global dtype policy (mixed precision), same weights.

    `keras.models.load_model` restores each layer's saved policy (float32), whatever the
    global one; a clone whose layers take the global policy runs in mixed precision. A
    backbone that is not a functional model (an exported SavedModel) is returned as it is.
    """
    policy = keras.mixed_precision.global_policy().name
    layers = getattr(backbone, "layers", [])
    if policy == "float32" or not layers or isinstance(layers[-1], SavedModelBackbone):
        return backbone

    def in_policy(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": policy})

    clone = keras.models.clone_model(backbone, clone_function=in_policy)
    clone.set_weights(backbone.get_weights())
    return clone


def fingerprint(model):
    """A SHA-256 of every variable of `model`: which weights a checkpointed run started from."""
    import hashlib

    digest = hashlib.sha256()
    for value in snapshot(model).values():
        digest.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def run(config, log=print):
    """A linear evaluation of a frozen backbone (`LinearConfig`); returns the results dict.

    The protocol (`config.protocol`; "auto" picks "features" up to `FEATURES_MAX_IMAGES`
    training images, else "official"): "official" trains the linear layer with LARS (or SGD)
    on augmented views, top-1 / top-5 on the validation split every epoch (paper App. A),
    with step checkpoints and resume (`linear_official.train`); "features" fits it exactly on
    frozen features (`fit_on_features`). Both run under `config.strategy` and
    `config.mixed_precision` as pretraining does (the backbone in the mixed policy, the
    linear layer in float32). Either way the backbone is checked unchanged at the end
    (`check_unchanged`). The chief writes `linear_eval.json` (and, for the official protocol,
    `linear_eval.png`) into `config.workdir` (default: beside `config.pretrained`).

    Raises:
        ConfigError: a bad setting; ValueError: unusable data; RuntimeError: a backbone that
        moved; `cli.Interrupted`: SIGINT / SIGTERM (a checkpoint was saved: rerun to resume).
    """
    import time

    from simsiam_keras import data, distribute, linear_official, report
    from simsiam_keras.config import ConfigError, validate

    c = validate(config)
    workdir = c.workdir or default_workdir(c.pretrained)
    strategy, replicas = distribute.start(c.strategy, c.mixed_precision, c.batch_size)
    keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        distribute.deterministic_kernels()
    with distribute.scope(strategy):
        backbone, size, train, val = load_evaluation(c)
        if train.size < c.batch_size:
            raise ConfigError(f"{train.name} has {train.size} images, fewer than one batch "
                              "({}).", "batch_size")  # fmt: skip
        backbone = with_global_policy(backbone)
        keras.utils.set_random_seed(c.seed)  # the same linear layer whatever loading drew
        model = LinearClassifier(backbone, train.num_classes)
        model(np.zeros((1, size, size, 3), "float32"))  # builds the linear layer
    protocol = c.protocol
    if protocol == "auto":
        protocol = "features" if train.size <= FEATURES_MAX_IMAGES else "official"
    before = snapshot(backbone)
    start = time.time()
    history = None
    if protocol == "features":
        train_ds, val_ds = (data.labeled_dataset(s, c.batch_size, size) for s in (train, val))
        fit = fit_on_features(model, train_ds, val_ds, c.l2, progress_every_s=c.progress_every_s)
        results = {"val_top1": fit["top1"], "val_top5": fit["top5"], "best_val_top1": fit["top1"],
                   "train_top1": fit["train_top1"], "iterations": fit["iterations"],
                   "l2": c.l2}  # fmt: skip
    else:
        resolved = dataclasses.replace(c, protocol=protocol)  # "auto" keys the same run
        history = linear_official.train(resolved, model, train, val, size, strategy, workdir,
                                        fingerprint(backbone), log)  # fmt: skip
    check_unchanged(backbone, before)  # raises if the frozen backbone moved
    if not distribute.is_chief():  # the chief reports and writes
        return {"protocol": protocol, "chief": False, "backbone_unchanged": True}
    if history is not None:
        val_top1 = [100 * v for v in history["val_top1"]]
        results = {"val_top1": val_top1[-1], "val_top5": 100 * history["val_top5"][-1],
                   "best_val_top1": max(val_top1), "optimizer": c.optimizer,
                   "epochs": c.epochs}  # fmt: skip
    results = {"pretrained": os.path.abspath(c.pretrained), "dataset": train.name,
               "protocol": protocol, "batch_size": c.batch_size, "replicas": replicas,
               "mixed_precision": c.mixed_precision, "backend": keras.backend.backend(),
               **results, "backbone_unchanged": True,
               "wall_s": time.time() - start}  # fmt: skip
    os.makedirs(workdir, exist_ok=True)
    if history is not None:
        results["history"] = {k: [v for v in values] for k, values in history.items()
                              if not k.endswith("_epochs")}  # fmt: skip
        report.plot_history(
            {"val_top1": [100 * v for v in history["val_top1"]], "loss": history["loss"]},
            os.path.join(workdir, "linear_eval.png"), "linear evaluation",
        )  # fmt: skip
    report.write_json(os.path.join(workdir, "linear_eval.json"), results)
    return results
