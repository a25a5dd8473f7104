"""Convolution backward passes on the jax backend."""

import contextlib
import functools

import jax
from keras import ops


def needs_gradient(x):
    """Returns True: under `jax.jit`, XLA removes products nobody uses."""
    return True


def _vjp(op, inputs, kernel, upstream):
    # Under `jax.jit` the forward that `jax.vjp` traces is dead code and XLA
    # removes it, leaving the two products of the backward pass.
    _, vjp = jax.vjp(op, inputs, kernel)
    return vjp(upstream)


def conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.conv(inputs, kernel)`.

    The input gradient uses `kernel` (pass the feedback kernel here); the
    kernel gradient uses `inputs`. Under `jax.jit` the forward convolution that
    `jax.vjp` traces is dead code and XLA removes it.
    """
    op = functools.partial(
        ops.conv,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )
    return _vjp(op, inputs, kernel, upstream)


def depthwise_conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.depthwise_conv(inputs, kernel)`,
    as `conv_backward` does for `ops.conv`."""
    op = functools.partial(
        ops.depthwise_conv,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )
    return _vjp(op, inputs, kernel, upstream)


def conv_transpose_backward(
    inputs,
    kernel,
    upstream,
    strides,
    padding,
    output_padding,
    dilation_rate,
    data_format,
):
    """Returns `(d_inputs, d_kernel)` of `ops.conv_transpose(inputs, kernel)`,
    as `conv_backward` does for `ops.conv`."""
    op = functools.partial(
        ops.conv_transpose,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )
    return _vjp(op, inputs, kernel, upstream)


def after(x, dependencies):
    """Returns `x`: jax has no side effects to order."""
    return x


#: Whether `keras_fa`'s own training loops (the scikit-learn estimators) apply
#: the optimizer to values (`optimizer.stateless_apply`) inside the compiled
#: function and write the variables back after it: jax.jit needs pure
#: functions.
STATELESS_OPTIMIZER = True


def sync_state(model):
    """Writes the values `model.fit` holds outside the variables back into
    them (jax keeps them apart during an epoch)."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def value_and_grad(fn, diff_args, *args):
    """Returns `(value, aux, grads)` of `value, aux = fn(diff_args, *args)`;
    `grads` has the structure of `diff_args`."""
    (value, aux), grads = jax.value_and_grad(fn, has_aux=True)(diff_args, *args)
    return value, aux, grads


def compile_function(fn, differentiable=True):
    """Returns `fn` compiled with `jax.jit` (`differentiable` is unused)."""
    return jax.jit(fn)


@contextlib.contextmanager
def preserve_random_state():
    """Yields a `rewind()` that does nothing: Keras draws every random
    number on this backend from seed generators, whose state measurements
    read without changing."""
    yield lambda: None
