"""Direct feedback (dfa, drtp, shallow) against closed forms written in numpy.

Three models, each with its numpy forward pass and the rule's weight
gradients:

- "mlp": a Sequential Dense(tanh) -> Dense(relu) -> Dense(softmax) turned
  into a direct-feedback model by `direct_feedback` (sparse targets);
- "cnn": a Sequential Conv2D(relu, same) -> Conv2D(tanh) -> Flatten -> Dense
  (one-hot targets, loss on the logits): the first tap is a 4-d activation;
- "functional": FAConv2D(relu) | MaxPooling2D -> Flatten -> Dense ->
  BatchNormalization -> tanh | FADense, cut by hand with BlockGradient.

With e = dL/dlogits and s_l = e B_l (dfa), y* B_l / N (drtp) or 0
(shallow), every hidden block gets delta_l = s_l * f'(a_l) (through its own
pooling and normalization only) and the output layer its true gradient. The
gradients are checked eagerly, compiled (XLA on tensorflow, jit on jax;
torch eager only) and as the step `model.fit` takes with plain SGD.

Also: what `direct_feedback` builds, saving (B bit for bit, in .keras and
weights files and across backends), seeds, bad input, and learning digits.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_fa
import keras_fa.datasets
from tests import _cross_backend_direct
from tests._direct_helpers import ATOL
from tests._direct_helpers import RTOL
from tests._direct_helpers import f64
from tests._direct_helpers import head_of
from tests._direct_helpers import layers_of
from tests._direct_helpers import linear_loss
from tests._direct_helpers import model_gradients
from tests._direct_helpers import numpy
from tests._direct_helpers import random_init
from tests._direct_helpers import softmax
from tests.gradients import BACKEND
from tests.gradients import np_conv

RULES = ("dfa", "drtp", "shallow")
MODELS = ("mlp", "cnn", "functional")
N = 8  # batch size
N_OUT = 3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models are tiny; on a busy 2-core machine torch's threads mostly
    wait on each other (a 10x slower model.fit was measured)."""
    if BACKEND != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------
# The three models. Biases and normalization parameters are random, so that
# ReLUs are on and off and BatchNormalization is not the identity.


def mlp_sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                5, activation="tanh", bias_initializer=random_init(1)
            ),
            keras.layers.Dense(
                4, activation="relu", bias_initializer=random_init(2)
            ),
            keras.layers.Dense(
                N_OUT, activation="softmax", bias_initializer=random_init(3)
            ),
        ]
    )


def cnn_sequential():
    return keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(
                3,
                3,
                padding="same",
                activation="relu",
                bias_initializer=random_init(1),
            ),
            keras.layers.Conv2D(
                2, 3, activation="tanh", bias_initializer=random_init(2)
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(N_OUT, bias_initializer=random_init(3)),
        ]
    )


def functional_model(rule, seed=5):
    inputs = keras.Input((6, 6, 2))
    h1 = keras_fa.FAConv2D(
        3,
        3,
        activation="relu",
        feedback="fa",
        seed=1,
        bias_initializer=random_init(1),
    )(inputs)
    x = keras_fa.BlockGradient()(h1)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, bias_initializer=random_init(2))(x)
    x = keras.layers.BatchNormalization(
        gamma_initializer=random_init(4, mean=1.0, stddev=0.3),
        beta_initializer=random_init(5),
    )(x)
    h2 = keras.layers.Activation("tanh")(x)
    x = keras_fa.BlockGradient()(h2)
    logits = keras_fa.FADense(
        N_OUT, feedback="fa", seed=2, bias_initializer=random_init(3)
    )(x)
    outputs = keras_fa.DirectFeedback(rule, seed=seed)([logits, h1, h2])
    return keras_fa.DirectFeedbackModel(inputs, outputs)


def make_model(name, rule):
    """Returns `(model, x, y, loss)`; targets are sparse for the mlp only."""
    if name == "mlp":
        model = keras_fa.direct_feedback(mlp_sequential(), rule, seed=11)
        loss = keras.losses.SparseCategoricalCrossentropy()
    elif name == "cnn":
        model = keras_fa.direct_feedback(cnn_sequential(), rule, seed=12)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
        model = functional_model(rule)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, *model.input_shape[1:])).astype("float32")
    labels = np.arange(N) % N_OUT
    y = labels if name == "mlp" else np.eye(N_OUT, dtype="float32")[labels]
    return model, x, y, loss


# ---------------------------------------------------------------------------
# numpy closed forms. Each returns `(expected, backprop)`: the rule's
# gradient of every trainable variable (keyed by path) and backprop's
# gradient of the first layer's kernel (None where not written out).


def signals(rule, e, onehot, kernels):
    """The hidden signals s_l = e B_l, y* B_l / N or 0."""
    if rule == "dfa":
        return [e @ b for b in kernels]
    if rule == "drtp":
        return [onehot @ b / len(e) for b in kernels]
    return [np.zeros((len(e), b.shape[1])) for b in kernels]


def mlp_closed_form(model, x, y, rule):
    d1, d2, d3 = layers_of(model, keras.layers.Dense)
    w1, b1, w2, b2, w3, b3 = (
        f64(v) for d in (d1, d2, d3) for v in (d.kernel, d.bias)
    )
    onehot = np.eye(N_OUT)[y]
    h1 = np.tanh(x @ w1 + b1)
    a2 = h1 @ w2 + b2
    h2 = np.maximum(a2, 0)
    z = h2 @ w3 + b3
    e = (softmax(z) - onehot) / len(x)  # d mean cross-entropy / d logits
    s1, s2 = signals(rule, e, onehot, map(f64, head_of(model).feedback_kernels))
    delta1 = s1 * (1 - h1**2)
    delta2 = s2 * (a2 > 0)
    expected = {
        d1.kernel.path: x.T @ delta1,
        d1.bias.path: delta1.sum(0),
        d2.kernel.path: h1.T @ delta2,
        d2.bias.path: delta2.sum(0),
        d3.kernel.path: h2.T @ e,
        d3.bias.path: e.sum(0),
    }
    delta1_bp = ((e @ w3.T) * (a2 > 0)) @ w2.T * (1 - h1**2)
    return expected, x.T @ delta1_bp


def cnn_closed_form(model, x, y, rule):
    c1, c2 = layers_of(model, keras.layers.Conv2D)
    (dense,) = layers_of(model, keras.layers.Dense)
    k1, k2 = f64(c1.kernel), f64(c2.kernel)
    w3 = f64(dense.kernel)
    one = (1, 1)
    out1, backward1 = np_conv(x, k1, one, "same", one)
    a1 = out1 + f64(c1.bias)
    h1 = np.maximum(a1, 0)
    out2, backward2 = np_conv(h1, k2, one, "valid", one)
    h2 = np.tanh(out2 + f64(c2.bias))
    flat = h2.reshape(len(x), -1)
    z = flat @ w3 + f64(dense.bias)
    e = (softmax(z) - y) / len(x)
    s1, s2 = signals(rule, e, y, map(f64, head_of(model).feedback_kernels))
    # The first tap is the whole (5, 5, 3) activation of the first Conv2D.
    delta1 = s1.reshape(h1.shape) * (a1 > 0)
    delta2 = s2.reshape(h2.shape) * (1 - h2**2)
    expected = {
        c1.kernel.path: backward1(delta1, k1)[1],
        c1.bias.path: delta1.sum((0, 1, 2)),
        c2.kernel.path: backward2(delta2, k2)[1],
        c2.bias.path: delta2.sum((0, 1, 2)),
        dense.kernel.path: flat.T @ e,
        dense.bias.path: e.sum(0),
    }
    delta2_bp = (e @ w3.T).reshape(h2.shape) * (1 - h2**2)
    delta1_bp = backward2(delta2_bp, k2)[0] * (a1 > 0)
    return expected, backward1(delta1_bp, k1)[1]


def functional_closed_form(model, x, y, rule):
    (conv,) = layers_of(model, keras_fa.FAConv2D)
    (dense,) = layers_of(model, keras.layers.Dense)
    (norm,) = layers_of(model, keras.layers.BatchNormalization)
    (out,) = layers_of(model, keras_fa.FADense)
    k1 = f64(conv.kernel)
    conv_out, backward1 = np_conv(x, k1, (1, 1), "valid", (1, 1))
    a1 = conv_out + f64(conv.bias)
    h1 = np.maximum(a1, 0)  # (N, 4, 4, 3)
    pooled = h1.reshape(len(x), 2, 2, 2, 2, 3).max(axis=(2, 4))
    flat = pooled.reshape(len(x), -1)
    a2 = flat @ f64(dense.kernel) + f64(dense.bias)
    # BatchNormalization in training mode: batch statistics.
    sigma = np.sqrt(a2.var(0) + norm.epsilon)
    xhat = (a2 - a2.mean(0)) / sigma
    gamma = f64(norm.gamma)
    h2 = np.tanh(gamma * xhat + f64(norm.beta))
    z = h2 @ f64(out.kernel) + f64(out.bias)
    e = (softmax(z) - y) / len(x)
    s1, s2 = signals(rule, e, y, map(f64, head_of(model).feedback_kernels))
    delta1 = s1.reshape(h1.shape) * (a1 > 0)
    d_norm = s2 * (1 - h2**2)
    d_xhat = d_norm * gamma
    delta2 = (d_xhat - d_xhat.mean(0) - xhat * (d_xhat * xhat).mean(0)) / sigma
    expected = {
        conv.kernel.path: backward1(delta1, k1)[1],
        conv.bias.path: delta1.sum((0, 1, 2)),
        dense.kernel.path: flat.T @ delta2,
        dense.bias.path: delta2.sum(0),  # ~0: the batch mean is removed
        norm.gamma.path: (d_norm * xhat).sum(0),
        norm.beta.path: d_norm.sum(0),
        out.kernel.path: h2.T @ e,
        out.bias.path: e.sum(0),
    }
    return expected, None


CLOSED_FORMS = {
    "mlp": mlp_closed_form,
    "cnn": cnn_closed_form,
    "functional": functional_closed_form,
}


def first_layer(model):
    return next(layer for layer in model.layers if layer.trainable_weights)


def first_kernel(model):
    return first_layer(model).kernel


def output_layer(model):
    """The layer that computes the logits DirectFeedback is called on."""
    logits = head_of(model)._inbound_nodes[0].input_tensors[0]
    return logits._keras_history.operation


def hidden_variables(model):
    """The trainable variables below the last BlockGradient."""
    skip = {id(v) for v in output_layer(model).trainable_variables}
    return [v for v in model.trainable_variables if id(v) not in skip]


def assert_gradients(actual, expected, what):
    assert sorted(actual) == sorted(expected)
    for path, value in expected.items():
        assert np.isfinite(actual[path]).all(), (what, path)
        np.testing.assert_allclose(
            actual[path], value, RTOL, ATOL, err_msg=f"{what}: {path}"
        )


def assert_not_backprop(rule, model, grads, backprop, what):
    """dfa's and drtp's first-layer gradients are not zero, and dfa's is not
    backprop's; shallow's hidden gradients are zero."""
    first = grads[first_kernel(model).path]
    if rule == "shallow":
        for variable in hidden_variables(model):
            assert not grads[variable.path].any(), (what, variable.path)
        return
    assert np.abs(first).max() > 1e-4, what
    if backprop is not None:
        gap = np.abs(first - backprop).max() / np.abs(backprop).max()
        assert gap > 0.05, f"{what}: {rule} gradient equals backprop's"


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_closed_form(name):
    """Every rule, eager, compiled (not on torch) and as one full-batch step
    of plain SGD in `model.fit`. The loss is `model.compute_loss`, which adds
    drtp's target term."""
    for rule in RULES:
        check_rule(name, rule)


def model_loss(model, x, y):
    return lambda y_pred: model.compute_loss(x=x, y=y, y_pred=y_pred)


def check_rule(name, rule):
    model, x, y, loss = make_model(name, rule)
    expected, backprop = CLOSED_FORMS[name](model, x, y, rule)
    model.compile(loss=loss)
    for compiled in [False] if BACKEND == "torch" else [False, True]:
        what = f"{name} {rule} {'compiled' if compiled else 'eager'}"
        grads = model_gradients(
            model,
            x,
            model_loss(model, x, y),
            compiled=compiled,
        )
        assert_gradients(grads, expected, what)
        assert_not_backprop(rule, model, grads, backprop, what)

    lr = 0.5
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=loss,
        # XLA on tensorflow too; torch.compile takes too long for a test.
        jit_compile=BACKEND != "torch",
    )
    before = {v.path: numpy(v) for v in model.trainable_variables}
    feedback = [numpy(b) for b in head_of(model).feedback_kernels]
    model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    steps = {
        v.path: (before[v.path] - numpy(v)) / lr
        for v in model.trainable_variables
    }
    what = f"{name} {rule} fit"
    assert_gradients(steps, expected, what)
    assert_not_backprop(rule, model, steps, backprop, what)
    if rule == "shallow":
        for v in hidden_variables(model):
            assert np.array_equal(numpy(v), before[v.path]), (what, v.path)
    for b, value in zip(head_of(model).feedback_kernels, feedback):
        assert np.array_equal(numpy(b), value), what  # B is fixed


def drtp_gradients(model, x, y, loss, scale=1.0, with_targets=True):
    head = head_of(model)

    def loss_fn(y_pred):
        total = scale * loss(y, y_pred)
        if with_targets:
            total = total + head.target_loss(y, y_pred)
        return total

    return model_gradients(model, x, loss_fn)


def test_drtp_needs_no_error():
    """drtp's hidden gradients depend on the targets only: the same with a
    loss 10x larger, and zero without the target term."""
    for name in MODELS:
        check_drtp_needs_no_error(name)


def check_drtp_needs_no_error(name):
    model, x, y, loss = make_model(name, "drtp")
    base = drtp_gradients(model, x, y, loss)
    scaled = drtp_gradients(model, x, y, loss, scale=10.0)
    without = drtp_gradients(model, x, y, loss, with_targets=False)
    expected, _ = CLOSED_FORMS[name](model, x, y, "drtp")
    output_kernel = output_layer(model).kernel.path
    np.testing.assert_allclose(
        scaled[output_kernel],
        10 * base[output_kernel],
        RTOL,
        ATOL,
        err_msg=name,
    )
    for v in hidden_variables(model):
        what = f"{name}: {v.path}"
        np.testing.assert_allclose(
            base[v.path], expected[v.path], RTOL, ATOL, err_msg=what
        )
        np.testing.assert_allclose(
            scaled[v.path], base[v.path], RTOL, ATOL, err_msg=what
        )
        assert not without[v.path].any(), what


def test_dfa_hidden_gradient_ignores_forward_weights_above():
    """With the error e held fixed (a loss linear in the logits), replacing
    every forward weight above the first block leaves the first block's
    gradient unchanged, and it equals that of sum(tap_1 * e B_1)."""
    for name in ("cnn", "functional"):
        check_dfa_ignores_weights_above(name)


def check_dfa_ignores_weights_above(name):
    model, x, _, _ = make_model(name, "dfa")
    upstream = np.random.default_rng(1).normal(size=(N, N_OUT))
    upstream = upstream.astype("float32")
    first = {v.path for v in first_layer(model).trainable_weights}
    before = model_gradients(model, x, linear_loss(upstream))
    rng = np.random.default_rng(2)
    above = [v for v in model.trainable_variables if v.path not in first]
    assert len(above) >= 4
    for v in above:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    after = model_gradients(model, x, linear_loss(upstream))

    # The same gradient from the tap alone: d sum(tap_1 * e B_1).
    head = head_of(model)
    tap = head._inbound_nodes[0].input_tensors[1]
    signal = upstream @ numpy(head.feedback_kernels[0])
    from_tap = model_gradients(
        keras.Model(model.inputs, tap),
        x,
        linear_loss(signal.reshape((N, *tap.shape[1:]))),
    )
    for path in first:
        what = f"{name}: {path}"
        np.testing.assert_allclose(
            after[path], before[path], RTOL, ATOL, err_msg=what
        )
        np.testing.assert_allclose(
            from_tap[path], before[path], RTOL, ATOL, err_msg=what
        )
        assert np.abs(before[path]).max() > 1e-4, what


# ---------------------------------------------------------------------------
# What direct_feedback builds.


def test_direct_feedback_structure():
    original = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Rescaling(0.5),  # before the first kernel: no tap
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras_fa.FADense(5, activation="tanh"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(N_OUT, activation="softmax"),
        ]
    )
    weights = [numpy(w) for w in original.weights]
    model = keras_fa.direct_feedback(original, "dfa", seed=3)
    assert isinstance(model, keras_fa.DirectFeedbackModel)
    names = [type(layer).__name__ for layer in model.layers]
    assert names == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "BatchNormalization",
        "MaxPooling2D",
        "Flatten",
        "BlockGradient",
        "FADense",
        "Dropout",
        "BlockGradient",
        "Dense",
        "DirectFeedback",
        "Activation",
    ]
    head = head_of(model)
    # Taps: the pooled, flattened conv block (2*2*3) and the FADense block.
    assert [tuple(b.shape) for b in head.feedback_kernels] == [
        (N_OUT, 12),
        (N_OUT, 5),
    ]
    # The softmax moved after DirectFeedback: the error is at the logits.
    (dense,) = layers_of(model, keras.layers.Dense)
    assert dense.activation is keras.activations.linear
    assert model.layers[-1].activation is keras.activations.softmax
    assert original.layers[-1].activation is keras.activations.softmax

    # Same weights, same predictions; a copy, so training leaves the
    # original alone.
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(
        numpy(model(x)), numpy(original(x)), rtol=1e-6, atol=1e-6
    )
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.fit(x, np.arange(4) % N_OUT, verbose=0)
    for w, value in zip(original.weights, weights):
        assert np.array_equal(numpy(w), value), w.path
    moved = [
        not np.array_equal(numpy(a), numpy(b))
        for a, b in zip(model.trainable_weights, original.trainable_weights)
    ]
    assert all(moved)

    # A model without hidden layers has no tap and learns by backprop.
    original = keras.Sequential([keras.Input((4,)), keras.layers.Dense(N_OUT)])
    model = keras_fa.direct_feedback(original, "dfa")
    assert head_of(model).feedback_kernels == []
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 4)).astype("float32")
    upstream = rng.normal(size=(N, N_OUT)).astype("float32")
    grads = model_gradients(model, x, linear_loss(upstream))
    dense = model.layers[1]
    np.testing.assert_allclose(
        grads[dense.kernel.path], x.T @ upstream, RTOL, ATOL
    )


# ---------------------------------------------------------------------------
# Saving.


def feedback_matrices(head):
    return [numpy(b) for b in head.feedback_kernels]


def direct_kernels(model):
    return feedback_matrices(head_of(model))


def assert_same_weights(a, b, atol=0.0):
    # By position: the copy's variables keep the Sequential's name scope.
    assert [v.name for v in a.weights] == [v.name for v in b.weights]
    for va, vb in zip(a.weights, b.weights):
        if atol == 0:
            assert np.array_equal(numpy(va), numpy(vb)), va.path
        else:
            np.testing.assert_allclose(
                numpy(va), numpy(vb), rtol=0, atol=atol, err_msg=va.path
            )


def sgd_step(model, x, y):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.5),
        loss="sparse_categorical_crossentropy",
    )
    model.train_on_batch(x, y)


def test_save_and_load(tmp_path):
    for rule in ("dfa", "drtp"):
        for kind, original in zip(
            _cross_backend_direct.KINDS, _cross_backend_direct.originals()
        ):
            model = _cross_backend_direct.direct_model(kind, original, rule)
            check_save_and_load(model, rule, tmp_path / f"{rule}_{kind}")


def check_save_and_load(model, rule, path):
    x, y = _cross_backend_direct.batch(model)
    kernels = direct_kernels(model)
    assert len(kernels) == 2

    model.save(f"{path}.keras")
    loaded = keras.models.load_model(f"{path}.keras")
    assert type(loaded) is keras_fa.DirectFeedbackModel
    assert [type(layer) for layer in loaded.layers] == [
        type(layer) for layer in model.layers
    ]
    assert head_of(loaded).feedback == rule
    # A weights file, into a fresh model of the same architecture.
    model.save_weights(f"{path}.weights.h5")
    fresh = keras_fa.DirectFeedbackModel.from_config(model.get_config())
    for theirs, ours in zip(direct_kernels(fresh), kernels):
        assert not np.array_equal(theirs, ours)  # the premise
    fresh.load_weights(f"{path}.weights.h5")
    for other in (loaded, fresh):
        assert len(direct_kernels(other)) == len(kernels)
        for theirs, ours in zip(direct_kernels(other), kernels):
            assert theirs.dtype == ours.dtype
            assert np.array_equal(theirs, ours)
        assert_same_weights(model, other)
    assert np.array_equal(numpy(model(x)), numpy(loaded(x)))

    # The next step is the same one: drtp still gets its targets.
    hidden = numpy(first_kernel(loaded))
    sgd_step(model, x, y)
    sgd_step(loaded, x, y)
    assert_same_weights(model, loaded, atol=1e-6)
    assert not np.allclose(numpy(first_kernel(loaded)), hidden)


def test_config_and_seed():
    head = keras_fa.DirectFeedback(
        "DRTP", feedback_initializer="he_normal", seed=np.int64(4), name="h"
    )
    config = head.get_config()
    json.dumps(config)  # a config must be plain JSON (no numpy integer)
    assert config["feedback"] == "drtp" and config["seed"] == 4
    clone = keras_fa.DirectFeedback.from_config(config)
    assert clone.get_config() == config

    def built(seed):
        layer = keras_fa.DirectFeedback(seed=seed)
        layer.build([(None, N_OUT), (None, 4, 5), (None, 20)])
        return feedback_matrices(layer)

    first = built(7)
    assert [b.shape for b in first] == [(N_OUT, 20), (N_OUT, 20)]
    keras.utils.set_random_seed(99)  # the global state must not matter
    same, other = built(7), built(8)
    assert len(same) == len(other) == 2
    for a, b, c in zip(first, same, other):
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)
    assert not np.array_equal(first[0], first[1])  # one B per tap
    # The initializer is used: he_normal's standard deviation is
    # sqrt(2 / fan_in), 10x glorot_uniform's for this shape.
    wide = keras_fa.DirectFeedback(feedback_initializer="he_normal", seed=1)
    wide.build([(None, 40), (None, 4000)])
    (b,) = feedback_matrices(wide)
    np.testing.assert_allclose(b.std(), np.sqrt(2 / 40), rtol=0.05)

    # direct_feedback passes the seed on.
    models = [
        keras_fa.direct_feedback(mlp_sequential(), "dfa", seed=s)
        for s in (3, 3, 4)
    ]
    a, b, c = (direct_kernels(m) for m in models)
    assert len(a) == len(b) == len(c) == 2
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not any(np.array_equal(u, v) for u, v in zip(a, c))


def test_load_across_backends(tmp_path):
    """Files saved here load under the next backend, and files saved there
    load here (see tests/_cross_backend_direct.py)."""
    current = keras.backend.backend()
    other = _cross_backend_direct.NEXT_BACKEND[current]
    _cross_backend_direct.save(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "tests", "_cross_backend_direct.py")
    pythonpath = os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    env = dict(
        os.environ,
        KERAS_BACKEND=other,
        PYTHONPATH=pythonpath,
        OMP_NUM_THREADS="1",
    )
    process = subprocess.run(
        [sys.executable, script, str(tmp_path), current],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    assert process.returncode == 0, (other, process.stdout.decode()[-3000:])
    _cross_backend_direct.check(tmp_path, saved_under=other)


# ---------------------------------------------------------------------------
# Bad input.


def test_errors():
    for bad in ("fa", "bp", "DFA2", None, 3):
        with pytest.raises(ValueError) as layer_error:
            keras_fa.DirectFeedback(bad)
        with pytest.raises(ValueError) as model_error:
            keras_fa.direct_feedback(mlp_sequential(), bad)
        for info in (layer_error, model_error):
            for name in RULES:
                assert name in str(info.value)
    for seed in (True, 1.5, "1"):
        with pytest.raises(ValueError, match="seed"):
            keras_fa.DirectFeedback(seed=seed)

    logits = keras.Input((N_OUT,))
    with pytest.raises(ValueError, match="list"):
        keras_fa.DirectFeedback()(logits)
    with pytest.raises(ValueError, match="list"):
        keras_fa.DirectFeedback()(np.zeros((2, N_OUT), "float32"))
    with pytest.raises(ValueError, match="logits"):
        keras_fa.DirectFeedback()([keras.Input(()), logits])
    with pytest.raises(ValueError, match="logits"):
        keras_fa.DirectFeedback()(
            [np.zeros((2,), "float32"), np.zeros((2, 4), "float32")]
        )

    # A functional model needs taps (tests/test_direct_functional.py).
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(N_OUT)(inputs))
    with pytest.raises(ValueError, match="taps="):
        keras_fa.direct_feedback(functional, "dfa")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    subclassed = Subclassed()
    subclassed(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="Sequential or functional"):
        keras_fa.direct_feedback(subclassed, "dfa")
    with pytest.raises(ValueError, match="Build"):
        keras_fa.direct_feedback(
            keras.Sequential([keras.layers.Dense(N_OUT)]), "dfa"
        )
    with pytest.raises(ValueError, match="kernel"):
        keras_fa.direct_feedback(
            keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]), "dfa"
        )


# ---------------------------------------------------------------------------
# shallow: the hidden layers get no error by design.


class _UnusedWeight(keras.layers.Layer):
    """The identity, with a trainable weight no loss ever sees."""

    def build(self, input_shape):
        self.unused = self.add_weight(shape=(1,), name="unused")

    def call(self, inputs):
        return inputs


def _gradient_warnings(model, x, y):
    """Fits `model` (compiled) on `x, y`; returns the messages of Keras's
    warning "Gradients do not exist for variables ..."."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    return [
        str(w.message)
        for w in record
        if "Gradients do not exist" in str(w.message)
    ]


def _moved(model, before):
    """The paths of the trainable variables that differ from `before`."""
    return {
        v.path
        for v in model.trainable_variables
        if not np.array_equal(numpy(v), before[v.path])
    }


def test_shallow_hidden_layers_get_zero_gradients_without_warning():
    """Under shallow the hidden variables get a zero gradient (added by
    DirectFeedbackModel.compute_loss), not none: Keras no longer warns
    "Gradients do not exist ... did you forget to provide a `loss`?" (it
    did on tensorflow and torch), and fit leaves them as drawn, with Adam
    and with SGD's momentum, while the head learns. They stay trainable
    variables of the model."""
    for name, optimizer in (
        ("mlp", keras.optimizers.Adam(0.05)),
        ("functional", keras.optimizers.SGD(0.1, momentum=0.9)),
    ):
        model, x, y, loss = make_model(name, "shallow")
        hidden = hidden_variables(model)
        assert len(hidden) >= 4
        assert [v.path for v in model.untrained_variables()] == [
            v.path for v in hidden
        ]
        model.compile(optimizer, loss=loss)
        before = {v.path: numpy(v) for v in model.trainable_variables}
        assert _gradient_warnings(model, x, y) == [], name
        head = {v.path for v in output_layer(model).trainable_variables}
        assert _moved(model, before) == head, name


def test_shallow_still_reports_variables_that_really_get_no_gradient():
    """Only the hidden variables are given a zero gradient: a variable the
    loss never sees, above the cut, is still reported by Keras, alone (on
    tensorflow and torch; jax gives every unconnected variable zeros)."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
    logits = keras.layers.Dense(N_OUT, name="logits")(
        keras_fa.BlockGradient()(h)
    )
    outputs = keras_fa.DirectFeedback("shallow")([logits, h])
    outputs = _UnusedWeight(name="extra")(outputs)
    model = keras_fa.DirectFeedbackModel(inputs, outputs)
    assert [v.path for v in model.untrained_variables()] == [
        "hidden/kernel",
        "hidden/bias",
    ]
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(N, 6)).astype("float32")
    messages = _gradient_warnings(model, x, np.arange(N) % N_OUT)
    if BACKEND == "jax":
        assert messages == []
    else:
        assert messages and all(
            "['extra/unused']" in message for message in messages
        ), messages


def _check_kept_from_weight_decay(model, x, y, loss, optimizer):
    model.compile(optimizer, loss=loss)
    untrained = {v.path for v in model.untrained_variables()}
    assert untrained
    before = {v.path: numpy(v) for v in model.trainable_variables}
    assert _gradient_warnings(model, x, y) == []
    moved = _moved(model, before)
    assert not moved & untrained, sorted(moved & untrained)
    head = {v.path for v in output_layer(model).trainable_variables}
    assert moved == head


def test_shallow_hidden_layers_are_kept_from_weight_decay(tmp_path):
    """Weight decay would shrink every trainable variable, the hidden ones
    of shallow too (on every backend); DirectFeedbackModel.compile excludes
    `untrained_variables()`, so fit with AdamW(weight_decay=...) leaves
    them as drawn and trains the head: for direct_feedback's model, a
    functional DirectFeedbackModel, and one saved, loaded and compiled
    again. Exclusions the user set before compile are kept."""
    model, x, y, loss = make_model("mlp", "shallow")
    _check_kept_from_weight_decay(
        model, x, y, loss, keras.optimizers.AdamW(0.05, weight_decay=0.5)
    )
    model.save(tmp_path / "shallow.keras")
    with warnings.catch_warnings():
        # Keras warns, and leaves it uncompiled, for a custom compile
        # without compile_from_config.
        warnings.simplefilter("error")
        loaded = keras.models.load_model(tmp_path / "shallow.keras")
    assert isinstance(loaded, keras_fa.DirectFeedbackModel)
    assert loaded.compiled
    assert loaded.untrained_variables()
    for variable in loaded.untrained_variables():
        assert not loaded.optimizer._use_weight_decay(variable)
    _check_kept_from_weight_decay(
        loaded, x, y, loss, keras.optimizers.AdamW(0.05, weight_decay=0.5)
    )

    model, x, y, loss = make_model("functional", "shallow")
    optimizer = keras.optimizers.AdamW(0.05, weight_decay=0.5)
    head = output_layer(model).trainable_variables
    # The user's own exclusion (the head's bias) survives compile.
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    _check_kept_from_weight_decay(model, x, y, loss, optimizer)
    assert not optimizer._use_weight_decay(head[1])
    assert optimizer._use_weight_decay(head[0])


def test_weight_decay_still_decays_without_a_shallow_head():
    """The exclusion is shallow's alone: under dfa every trainable
    variable is decayed as Keras decays it (a check that the test above
    can tell decay from none)."""
    model, x, y, loss = make_model("mlp", "dfa")
    optimizer = keras.optimizers.AdamW(0.05, weight_decay=0.5)
    model.compile(optimizer, loss=loss)
    assert model.untrained_variables() == []
    assert all(
        optimizer._use_weight_decay(v) for v in model.trainable_variables
    )


def test_unknown_keywords_are_refused():
    """Keras's functional Model ignores keywords it does not know;
    DirectFeedbackModel names them."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(inputs)
    with pytest.raises(TypeError, match="Unrecognized.*bogus"):
        keras_fa.DirectFeedbackModel(inputs, outputs, bogus=1)
    model = keras_fa.DirectFeedbackModel(
        inputs=inputs, outputs=outputs, name="m", trainable=False
    )
    assert model.name == "m" and not model.trainable


def test_rule_names_in_any_case():
    """`"DFA"` is `"dfa"` for DirectFeedback and direct_feedback, which store
    and save the canonical lower-case name."""
    for rule in RULES:
        for spelling in (rule.upper(), rule.capitalize()):
            head = keras_fa.DirectFeedback(spelling)
            assert head.feedback == rule
            assert head.get_config()["feedback"] == rule
            model = keras_fa.direct_feedback(mlp_sequential(), spelling)
            assert head_of(model).feedback == rule


# ---------------------------------------------------------------------------
# Learning.


def test_learns_digits():
    """dfa trains a 64-64-10 tanh network on sklearn's digits far above
    chance (10%); shallow leaves the hidden layer as it was drawn and trains
    the output layer, a linear read-out of random features."""
    (x_train, y_train), (x_test, y_test) = keras_fa.datasets.load_digits()

    def train(rule, epochs):
        keras.utils.set_random_seed(0)
        original = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(64, activation="tanh"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model = keras_fa.direct_feedback(original, rule, seed=0)
        model.compile(
            keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy"
        )
        before = [numpy(v) for v in model.trainable_variables]
        model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
        hidden = {id(v) for v in hidden_variables(model)}
        moved = {True: [], False: []}  # is hidden -> [moved?]
        for v, value in zip(model.trainable_variables, before):
            moved[id(v) in hidden].append(not np.array_equal(numpy(v), value))
        predictions = numpy(model(x_test)).argmax(-1)
        accuracy = np.mean(predictions == y_test)
        return accuracy, moved[True], moved[False]

    accuracy, hidden_moved, output_moved = train("dfa", epochs=3)
    assert len(hidden_moved) == len(output_moved) == 2
    assert all(hidden_moved) and all(output_moved)
    assert accuracy > 0.8
    accuracy, hidden_moved, output_moved = train("shallow", epochs=1)
    assert not any(hidden_moved) and all(output_moved)
    assert accuracy > 0.5


def test_drtp_signal_weighted_by_sample_weight():
    """With sample weights, drtp's target signal is weighted like the loss,
    `s_n y*_n B_l / N`: a weight of 0 removes an example's signal."""
    model, x, y, _ = make_model("mlp", "drtp")
    head = head_of(model)
    weight = np.linspace(0.0, 2.0, len(x)).astype("float32")

    def target_only(y_pred):
        return head.target_loss(y, y_pred, sample_weight=weight)

    grads = model_gradients(model, x, target_only)
    d1, d2, _ = layers_of(model, keras.layers.Dense)
    w1, b1, w2, b2 = (f64(v) for v in (d1.kernel, d1.bias, d2.kernel, d2.bias))
    h1 = np.tanh(x @ w1 + b1)
    a2 = h1 @ w2 + b2
    weighted = weight[:, None] * np.eye(N_OUT)[y]
    s1, s2 = (weighted @ b / len(x) for b in map(f64, head.feedback_kernels))
    np.testing.assert_allclose(
        grads[d1.kernel.path], x.T @ (s1 * (1 - h1**2)), RTOL, ATOL
    )
    np.testing.assert_allclose(
        grads[d2.kernel.path], h1.T @ (s2 * (a2 > 0)), RTOL, ATOL
    )
    unweighted = model_gradients(
        model, x, lambda y_pred: head.target_loss(y, y_pred)
    )
    assert not np.allclose(unweighted[d1.kernel.path], grads[d1.kernel.path])
