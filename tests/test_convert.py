"""keras_fa.convert: Keras models turned into feedback-alignment models."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp")
REPLACEMENTS = {
    keras.layers.Dense: keras_fa.FADense,
    keras.layers.Conv1D: keras_fa.FAConv1D,
    keras.layers.Conv2D: keras_fa.FAConv2D,
}


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


def test_convert_rejects_subclassed_model():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="Sequential and functional"):
        keras_fa.convert(model)
    with pytest.raises(ValueError, match="Sequential and functional"):
        keras_fa.convert(keras.layers.Dense(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feedback="backprop"), "Allowed names: bp, brsf, fa"),
        (dict(feedback_initializer="no_such_init"), "feedback_initializer"),
    ],
)
def test_convert_rejects_bad_arguments_before_any_work(
    kwargs, match, monkeypatch
):
    def clone_model(*args, **kwargs):
        raise AssertionError("convert cloned the model before checking")

    monkeypatch.setattr(keras.models, "clone_model", clone_model)
    with pytest.raises(ValueError, match=match):
        keras_fa.convert(sequential_model(), **kwargs)


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
