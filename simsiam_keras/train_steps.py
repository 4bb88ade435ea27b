"""The gradient step of `SimSiam.train_step` on each backend.

The maths (forward pass, loss, metrics) is the model's, in backend-neutral `keras.ops`; what
differs per backend is how the gradient is taken and applied, as in Keras's own trainers
(`keras/src/backend/{tensorflow,jax,torch}/trainer.py`): a `tf.GradientTape`; a pure function
of the state through `jax.value_and_grad`; `backward()` on a PyTorch tensor.
"""

import keras
from keras import ops

from simsiam_keras import workarounds


def tensorflow_step(model, x1, x2):
    """One step under TensorFlow (any `tf.distribute` strategy); returns the logs."""
    import tensorflow as tf

    lr = model.optimizer.learning_rate
    with tf.GradientTape() as tape:
        outputs = model((x1, x2), training=True)
        loss = model.compute_simsiam_loss(outputs)
        # Gradients are summed over replicas, so each replica's mean is divided by their
        # number (docs/keras_notes.md, trap 1).
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        scaled = model.optimizer.scale_loss(loss / replicas)
    grads = tape.gradient(scaled, model.trainable_variables)
    model.optimizer.apply(grads, model.trainable_variables)
    logs = model.update_simsiam_metrics(loss, outputs["z1"], lr)
    return workarounds.multi_worker_logs(logs, tf.distribute.get_strategy())


def torch_step(model, x1, x2):
    """One step under PyTorch; returns the logs."""
    import torch

    lr = model.optimizer.learning_rate
    model.zero_grad()
    outputs = model((x1, x2), training=True)
    loss = model.compute_simsiam_loss(outputs)
    model.optimizer.scale_loss(loss).backward()
    grads = [v.value.grad for v in model.trainable_variables]
    with torch.no_grad():
        model.optimizer.apply(grads, model.trainable_variables)
    return model.update_simsiam_metrics(
        ops.stop_gradient(loss), ops.stop_gradient(outputs["z1"]), lr
    )


def jax_step(model, state, x1, x2):
    """One step under JAX, a pure function of `state`; returns `(logs, new state)`.

    `state` is Keras's `(trainable, non_trainable, optimizer, metrics)` variable values.
    """
    import jax

    trainable, non_trainable, optimizer_vars, metrics_vars = state
    optimizer_mapping = list(zip(model.optimizer.variables, optimizer_vars))

    def loss_fn(trainable, non_trainable):
        outputs, non_trainable = model.stateless_call(
            trainable, non_trainable, (x1, x2), training=True
        )
        loss = model.compute_simsiam_loss(outputs)
        with keras.StatelessScope(state_mapping=optimizer_mapping):
            scaled = model.optimizer.scale_loss(loss)
        return scaled, (loss, outputs["z1"], non_trainable)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (loss, z1, non_trainable)), grads = grad_fn(trainable, non_trainable)
    with keras.StatelessScope(state_mapping=optimizer_mapping):
        lr = ops.convert_to_tensor(model.optimizer.learning_rate)  # a Variable when constant
    trainable, optimizer_vars = model.optimizer.stateless_apply(optimizer_vars, grads, trainable)
    logs, metrics_vars = jax_metrics(model, metrics_vars, loss, z1, lr)
    return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)


def jax_metrics(model, metrics_vars, loss, z1, lr=None):
    """`model.update_simsiam_metrics` on JAX metric values; returns `(logs, new values)`."""
    with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables, metrics_vars))) as s:
        logs = model.update_simsiam_metrics(loss, z1, lr)
    return logs, [s.get_current_value(v) for v in model.metrics_variables]
