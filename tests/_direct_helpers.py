"""Helpers of the direct-feedback tests: numpy conversions, the head of a
model, and the gradients of a model's loss on the active backend."""

import keras
import numpy as np
from keras import ops

import keras_fa
from tests.gradients import BACKEND

ATOL = 2e-5
RTOL = 2e-4


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def f64(x):
    return numpy(x).astype(np.float64)


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def random_init(seed, mean=0.0, stddev=0.5):
    return keras.initializers.RandomNormal(mean, stddev, seed=seed)


def layers_of(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


def head_of(model):
    (head,) = layers_of(model, keras_fa.DirectFeedback)
    return head


def model_gradients(model, x, loss_fn, compiled=False):
    """Returns `{path: gradient}` of every trainable variable (zeros where
    the backend reports none)."""
    trainable = [numpy(v) for v in model.trainable_variables]
    non_trainable = [numpy(v) for v in model.non_trainable_variables]
    grads = _MODEL_GRADIENTS[BACKEND](
        model, trainable, non_trainable, x, loss_fn, compiled
    )
    return {
        v.path: np.zeros_like(t) if g is None else numpy(g)
        for v, t, g in zip(model.trainable_variables, trainable, grads)
    }


def _tf_model_gradients(model, trainable, non_trainable, x, loss_fn, compiled):
    import tensorflow as tf

    def f(trainable, non_trainable, x):
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            y_pred, _ = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            loss = loss_fn(y_pred)
        return tape.gradient(loss, trainable)

    if compiled:
        f = tf.function(f, jit_compile=True)
    return f(
        [tf.constant(v) for v in trainable],
        [tf.constant(v) for v in non_trainable],
        tf.constant(x),
    )


def _jax_model_gradients(model, trainable, non_trainable, x, loss_fn, compiled):
    import jax

    def loss(trainable, non_trainable, x):
        y_pred, _ = model.stateless_call(
            trainable, non_trainable, x, training=True
        )
        return loss_fn(y_pred)

    f = jax.grad(loss)
    if compiled:
        f = jax.jit(f)
    return f(trainable, non_trainable, x)


def _torch_model_gradients(
    model, trainable, non_trainable, x, loss_fn, compiled
):
    import torch

    assert not compiled, "torch is checked eagerly"
    trainable = [torch.tensor(v, requires_grad=True) for v in trainable]
    y_pred, _ = model.stateless_call(
        trainable,
        [torch.tensor(v) for v in non_trainable],
        torch.tensor(x),
        training=True,
    )
    grads = torch.autograd.grad(loss_fn(y_pred), trainable, allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


_MODEL_GRADIENTS = {
    "tensorflow": _tf_model_gradients,
    "jax": _jax_model_gradients,
    "torch": _torch_model_gradients,
}


def linear_loss(upstream):
    """A loss whose gradient with respect to `y_pred` is `upstream`."""
    return lambda y_pred: ops.sum(y_pred * ops.convert_to_tensor(upstream))
