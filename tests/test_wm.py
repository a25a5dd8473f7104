"""Weight mirror ("wm"): gradients against numpy closed forms, the mirror
signal, alignment in model.fit, saving, config.

The rule's gradient for B is the mirror signal
`g_B = decay * B - x~^T (x~ W_flat) / mirror_batch` from a noise batch x~
drawn by the layer's seed generator. It depends on W only through the
mirror's forward pass `x~ W` and never on the data or on dL/dW: no weight is
transported.
"""

import json

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa.feedback import WeightMirror
from tests.gradients import BACKEND
from tests.gradients import layer_gradients
from tests.gradients import np_conv

ATOL = 2e-5
RTOL = 2e-4

CASES = {
    "dense": (keras_fa.FADense, dict(units=4), (3, 5)),
    "dense_rank3": (keras_fa.FADense, dict(units=4), (2, 3, 5)),
    "conv1d": (
        keras_fa.FAConv1D,
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        (2, 9, 2),
    ),
    "conv2d_groups": (
        keras_fa.FAConv2D,
        dict(filters=4, kernel_size=(3, 2), groups=2, padding="same"),
        (2, 5, 4, 4),
    ),
}
COMPILED_CASES = ("dense", "conv2d_groups")


def _np(v):
    return keras.ops.convert_to_numpy(v)


def _params():
    for case in CASES:
        yield pytest.param(case, False, id=f"{case}-eager")
        if case in COMPILED_CASES:
            yield pytest.param(case, True, id=f"{case}-compiled")


def _make_layer(case, rule=None, seed=7):
    cls, kwargs, input_shape = CASES[case]
    rule = rule or WeightMirror(noise_std=0.7, mirror_batch=5, decay=0.3)
    layer = cls(
        **kwargs,
        feedback=rule,
        seed=seed,
        bias_initializer=keras.initializers.RandomNormal(seed=3),
    )
    layer.build(input_shape)
    return layer, input_shape


def _redraw_noise(layer, state):
    """The noise of a call that started from seed `state`, drawn eagerly."""
    rule = layer.feedback
    fan_in = int(np.prod(layer.kernel.shape[:-1]))
    layer.feedback_seed_generator.state.assign(state)
    noise = keras.random.normal(
        (rule.mirror_batch, fan_in),
        stddev=rule.noise_std,
        seed=layer.feedback_seed_generator,
    )
    return _np(noise).astype(np.float64)


def _mirror_signal(layer, noise):
    """decay * B - x~^T (x~ W_flat) / mirror_batch, in float64."""
    rule = layer.feedback
    w = _np(layer.kernel).astype(np.float64)
    b = _np(layer.feedback_kernel).astype(np.float64)
    w_flat = w.reshape(-1, w.shape[-1])
    mirror = noise.T @ (noise @ w_flat) / rule.mirror_batch
    return rule.decay * b - mirror.reshape(b.shape)


def _closed_form(layer, x, upstream, b):
    """Forward output, d inputs through b, local d kernel, and backprop's
    d inputs, in float64."""
    w = _np(layer.kernel).astype(np.float64)
    if isinstance(layer, keras_fa.FADense):
        dw = x.reshape(-1, x.shape[-1]).T @ upstream.reshape(
            -1, upstream.shape[-1]
        )
        return x @ w, upstream @ b.T, dw, upstream @ w.T
    y, backward = np_conv(
        x, w, layer.strides, layer.padding, layer.dilation_rate, layer.groups
    )
    dx, dw = backward(upstream, b)
    dx_bp, _ = backward(upstream, w)
    return y, dx, dw, dx_bp


def _data(layer, input_shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=input_shape).astype("float32")
    up = rng.normal(size=layer.compute_output_shape(input_shape))
    return x, up.astype("float32")


@pytest.mark.parametrize("case,compiled", list(_params()))
def test_gradients_match_closed_form(case, compiled):
    """d inputs = delta B^T (transposed convolution with B), d kernel is the
    local gradient, and d B is the mirror signal of this call's noise."""
    layer, input_shape = _make_layer(case)
    x, up = _data(layer, input_shape, 0)
    state = _np(layer.feedback_seed_generator.state)
    y, dx, grads, new_state = layer_gradients(layer, x, up, compiled=compiled)
    b = _np(layer.feedback_kernel).astype(np.float64)
    y_ref, dx_ref, dw_ref, dx_bp = _closed_form(layer, x, up, b)

    np.testing.assert_allclose(y, y_ref + _np(layer.bias), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx, dx_ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        grads[layer.kernel.path], dw_ref, rtol=RTOL, atol=ATOL
    )
    gap = np.abs(dx - dx_bp).max() / np.abs(dx_bp).max()
    assert gap > 0.05, "wm's input gradient equals backprop's"
    # Every call draws new noise.
    assert not np.array_equal(new_state[-1], state)

    g_b = grads[layer.feedback_kernel.path]
    assert np.isfinite(g_b).all() and np.isfinite(dx).all()
    if compiled and BACKEND == "tensorflow":
        # XLA's random stream differs from eager TF's: the noise cannot be
        # redrawn eagerly. test_mirror_signal_of_one_noise_draw covers it.
        return
    expected = _mirror_signal(layer, _redraw_noise(layer, state))
    np.testing.assert_allclose(g_b, expected, rtol=RTOL, atol=ATOL)
    # Not kp: B's gradient is not the kernel's.
    assert not np.allclose(g_b, dw_ref, atol=1e-2)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("kind", ["dense", "conv2d"])
def test_mirror_signal_of_one_noise_draw(kind, compiled):
    """Without redrawing the noise (so also under XLA): from one seed state,
    W = identity reveals M = x~^T x~ / mirror_batch as decay * B - g_B, M is
    a symmetric positive semi-definite matrix of rank mirror_batch, and any
    other W gives g_B = decay * B - M W_flat."""
    if BACKEND == "torch" and compiled:
        pytest.skip("torch.compile is covered by the closed-form cases")
    rule = WeightMirror(noise_std=1.5, mirror_batch=4, decay=0.5)
    if kind == "dense":
        layer = keras_fa.FADense(9, feedback=rule, seed=1)
        input_shape = (3, 6)
    else:
        layer = keras_fa.FAConv2D(9, (2, 1), feedback=rule, seed=1)
        input_shape = (3, 4, 4, 3)
    layer.build(input_shape)
    w_shape = tuple(layer.kernel.shape)
    fan_in = int(np.prod(w_shape[:-1]))
    b = _np(layer.feedback_kernel).reshape(fan_in, -1).astype(np.float64)
    state = _np(layer.feedback_seed_generator.state)
    x, up = _data(layer, input_shape, 0)

    def g_b(w_flat):
        layer.kernel.assign(w_flat.reshape(w_shape).astype("float32"))
        layer.feedback_seed_generator.state.assign(state)
        _, _, grads, _ = layer_gradients(layer, x, up, compiled=compiled)
        return grads[layer.feedback_kernel.path].reshape(fan_in, -1)

    g_eye = g_b(np.eye(fan_in, 9))
    m = rule.decay * b[:, :fan_in] - g_eye[:, :fan_in]
    np.testing.assert_allclose(g_eye[:, fan_in:], rule.decay * b[:, fan_in:])
    np.testing.assert_allclose(m, m.T, atol=1e-5)
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    assert eig.min() > -1e-4
    assert np.sum(eig > 1e-3 * eig.max()) == rule.mirror_batch
    # Trace of x~^T x~ / n: a chi-square sum, mean fan_in * noise_std^2.
    assert 0.5 < np.trace(m) / (fan_in * rule.noise_std**2) < 1.6

    w2 = np.random.default_rng(5).normal(size=(fan_in, 9))
    np.testing.assert_allclose(
        g_b(w2), rule.decay * b - m @ w2, rtol=RTOL, atol=1e-4
    )


def test_mirror_signal_ignores_the_data():
    """No weight transport: from one seed state, other inputs and other
    errors give the same gradient for B (and another one for W)."""
    layer, input_shape = _make_layer("conv2d_groups")
    state = _np(layer.feedback_seed_generator.state)
    grads = []
    for seed in (0, 1):
        layer.feedback_seed_generator.state.assign(state)
        x, up = _data(layer, input_shape, seed)
        grads.append(layer_gradients(layer, x, up)[2])
    path_b, path_w = layer.feedback_kernel.path, layer.kernel.path
    assert np.array_equal(grads[0][path_b], grads[1][path_b])
    assert not np.allclose(grads[0][path_w], grads[1][path_w])


def test_mirror_signal_expectation_is_decay_b_minus_variance_w():
    """With many noise samples g_B is close to decay * B - noise_std^2 * W:
    noise_std^2 / decay sets where B goes."""
    rule = WeightMirror(noise_std=0.5, mirror_batch=20000, decay=0.2)
    layer = keras_fa.FADense(3, feedback=rule, seed=0)
    layer.build((2, 4))
    _, _, grads, _ = layer_gradients(
        layer, np.ones((2, 4), "float32"), np.ones((2, 3), "float32")
    )
    w, b = _np(layer.kernel), _np(layer.feedback_kernel)
    np.testing.assert_allclose(
        grads[layer.feedback_kernel.path], 0.2 * b - 0.25 * w, atol=0.02
    )


def _angles(model):
    """Degrees between W and B (flattened) of every feedback layer."""
    angles = []
    for layer in model.layers:
        if hasattr(layer, "feedback_kernel"):
            w = _np(layer.kernel).ravel()
            b = _np(layer.feedback_kernel).ravel()
            cos = w @ b / (np.linalg.norm(w) * np.linalg.norm(b))
            angles.append(float(np.degrees(np.arccos(cos))))
    return np.array(angles)


def _classifier(kind, rule):
    keras.utils.set_random_seed(0)
    if kind == "dense":
        body = [
            keras.Input((20,)),
            keras_fa.FADense(64, activation="relu", feedback=rule, seed=1),
            keras_fa.FADense(64, activation="relu", feedback=rule, seed=2),
        ]
    else:
        body = [
            keras.Input((8, 8, 2)),
            keras_fa.FAConv2D(8, 3, activation="relu", feedback=rule, seed=1),
            keras_fa.FAConv2D(8, 3, activation="relu", feedback=rule, seed=2),
            keras.layers.Flatten(),
        ]
    return keras.Sequential(body + [keras_fa.FADense(5, feedback=rule, seed=3)])


def _teacher_data(kind):
    """5 classes given by a random linear teacher."""
    rng = np.random.default_rng(0)
    shape = (20,) if kind == "dense" else (8, 8, 2)
    x = rng.normal(size=(512, *shape)).astype("float32")
    teacher = rng.normal(size=(int(np.prod(shape)), 5))
    return x, np.argmax(x.reshape(len(x), -1) @ teacher, axis=1)


@pytest.mark.parametrize(
    "kind,optimizer",
    [("dense", "sgd"), ("conv2d", "adam")],
)
def test_fit_aligns_feedback_with_the_kernel(kind, optimizer):
    """160 steps of model.fit: with wm every layer's angle between B and W
    falls from about 90 degrees to well below 45 while the model learns; with
    fa (same model, same B at the start) it stays far from 0."""
    x, y = _teacher_data(kind)
    results = {}
    for rule in ("wm", "fa"):
        model = _classifier(kind, rule)
        opt = (
            keras.optimizers.SGD(0.05)
            if optimizer == "sgd"
            else keras.optimizers.Adam(3e-3)
        )
        model.compile(
            opt,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        before = _angles(model)
        history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
        results[rule] = (before, _angles(model), history.history)
    wm_before, wm_after, wm_history = results["wm"]
    fa_before, fa_after, _ = results["fa"]
    np.testing.assert_allclose(wm_before, fa_before)
    assert (np.abs(wm_before - 90) < 10).all(), wm_before
    limit = 25 if optimizer == "sgd" else 40
    assert (wm_after < limit).all(), wm_after
    assert (fa_after > 65).all(), fa_after
    # The model learns: loss falls and accuracy is far above chance (20%).
    assert wm_history["loss"][-1] < 0.8 * wm_history["loss"][0]
    assert wm_history["accuracy"][-1] > 0.4


def test_compiled_training_matches_eager_training():
    """B is read in the forward pass and written by the optimizer in the same
    step; the compiled step must use the B the forward pass read, and draw
    the same noise as the eager step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 12)).astype("float32")
    t = rng.normal(size=(32, 4)).astype("float32")

    def mlp(seed):
        keras.utils.set_random_seed(seed)
        return keras.Sequential(
            [
                keras.Input((12,)),
                keras_fa.FADense(16, activation="relu", feedback="wm"),
                keras_fa.FADense(16, activation="relu", feedback="wm"),
                keras_fa.FADense(4, feedback="wm"),
            ]
        )

    # One model per mode, compiled once; each seed gives new starting
    # weights, B and noise seeds.
    models = {eager: mlp(0) for eager in (False, True)}
    for eager, model in models.items():
        model.compile(keras.optimizers.SGD(0.05), "mse", run_eagerly=eager)
    for seed in range(4):
        start = mlp(seed).get_weights()
        for model in models.values():
            model.set_weights(start)
            model.fit(x, t, batch_size=8, verbose=0, shuffle=False)
        compiled, eager = (m.get_weights() for m in models.values())
        assert not np.allclose(compiled[2], start[2]), "B did not learn"
        for a, b in zip(compiled, eager):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_save_and_load_keeps_feedback_and_next_step(tmp_path):
    """A .keras round trip keeps B and the noise seed state bit for bit, and
    the next training step (same noise) gives the same weights."""
    inputs = keras.Input((6, 6, 2))
    h = keras_fa.FAConv2D(3, 3, activation="tanh", feedback="wm")(inputs)
    h = keras.layers.Reshape((16, 3))(h)
    h = keras_fa.FAConv1D(2, 3, activation="tanh", feedback="wm")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras_fa.FADense(2, feedback="wm")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    wm_layers = [lyr for lyr in model.layers if hasattr(lyr, "feedback")]
    b0 = [_np(lyr.feedback_kernel) for lyr in wm_layers]
    for _ in range(2):
        model.train_on_batch(x, y)
    for layer, b in zip(wm_layers, b0):
        assert not np.array_equal(_np(layer.feedback_kernel), b)

    model.save(tmp_path / "wm.keras")
    loaded = keras.models.load_model(tmp_path / "wm.keras")
    assert [v.path for v in loaded.variables] == [
        v.path for v in model.variables
    ]
    for ours, theirs in zip(model.variables, loaded.variables):
        assert np.array_equal(_np(ours), _np(theirs)), ours.path
    for layer in loaded.layers:
        if hasattr(layer, "feedback"):
            assert layer.feedback == WeightMirror()
            assert layer.feedback_kernel.trainable
    paths = {v.path.split("/")[-1] for v in loaded.variables}
    assert {"feedback_kernel", "seed_generator_state"} <= paths, paths

    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for ours, theirs in zip(model.variables, loaded.variables):
        assert np.array_equal(_np(ours), _np(theirs)), ours.path


def test_config_round_trip():
    rule = WeightMirror(noise_std=0.5, mirror_batch=8, decay=0.25)
    assert keras_fa.feedback.get("wm") == WeightMirror()
    assert keras_fa.feedback.get("WM") == WeightMirror(1.0, 32, 1.0)
    assert keras_fa.feedback.get(keras_fa.feedback.serialize(rule)) == rule
    assert WeightMirror.from_config(rule.get_config()) == rule
    for cls, args in (
        (keras_fa.FADense, (3,)),
        (keras_fa.FAConv1D, (3, 2)),
        (keras_fa.FAConv2D, (3, 2)),
    ):
        layer = cls(*args, feedback=rule, seed=4)
        config = layer.get_config()
        json.dumps(config)
        clone = cls.from_config(config)
        assert clone.feedback == rule
        assert clone.feedback is not rule
        assert clone.get_config() == config
    assert rule != WeightMirror(noise_std=0.5, mirror_batch=8, decay=0.5)
    assert "wm" in keras_fa.feedback.registered_names()


BAD_PARAMETERS = [
    (dict(noise_std=-1.0), "`noise_std` must be a finite positive"),
    (dict(noise_std=0.0), "`noise_std` must be a finite positive"),
    (dict(noise_std=float("nan")), "`noise_std` must be a finite"),
    (dict(noise_std="1"), "`noise_std` must be a finite positive"),
    (dict(mirror_batch=0), "`mirror_batch` must be an integer >= 1"),
    (dict(mirror_batch=2.5), "`mirror_batch` must be an integer >= 1"),
    (dict(mirror_batch=True), "`mirror_batch` must be an integer >= 1"),
    (dict(decay=-0.1), "`decay` must be a finite number >= 0"),
]


def test_bad_parameters_name_what_is_allowed():
    for kwargs, match in BAD_PARAMETERS:
        with pytest.raises(ValueError, match=match):
            WeightMirror(**kwargs)
        # Also from a config, as a loaded model would give it.
        config = keras_fa.feedback.serialize(WeightMirror())
        config["config"].update(kwargs)
        with pytest.raises(ValueError, match=match):
            keras_fa.FADense(2, feedback=config)
