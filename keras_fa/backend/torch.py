"""Convolution backward pass on the torch backend.

torch runs eagerly, so tracing a forward convolution to differentiate it would
cost a whole extra convolution. Instead we call the kernel torch's own autograd
calls for a convolution, `aten.convolution_backward`, with the feedback kernel
in place of the weight, after the same layout changes and padding that keras's
torch `ops.conv` applies in the forward pass.
"""

import contextlib

import torch
from keras import tree


def needs_gradient(x):
    """Returns whether autograd will use the gradient of `x`."""
    return bool(getattr(x, "requires_grad", True))


def _same_padding(length, kernel_length, stride, dilation):
    # Mirrors keras's torch backend: the extra pixel goes at the end.
    effective = (kernel_length - 1) * dilation + 1
    if stride == 1:
        total = effective - 1
    else:
        out = (length + stride - 1) // stride
        total = max(0, (out - 1) * stride + effective - length)
    return total // 2, total - total // 2


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


def conv_backward(
    inputs, kernel, upstream, strides, padding, dilation_rate, data_format
):
    """Returns `(d_inputs, d_kernel)` of `ops.conv(inputs, kernel)`.

    The input gradient uses `kernel` (pass the feedback kernel here); the
    kernel gradient uses `inputs`. `d_inputs` is None when `inputs` needs no
    gradient (the first layer of a model), as torch's autograd would skip it.
    """
    rank = inputs.ndim - 2
    strides = tuple(strides)
    dilation = tuple(dilation_rate)
    channels_last = data_format == "channels_last"
    x = torch.movedim(inputs, -1, 1) if channels_last else inputs
    dy = torch.movedim(upstream, -1, 1) if channels_last else upstream
    # keras kernel (*k, in/groups, out) -> torch weight (out, in/groups, *k)
    w = torch.permute(kernel, (rank + 1, rank, *range(rank)))
    groups = x.shape[1] // w.shape[1]

    crop = None
    pad = [0] * rank
    if padding == "same":
        pads = [
            _same_padding(
                x.shape[2 + i], w.shape[2 + i], strides[i], dilation[i]
            )
            for i in range(rank)
        ]
        if all(left == right for left, right in pads):
            pad = [left for left, _ in pads]
        else:
            flat = []
            for left, right in reversed(pads):
                flat.extend((left, right))
            x = torch.nn.functional.pad(x, flat)
            crop = pads

    want_dx = needs_gradient(inputs)
    dx, dw, _ = torch.ops.aten.convolution_backward(
        _like_forward(dy, channels_last),
        _like_forward(x, channels_last),
        _like_forward(w, channels_last),
        None,
        strides,
        pad,
        dilation,
        False,
        [0] * rank,
        groups,
        [want_dx, True, False],
    )
    if dx is not None:
        if crop is not None:
            dx = dx[
                (slice(None), slice(None))
                + tuple(
                    slice(left, dx.shape[2 + i] - right)
                    for i, (left, right) in enumerate(crop)
                )
            ]
        if channels_last:
            dx = torch.movedim(dx, 1, -1)
    dw = torch.permute(dw, (*range(2, rank + 2), 1, 0))
    return dx, dw


def after(x, dependencies):
    """Returns `x`: torch runs eagerly, in program order."""
    return x


#: Whether `keras_fa`'s own training loops (the scikit-learn estimators) apply
#: the optimizer to values: no, torch runs eagerly and the in-place update
#: is the cheaper one (`stateless_apply` measured about 1.1x a step).
STATELESS_OPTIMIZER = False


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
