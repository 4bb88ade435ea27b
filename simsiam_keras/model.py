"""SimSiam as a `keras.Model` with its own `train_step` (paper Sec. 3, Algorithm 1).

The maths (forward pass, loss, metrics) is backend-neutral `keras.ops`; only the gradient step
differs per backend: `train_steps.py` has one short function per backend, and
`workarounds.py` the two upstream multi-worker bugs they avoid.

Data: `fit` takes elements whose x is the pair of views, e.g. a tf.data dataset of
`((x1, x2),)`, of `((x1, x2), labels)` (labels ignored) or of `{"x1": x1, "x2": x2}`, or NumPy
arrays as `model.fit((x1, x2), batch_size=...)`. A plain `(x1, x2)` element would be read by
Keras as `(x, y)` (docs/keras_notes.md, trap 7).
"""

import keras
from keras import ops

# device_augment: registers ViewAugment, which `from_config` may meet as `augment`.
from simsiam_keras import backbones, device_augment, heads, losses, train_steps, workarounds  # noqa: F401


def _unpack_views(data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, dict):
        return x["x1"], x["x2"]
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    raise ValueError(
        "SimSiam expects each element's x to be the two views: ((x1, x2),), ((x1, x2), y) or "
        f"{{'x1': x1, 'x2': x2}}. Received x of type {type(x).__name__}"
    )


class PipelineFit:
    """A `keras.Model` mixin: `fit` without a `shuffle` that a tf.data pipeline would ignore.

    Keras warns on every `fit` of a `tf.data.Dataset` that its default `shuffle=True` is
    ignored (a dataset is never reshuffled by `fit`); the package's training pipelines shuffle
    themselves (`data.two_view_dataset`, `data.labeled_dataset(train=True)`), so for a dataset
    the default here is False, which changes nothing but the warning. Arrays are shuffled as
    Keras does.
    """

    def fit(self, x=None, *args, **kwargs):
        shuffle_given = len(args) > 7 or "shuffle" in kwargs  # shuffle: fit's 9th parameter
        if not shuffle_given and hasattr(x, "element_spec") and hasattr(x, "as_numpy_iterator"):
            kwargs["shuffle"] = False
        return super().fit(x, *args, **kwargs)


@keras.saving.register_keras_serializable(package="simsiam_keras")
class SimSiam(PipelineFit, workarounds.SkipSymbolicBuild, keras.Model):
    """SimSiam: encoder f = projector(backbone(x)), predictor h, stop-gradient on the target.

    The encoder runs on x1 and on x2 separately, as the official code does, so BatchNorm
    statistics are per view. `train_step` minimises
    L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)) with D the negative cosine similarity,
    and logs `loss`, `z_std` (the collapse signal of Sec. 4.1, about 1/sqrt(dim) when healthy)
    and `lr`.

    Args:
        backbone: a `keras.Model` mapping images to pooled 2-D features `[N, C]`, e.g.
            `simsiam_keras.build_resnet("resnet50")`. Reachable as `model.backbone`.
        dim: projector output width (paper: 2048).
        pred_dim: predictor bottleneck width (paper: 512).
        projector_layers: 3 (ImageNet, App. A) or 2 (CIFAR variant, App. D).
        stop_gradient: False removes the stop-gradient: the collapse ablation of Fig. 2.
        synchronized_bn: SyncBN in the heads across replicas: True, False or "auto"
            (default): True when the model is built under a `tf.distribute` strategy with more
            than one replica (TensorFlow backend), else False; always False on JAX and
            PyTorch, where True raises (see `heads.resolve_synchronized_bn`). Resolved here to
            a bool, which `get_config` stores, so a saved model reloads identically. The
            backbone's BN is set when it is built (`build_resnet` has the same default).
        augment: an optional layer applied to each view first, e.g.
            `device_augment.ViewAugment()` when the pipeline leaves the colour steps to the
            accelerator (`augment_on="device"`); it gets the `training` flag.
        **kwargs: `keras.Model` arguments such as `name`.

    Example:
        >>> backbone = build_resnet("resnet18_cifar", image_size=32)
        >>> model = SimSiam(backbone, dim=2048, pred_dim=512, projector_layers=2)
        >>> model.compile(optimizer=simsiam_optimizer(base_lr=0.03, batch_size=512,
        ...                                          epochs=800, steps_per_epoch=97))
        >>> model.fit(two_view_dataset, epochs=800)

    Reference:
        Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.
    """

    def __init__(
        self,
        backbone,
        dim=2048,
        pred_dim=512,
        projector_layers=3,
        stop_gradient=True,
        synchronized_bn="auto",
        augment=None,
        **kwargs,
    ):
        if not isinstance(backbone, keras.Model):
            raise ValueError(
                "`backbone` must be a keras.Model mapping images to [N, C] features. "
                f"Received: backbone={backbone!r}"
            )
        feature_dim = backbones.feature_dim(backbone)
        synchronized_bn = heads.resolve_synchronized_bn(synchronized_bn)
        super().__init__(**kwargs)
        # Layers.
        self.backbone = backbone
        self.projector = heads.build_projector(feature_dim, dim, projector_layers, synchronized_bn)
        self.predictor = heads.build_predictor(dim, pred_dim, synchronized_bn)
        self.augment = augment
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.z_std_tracker = keras.metrics.Mean(name="z_std")
        # Config.
        self.dim = dim
        self.pred_dim = pred_dim
        self.projector_layers = projector_layers
        self.stop_gradient = stop_gradient
        self.synchronized_bn = synchronized_bn  # the resolved bool
        # All variables exist now; `fit` must not try a symbolic build on the two-view input
        # (docs/keras_notes.md, trap 15).
        self.built = True

    def call(self, inputs, training=False):
        """Runs both branches.

        Args:
            inputs: the views `(x1, x2)`, each `[N, H, W, 3]`.
            training: BatchNorm mode.

        Returns:
            A dict with `p1, p2` (predictions) and `z1, z2` (projections), each `[N, dim]`.
        """
        x1, x2 = inputs
        if self.augment is not None:
            x1 = self.augment(x1, training=training)
            x2 = self.augment(x2, training=training)
        z1 = self.projector(self.backbone(x1, training=training), training=training)
        z2 = self.projector(self.backbone(x2, training=training), training=training)
        p1 = self.predictor(z1, training=training)
        p2 = self.predictor(z2, training=training)
        return {"p1": p1, "p2": p2, "z1": z1, "z2": z2}

    def compute_simsiam_loss(self, outputs):
        """The symmetric loss of `call`'s outputs, with `ops.stop_gradient` on z (Eq. 4)."""
        return losses.simsiam_loss(
            outputs["p1"], outputs["p2"], outputs["z1"], outputs["z2"], self.stop_gradient
        )

    @property
    def metrics(self):
        return [self.loss_tracker, self.z_std_tracker]

    def update_simsiam_metrics(self, loss, z1, lr=None):
        """Updates the loss and z_std trackers; returns the logs (with `lr` when given)."""
        self.loss_tracker.update_state(loss)
        self.z_std_tracker.update_state(losses.output_std(z1))
        logs = {m.name: m.result() for m in self.metrics}
        if lr is not None:
            logs["lr"] = ops.convert_to_tensor(lr, "float32")
        return logs

    def train_step(self, *args):
        """One SGD step on a batch of view pairs, by the backend's step in `train_steps`."""
        backend = keras.backend.backend()
        if backend == "jax":
            state, data = args
            return train_steps.jax_step(self, state, *_unpack_views(data))
        if backend == "torch":
            return train_steps.torch_step(self, *_unpack_views(args[0]))
        return train_steps.tensorflow_step(self, *_unpack_views(args[0]))

    def test_step(self, *args):
        """Loss and z_std of a batch of view pairs with BatchNorm in inference mode."""
        if keras.backend.backend() != "jax":
            outputs = self(_unpack_views(args[0]), training=False)
            return self.update_simsiam_metrics(self.compute_simsiam_loss(outputs), outputs["z1"])
        (trainable, non_trainable, metrics_vars), data = args
        outputs, non_trainable = self.stateless_call(
            trainable, non_trainable, _unpack_views(data), training=False
        )
        loss = self.compute_simsiam_loss(outputs)
        logs, metrics_vars = train_steps.jax_metrics(self, metrics_vars, loss, outputs["z1"])
        return logs, (trainable, non_trainable, metrics_vars)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "dim": self.dim,
                "pred_dim": self.pred_dim,
                "projector_layers": self.projector_layers,
                "stop_gradient": self.stop_gradient,
                "synchronized_bn": self.synchronized_bn,
                "augment": keras.saving.serialize_keras_object(self.augment),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["augment"] = keras.saving.deserialize_keras_object(config.get("augment"))
        return cls(**config)
