"""`keras_fa.backend`: the one place keras_fa uses a backend's own API.

The convolution backward passes (depthwise and transposed, and plain
`conv_backward` with int steps) against the active backend's own autodiff of
the keras op. For each configuration, with random `x`, forward kernel `W`,
feedback kernel `B` and upstream gradient `dy`, the backward pass called with
`B`:

- gives as `d inputs` the input gradient of `sum(op(x, B) * dy)`;
- gives as `d kernel` the kernel gradient of `sum(op(x, W) * dy)`;
- does not give the input gradient of `sum(op(x, W) * dy)` (so `B` is used).

Compiled (jax.jit, tf.function with XLA) calls must agree. On torch, which
runs eagerly, the pass must skip `d inputs` for an input that needs no
gradient and must not run a forward convolution.

Then the rest of the API, against numpy closed forms or plain Keras:
`value_and_grad`, `compile_function`, `preserve_random_state`, `sync_state`,
`needs_gradient`, `after` and `STATELESS_OPTIMIZER`.
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


# -- differentiation and compilation ------------------------------------------


def _affine_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype("float32")
    w = rng.normal(size=(3, 2)).astype("float32")
    c = rng.normal(size=(2,)).astype("float32")
    return x, w, c


def _squared_affine(params, x):
    # L = sum((x w + c)^2): dL/dw = 2 x^T r, dL/dc = 2 sum_rows(r).
    r = keras.ops.add(keras.ops.matmul(x, params["w"]), params["c"])
    return keras.ops.sum(keras.ops.square(r)), (r, x)


def _check_squared_affine(x, w, c, value, aux, grads):
    r = x @ w + c
    np.testing.assert_allclose(_numpy(value), np.sum(r**2), rtol=RTOL)
    np.testing.assert_allclose(_numpy(aux[0]), r, rtol=RTOL, atol=ATOL)
    # The argument that is not differentiated comes back as it went in.
    np.testing.assert_array_equal(_numpy(aux[1]), x)
    assert sorted(grads) == ["c", "unused", "w"]
    np.testing.assert_allclose(
        _numpy(grads["w"]), 2 * x.T @ r, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        _numpy(grads["c"]), 2 * r.sum(axis=0), rtol=RTOL, atol=ATOL
    )
    # A differentiated argument the value does not depend on gets zeros.
    np.testing.assert_array_equal(_numpy(grads["unused"]), np.zeros(5))


def _affine_args(x, w, c):
    params = {
        "w": keras.ops.convert_to_tensor(w),
        "c": keras.ops.convert_to_tensor(c),
        "unused": keras.ops.zeros((5,)),
    }
    return params, keras.ops.convert_to_tensor(x)


def test_value_and_grad_matches_closed_form():
    x, w, c = _affine_problem()
    value, aux, grads = backend.value_and_grad(
        _squared_affine, *_affine_args(x, w, c)
    )
    _check_squared_affine(x, w, c, value, aux, grads)
    if BACKEND == "torch":
        # Returned tensors are cut from the autograd graph.
        assert not value.requires_grad
        assert not aux[0].requires_grad
        assert grads["w"].grad_fn is None


def test_compiled_value_and_grad_matches_closed_form():
    x, w, c = _affine_problem()

    def step(params, x):
        return backend.value_and_grad(_squared_affine, params, x)

    compiled = backend.compile_function(step)
    _check_squared_affine(x, w, c, *compiled(*_affine_args(x, w, c)))


def test_compile_function_matches_eager():
    def fn(x, w):
        return keras.ops.tanh(keras.ops.matmul(x, w)), keras.ops.sum(x)

    compiled = backend.compile_function(fn)
    for seed in (0, 1):  # the second call reuses the compiled trace
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(4, 3)).astype("float32")
        w = rng.normal(size=(3, 2)).astype("float32")
        y, total = compiled(_tensor(x), _tensor(w))
        eager_y, eager_total = fn(_tensor(x), _tensor(w))
        np.testing.assert_allclose(_numpy(y), np.tanh(x @ w), rtol=RTOL)
        np.testing.assert_allclose(_numpy(y), _numpy(eager_y), rtol=RTOL)
        np.testing.assert_allclose(_numpy(total), x.sum(), rtol=RTOL)
        np.testing.assert_allclose(
            _numpy(total), _numpy(eager_total), rtol=RTOL
        )


def test_compile_function_not_differentiable_records_no_history():
    x = np.arange(6, dtype="float32").reshape(2, 3)

    def fn(x):
        return keras.ops.multiply(x, 2.0)

    recorded = backend.compile_function(fn)(_tensor(x, requires_grad=True))
    plain = backend.compile_function(fn, differentiable=False)(
        _tensor(x, requires_grad=True)
    )
    np.testing.assert_array_equal(_numpy(plain), 2 * x)
    np.testing.assert_array_equal(_numpy(recorded), 2 * x)
    if BACKEND == "torch":
        assert recorded.requires_grad
        assert not plain.requires_grad


# -- random state -------------------------------------------------------------


def _dropout(seed=None):
    # Unseeded dropout draws from torch's global random state on torch, and
    # from the layer's seed generator, read as a value, elsewhere.
    keras.utils.set_random_seed(7)
    layer = keras.layers.Dropout(0.5, seed=seed)
    state = [v.value for v in layer.non_trainable_variables]
    return layer, state


def _measure(layer, state, x):
    # What a measurement does: a stateless training-mode call.
    y, _ = layer.stateless_call([], state, x, training=True)
    return _numpy(y)


def test_preserve_random_state_replays_dropout_masks():
    layer, state = _dropout()
    x = keras.ops.ones((8, 64))
    with backend.preserve_random_state() as rewind:
        first = _measure(layer, state, x)
        rewind()
        second = _measure(layer, state, x)
    assert 0 < np.mean(first == 0) < 1  # a mask was drawn
    np.testing.assert_array_equal(first, second)


def test_preserve_random_state_hides_measurements_from_training():
    x = keras.ops.ones((8, 64))
    layer, _ = _dropout()
    expected = _numpy(layer(x, training=True))
    layer, state = _dropout()
    with backend.preserve_random_state():
        _measure(layer, state, x)
        _measure(layer, state, x)
    np.testing.assert_array_equal(_numpy(layer(x, training=True)), expected)


# -- model state --------------------------------------------------------------


def _linear_model(weights=None):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _weights(model):
    # Copies: on torch a variable's numpy array shares its memory.
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


class _SyncAfterFirstBatch(keras.callbacks.Callback):
    # Holds the model itself, as keras_fa's meters do: a callback's `model`
    # property would sync on jax by itself.
    def __init__(self, model):
        super().__init__()
        self.target = model

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            backend.sync_state(self.target)
            self.weights = _weights(self.target)


def test_sync_state_shows_the_live_weights_during_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    model = _linear_model()
    start = _weights(model)
    sync = _SyncAfterFirstBatch(model)
    model.fit(x, y, batch_size=4, shuffle=False, callbacks=[sync], verbose=0)
    # The weights after one step, as a model trained on that batch alone.
    one_step = _linear_model(start)
    one_step.fit(x[:4], y[:4], batch_size=4, verbose=0)
    for got, want in zip(sync.weights, _weights(one_step), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert not np.allclose(sync.weights[0], start[0])
    # Syncing in the middle leaves the rest of the fit as it was.
    full = _linear_model(start)
    full.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    for got, want in zip(_weights(model), _weights(full), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_sync_state_outside_fit_changes_nothing():
    model = _linear_model()
    before = _weights(model)
    backend.sync_state(model)
    for got, want in zip(_weights(model), before, strict=True):
        np.testing.assert_array_equal(got, want)


# -- backend facts ------------------------------------------------------------


def test_needs_gradient():
    if BACKEND == "torch":
        # Only torch can tell: autograd uses a tensor's gradient or not.
        assert backend.needs_gradient(_tensor(np.ones(2), requires_grad=True))
        assert not backend.needs_gradient(_tensor(np.ones(2)))
    else:
        # Graph backends drop unused products when compiling.
        assert backend.needs_gradient(_tensor(np.ones(2)))


def test_after_returns_the_value_ordered_after_its_dependencies():
    x = _tensor(np.arange(3, dtype="float32"))
    dependency = keras.ops.square(x)
    np.testing.assert_array_equal(
        _numpy(backend.after(x, [dependency])), np.arange(3)
    )
    if BACKEND != "tensorflow":
        # Nothing to order: jax has no side effects, torch runs in order.
        assert backend.after(x, [dependency]) is x
        return
    import tensorflow as tf

    seen = {}

    @tf.function
    def ordered(x):
        dependency = tf.square(x)
        y = backend.after(x, [dependency])
        seen["control"] = list(y.op.control_inputs)
        seen["dependency"] = dependency.op
        return y

    ordered(x)
    assert seen["dependency"] in seen["control"]


def test_stateless_optimizer_matches_the_backend():
    # jax.jit needs pure functions; tensorflow's optimizer refuses
    # stateless_apply and torch updates in place more cheaply.
    assert backend.STATELESS_OPTIMIZER is (BACKEND == "jax")
