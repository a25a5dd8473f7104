"""The feedback ops: products of an input and a kernel with a chosen backward.

A matmul, an einsum, and convolutions (plain, depthwise, transposed). Each runs
the usual forward op. Their backward pass returns the local kernel
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

    def backward(x, b, dy):
        # B serves only d inputs: torch skips both for a model's first layer
        # (tensorflow and jax prune them when compiling).
        dx = None
        if backend.needs_gradient(x):
            dx = ops.matmul(dy, ops.transpose(b))
        if len(x.shape) == 2:
            return dx, ops.matmul(ops.transpose(x), dy)
        dw = ops.matmul(
            ops.transpose(ops.reshape(x, (-1, x.shape[-1]))),
            ops.reshape(dy, (-1, dy.shape[-1])),
        )
        return dx, dw

    return _feedback_product(
        inputs, kernel, rule, feedback, ops.matmul, backward
    )


def feedback_matmul_transposed(inputs, kernel, rule, feedback=()):
    """Returns `inputs @ transpose(kernel)`, whose gradient follows `rule`.

    The product of a tied embedding used as an output layer (logits
    `x E^T`, E of shape `(vocab, dim)`). Gradients: `d inputs = delta B` with
    `B = rule.backward_kernel(kernel, *feedback)` shaped like the kernel;
    `d kernel = delta^T x` summed over all leading axes.
    """

    def backward(x, b, dy):
        dx = None
        if backend.needs_gradient(x):
            dx = ops.matmul(dy, b)
        dw = ops.matmul(
            ops.transpose(ops.reshape(dy, (-1, dy.shape[-1]))),
            ops.reshape(x, (-1, x.shape[-1])),
        )
        return dx, dw

    return _feedback_product(
        inputs,
        kernel,
        rule,
        feedback,
        lambda x, w: ops.matmul(x, ops.transpose(w)),
        backward,
    )


def _feedback_product(inputs, kernel, rule, feedback, forward, backward):
    """Returns `forward(inputs, kernel)`, whose gradient follows `rule`.

    `backward(x, b, dy)` returns `(d inputs, d kernel)` of the product, with
    the input gradient taken through `b` (the rule's backward kernel, or the
    forward kernel where the input needs no gradient) and the kernel gradient
    from `x`: the two products backprop computes, with one operand swapped.
    """

    @ops.custom_gradient
    def product(x, w, *fb):
        def grad(*args, upstream=None):
            dy = _upstream(args, upstream)
            # B serves only d inputs, which the backends skip where they are
            # not needed (torch); then any kernel of the right shape does.
            b = rule.backward_kernel(w, *fb) if backend.needs_gradient(x) else w
            dx, dw = backward(x, b, dy)
            return (dx, dw, *_feedback_gradients(rule, dw, fb, w))

        return forward(x, w), grad

    return product(inputs, kernel, *feedback)


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
    return _feedback_conv_product(
        inputs,
        kernel,
        rule,
        feedback,
        ops.conv,
        backend.conv_backward,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )


def feedback_depthwise_conv(
    inputs,
    kernel,
    rule,
    feedback=(),
    strides=1,
    padding="valid",
    dilation_rate=1,
    data_format=None,
):
    """Returns `ops.depthwise_conv(inputs, kernel, ...)`, whose gradient
    follows `rule`.

    Gradients: `d inputs` is the transposed depthwise convolution of delta
    with `B = rule.backward_kernel(kernel, *feedback)` (B shaped like the
    depthwise kernel, `(*kernel_size, in_channels, depth_multiplier)`);
    `d kernel` is the usual one. Arguments after `feedback` are those of
    `keras.ops.depthwise_conv`.
    """
    return _feedback_conv_product(
        inputs,
        kernel,
        rule,
        feedback,
        ops.depthwise_conv,
        backend.depthwise_conv_backward,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )


def feedback_conv_transpose(
    inputs,
    kernel,
    rule,
    feedback=(),
    strides=1,
    padding="valid",
    output_padding=None,
    dilation_rate=1,
    data_format=None,
):
    """Returns `ops.conv_transpose(inputs, kernel, ...)`, whose gradient
    follows `rule`.

    Gradients: `d inputs` is the convolution of delta with
    `B = rule.backward_kernel(kernel, *feedback)` (B shaped like the kernel,
    `(*kernel_size, filters, in_channels)`); `d kernel` is the usual one.
    Arguments after `feedback` are those of `keras.ops.conv_transpose`.
    """
    return _feedback_conv_product(
        inputs,
        kernel,
        rule,
        feedback,
        ops.conv_transpose,
        backend.conv_transpose_backward,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation_rate=dilation_rate,
        data_format=data_format,
    )


def feedback_einsum(equation, inputs, kernel, rule, feedback=()):
    """Returns `ops.einsum(equation, inputs, kernel)`, whose gradient follows
    `rule`.

    `equation` is an `EinsumDense` equation, `"<in>,<kernel>-><out>"`,
    with an optional `...` in the input and output. Gradients:
    `d inputs = einsum("<out>,<kernel>-><in>", delta, B)` with
    `B = rule.backward_kernel(kernel, *feedback)` shaped like the kernel;
    `d kernel = einsum("<in>,<out>-><kernel>", inputs, delta)`; an axis that
    only one operand has (summed in the forward pass) gets its gradient
    broadcast along it.
    """
    in_spec, kernel_spec, out_spec = einsum_specs(equation, len(inputs.shape))

    def backward(x, b, dy):
        dx = None
        if backend.needs_gradient(x):
            dx = _einsum_to(out_spec, dy, kernel_spec, b, in_spec, x.shape)
        dw = _einsum_to(in_spec, x, out_spec, dy, kernel_spec, b.shape)
        return dx, dw

    spec = f"{in_spec},{kernel_spec}->{out_spec}"
    return _feedback_product(
        inputs,
        kernel,
        rule,
        feedback,
        lambda x, w: ops.einsum(spec, x, w),
        backward,
    )


def einsum_specs(equation, input_rank):
    """Returns the `(input, kernel, output)` index strings of an EinsumDense
    equation, with `...` spelled out as letters for an input of rank
    `input_rank`."""
    operands, out_spec = equation.replace(" ", "").split("->")
    in_spec, kernel_spec = operands.split(",")
    if "..." in in_spec:
        used = set(in_spec + kernel_spec + out_spec)
        free = [c for c in _LETTERS if c not in used]
        n = input_rank - (len(in_spec) - 3)
        ellipsis = "".join(free[:n])
        in_spec = in_spec.replace("...", ellipsis)
        out_spec = out_spec.replace("...", ellipsis)
    return in_spec, kernel_spec, out_spec


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_to(spec_a, a, spec_b, b, target, shape):
    # The gradient of one einsum operand: the einsum of the other two, with
    # the axes that only the target has (summed alone in the forward pass)
    # broadcast back.
    kept = "".join(c for c in target if c in spec_a or c in spec_b)
    result = ops.einsum(f"{spec_a},{spec_b}->{kept}", a, b)
    if kept == target:
        return result
    expanded = [i for i, c in enumerate(target) if c not in kept]
    result = ops.expand_dims(result, expanded)
    return ops.broadcast_to(result, tuple(shape))


def _feedback_conv_product(
    inputs, kernel, rule, feedback, forward, backward, **kwargs
):
    # The convolutions' common wiring: one set of keyword arguments for the
    # keras op and its backend backward, with per-axis steps as tuples.
    rank = len(inputs.shape) - 2
    kwargs["strides"] = _tuple(kwargs["strides"], rank)
    kwargs["dilation_rate"] = _tuple(kwargs["dilation_rate"], rank)
    return _feedback_product(
        inputs,
        kernel,
        rule,
        feedback,
        lambda x, w: forward(x, w, **kwargs),
        lambda x, b, dy: backward(x, b, dy, **kwargs),
    )


def _tuple(value, rank):
    if isinstance(value, int):
        return (value,) * rank
    return tuple(value)
