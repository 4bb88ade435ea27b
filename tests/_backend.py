"""Gradients on whichever Keras backend is active, for tests only."""

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def grads_wrt_inputs(fn, *arrays):
    """Value of fn(*tensors) and its gradients with respect to every input array."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = fn(*xs)
        grads = tape.gradient(value, xs, unconnected_gradients="zero")
    elif backend == "torch":
        import torch

        xs = [torch.tensor(a, requires_grad=True) for a in arrays]
        value = fn(*xs)
        grads = torch.autograd.grad(value, xs, allow_unused=True, materialize_grads=True)
    else:
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))(*arrays)
    return float(to_numpy(value)), [to_numpy(g) for g in grads]


def model_loss_and_grads(model, inputs, loss_fn):
    """Outputs, loss and trainable-variable gradients of loss_fn(model(inputs, training=True))."""
    backend = keras.backend.backend()
    variables = model.trainable_variables
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            loss = loss_fn(outputs)
        grads = tape.gradient(loss, variables)
    elif backend == "torch":
        import torch

        outputs = model(inputs, training=True)
        loss = loss_fn(outputs)
        grads = torch.autograd.grad(loss, [v.value for v in variables])
    else:
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def f(values):
            out, _ = model.stateless_call(values, non_trainable, inputs, training=True)
            return loss_fn(out), out

        # Compiled once as a whole: eagerly, JAX compiles each op of the ResNet on its own.
        step = jax.jit(jax.value_and_grad(f, has_aux=True))
        (loss, outputs), grads = step([v.value for v in variables])
    outputs = {k: to_numpy(v) for k, v in outputs.items()}
    return outputs, float(to_numpy(loss)), [np.asarray(to_numpy(g)) for g in grads]
