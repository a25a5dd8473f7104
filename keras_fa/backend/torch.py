"""Convolution backward passes on the torch backend.

torch runs eagerly, so tracing a forward convolution to differentiate it would
cost a whole extra convolution. Instead we call the kernel torch's own autograd
calls for a convolution, `aten.convolution_backward`, with the feedback kernel
in place of the weight, after the same layout changes and padding that keras's
torch `ops.conv` (`ops.depthwise_conv`, `ops.conv_transpose`) applies in the
forward pass.
"""

import contextlib

import keras
import torch
from keras import tree
from keras.src.backend.common import backend_utils


def needs_gradient(x):
    """Returns whether autograd will use the gradient of `x`."""
    return bool(getattr(x, "requires_grad", True))


def _tuple(value, rank):
    # Layers pass tuples; keras.ops also takes one int for every axis.
    if isinstance(value, int):
        return (value,) * rank
    return tuple(value)


def _is_channels_last(data_format):
    # None means keras's configured default, as in keras.ops.
    data_format = data_format or keras.config.image_data_format()
    return data_format == "channels_last"


def _same_padding(length, kernel_length, stride, dilation):
    # Mirrors keras's torch backend: the extra pixel goes at the end.
    effective = (kernel_length - 1) * dilation + 1
    if stride == 1:
        total = effective - 1
    else:
        out = (length + stride - 1) // stride
        total = max(0, (out - 1) * stride + effective - length)
    return total // 2, total - total // 2


def _pad(x, pads):
    # Pads (or, where negative, crops) the spatial axes of an N, C, ... tensor
    # by `(left, right)` per axis; torch.nn.functional.pad lists the last
    # axis first.
    flat = []
    for left, right in reversed(pads):
        flat.extend((left, right))
    return torch.nn.functional.pad(x, flat)


def _crop(x, pads):
    # Removes what `_pad` added.
    return x[
        (slice(None), slice(None))
        + tuple(
            slice(left, x.shape[2 + i] - right)
            for i, (left, right) in enumerate(pads)
        )
    ]


def _conv_padding(x, kernel_size, strides, dilation, padding):
    """Returns `(x, pad, crop)` as keras's torch conv pads `x`: torch's own
    symmetric `pad` where "same" padding is symmetric; otherwise `x` padded by
    hand, `pad` zero, and `crop` the `(left, right)` per axis that d inputs
    must lose again (None when nothing was padded by hand)."""
    rank = x.ndim - 2
    if padding != "same":
        return x, [0] * rank, None
    pads = [
        _same_padding(x.shape[2 + i], kernel_size[i], strides[i], dilation[i])
        for i in range(rank)
    ]
    if all(left == right for left, right in pads):
        return x, [left for left, _ in pads], None
    return _pad(x, pads), [0] * rank, pads


def _transpose_padding(crops, strides, dilation):
    """Returns `(pad, output_padding, fix)` for a transposed convolution.

    keras's torch `conv_transpose` runs torch's with no padding and crops the
    result by `crops`, `(left, right)` per axis (negative: zero-pads). torch
    itself crops `pad` from both sides and then adds `output_padding` zeros at
    the end (`output_padding < max(stride, dilation)`): where that is the same
    window, the backward needs nothing more (`fix` is None). Otherwise (e.g.
    "same" with stride 2 and an odd kernel crops only at the end) `fix` says
    how to pad the upstream gradient to torch's window, which is what autograd
    does too (the backward of keras's crop writes it into zeros).
    """
    pad, output_padding, fix = [], [], []
    for (left, right), stride, rate in zip(crops, strides, dilation):
        if left >= 0 and 0 <= left - right < max(stride, rate):
            pad.append(left)
            output_padding.append(left - right)
            fix.append((0, 0))
        else:
            common = max(0, min(left, right))
            pad.append(common)
            output_padding.append(0)
            fix.append((left - common, right - common))
    if all(pads == (0, 0) for pads in fix):
        fix = None
    return pad, output_padding, fix


def _keras_transpose_padding(
    input_shape, kernel_shape, strides, padding, output_padding, dilation
):
    """Returns `_transpose_padding`'s `(pad, output_padding, fix)` for the
    window keras's torch `conv_transpose` computes."""
    args = dict(
        input_shape=input_shape,
        kernel_shape=kernel_shape,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation_rate=dilation,
    )
    crops = getattr(
        backend_utils, "compute_conv_transpose_output_crops_for_torch", None
    )
    if crops is None:
        # Older keras releases (without that helper) passed torch these
        # padding arguments, so their forward is torch's with these.
        pad, output_padding = (
            backend_utils.compute_conv_transpose_padding_args_for_torch(**args)
        )
        return pad, output_padding, None
    return _transpose_padding(crops(**args), strides, dilation)


_CHANNELS_LAST_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _like_forward(tensor, channels_last):
    # For channels_last data, keras's torch conv runs the forward convolution
    # on tensors in torch's channels_last memory format, so autograd runs its
    # backward on them too. The moved-axis views here already have that
    # layout: keeping it copies nothing and computes what autograd computes,
    # where plain `.contiguous()` copied x, dy and w to NCHW every step and
    # ran a slower kernel (1.25-1.5x the backprop conv on LeNet's layers).
    fmt = _CHANNELS_LAST_FORMATS.get(tensor.ndim) if channels_last else None
    if fmt is None:
        return tensor.contiguous()
    return tensor.contiguous(memory_format=fmt)


def _to_torch(inputs, kernel, upstream, channels_last):
    # keras moves channels to axis 1 and the kernel from (*k, a, b) to torch's
    # (b, a, *k): (out, in/groups, *k) for a convolution, (in, out, *k) for a
    # transposed one.
    rank = inputs.ndim - 2
    if channels_last:
        inputs = torch.movedim(inputs, -1, 1)
        upstream = torch.movedim(upstream, -1, 1)
    kernel = torch.permute(kernel, (rank + 1, rank, *range(rank)))
    return inputs, kernel, upstream


def _kernel_to_keras(d_weight):
    # torch (b, a, *k) -> keras (*k, a, b).
    rank = d_weight.ndim - 2
    return torch.permute(d_weight, (*range(2, rank + 2), 1, 0))


def _convolution_backward(
    dy,
    x,
    w,
    strides,
    pad,
    dilation,
    want_dx,
    channels_last,
    groups=1,
    transposed=False,
    output_padding=None,
):
    """Returns `(d x, d w)` from `aten.convolution_backward`: what torch's
    autograd runs for `torch.nn.functional.conv*d` (`conv_transpose*d` if
    `transposed`), without the bias gradient and, unless `want_dx`, without
    d x (None). `channels_last`: the memory format the forward ran in."""
    rank = x.ndim - 2
    dx, dw, _ = torch.ops.aten.convolution_backward(
        _like_forward(dy, channels_last),
        _like_forward(x, channels_last),
        _like_forward(w, channels_last),
        None,
        list(strides),
        list(pad),
        list(dilation),
        transposed,
        list(output_padding or [0] * rank),
        groups,
        [want_dx, True, False],
    )
    return dx, dw


def conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.conv(inputs, kernel)`.

    The input gradient uses `kernel` (pass the feedback kernel here); the
    kernel gradient uses `inputs`. `d_inputs` is None when `inputs` needs no
    gradient (the first layer of a model), as torch's autograd would skip it.
    """
    rank = inputs.ndim - 2
    strides = _tuple(strides, rank)
    dilation = _tuple(dilation_rate, rank)
    channels_last = _is_channels_last(data_format)
    x, w, dy = _to_torch(inputs, kernel, upstream, channels_last)
    groups = x.shape[1] // w.shape[1]
    x, pad, crop = _conv_padding(x, w.shape[2:], strides, dilation, padding)
    dx, dw = _convolution_backward(
        dy,
        x,
        w,
        strides,
        pad,
        dilation,
        needs_gradient(inputs),
        channels_last,
        groups=groups,
    )
    if dx is not None:
        if crop is not None:
            dx = _crop(dx, crop)
        if channels_last:
            dx = torch.movedim(dx, 1, -1)
    return dx, _kernel_to_keras(dw)


def depthwise_conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.depthwise_conv(inputs, kernel)`.

    Same contract as `conv_backward`; `kernel` has shape
    `(*kernel_size, in_channels, depth_multiplier)`.
    """
    # keras's torch depthwise_conv is ops.conv with the kernel reshaped to
    # (*k, 1, in * multiplier), i.e. `in` groups whose output channels are
    # c * multiplier + j: the same reshape makes it conv_backward's.
    *kernel_size, channels, multiplier = kernel.shape
    grouped = torch.reshape(kernel, (*kernel_size, 1, channels * multiplier))
    d_inputs, d_grouped = conv_backward(
        inputs, grouped, upstream, strides, padding, dilation_rate, data_format
    )
    return d_inputs, torch.reshape(d_grouped, kernel.shape)


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
    """Returns `(d_inputs, d_kernel)` of `ops.conv_transpose(inputs, kernel)`.

    Same contract as `conv_backward`; `kernel` has shape
    `(*kernel_size, filters, in_channels)`.
    """
    rank = inputs.ndim - 2
    strides = _tuple(strides, rank)
    dilation = _tuple(dilation_rate, rank)
    channels_last = _is_channels_last(data_format)
    pad, torch_output_padding, fix = _keras_transpose_padding(
        inputs.shape, kernel.shape, strides, padding, output_padding, dilation
    )
    x, w, dy = _to_torch(inputs, kernel, upstream, channels_last)
    if fix is not None:
        dy = _pad(dy, fix)
    # keras's torch conv_transpose copies channels_last data to contiguous
    # channels_first tensors, and autograd runs its backward on those. Here
    # the moved-axis views already have torch's channels_last layout, as in
    # conv_backward: keeping it copies neither x nor dy, and torch's CPU
    # kernel ran 1.5-3x faster on it (batch 32, 16x16x32 -> 32 filters, 3x3,
    # stride 2, one thread) than on the channels_first copies.
    dx, dw = _convolution_backward(
        dy,
        x,
        w,
        strides,
        pad,
        dilation,
        needs_gradient(inputs),
        channels_last,
        transposed=True,
        output_padding=torch_output_padding,
    )
    if dx is not None and channels_last:
        dx = torch.movedim(dx, 1, -1)
    return dx, _kernel_to_keras(dw)


def after(x, dependencies):
    """Returns `x`: torch runs eagerly, in program order."""
    return x


#: Whether `keras_fa`'s own training loops (the scikit-learn estimators) apply
#: the optimizer to values: no, torch runs eagerly and the in-place update
#: is the cheaper one (`stateless_apply` measured about 1.1x a step).
STATELESS_OPTIMIZER = False


def sync_state(model):
    """Nothing to do: the variables hold their values during `model.fit`."""
    del model


def value_and_grad(fn, diff_args, *args):
    """Returns `(value, aux, grads)` of `value, aux = fn(diff_args, *args)`;
    `grads` has the structure of `diff_args`, zeros where unconnected.
    Returned tensors are detached from the autograd graph."""
    leaves = [
        torch.as_tensor(t).detach().requires_grad_(True)
        for t in tree.flatten(diff_args)
    ]
    with torch.enable_grad():
        value, aux = fn(tree.pack_sequence_as(diff_args, leaves), *args)
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [
        torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)
    ]
    aux = tree.map_structure(
        lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux
    )
    return value.detach(), aux, tree.pack_sequence_as(diff_args, grads)


def compile_function(fn, differentiable=True):
    """Returns `fn`: torch runs eagerly. A function that is not
    differentiated runs without recording autograd history."""
    if differentiable:
        return fn

    def call(*args):
        with torch.no_grad():
            return fn(*args)

    return call


class _RandomState:
    """torch's global random state, to replay: unseeded Keras dropout draws
    its masks from it on torch."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available()
            else None
        )

    def rewind(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def preserve_random_state():
    """Context that yields a `rewind()` function, which restores the global
    random state to what it was on entry, and restores it on exit."""
    state = _RandomState()
    try:
        yield state.rewind
    finally:
        state.rewind()
