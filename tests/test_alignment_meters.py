"""Tests of keras_fa/alignment/meters.py: every measure of `Alignment`
against hand computations in numpy, on every backend, the gradients and
signals, the checks of a batch, and the meter kept for each model."""

import math

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import alignment
from keras_fa import engine
from keras_fa import tracing
from tests._alignment_models import ANGLES_AND_RATIO
from tests._alignment_models import LAYER_RULES
from tests._alignment_models import as_numpy
from tests._alignment_models import cnn
from tests._alignment_models import direct_model
from tests._alignment_models import forward_weights
from tests._alignment_models import image_data
from tests._alignment_models import kernel_units
from tests._alignment_models import layers_model
from tests._alignment_models import mlp
from tests._alignment_models import mlp_data
from tests._alignment_models import q_np
from tests._alignment_models import reference

# -- every measure against numpy ---------------------------------------------


@pytest.mark.parametrize("rule", LAYER_RULES)
def test_measures_equal_hand_computation(rule):
    model = mlp(rule)
    x, y = mlp_data()
    meter = alignment.Alignment(model)
    got = meter.measure(x, y)
    ref = reference(model, x, y)
    names = [layer.name for layer in model.layers]
    for i, name in enumerate(names):
        w, b = ref["W"][i], ref["B"][i]
        rule_, true = ref["rule"], ref["true"]
        expected = {
            "weight_angle": alignment.angle(w, b),
            "norm_ratio": np.linalg.norm(b) / np.linalg.norm(w),
            "signal_angle": alignment.angle(
                rule_["delta"][i], true["delta"][i]
            ),
            "update_angle": alignment.angle(rule_["dW"][i], true["dW"][i]),
        }
        for measure, value in expected.items():
            np.testing.assert_allclose(
                got[f"{name}/{measure}"],
                value,
                atol=0.05 if "angle" in measure else 1e-5,
                err_msg=f"{rule} {name} {measure}",
            )
    # Hidden layers have a conservation law for these rules (not wm).
    pairs = meter.conservation_layers
    if rule == "wm":
        assert pairs == []
        assert not any("conservation" in k for k in got)
    else:
        assert pairs == names[:-1]
        q = meter.conservation()
        for i, name in enumerate(names[:-1]):
            np.testing.assert_allclose(
                q[name], q_np(ref, rule, i), rtol=1e-5, atol=1e-5
            )
            assert got[f"{name}/conservation"] == pytest.approx(
                q_np(ref, rule, i).sum(), rel=1e-5, abs=1e-5
            )


@pytest.mark.parametrize("rule", LAYER_RULES)
def test_gradients_and_true_gradients_equal_numpy(rule):
    model = mlp(rule)
    x, y = mlp_data()
    ref = reference(model, x, y)
    used = alignment.gradients(model, x, y)
    true = alignment.true_gradients(model, x, y)
    variables = model.trainable_variables
    assert len(used) == len(true) == len(variables)
    by_path = {v.path: i for i, v in enumerate(variables)}
    for i, layer in enumerate(model.layers):
        k = by_path[layer.kernel.path]
        np.testing.assert_allclose(
            true[k], ref["true"]["dW"][i], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            used[k], ref["rule"]["dW"][i], rtol=1e-4, atol=1e-6
        )
        bias = by_path[layer.bias.path]
        np.testing.assert_allclose(
            true[bias], ref["true"]["db"][i], rtol=1e-4, atol=1e-6
        )
    if rule != "bp":
        # A rule that fell back to backprop would pass the checks above only
        # if its B were W: the first layer's update must differ from bp's.
        assert alignment.angle(ref["rule"]["dW"][0], ref["true"]["dW"][0]) > 5


def test_signals_are_deltas():
    model = mlp("fa")
    x, y = mlp_data()
    ref = reference(model, x, y)
    meter = alignment.Alignment(model)
    for exact, mode in ((False, "rule"), (True, "true")):
        _, signals = meter.gradients(x, y, exact=exact)
        for i, layer in enumerate(model.layers):
            np.testing.assert_allclose(
                signals[layer.name], ref[mode]["delta"][i], rtol=1e-4, atol=1e-7
            )


def test_bp_angles_are_zero():
    model = mlp("bp", sizes=(7, 32, 32, 4))
    x, y = mlp_data(n=64)
    got = alignment.measure(model, x, y)
    angles = [v for k, v in got.items() if k.endswith("_angle")]
    assert len(angles) == 9
    assert max(angles) < 1e-2
    ratios = [v for k, v in got.items() if k.endswith("norm_ratio")]
    np.testing.assert_allclose(ratios, 1.0, rtol=1e-6)


def test_fa_signal_is_not_backprop():
    model = mlp("fa", sizes=(7, 32, 32, 4))
    x, y = mlp_data(n=64)
    got = alignment.measure(model, x, y)
    names = [layer.name for layer in model.layers]
    for name in names[:-1]:
        assert got[f"{name}/signal_angle"] > 30
        assert got[f"{name}/update_angle"] > 30
    # The output layer's error is the same under every rule.
    assert got[f"{names[-1]}/signal_angle"] < 1e-2


def test_measures_of_every_kernel_equal_their_computation():
    model = layers_model("fa")
    x, y = image_data()
    meter = alignment.Alignment(model)
    got = meter.measure(x, y)
    used, rule_signals = meter.gradients(x, y)
    true, true_signals = meter.gradients(x, y, exact=True)
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    for name, unit in kernel_units(model).items():
        w, b = as_numpy(unit.kernel), as_numpy(unit.feedback_kernel)
        assert got[f"{name}/weight_angle"] == pytest.approx(
            alignment.angle(w, b), abs=0.05
        )
        # fa's B is drawn apart from W: about 90 degrees (4 sd) at init.
        spread = 4 * math.degrees(1 / math.sqrt(w.size))
        assert abs(got[f"{name}/weight_angle"] - 90) < spread, name
        assert got[f"{name}/norm_ratio"] == pytest.approx(
            np.linalg.norm(b) / np.linalg.norm(w), rel=1e-5
        )
        k = index[id(unit.kernel)]
        assert got[f"{name}/update_angle"] == pytest.approx(
            alignment.angle(used[k], true[k]), abs=0.05
        ), name
        assert got[f"{name}/signal_angle"] == pytest.approx(
            alignment.angle(rule_signals[name], true_signals[name]), abs=0.05
        ), name
    # A rule that fell back to backprop would give 0 here.
    first = "fa_separable_conv2d/depthwise_kernel"
    assert got[f"{first}/update_angle"] > 5
    # The separable's two probes: the depthwise output (4 channels) and the
    # pointwise product (3), with nothing between them but B_p (or W_p).
    separable = model.layers[1]
    pointwise = separable.pointwise_feedback
    for signals, back in (
        (rule_signals, as_numpy(pointwise.feedback_kernel)),
        (true_signals, as_numpy(pointwise.kernel)),
    ):
        delta_p = signals[f"{separable.name}/pointwise_kernel"]
        delta_d = signals[f"{separable.name}/depthwise_kernel"]
        assert delta_p.shape == (6, 4, 4, 3) and delta_d.shape == (6, 4, 4, 4)
        np.testing.assert_allclose(
            delta_d,
            np.einsum("nhwf,cf->nhwc", delta_p, back[0, 0]),
            rtol=1e-4,
            atol=1e-7,
        )
    # The true gradients are those of the same model under backprop.
    bp = layers_model("bp")
    feedback = {
        id(v)
        for layer in model.layers
        for v in keras_fa.layers.feedback_variables(layer)
    }
    forward = [v for v in model.weights if id(v) not in feedback]
    assert len(forward) == len(bp.weights)
    for target, source in zip(bp.weights, forward):
        target.assign(source)
    bp_grads = alignment.gradients(bp, x, y)
    bp_index = {id(v): i for i, v in enumerate(bp.trainable_variables)}
    for target, source in zip(bp.weights, forward):
        np.testing.assert_allclose(
            true[index[id(source)]],
            bp_grads[bp_index[id(target)]],
            rtol=1e-4,
            atol=1e-6,
            err_msg=source.path,
        )


# -- convolutions, direct feedback, LoRA -------------------------------------


def test_conv_true_gradients_equal_bp_model():
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 2)).astype("float32")
    y = np.arange(6) % 5
    fa_model, bp_model = cnn("fa"), cnn("bp")
    bp_model.set_weights(forward_weights(fa_model))
    true = alignment.true_gradients(fa_model, x, y)
    bp = alignment.gradients(bp_model, x, y)
    fa = alignment.gradients(fa_model, x, y)
    assert len(true) == len(bp) == 6
    for t, b in zip(true, bp):
        np.testing.assert_allclose(t, b, rtol=1e-4, atol=1e-6)
    # The rule's own gradient of the first kernel is not backprop's.
    assert alignment.angle(fa[0], true[0]) > 5
    got = alignment.measure(fa_model, x, y)
    conv1 = fa_model.layers[0].name
    assert got[f"{conv1}/update_angle"] == pytest.approx(
        alignment.angle(fa[0], true[0]), abs=0.05
    )


@pytest.mark.parametrize("rule", ("dfa", "drtp", "shallow"))
def test_direct_feedback_measures(rule):
    model = direct_model(rule)
    x, y = mlp_data()
    dense = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
    ]
    head = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras_fa.DirectFeedback)
    )
    ws = [as_numpy(d.kernel) for d in dense]
    bs = [as_numpy(d.bias) for d in dense]
    a1 = x @ ws[0] + bs[0]
    h1 = np.maximum(a1, 0)
    a2 = h1 @ ws[1] + bs[1]
    h2 = np.maximum(a2, 0)
    logits = h2 @ ws[2] + bs[2]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(4)[y]
    e = (p - onehot) / len(x)
    # True signals at the tapped activations h1, h2 (backprop).
    true_h2 = e @ ws[2].T
    true_h1 = (true_h2 * (a2 > 0)) @ ws[1].T
    b_mats = [as_numpy(b) for b in head.feedback_kernels]
    source = {"dfa": e, "drtp": onehot / len(x), "shallow": 0 * e}[rule]
    rule_h = [source @ b for b in b_mats]
    got = alignment.measure(model, x, y)
    for name, rule_signal, true_signal, a, inputs in (
        (dense[0].name, rule_h[0], true_h1, a1, x),
        (dense[1].name, rule_h[1], true_h2, a2, h1),
    ):
        expected_signal = alignment.angle(rule_signal, true_signal)
        expected_update = alignment.angle(
            inputs.T @ (rule_signal * (a > 0)),
            inputs.T @ (true_signal * (a > 0)),
        )
        if rule == "shallow":
            assert math.isnan(got[f"{name}/signal_angle"])
            assert math.isnan(got[f"{name}/update_angle"])
        else:
            assert got[f"{name}/signal_angle"] == pytest.approx(
                expected_signal, abs=0.05
            )
            assert got[f"{name}/update_angle"] == pytest.approx(
                expected_update, abs=0.05
            )
    assert got[f"{dense[2].name}/update_angle"] < 1e-2
    # Direct rules have no conservation law and no weight alignment.
    assert not any("conservation" in k or "weight_angle" in k for k in got)
    true = alignment.true_gradients(model, x, y)
    k = [v.path for v in model.trainable_variables].index(dense[0].kernel.path)
    np.testing.assert_allclose(
        true[k], x.T @ (true_h1 * (a1 > 0)), rtol=1e-4, atol=1e-6
    )


def _lora_factors(layer):
    scale = layer.lora_alpha / layer.lora_rank
    return as_numpy(layer.lora_kernel_a), as_numpy(layer.lora_kernel_b), scale


def test_lora_layer_is_measured_through_its_factors():
    model = mlp("fa")
    x, y = mlp_data()
    first, middle, last = model.layers
    stale = alignment.Alignment(model)
    assert f"{middle.name}/update_angle" in alignment.measure(model, x, y)
    middle.enable_lora(2)
    # B of LoRA starts at zero: move it, so that both factors learn.
    rng = np.random.default_rng(1)
    middle.lora_kernel_b.assign(rng.normal(size=(2, 8)).astype("float32"))
    got = alignment.measure(model, x, y)
    assert [k for k in got if k.startswith(middle.name + "/")] == [
        f"{middle.name}/{m}" for m in ANGLES_AND_RATIO
    ]
    # The forward kernel is W0 + A B * alpha / rank, which the feedback
    # stands in for; the optimizer receives the gradients of A and B.
    ref = reference(model, x, y)
    a, b, scale = _lora_factors(middle)
    merged = as_numpy(middle._kernel) + scale * a @ b
    np.testing.assert_allclose(ref["W"][1], merged, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        got[f"{middle.name}/weight_angle"],
        alignment.angle(merged, ref["B"][1]),
        rtol=1e-4,
    )

    def factor_grads(mode):
        d_w = ref[mode]["dW"][1]
        return np.concatenate(
            [(scale * d_w @ b.T).ravel(), (scale * a.T @ d_w).ravel()]
        )

    expected = alignment.angle(factor_grads("rule"), factor_grads("true"))
    assert 5 < expected < 175  # fa's update is not backprop's
    np.testing.assert_allclose(
        got[f"{middle.name}/update_angle"], expected, rtol=1e-3
    )
    # The law is not derived for LoRA: neither for its neurons nor for the
    # neurons before it.
    status = alignment.Alignment(model).conservation_status
    assert "LoRA is enabled" in status[middle.name]
    assert "next kernel" in status[first.name]
    assert "LoRA" in status[first.name]
    assert not any(k.startswith(first.name + "/conserv") for k in got)
    assert status[last.name] == alignment.OUTPUT_KERNEL
    # A meter made before enable_lora would read stale variables.
    with pytest.raises(ValueError, match="trainable variables changed"):
        stale.measure(x, y)
    with pytest.raises(ValueError, match="trainable variables changed"):
        stale.weights()


# -- measuring changes nothing -----------------------------------------------


def test_measuring_changes_nothing():
    # brsf draws from a seed generator, kp has a trainable B, dropout draws
    # masks: measuring must leave every variable as it was.
    model = keras.Sequential(
        [
            keras.Input((7,)),
            keras_fa.FADense(16, activation="relu", feedback="brsf", seed=0),
            keras.layers.Dropout(0.3, seed=1),
            keras_fa.FADense(16, activation="relu", feedback="kp", seed=1),
            keras_fa.FADense(4, feedback="fa", seed=2),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = mlp_data()
    before = [np.array(as_numpy(v)) for v in model.variables]
    meter = alignment.Alignment(model)
    first = meter.measure(x, y)
    meter.gradients(x, y, exact=True)
    meter.weights()
    second = meter.measure(x, y)
    after = [as_numpy(v) for v in model.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert first == second


def test_exact_backprop_context_restores_on_error():
    assert not tracing.is_exact()
    with pytest.raises(RuntimeError):
        with tracing.exact_backprop():
            assert tracing.is_exact()
            raise RuntimeError
    assert not tracing.is_exact()


def test_fit_is_not_affected_by_measuring():
    # model.fit's train step is traced outside exact_backprop: measuring
    # between epochs must leave fa training as fa.
    x, y = mlp_data(n=32)
    a, b, bp = mlp("fa"), mlp("fa"), mlp("bp")
    b.set_weights(a.get_weights())
    bp.set_weights(forward_weights(a))
    fit = dict(batch_size=8, shuffle=False, verbose=0)
    a.fit(x, y, epochs=2, **fit)
    bp.fit(x, y, epochs=2, **fit)
    for _ in range(2):
        alignment.measure(b, x, y)
        b.fit(x, y, epochs=1, **fit)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    # ... which differs from backprop from the same start.
    first = as_numpy(a.layers[0].kernel) - as_numpy(bp.layers[0].kernel)
    assert np.abs(first).max() > 1e-4


# -- errors -----------------------------------------------------------------


def test_errors():
    with pytest.raises(TypeError, match="keras.Model"):
        alignment.Alignment(keras_fa.FADense(3))
    with pytest.raises(ValueError, match="Build the model"):
        alignment.Alignment(keras.Sequential([keras_fa.FADense(3)]))
    model = keras.Sequential([keras.Input((4,)), keras_fa.FADense(3)])
    with pytest.raises(ValueError, match="compile"):
        alignment.measure(model, np.ones((2, 4)), np.zeros(2))
    # Weight measures need no loss.
    name = model.layers[0].name
    assert f"{name}/weight_angle" in alignment.Alignment(model).weights()
    with pytest.raises(TypeError, match="keras.Model. Received: str"):
        alignment.measure("model", np.ones((2, 4)), np.zeros(2))
    with pytest.raises(TypeError, match=r"`share` must be a hashable .*\[1\]"):
        alignment.Alignment(model, share=[1])
    with pytest.raises(ValueError, match=r"`a` must be an array of numbers"):
        alignment.angle("x", [1.0])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    meter = alignment.Alignment(model)
    with pytest.raises(ValueError, match="`exact` must be True or False"):
        meter.gradients(np.ones((2, 4)), np.zeros(2), exact="yes")


def test_measure_checks_the_batch_before_measuring():
    model = mlp("fa")
    x, y = mlp_data()
    inf = x.copy()
    inf[3, 1] = np.inf
    cases = [
        ((x[:0], y[:0]), "`x` has no examples"),
        ((x, y[:5]), "same number of examples .* `x`: 12, `y`: 5"),
        ((inf, y), r"`x` holds 1 NaN or infinite value\(s\), the first inf "),
        ((x, y + 1), r"`y` holds the label 4 .* 4 outputs: .* \[0, 4\)"),
        ((x, y - 1), r"`y` holds the label -1 "),
        ((x[:, :3], y), r"cannot take `x` \(shape \(12, 3\)\)"),
        ((x, np.eye(4)[y]), r"loss cannot take `y` \(shape \(12, 4\)\)"),
    ]
    functions = (
        alignment.measure,
        alignment.gradients,
        alignment.true_gradients,
    )
    for args, match in cases:
        for function in functions:
            with pytest.raises(ValueError, match=match):
                function(model, *args)
    with pytest.raises(TypeError, match="`y` must hold numbers"):
        alignment.measure(model, x, y.astype(str))
    # A class the loss ignores is no class of the model's.
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(True, ignore_class=-1),
    )
    ignored = np.where(np.arange(len(y)) % 3 == 0, -1, y)
    got = alignment.measure(model, x, ignored)
    assert all(math.isfinite(v) for v in got.values())


# -- the meter of a model ---------------------------------------------------


def test_the_meter_of_a_model_is_kept_until_its_variables_change():
    model = mlp("fa")
    x, y = mlp_data()
    kept = alignment.meter(model)
    assert alignment.meter(model) is kept and kept.is_current()
    drift = f"{model.layers[0].name}/conservation_drift"
    assert drift not in alignment.measure(model, x, y)
    # measure() is the kept meter's: its reference gives the drift.
    kept.reset_reference()
    assert alignment.measure(model, x, y)[drift] == pytest.approx(0.0)
    # A layer frozen: other trainable variables, a new meter.
    model.layers[0].trainable = False
    assert not kept.is_current()
    fresh = alignment.meter(model)
    assert fresh is not kept and fresh.is_current()
    assert fresh.layer_names == [layer.name for layer in model.layers[1:]]
    with pytest.raises(TypeError, match="keras.Model. Received: str"):
        alignment.meter("model")


def test_output_shapes():
    model = mlp("fa")
    x, _ = mlp_data()
    meter = alignment.Alignment(model)
    assert meter.output_shapes(x) == [(12, 4)]
    assert meter.output_shapes(x[:5]) == [(5, 4)]
    with pytest.raises(ValueError, match=r"cannot take `x` \(shape \(12, 3\)"):
        meter.output_shapes(x[:, :3])


def test_meters_given_a_share_key_share_compiled_functions():
    # Where compiled functions are pure (jax), meters of models built alike
    # share them through the engine's cache; elsewhere each meter has its
    # own. Either way each meter measures its own model.
    engine.clear_cache()
    x, y = mlp_data()
    first, second = mlp("fa", seed=0), mlp("fa", seed=5)
    meters = [alignment.Alignment(m, share="mlp") for m in (first, second)]
    got = [meter.measure(x, y) for meter in meters]
    functions = [meter._compiled(None, None, "weights") for meter in meters]
    assert (functions[0] is functions[1]) == engine.SHARES_FUNCTIONS
    alone = alignment.Alignment(second).measure(x, y)
    assert got[1].keys() == alone.keys()
    np.testing.assert_allclose(
        list(got[1].values()), list(alone.values()), rtol=1e-5, atol=1e-4
    )
    assert got[0] != got[1]
    engine.clear_cache()
