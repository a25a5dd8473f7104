"""Saving and loading keras_fa layers: configs, .keras files, weights files,
seeds, and files moved between backends."""

import itertools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from tests import _cross_backend

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm")
KINDS = ("dense", "conv1d", "conv2d")
INPUT_SHAPES = {"dense": (6,), "conv1d": (7, 3), "conv2d": (6, 6, 2)}
# How many feedback variables each rule keeps per layer: a fixed matrix (fa,
# frsf, kp), a seed generator state (brsf), or nothing (bp, usf).
FEEDBACK_VARIABLES_PER_LAYER = {
    "bp": 0,
    "fa": 1,
    "usf": 0,
    "brsf": 1,
    "frsf": 1,
    "kp": 1,
    "wm": 2,  # B and the mirror's seed state
}


def make_layer(kind, rule, units, **kwargs):
    if kind == "dense":
        return keras_fa.FADense(units, feedback=rule, **kwargs)
    if kind == "conv1d":
        return keras_fa.FAConv1D(units, 3, feedback=rule, **kwargs)
    return keras_fa.FAConv2D(units, 3, feedback=rule, **kwargs)


def make_model(rule):
    """FAConv2D -> FAConv1D -> FADense: each layer learns through the next
    layer's feedback."""
    inputs = keras.Input((6, 6, 2))
    x = make_layer("conv2d", rule, 3, activation="tanh")(inputs)
    x = keras.layers.Reshape((16, 3))(x)
    x = make_layer("conv1d", rule, 4, activation="tanh")(x)
    x = keras.layers.Flatten()(x)
    outputs = make_layer("dense", rule, 2)(x)
    return keras.Model(inputs, outputs)


def batch(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, *model.input_shape[1:])).astype("float32")
    y = rng.normal(size=(8, *model.output_shape[1:])).astype("float32")
    return x, y


def numpy(x):
    return ops.convert_to_numpy(x)


def feedback_variables(model):
    return [
        v
        for v in model.variables
        if v.path.split("/", 1)[1].startswith("feedback")
    ]


def sgd_step(model, x, y):
    """One SGD step with a fresh optimizer."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    model.train_on_batch(x, y)


def assert_same_variables(a, b, atol=0.0):
    assert [v.path for v in a.variables] == [v.path for v in b.variables]
    for va, vb in zip(a.variables, b.variables):
        if atol == 0:
            assert np.array_equal(numpy(va), numpy(vb)), va.path
        else:
            np.testing.assert_allclose(
                numpy(va), numpy(vb), rtol=0, atol=atol, err_msg=va.path
            )


def test_config_round_trip():
    for rule, kind in itertools.product(RULES, KINDS):
        layer = make_layer(
            kind,
            rule,
            3,
            seed=5,
            feedback_initializer="he_normal",
            activation="relu",
        )
        config = layer.get_config()
        json.dumps(config)  # a config must be plain JSON
        assert config["seed"] == 5
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        assert clone.feedback == layer.feedback == keras_fa.feedback.get(rule)
        assert isinstance(
            clone.feedback_initializer, keras.initializers.HeNormal
        )

        # Through Keras's registry too, as load_model does.
        revived = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(revived) is type(layer)
        assert revived.get_config() == config


def test_config_keeps_rule_arguments():
    rule = keras_fa.feedback.UniformSignFeedback(scale=0.25)
    layer = keras_fa.FAConv2D(2, 3, feedback=rule)
    clone = keras_fa.FAConv2D.from_config(layer.get_config())
    assert clone.feedback == rule
    assert clone.feedback.scale == 0.25
    assert clone.feedback != keras_fa.feedback.UniformSignFeedback()


@pytest.mark.parametrize("rule", RULES)
def test_save_and_load(rule, tmp_path):
    # No seeds: a loaded model that redrew B instead of loading it differs.
    model = make_model(rule)
    x, y = batch(model)
    # Train first, so that kp's B has moved and brsf's seed state advanced.
    sgd_step(model, x, y)
    saved_feedback = [numpy(v) for v in feedback_variables(model)]
    assert len(saved_feedback) == 3 * FEEDBACK_VARIABLES_PER_LAYER[rule]

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    # The weights file, into a fresh model of the same architecture.
    model.save_weights(tmp_path / "m.weights.h5")
    fresh = keras.Model.from_config(model.get_config())
    for ours, theirs in zip(feedback_variables(fresh), saved_feedback):
        assert not np.array_equal(numpy(ours), theirs), ours.path
    fresh.load_weights(tmp_path / "m.weights.h5")

    for other in (loaded, fresh):
        assert [type(layer) for layer in other.layers] == [
            type(layer) for layer in model.layers
        ]
        for layer, original in zip(other.layers, model.layers):
            if hasattr(original, "feedback"):
                assert layer.feedback == original.feedback
        restored = feedback_variables(other)
        assert len(restored) == len(saved_feedback)
        for value, variable in zip(saved_feedback, restored):
            assert np.array_equal(value, numpy(variable)), variable.path
        assert_same_variables(model, other)
    assert np.array_equal(numpy(model(x)), numpy(loaded(x)))

    # The next training step is the same: brsf draws the same feedback.
    x2, y2 = batch(model, seed=1)
    sgd_step(model, x2, y2)
    sgd_step(loaded, x2, y2)
    assert_same_variables(model, loaded, atol=1e-6)


def test_seed_fixes_feedback_matrix():
    def built(rule, kind, seed, **kwargs):
        layer = make_layer(kind, rule, 4, seed=seed, **kwargs)
        layer.build((None, *INPUT_SHAPES[kind]))
        return layer

    for rule, kind in itertools.product(("fa", "frsf", "kp"), KINDS):
        first = numpy(built(rule, kind, 7).feedback_kernel)
        keras.utils.set_random_seed(99)  # the global state must not matter
        same = numpy(built(rule, kind, 7).feedback_kernel)
        other = numpy(built(rule, kind, 8).feedback_kernel)
        assert np.array_equal(first, same), (rule, kind)
        assert not np.array_equal(first, other), (rule, kind)

        # Kernel and feedback with the same initializer and the same seed:
        # without the layer's seed mixing, B would equal W and FA would be BP.
        layer = built(
            rule,
            kind,
            3,
            kernel_initializer=keras.initializers.GlorotUniform(seed=3),
            feedback_initializer="glorot_uniform",
        )
        kernel = numpy(layer.kernel)
        reference = keras.initializers.GlorotUniform(seed=3)(kernel.shape)
        assert np.array_equal(kernel, numpy(reference))  # the premise
        feedback = numpy(layer.feedback_kernel)
        assert not np.allclose(np.abs(feedback), np.abs(kernel)), (rule, kind)


def test_brsf_seed_fixes_feedback_draws():
    def draws(kind, seed):
        layer = make_layer(kind, "brsf", 4, seed=seed)
        layer.build((None, *INPUT_SHAPES[kind]))
        return [numpy(layer.feedback.feedback_inputs(layer)[0]) for _ in "ab"]

    for kind in KINDS:
        first = draws(kind, 7)
        assert not np.array_equal(first[0], first[1])  # redrawn every call
        keras.utils.set_random_seed(99)
        again = draws(kind, 7)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert not np.array_equal(first[0], draws(kind, 8)[0])


def test_load_across_backends(tmp_path):
    current = keras.backend.backend()
    others = [b for b in ("tensorflow", "jax", "torch") if b != current]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "tests", "_cross_backend.py")
    pythonpath = os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    processes = [
        subprocess.Popen(
            [sys.executable, script, str(tmp_path)],
            env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=pythonpath),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for backend in others
    ]
    for backend, process in zip(others, processes):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, (backend, output.decode()[-3000:])

    x = _cross_backend.inputs()
    for backend in others:
        model = keras.models.load_model(tmp_path / f"{backend}.keras")
        saved = dict(np.load(tmp_path / f"{backend}_feedback.npz"))
        loaded = _cross_backend.feedback_variables(model)
        assert sorted(loaded) == sorted(saved)
        # fa, frsf, kp: a matrix; brsf: a seed generator state; wm: both.
        assert len(saved) == 6
        for key, value in saved.items():
            assert np.array_equal(loaded[key], value), (backend, key)
        for layer in model.layers:
            if hasattr(layer, "feedback"):
                assert layer.feedback.name == layer.name.split("_")[0]
        np.testing.assert_allclose(
            numpy(model(x)),
            np.load(tmp_path / f"{backend}_predictions.npy"),
            rtol=0,
            atol=1e-5,
            err_msg=f"saved under {backend}, loaded under {current}",
        )
