"""Convolution backward passes on the tensorflow backend."""

import contextlib
import functools
import logging

import tensorflow as tf
from keras import ops


def needs_gradient(x):
    """Returns True: in a `tf.function`, grappler prunes unused products."""
    return True


def _vjp(op, inputs, kernel, upstream):
    # Inside a `tf.function` (as in `model.fit`) the forward recorded on the
    # tape feeds nothing and is pruned, leaving the two backward products.
    with tf.GradientTape() as tape:
        tape.watch([inputs, kernel])
        outputs = op(inputs, kernel)
    d_inputs, d_kernel = tape.gradient(
        outputs, [inputs, kernel], output_gradients=upstream
    )
    return d_inputs, d_kernel


def conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.conv(inputs, kernel)`.

    The input gradient uses `kernel` (pass the feedback kernel here); the
    kernel gradient uses `inputs`. Inside a `tf.function` (as in `model.fit`)
    the forward convolution recorded on the tape feeds nothing and is pruned.
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
    """Returns `x`, computed only once the `dependencies` have been."""
    with tf.control_dependencies(list(dependencies)):
        return tf.identity(x)


#: Whether `keras_fa`'s own training loops (the scikit-learn estimators) apply
#: the optimizer to values: no, Keras's tensorflow optimizer refuses
#: `stateless_apply` (for tf.distribute); variables are updated in place
#: inside the tf.function.
STATELESS_OPTIMIZER = False


def sync_state(model):
    """Nothing to do: the variables hold their values during `model.fit`."""
    del model


def value_and_grad(fn, diff_args, *args):
    """Returns `(value, aux, grads)` of `value, aux = fn(diff_args, *args)`;
    `grads` has the structure of `diff_args`, zeros where unconnected."""
    with tf.GradientTape() as tape:
        tape.watch(diff_args)
        value, aux = fn(diff_args, *args)
    grads = tape.gradient(
        value, diff_args, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value, aux, grads


class _NoRetracingWarning(logging.Filter):
    # One function is compiled per measured model, from the same code:
    # tensorflow then warns about "retracing", meant for functions created
    # in a loop by mistake.
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def compile_function(fn, differentiable=True):
    """Returns `fn` as a `tf.function` (a graph, without XLA);
    `differentiable` is unused."""
    compiled = tf.function(fn, reduce_retracing=True)

    def call(*args):
        logger = tf.get_logger()
        quiet = _NoRetracingWarning()
        logger.addFilter(quiet)
        try:
            return compiled(*args)
        finally:
            logger.removeFilter(quiet)

    return call


@contextlib.contextmanager
def preserve_random_state():
    """Yields a `rewind()` that does nothing: Keras draws every random
    number on this backend from seed generators, whose state measurements
    read without changing."""
    yield lambda: None
