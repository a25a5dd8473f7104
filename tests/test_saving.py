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


# Run in a fresh process: loads a .keras file without keras_fa, prints
# Keras's error, then imports keras_fa, loads it and saves its predictions.
_LOAD_WITHOUT_IMPORT = """
import sys
import keras
import numpy as np
path, x_path, out_path = sys.argv[1:]
assert "keras_fa" not in sys.modules
try:
    keras.models.load_model(path)
except TypeError as error:
    print("ERROR", error)
else:
    raise SystemExit("loaded without keras_fa")
import keras_fa  # noqa: F401 (registers the layers and rules)
model = keras.models.load_model(path)
np.save(out_path, keras.ops.convert_to_numpy(model(np.load(x_path))))
"""


def test_loading_needs_import_keras_fa(tmp_path):
    """In a process that has not imported keras_fa, Keras cannot find its
    classes: it refuses (naming the class and keras_fa's module; Keras
    imports the modules of keras and keras_hub only, so keras_fa cannot
    load itself). After `import keras_fa` the same file loads and predicts
    what was saved (README, Saving)."""
    model = make_model("fa")
    x, _ = batch(model)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(
        [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_WITHOUT_IMPORT,
            str(tmp_path / "model.keras"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "predictions.npy"),
        ],
        env=dict(os.environ, PYTHONPATH=pythonpath),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    error = result.stdout[result.stdout.index("ERROR") :]
    assert "Could not locate class 'FAConv2D'" in error
    assert "'module': 'keras_fa.layers.conv'" in error
    assert "'registered_name': 'keras_fa>FAConv2D'" in error
    np.testing.assert_array_equal(
        np.load(tmp_path / "predictions.npy"), numpy(model(x))
    )


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

        # Every layer type: all variables bit for bit, the feedback state
        # (B, seed generator states) among them.
        model = keras.models.load_model(tmp_path / f"{backend}_layers.keras")
        saved = dict(np.load(tmp_path / f"{backend}_layers_variables.npz"))
        loaded = _cross_backend.all_variables(model)
        assert list(loaded) == list(saved)
        for key, value in saved.items():
            # Seed generator states are uint32, int32 or int64 depending on
            # the backend (Keras's choice); their values carry over.
            if value.dtype.kind == "f":
                assert loaded[key].dtype == value.dtype, (backend, key)
            assert np.array_equal(loaded[key], value), (backend, key)
        state = keras_fa.layers.feedback_variables(model)
        units = {"separable1d": 2, "separable2d": 2, "mha": 4, "gqa": 4}
        assert len(state) == sum(
            units.get(name, 1) * FEEDBACK_VARIABLES_PER_LAYER[rule]
            for name, rule in zip(
                _cross_backend.LAYER_NAMES, _cross_backend.LAYER_RULES
            )
        )
        assert {v.path for v in state} <= set(saved)
        for name, rule in zip(
            _cross_backend.LAYER_NAMES, _cross_backend.LAYER_RULES
        ):
            rules = feedback_rules(model.get_layer(name))
            assert rules and all(r.name == rule for r in rules), name
        np.testing.assert_allclose(
            numpy(model(x)),
            np.load(tmp_path / f"{backend}_layers_predictions.npy"),
            rtol=0,
            atol=1e-5,
            err_msg=f"saved under {backend}, loaded under {current}",
        )


# ---------------------------------------------------------------------------
# Every other layer type: FAEinsumDense, FAConv3D, the depthwise, separable and
# transposed convolutions, FAMultiHeadAttention and FAGroupQueryAttention.

# (class, positional args, Keras keyword args other than the defaults, input
# shape); attention layers take the input as query and value.
LAYERS = [
    (
        keras_fa.FAEinsumDense,
        ("abc,cde->abde", (4, 3, 2)),
        dict(bias_axes="de", activation="relu", kernel_regularizer="l2"),
        (4, 5),
    ),
    (
        keras_fa.FAConv3D,
        (2, (2, 1, 2)),
        dict(strides=(1, 2, 1), padding="same", use_bias=False),
        (3, 4, 3, 2),
    ),
    (
        keras_fa.FADepthwiseConv1D,
        (3,),
        dict(depth_multiplier=2, padding="same", activation="tanh"),
        (6, 2),
    ),
    (
        keras_fa.FADepthwiseConv2D,
        (2,),
        dict(dilation_rate=2, depthwise_regularizer="l1"),
        (5, 5, 2),
    ),
    (
        keras_fa.FASeparableConv1D,
        (3, 2),
        dict(depth_multiplier=2, strides=2, pointwise_constraint="non_neg"),
        (6, 2),
    ),
    (
        keras_fa.FASeparableConv2D,
        (3, 2),
        dict(padding="same", depthwise_initializer="ones"),
        (4, 4, 2),
    ),
    (
        keras_fa.FAConv1DTranspose,
        (2, 3),
        dict(strides=2, output_padding=1, bias_initializer="ones"),
        (5, 2),
    ),
    (
        keras_fa.FAConv2DTranspose,
        (2, 2),
        dict(padding="same", dilation_rate=2),
        (3, 3, 2),
    ),
    (
        keras_fa.FAConv3DTranspose,
        (1, 2),
        dict(strides=(1, 2, 1), data_format="channels_last"),
        (2, 2, 2, 2),
    ),
    (
        keras_fa.FAMultiHeadAttention,
        (2, 3),
        dict(value_dim=2, output_shape=4, dropout=0.1, seed=5),
        (4, 3),
    ),
    (
        keras_fa.FAGroupQueryAttention,
        (2, 4, 2),
        dict(use_gate=True, use_bias=False, seed=5),
        (4, 3),
    ),
]
ATTENTION = (keras_fa.FAMultiHeadAttention, keras_fa.FAGroupQueryAttention)


def build_layer(layer, input_shape):
    shape = (None, *input_shape)
    if isinstance(layer, ATTENTION):
        layer.build(shape, shape)
    else:
        layer.build(shape)
    return layer


def feedback_rules(layer):
    """The rule of each feedback unit in `layer` (itself or sub-layers)."""
    return [
        sublayer.feedback
        for sublayer in layer._flatten_layers(include_self=True)
        if isinstance(sublayer, keras_fa.layers.FeedbackMixin)
    ]


def test_layers_config_round_trip():
    rules = [*RULES, keras_fa.feedback.WeightMirror(mirror_batch=3, decay=0.5)]
    for (cls, args, kwargs, input_shape), rule in itertools.product(
        LAYERS, rules
    ):
        # The attention layers take `seed` as Keras does (dropout) and
        # derive their feedback seeds from it.
        seeded = dict(kwargs, seed=kwargs.get("seed", 5))
        layer = cls(
            *args, feedback=rule, feedback_initializer="he_normal", **seeded
        )
        config = layer.get_config()
        json.dumps(config)
        assert config["seed"] == 5
        assert config["feedback"] == keras_fa.feedback.serialize(
            keras_fa.feedback.get(rule)
        )
        assert config["feedback_initializer"]["class_name"] == "HeNormal"
        for key in kwargs:
            assert key in config, key
        clone = cls.from_config(config)
        assert clone.get_config() == config
        revived = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(revived) is cls
        assert revived.get_config() == config
        assert clone.feedback == keras_fa.feedback.get(rule)
        if rule == "wm":
            # The seed is kept: the clone draws the same feedback state (B
            # and seed generator states), where the global random state,
            # which has moved on, would draw others.
            build_layer(layer, input_shape)
            build_layer(clone, input_shape)
            assert all(r == layer.feedback for r in feedback_rules(clone))
            state = keras_fa.layers.feedback_variables(layer)
            assert len(state) == 2 * len(feedback_rules(layer))
            for ours, cloned in zip(
                state, keras_fa.layers.feedback_variables(clone)
            ):
                assert np.array_equal(numpy(ours), numpy(cloned)), ours.path


def layers_batch(model, seed=0):
    # As many samples as `_cross_backend.inputs()`: on jax, the shapes the
    # eager ops have already been compiled for.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, *model.input_shape[1:])).astype("float32")
    y = rng.normal(size=(5, *model.output_shape[1:])).astype("float32")
    return x, y


def move_feedback_state(model):
    """Moves every feedback variable (kp's and wm's B, the seed generator
    states), as training would, without training: a loader that kept or
    redrew its own state instead of loading this one differs."""
    rng = np.random.default_rng(7)
    for variable in keras_fa.layers.feedback_variables(model):
        value = numpy(variable)
        if value.dtype.kind == "f":
            variable.assign(rng.normal(size=value.shape).astype(value.dtype))
        else:
            variable.assign(value + rng.integers(1, 100, size=value.shape))


def test_layers_save_and_load(tmp_path):
    # Every layer type with each rule. No seeds: a loaded model that redrew
    # its feedback state instead of loading it differs.
    for rule in RULES:
        model = _cross_backend.build_layers_model(rules=(rule,))
        move_feedback_state(model)
        # 11 layers; the separable ones have 2 units, the attention ones 4.
        units = sum(len(feedback_rules(layer)) for layer in model.layers)
        assert units == 19
        state = keras_fa.layers.feedback_variables(model)
        assert len(state) == units * FEEDBACK_VARIABLES_PER_LAYER[rule]
        loaded, fresh = save_and_reload(model, tmp_path / rule)
        assert_loaded(model, loaded, fresh)


def save_and_reload(model, path):
    """Returns `model` saved and loaded (`.keras` file), and a model of the
    same config into which its weights file was loaded."""
    path.mkdir()
    model.save(path / "m.keras")
    loaded = keras.models.load_model(path / "m.keras")
    model.save_weights(path / "m.weights.h5")
    fresh = keras.Model.from_config(model.get_config())
    saved = {v.path: numpy(v) for v in layer_variables(model)}
    for variable in keras_fa.layers.feedback_variables(fresh):
        assert not np.array_equal(numpy(variable), saved[variable.path])
    fresh.load_weights(path / "m.weights.h5")
    return loaded, fresh


def layer_variables(model):
    """The variables of `model`'s layers (not of its compiled metrics)."""
    return [v for layer in model.layers for v in layer.variables]


def assert_loaded(model, *others, atol=0):
    """Asserts that `others` have `model`'s layers, rules and variables (bit
    for bit by default)."""
    saved = {v.path: numpy(v) for v in layer_variables(model)}
    for other in others:
        for layer, original in zip(other.layers, model.layers):
            assert type(layer) is type(original)
            assert feedback_rules(layer) == feedback_rules(original)
        assert [v.path for v in layer_variables(other)] == list(saved)
        for variable in layer_variables(other):
            np.testing.assert_allclose(
                numpy(variable),
                saved[variable.path],
                rtol=0,
                atol=atol,
                err_msg=variable.path,
            )


def test_layers_training_goes_on_after_loading(tmp_path):
    # Each layer type with a rule whose state training reads and changes:
    # brsf's and wm's seed generators, kp's and wm's B.
    model = _cross_backend.build_layers_model(rules=("brsf", "kp", "wm"))
    x, y = layers_batch(model)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, verbose=0)
    stem = numpy(model.get_layer("stem").kernel)
    loaded, fresh = save_and_reload(model, tmp_path / "m")
    assert_loaded(model, loaded, fresh)
    # Predictions are the same. brsf and wm draw noise at every call,
    # predictions too: each model predicts once, to keep them in step.
    predictions = numpy(model(x))
    for other in (loaded, fresh):
        assert np.array_equal(numpy(other(x)), predictions)

    # Training goes on as it would have: brsf and wm draw the same noise,
    # kp's and wm's B move the same way, and the stem, which learns through
    # every layer's feedback, follows.
    x, y = layers_batch(model, seed=1)
    model.fit(x, y, epochs=2, verbose=0)
    loaded.fit(x, y, epochs=2, verbose=0)  # with the saved optimizer
    assert_loaded(model, loaded, atol=1e-6)
    assert not np.array_equal(numpy(model.get_layer("stem").kernel), stem)


def test_layers_load_with_another_rule_fails_clearly(tmp_path):
    for cls in (
        keras_fa.FAConv2DTranspose,
        keras_fa.FASeparableConv2D,
        keras_fa.FAMultiHeadAttention,
    ):
        check_load_with_another_rule(cls, tmp_path)


def check_load_with_another_rule(cls, tmp_path):
    _, args, kwargs, input_shape = next(c for c in LAYERS if c[0] is cls)

    def model(rule):
        inputs = keras.Input(input_shape)
        layer = cls(*args, feedback=rule, **kwargs)
        if cls in ATTENTION:
            return keras.Model(inputs, layer(inputs, inputs))
        return keras.Model(inputs, layer(inputs))

    for saved, loading in (("bp", "fa"), ("fa", "bp"), ("wm", "kp")):
        path = tmp_path / f"{cls.__name__}_{saved}.weights.h5"
        model(saved).save_weights(path)
        with pytest.raises(
            ValueError, match=f"feedback='{loading}'.*expects .* saved"
        ):
            model(loading).load_weights(path)
