"""`keras_fa.tracing`: the switches read while a model is traced.

- `exact_backprop()` turns feedback layers into backprop while it is active,
  nests, restores what was there before (on errors too), and stays within
  its thread; a function traced outside it keeps its rule.
- `probing(probes)` adds each probe at its layer's kernel product, so the
  gradient with respect to a probe is the error signal delta there.
- `recording()` collects the shape of every probe point met.
- `probe_key` names a probe point; `probe` applies the active probe.

References are numpy closed forms of an `FADense` layer: `dy B^T` under
feedback alignment, `dy W^T` under backprop.
"""

import threading

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from keras_fa import backend
from keras_fa import tracing
from tests.gradients import BACKEND
from tests.gradients import layer_gradients

RTOL = 1e-5
ATOL = 1e-6


def _dense(activation=None):
    layer = keras_fa.FADense(
        3, feedback="fa", activation=activation, bias_initializer="ones"
    )
    layer.build((None, 4))
    return layer


def _kernels(layer):
    w = keras.ops.convert_to_numpy(layer.kernel)
    b = keras.ops.convert_to_numpy(layer.feedback_kernel)
    return w, b


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 4)).astype("float32")
    upstream = rng.normal(size=(5, 3)).astype("float32")
    return x, upstream


def _assert_close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=ATOL)


# -- exact_backprop -----------------------------------------------------------


def test_is_exact_is_false_by_default():
    assert tracing.is_exact() is False


def test_exact_backprop_nests_and_restores():
    with tracing.exact_backprop():
        assert tracing.is_exact()
        with tracing.exact_backprop():
            assert tracing.is_exact()
        # Leaving the inner context keeps the outer one.
        assert tracing.is_exact()
        with pytest.raises(RuntimeError):
            with tracing.exact_backprop():
                raise RuntimeError
        assert tracing.is_exact()
    assert not tracing.is_exact()


def test_exact_backprop_stays_in_its_thread():
    seen = []
    with tracing.exact_backprop():
        thread = threading.Thread(
            target=lambda: seen.append(tracing.is_exact())
        )
        thread.start()
        thread.join()
    assert seen == [False]


@pytest.mark.parametrize("exact", [False, True])
def test_input_gradient_follows_the_switch(exact):
    layer = _dense()
    w, b = _kernels(layer)
    assert not np.allclose(w, b)
    x, upstream = _problem()
    if exact:
        with tracing.exact_backprop():
            y, dx, grads, _ = layer_gradients(layer, x, upstream)
    else:
        y, dx, grads, _ = layer_gradients(layer, x, upstream)
    _assert_close(y, x @ w + 1)
    _assert_close(dx, upstream @ (w if exact else b).T)
    # The kernel learns from its local gradient either way.
    _assert_close(grads[layer.kernel.path], x.T @ upstream)


def _input_gradient(layer):
    # A new function each time: jax.jit shares its traces between the
    # compilations of one Python function.
    def input_gradient(x, upstream):
        def loss(x, upstream):
            return ops.sum(ops.multiply(layer(x), upstream)), ()

        return backend.value_and_grad(loss, x, upstream)[2]

    return input_gradient


@pytest.mark.skipif(
    BACKEND == "torch", reason="torch runs eagerly: every call is a trace"
)
def test_a_compiled_function_keeps_the_rule_it_was_traced_with():
    layer = _dense()
    w, b = _kernels(layer)
    x, upstream = _problem()
    args = (ops.convert_to_tensor(x), ops.convert_to_tensor(upstream))
    traced_outside = backend.compile_function(_input_gradient(layer))
    _assert_close(ops.convert_to_numpy(traced_outside(*args)), upstream @ b.T)
    with tracing.exact_backprop():
        traced_inside = backend.compile_function(_input_gradient(layer))
        _assert_close(
            ops.convert_to_numpy(traced_inside(*args)), upstream @ w.T
        )
        # Traced before the switch: still feedback alignment.
        _assert_close(
            ops.convert_to_numpy(traced_outside(*args)), upstream @ b.T
        )
    _assert_close(ops.convert_to_numpy(traced_inside(*args)), upstream @ w.T)


# -- probes -------------------------------------------------------------------


def test_probe_key_names_a_layer_and_a_point():
    first, second = _dense(), _dense()
    assert tracing.probe_key(first) == tracing.probe_key(first, 0)
    assert tracing.probe_key(first, 1) == tracing.probe_key(first, 1)
    keys = {
        tracing.probe_key(first),
        tracing.probe_key(first, 1),
        tracing.probe_key(second),
    }
    assert len(keys) == 3


def test_probing_adds_the_probe_at_the_kernel_product():
    layer = _dense()
    w, _ = _kernels(layer)
    x, _ = _problem()
    p = np.arange(15, dtype="float32").reshape(5, 3)
    with tracing.probing({tracing.probe_key(layer): p}):
        y = ops.convert_to_numpy(layer(x))
    _assert_close(y, x @ w + p + 1)
    # Gone once the context is left.
    _assert_close(ops.convert_to_numpy(layer(x)), x @ w + 1)


def test_the_gradient_of_a_probe_is_the_layers_delta():
    # relu after the product: delta = dy * (z > 0), not dy itself.
    layer = _dense(activation="relu")
    w, _ = _kernels(layer)
    x, upstream = _problem()
    key = tracing.probe_key(layer)

    def loss(probe, x, upstream):
        with tracing.probing({key: probe}):
            return ops.sum(ops.multiply(layer(x), upstream)), ()

    _, _, delta = backend.value_and_grad(
        loss,
        ops.zeros((5, 3)),
        ops.convert_to_tensor(x),
        ops.convert_to_tensor(upstream),
    )
    z = x @ w + 1
    assert 0 < np.mean(z > 0) < 1
    _assert_close(ops.convert_to_numpy(delta), upstream * (z > 0))


def test_probing_ignores_other_points_and_restores_the_outer_probes():
    layer, other = _dense(), _dense()
    w, _ = _kernels(layer)
    x, _ = _problem()
    ones = np.ones((5, 3), "float32")
    outer = {tracing.probe_key(layer): ones}
    elsewhere = {
        tracing.probe_key(other): 5 * ones,
        tracing.probe_key(layer, 1): 7 * ones,
    }
    with tracing.probing(outer):
        with tracing.probing(elsewhere):
            _assert_close(ops.convert_to_numpy(layer(x)), x @ w + 1)
        _assert_close(ops.convert_to_numpy(layer(x)), x @ w + 2)


def test_probe_adds_the_probe_of_its_point_in_the_tensors_dtype():
    layer = _dense()
    t = ops.convert_to_tensor(np.ones((2, 3), "float32"))
    p = np.full((2, 3), 0.5)  # float64
    assert tracing.probe(layer, t) is t
    with tracing.probing({tracing.probe_key(layer, 1): p}):
        assert tracing.probe(layer, t) is t
        out = tracing.probe(layer, t, index=1)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    _assert_close(ops.convert_to_numpy(out), np.full((2, 3), 1.5))


def test_recording_collects_the_shape_of_every_probe_point():
    model = keras.Sequential(
        [keras.Input((4,)), keras_fa.FADense(5), keras_fa.FADense(3)]
    )
    first, second = model.layers
    x, _ = _problem()
    with tracing.recording() as shapes:
        with tracing.recording() as inner:
            first(x)
        assert inner == {tracing.probe_key(first): (5, 5)}
        assert shapes == {}
        model(x)
    assert shapes == {
        tracing.probe_key(first): (5, 5),
        tracing.probe_key(second): (5, 3),
    }
    model(x[:2])  # not recorded once the context is left
    assert shapes[tracing.probe_key(first)] == (5, 5)
