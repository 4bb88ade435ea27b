"""Linear evaluation (paper Sec. 4, App. A; official `main_lincls.py`) and backbone loading.

The backbone is frozen and runs in inference mode for the whole run (its BatchNorm statistics
do not move); a linear layer on its pooled features, weights ~ N(0, 0.01) and bias 0, is trained
with LARS (batch 4096, lr 0.1 x batch / 256, cosine, 90 epochs) or plain SGD (lr 30, batch 256).
`snapshot` / `check_unchanged` are the official sanity check that no backbone weight and no BN
moving statistic changed.
"""

import os

import keras
import numpy as np

from simsiam_keras import knn, recipe, workarounds
from simsiam_keras import model as _model  # also registers SimSiam for load_model
from simsiam_keras.lars import LARS
from simsiam_keras.optim import SGD, SimSiamSchedule


@keras.saving.register_keras_serializable(package="simsiam_keras")
class LinearClassifier(_model.PipelineFit, workarounds.LocalSymbolicBuild, keras.Model):
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

        from simsiam_keras import export

        self.saved_model_path = path
        self._loaded = tf.saved_model.load(path)
        self._serve = self._loaded.signatures["serving_default"]
        self.meta = export.read_meta(path)

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
