"""Direct feedback on functional models and sequence outputs, against closed
forms written in numpy.

- "seq": logits of shape (batch, time, classes). A tap of shape (batch,
  time, features) gets `e[b, t] B_l` position by position (B_l of shape
  (classes, features)); a pooled tap of shape (batch, features) gets the
  flattened `e.reshape(batch, time * classes) B_l`. drtp's signal is
  `y*_t B_l / (batch * time)`, weighted by each position's sample weight.
- "residual": two parallel Dense branches concatenated, then blocks
  `x + f(x)` (a `keras.layers.Add` and an `x + y` operation), taps given by
  name, layer and symbolic tensor: each tapped layer gets exactly its own
  `e B_l` and nothing from the layers above (a residual connection that
  carried gradient back into a tap would fail the closed form).
- a functional model nested in another (its layers inlined, taps inside
  it), dict inputs, a tiny KerasHub GPT-2, and bad input.

Saving of a functional per-position model is checked with the others in
tests/test_direct.py (tests/_cross_backend_direct.py, kind "seq").
"""

import keras
import numpy as np
import pytest
from keras import layers
from keras import ops

import keras_fa
from tests._direct_helpers import ATOL
from tests._direct_helpers import RTOL
from tests._direct_helpers import f64
from tests._direct_helpers import head_of
from tests._direct_helpers import linear_loss
from tests._direct_helpers import model_gradients
from tests._direct_helpers import numpy
from tests._direct_helpers import random_init
from tests._direct_helpers import softmax
from tests.gradients import BACKEND

N = 4  # batch size
T = 3  # positions
C = 3  # classes
COMPILED = [False] if BACKEND == "torch" else [False, True]


def signal(rule, e, onehot, b, count):
    """The direct signal `e B`, `y* B / count` or 0 (e and onehot already
    flattened or per position, as the tap needs)."""
    if rule == "dfa":
        return e @ b
    if rule == "drtp":
        return onehot @ b / count
    return np.zeros(e.shape[:-1] + b.shape[1:])


def sgd_step(model, x, y, loss, sample_weight=None, lr=0.5):
    """One full-batch step of plain SGD in `model.fit` (compiled where the
    backend compiles fast); returns `{path: (before - after) / lr}`."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=loss,
        jit_compile=BACKEND != "torch",
    )
    before = {v.path: numpy(v) for v in model.trainable_variables}
    feedback = [numpy(b) for b in head_of(model).feedback_kernels]
    model.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=len(y),
        shuffle=False,
        verbose=0,
    )
    for b, value in zip(head_of(model).feedback_kernels, feedback):
        assert np.array_equal(numpy(b), value)  # B is fixed
    return {
        v.path: (before[v.path] - numpy(v)) / lr
        for v in model.trainable_variables
    }


def assert_close(actual, expected, what):
    assert sorted(actual) == sorted(expected), what
    for path, value in expected.items():
        np.testing.assert_allclose(
            actual[path], value, RTOL, ATOL, err_msg=f"{what}: {path}"
        )


# ---------------------------------------------------------------------------
# Logits (batch, time, classes): a per-position tap and a pooled tap.


def seq_original():
    inputs = keras.Input((T, 4))
    h1 = layers.Dense(
        5, activation="tanh", bias_initializer=random_init(1), name="h1"
    )(inputs)
    pooled = layers.GlobalAveragePooling1D(name="pool")(h1)
    h2 = layers.Dense(
        6, activation="relu", bias_initializer=random_init(2), name="h2"
    )(pooled)
    per_step = layers.Dense(
        C, bias_initializer=random_init(3), name="per_step"
    )(h1)
    summary = layers.Dense(C, bias_initializer=random_init(4), name="summary")(
        h2
    )
    logits = per_step + ops.expand_dims(summary, 1)
    return keras.Model(inputs, logits)


def seq_closed_form(model, x, y, rule, weight):
    """`{path: gradient}` of every trainable variable, and backprop's
    gradient of the first kernel."""
    h1l, h2l, stepl, suml = (
        model.get_layer(n) for n in ("h1", "h2", "per_step", "summary")
    )
    w1, b1, w2, b2, w3, b3, w4, b4 = (
        f64(v) for d in (h1l, h2l, stepl, suml) for v in (d.kernel, d.bias)
    )
    onehot = np.eye(C)[y] * weight[..., None]
    h1 = np.tanh(x @ w1 + b1)  # (N, T, 5)
    pooled = h1.mean(1)
    a2 = pooled @ w2 + b2
    h2 = np.maximum(a2, 0)
    z = h1 @ w3 + b3 + (h2 @ w4 + b4)[:, None, :]
    e = weight[..., None] * (softmax(z) - np.eye(C)[y]) / (N * T)
    big1, big2 = (f64(b) for b in head_of(model).feedback_kernels)
    assert big1.shape == (C, 5) and big2.shape == (T * C, 6)
    s1 = signal(rule, e, onehot, big1, N * T)  # per position: (N, T, 5)
    s2 = signal(
        rule, e.reshape(N, T * C), onehot.reshape(N, T * C), big2, N * T
    )
    delta1 = s1 * (1 - h1**2)
    delta2 = s2 * (a2 > 0)
    expected = {
        h1l.kernel.path: np.einsum("nti,ntj->ij", x, delta1),
        h1l.bias.path: delta1.sum((0, 1)),
        h2l.kernel.path: pooled.T @ delta2,
        h2l.bias.path: delta2.sum(0),
        stepl.kernel.path: np.einsum("nti,ntj->ij", h1, e),
        stepl.bias.path: e.sum((0, 1)),
        suml.kernel.path: h2.T @ e.sum(1),
        suml.bias.path: e.sum((0, 1)),
    }
    d_pooled = ((e.sum(1) @ w4.T) * (a2 > 0)) @ w2.T
    d_h1 = e @ w3.T + d_pooled[:, None, :] / T
    backprop = np.einsum("nti,ntj->ij", x, d_h1 * (1 - h1**2))
    return expected, backprop


def seq_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, 4)).astype("float32")
    y = (np.arange(N * T) % C).reshape(N, T)
    return x, y


@pytest.mark.parametrize("rule", ["dfa", "drtp", "shallow"])
def test_per_position_and_flattened_closed_form(rule):
    """The per-position tap (B of shape (classes, 5)) and the pooled tap
    (B of shape (time * classes, 6)): gradients eager and compiled, and the
    step `model.fit` takes with plain SGD and per-position sample weights."""
    model = keras_fa.direct_feedback(
        seq_original(), rule, seed=3, taps=["h1", "h2"]
    )
    x, y = seq_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss)
    expected, backprop = seq_closed_form(model, x, y, rule, np.ones((N, T)))
    first = model.get_layer("h1").kernel.path
    for compiled in COMPILED:
        what = f"{rule} {'compiled' if compiled else 'eager'}"
        grads = model_gradients(
            model,
            x,
            lambda y_pred: model.compute_loss(x=x, y=y, y_pred=y_pred),
            compiled=compiled,
        )
        assert_close(grads, expected, what)
    if rule == "shallow":
        assert not expected[first].any()
    else:
        # The premise: the rule is not backprop.
        gap = np.abs(expected[first] - backprop).max()
        assert gap > 0.05 * np.abs(backprop).max()

    weight = np.linspace(0.0, 2.0, N * T).reshape(N, T).astype("float32")
    expected, _ = seq_closed_form(model, x, y, rule, weight)
    steps = sgd_step(model, x, y, loss, sample_weight=weight)
    assert_close(steps, expected, f"{rule} fit")


def test_direct_feedback_layer_on_sequences():
    """DirectFeedback used directly on (batch, time, classes) logits of any
    length, as a language-model head builds it: a (batch, time, d) tap gets
    `e[b, t] B`, B of shape (classes, d); and drtp's targets per position."""
    inputs = keras.Input((None, 4))
    hidden = layers.Dense(5, activation="tanh", name="hidden")
    h = hidden(inputs)
    logits = layers.Dense(C, name="logits")(keras_fa.BlockGradient()(h))
    head = keras_fa.DirectFeedback("dfa", seed=1)
    model = keras.Model(inputs, head([logits, h]))
    (b,) = (numpy(k) for k in head.feedback_kernels)
    assert b.shape == (C, 5)
    rng = np.random.default_rng(0)
    for length in (2, 5):
        x = rng.normal(size=(N, length, 4)).astype("float32")
        upstream = rng.normal(size=(N, length, C)).astype("float32")
        h_value = np.tanh(x @ f64(hidden.kernel) + f64(hidden.bias))
        delta = (upstream @ b) * (1 - h_value**2)
        for compiled in COMPILED:
            grads = model_gradients(
                model, x, linear_loss(upstream), compiled=compiled
            )
            np.testing.assert_allclose(
                grads[hidden.kernel.path],
                np.einsum("nti,ntj->ij", x, delta),
                RTOL,
                ATOL,
                err_msg=f"length {length}, compiled {compiled}",
            )

    # drtp, one-hot targets and sample weights of shape (batch,).
    inputs = keras.Input((T, 4))
    h = hidden(inputs)
    logits = layers.Dense(C)(keras_fa.BlockGradient()(h))
    head = keras_fa.DirectFeedback("drtp", seed=1)
    model = keras_fa.DirectFeedbackModel(inputs, head([logits, h]))
    x, y = seq_data()
    onehot = np.eye(C, dtype="float32")[y]
    weight = np.array([0.0, 1.0, 2.0, 0.5], "float32")
    grads = model_gradients(
        model,
        x,
        lambda y_pred: head.target_loss(onehot, y_pred, sample_weight=weight),
    )
    (b,) = (f64(k) for k in head.feedback_kernels)
    h_value = np.tanh(x @ f64(hidden.kernel) + f64(hidden.bias))
    s = (weight[:, None, None] * onehot) @ b / (N * T)
    np.testing.assert_allclose(
        grads[hidden.kernel.path],
        np.einsum("nti,ntj->ij", x, s * (1 - h_value**2)),
        RTOL,
        ATOL,
    )


# ---------------------------------------------------------------------------
# Branches and residual connections.


def residual_original():
    inputs = keras.Input((4,), name="x")

    def dense(units, activation, name, seed):
        return layers.Dense(
            units,
            activation=activation,
            bias_initializer=random_init(seed),
            name=name,
        )

    a = dense(3, "tanh", "a", 1)(inputs)
    b = dense(2, "relu", "b", 2)(inputs)
    h = layers.Concatenate(name="concat")([a, b])
    s1 = layers.Add(name="res1")([h, dense(5, "tanh", "f1", 3)(h)])
    s2 = s1 + dense(5, "tanh", "f2", 4)(s1)
    outputs = dense(C, "softmax", "out", 5)(s2)
    return keras.Model(inputs, outputs), s2


def residual_closed_form(model, x, y, rule):
    names = ("a", "b", "f1", "f2", "out")
    la, lb, lf1, lf2, lout = (model.get_layer(n) for n in names)
    wa, ba, wb, bb, w1, b1, w2, b2, wo, bo = (
        f64(v) for d in (la, lb, lf1, lf2, lout) for v in (d.kernel, d.bias)
    )
    onehot = np.eye(C)[y]
    a = np.tanh(x @ wa + ba)
    pre_b = x @ wb + bb
    h = np.concatenate([a, np.maximum(pre_b, 0)], -1)
    f1 = np.tanh(h @ w1 + b1)
    s1 = h + f1
    f2 = np.tanh(s1 @ w2 + b2)
    s2 = s1 + f2
    e = (softmax(s2 @ wo + bo) - onehot) / N
    sa, sb, ss1, ss2 = (
        signal(rule, e, onehot, f64(k), N)
        for k in head_of(model).feedback_kernels
    )
    # Each block's only error is its own tap's: the residual branches and
    # the concatenation see cut tensors.
    deltas = {
        "a": (x, sa * (1 - a**2)),
        "b": (x, sb * (pre_b > 0)),
        "f1": (h, ss1 * (1 - f1**2)),
        "f2": (s1, ss2 * (1 - f2**2)),
        "out": (s2, e),
    }
    expected = {}
    for name, (below, delta) in deltas.items():
        layer = model.get_layer(name)
        expected[layer.kernel.path] = below.T @ delta
        expected[layer.bias.path] = delta.sum(0)
    return expected


@pytest.mark.parametrize("rule", ["dfa", "drtp"])
def test_branches_and_residual_blocks(rule):
    original, s2 = residual_original()
    weights = [numpy(w) for w in original.weights]
    taps = ["a", original.get_layer("b"), "res1", s2]
    model = keras_fa.direct_feedback(original, rule, seed=4, taps=taps)
    assert isinstance(model, keras_fa.DirectFeedbackModel)
    assert not model.compiled
    head = head_of(model)
    assert [tuple(b.shape) for b in head.feedback_kernels] == [
        (C, 3),
        (C, 2),
        (C, 5),
        (C, 5),
    ]
    # Each tap is cut from every use of it above, residual ones included.
    cuts = [
        layer
        for layer in model.layers
        if isinstance(layer, keras_fa.BlockGradient)
    ]
    assert len(cuts) == 4
    # The softmax moved after the head; the original keeps its own.
    assert model.get_layer("out").activation is keras.activations.linear
    assert model.layers[-1].activation is keras.activations.softmax
    assert original.get_layer("out").activation is keras.activations.softmax

    x = np.random.default_rng(0).normal(size=(N, 4)).astype("float32")
    y = np.arange(N) % C
    np.testing.assert_allclose(
        numpy(model(x)), numpy(original(x)), rtol=1e-6, atol=1e-6
    )
    model.compile(loss="sparse_categorical_crossentropy")
    expected = residual_closed_form(model, x, y, rule)
    for compiled in COMPILED:
        grads = model_gradients(
            model,
            x,
            lambda y_pred: model.compute_loss(x=x, y=y, y_pred=y_pred),
            compiled=compiled,
        )
        assert_close(grads, expected, f"{rule} compiled={compiled}")
    sgd_step(model, x, y, "sparse_categorical_crossentropy")
    for w, value in zip(original.weights, weights):
        assert np.array_equal(numpy(w), value), w.path


# ---------------------------------------------------------------------------
# A nested functional model, dict inputs.


def nested_original():
    inner_inputs = keras.Input((5,))
    # "d1" is also the name of a layer of the outer model.
    d1 = layers.Dense(
        4, activation="tanh", bias_initializer=random_init(1), name="d1"
    )(inner_inputs)
    d2 = layers.Dense(
        4, activation="relu", bias_initializer=random_init(2), name="d2"
    )(d1)
    inner = keras.Model(inner_inputs, d2, name="inner")
    inputs = keras.Input((3,))
    x = layers.Dense(
        5, activation="tanh", bias_initializer=random_init(3), name="d1"
    )(inputs)
    outputs = layers.Dense(C, name="out")(inner(x))
    return keras.Model(inputs, outputs)


def test_nested_functional_model():
    """The nested model is inlined: its layers are taps (by path, as the
    name "d1" is also an outer layer's) and so is the nested model itself
    (its output)."""
    original = nested_original()
    with pytest.raises(ValueError, match="d1, inner/d1"):
        keras_fa.direct_feedback(original, "dfa", taps=["d1"])
    outer_d1 = original.layers[1]
    model = keras_fa.direct_feedback(
        original, "dfa", seed=2, taps=[outer_d1, "inner/d1", "inner"]
    )
    names = [layer.name for layer in model.layers]
    assert "inner" not in names and "inner_d1" in names, names
    x = np.random.default_rng(0).normal(size=(N, 3)).astype("float32")
    np.testing.assert_allclose(
        numpy(model(x)), numpy(original(x)), rtol=1e-6, atol=1e-6
    )

    upstream = np.random.default_rng(1).normal(size=(N, C)).astype("float32")
    la, lb, lc, lout = (
        model.get_layer(n) for n in ("d1", "inner_d1", "d2", "out")
    )
    wa, ba, wb, bb, wc, bc = (
        f64(v) for d in (la, lb, lc) for v in (d.kernel, d.bias)
    )
    a = np.tanh(x @ wa + ba)
    b = np.tanh(a @ wb + bb)
    pre_c = b @ wc + bc
    sa, sb, sc = (upstream @ f64(k) for k in head_of(model).feedback_kernels)
    for compiled in COMPILED:
        grads = model_gradients(
            model, x, linear_loss(upstream), compiled=compiled
        )
        for layer, below, delta in (
            (la, x, sa * (1 - a**2)),
            (lb, a, sb * (1 - b**2)),
            (lc, b, sc * (pre_c > 0)),
            (lout, np.maximum(pre_c, 0), upstream),
        ):
            np.testing.assert_allclose(
                grads[layer.kernel.path],
                below.T @ delta,
                RTOL,
                ATOL,
                err_msg=f"{layer.name} compiled={compiled}",
            )


def test_dict_inputs():
    """A model taking a dict keeps it; the tap gets `e B` in a fit step."""
    p = keras.Input((3,), name="p")
    q = keras.Input((2,), name="q")
    hp = layers.Dense(4, activation="tanh", name="hp")(p)
    z = layers.Dense(C, name="out")(layers.Concatenate()([hp, q]))
    original = keras.Model({"p": p, "q": q}, z)
    model = keras_fa.direct_feedback(original, "dfa", seed=1, taps=["hp"])
    assert sorted(model.input) == ["p", "q"]
    rng = np.random.default_rng(0)
    x = {
        "p": rng.normal(size=(N, 3)).astype("float32"),
        "q": rng.normal(size=(N, 2)).astype("float32"),
    }
    y = np.arange(N) % C
    np.testing.assert_allclose(
        numpy(model(x)), numpy(original(x)), rtol=1e-6, atol=1e-6
    )
    hp_layer, out = model.get_layer("hp"), model.get_layer("out")
    h = np.tanh(x["p"] @ f64(hp_layer.kernel) + f64(hp_layer.bias))
    zv = np.concatenate([h, x["q"]], -1) @ f64(out.kernel) + f64(out.bias)
    e = (softmax(zv) - np.eye(C)[y]) / N
    (b,) = (f64(k) for k in head_of(model).feedback_kernels)
    steps = sgd_step(
        model,
        x,
        y,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    np.testing.assert_allclose(
        steps[hp_layer.kernel.path],
        x["p"].T @ ((e @ b) * (1 - h**2)),
        RTOL,
        ATOL,
    )


def test_keras_hub_causal_lm():
    """A tiny GPT-2: the backbone nested in the task model is inlined, its
    transformer blocks are taps with B of shape (vocabulary, hidden), the
    dict of inputs stays, and the predictions are the original's."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=11,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        dropout=0.0,
        max_sequence_length=6,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone)
    with pytest.raises(ValueError, match="taps=") as info:
        keras_fa.direct_feedback(lm, "dfa")
    assert "transformer_layer_1" in str(info.value)
    taps = ["transformer_layer_0", "transformer_layer_1"]
    model = keras_fa.direct_feedback(lm, "dfa", seed=0, taps=taps)
    assert sorted(model.input) == ["padding_mask", "token_ids"]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    head = head_of(model)
    assert [tuple(b.shape) for b in head.feedback_kernels] == [(11, 8)] * 2
    tokens = (np.arange(12).reshape(2, 6) * 7) % 11
    x = {"token_ids": tokens, "padding_mask": np.ones((2, 6), "int32")}
    np.testing.assert_allclose(
        numpy(model(x)), numpy(lm(x)), rtol=1e-5, atol=1e-5
    )


def test_masks_pass_the_cut_and_the_head():
    """Keras masks (here from `mask_zero`) reach the layers above a tap and
    the loss, as in the original model: the masked average is the same."""
    tokens = keras.Input((T,), dtype="int32")
    embedded = layers.Embedding(5, 4, mask_zero=True)(tokens)
    hidden = layers.Dense(4, activation="tanh", name="hidden")(embedded)
    pooled = layers.GlobalAveragePooling1D()(hidden)
    original = keras.Model(tokens, layers.Dense(C)(pooled))
    model = keras_fa.direct_feedback(original, "dfa", taps=["hidden"])
    assert model.get_layer("hidden").output._keras_mask is not None
    x = np.array([[1, 2, 0], [3, 0, 0], [4, 4, 4], [2, 1, 3]], "int32")
    np.testing.assert_allclose(
        numpy(model(x)), numpy(original(x)), rtol=1e-6, atol=1e-6
    )
    cut = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras_fa.BlockGradient)
    )
    assert cut.output._keras_mask is not None

    inputs = keras.Input((T, 2))
    masked = layers.Masking(0.0)(inputs)
    h = layers.Dense(4)(masked)
    logits = layers.Dense(C)(keras_fa.BlockGradient()(h))
    outputs = keras_fa.DirectFeedback()([logits, h])
    assert outputs._keras_mask is not None


# ---------------------------------------------------------------------------
# Bad input.


def test_errors():
    original, s2 = residual_original()
    with pytest.raises(ValueError, match="taps=") as info:
        keras_fa.direct_feedback(original, "dfa")
    message = str(info.value)
    for name in ("'functional", "a, b, f1, res1, f2, add"):
        assert name in message or name.replace("'", "") in message, message
    with pytest.raises(ValueError, match="Unknown tap 'nope'.*Allowed: a, b"):
        keras_fa.direct_feedback(original, "dfa", taps=["a", "nope"])
    with pytest.raises(ValueError, match="output"):
        keras_fa.direct_feedback(original, "dfa", taps=["out"])
    for item in ("x", original.inputs[0]):
        with pytest.raises(ValueError, match="input"):
            keras_fa.direct_feedback(original, "dfa", taps=[item])
    with pytest.raises(ValueError, match="twice"):
        keras_fa.direct_feedback(original, "dfa", taps=["a", "a"])
    with pytest.raises(ValueError, match="list"):
        keras_fa.direct_feedback(original, "dfa", taps="a")
    with pytest.raises(ValueError, match="layer name"):
        keras_fa.direct_feedback(original, "dfa", taps=[3])
    with pytest.raises(ValueError, match="not a tensor of model"):
        keras_fa.direct_feedback(original, "dfa", taps=[keras.Input((4,))])
    # A rule error comes before anything else.
    with pytest.raises(ValueError, match="dfa, drtp, shallow"):
        keras_fa.direct_feedback(original, "fa", taps=["nope"])

    # A shared layer, by name and by its output.
    inputs = keras.Input((4,))
    shared = layers.Dense(4, activation="tanh", name="shared")
    h = shared(shared(inputs))
    model = keras.Model(inputs, layers.Dense(C)(h))
    for item in ("shared", h):
        with pytest.raises(ValueError, match="called 2 times"):
            keras_fa.direct_feedback(model, "dfa", taps=[item])

    # A Sequential model takes taps too, but none above its logits.
    sequential = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(5, activation="tanh", name="h"),
            layers.Dense(C, name="logits"),
            layers.Activation("softmax", name="probabilities"),
        ]
    )
    model = keras_fa.direct_feedback(sequential, "dfa", taps=["h"])
    assert [tuple(b.shape) for b in head_of(model).feedback_kernels] == [(C, 5)]
    with pytest.raises(ValueError, match="not computed below the logits"):
        keras_fa.direct_feedback(sequential, "dfa", taps=["probabilities"])

    # Shapes: positions the logits do not have and that cannot be
    # flattened; logits without a class axis.
    with pytest.raises(ValueError, match=r"Tap 0 .* \(None, 5\)"):
        keras_fa.DirectFeedback()([keras.Input((None, C)), keras.Input((5,))])
    with pytest.raises(ValueError, match="logits"):
        keras_fa.DirectFeedback()([keras.Input(()), keras.Input((5,))])
    # drtp: targets must have the logits' positions.
    head = keras_fa.DirectFeedback("drtp")
    logits = np.zeros((N, T, C), "float32")
    head([logits, np.zeros((N, T, 5), "float32")])
    with pytest.raises(ValueError, match=r"y of shape \(4,\)"):
        head.target_loss(np.zeros((N,)), logits)


# ---------------------------------------------------------------------------
# positions="shared": a pooled head, one B for every position of a tap.


@pytest.mark.parametrize("rule", ["dfa", "drtp"])
def test_shared_positions_closed_form(rule):
    """Logits (batch, classes) from the mean of a (batch, time, 5) tap:
    with positions="shared" the tap has one B of shape (classes, 5) and each
    position gets `e B / time` (dfa) or `y* B / (batch * time)` (drtp)."""
    inputs = keras.Input((T, 4))
    h = layers.Dense(
        5, activation="tanh", bias_initializer=random_init(1), name="h"
    )(inputs)
    pooled = layers.GlobalAveragePooling1D()(h)
    logits = layers.Dense(C, bias_initializer=random_init(2), name="out")(
        pooled
    )
    model = keras_fa.direct_feedback(
        keras.Model(inputs, logits),
        rule,
        seed=3,
        taps=["h"],
        positions="shared",
    )
    x, y = seq_data()
    y = y[:, 0]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss)
    hl, outl = model.get_layer("h"), model.get_layer("out")
    w1, b1, w2, b2 = (
        f64(v) for v in (hl.kernel, hl.bias, outl.kernel, outl.bias)
    )
    (b,) = (f64(k) for k in head_of(model).feedback_kernels)
    assert b.shape == (C, 5)
    h_value = np.tanh(x @ w1 + b1)
    z = h_value.mean(1) @ w2 + b2
    e = (softmax(z) - np.eye(C)[y]) / N
    s = signal(rule, e, np.eye(C)[y], b, N) / T  # (N, 5), every position
    delta = s[:, None, :] * (1 - h_value**2)
    expected = np.einsum("nti,ntj->ij", x, delta)
    for compiled in COMPILED:
        grads = model_gradients(
            model,
            x,
            lambda y_pred: model.compute_loss(x=x, y=y, y_pred=y_pred),
            compiled=compiled,
        )
        np.testing.assert_allclose(
            grads[hl.kernel.path],
            expected,
            RTOL,
            ATOL,
            err_msg=f"{rule} compiled={compiled}",
        )
    # Not the flattened projection, which would give each position its own
    # B row, nor backprop.
    flat = keras_fa.direct_feedback(
        keras.Model(inputs, logits), rule, seed=3, taps=["h"]
    )
    assert tuple(head_of(flat).feedback_kernels[0].shape) == (C, T * 5)
    backprop = np.einsum(
        "nti,ntj->ij", x, ((e @ w2.T) / T)[:, None, :] * (1 - h_value**2)
    )
    assert np.abs(expected - backprop).max() > 0.05 * np.abs(backprop).max()
    with pytest.raises(ValueError, match="`positions` must be one of"):
        keras_fa.direct_feedback(
            keras.Model(inputs, logits), rule, taps=["h"], positions="mean"
        )
