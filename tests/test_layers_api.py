"""FADense, FAConv1D and FAConv2D as drop-in replacements of the Keras layers:
constructor arguments, outputs, use in models, mixed precision, errors."""

import functools
import inspect

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from tests import _cross_backend
from tests.gradients import BACKEND
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


# ---------------------------------------------------------------------------
# Every other Keras layer with a kernel (EinsumDense, Conv3D, the depthwise,
# separable and transposed convolutions, the attention layers): the same
# arguments, config, outputs and, under feedback="bp", gradients.

L = keras.layers
_SEPARABLE_ARGS = dict(
    depthwise_initializer=keras.initializers.RandomNormal(seed=1),
    pointwise_initializer=keras.initializers.RandomNormal(seed=2),
    bias_initializer="ones",
    depthwise_regularizer="l2",
    pointwise_regularizer=keras.regularizers.L1(0.01),
    bias_regularizer="l2",
    activity_regularizer="l1",
    depthwise_constraint="non_neg",
    pointwise_constraint=keras.constraints.MaxNorm(2.0),
    bias_constraint=keras.constraints.MaxNorm(1.0),
)
_DEPTHWISE_ARGS = {
    key: value
    for key, value in _SEPARABLE_ARGS.items()
    if not key.startswith("pointwise")
}
_ATTENTION_ARGS = dict(_INITIALIZED, **_REGULARIZED)
_CHANNELS_FIRST = dict(data_format="channels_first", use_bias=False)

# (Keras layer, positional args, keyword args, input shape); the attention
# layers' input shape is (query shape, value shape).
LAYER_CASES = [
    (
        L.EinsumDense,
        ("ab,bc->ac", 4),
        dict(bias_axes="c", **_INITIALIZED, **_REGULARIZED, activation="relu"),
        (3, 5),
    ),
    (
        L.EinsumDense,
        ("...b,bc->...c", 3),
        dict(dtype="float16", name="half"),
        (2, 3, 5),
    ),
    (
        L.EinsumDense,
        ("abc,cde->abde", (4, 3, 2)),
        dict(bias_axes="de", lora_rank=2, lora_alpha=4.0),
        (2, 4, 5),
    ),
    (L.EinsumDense, ("abc,cd->abd", (None, 3)), dict(), (2, 4, 5)),
    (
        L.Conv3D,
        (3, 2),
        dict(
            strides=(1, 2, 1),
            padding="same",
            data_format="channels_last",
            activation="relu",
            **_INITIALIZED,
        ),
        (2, 4, 5, 4, 2),
    ),
    (
        L.Conv3D,
        (4, 2),
        dict(groups=2, dilation_rate=(2, 1, 1), use_bias=False, **_REGULARIZED),
        (2, 5, 4, 3, 4),
    ),
    (
        L.DepthwiseConv1D,
        (3,),
        dict(
            depth_multiplier=2,
            strides=2,
            padding="same",
            activation="tanh",
            **_DEPTHWISE_ARGS,
        ),
        (2, 9, 2),
    ),
    (
        L.DepthwiseConv1D,
        (2,),
        dict(dilation_rate=2, **_CHANNELS_FIRST),
        (2, 2, 9),
    ),
    (
        L.DepthwiseConv2D,
        ((3, 2),),
        dict(
            depth_multiplier=2,
            strides=2,
            padding="same",
            activation="relu",
            **_DEPTHWISE_ARGS,
        ),
        (2, 6, 5, 2),
    ),
    (
        L.DepthwiseConv2D,
        (2,),
        dict(dilation_rate=2, **_CHANNELS_FIRST),
        (2, 2, 6, 5),
    ),
    (
        L.SeparableConv1D,
        (4, 3),
        dict(
            depth_multiplier=2,
            strides=2,
            padding="same",
            activation="relu",
            **_SEPARABLE_ARGS,
        ),
        (2, 9, 2),
    ),
    (
        L.SeparableConv1D,
        (3, 2),
        dict(dilation_rate=2, **_CHANNELS_FIRST),
        (2, 2, 9),
    ),
    (
        L.SeparableConv2D,
        (4, (3, 2)),
        dict(
            depth_multiplier=2,
            strides=2,
            padding="same",
            activation="tanh",
            **_SEPARABLE_ARGS,
        ),
        (2, 6, 5, 2),
    ),
    (
        L.SeparableConv2D,
        (3, 2),
        dict(dilation_rate=2, **_CHANNELS_FIRST),
        (2, 2, 6, 5),
    ),
    (
        L.Conv1DTranspose,
        (3, 3),
        dict(
            strides=2,
            padding="same",
            output_padding=1,
            activation="relu",
            **_INITIALIZED,
            **_REGULARIZED,
        ),
        (2, 5, 2),
    ),
    (
        L.Conv1DTranspose,
        (2, 2),
        dict(dilation_rate=2, **_CHANNELS_FIRST),
        (2, 2, 5),
    ),
    (
        L.Conv2DTranspose,
        (3, (3, 3)),
        dict(
            strides=(2, 1),
            padding="same",
            output_padding=(1, 0),
            activation="relu",
            **_INITIALIZED,
        ),
        (2, 4, 3, 2),
    ),
    (
        L.Conv2DTranspose,
        (2, 2),
        dict(dilation_rate=2, **_CHANNELS_FIRST, **_REGULARIZED),
        (2, 2, 4, 3),
    ),
    (
        L.Conv3DTranspose,
        (2, 2),
        dict(
            strides=(2, 1, 1),
            output_padding=(1, 0, 0),
            **_INITIALIZED,
            **_REGULARIZED,
        ),
        (2, 3, 3, 2, 2),
    ),
    (
        L.Conv3DTranspose,
        (2, 2),
        dict(
            _CHANNELS_FIRST, padding="same", dilation_rate=2, activation="tanh"
        ),
        (2, 2, 3, 3, 2),
    ),
    (
        L.MultiHeadAttention,
        (2, 3),
        dict(
            value_dim=4,
            output_shape=5,
            dropout=0.1,
            use_bias=False,
            flash_attention=False,
            seed=3,
        ),
        ((2, 4, 3), (2, 5, 3)),
    ),
    (
        L.MultiHeadAttention,
        (2, 2),
        dict(use_gate=True, sliding_window=2, **_ATTENTION_ARGS),
        ((2, 4, 3), (2, 4, 3)),
    ),
    (
        L.MultiHeadAttention,
        (2, 2),
        dict(attention_axes=(1, 2)),
        ((2, 3, 2, 4), (2, 3, 2, 4)),
    ),
    (
        L.GroupQueryAttention,
        (3, 4, 2),
        dict(
            dropout=0.1,
            use_bias=False,
            sliding_window=2,
            flash_attention=False,
            seed=4,
        ),
        ((2, 4, 3), (2, 5, 3)),
    ),
    (
        L.GroupQueryAttention,
        (2, 2, 1),
        dict(use_gate=True, **_ATTENTION_ARGS),
        ((2, 4, 3), (2, 4, 3)),
    ),
]
# Arguments not covered: those of quantization, which keras_fa layers refuse.
_QUANTIZATION_ARGS = ("quantization_config", "gptq_unpacked_column_size")
ATTENTION_CLASSES = (L.MultiHeadAttention, L.GroupQueryAttention)


class Calling(keras.layers.Layer):
    """Calls a layer through `__call__`, as a model does (which casts the
    inputs to the compute dtype; `stateless_call` does not), for
    `layer_gradients`, and returns float32 (numpy has no bfloat16 on every
    backend). An attention layer gets the first `queries` steps of the input
    as the query and the others as the value."""

    def __init__(self, layer, queries=None, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.queries = queries

    def build(self, input_shape):
        if self.queries is None:
            self.layer.build(input_shape)
            return
        query = (input_shape[0], self.queries, *input_shape[2:])
        value = (input_shape[0], input_shape[1] - self.queries)
        self.layer.build(query, value + tuple(input_shape[2:]))

    def inner_call(self, x):
        """Returns the layer's outputs, in its compute dtype."""
        if self.queries is None:
            return self.layer(x)
        return self.layer(x[:, : self.queries], x[:, self.queries :])

    def call(self, x):
        outputs = self.inner_call(x)
        self.outputs_dtype = keras.backend.standardize_dtype(outputs.dtype)
        return ops.cast(outputs, "float32")


def case_layer(cls, args, kwargs, input_shape, **extra):
    """Returns `(Calling(layer), x)` for `layer = cls(*args, **kwargs,
    **extra)`, built for the input `x`."""
    layer = cls(*args, **kwargs, **extra)
    queries = None
    if issubclass(cls, ATTENTION_CLASSES):
        query, value = input_shape
        input_shape = (query[0], query[1] + value[1], *query[2:])
        queries = query[1]
    x = random(input_shape)
    wrapped = Calling(layer, queries, name="calling")
    wrapped.build(x.shape)
    return wrapped, x


def gradients(layer, x, upstream):
    """`layer_gradients`, compiled on jax: there every eager op is an XLA
    program of its own, and one program for the whole costs less."""
    return layer_gradients(layer, x, upstream, compiled=BACKEND == "jax")


def forward_weights(layer):
    feedback = {id(v) for v in keras_fa.layers.feedback_variables(layer)}
    return [w for w in layer.weights if id(w) not in feedback]


# One test for all: each test costs a Keras session reset (~0.5 s).
KERAS_CLASSES = list(dict.fromkeys(case[0] for case in LAYER_CASES))


def test_layers_drop_in_replacement():
    assert set(KERAS_CLASSES) == set(keras_fa.layers.REPLACEMENTS) - {
        keras.layers.Dense,
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.ReversibleEmbedding,
    }
    for keras_cls in KERAS_CLASSES:
        cases = [case for case in LAYER_CASES if case[0] is keras_cls]
        # Every constructor argument of the Keras layer is given somewhere.
        params = list(inspect.signature(keras_cls.__init__).parameters)
        given = set()
        for _, args, kwargs, _ in cases:
            given |= set(kwargs) | set(params[1 : 1 + len(args)])
        expected = set(params) - {"self", "kwargs", *_QUANTIZATION_ARGS}
        assert expected <= given, (keras_cls.__name__, expected - given)
        for case in cases:
            check_layer_drop_in(*case)


def check_layer_drop_in(keras_cls, args, kwargs, input_shape):
    fa_cls = keras_fa.layers.REPLACEMENTS[keras_cls]
    case = f"{keras_cls.__name__}({args}, {kwargs})"
    name = dict(name=kwargs.get("name", "layer"))
    kwargs = {k: v for k, v in kwargs.items() if k != "name"}
    reference, x = case_layer(keras_cls, args, kwargs, input_shape, **name)
    if "lora_rank" in kwargs:
        # LoRA starts at B = 0; move it so that it changes the output.
        lora_b = reference.layer.lora_kernel_b
        lora_b.assign(random(lora_b.shape))

    def assert_keras_config(config, keras_config):
        # The Keras layer's config plus the feedback arguments (the attention
        # layers have `seed` from Keras).
        feedback_keys = {"feedback", "feedback_initializer", "seed"}
        feedback_keys -= set(keras_config)
        assert set(config) - set(keras_config) == feedback_keys, case
        for key in feedback_keys:
            config.pop(key)
        assert config == keras_config, case

    # Every Keras argument reaches the layer, whatever the rule.
    keras_config = keras_cls(*args, **kwargs, **name).get_config()
    for rule in RULES:
        layer = fa_cls(*args, feedback=rule, **kwargs, **name)
        assert_keras_config(layer.get_config(), keras_config)

    # feedback="bp" is the Keras layer: the same variables in the same
    # order, outputs, losses and gradients, bit for bit.
    layer, _ = case_layer(
        fa_cls, args, kwargs, input_shape, feedback="bp", **name
    )
    inner = layer.layer
    keras_inner = reference.layer
    assert_keras_config(inner.get_config(), keras_inner.get_config())
    assert [w.path for w in layer.weights] == [
        w.path for w in reference.weights
    ], case
    for weight, source in zip(layer.weights, reference.weights):
        weight.assign(source)
    symbolic = layer.inner_call(keras.KerasTensor(x.shape))
    keras_symbolic = reference.inner_call(keras.KerasTensor(x.shape))
    assert symbolic.dtype == keras_symbolic.dtype == inner.compute_dtype
    assert inner.compute_dtype == keras_inner.compute_dtype, case

    shape = tuple(symbolic.shape)
    if None in shape:  # an EinsumDense output_shape with None
        shape = tuple(layer.inner_call(x).shape)
    upstream = random(shape, seed=2)
    y, dx, grads, _ = gradients(layer, x, upstream)
    keras_y, keras_dx, keras_grads, _ = gradients(reference, x, upstream)
    np.testing.assert_array_equal(y, keras_y, case)

    shapes = input_shape if keras_cls in ATTENTION_CLASSES else (x.shape,)
    shape = inner.compute_output_shape(*shapes)
    assert shape == keras_inner.compute_output_shape(*shapes), case
    # None where Keras cannot tell a size before the call.
    assert len(shape) == len(y.shape), case
    for size, actual in zip(shape, y.shape):
        assert size in (None, actual), case

    assert len(layer.losses) == len(reference.losses), case
    for loss, keras_loss in zip(layer.losses, reference.losses):
        np.testing.assert_allclose(
            numpy(loss), numpy(keras_loss), rtol=1e-6, err_msg=case
        )

    assert list(grads) == list(keras_grads), case
    if keras_cls in (L.SeparableConv1D, L.SeparableConv2D):
        # keras_fa runs the depthwise and pointwise products one after the
        # other; Keras's separable op (tensorflow) fuses them, which rounds
        # the kernel gradients differently.
        exact = functools.partial(
            np.testing.assert_allclose, rtol=1e-5, atol=1e-6
        )
    else:
        exact = np.testing.assert_array_equal
    exact(dx, keras_dx, err_msg=case)
    for path, grad in grads.items():
        exact(grad, keras_grads[path], err_msg=case)

    # (Keras refuses int8 for float16 before the layer's own quantize runs.)
    mode = "int4" if inner.compute_dtype == "float16" else "int8"
    with pytest.raises(NotImplementedError, match="left unquantized"):
        inner.quantize(mode)


def test_model_quantize_warns_naming_each_feedback_layer():
    """`model.quantize` quantizes what Keras can and warns once for every
    kernel of a keras_fa layer, naming the layer; those keep their kernels
    (Keras calls `quantize` on leaf layers and turns NotImplementedError
    into a warning; raising anything else would stop it half-way, with
    the layers before already quantized)."""
    x = keras.Input((3, 4))
    h = keras_fa.FADense(4, name="fa_in")(x)
    h = keras.layers.Dense(4, name="plain")(h)
    h = keras_fa.FAMultiHeadAttention(2, 2, feedback="kp", name="att")(h, h)
    y = keras_fa.FASeparableConv1D(2, 1, name="sep")(h)
    model = keras.Model(x, y)
    kernels = {
        v.path: numpy(v)
        for v in model.weights
        if v.path.split("/")[-1].endswith("kernel")
        and not v.path.startswith("plain/")
    }
    inputs = random((2, 3, 4))
    with pytest.warns(UserWarning) as record:
        model.quantize("int8")
    messages = [str(w.message) for w in record]
    expected = [
        "'fa_in' (FADense, feedback='fa')",
        *(
            f"'att/{name}' (FAEinsumDense, feedback='kp')"
            for name in ("query", "key", "value", "attention_output")
        ),
        "'sep' (FASeparableConv1D, its depthwise_kernel, feedback='fa')",
        "'sep' (FASeparableConv1D, its pointwise_kernel, feedback='fa')",
    ]
    for text in expected:
        found = [m for m in messages if text in m]
        assert len(found) == 1, (text, messages)
        assert "is left unquantized" in found[0]
    assert model.get_layer("plain").quantization_mode == "int8"
    for path, value in kernels.items():
        variable = next(v for v in model.weights if v.path == path)
        assert variable.dtype == "float32", path
        np.testing.assert_array_equal(numpy(variable), value, err_msg=path)
    assert model(inputs).shape == (2, 3, 2)
    # Called on the layer itself, it raises.
    with pytest.raises(NotImplementedError, match="'fa_in' .* unquantized"):
        model.get_layer("fa_in").quantize("int8")
    # So is a quantized dtype policy, at construction.
    with pytest.raises(ValueError, match="dtype='int8_from_float32'"):
        keras_fa.FADense(2, dtype="int8_from_float32")


def test_einsum_dense_lora_uses_merged_kernel(tmp_path):
    # LoRA works as in Keras (the base kernel frozen, the factors learning),
    # and the feedback product uses the merged kernel W + A B * scale.
    kwargs = dict(
        equation="abc,cd->abd",
        output_shape=(4, 3),
        bias_axes="d",
        lora_rank=2,
        lora_alpha=4.0,
        name="layer",
    )
    x, upstream = random((2, 4, 5)), random((2, 4, 3), seed=2)
    reference = L.EinsumDense(**kwargs)
    reference.build(x.shape)
    reference.lora_kernel_b.assign(random(reference.lora_kernel_b.shape))
    merged = numpy(reference.kernel)
    # The premise: LoRA flips signs of the kernel.
    assert np.any(np.sign(merged) != np.sign(numpy(reference._kernel)))

    rule = keras_fa.feedback.UniformSignFeedback(scale=1.0)
    layer = keras_fa.FAEinsumDense(**kwargs, feedback=rule)
    layer.build(x.shape)
    assert [v.path for v in layer.trainable_variables] == [
        v.path for v in reference.trainable_variables
    ]
    assert "layer/kernel" not in [v.path for v in layer.trainable_variables]
    for weight, source in zip(layer.weights, reference.weights):
        weight.assign(source)
    np.testing.assert_array_equal(numpy(layer.kernel), merged)
    np.testing.assert_array_equal(numpy(layer(x)), numpy(reference(x)))

    _, dx, grads, _ = layer_gradients(layer, x, upstream)
    _, dx_bp, keras_grads, _ = layer_gradients(reference, x, upstream)
    # The LoRA factors, the frozen kernel and the bias get Keras's gradients:
    # they come from the local kernel gradient, whatever B is.
    assert list(grads) == list(keras_grads)
    for path, grad in grads.items():
        np.testing.assert_allclose(
            grad, keras_grads[path], rtol=1e-5, atol=1e-6, err_msg=path
        )
    # d inputs crosses sign(merged kernel): a plain EinsumDense with that
    # kernel, not with the signs of the base kernel.
    plain = {k: v for k, v in kwargs.items() if not k.startswith("lora")}
    signed = L.EinsumDense(**plain)
    signed.build(x.shape)
    signed.kernel.assign(np.sign(merged))
    _, dx_ref, _, _ = layer_gradients(signed, x, upstream)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)
    assert not np.allclose(dx, dx_bp, atol=0.1)

    # Saving writes the merged kernel, as Keras does; B is saved with it.
    def model(rule):
        return keras.Sequential(
            [
                keras.Input((4, 5)),
                keras_fa.FAEinsumDense(**kwargs, feedback=rule),
            ]
        )

    original = model("fa")
    original.layers[0].lora_kernel_b.assign(random((2, 3)))
    original.save_weights(tmp_path / "m.weights.h5")
    fresh = model("fa")
    fresh.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(
        numpy(fresh.layers[0].feedback_kernel),
        numpy(original.layers[0].feedback_kernel),
    )
    np.testing.assert_allclose(
        numpy(fresh(x)), numpy(original(x)), rtol=1e-5, atol=1e-6
    )


FA_LAYER_CLASSES = list(
    dict.fromkeys(keras_fa.layers.REPLACEMENTS[case[0]] for case in LAYER_CASES)
)


def make_layer(fa_cls, **kwargs):
    """`fa_cls` with the positional arguments of its first case."""
    keras_cls = next(
        k for k, v in keras_fa.layers.REPLACEMENTS.items() if v is fa_cls
    )
    args = next(case[1] for case in LAYER_CASES if case[0] is keras_cls)
    return fa_cls(*args, **kwargs)


def test_layers_reject_bad_feedback_arguments():
    for fa_cls in FA_LAYER_CLASSES:
        for feedback in ("dfa2", 3, None):
            with pytest.raises(ValueError, match="feedback rule"):
                make_layer(fa_cls, feedback=feedback)
        for init in ("glorot_unifrom", 3, [1.0]):
            with pytest.raises(ValueError, match="Invalid `feedback_init"):
                make_layer(fa_cls, feedback_initializer=init)
        for seed in (1.5, "3", True, [1]):
            with pytest.raises(ValueError, match="`seed` must be an integer"):
                make_layer(fa_cls, seed=seed)


_ATTENTION_FA_CLASSES = (
    keras_fa.FAMultiHeadAttention,
    keras_fa.FAGroupQueryAttention,
)


@pytest.mark.parametrize(
    "classes",
    [
        [c for c in FA_LAYER_CLASSES if c not in _ATTENTION_FA_CLASSES],
        _ATTENTION_FA_CLASSES,
    ],
    ids=("layers", "attention"),
)
def test_layers_brsf_needs_a_random_feedback_initializer(classes):
    for fa_cls in classes:
        # Raised at construction, before any weight exists.
        with pytest.raises(ValueError, match="must be a random Keras init"):
            make_layer(fa_cls, feedback="brsf", feedback_initializer="zeros")


def test_einsum_dense_refuses_repeated_letters():
    for equation in ("aab,bc->ac", "ab,bbc->ac", "ab,bc->acc"):
        with pytest.raises(ValueError, match="`equation`.*" + equation):
            keras_fa.FAEinsumDense(equation, 3)
        # The premise: Keras takes them.
        keras.layers.EinsumDense(equation, 3)


# ---------------------------------------------------------------------------
# Mixed precision, every layer: float32 variables, low-precision compute,
# gradients that still follow the rule, and fit.


def _first_case(keras_cls):
    return next(case for case in LAYER_CASES if case[0] is keras_cls)


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


MIXED_POLICIES = ("mixed_float16", "mixed_bfloat16")


def test_layers_mixed_precision_follow_the_rule():
    unsupported = {}
    for keras_cls in KERAS_CLASSES:
        unsupported.update(check_mixed_precision(keras_cls))
    if unsupported:
        pytest.skip(
            f"all layers but {sorted(unsupported)} checked; those fail in "
            f"Keras too: {unsupported}"
        )


def check_mixed_precision(keras_cls):
    """Checks `keras_cls`'s keras_fa layer (feedback="fa") under each mixed
    policy: float32 variables, low-precision compute, and an input gradient
    that follows the rule. Returns `{(class, policy): reason}` for those the
    Keras layer fails too."""
    _, args, kwargs, input_shape = _first_case(keras_cls)
    # No activation: its derivative would be taken at the reference's own
    # forward values, not at the layer's.
    kwargs = dict(kwargs, name="layer")
    kwargs.pop("activation", None)
    fa_cls = keras_fa.layers.REPLACEMENTS[keras_cls]
    unsupported = {}
    values = None  # all weights, the same under every policy
    dx_rule = None
    for policy in MIXED_POLICIES:
        keras.config.set_dtype_policy(policy)
        layer, x = case_layer(fa_cls, args, kwargs, input_shape, feedback="fa")
        if values is None:
            values = [numpy(w) for w in layer.weights]
        layer.set_weights(values)
        compute_dtype = policy.split("_")[1]
        units = [
            sublayer
            for sublayer in layer.layer._flatten_layers()
            if isinstance(sublayer, keras_fa.layers.FeedbackMixin)
        ]
        assert units
        for unit in units:
            assert unit.compute_dtype == compute_dtype
            assert unit.feedback_kernel.dtype == "float32"
        for weight in layer.weights:
            assert weight.dtype == "float32", weight.path
        symbolic = layer.inner_call(keras.KerasTensor(x.shape))
        upstream = random(symbolic.shape, seed=2)
        try:
            _, dx, _, _ = gradients(layer, x, upstream)
        except Exception as error:
            # Some backends lack low-precision kernels on CPU for some
            # shapes: skip where the Keras layer fails the same way.
            reference, _ = case_layer(keras_cls, args, kwargs, input_shape)
            try:
                gradients(reference, x, upstream)
            except type(error) as keras_error:
                reason = str(keras_error).split("\n")[0]
                unsupported[(keras_cls.__name__, policy)] = reason
                continue
            raise error
        # The layer computed in the low precision.
        assert layer.outputs_dtype == compute_dtype

        if dx_rule is None:
            # References in float32: backprop's, and the rule's, with the
            # same weights: the Keras layer with each kernel replaced by its
            # B, or (attention, whose scores use the forward kernels) the
            # float32 twin.
            keras.config.set_dtype_policy("float32")
            forward = [numpy(w) for w in forward_weights(layer)]
            plain, _ = case_layer(keras_cls, args, kwargs, input_shape)
            plain.set_weights(forward)
            _, dx_bp, _, _ = gradients(plain, x, upstream)
            if keras_cls in ATTENTION_CLASSES:
                twin, _ = case_layer(
                    fa_cls, args, kwargs, input_shape, feedback="fa"
                )
                twin.set_weights(values)
                _, dx_rule, _, _ = gradients(twin, x, upstream)
            else:
                ids = [id(w) for w in forward_weights(layer)]
                for unit in units:
                    forward[ids.index(id(unit.kernel))] = numpy(
                        unit.feedback_kernel
                    )
                plain.set_weights(forward)
                _, dx_rule, _, _ = gradients(plain, x, upstream)
            gap = _relative(dx_bp, dx_rule)
            assert gap > 0.5  # B is not W: the check below tells them apart
        error = _relative(dx, dx_rule)
        assert error < min(0.1, gap / 5), (keras_cls, policy, error, gap)
    return unsupported


def keras_attention_fit_error(policy):
    """Returns the error of fitting a plain Keras MultiHeadAttention under
    `policy` (compiled as by default), or None if it trains."""
    keras.config.set_dtype_policy(policy)
    inputs = keras.Input((3, 2))
    outputs = keras.layers.MultiHeadAttention(1, 2)(inputs, inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    try:
        model.fit(random((2, 3, 2)), random((2, 3, 2)), verbose=0)
    except Exception as error:
        return error
    return None


@pytest.mark.parametrize("policy", ("mixed_float16", "mixed_bfloat16"))
def test_layers_mixed_precision_train(policy):
    keras.config.set_dtype_policy(policy)
    model = _cross_backend.build_layers_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *model.input_shape[1:])).astype("float32")
    y = rng.normal(size=(6, *model.output_shape[1:])).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    try:
        model.fit(x[:3], y[:3], batch_size=3, verbose=0)
    except Exception as error:
        # jax on CPU has no float16 dot with float32 accumulation, which
        # Keras's attention asks for under mixed_float16: the Keras layer
        # fails the same way. The other layers still train.
        keras_error = keras_attention_fit_error(policy)
        assert keras_error is not None, error
        assert str(keras_error).split("\n")[0] == str(error).split("\n")[0]
        keras.config.set_dtype_policy(policy)
        model = _cross_backend.build_layers_model(exclude=("mha", "gqa"))
        y = rng.normal(size=(6, *model.output_shape[1:])).astype("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    for layer in model.layers:
        for variable in layer.weights:
            assert variable.dtype in ("float32", "uint32", "int32", "int64")
    before = [numpy(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=3, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for old, variable in zip(before, model.trainable_variables):
        assert variable.dtype == "float32"
        value = numpy(variable)
        assert np.all(np.isfinite(value)), variable.path
        assert not np.array_equal(old, value), variable.path


# ---------------------------------------------------------------------------
# fit, compiled as each backend does by default, and with XLA.


def family_model(family):
    """A tiny model of one layer family and a dense readout, every layer
    with feedback="fa"."""
    fa = dict(feedback="fa")
    if family == "einsum":
        inputs = keras.Input((6, 3))
        x = keras_fa.FAEinsumDense(
            "abc,cd->abd", (6, 4), bias_axes="d", activation="tanh", **fa
        )(inputs)
        x = keras_fa.FAEinsumDense("abc,cd->abd", (6, 2), **fa)(x)
    elif family == "conv3d":
        inputs = keras.Input((4, 4, 3, 1))
        x = keras_fa.FAConv3D(2, 2, activation="tanh", **fa)(inputs)
        x = keras_fa.FAConv3D(2, 2, padding="same", **fa)(x)
    elif family == "depthwise":
        inputs = keras.Input((5, 5, 2))
        x = keras_fa.FADepthwiseConv2D(2, activation="tanh", **fa)(inputs)
        x = keras.layers.Reshape((16, 2))(x)
        x = keras_fa.FADepthwiseConv1D(3, depth_multiplier=2, **fa)(x)
    elif family == "separable":
        inputs = keras.Input((5, 5, 2))
        x = keras_fa.FASeparableConv2D(3, 2, activation="tanh", **fa)(inputs)
        x = keras.layers.Reshape((16, 3))(x)
        x = keras_fa.FASeparableConv1D(2, 3, **fa)(x)
    elif family == "transpose":
        inputs = keras.Input((3, 3, 2))
        x = keras_fa.FAConv2DTranspose(
            2, 2, strides=2, activation="tanh", **fa
        )(inputs)
        x = keras.layers.Reshape((6, 6, 2, 1))(x)
        x = keras_fa.FAConv3DTranspose(1, 2, activation="tanh", **fa)(x)
        x = keras.layers.Reshape((49, 3))(x)
        x = keras_fa.FAConv1DTranspose(1, 2, **fa)(x)
    else:
        inputs = keras.Input((5, 4))
        x = keras_fa.FAMultiHeadAttention(2, 2, **fa)(inputs, inputs)
        x = keras_fa.FAGroupQueryAttention(2, 2, 1, **fa)(x, x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras_fa.FADense(4, **fa)(x))


FAMILIES = ("einsum", "conv3d", "depthwise", "separable", "transpose", "mha")


@pytest.mark.parametrize("jit_compile", ("auto", True), ids=("default", "xla"))
def test_layer_families_train_with_fit(jit_compile):
    if jit_compile is True and BACKEND == "jax":
        pytest.skip("the jax default is jit_compile=True (checked there)")
    if jit_compile is True and BACKEND == "torch":
        pytest.skip("torch.compile costs seconds per graph")
    for family in FAMILIES:
        check_family_trains(family, jit_compile)


def check_family_trains(family, jit_compile):
    model = family_model(family)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, *model.input_shape[1:])).astype("float32")
    y = 0.5 * rng.normal(size=(8, *model.output_shape[1:])).astype("float32")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="mse",
        jit_compile=jit_compile,
    )
    assert model.jit_compile == (
        jit_compile is True or (jit_compile == "auto" and BACKEND == "jax")
    )
    loss = model.fit(x, y, batch_size=8, epochs=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss)), (family, loss)
    assert loss[-1] < 0.9 * loss[0], (family, loss)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras_fa.FADepthwiseConv1D(3, seed=0),
        lambda: keras_fa.FAConv1DTranspose(2, 3, seed=0),
        lambda: keras_fa.FADense(2, seed=0),
    ],
    ids=["depthwise", "transpose", "dense"],
)
def test_float32_inputs_to_call_under_a_mixed_policy(make):
    """`call` reached without `__call__` (a sub-layer's stateless_call) casts
    float32 inputs to the compute dtype, as `__call__` would."""
    from tests.gradients import layer_gradients

    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = make()
    shape = (2, 5) if isinstance(layer, keras_fa.FADense) else (2, 9, 2)
    layer.build(shape)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    up = np.ones(layer.compute_output_shape(shape), "float32")
    y, dx, _, _ = layer_gradients(layer, x, up)
    assert np.isfinite(y.astype("float32")).all()
    assert np.isfinite(dx.astype("float32")).all() and dx.any()


@pytest.mark.parametrize(
    "argument", ["head_dim", "num_query_heads", "num_key_value_heads"]
)
def test_group_query_attention_refuses_non_positive_sizes(argument):
    """Keras's GroupQueryAttention divides by zero on 0 (or takes it):
    FAGroupQueryAttention names the argument first."""
    arguments = dict(head_dim=4, num_query_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError, match=rf"`{argument}`.*>= 1.*{argument}=0"):
        keras_fa.FAGroupQueryAttention(**{**arguments, argument: 0})


def test_group_query_attention_refuses_indivisible_heads():
    with pytest.raises(ValueError, match="num_query_heads=3.*heads=2"):
        keras_fa.FAGroupQueryAttention(4, 3, 2)


@pytest.mark.parametrize(
    "arguments, error, words",
    [
        (dict(owner="x"), TypeError, "`owner`.*Layer.*owner='x'"),
        (dict(kernel_name=5), TypeError, "`kernel_name`.*str.*kernel_name=5"),
        (dict(regularizer="nope"), ValueError, "`regularizer`.*'nope'"),
        (dict(constraint="nope"), ValueError, "`constraint`.*'nope'"),
    ],
)
def test_feedback_kernel_refuses_bad_arguments(arguments, error, words):
    owner = keras_fa.FASeparableConv1D(2, 3)
    good = dict(owner=owner, kernel_name="depthwise_kernel")
    with pytest.raises(error, match=words):
        keras_fa.layers.FeedbackKernel(**{**good, **arguments})


def test_feedback_kernel_takes_regularizer_and_constraint_by_name():
    owner = keras_fa.FASeparableConv1D(2, 3)
    kernel = keras_fa.layers.FeedbackKernel(
        owner, "depthwise_kernel", regularizer="l2", constraint="non_neg"
    )
    assert isinstance(kernel.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(kernel.kernel_constraint, keras.constraints.NonNeg)


def test_feedback_variables_refuses_a_non_layer():
    with pytest.raises(TypeError, match="`layer`.*Layer.*layer=None"):
        keras_fa.layers.feedback_variables(None)
