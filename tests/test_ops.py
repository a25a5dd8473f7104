"""`keras_fa.ops`: each feedback op against its closed form in numpy.

For random `x`, forward kernel `W`, feedback kernel `B` and upstream `dy`,
an op called with the fa rule and `feedback=(B,)` must give, eagerly and
compiled (`keras_fa.backend.compile_function`), for `L = sum(op(x) * dy)`:

- the forward value of the plain product with `W`;
- `d inputs` taken through `B` (`dy B^T` for a matmul): an op that fell back
  to backprop (`dy W^T`) fails here, since `B` is far from `W`;
- `d kernel` the local gradient from `x` (`x^T dy` for a matmul);
- `d B` what the rule says: none for fa, `d kernel` for kp.

The layers built on these ops are checked against plain Keras layers in
`test_layers_feedback.py`; these are the ops' own contracts.
"""

import numpy as np
import pytest
from keras import ops

from keras_fa import backend
from keras_fa import feedback
from keras_fa.ops import einsum_specs
from keras_fa.ops import feedback_conv
from keras_fa.ops import feedback_conv_transpose
from keras_fa.ops import feedback_depthwise_conv
from keras_fa.ops import feedback_einsum
from keras_fa.ops import feedback_matmul
from keras_fa.ops import feedback_matmul_transposed
from tests.gradients import np_conv

RTOL = 1e-4
ATOL = 1e-5
COMPILED = [False, True]


def _random(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for shape in shapes]


def _gradients(product, x, w, b, compiled, rule="fa"):
    """Returns `(y, dx, dw, db)` of `L = sum(product(x, w, rule, (b,)) * dy)`
    as numpy arrays, with a random `dy`, and `dy` itself."""
    rule = feedback.get(rule)
    y_shape = ops.convert_to_numpy(product(x, w, rule, (b,))).shape
    (dy,) = _random(y_shape, seed=1)

    def loss(args, dy):
        x, w, b = args
        y = product(x, w, rule, (b,))
        return ops.sum(ops.multiply(y, dy)), y

    def run(x, w, b, dy):
        _, y, grads = backend.value_and_grad(loss, (x, w, b), dy)
        return (y, *grads)

    if compiled:
        run = backend.compile_function(run)
    tensors = [ops.convert_to_tensor(a) for a in (x, w, b, dy)]
    return [ops.convert_to_numpy(t) for t in run(*tensors)], dy


def _assert_close(actual, desired, what):
    np.testing.assert_allclose(
        actual, desired, rtol=RTOL, atol=ATOL, err_msg=what
    )


def _check(results, y, dx, dw, db=None):
    (y_op, dx_op, dw_op, db_op) = results
    _assert_close(y_op, y, "forward")
    _assert_close(dx_op, dx, "d inputs")
    _assert_close(dw_op, dw, "d kernel")
    _assert_close(db_op, np.zeros_like(db_op) if db is None else db, "d B")


# -- matmul -------------------------------------------------------------------


def _rows(a):
    # The product's rows: every leading axis is one of examples.
    return a.reshape(-1, a.shape[-1])


# op, kernel shape, and the closed forms of (y, dx, dw) from (x, w, b, dy).
MATMUL_CASES = {
    "matmul": (
        feedback_matmul,
        (3, 5),
        lambda x, w, b, dy: (x @ w, dy @ b.T, _rows(x).T @ _rows(dy)),
    ),
    # A tied embedding E of shape (vocab, dim) used as the output layer.
    "matmul_transposed": (
        feedback_matmul_transposed,
        (6, 3),
        lambda x, w, b, dy: (x @ w.T, dy @ b, _rows(dy).T @ _rows(x)),
    ),
}


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("x_shape", [(4, 3), (2, 4, 3)])
@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
def test_feedback_matmul(case, x_shape, compiled):
    op, w_shape, closed_form = MATMUL_CASES[case]
    x, w, b = _random(x_shape, w_shape, w_shape)
    results, dy = _gradients(op, x, w, b, compiled)
    _check(results, *closed_form(x, w, b, dy))


@pytest.mark.parametrize("compiled", COMPILED)
def test_feedback_matmul_gives_the_rules_feedback_gradient(compiled):
    # kp: B learns from the kernel's own local gradient.
    x, w, b = _random((4, 3), (3, 5), (3, 5))
    results, dy = _gradients(feedback_matmul, x, w, b, compiled, rule="kp")
    _check(results, x @ w, dy @ b.T, x.T @ dy, db=x.T @ dy)


# -- einsum -------------------------------------------------------------------

# equation, input shape, kernel shape, and the closed forms of
# (y, dx, dw) from (x, w, b, dy) in numpy.
EINSUM_CASES = {
    "matrix": (
        "ab,bc->ac",
        (4, 3),
        (3, 5),
        lambda x, w, b, dy: (
            x @ w,
            dy @ b.T,
            x.T @ dy,
        ),
    ),
    "ellipsis": (
        "...b,bc->...c",
        (2, 4, 3),
        (3, 5),
        lambda x, w, b, dy: (
            x @ w,
            dy @ b.T,
            np.einsum("ijb,ijc->bc", x, dy),
        ),
    ),
    "kernel_3d": (
        "abc,cde->abde",
        (2, 4, 3),
        (3, 2, 5),
        lambda x, w, b, dy: (
            np.einsum("abc,cde->abde", x, w),
            np.einsum("abde,cde->abc", dy, b),
            np.einsum("abc,abde->cde", x, dy),
        ),
    ),
    # b only in the input: summed in the forward pass, so d inputs is the
    # same for every b.
    "input_only_axis": (
        "abc,cd->ad",
        (2, 4, 3),
        (3, 5),
        lambda x, w, b, dy: (
            x.sum(axis=1) @ w,
            np.broadcast_to((dy @ b.T)[:, None, :], x.shape),
            x.sum(axis=1).T @ dy,
        ),
    ),
    # d only in the kernel: d kernel is the same for every d.
    "kernel_only_axis": (
        "ab,bcd->ac",
        (4, 3),
        (3, 5, 2),
        lambda x, w, b, dy: (
            x @ w.sum(axis=2),
            dy @ b.sum(axis=2).T,
            np.broadcast_to((x.T @ dy)[:, :, None], w.shape),
        ),
    ),
}


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
def test_feedback_einsum(case, compiled):
    equation, x_shape, w_shape, closed_form = EINSUM_CASES[case]
    x, w, b = _random(x_shape, w_shape, w_shape)

    def product(x, w, rule, fb):
        return feedback_einsum(equation, x, w, rule, fb)

    results, dy = _gradients(product, x, w, b, compiled)
    _check(results, *closed_form(x, w, b, dy))


@pytest.mark.parametrize(
    "equation, rank",
    [("...b,bc->...c", 2), ("...b,bc->...c", 4), ("a...c,cd->a...d", 4)],
)
def test_einsum_specs_spell_out_the_ellipsis(equation, rank):
    in_spec, kernel_spec, out_spec = einsum_specs(equation, rank)
    operands, output = equation.split("->")
    given_in, given_kernel = operands.split(",")
    assert kernel_spec == given_kernel
    assert len(in_spec) == rank
    letters = in_spec[given_in.index("...") :][: rank - len(given_in) + 3]
    # The ellipsis becomes letters that the equation does not use, the same
    # in the input and the output.
    assert not set(letters) & set(equation)
    assert len(set(letters)) == len(letters)
    assert in_spec == given_in.replace("...", letters)
    assert out_spec == output.replace("...", letters)
    x, w = _random((2,) * rank, (2, 3))
    np.testing.assert_allclose(
        np.einsum(f"{in_spec},{kernel_spec}->{out_spec}", x, w),
        np.einsum(equation, x, w),
        rtol=1e-6,
    )


def test_einsum_specs_without_ellipsis_and_with_spaces():
    assert einsum_specs("ab, bc -> ac", 2) == ("ab", "bc", "ac")
    assert einsum_specs("abc,cde->abde", 3) == ("abc", "cde", "abde")


# -- convolutions -------------------------------------------------------------

CONV_CASES = {
    "1d_valid": dict(x=(2, 9, 3), k=(3,), strides=1, padding="valid", rate=1),
    "1d_same_stride": dict(
        x=(2, 9, 3), k=(4,), strides=2, padding="same", rate=1
    ),
    "2d_same_dilated": dict(
        x=(2, 7, 6, 3), k=(3, 2), strides=1, padding="same", rate=(2, 1)
    ),
    "2d_valid_stride": dict(
        x=(2, 7, 6, 3), k=(3, 3), strides=(2, 1), padding="valid", rate=1
    ),
}


def _steps(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _conv_args(case):
    rank = len(case["k"])
    return dict(
        strides=_steps(case["strides"], rank),
        padding=case["padding"],
        dilation=_steps(case["rate"], rank),
    )


def _channels_first(x):
    return np.moveaxis(x, -1, 1)


def _channels_last(x):
    return np.moveaxis(x, 1, -1)


def _conv_product(op, case, data_format="channels_last"):
    """Returns `product(x, w, rule, feedback)`: the convolution `op` with the
    steps and padding of `case`."""

    def product(x, w, rule, fb):
        return op(
            x,
            w,
            rule,
            fb,
            strides=case["strides"],
            padding=case["padding"],
            dilation_rate=case["rate"],
            data_format=data_format,
        )

    return product


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_feedback_conv(case, data_format, compiled):
    case = CONV_CASES[case]
    kernel_shape = (*case["k"], 3, 4)
    x, w, b = _random(case["x"], kernel_shape, kernel_shape)
    first = data_format == "channels_first"

    product = _conv_product(feedback_conv, case, data_format)
    x_in = _channels_first(x) if first else x
    results, dy = _gradients(product, x_in, w, b, compiled)
    if first:
        results[0], results[1] = map(_channels_last, results[:2])
        dy = _channels_last(dy)
    y, backward = np_conv(x, w, **_conv_args(case))
    dx, _ = backward(dy, b)
    _, dw = backward(dy, w)
    _check(results, y, dx, dw)


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_feedback_depthwise_conv(case, multiplier, compiled):
    case = CONV_CASES[case]
    channels = case["x"][-1]
    kernel_shape = (*case["k"], channels, multiplier)
    x, w, b = _random(case["x"], kernel_shape, kernel_shape)

    product = _conv_product(feedback_depthwise_conv, case)

    # A depthwise convolution is a grouped one, a group per input channel,
    # whose output channel c * multiplier + j is the kernel's [..., c, j].
    def grouped(kernel):
        return kernel.reshape(*case["k"], 1, channels * multiplier)

    results, dy = _gradients(product, x, w, b, compiled)
    conv_args = dict(_conv_args(case), groups=channels)
    y, backward = np_conv(x, grouped(w), **conv_args)
    dx, _ = backward(dy, grouped(b))
    _, dw = backward(dy, grouped(w))
    _check(results, y, dx, dw.reshape(kernel_shape))


# Dilation 1: the output length is (n - 1) * s + k with
# "valid" and n * s with "same", the input length of the convolution that
# the transposed one is the adjoint of.
TRANSPOSE_CASES = {
    "1d_valid": dict(x=(2, 5, 3), k=(3,), strides=1, padding="valid", rate=1),
    "1d_valid_stride": dict(
        x=(2, 5, 3), k=(3,), strides=2, padding="valid", rate=1
    ),
    "1d_same_stride": dict(
        x=(2, 5, 3), k=(3,), strides=2, padding="same", rate=1
    ),
    "2d_valid_stride": dict(
        x=(2, 4, 3, 3), k=(3, 2), strides=(2, 1), padding="valid", rate=1
    ),
    "2d_same": dict(
        x=(2, 4, 3, 3), k=(3, 3), strides=1, padding="same", rate=1
    ),
}


def _transpose_output_shape(case, filters):
    rank = len(case["k"])
    strides = _steps(case["strides"], rank)
    spatial = case["x"][1:-1]
    if case["padding"] == "same":
        out = [n * s for n, s in zip(spatial, strides)]
    else:
        out = [(n - 1) * s + k for n, s, k in zip(spatial, strides, case["k"])]
    return (case["x"][0], *out, filters)


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_feedback_conv_transpose(case, compiled):
    case = TRANSPOSE_CASES[case]
    filters = 2
    kernel_shape = (*case["k"], filters, case["x"][-1])
    x, w, b = _random(case["x"], kernel_shape, kernel_shape)

    product = _conv_product(feedback_conv_transpose, case)
    results, dy = _gradients(product, x, w, b, compiled)
    assert dy.shape == _transpose_output_shape(case, filters)
    # The transposed convolution is the adjoint of the convolution c of a
    # y-shaped input with the same kernel: y = c^T(x), so d inputs is
    # c(dy) (with B) and d kernel the kernel gradient of <c(dy), x>.
    args = _conv_args(case)
    _, adjoint = np_conv(np.zeros_like(dy), w, **args)
    y, _ = adjoint(x, w)
    dx, _ = np_conv(dy, b, **args)
    _, backward = np_conv(dy, w, **args)
    _, dw = backward(x, w)
    _check(results, y, dx, dw)
