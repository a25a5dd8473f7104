"""Every feedback rule's gradients against closed forms written in numpy.

For each rule and layer type, on the active backend, eager and compiled:
`d inputs` uses the rule's B (`delta B^T`, or the transposed convolution with
B), `d kernel` is the local `x^T delta`, `d bias` is `sum delta`, and
`d feedback` is 0 (fa, frsf) or `d kernel` (kp). Every case also asserts that
`d inputs` is far from backprop's, so a rule that silently fell back to
backprop fails here.
"""

import keras
import numpy as np
import pytest

import keras_fa
from tests.gradients import BACKEND
from tests.gradients import glorot_scale
from tests.gradients import layer_gradients
from tests.gradients import np_conv

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp"]
ATOL = 2e-5
RTOL = 2e-4

# (layer class, constructor kwargs, input shape). Channels last throughout;
# channels_first is covered in test_layers_api against Keras itself.
CASES = {
    "dense": (keras_fa.FADense, dict(units=4), (3, 5)),
    "dense_rank3": (keras_fa.FADense, dict(units=4), (2, 3, 5)),
    "conv1d_same_stride": (
        keras_fa.FAConv1D,
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        (2, 9, 3),
    ),
    "conv1d_causal_dilated": (
        keras_fa.FAConv1D,
        dict(filters=3, kernel_size=3, dilation_rate=2, padding="causal"),
        (2, 8, 2),
    ),
    "conv2d_same_stride": (
        keras_fa.FAConv2D,
        dict(filters=4, kernel_size=(3, 2), strides=(2, 1), padding="same"),
        (2, 7, 6, 3),
    ),
    "conv2d_valid_dilated": (
        keras_fa.FAConv2D,
        dict(filters=3, kernel_size=2, dilation_rate=2),
        (2, 6, 5, 2),
    ),
    "conv2d_groups": (
        keras_fa.FAConv2D,
        dict(filters=4, kernel_size=3, groups=2, padding="same"),
        (2, 5, 5, 4),
    ),
}
# Compiled runs (XLA on tensorflow, jit on jax, torch.compile on torch) cover
# every rule on one case per layer type; torch.compile takes seconds per
# graph, so on torch only fa and kp are compiled.
COMPILED_CASES = ["dense", "conv1d_same_stride", "conv2d_same_stride"]


def _params():
    for name in CASES:
        for rule in RULES:
            yield pytest.param(name, rule, False, id=f"{name}-{rule}-eager")
            if name in COMPILED_CASES and (
                BACKEND != "torch" or rule in ("fa", "kp")
            ):
                yield pytest.param(
                    name, rule, True, id=f"{name}-{rule}-compiled"
                )


def _make_layer(case, rule, seed=7):
    cls, kwargs, input_shape = CASES[case]
    # Non-zero biases and a tanh-free linear layer: delta == upstream.
    layer = cls(
        **kwargs,
        feedback=rule,
        seed=seed,
        bias_initializer=keras.initializers.RandomNormal(seed=3),
    )
    layer.build(input_shape)
    return layer, input_shape


def _np(v):
    return keras.ops.convert_to_numpy(v)


def _expected_b(layer, rule, state_before):
    """The rule's B in numpy, from the layer's state before the call."""
    w = _np(layer.kernel).astype(np.float64)
    if rule == "bp":
        return w
    if rule in ("fa", "kp"):
        return _np(layer.feedback_kernel).astype(np.float64)
    if rule == "usf":
        return np.sign(w) * glorot_scale(w.shape)
    if rule == "frsf":
        return np.sign(w) * np.abs(_np(layer.feedback_kernel))
    if rule == "brsf":
        # Redraw the magnitudes from the seed state the call started from.
        layer.feedback_seed_generator.state.assign(state_before)
        m = _np(layer.feedback_state["sampler"](w.shape, dtype="float32"))
        return np.sign(w) * np.abs(m).astype(np.float64)
    raise AssertionError(rule)


def _closed_form(layer, x, upstream, b):
    w = _np(layer.kernel)
    if isinstance(layer, keras_fa.FADense):
        y = x @ w
        dx = upstream @ b.T
        x2 = x.reshape(-1, x.shape[-1])
        dw = x2.T @ upstream.reshape(-1, upstream.shape[-1])
        dx_bp = upstream @ w.T
    else:
        rank = x.ndim - 2
        xin = x
        padding = layer.padding
        if padding == "causal":
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            xin = np.pad(x, [(0, 0), (left, 0), (0, 0)])
            padding = "valid"
        y, backward = np_conv(
            xin, w, layer.strides, padding, layer.dilation_rate, layer.groups
        )
        dx, dw = backward(upstream, b)
        dx_bp, _ = backward(upstream, w)
        if layer.padding == "causal":
            dx, dx_bp = dx[:, left:], dx_bp[:, left:]
        del rank
    y = y + _np(layer.bias)
    db = upstream.reshape(-1, upstream.shape[-1]).sum(0)
    return y, dx, dw, db, dx_bp


@pytest.mark.parametrize("case,rule,compiled", list(_params()))
def test_gradients_match_closed_form(case, rule, compiled):
    layer, input_shape = _make_layer(case, rule)
    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape).astype("float32")
    out_shape = layer.compute_output_shape(input_shape)
    upstream = rng.normal(size=out_shape).astype("float32")
    state = _np(layer.feedback_seed_generator.state) if rule == "brsf" else None
    y, dx, grads, _ = layer_gradients(layer, x, upstream, compiled=compiled)
    if rule == "brsf" and compiled and BACKEND == "tensorflow":
        # XLA's random stream differs from eager TF's, so the magnitudes of
        # this call cannot be redrawn eagerly; test_brsf_recovered_feedback
        # covers compiled brsf by reading B off the gradient instead.
        b = None
    else:
        b = _expected_b(layer, rule, state)
    y_ref, dx_ref, dw_ref, db_ref, dx_bp = _closed_form(
        layer, x, upstream, _np(layer.kernel) if b is None else b
    )

    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        grads[layer._kernel.path], dw_ref, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        grads[layer.bias.path], db_ref, rtol=RTOL, atol=ATOL
    )
    if b is not None:
        np.testing.assert_allclose(dx, dx_ref, rtol=RTOL, atol=ATOL)
    if rule == "bp":
        np.testing.assert_allclose(dx, dx_bp, rtol=RTOL, atol=ATOL)
    else:
        # Not backprop: the input gradient is far from delta W^T.
        gap = np.abs(dx - dx_bp).max() / np.abs(dx_bp).max()
        assert gap > 0.05, f"{rule} input gradient equals backprop's"

    if rule in ("fa", "frsf"):
        assert not grads[layer.feedback_kernel.path].any()
    if rule == "kp":
        np.testing.assert_allclose(
            grads[layer.feedback_kernel.path], dw_ref, rtol=RTOL, atol=ATOL
        )
    for g in list(grads.values()) + [dx]:
        assert np.isfinite(g).all()


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("layer_type", ["dense", "conv2d"])
def test_brsf_recovered_feedback(layer_type, compiled):
    """brsf's B, read off the input gradient, is sign(W) * |R| with a fresh R
    at every call, in both eager and compiled mode."""
    if BACKEND == "torch" and compiled:
        pytest.skip("torch.compile of brsf is covered by the eager cases")
    units = 4
    if layer_type == "dense":
        layer = keras_fa.FADense(units, feedback="brsf", seed=1)
        input_shape = (units, 6)
    else:
        # A kernel that covers the whole input: one output position, so an
        # identity upstream gradient returns B itself as the input gradient.
        layer = keras_fa.FAConv2D(units, (3, 2), feedback="brsf", seed=1)
        input_shape = (units, 3, 2, 2)
    layer.build(input_shape)
    out_shape = layer.compute_output_shape(input_shape)
    upstream = np.eye(units, dtype="float32").reshape(out_shape)
    x = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    w = _np(layer.kernel)
    draws = []
    for _ in range(2):
        _, dx, _, state = layer_gradients(layer, x, upstream, compiled=compiled)
        # Row n of dx is B[..., n]: move the output axis last.
        b = np.moveaxis(dx.reshape(units, *w.shape[:-1]), 0, -1)
        assert np.array_equal(np.sign(b), np.sign(w))
        assert not np.allclose(np.abs(b), np.abs(w), rtol=0.05)
        limit = np.sqrt(
            6.0 / (np.prod(w.shape[:-1]) + np.prod(w.shape[:-2]) * units)
        )
        assert np.abs(b).max() <= limit + 1e-6
        draws.append(b)
        layer.feedback_seed_generator.state.assign(state[-1])
    assert not np.allclose(draws[0], draws[1]), "brsf did not redraw R"


def _mlp(rule, use_bias=True, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras_fa.FADense(
                8, activation="relu", feedback=rule, seed=1, use_bias=use_bias
            ),
            keras_fa.FADense(
                7, activation="tanh", feedback=rule, seed=2, use_bias=use_bias
            ),
            keras_fa.FADense(3, feedback=rule, seed=3, use_bias=use_bias),
        ]
    )


def _np_fa_mlp_gradients(model, x, t, bs):
    """FA in numpy for MSE: delta_l = (delta_{l+1} B^T) f'(a_l)."""
    hs, as_ = [x.astype(np.float64)], []
    for layer in model.layers:
        a = hs[-1] @ _np(layer.kernel) + _np(layer.bias)
        as_.append(a)
        act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}.get(
            layer.activation.__name__, lambda v: v
        )
        hs.append(act(a))
    delta = 2.0 * (hs[-1] - t) / t.size
    grads = [None] * len(model.layers)
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        grads[i] = (hs[i].T @ delta, delta.sum(0))
        if i:
            back = delta @ bs[i].T
            prev = model.layers[i - 1]
            name = prev.activation.__name__
            if name == "relu":
                back = back * (as_[i - 1] > 0)
            elif name == "tanh":
                back = back * (1 - np.tanh(as_[i - 1]) ** 2)
            delta = back
    return grads


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "kp", "bp"])
def test_fit_step_is_the_predicted_fa_update(rule):
    """One plain-SGD step of model.fit moves every weight by -lr times the FA
    gradient computed in numpy through all layers and activations."""
    model = _mlp(rule)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6)).astype("float32")
    t = rng.normal(size=(16, 3)).astype("float32")
    bs = []
    for layer in model.layers:
        w = _np(layer.kernel).astype(np.float64)
        bs.append(_expected_b(layer, rule, None))
    expected = _np_fa_mlp_gradients(model, x, t, bs)
    before = [(_np(lyr.kernel), _np(lyr.bias)) for lyr in model.layers]
    feedback_before = [
        _np(lyr.feedback_kernel)
        for lyr in model.layers
        if hasattr(lyr, "feedback_kernel")
    ]
    lr = 0.1
    model.compile(keras.optimizers.SGD(lr), "mse")
    model.fit(x, t, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for layer, (w0, b0), (gw, gb) in zip(model.layers, before, expected):
        np.testing.assert_allclose(_np(layer.kernel), w0 - lr * gw, atol=1e-5)
        np.testing.assert_allclose(_np(layer.bias), b0 - lr * gb, atol=1e-5)
    feedback_after = [
        _np(lyr.feedback_kernel)
        for lyr in model.layers
        if hasattr(lyr, "feedback_kernel")
    ]
    for f0, f1, (gw, _) in zip(feedback_before, feedback_after, expected):
        if rule == "kp":
            np.testing.assert_allclose(f1, f0 - lr * gw, atol=1e-5)
        else:
            assert np.array_equal(f0, f1), "B changed in training"
    if rule != "bp":
        # The hidden-layer update is not backprop's.
        bp_grads = _np_fa_mlp_gradients(
            model, x, t, [w0.astype(np.float64) for w0, _ in before]
        )
        assert not np.allclose(expected[0][0], bp_grads[0][0], atol=1e-4)
    del w


def test_feedback_is_fixed_in_training_and_kp_tracks_the_kernel():
    """Over many fit steps B never changes for fa/frsf; for kp, W - B stays
    constant under plain SGD and shrinks under weight decay."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype("float32")
    t = rng.normal(size=(64, 3)).astype("float32")
    for rule in ("fa", "frsf"):
        model = _mlp(rule)
        b0 = [_np(lyr.feedback_kernel) for lyr in model.layers]
        model.compile(keras.optimizers.Adam(0.01), "mse")
        model.fit(x, t, batch_size=16, epochs=2, verbose=0)
        for layer, b in zip(model.layers, b0):
            assert np.array_equal(_np(layer.feedback_kernel), b)

    model = _mlp("kp")
    gap0 = [_np(lyr.kernel) - _np(lyr.feedback_kernel) for lyr in model.layers]
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(x, t, batch_size=16, epochs=2, verbose=0)
    for layer, g in zip(model.layers, gap0):
        np.testing.assert_allclose(
            _np(layer.kernel) - _np(layer.feedback_kernel), g, atol=1e-5
        )
        assert not np.allclose(
            _np(layer.feedback_kernel), _np(layer.kernel) - g + 1
        )

    model = _mlp("kp")
    gaps = [
        np.linalg.norm(_np(lyr.kernel) - _np(lyr.feedback_kernel))
        for lyr in model.layers
    ]
    model.compile(keras.optimizers.SGD(0.05, weight_decay=0.1), "mse")
    model.fit(x, t, batch_size=16, epochs=5, verbose=0)
    for layer, g in zip(model.layers, gaps):
        after = np.linalg.norm(_np(layer.kernel) - _np(layer.feedback_kernel))
        # 20 steps of decay 0.05 * 0.1 each: the gap shrinks by (1-0.005)^20.
        np.testing.assert_allclose(after, g * (1 - 0.005) ** 20, rtol=1e-3)


def test_brsf_redraws_every_training_step():
    """model.fit with brsf advances the feedback seed at every batch."""
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras_fa.FADense(5, activation="relu", feedback="brsf", seed=0),
            keras_fa.FADense(2),
        ]
    )
    layer = model.layers[0]
    s0 = _np(layer.feedback_seed_generator.state).copy()
    model.compile("sgd", "mse")
    x = np.ones((32, 6), "float32")
    model.fit(x, np.ones((32, 2), "float32"), batch_size=8, verbose=0)
    s1 = _np(layer.feedback_seed_generator.state)
    assert not np.array_equal(s0, s1)


@pytest.mark.parametrize("rule", ["fa", "frsf", "kp"])
def test_fit_step_of_a_cnn_is_the_predicted_fa_update(rule):
    """Conv -> relu -> flatten -> dense: one SGD step of model.fit equals the
    numpy FA update, with the error reaching the conv layer through B."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 5, 2)),
            keras_fa.FAConv2D(
                3,
                3,
                strides=2,
                padding="same",
                activation="relu",
                feedback=rule,
                seed=1,
            ),
            keras.layers.Flatten(),
            keras_fa.FADense(2, feedback=rule, seed=2),
        ]
    )
    conv, dense = model.layers[0], model.layers[2]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 6, 5, 2)).astype("float32")
    t = rng.normal(size=(8, 2)).astype("float32")
    w1, b1, w2, b2 = (
        _np(v) for v in (conv.kernel, conv.bias, dense.kernel, dense.bias)
    )
    a1, backward = np_conv(x, w1, conv.strides, "same", conv.dilation_rate)
    a1 = a1 + b1
    h1 = np.maximum(a1, 0).reshape(8, -1)
    y = h1 @ w2 + b2
    delta2 = 2.0 * (y - t) / t.size
    b_dense = _expected_b(dense, rule, None)
    delta1 = (delta2 @ b_dense.T).reshape(a1.shape) * (a1 > 0)
    _, gw1 = backward(delta1, _expected_b(conv, rule, None))
    gb1 = delta1.sum((0, 1, 2))
    lr = 0.1
    model.compile(keras.optimizers.SGD(lr), "mse")
    model.fit(x, t, batch_size=8, verbose=0, shuffle=False)
    np.testing.assert_allclose(
        _np(dense.kernel), w2 - lr * h1.T @ delta2, atol=1e-5
    )
    np.testing.assert_allclose(_np(conv.kernel), w1 - lr * gw1, atol=1e-5)
    np.testing.assert_allclose(_np(conv.bias), b1 - lr * gb1, atol=1e-5)
    # Backprop would have given the conv kernel another update.
    delta1_bp = (delta2 @ w2.T).reshape(a1.shape) * (a1 > 0)
    _, gw1_bp = backward(delta1_bp, w1)
    assert not np.allclose(gw1, gw1_bp, atol=1e-4)


def test_get_resolves_names_configs_and_objects():
    from keras_fa import feedback

    assert isinstance(feedback.get("fa"), feedback.FeedbackAlignment)
    assert isinstance(feedback.get("KP"), feedback.KolenPollack)
    rule = feedback.UniformSignFeedback(scale=0.25)
    assert feedback.get(rule) is rule
    assert feedback.get(feedback.deserialize(feedback.serialize(rule))) == rule
    assert feedback.get(feedback.serialize(rule)) == rule
    assert isinstance(
        feedback.get(feedback.FixedRandomSignFeedback),
        feedback.FixedRandomSignFeedback,
    )
    assert set(RULES) <= set(feedback.registered_names())


@pytest.mark.parametrize("bad", ["nope", None, 3, {"class_name": "Nope"}])
def test_get_rejects_unknown_identifiers_naming_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="bp, brsf, fa, frsf"):
        keras_fa.feedback.get(bad)


@pytest.mark.parametrize("scale", [-1.0, 0, "a", True, float("inf"), [1.0]])
def test_usf_scale_must_be_a_finite_positive_number(scale):
    """Also from a config, as a loaded model gives it: the error names
    `scale` and the value, not "could not convert string to float"."""
    match = r"`scale` must be a finite positive number\. Received: scale="
    with pytest.raises(ValueError, match=match):
        keras_fa.feedback.UniformSignFeedback(scale=scale)
    config = keras_fa.feedback.serialize(
        keras_fa.feedback.UniformSignFeedback()
    )
    config["config"]["scale"] = scale
    with pytest.raises(ValueError, match=match):
        keras_fa.FADense(2, feedback=config)


def test_usf_scale_takes_numpy_numbers():
    rule = keras_fa.feedback.UniformSignFeedback(scale=np.float32(0.5))
    assert rule.get_config() == {"scale": 0.5}
    assert type(rule.scale) is float  # the config stays JSON


def test_rule_names_in_any_case():
    """`feedback="FA"` is `"fa"` for `get` and the layers, whose config
    holds the canonical rule."""
    for name in RULES + ["wm"]:
        rule = keras_fa.feedback.get(name)
        for spelling in (name.upper(), name.capitalize()):
            assert keras_fa.feedback.get(spelling) == rule
            layer = keras_fa.FADense(2, feedback=spelling)
            assert layer.feedback == rule
            assert layer.feedback.name == name
            assert layer.get_config()["feedback"] == (
                keras_fa.feedback.serialize(rule)
            )


def test_a_new_rule_is_one_small_class():
    """A registered user rule works in a layer, by name, with its gradient."""
    from keras_fa import feedback

    @feedback.register("half_bp_test")
    class HalfBackprop(feedback.FeedbackRule):
        def backward_kernel(self, kernel, *feedback):
            return 0.5 * kernel

    with pytest.raises(ValueError, match="already registered"):

        @feedback.register("half_bp_test")
        class Other(feedback.FeedbackRule):
            pass

    layer = keras_fa.FADense(3, feedback="half_bp_test")
    layer.build((2, 4))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4)).astype("float32")
    up = rng.normal(size=(2, 3)).astype("float32")
    _, dx, _, _ = layer_gradients(layer, x, up)
    np.testing.assert_allclose(
        dx, up @ (0.5 * _np(layer.kernel)).T, rtol=RTOL, atol=ATOL
    )
    config = layer.get_config()
    assert keras_fa.FADense.from_config(config).feedback == HalfBackprop()


def test_kp_compiled_training_matches_eager_training():
    """kp reads B in the forward pass and the optimizer writes B in the same
    step: the compiled step must use the B the forward pass read (tensorflow's
    graph optimizer once reordered them in about 1 of 8 models)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 20)).astype("float32")
    t = rng.normal(size=(128, 5)).astype("float32")

    def train(eager, seed):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((20,)),
                keras_fa.FADense(32, activation="relu", feedback="kp"),
                keras_fa.FADense(32, activation="relu", feedback="kp"),
                keras_fa.FADense(5, feedback="kp"),
            ]
        )
        model.compile(keras.optimizers.SGD(0.05), "mse", run_eagerly=eager)
        model.fit(x, t, batch_size=8, verbose=0, shuffle=False)
        return model.get_weights()

    for seed in range(6):
        for a, b in zip(train(False, seed), train(True, seed)):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_serialize_and_deserialize_refuse_what_is_not_a_rule():
    """They returned 5 for 5; now they name what they take."""
    with pytest.raises(TypeError, match="`rule`.*FeedbackRule.*rule=5"):
        keras_fa.feedback.serialize(5)
    with pytest.raises(TypeError, match="`config`.*dict.*config=5"):
        keras_fa.feedback.deserialize(5)
    config = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="`config`.*FeedbackRule.*Dense"):
        keras_fa.feedback.deserialize(config)
    rule = keras_fa.feedback.UniformSignFeedback(scale=0.5)
    again = keras_fa.feedback.deserialize(keras_fa.feedback.serialize(rule))
    assert isinstance(again, keras_fa.feedback.UniformSignFeedback)
    assert again.scale == 0.5


def test_register_refuses_a_bad_name_or_class():
    before = dict(keras_fa.feedback.base._RULES)
    try:
        with pytest.raises(TypeError, match="`name`.*str.*name=5"):
            keras_fa.feedback.register(5)
        with pytest.raises(TypeError, match="FeedbackRule.*int"):
            keras_fa.feedback.register("five")(5)
        assert "five" not in keras_fa.feedback.registered_names()
    finally:
        keras_fa.feedback.base._RULES.clear()
        keras_fa.feedback.base._RULES.update(before)


def test_one_namespace_holds_layer_and_direct_rules():
    names = keras_fa.feedback.names
    assert names("direct") == ["dfa", "drtp", "shallow"]
    assert names("layer") == keras_fa.feedback.registered_names()
    assert set(RULES) | {"wm"} <= set(names("layer"))
    assert names() == sorted(names("layer") + names("direct"))
    assert keras_fa.models.rules() == names()
    with pytest.raises(ValueError, match="`kind`.*'layer'.*'direct'.*kind=3"):
        names(3)


@pytest.mark.parametrize("spelling", ["dfa", "DRTP", "Shallow"])
def test_get_direct_takes_a_direct_rule_in_any_case(spelling):
    assert keras_fa.feedback.is_direct(spelling)
    assert keras_fa.feedback.get_direct(spelling) == spelling.lower()


@pytest.mark.parametrize("bad", ["fa", "nope", None, 3])
def test_get_direct_names_the_direct_rules_and_where_others_go(bad):
    assert not keras_fa.feedback.is_direct(bad)
    match = r"dfa, drtp, shallow.*Layer-wise rules.*feedback="
    with pytest.raises(ValueError, match=match):
        keras_fa.feedback.get_direct(bad)


@pytest.mark.parametrize("spelling", ["dfa", "DRTP"])
def test_a_layer_given_a_direct_rule_says_where_it_goes(spelling):
    match = (
        rf"feedback='{spelling}' is a direct rule.*"
        rf"keras_fa.direct_feedback\(model, '{spelling}'\)"
    )
    with pytest.raises(ValueError, match=match):
        keras_fa.feedback.get(spelling)
    with pytest.raises(ValueError, match=match):
        keras_fa.FADense(2, feedback=spelling)


def test_a_layer_rule_cannot_take_a_direct_rule_name():
    class Clash(keras_fa.feedback.FeedbackRule):
        def backward_kernel(self, kernel, *feedback):
            return kernel

    with pytest.raises(ValueError, match="'DFA'.*direct feedback rule"):
        keras_fa.feedback.register("DFA")(Clash)
    assert keras_fa.feedback.get_direct("dfa") == "dfa"


@pytest.mark.parametrize(
    "rule, state",
    [
        ("bp", []),
        ("usf", []),
        ("fa", ["feedback_kernel"]),
        ("frsf", ["feedback_kernel"]),
        ("kp", ["feedback_kernel"]),
        ("brsf", ["feedback_seed_generator", "sampler"]),
        ("wm", ["feedback_kernel", "feedback_seed_generator"]),
    ],
)
def test_the_layer_keeps_what_the_rule_builds_in_feedback_state(rule, state):
    layer = keras_fa.FADense(3, feedback=rule)
    assert layer.feedback_state == {}
    assert not hasattr(layer, "feedback_kernel")
    layer.build((None, 4))
    assert list(layer.feedback_state) == state
    kernel = layer.feedback_state.get("feedback_kernel")
    generator = layer.feedback_state.get("feedback_seed_generator")
    # The attributes exist exactly when the rule keeps them, as before.
    assert getattr(layer, "feedback_kernel", None) is kernel
    assert getattr(layer, "feedback_seed_generator", None) is generator
    assert hasattr(layer, "feedback_kernel") == (kernel is not None)
    # Keras tracks it: the variables and the generator's state are the
    # layer's, and the layer saves them in the order the rule gave.
    expected = [kernel] if kernel is not None else []
    expected += [generator.state] if generator is not None else []
    assert layer._feedback_variables() == expected
    ids = {id(v) for v in layer.variables}
    assert all(id(v) in ids for v in expected)
    if kernel is not None:
        assert kernel.path.endswith("/feedback_kernel")
        assert kernel.trainable == (rule in ("kp", "wm"))


def test_a_rule_owns_its_state_and_the_layer_saves_it(tmp_path):
    """A rule with state of its own: what build returns is tracked, trained
    and saved; nothing is set on the layer from outside."""

    @keras_fa.feedback.register("test_scaled")
    class Scaled(keras_fa.feedback.FeedbackRule):
        def build(self, layer):
            scale = layer.add_weight(
                name="feedback_scale", shape=(), initializer="ones"
            )
            return {"scale": scale}

        def feedback_inputs(self, layer):
            return (layer.feedback_state["scale"],)

        def backward_kernel(self, kernel, *feedback):
            return feedback[0] * kernel

    try:
        inputs = keras.Input((4,))
        model = keras.Model(
            inputs, keras_fa.FADense(2, feedback="test_scaled")(inputs)
        )
        layer = model.layers[-1]
        assert not hasattr(layer, "scale")
        assert keras_fa.layers.feedback_variables(model) == [
            layer.feedback_state["scale"]
        ]
        layer.feedback_state["scale"].assign(3.0)
        model.save(tmp_path / "scaled.keras")
        loaded = keras.models.load_model(tmp_path / "scaled.keras")
        value = loaded.layers[-1].feedback_state["scale"]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(value), 3.0)
    finally:
        keras_fa.feedback.base._RULES.pop("test_scaled", None)


def test_build_must_return_a_dict_of_state():
    class Wrong(keras_fa.feedback.FeedbackRule):
        def build(self, layer):
            return [layer.add_weight(shape=(), name="x")]

        def backward_kernel(self, kernel, *feedback):
            return kernel

    layer = keras_fa.FADense(2, feedback=Wrong())
    with pytest.raises(TypeError, match=r"Wrong.build\(layer\) must return"):
        layer.build((None, 3))
