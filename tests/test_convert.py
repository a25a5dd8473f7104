"""keras_fa.convert: Keras models turned into feedback-alignment models."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from keras_fa.layers import REPLACEMENTS
from keras_fa.seeding import layer_seed
from tests.gradients import layer_gradients

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp")


def numpy(x):
    return ops.convert_to_numpy(x)


def sequential_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Reshape((4, 3)),
            keras.layers.Conv1D(2, 2, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )


def functional_model():
    """Two inputs, non-convertible layers and a nested Sequential."""
    series = keras.Input((10, 3), name="series")
    image = keras.Input((6, 6, 2), name="image")
    a = keras.layers.Conv1D(4, 3, use_bias=False)(series)
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.Flatten()(a)
    b = keras.layers.Conv2D(3, 3, strides=2, padding="same")(image)
    b = keras.layers.MaxPooling2D(2)(b)
    b = keras.layers.Flatten()(b)
    head = keras.Sequential(
        [
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(4),
        ],
        name="head",
    )
    x = head(keras.layers.Concatenate()([a, b]))
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model([series, image], outputs)


def perturb_batch_norm(model):
    """Moves BatchNormalization weights off their defaults, so that a copy
    that re-initialized them instead of copying would be seen."""
    rng = np.random.default_rng(5)
    for layer in flat_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, size=w.shape).astype("float32")
                    for w in layer.get_weights()
                ]
            )


def flat_layers(model):
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(flat_layers(layer))
        else:
            layers.append(layer)
    return layers


def inputs_for(model):
    rng = np.random.default_rng(0)
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    arrays = [rng.normal(size=(4, *s)).astype("float32") for s in shapes]
    return arrays[0] if len(arrays) == 1 else arrays


def weights(model):
    return [numpy(v) for v in model.weights]


def check_converted(original, converted, rule):
    """The copy is the original with Dense/Conv layers replaced."""
    old_layers, new_layers = flat_layers(original), flat_layers(converted)
    assert len(old_layers) == len(new_layers)
    replaced = 0
    for old, new in zip(old_layers, new_layers):
        assert new is not old
        target = REPLACEMENTS.get(type(old))
        if target is None:
            assert type(new) is type(old)
            assert len(old.weights) == len(new.weights)
            for a, b in zip(old.weights, new.weights):
                assert np.array_equal(numpy(a), numpy(b)), a.path
            continue
        replaced += 1
        assert type(new) is target
        assert new.feedback == keras_fa.feedback.get(rule)
        assert np.array_equal(numpy(new.kernel), numpy(old.kernel))
        assert (new.bias is None) == (old.bias is None)
        if old.bias is not None:
            assert np.array_equal(numpy(new.bias), numpy(old.bias))
        config = old.get_config()
        new_config = new.get_config()
        for key in config:
            if key not in ("name",):
                assert new_config[key] == config[key], key
    return replaced


def test_convert_sequential():
    model = sequential_model()
    perturb_batch_norm(model)
    before = weights(model)
    x = inputs_for(model)
    expected = numpy(model(x))

    for rule in RULES:
        converted = keras_fa.convert(model, feedback=rule)
        assert isinstance(converted, keras.Sequential)
        assert check_converted(model, converted, rule) == 4
        np.testing.assert_allclose(
            numpy(converted(x)), expected, atol=1e-6, err_msg=rule
        )

    # The original is untouched: same layer types and weights...
    assert [type(layer) for layer in model.layers] == [
        type(layer) for layer in sequential_model().layers
    ]
    after = weights(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # ...and does not share variables with the copy.
    converted.layers[0].kernel.assign(
        np.zeros(converted.layers[0].kernel.shape)
    )
    assert np.array_equal(numpy(model.layers[0].kernel), before[0])


@pytest.mark.parametrize("rule", ("fa", "kp"))
def test_convert_functional_with_nested_sequential(rule):
    model = functional_model()
    perturb_batch_norm(model)
    before = weights(model)
    x = inputs_for(model)
    expected = numpy(model(x))

    converted = keras_fa.convert(model, feedback=rule, seed=3)

    assert check_converted(model, converted, rule) == 5
    head = converted.get_layer("head")
    assert isinstance(head, keras.Sequential)
    assert all(
        isinstance(layer, keras_fa.FADense)
        for layer in head.layers
        if not isinstance(layer, keras.layers.Dropout)
    )
    assert [t.name for t in converted.inputs] == ["series", "image"]
    np.testing.assert_allclose(numpy(converted(x)), expected, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))


def test_convert_seed_fixes_feedback():
    model = functional_model()
    first = keras_fa.convert(model, feedback="fa", seed=11)
    keras.utils.set_random_seed(99)
    second = keras_fa.convert(model, feedback="fa", seed=11)
    other = keras_fa.convert(model, feedback="fa", seed=12)

    def feedback(m):
        return [
            numpy(layer.feedback_kernel)
            for layer in flat_layers(m)
            if hasattr(layer, "feedback_kernel")
        ]

    assert len(feedback(first)) == 5
    for a, b, c in zip(feedback(first), feedback(second), feedback(other)):
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_convert_keras_fa_model_to_another_rule():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras_fa.FADense(4, feedback="fa", activation="relu"),
            keras_fa.FADense(3, feedback="fa"),
        ]
    )
    x = inputs_for(model)
    converted = keras_fa.convert(
        model, feedback=keras_fa.feedback.UniformSignFeedback(scale=0.5)
    )
    for old, new in zip(model.layers, converted.layers):
        assert type(new) is keras_fa.FADense
        assert new.feedback == keras_fa.feedback.UniformSignFeedback(0.5)
        assert old.feedback == keras_fa.feedback.get("fa")
        assert np.array_equal(numpy(new.kernel), numpy(old.kernel))
        assert not hasattr(new, "feedback_kernel")  # usf keeps no matrix
    np.testing.assert_array_equal(numpy(converted(x)), numpy(model(x)))

    back = keras_fa.convert(converted, feedback="kp", seed=1)
    assert all(layer.feedback.name == "kp" for layer in back.layers)
    assert all(layer.feedback_kernel.trainable for layer in back.layers)


class Subclassed(keras.Model):
    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return self.dense(x)


def built_subclassed():
    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    return model


@pytest.mark.parametrize(
    "model, kwargs, error, match",
    [
        (sequential_model, dict(feedback="backprop"), ValueError, "bp, brsf"),
        (sequential_model, dict(feedback="nope"), ValueError, "rule 'nope'"),
        (
            sequential_model,
            dict(feedback="dfa"),
            ValueError,
            r"direct rule.*keras_fa.direct_feedback",
        ),
        (
            sequential_model,
            dict(feedback_initializer="nope"),
            ValueError,
            "Invalid `feedback_initializer`",
        ),
        (
            sequential_model,
            dict(feedback="brsf", feedback_initializer="ones"),
            ValueError,
            "must be a random Keras initializer",
        ),
        (
            sequential_model,
            dict(feedback="DRTP"),
            ValueError,
            r"direct rule.*keras_fa.direct_feedback\(model, 'DRTP'\)",
        ),
        (sequential_model, dict(seed="a"), ValueError, "`seed` must be an"),
        (sequential_model, dict(seed=1.5), ValueError, "`seed` must be an"),
        (sequential_model, dict(seed=True), ValueError, "`seed` must be an"),
        (sequential_model, dict(strict="yes"), ValueError, "`strict` must"),
        (
            lambda: keras.layers.Dense(2),
            {},
            TypeError,
            "takes a Sequential or functional keras.Model",
        ),
        (
            lambda: keras.Sequential([keras.layers.Dense(2)]),
            {},
            ValueError,
            r"build it first \(call it on data or start with keras.Input\)",
        ),
        (built_subclassed, {}, ValueError, "Sequential and functional"),
    ],
)
def test_convert_rejects_bad_arguments_before_any_work(
    model, kwargs, error, match, monkeypatch
):
    def clone_model(*args, **kwargs):
        raise AssertionError("convert cloned the model before checking")

    model = model()
    monkeypatch.setattr(keras.models, "clone_model", clone_model)
    with pytest.raises(error, match=match):
        keras_fa.convert(model, **kwargs)


def test_convert_takes_rule_names_in_any_case():
    """`"FA"` is `"fa"`, as for the layers: the copy's layers hold the
    canonical rule and save it."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for spelling in ("FA", "Kp"):
        converted = keras_fa.convert(model, spelling, seed=0)
        rule = keras_fa.feedback.get(spelling.lower())
        assert converted.layers[0].feedback == rule
        assert converted.layers[0].get_config()["feedback"] == (
            keras_fa.feedback.serialize(rule)
        )


def test_convert_negative_seed_is_taken_modulo():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    converted = keras_fa.convert(model, seed=-1)
    # Layer 0's seed is keras_fa.seeding.layer_seed(-1, 0).
    assert converted.layers[0].seed == 2**31 - 1000


def test_convert_layer_seeds_follow_the_seeding_scheme():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(2)]
    )
    converted = keras_fa.convert(model, seed=5)
    assert [layer.seed for layer in converted.layers] == [
        layer_seed(5, i) for i in range(2)
    ]
    assert [layer.seed for layer in converted.layers] == [5000, 5001]


def test_a_layer_shared_with_a_nested_model_is_saved_once(tmp_path):
    # A tied embedding, in a backbone and in the head: convert inlines the
    # backbone, so that saving keeps the table one layer.
    ids = keras.Input((3,), dtype="int32", name="ids")
    tied = keras.layers.ReversibleEmbedding(7, 4, name="tied")
    hidden = keras.layers.Dense(4, name="dense")(tied(ids))
    backbone = keras.Model(ids, hidden, name="backbone")
    tokens = keras.Input((3,), dtype="int32", name="tokens")
    model = keras.Model(tokens, tied(backbone(tokens), reverse=True))
    converted = keras_fa.convert(model, "fa", seed=0)
    assert [layer.name for layer in converted.layers] == [
        "tokens",
        "tied",
        "dense",
    ]
    x = np.array([[0, 1, 2], [6, 5, 4]], dtype="int32")
    np.testing.assert_allclose(
        numpy(converted(x)), numpy(model(x)), atol=1e-6
    )
    path = str(tmp_path / "tied.keras")
    converted.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(converted(x)))
    tables = [
        layer
        for layer in flat_layers(loaded)
        if isinstance(layer, keras_fa.FAReversibleEmbedding)
    ]
    assert len(tables) == 1


def kernel_updates_of_one_step(model, x, y):
    """Fits one full-batch SGD step; returns each layer's kernel update."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    layers = [layer for layer in model.layers if hasattr(layer, "kernel")]
    before = [numpy(layer.kernel) for layer in layers]
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return [numpy(layer.kernel) - b for layer, b in zip(layers, before)]


def test_converted_model_learns_with_its_rule():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    before = weights(model)

    fa_model = keras_fa.convert(model, feedback="fa", seed=0)
    fa_updates = kernel_updates_of_one_step(fa_model, x, y)
    bp_updates = kernel_updates_of_one_step(
        keras_fa.convert(model, feedback="bp"), x, y
    )
    assert len(fa_updates) == len(bp_updates) == 3
    # The output layer learns from its local error alone: the same update.
    assert np.any(bp_updates[2] != 0)
    np.testing.assert_allclose(fa_updates[2], bp_updates[2], atol=1e-6)
    # The hidden layers learn from an error sent back through B, not W.
    for fa_update, bp_update in zip(fa_updates[:2], bp_updates[:2]):
        assert np.any(fa_update != 0)
        assert not np.allclose(fa_update, bp_update, atol=1e-4)

    # It goes on learning.
    initial_loss = fa_model.evaluate(x, y, verbose=0)
    history = fa_model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert fa_model.evaluate(x, y, verbose=0) < initial_loss
    # Training the copies left the original intact (on jax, a copy that
    # shared the original's buffers would have deleted them).
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))


# ---------------------------------------------------------------------------
# Architectures: every kernel converted, the same function, trainable, and
# the original untouched by the copy's training.


def attention_model():
    tokens = keras.Input((5, 6))
    x = keras.layers.MultiHeadAttention(2, 3, name="mha")(tokens, tokens)
    x = keras.layers.EinsumDense(
        "abc,cd->abd", (5, 16), bias_axes="d", activation="tanh"
    )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(x))


def resnet_block():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    y = keras.layers.BatchNormalization()(x)
    y = keras.layers.Activation("relu")(y)
    y = keras.layers.Conv2D(4, 3, padding="same")(y)
    x = keras.ops.relu(x + y)
    x = keras.ops.concatenate([x, inputs], axis=-1)
    x = keras.layers.Lambda(lambda t: 0.5 * t)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def mobilenet_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 1),
            keras.layers.SeparableConv2D(6, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )


def unet_model():
    inputs = keras.Input((8, 8, 2))
    down = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(down)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    up = keras.layers.Conv2DTranspose(4, 2, strides=2)(x)
    x = keras.layers.Concatenate()([up, down])
    x = keras.layers.Conv2D(1, 1)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def nested_model():
    inputs = keras.Input((5,))
    inner_inputs = keras.Input((4,))
    inner = keras.Model(
        inner_inputs, keras.layers.Dense(4)(inner_inputs), name="inner"
    )
    block = keras.Sequential(
        [keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(4)],
        name="block",
    )
    x = inner(block(inputs))
    x = keras.layers.TimeDistributed(keras.layers.Dense(2))(
        keras.layers.Reshape((2, 2))(x)
    )
    return keras.Model(inputs, keras.layers.Dense(3)(keras.ops.mean(x, 1)))


ARCHITECTURES = {
    "attention": (attention_model, 6),
    "resnet_block": (resnet_block, 3),
    "mobilenet": (mobilenet_model, 6),
    "unet": (unet_model, 5),
    "nested": (nested_model, 5),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_convert_architecture(name):
    build, n_kernels = ARCHITECTURES[name]
    model = build()
    perturb_batch_norm(model)
    x = inputs_for(model)
    y = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    expected = numpy(model(x))
    before = weights(model)

    converted, messages = convert_warnings(model, feedback="fa", seed=0)
    assert messages == []  # nothing is left on backprop

    rows = keras_fa.feedback_summary(converted, print_fn=None)
    assert len(rows) == n_kernels
    assert [row.rule for row in rows] == ["fa"] * n_kernels
    assert all(row.layer.startswith("FA") for row in rows)
    # The same kernels, under the same names, as in the original.
    original_rows = keras_fa.feedback_summary(model, print_fn=None)
    assert [row.path for row in rows] == [row.path for row in original_rows]
    assert {row.rule for row in original_rows} == {"bp"}
    np.testing.assert_allclose(numpy(converted(x)), expected, atol=1e-5)

    converted.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = converted.fit(x, y, batch_size=2, epochs=1, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    # It trained, and the original did not move (on jax, shared buffers
    # would have been donated and deleted).
    assert not np.allclose(numpy(converted(x)), expected, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights(model)))


def test_converted_attention_model_learns():
    model = attention_model()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 5, 6)).astype("float32")
    y = 3 * x.mean(axis=1)[:, :3] @ rng.normal(size=(3, 3)).astype("float32")
    converted = keras_fa.convert(model, feedback="fa", seed=0)
    # Plain SGD: with Adam's per-weight step sizes, the hidden layers' first
    # (unaligned) FA updates can outrun the output layer's exact ones.
    converted.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    initial = converted.evaluate(x, y, verbose=0)
    converted.fit(x, y, batch_size=16, epochs=10, verbose=0)
    assert converted.evaluate(x, y, verbose=0) < 0.9 * initial


def test_convert_time_distributed_dense():
    model = nested_model()
    converted = keras_fa.convert(model, feedback="usf")
    wrapper = converted.get_layer("time_distributed")
    assert type(wrapper) is keras.layers.TimeDistributed
    assert type(wrapper.layer) is keras_fa.FADense
    assert wrapper.layer.feedback.name == "usf"
    old = model.get_layer("time_distributed").layer
    np.testing.assert_array_equal(
        numpy(wrapper.layer.kernel), numpy(old.kernel)
    )


# ---------------------------------------------------------------------------
# Layers with kernels that convert cannot replace: one warning, or an error.


class Scale(keras.layers.Layer):
    """A custom layer with a (3, 3) kernel."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 3), name="kernel")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)


class MyDense(keras.layers.Dense):
    pass


def model_with_unconvertible_layers():
    inputs = keras.Input((4, 3))
    x = keras.layers.LSTM(3, return_sequences=True, name="lstm")(inputs)
    block = keras.Sequential(
        [keras.layers.SimpleRNN(2, return_sequences=True, name="rnn")],
        name="block",
    )
    x = keras.layers.Bidirectional(keras.layers.GRU(2), name="bi")(block(x))
    x = Scale(name="scale")(x)
    x = MyDense(3, name="mine")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))


def convert_warnings(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = keras_fa.convert(model, **kwargs)
    messages = [
        str(w.message)
        for w in caught
        if str(w.message).startswith("keras_fa.convert")
    ]
    return converted, messages


def test_unconvertible_layers_are_named_in_one_warning():
    model = model_with_unconvertible_layers()
    x = inputs_for(model)
    converted, messages = convert_warnings(model, feedback="fa")
    assert len(messages) == 1
    message = messages[0]
    assert "leaves 5 layer(s)" in message
    for words in (
        "lstm (LSTM): a recurrent layer",
        "block/rnn (SimpleRNN): a recurrent layer",
        "block/rnn/simple_rnn_cell/kernel",
        "lstm/lstm_cell/kernel, lstm/lstm_cell/recurrent_kernel",
        "bi (Bidirectional): it wraps GRU, a recurrent layer",
        "bi/forward_gru/gru_cell/kernel",
        "scale (Scale): keras_fa has no version of Scale",
        "mine (MyDense): a subclass of Dense",
        "keras_fa.FADense",
        "strict=True",
    ):
        assert words in message, words
    assert "\n  out (" not in message  # the Dense head was converted
    # They were copied, weights and all; the Dense was converted.
    assert type(converted.get_layer("mine")) is MyDense
    assert type(converted.get_layer("scale")) is Scale
    assert type(converted.get_layer("out")) is keras_fa.FADense
    np.testing.assert_allclose(numpy(converted(x)), numpy(model(x)), atol=1e-5)
    rules = {
        row.path: row.rule
        for row in keras_fa.feedback_summary(converted, print_fn=None)
    }
    assert rules["scale/kernel"] == rules["mine/kernel"] == "bp"
    assert rules["out/kernel"] == "fa"


def test_strict_raises_the_same_list_before_any_work(monkeypatch):
    model = model_with_unconvertible_layers()
    _, (message,) = convert_warnings(model)

    def clone_model(*args, **kwargs):
        raise AssertionError("convert cloned the model before checking")

    monkeypatch.setattr(keras.models, "clone_model", clone_model)
    with pytest.raises(ValueError) as info:
        keras_fa.convert(model, strict=True)
    body = message.split("Pass strict=True")[0]
    assert str(info.value).startswith(body)
    assert "strict=True" in str(info.value)


def test_layers_that_train_the_same_under_every_rule_are_not_named():
    tokens = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(9, 3)(tokens)
    x = keras.layers.LayerNormalization(axis=[-2, -1])(x)
    x = keras.layers.PReLU()(x)  # a (4, 3) alpha
    frozen = keras.layers.LSTM(2)
    frozen.trainable = False
    x = frozen(x)
    model = keras.Model(tokens, keras.layers.Dense(2)(x))
    converted, messages = convert_warnings(model, strict=True)
    assert messages == []
    notes = [row.note for row in keras_fa.feedback_summary(converted, None)]
    assert notes[0].startswith("no input gradient")
    assert notes[1:3] == ["frozen", "frozen"]


def test_subclassed_model_inside_a_functional_model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Subclassed(name="sub")(inputs))
    x = inputs_for(model)
    converted, (message,) = convert_warnings(model)
    assert "sub (Subclassed): a subclassed model" in message
    copy = converted.get_layer("sub")
    assert type(copy) is Subclassed and copy is not model.get_layer("sub")
    np.testing.assert_array_equal(numpy(converted(x)), numpy(model(x)))
    assert not any(
        row.rule != "bp"
        for row in keras_fa.feedback_summary(converted, print_fn=None)
    )

    class NoConfig(keras.Model):
        def __init__(self, layer):
            super().__init__(name="no_config")
            self.layer = layer

        def call(self, x):
            return self.layer(x)

    model = keras.Model(inputs, NoConfig(keras.layers.Dense(2))(inputs))
    with pytest.raises(ValueError, match=r"'no_config' \(NoConfig\).*config"):
        keras_fa.convert(model)


def one_layer_models():
    """A tiny model around each Keras layer of the table."""
    layers = keras.layers

    def model(shape, layer, **call_kwargs):
        inputs = keras.Input(shape)
        if call_kwargs.pop("attention", False):
            outputs = layer(inputs, inputs)
        else:
            outputs = layer(inputs)
        return keras.Model(inputs, outputs)

    tokens = keras.Input((3,), dtype="int32")
    embedding = layers.ReversibleEmbedding(7, 4)
    reversible = keras.Model(tokens, embedding(embedding(tokens), reverse=True))
    return [
        model((3,), layers.Dense(2)),
        model((3, 4), layers.EinsumDense("abc,cd->abd", (3, 2), bias_axes="d")),
        model((6, 2), layers.Conv1D(2, 3)),
        model((5, 5, 2), layers.Conv2D(2, 3)),
        model((4, 4, 4, 1), layers.Conv3D(2, 2)),
        model((6, 2), layers.DepthwiseConv1D(3, depth_multiplier=2)),
        model((5, 5, 2), layers.DepthwiseConv2D(3)),
        model((6, 2), layers.SeparableConv1D(3, 3)),
        model((5, 5, 2), layers.SeparableConv2D(3, 3)),
        model((4, 2), layers.Conv1DTranspose(2, 3, strides=2)),
        model((3, 3, 2), layers.Conv2DTranspose(2, 3)),
        model((2, 2, 2, 1), layers.Conv3DTranspose(2, 2)),
        model((3, 4), layers.MultiHeadAttention(2, 2), attention=True),
        model(
            (3, 4),
            layers.GroupQueryAttention(2, 4, 2, use_gate=True),
            attention=True,
        ),
        reversible,
    ]


def test_every_layer_of_the_table_converts():
    models = one_layer_models()
    converted_types = set()
    for model in models:
        x = inputs_for(model)
        if model.inputs[0].dtype.startswith("int"):
            x = np.arange(12).reshape(4, 3) % 7
        converted, messages = convert_warnings(model, feedback="usf")
        assert messages == []
        rows = keras_fa.feedback_summary(converted, print_fn=None)
        assert rows and {row.rule for row in rows} == {"usf"}, rows
        np.testing.assert_allclose(
            numpy(converted(x)), numpy(model(x)), atol=1e-5
        )
        converted_types.update(type(layer) for layer in converted.layers)
    assert set(REPLACEMENTS.values()) <= converted_types


class Forgetful(keras.layers.Layer):
    """Its config forgets `units`: a copy made from it has another kernel."""

    def __init__(self, units=2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        shape = (input_shape[-1], self.units)
        self.kernel = self.add_weight(shape=shape, name="kernel")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel)

    def get_config(self):
        return super().get_config()


def test_weights_that_do_not_fit_their_copy_name_the_layer():
    inputs = keras.Input((4,))
    x = Forgetful(3, name="forgetful")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError) as info:
        convert_warnings(model)
    message = str(info.value)
    assert "layer 'forgetful' (Forgetful -> Forgetful)" in message
    assert "shape (4, 3)" in message and "shape (4, 2)" in message


# ---------------------------------------------------------------------------
# Layers keras_fa has no version of, made of Keras layers it has: the layers
# inside go on the rule (keras_fa.layers.converted).


@keras.saving.register_keras_serializable(package="keras_fa_tests")
class TwoDense(keras.layers.Layer):
    """A custom block: relu(x W1) W2, its Dense layers in a list."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.stack = [
            keras.layers.Dense(units, activation="relu", name="first"),
            keras.layers.Dense(units, name="second"),
        ]

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@pytest.mark.parametrize("compiled", [False, True])
def test_a_converted_custom_layer_sends_the_error_through_b(compiled):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, TwoDense(name="block")(inputs))
    converted, messages = convert_warnings(model, feedback="fa", seed=3)
    assert messages == []
    block = converted.get_layer("block")
    assert isinstance(block, TwoDense) and type(block) is not TwoDense
    first, second = block.stack
    assert type(first) is type(second) is keras_fa.FADense
    # Layer 0 of the model gets the seed layer_seed(3, 0) = 3000; its inner
    # layer k, layer_seed(3000, k) (as attention's projections).
    assert [first.seed, second.seed] == [3_000_000, 3_000_001]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    up = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    out, dx, grads, _ = layer_gradients(block, x, up, compiled)
    w1, b1 = numpy(first.kernel), numpy(first.bias)
    w2 = numpy(second.kernel)
    b1_fb, b2_fb = numpy(first.feedback_kernel), numpy(second.feedback_kernel)
    h = np.maximum(x @ w1 + b1, 0.0)
    np.testing.assert_allclose(out, h @ w2 + numpy(second.bias), atol=1e-5)
    # The error crosses each Dense by its B, not its W (B has W's shape).
    delta_h = (up @ b2_fb.T) * (h > 0)
    np.testing.assert_allclose(dx, delta_h @ b1_fb.T, atol=1e-5)
    np.testing.assert_allclose(grads[first.kernel.path], x.T @ delta_h, 1e-5)
    np.testing.assert_allclose(grads[second.kernel.path], h.T @ up, 1e-5)
    assert not np.allclose(dx, ((up @ w2.T) * (h > 0)) @ w1.T, atol=1e-3)


def test_a_converted_custom_layer_saves_and_loads_exactly(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, TwoDense(name="block")(inputs))
    converted = keras_fa.convert(model, feedback="kp", seed=0)
    path = str(tmp_path / "custom.keras")
    converted.save(path)
    loaded = keras.models.load_model(path)
    block = loaded.get_layer("block")
    assert isinstance(block, TwoDense)
    assert [layer.feedback.name for layer in block.stack] == ["kp", "kp"]
    for a, b in zip(converted.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(numpy(a), numpy(b))
    # Converting the converted model again changes its rule.
    again = keras_fa.convert(loaded, feedback="usf")
    rules = {row.rule for row in keras_fa.feedback_summary(again, None)}
    assert rules == {"usf"}


def test_feedback_initializer_kernel_draws_b_like_each_kernel():
    inputs = keras.Input((64,))
    x = keras.layers.Dense(
        64, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02)
    )(inputs)
    x = TwoDense(64, name="block")(x)
    model = keras.Model(inputs, x)
    converted = keras_fa.convert(model, "fa", feedback_initializer="kernel")
    dense = converted.layers[1]
    assert 0.015 < np.std(numpy(dense.feedback_kernel)) < 0.025
    for inner in converted.get_layer("block").stack:
        # Dense's default kernel initializer: Glorot uniform.
        np.testing.assert_allclose(
            np.std(numpy(inner.feedback_kernel)), np.sqrt(1 / 64), rtol=0.15
        )
    with pytest.raises(ValueError, match="feedback_initializer"):
        keras_fa.convert(model, "fa", feedback_initializer="kernels")
