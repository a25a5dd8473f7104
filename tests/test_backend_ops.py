"""`keras_fa.backend`'s depthwise and transposed convolution backward passes
against the active backend's own autodiff of the keras op.

For each configuration, with random `x`, forward kernel `W`, feedback kernel
`B` and upstream gradient `dy`, the backward pass called with `B`:

- gives as `d inputs` the input gradient of `sum(op(x, B) * dy)`;
- gives as `d kernel` the kernel gradient of `sum(op(x, W) * dy)`;
- does not give the input gradient of `sum(op(x, W) * dy)` (so `B` is used).

Compiled (jax.jit, tf.function with XLA) calls must agree. On torch, which
runs eagerly, the pass must skip `d inputs` for an input that needs no
gradient and must not run a forward convolution.
"""

import functools
import itertools

import keras
import numpy as np
import pytest

from keras_fa import backend
from tests.gradients import BACKEND

RTOL = 1e-4
ATOL = 1e-5

# (strides, dilation_rate) of the depthwise cases; tuples where the axes
# differ.
DEPTHWISE_STEPS = [(1, 1), (2, 1), (1, 2), (2, 2)]
# (strides, dilation_rate, output_padding) of the transposed cases: stride 2
# with an odd kernel makes keras's "same" crop one side only, and stride 3
# with output_padding 2 pads the end beyond torch's natural output.
TRANSPOSE_STEPS = [
    (1, 1, None),
    (2, 1, None),
    (2, 1, 0),
    (2, 1, 1),
    (3, 1, 2),
    (1, 2, None),
    (1, 2, 0),
]
# Per rank: spatial shape and kernel size. Odd and even sizes, so that "same"
# padding is asymmetric in some axes.
DEPTHWISE_SHAPES = {1: ((9,), (4,)), 2: ((7, 8), (3, 2))}
TRANSPOSE_SHAPES = {
    1: ((7,), (3,)),
    2: ((5, 6), (3, 4)),
    3: ((3, 4, 3), (3, 2, 3)),
}
CHANNELS = 3
FILTERS = 2
BATCH = 2


def _depthwise_cases():
    cases = []
    for rank, padding, data_format, multiplier, (
        strides,
        rate,
    ) in itertools.product(
        (1, 2),
        ("valid", "same"),
        ("channels_last", "channels_first"),
        (1, 2),
        DEPTHWISE_STEPS,
    ):
        cases.append(
            dict(
                rank=rank,
                strides=strides,
                dilation_rate=rate,
                padding=padding,
                data_format=data_format,
                multiplier=multiplier,
            )
        )
    # Axes with different steps, passed as tuples.
    for data_format in ("channels_last", "channels_first"):
        cases.append(
            dict(
                rank=2,
                strides=(2, 1),
                dilation_rate=(1, 2),
                padding="same",
                data_format=data_format,
                multiplier=2,
            )
        )
    return cases


def _transpose_cases():
    cases = []
    for rank, padding, data_format, (
        strides,
        rate,
        output_padding,
    ) in itertools.product(
        (1, 2, 3),
        ("valid", "same"),
        ("channels_last", "channels_first"),
        TRANSPOSE_STEPS,
    ):
        if rank == 3 and (strides, rate) == (1, 1) and output_padding is None:
            continue  # rank 3 is slow to compile; its other cases cover it
        cases.append(
            dict(
                rank=rank,
                strides=strides,
                dilation_rate=rate,
                output_padding=output_padding,
                padding=padding,
                data_format=data_format,
            )
        )
    for data_format in ("channels_last", "channels_first"):
        cases.append(
            dict(
                rank=2,
                strides=(2, 1),
                dilation_rate=1,
                output_padding=(1, 0),
                padding="same",
                data_format=data_format,
            )
        )
        # output_padding >= stride: beyond torch's own output_padding (the
        # upstream gradient is cropped), and within it through dilation.
        for strides, rate, output_padding in ((2, 1, 3), (1, 3, 2)):
            cases.append(
                dict(
                    rank=1,
                    strides=strides,
                    dilation_rate=rate,
                    output_padding=output_padding,
                    padding="valid",
                    data_format=data_format,
                )
            )
    return cases


def _case_id(case):
    short = {"channels_last": "cl", "channels_first": "cf"}
    return "-".join(
        f"{key}={short.get(value, value)}".replace(" ", "")
        for key, value in case.items()
    )


DEPTHWISE_CASES = _depthwise_cases()
TRANSPOSE_CASES = _transpose_cases()
if BACKEND != "torch":
    # On jax and tensorflow both functions are the backend's own VJP of the
    # keras op, so a third of the cases (every rank, padding, data format
    # and step still met) proves the wiring, eager and compiled, at a third
    # of the compile time; torch's hand-built padding gets every case.
    DEPTHWISE_CASES = DEPTHWISE_CASES[::3]
    TRANSPOSE_CASES = TRANSPOSE_CASES[::3]


def _input_shape(spatial, channels, data_format):
    if data_format == "channels_last":
        return (BATCH, *spatial, channels)
    return (BATCH, channels, *spatial)


def _tensor(value, requires_grad=False):
    if BACKEND == "torch":
        import torch

        return torch.tensor(value, requires_grad=requires_grad)
    return keras.ops.convert_to_tensor(value)


def _numpy(value):
    if BACKEND == "torch":
        return value.detach().numpy()
    return np.asarray(keras.ops.convert_to_numpy(value))


def _autodiff(op, x, kernel, dy):
    """Returns `(d x, d kernel)` of `sum(op(x, kernel) * dy)` by the
    backend's own autodiff, eagerly, as numpy arrays."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x, kernel, dy = tf.constant(x), tf.constant(kernel), tf.constant(dy)
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(op(x, kernel) * dy)
        grads = tape.gradient(loss, [x, kernel])
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x, kernel):
            return jnp.sum(op(x, kernel) * dy)

        grads = jax.grad(loss, argnums=(0, 1))(x, kernel)
    else:
        import torch

        x = torch.tensor(x, requires_grad=True)
        kernel = torch.tensor(kernel, requires_grad=True)
        loss = torch.sum(op(x, kernel) * torch.tensor(dy))
        grads = torch.autograd.grad(loss, [x, kernel])
    return tuple(_numpy(g) for g in grads)


def _compile(fn):
    """`fn` of tensors compiled as keras_fa's training loops may run it."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def _torch_aten_ops(fn):
    """Calls `fn()` and returns the names of the aten ops it ran."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def _check(op, backward, x_shape, kernel_shape):
    """Checks `backward(x, kernel, dy) -> (dx, dk)` against autodiff of
    `op(x, kernel)` (see the module docstring)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype("float32")
    w = rng.normal(size=kernel_shape).astype("float32")
    b = rng.normal(size=kernel_shape).astype("float32")
    y = _numpy(op(_tensor(x), _tensor(w)))
    dy = rng.normal(size=y.shape).astype("float32")

    dx_b, _ = _autodiff(op, x, b, dy)
    dx_w, dk_w = _autodiff(op, x, w, dy)

    dx, dk = backward(_tensor(x, requires_grad=True), _tensor(b), _tensor(dy))
    np.testing.assert_allclose(_numpy(dx), dx_b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_numpy(dk), dk_w, rtol=RTOL, atol=ATOL)
    assert np.max(np.abs(_numpy(dx) - dx_w)) > 1e-2

    if BACKEND == "torch":
        dx, dk = backward(_tensor(x), _tensor(b), _tensor(dy))
        assert dx is None
        np.testing.assert_allclose(_numpy(dk), dk_w, rtol=RTOL, atol=ATOL)
        ran = _torch_aten_ops(
            lambda: backward(
                _tensor(x, requires_grad=True), _tensor(b), _tensor(dy)
            )
        )
        assert "aten::convolution_backward" in ran
        assert "aten::convolution" not in ran, "a forward conv ran"
    else:
        dx, dk = _compile(backward)(_tensor(x), _tensor(b), _tensor(dy))
        np.testing.assert_allclose(_numpy(dx), dx_b, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(_numpy(dk), dk_w, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=_case_id)
def test_depthwise_conv_backward(case):
    spatial, kernel_size = DEPTHWISE_SHAPES[case["rank"]]
    args = dict(
        strides=case["strides"],
        padding=case["padding"],
        dilation_rate=case["dilation_rate"],
        data_format=case["data_format"],
    )
    op = functools.partial(keras.ops.depthwise_conv, **args)

    def backward(x, kernel, dy):
        return backend.depthwise_conv_backward(x, kernel, dy, **args)

    _check(
        op,
        backward,
        _input_shape(spatial, CHANNELS, case["data_format"]),
        (*kernel_size, CHANNELS, case["multiplier"]),
    )


def _tensorflow_cannot_transpose(case, kernel_size):
    # tensorflow's conv_transpose is the gradient of a convolution, so it
    # rejects (in the forward pass already) output shapes that convolution
    # does not map back to the input's: output_padding >= stride; and "same"
    # with output_padding 0 and an even effective kernel, whose output of
    # (n - 1) * stride a "same" convolution maps back to n - 1 positions.
    if case["output_padding"] is None:
        return False
    rank = case["rank"]
    pads = _steps(case["output_padding"], rank)
    strides = _steps(case["strides"], rank)
    rates = _steps(case["dilation_rate"], rank)
    return any(
        p >= s or (case["padding"] == "same" and ((k - 1) * r + 1) % 2 + p == 0)
        for k, p, s, r in zip(kernel_size, pads, strides, rates)
    )


def _steps(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=_case_id)
def test_conv_transpose_backward(case):
    spatial, kernel_size = TRANSPOSE_SHAPES[case["rank"]]
    if BACKEND == "tensorflow" and _tensorflow_cannot_transpose(
        case, kernel_size
    ):
        pytest.skip("keras's tensorflow conv_transpose rejects this shape")
    args = dict(
        strides=case["strides"],
        padding=case["padding"],
        output_padding=case["output_padding"],
        dilation_rate=case["dilation_rate"],
        data_format=case["data_format"],
    )
    op = functools.partial(keras.ops.conv_transpose, **args)

    def backward(x, kernel, dy):
        return backend.conv_transpose_backward(x, kernel, dy, **args)

    _check(
        op,
        backward,
        _input_shape(spatial, CHANNELS, case["data_format"]),
        (*kernel_size, FILTERS, CHANNELS),
    )


def test_conv_backward_takes_int_steps():
    """`conv_backward` takes one int for every axis as `keras.ops.conv`
    does (the new functions share its argument handling on torch)."""
    op = functools.partial(
        keras.ops.conv, strides=2, padding="same", dilation_rate=1
    )

    def backward(x, kernel, dy):
        return backend.conv_backward(x, kernel, dy, 2, "same", 1, None)

    _check(op, backward, (BATCH, 7, 6, CHANNELS), (3, 3, CHANNELS, FILTERS))
