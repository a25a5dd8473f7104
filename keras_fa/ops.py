"""The two feedback ops: a matmul and a convolution with a chosen backward.

Both run the usual forward op. Their backward pass returns the local kernel
gradient and sends the error to the input through `rule.backward_kernel(...)`
instead of the forward kernel: the same products backprop computes, with one
operand swapped, so a feedback layer costs what a backprop layer costs.
"""

from keras import ops

from keras_fa import backend


def _feedback_gradients(rule, d_kernel, feedback, kernel):
    # A learning feedback variable (kp, wm) is read in the forward pass and used
    # for d inputs, then written by the optimizer in the same step. Making its
    # gradient wait for the values read keeps that write after the read on
    # every graph optimizer (tensorflow's grappler otherwise could reorder
    # them), without forcing d inputs where nobody uses them.
    grads = rule.feedback_gradients(d_kernel, feedback, kernel)
    if not feedback:
        return grads
    return tuple(
        None if g is None else backend.after(g, feedback) for g in grads
    )


def _upstream(args, upstream):
    # torch passes the upstream gradient by keyword, tensorflow and jax by
    # position.
    return args[0] if upstream is None else upstream


def feedback_matmul(inputs, kernel, rule, feedback=()):
    """Returns `inputs @ kernel`, whose gradient follows `rule`.

    Gradients: `d inputs = delta B^T` with `B = rule.backward_kernel(kernel,
    *feedback)`; `d kernel = x^T delta` summed over all leading axes;
    `d feedback = rule.feedback_gradients(d kernel, feedback, kernel)`.

    Args:
        inputs: tensor of shape `(..., in)`.
        kernel: tensor of shape `(in, out)` (a value, not a variable).
        rule: a `keras_fa.feedback.FeedbackRule`.
        feedback: tuple of tensors the rule's backward pass needs.
    """

    @ops.custom_gradient
    def matmul(x, w, *fb):
        def grad(*args, upstream=None):
            dy = _upstream(args, upstream)
            dx = None
            # B serves only d inputs: torch skips both for a model's first
            # layer (tensorflow and jax prune them when compiling).
            if backend.needs_gradient(x):
                b = rule.backward_kernel(w, *fb)
                dx = ops.matmul(dy, ops.transpose(b))
            if len(x.shape) == 2:
                dw = ops.matmul(ops.transpose(x), dy)
            else:
                dw = ops.matmul(
                    ops.transpose(ops.reshape(x, (-1, x.shape[-1]))),
                    ops.reshape(dy, (-1, dy.shape[-1])),
                )
            return (dx, dw, *_feedback_gradients(rule, dw, fb, w))

        return ops.matmul(x, w), grad

    return matmul(inputs, kernel, *feedback)


def feedback_conv(
    inputs,
    kernel,
    rule,
    feedback=(),
    strides=1,
    padding="valid",
    dilation_rate=1,
    data_format=None,
):
    """Returns `ops.conv(inputs, kernel, ...)`, whose gradient follows `rule`.

    Gradients: `d inputs` is the transposed convolution of delta with
    `B = rule.backward_kernel(kernel, *feedback)`; `d kernel` is the usual
    kernel gradient from the inputs and delta; `d feedback` as the rule says.
    Arguments after `feedback` are those of `keras.ops.conv`.
    """
    rank = len(inputs.shape) - 2
    strides = _tuple(strides, rank)
    dilation_rate = _tuple(dilation_rate, rank)

    @ops.custom_gradient
    def conv(x, w, *fb):
        def grad(*args, upstream=None):
            dy = _upstream(args, upstream)
            # B serves only d inputs, which conv_backward skips where they
            # are not needed (torch); then any kernel of the right shape does.
            b = rule.backward_kernel(w, *fb) if backend.needs_gradient(x) else w
            dx, dw = backend.conv_backward(
                x, b, dy, strides, padding, dilation_rate, data_format
            )
            return (dx, dw, *_feedback_gradients(rule, dw, fb, w))

        y = ops.conv(
            x,
            w,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            data_format=data_format,
        )
        return y, grad

    return conv(inputs, kernel, *feedback)


def _tuple(value, rank):
    if isinstance(value, int):
        return (value,) * rank
    return tuple(value)
