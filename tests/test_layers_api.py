"""FADense, FAConv1D and FAConv2D as drop-in replacements of the Keras layers:
constructor arguments, outputs, use in models, mixed precision, errors."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from tests.gradients import layer_gradients

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp")
FA_CLASSES = {
    keras.layers.Dense: keras_fa.FADense,
    keras.layers.Conv1D: keras_fa.FAConv1D,
    keras.layers.Conv2D: keras_fa.FAConv2D,
}


def numpy(x):
    if keras.backend.standardize_dtype(x.dtype) == "bfloat16":
        x = ops.cast(x, "float32")  # numpy has no bfloat16 on every backend
    return ops.convert_to_numpy(x)


def random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ---------------------------------------------------------------------------
# Drop-in: the same arguments, the same outputs.

_REGULARIZED = dict(
    kernel_regularizer="l2",
    bias_regularizer=keras.regularizers.L1(0.01),
    activity_regularizer="l1",
    kernel_constraint="non_neg",
    bias_constraint=keras.constraints.MaxNorm(1.0),
)
_INITIALIZED = dict(
    kernel_initializer=keras.initializers.RandomNormal(seed=1),
    bias_initializer="ones",
)

DROP_IN_CASES = [
    # (Keras layer, positional args, keyword args, input shape)
    (keras.layers.Dense, (4,), dict(activation="relu", use_bias=False), (3, 5)),
    (keras.layers.Dense, (4,), dict(_INITIALIZED, **_REGULARIZED), (3, 5)),
    (keras.layers.Dense, (3,), dict(activation="softmax"), (2, 3, 5)),
    (keras.layers.Dense, (4,), dict(lora_rank=2), (3, 5)),
    (keras.layers.Dense, (4,), dict(dtype="float16", name="half"), (3, 5)),
    (keras.layers.Conv1D, (4, 3), dict(padding="same", strides=2), (2, 9, 2)),
    (
        keras.layers.Conv1D,
        (4, 2),
        dict(padding="causal", dilation_rate=3, activation="tanh"),
        (2, 9, 2),
    ),
    (
        keras.layers.Conv1D,
        (4, 3),
        dict(data_format="channels_first", use_bias=False, lora_rank=1),
        (2, 2, 9),
    ),
    (keras.layers.Conv1D, (4, 3), dict(groups=2, **_REGULARIZED), (2, 9, 2)),
    (
        keras.layers.Conv2D,
        (4, (3, 2)),
        dict(strides=(2, 1), padding="same", activation="relu"),
        (2, 7, 6, 2),
    ),
    (keras.layers.Conv2D, (3, 3), dict(dilation_rate=2), (2, 7, 6, 2)),
    (
        keras.layers.Conv2D,
        (4, 3),
        dict(data_format="channels_first", padding="same"),
        (2, 2, 7, 6),
    ),
    (
        keras.layers.Conv2D,
        (4, 3),
        dict(groups=2, use_bias=False, **_INITIALIZED),
        (2, 7, 6, 4),
    ),
    (
        keras.layers.Conv2D,
        (3, 3),
        dict(
            dtype="bfloat16",
            lora_rank=2,
            kernel_regularizer="l2",
            activity_regularizer="l1",
        ),
        (2, 7, 6, 2),
    ),
]


def copy_weights(source, target):
    """Assigns every weight of `source` to the weight of `target` with the
    same name (kernel, bias, LoRA factors)."""
    by_name = {w.name: w for w in target.weights}
    for weight in source.weights:
        by_name[weight.name].assign(numpy(weight))


@pytest.mark.parametrize(
    "keras_cls", list(FA_CLASSES), ids=lambda c: c.__name__
)
def test_drop_in_replacement(keras_cls):
    cases = [case for case in DROP_IN_CASES if case[0] is keras_cls]
    assert len(cases) >= 4
    for case in cases:
        check_drop_in(*case)


def check_drop_in(keras_cls, args, kwargs, input_shape):
    x = random(input_shape)
    reference = keras_cls(*args, **kwargs)
    reference.build(x.shape)
    if "lora_rank" in kwargs:
        # LoRA starts at B = 0; move it so that it changes the output.
        reference.lora_kernel_b.assign(random(reference.lora_kernel_b.shape))
    expected = reference(x)
    # "bp" is the Keras layer; every other rule has the same forward pass.
    for rule in ("bp", "fa"):
        case = f"{keras_cls.__name__}({args}, {kwargs}), feedback={rule}"
        layer = FA_CLASSES[keras_cls](*args, feedback=rule, **kwargs)
        layer.build(x.shape)
        copy_weights(reference, layer)
        outputs = layer(x)

        assert outputs.dtype == expected.dtype, case
        assert tuple(outputs.shape) == tuple(expected.shape), case
        np.testing.assert_array_equal(
            numpy(outputs), numpy(expected), err_msg=case
        )
        # Every Keras argument is kept, with the same value.
        config = layer.get_config()
        for key, value in reference.get_config().items():
            if key != "name":
                assert config[key] == value, (case, key)
        if "name" in kwargs:
            assert layer.name == kwargs["name"]
        assert len(layer.losses) == len(reference.losses), case
        for ours, theirs in zip(layer.losses, reference.losses):
            np.testing.assert_allclose(
                numpy(ours), numpy(theirs), rtol=1e-6, err_msg=case
            )


# ---------------------------------------------------------------------------
# In models, trained by fit.


def layer_stack(rules=("fa", "kp", "frsf")):
    conv2d_rule, conv1d_rule, dense_rule = rules
    return [
        keras_fa.FAConv2D(
            3,
            3,
            activation="relu",
            feedback=conv2d_rule,
            kernel_regularizer=keras.regularizers.L2(0.01),
        ),
        keras.layers.Reshape((16, 3)),
        keras_fa.FAConv1D(
            2, 3, padding="causal", activation="tanh", feedback=conv1d_rule
        ),
        keras.layers.Flatten(),
        keras_fa.FADense(
            2,
            feedback=dense_rule,
            kernel_regularizer=keras.regularizers.L2(0.1),
        ),
    ]


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stack = layer_stack()

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def build_model(style):
    if style == "sequential":
        return keras.Sequential([keras.Input((6, 6, 2)), *layer_stack()])
    if style == "functional":
        inputs = keras.Input((6, 6, 2))
        x = inputs
        for layer in layer_stack():
            x = layer(x)
        return keras.Model(inputs, x)
    model = Subclassed()
    model(random((1, 6, 6, 2)))
    return model


@pytest.mark.parametrize("style", ("sequential", "functional", "subclassed"))
def test_models_train_with_fit(style):
    model = build_model(style)
    fa_layers = [layer for layer in model.layers if hasattr(layer, "feedback")]
    assert [layer.feedback.name for layer in fa_layers] == ["fa", "kp", "frsf"]
    # Regularization losses: one per regularized kernel (the kp layer has no
    # regularizer, so its B adds none either).
    conv2d, _, dense = fa_layers
    expected = sorted(
        [
            0.01 * np.sum(numpy(conv2d.kernel) ** 2),
            0.1 * np.sum(numpy(dense.kernel) ** 2),
        ]
    )
    np.testing.assert_allclose(
        sorted(numpy(loss) for loss in model.losses), expected, rtol=1e-5
    )

    x, y = random((16, 6, 6, 2)), random((16, 2), seed=1)
    before = [numpy(v) for v in model.trainable_variables]
    fixed = [numpy(layer.feedback_kernel) for layer in (conv2d, dense)]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert len(before) == 3 * 2 + 1  # kernels, biases and kp's B
    for old, variable in zip(before, model.trainable_variables):
        assert not np.array_equal(old, numpy(variable)), variable.path
    # The fixed feedback matrices (fa, frsf) did not move.
    for old, layer in zip(fixed, (conv2d, dense)):
        np.testing.assert_array_equal(numpy(layer.feedback_kernel), old)


def test_kp_feedback_kernel_carries_kernel_regularizer():
    layer = keras_fa.FADense(
        3, feedback="kp", kernel_regularizer=keras.regularizers.L2(0.5)
    )
    layer.build((None, 4))
    expected = sorted(
        0.5 * np.sum(numpy(w) ** 2)
        for w in (layer.kernel, layer.feedback_kernel)
    )
    np.testing.assert_allclose(
        sorted(numpy(loss) for loss in layer.losses), expected, rtol=1e-5
    )


# ---------------------------------------------------------------------------
# Mixed precision.


def mixed_model(rules, per_layer_dtype=None):
    """FAConv2D -> FAConv1D -> FADense with the three given rules."""
    kwargs = {} if per_layer_dtype is None else {"dtype": per_layer_dtype}
    conv2d_rule, conv1d_rule, dense_rule = rules
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras_fa.FAConv2D(
                4, 3, activation="relu", feedback=conv2d_rule, **kwargs
            ),
            keras.layers.Reshape((16, 4), **kwargs),
            keras_fa.FAConv1D(
                3, 2, activation="tanh", feedback=conv1d_rule, **kwargs
            ),
            keras.layers.Flatten(**kwargs),
            keras_fa.FADense(2, feedback=dense_rule, **kwargs),
        ]
    )


@pytest.mark.parametrize(
    "global_policy, per_layer, rules",
    [
        ("mixed_float16", None, ("fa", "kp", "brsf")),
        ("mixed_bfloat16", None, ("frsf", "usf", "bp")),
        ("float32", "mixed_bfloat16", ("brsf", "fa", "kp")),
    ],
)
def test_mixed_precision_trains(global_policy, per_layer, rules):
    keras.config.set_dtype_policy(global_policy)
    model = mixed_model(rules, per_layer)
    policy = per_layer or global_policy
    compute_dtype = policy.split("_")[1]
    fa_layers = [layer for layer in model.layers if hasattr(layer, "feedback")]
    assert [layer.feedback.name for layer in fa_layers] == list(rules)
    x, y = random((16, 6, 6, 2)), random((16, 2), seed=1)
    for layer in fa_layers:
        assert layer.compute_dtype == compute_dtype
        for variable in layer.weights:
            assert variable.dtype in ("float32", "uint32", "int64", "int32"), (
                variable.path
            )
        if hasattr(layer, "feedback_kernel"):
            assert layer.feedback_kernel.dtype == "float32"
    assert keras.backend.standardize_dtype(model(x).dtype) == compute_dtype

    if per_layer:
        return  # the global policies train; this checks the dtypes only
    before = [numpy(v) for v in model.trainable_variables]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for old, variable in zip(before, model.trainable_variables):
        assert variable.dtype == "float32"
        value = numpy(variable)
        assert np.all(np.isfinite(value)), variable.path
        # A step with non-finite gradients would have been skipped (loss
        # scaling) or would have written NaN: every variable moved.
        assert not np.array_equal(old, value), variable.path


# ---------------------------------------------------------------------------
# No NaN: on torch, an error inside a custom-gradient op can surface only as
# NaN gradients.

SHAPES = {
    keras_fa.FADense: ((4,), (3, 5)),
    keras_fa.FAConv1D: ((4, 3), (2, 7, 3)),
    keras_fa.FAConv2D: ((4, 3), (2, 6, 5, 3)),
}


@pytest.mark.parametrize("cls", list(SHAPES), ids=lambda c: c.__name__)
def test_gradients_are_finite(cls):
    args, input_shape = SHAPES[cls]
    x = random(input_shape)
    for rule in RULES:
        layer = cls(*args, feedback=rule, activation="tanh")
        layer.build(x.shape)
        upstream = random(layer.compute_output_shape(x.shape), seed=2)
        _, dx, grads, _ = layer_gradients(layer, x, upstream)
        trainable = {v.path for v in layer.trainable_variables}
        assert trainable <= set(grads)
        for path in trainable:
            assert np.all(np.isfinite(grads[path])), (rule, path)
            assert np.any(grads[path] != 0), (rule, path)
        assert np.all(np.isfinite(dx)), rule
        assert np.any(dx != 0), rule


# ---------------------------------------------------------------------------
# Errors: early, clear, naming what is allowed.

ALL_CLASSES = (keras_fa.FADense, keras_fa.FAConv1D, keras_fa.FAConv2D)
INPUT_SHAPES = {
    keras_fa.FADense: (None, 6),
    keras_fa.FAConv1D: (None, 6, 6),
    keras_fa.FAConv2D: (None, 6, 6, 2),
}


def make(cls, **kwargs):
    args = (3,) if cls is keras_fa.FADense else (3, 2)
    return cls(*args, **kwargs)


def test_unknown_rule_is_rejected_at_construction():
    for cls in ALL_CLASSES:
        with pytest.raises(
            ValueError, match="Unknown feedback rule 'dfa2'"
        ) as e:
            make(cls, feedback="dfa2")
        for name in RULES:
            assert name in str(e.value)


def test_invalid_feedback_initializer_is_rejected_at_construction():
    for cls in ALL_CLASSES:
        for initializer in ("glorot_unifrom", 3, [1.0]):
            with pytest.raises(ValueError, match="Invalid `feedback_init"):
                make(cls, feedback_initializer=initializer)


def test_seed_must_be_an_integer():
    for cls in ALL_CLASSES:
        for seed in (1.5, "3", True, [1]):
            with pytest.raises(ValueError, match="`seed` must be an integer"):
                make(cls, seed=seed)
    # numpy integers are integers.
    a = make(keras_fa.FADense, seed=np.int64(4))
    b = make(keras_fa.FADense, seed=4)
    a.build((None, 5))
    b.build((None, 5))
    assert type(a.get_config()["seed"]) is int
    assert a.get_config()["seed"] == 4
    np.testing.assert_array_equal(
        numpy(a.feedback_kernel), numpy(b.feedback_kernel)
    )


def test_brsf_needs_a_random_feedback_initializer():
    for cls in ALL_CLASSES:
        # Raised at construction, before any weight exists.
        with pytest.raises(ValueError, match="must be a random Keras init"):
            make(cls, feedback="brsf", feedback_initializer="zeros")
        # Any random initializer is fine.
        layer = make(cls, feedback="brsf", feedback_initializer="he_normal")
        layer.build(INPUT_SHAPES[cls])


def test_input_of_wrong_rank_is_rejected():
    for cls, ndim in zip(ALL_CLASSES, (2, 3, 4)):
        shape = (4,) + (5,) * (ndim - 2)  # one axis short
        with pytest.raises(ValueError, match=f"expected min_ndim={ndim}"):
            make(cls)(random(shape))
        with pytest.raises(ValueError, match=f"expected min_ndim={ndim}"):
            make(cls)(keras.Input(shape[1:]))


def test_wrong_feedback_shape_on_load_names_the_shapes():
    for cls in ALL_CLASSES:
        layer = make(cls, feedback="fa")
        layer.build(INPUT_SHAPES[cls])
        store = {}
        layer.save_own_variables(store)
        assert len(store) == 3  # kernel, bias, feedback_kernel
        good = tuple(store["2"].shape)
        bad = good[:-1] + (good[-1] + 1,)
        store["2"] = np.zeros(bad, "float32")
        store["0"] = np.ones(good, "float32")
        kernel_before = numpy(layer.kernel)
        with pytest.raises(ValueError) as e:
            layer.load_own_variables(store)
        assert str(bad) in str(e.value) and str(good) in str(e.value)
        # Nothing was half-loaded.
        np.testing.assert_array_equal(numpy(layer.kernel), kernel_before)


def test_loading_into_a_model_with_other_units_names_the_shapes(tmp_path):
    def model(units):
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras_fa.FADense(units, feedback="fa"),
                keras_fa.FADense(2, feedback="fa"),
            ]
        )

    model(4).save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match=r"has shape \(5, 4\).*needs \(5, 3\)"):
        model(3).load_weights(tmp_path / "m.weights.h5")


def test_loading_weights_saved_with_another_rule_fails_clearly(tmp_path):
    def model(rule):
        return keras.Sequential(
            [keras.Input((5,)), keras_fa.FADense(2, feedback=rule)]
        )

    model("bp").save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match="feedback='fa'.*expects 3 saved"):
        model("fa").load_weights(tmp_path / "m.weights.h5")
