"""Tests of keras_fa.models: the networks, their rules, seeds and errors."""

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import models


def _forward_weights(model):
    return [
        w
        for w, v in zip(model.get_weights(), model.weights)
        if "feedback" not in v.path
    ]


def _kernel_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(getattr(layer, "kernel", None), keras.Variable)
    ]


@pytest.mark.parametrize(
    "name, input_shape, kwargs",
    [
        ("mlp", (40,), {}),
        ("mlp", (8, 8, 1), {}),
        ("lenet", (40,), {}),
        ("lenet", (64,), {"image_shape": (8, 8, 1)}),
        ("lenet", (28, 28, 1), {}),
        ("resnet8", (16, 16, 3), {}),
    ],
)
def test_models_train_with_layer_wise_and_direct_rules(
    name, input_shape, kwargs
):
    x = np.random.default_rng(0).normal(size=(8, *input_shape))
    y = np.arange(8) % 4
    for rule in ("fa", "dfa"):
        model = models.get(
            name, input_shape, 4, feedback=rule, seed=0, **kwargs
        )
        model.compile(
            "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        before = [w.copy() for w in model.get_weights()]
        model.fit(x.astype("float32"), y, epochs=1, batch_size=8, verbose=0)
        assert model.output_shape == (None, 4)
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(before, model.get_weights())
        ]
        assert any(changed)
        kernels = _kernel_layers(model)
        if rule == "fa":
            assert all(
                isinstance(k, keras_fa.layers.base.FeedbackMixin)
                for k in kernels
            )
            assert all(k.feedback.name == "fa" for k in kernels)
        else:
            assert isinstance(model, keras_fa.DirectFeedbackModel)
            heads = [
                layer
                for layer in model.layers
                if isinstance(layer, keras_fa.DirectFeedback)
            ]
            assert len(heads) == 1 and heads[0].feedback == "dfa"
            assert len(heads[0].feedback_kernels) >= 1


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet8"])
def test_one_seed_one_start_for_every_rule(name):
    shape = (16, 16, 1)
    reference = _forward_weights(models.get(name, shape, 3, "bp", seed=7))
    for rule in ("fa", "usf", "kp", "dfa", "shallow"):
        other = _forward_weights(models.get(name, shape, 3, rule, seed=7))
        assert len(other) == len(reference)
        for a, b in zip(reference, other):
            np.testing.assert_array_equal(a, b)
    different = _forward_weights(models.get(name, shape, 3, "bp", seed=8))
    assert not np.array_equal(reference[0], different[0])


def test_resnet20_is_resnet20():
    model = models.resnet((32, 32, 3), 10, feedback="bp")
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    dense = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
    ]
    # 19 3x3 convolutions + 2 projection shortcuts, and the classifier.
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert len(dense) == 1
    assert 0.26e6 < model.count_params() < 0.28e6


def test_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="Unknown model"):
        models.get("vgg", (8,), 3)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.resnet((8, 8, 1), 3, depth=21)
    with pytest.raises(ValueError, match="num_classes"):
        models.mlp((8,), 1)
    with pytest.raises(ValueError, match="input_shape"):
        models.mlp((0,), 3)
    with pytest.raises(ValueError, match="image_shape"):
        models.lenet((64,), 3, image_shape=(7, 7, 1))
    with pytest.raises(ValueError, match="Unknown feedback"):
        models.mlp((8,), 3, feedback="nope")
    assert "dfa" in models.rules() and "fa" in models.rules()
