"""Every new feedback layer's gradients against the plain Keras layer.

For each layer (einsum dense, 3-D, depthwise, separable and transposed
convolutions, multi-head and group-query attention), each rule, on the active
backend, eager and compiled:

- the output is the plain Keras layer's, with the same forward weights;
- `d inputs` is the input gradient of the plain Keras layer whose kernel is
  the rule's B (fa, kp, wm: the feedback kernel; usf: `sign(W) * glorot`;
  frsf: `sign(W) * |feedback_kernel|`; brsf: `sign(W) * |R|` with R redrawn
  from the seed the call started from; bp: W itself);
- `d kernel` and `d bias` are the plain Keras layer's, taken with the forward
  kernel (for a kernel whose output then crosses another kernel, as the
  depthwise kernel of a separable convolution does, with that kernel's B);
- `d inputs` is far from backprop's for every rule but bp, so a rule that
  silently fell back to backprop fails here;
- the feedback kernel's gradient is 0 (fa, frsf), `d kernel` (kp), or the
  mirror signal `decay * B - x~^T (x~ W) / mirror_batch` (wm).

The references use each backend's own autodiff on plain Keras layers, and
numpy's einsum for FAEinsumDense. Attention scores depend on the forward
values, so there the reference is a plain Keras attention layer whose
projections are replaced by a stop-gradient einsum: forward value W, input
gradient through B, local kernel gradient.
"""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import keras_fa
from keras_fa.layers import REPLACEMENTS
from keras_fa.layers import feedback_variables
from tests.gradients import BACKEND
from tests.gradients import call_gradients
from tests.gradients import glorot_scale
from tests.gradients import layer_gradients

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp", "wm"]
ATOL = 2e-5
RTOL = 2e-4
KERAS_CLASSES = {fa: plain for plain, fa in REPLACEMENTS.items()}

# (layer class, constructor kwargs, input shape). No activation: delta at the
# product is the upstream gradient, whichever kernel the reference uses.
CASES = {
    "einsum_2d": (
        keras_fa.FAEinsumDense,
        dict(equation="ab,bc->ac", output_shape=4, bias_axes="c"),
        (3, 5),
    ),
    "einsum_ellipsis": (
        keras_fa.FAEinsumDense,
        dict(equation="...b,bc->...c", output_shape=4, bias_axes="c"),
        (2, 3, 5),
    ),
    "einsum_3d_out": (
        keras_fa.FAEinsumDense,
        dict(equation="abc,cde->abde", output_shape=(3, 2, 4), bias_axes="de"),
        (2, 3, 5),
    ),
    "einsum_3d_kernel": (
        keras_fa.FAEinsumDense,
        dict(equation="abcd,cde->abe", output_shape=(3, 3), bias_axes="be"),
        (2, 3, 4, 5),
    ),
    "einsum_input_only_axis": (
        # b is summed in the forward pass by the input alone.
        keras_fa.FAEinsumDense,
        dict(equation="abc,cd->ad", output_shape=4),
        (2, 3, 5),
    ),
    "conv3d_same_stride": (
        keras_fa.FAConv3D,
        dict(
            filters=3, kernel_size=(3, 2, 2), strides=(2, 1, 2), padding="same"
        ),
        (2, 5, 3, 5, 2),
    ),
    "conv3d_dilated_channels_first": (
        keras_fa.FAConv3D,
        dict(
            filters=2,
            kernel_size=2,
            dilation_rate=(2, 1, 1),
            data_format="channels_first",
        ),
        (2, 3, 4, 3, 3),
    ),
    "depthwise1d_same_stride_dm2": (
        keras_fa.FADepthwiseConv1D,
        dict(kernel_size=3, strides=2, padding="same", depth_multiplier=2),
        (2, 8, 3),
    ),
    "depthwise1d_dilated_channels_first": (
        keras_fa.FADepthwiseConv1D,
        dict(kernel_size=3, dilation_rate=2, data_format="channels_first"),
        (2, 3, 9),
    ),
    "depthwise2d_same_stride_dm2": (
        keras_fa.FADepthwiseConv2D,
        dict(
            kernel_size=(3, 2),
            strides=(2, 1),
            padding="same",
            depth_multiplier=2,
        ),
        (2, 7, 6, 3),
    ),
    "depthwise2d_dilated_channels_first": (
        keras_fa.FADepthwiseConv2D,
        dict(
            kernel_size=2,
            dilation_rate=2,
            padding="same",
            data_format="channels_first",
        ),
        (2, 2, 5, 6),
    ),
    "separable1d_same_stride_dm2": (
        keras_fa.FASeparableConv1D,
        dict(
            filters=4,
            kernel_size=3,
            strides=2,
            padding="same",
            depth_multiplier=2,
        ),
        (2, 8, 3),
    ),
    "separable2d_dilated_dm2_channels_first": (
        keras_fa.FASeparableConv2D,
        dict(
            filters=3,
            kernel_size=(2, 3),
            dilation_rate=(1, 2),
            depth_multiplier=2,
            data_format="channels_first",
        ),
        (2, 2, 5, 7),
    ),
    "transpose1d_same_stride": (
        keras_fa.FAConv1DTranspose,
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        (2, 5, 2),
    ),
    "transpose1d_valid_output_padding": (
        keras_fa.FAConv1DTranspose,
        dict(filters=2, kernel_size=3, strides=2, output_padding=1),
        (2, 4, 3),
    ),
    "transpose1d_dilated_channels_first": (
        keras_fa.FAConv1DTranspose,
        dict(
            filters=2,
            kernel_size=2,
            dilation_rate=2,
            data_format="channels_first",
        ),
        (2, 3, 5),
    ),
    "transpose2d_same_stride": (
        keras_fa.FAConv2DTranspose,
        dict(filters=3, kernel_size=(3, 2), strides=(2, 1), padding="same"),
        (2, 4, 3, 2),
    ),
    "transpose2d_output_padding_channels_first": (
        keras_fa.FAConv2DTranspose,
        dict(
            filters=2,
            kernel_size=3,
            strides=2,
            output_padding=1,
            data_format="channels_first",
        ),
        (2, 3, 3, 4),
    ),
    "transpose3d_same_stride": (
        keras_fa.FAConv3DTranspose,
        dict(filters=2, kernel_size=2, strides=(2, 1, 2), padding="same"),
        (1, 2, 3, 2, 2),
    ),
    "transpose3d_output_padding_channels_first": (
        keras_fa.FAConv3DTranspose,
        dict(
            filters=2,
            kernel_size=(3, 2, 2),
            strides=(2, 1, 2),
            output_padding=(1, 0, 1),
            data_format="channels_first",
        ),
        (1, 2, 2, 3, 2),
    ),
}
# Every case runs eagerly with every rule. Compiled runs (XLA on tensorflow,
# jit on jax) cover one case per layer family with every rule.
# torch.compile takes seconds per graph: on torch only fa and kp are
# compiled, on the cases whose backward ops are new to this layer set.
COMPILED_CASES = (
    "einsum_3d_out",
    "conv3d_same_stride",
    "depthwise2d_same_stride_dm2",
    "separable1d_same_stride_dm2",
    "transpose2d_same_stride",
)
COMPILED_TORCH_RULES = ("fa", "kp")
# The new torch backward ops (einsum, depthwise and transposed convolutions)
# under torch.compile; the others are compiled on jax and tensorflow.
COMPILED_TORCH_CASES = (
    "einsum_3d_out",
    "depthwise2d_same_stride_dm2",
    "transpose2d_same_stride",
)

_HAS_GATE = (
    "use_gate"
    in inspect.signature(keras.layers.MultiHeadAttention.__init__).parameters
)
_NEEDS_GATE = pytest.mark.skipif(
    not _HAS_GATE, reason="this Keras has no use_gate"
)


def _mask(query_len, value_len):
    mask = np.random.default_rng(5).random((2, query_len, value_len)) > 0.4
    mask[..., 0] = True  # every query attends to something
    return mask


# (layer class, constructor kwargs, (query, value[, key]) shapes, call
# kwargs, marks). Query, value and key are always different tensors.
ATTENTION_CASES = {
    # Rank-3 cases share their shapes, so their projections share compiled
    # ops (jax compiles each new op shape once, in eager mode too).
    "mha_mask": (
        keras_fa.FAMultiHeadAttention,
        dict(num_heads=2, key_dim=3),
        ((2, 4, 5), (2, 3, 6)),
        dict(attention_mask=_mask(4, 3)),
        (),
    ),
    "mha_causal_key_gate": (
        # Causal mask alone: Keras's native causal attention path.
        keras_fa.FAMultiHeadAttention,
        dict(num_heads=2, key_dim=3, use_gate=True),
        ((2, 4, 5), (2, 3, 6), (2, 3, 4)),
        dict(use_causal_mask=True),
        (_NEEDS_GATE,),
    ),
    "mha_rank4_attention_axes": (
        keras_fa.FAMultiHeadAttention,
        dict(num_heads=2, key_dim=2, attention_axes=(2,)),
        ((2, 2, 3, 4), (2, 2, 4, 3)),
        {},
        (),
    ),
    "gqa_mask_causal_key_gate": (
        keras_fa.FAGroupQueryAttention,
        dict(
            head_dim=3, num_query_heads=4, num_key_value_heads=2, use_gate=True
        ),
        ((2, 4, 5), (2, 3, 5), (2, 3, 4)),
        dict(attention_mask=_mask(4, 3), use_causal_mask=True),
        (_NEEDS_GATE,),
    ),
}
ATTENTION_COMPILED_CASES = ("mha_mask",)
PROJECTIONS = (
    "_query_dense",
    "_key_dense",
    "_value_dense",
    "_output_dense",
    "_gate_dense",
)


def _params(cases, compiled_cases, marks=lambda case: ()):
    # One test per case and mode runs every rule: the per-test set-up
    # (clear_session) costs more than a rule's check.
    if BACKEND == "torch":
        compiled_cases = [
            c for c in compiled_cases if c in COMPILED_TORCH_CASES
        ]
    for case in cases:
        yield pytest.param(case, False, id=f"{case}-eager", marks=marks(case))
        if case in compiled_cases:
            yield pytest.param(
                case, True, id=f"{case}-compiled", marks=marks(case)
            )


def _rules(compiled):
    if compiled and BACKEND == "torch":
        return COMPILED_TORCH_RULES
    return RULES


def _for_every_rule(check, case, compiled):
    """Runs `check(case, rule, compiled)` for every rule; fails with the
    message of every rule that failed."""
    failures = []
    for rule in _rules(compiled):
        try:
            check(case, rule, compiled)
        except AssertionError as error:
            failures.append(f"[{rule}] {error}")
    assert not failures, "\n".join(failures)


def _np(v):
    return keras.ops.convert_to_numpy(v)


def _assert_close(actual, desired, what, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(
        actual, desired, rtol=rtol, atol=atol, err_msg=what
    )


def _assert_not_backprop(dx, dx_bp, rule, what="inputs"):
    if rule == "bp":
        _assert_close(dx, dx_bp, f"bp: d {what} is not backprop's")
    else:
        gap = np.abs(dx - dx_bp).max() / np.abs(dx_bp).max()
        assert gap > 0.05, f"{rule}: d {what} equals backprop's (gap {gap})"


def _seed_state(unit):
    generator = getattr(unit, "feedback_seed_generator", None)
    return None if generator is None else _np(generator.state).copy()


def _backward_kernel(unit, rule, state):
    """The rule's B of one feedback unit, in numpy, from the unit's seed
    state before the call."""
    w = _np(unit.kernel)
    if rule == "bp":
        return w
    if rule in ("fa", "kp", "wm"):
        return _np(unit.feedback_kernel)
    if rule == "usf":
        return (np.sign(w) * _usf_scale(unit, w.shape)).astype("float32")
    if rule == "frsf":
        return np.sign(w) * np.abs(_np(unit.feedback_kernel))
    if rule == "brsf":
        # Redraw the magnitudes from the seed state the call started from.
        unit.feedback_seed_generator.state.assign(state)
        m = _np(unit.feedback_state["sampler"](w.shape, dtype="float32"))
        return np.sign(w) * np.abs(m)
    raise AssertionError(rule)


def _usf_scale(unit, shape):
    """usf's Glorot std, with an einsum kernel's fans read off its equation
    (the kernel axes shared with the input, and with the output), as Keras
    counts them for the kernel's initializer."""
    if not isinstance(unit, keras_fa.FAEinsumDense):
        return glorot_scale(shape)
    operands, out_spec = unit.equation.split("->")
    in_spec, kernel_spec = operands.split(",")
    fan_in = np.prod([n for c, n in zip(kernel_spec, shape) if c in in_spec])
    fan_out = np.prod([n for c, n in zip(kernel_spec, shape) if c in out_spec])
    return np.sqrt(2.0 / (fan_in + fan_out))


def _mirror_gradient(unit, state, b):
    """wm's gradient for B, `decay * B - x~^T (x~ W) / mirror_batch`, with
    the noise redrawn from the seed state the call started from."""
    rule = unit.feedback
    w = _np(unit.kernel).astype(np.float64)
    w_flat = w.reshape(-1, w.shape[-1])
    unit.feedback_seed_generator.state.assign(state)
    noise = keras.random.normal(
        (rule.mirror_batch, w_flat.shape[0]),
        stddev=rule.noise_std,
        seed=unit.feedback_seed_generator,
    )
    noise = _np(noise).astype(np.float64)
    mirror = (noise.T @ (noise @ w_flat)).reshape(w.shape) / rule.mirror_batch
    return rule.decay * b - mirror


def _check_feedback_gradients(units, grads, rule, states, bs, exact):
    """Feedback-kernel gradients: 0 (fa, frsf), d kernel (kp), the mirror
    signal (wm; only nonzero and not d kernel where the noise of a compiled
    call cannot be redrawn)."""
    for unit, state, b in zip(units, states, bs):
        if getattr(unit, "feedback_kernel", None) is None:
            continue
        g = grads[unit.feedback_kernel.path]
        dw = grads[unit.kernel.path]
        if rule in ("fa", "frsf"):
            assert not g.any(), f"{rule}: B of {unit.name} has a gradient"
        elif rule == "kp":
            _assert_close(g, dw, f"kp: d B of {unit.name} is not d kernel")
        elif rule == "wm":
            assert np.abs(g).max() > 1e-3, f"wm: B of {unit.name} is still"
            assert not np.allclose(g, dw, rtol=0.05, atol=1e-3)
            if exact:
                _assert_close(
                    g,
                    _mirror_gradient(unit, state, b),
                    f"wm: d B of {unit.name} is not the mirror signal",
                    atol=1e-4,
                )
        assert np.isfinite(g).all()


def _b_is_known(rule, compiled):
    # XLA's random stream differs from eager TF's: the magnitudes of a
    # compiled brsf call cannot be redrawn eagerly; test_feedback's
    # test_brsf_recovered_feedback covers compiled brsf by reading B off the
    # gradient instead.
    return not (compiled and BACKEND == "tensorflow" and rule == "brsf")


def _noise_is_known(compiled):
    # Likewise for wm's mirror noise.
    return not (compiled and BACKEND == "tensorflow")


def _plain_layer(layer):
    """The Keras layer `layer` replaces, with its config (not built)."""
    keras_class = KERAS_CLASSES[type(layer)]
    config = layer.get_config()
    del config["feedback"], config["feedback_initializer"]
    if "seed" not in inspect.signature(keras_class.__init__).parameters:
        del config["seed"]
    return keras_class.from_config(config)


def _forward_weights(layer):
    feedback = {id(v) for v in feedback_variables(layer)}
    return [v for v in layer.weights if id(v) not in feedback]


# ---------------------------------------------------------------------------
# Layers with one input: einsum dense, convolutions


def _units(layer):
    """The feedback units of `layer`, in the order the signal crosses them."""
    if isinstance(
        layer, (keras_fa.FASeparableConv1D, keras_fa.FASeparableConv2D)
    ):
        return [layer.depthwise_feedback, layer.pointwise_feedback]
    return [layer]


def _make_layer(case, rule, seed=7):
    cls, kwargs, input_shape = CASES[case]
    layer = cls(
        **kwargs,
        feedback=rule,
        seed=seed,
        bias_initializer=keras.initializers.RandomNormal(seed=3),
    )
    layer.build(input_shape)
    return layer, input_shape


@pytest.mark.parametrize("case,compiled", list(_params(CASES, COMPILED_CASES)))
def test_gradients_match_keras_layer(case, compiled):
    _for_every_rule(_check_layer, case, compiled)


def _check_layer(case, rule, compiled):
    layer, input_shape = _make_layer(case, rule)
    units = _units(layer)
    assert all(u.feedback.name == rule for u in units)
    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape).astype("float32")
    plain = _plain_layer(layer)
    plain.build(input_shape)
    upstream = rng.normal(size=plain.compute_output_shape(input_shape))
    upstream = upstream.astype("float32")
    states = [_seed_state(u) for u in units]

    y, dx, grads, _ = layer_gradients(layer, x, upstream, compiled=compiled)

    known = _b_is_known(rule, compiled)
    bs = [
        _backward_kernel(u, rule, s) if known else None
        for u, s in zip(units, states)
    ]
    forward = _forward_weights(layer)
    assert [tuple(v.shape) for v in forward] == [
        tuple(v.shape) for v in plain.weights
    ]
    ids = [id(v) for v in forward]
    kernel_index = [ids.index(id(u.kernel)) for u in units]

    def reference(feedback_from):
        """Gradients of the plain layer whose kernels from unit
        `feedback_from` on are their B's."""
        values = [_np(v) for v in forward]
        for i in range(feedback_from, len(units)):
            values[kernel_index[i]] = bs[i]
        plain.set_weights(values)
        _, dx_ref, g, _ = layer_gradients(plain, x, upstream)
        return dx_ref, [g[v.path] for v in plain.weights]

    plain.set_weights([_np(v) for v in forward])
    y_ref, dx_bp, g_bp, _ = layer_gradients(plain, x, upstream)
    g_bp = [g_bp[v.path] for v in plain.weights]

    _assert_close(y, y_ref, "outputs differ from the Keras layer's")
    # Weights outside the products (bias) learn from delta alone.
    for i, v in enumerate(forward):
        if i not in kernel_index:
            _assert_close(grads[v.path], g_bp[i], f"d {v.name}")
    # A kernel learns from its local gradient, with the error that crossed
    # the B of every kernel after it.
    for i, unit in enumerate(units):
        path = unit.kernel.path
        if i + 1 == len(units):
            _assert_close(grads[path], g_bp[kernel_index[i]], f"d {path}")
        elif known:
            _, g = reference(i + 1)
            _assert_close(grads[path], g[kernel_index[i]], f"d {path}")
    if known:
        dx_ref, _ = reference(0)
        _assert_close(dx, dx_ref, "d inputs is not the plain layer's with B")
    _assert_not_backprop(dx, dx_bp, rule)
    _check_feedback_gradients(
        units, grads, rule, states, bs, exact=_noise_is_known(compiled)
    )
    for g in list(grads.values()) + [dx]:
        assert np.isfinite(g).all()

    if isinstance(layer, keras_fa.FAEinsumDense) and known:
        _check_einsum_closed_form(layer, x, upstream, bs[0], y, dx, grads)


# ---------------------------------------------------------------------------
# FAEinsumDense in numpy


def _spell_out(equation, input_rank):
    operands, out = equation.split("->")
    x_spec, k_spec = operands.split(",")
    if "..." in x_spec:
        free = [c for c in "zyxwvutsrq" if c not in equation]
        ellipsis = "".join(free[: input_rank - len(x_spec) + 3])
        x_spec = x_spec.replace("...", ellipsis)
        out = out.replace("...", ellipsis)
    return x_spec, k_spec, out


def _np_einsum_gradient(spec_a, a, spec_b, b, target, shape):
    # An axis of the target that neither other operand has was summed alone
    # in the forward pass: its gradient is the same along it.
    kept = "".join(c for c in target if c in spec_a + spec_b)
    result = np.einsum(f"{spec_a},{spec_b}->{kept}", a, b)
    missing = [i for i, c in enumerate(target) if c not in kept]
    return np.broadcast_to(np.expand_dims(result, missing), shape)


def _check_einsum_closed_form(layer, x, upstream, b, y, dx, grads):
    x_spec, k_spec, out = _spell_out(layer.equation, x.ndim)
    w = _np(layer.kernel).astype(np.float64)
    x64 = x.astype(np.float64)
    dy = upstream.astype(np.float64)
    y_np = np.einsum(f"{x_spec},{k_spec}->{out}", x64, w)
    if layer.bias is not None:
        y_np = y_np + _np(layer.bias)
    _assert_close(y, y_np, "einsum forward (numpy)")
    dx_np = _np_einsum_gradient(out, dy, k_spec, b, x_spec, x.shape)
    _assert_close(dx, dx_np, "einsum d inputs (numpy, through B)")
    dw_np = _np_einsum_gradient(x_spec, x64, out, dy, k_spec, w.shape)
    _assert_close(grads[layer.kernel.path], dw_np, "einsum d kernel (numpy)")
    if layer.bias is not None:
        bias_axes = [out.index(c) for c in layer.bias_axes]
        summed = tuple(i for i in range(dy.ndim) if i not in bias_axes)
        db = dy.sum(summed).reshape(layer.bias.shape)
        _assert_close(grads[layer.bias.path], db, "einsum d bias (numpy)")


# ---------------------------------------------------------------------------
# Attention


def _stop_gradient_call(projection, b):
    """An EinsumDense `call` whose value is the forward one, whose input
    gradient crosses the constant B and whose kernel gradient is local."""

    def call(inputs, training=None):
        b_tensor = ops.convert_to_tensor(b)
        through_b = ops.einsum(projection.equation, inputs, b_tensor)
        x = ops.einsum(
            projection.equation, ops.stop_gradient(inputs), projection.kernel
        )
        x = x + through_b - ops.stop_gradient(through_b)
        if projection.bias is not None:
            x = ops.add(x, projection.bias)
        if projection.activation is not None:
            x = projection.activation(x)
        return x

    return call


def _attention_marks(case):
    return ATTENTION_CASES[case][4]


@pytest.mark.parametrize(
    "case,compiled",
    list(_params(ATTENTION_CASES, ATTENTION_COMPILED_CASES, _attention_marks)),
)
def test_attention_gradients_match_stop_gradient_reference(case, compiled):
    _for_every_rule(_check_attention, case, compiled)


def _check_attention(case, rule, compiled):
    cls, kwargs, shapes, call_kwargs, _ = ATTENTION_CASES[case]
    layer = cls(
        **kwargs,
        feedback=rule,
        seed=7,
        bias_initializer=keras.initializers.RandomNormal(seed=3),
    )
    layer.build(*shapes)
    names = [p for p in PROJECTIONS if getattr(layer, p, None) is not None]
    units = [getattr(layer, p) for p in names]
    assert all(isinstance(u, keras_fa.FAEinsumDense) for u in units)
    assert all(u.feedback.name == rule for u in units)
    if kwargs.get("use_gate"):
        assert "_gate_dense" in names

    plain = _plain_layer(layer)
    plain.build(*shapes)
    for name, unit in zip(names, units):
        projection = getattr(plain, name)
        assert type(projection) is keras.layers.EinsumDense
        projection.kernel.assign(_np(unit.kernel))
        if unit.bias is not None:
            projection.bias.assign(_np(unit.bias))
    rng = np.random.default_rng(0)
    inputs = tuple(rng.normal(size=s).astype("float32") for s in shapes)
    out_shape = plain.compute_output_shape(*shapes)
    upstream = rng.normal(size=out_shape).astype("float32")
    states = [_seed_state(u) for u in units]

    y, dxs, grads, _ = call_gradients(
        layer, inputs, upstream, compiled=compiled, **call_kwargs
    )

    y_bp, dxs_bp, g_bp, _ = call_gradients(
        plain, inputs, upstream, **call_kwargs
    )
    known = _b_is_known(rule, compiled)
    bs = [
        _backward_kernel(u, rule, s) if known else _np(u.kernel)
        for u, s in zip(units, states)
    ]
    for name, b in zip(names, bs):
        projection = getattr(plain, name)
        projection.call = _stop_gradient_call(projection, b)
    y_ref, dxs_ref, g_ref, _ = call_gradients(
        plain, inputs, upstream, **call_kwargs
    )

    _assert_close(y, y_bp, "outputs differ from the Keras layer's")
    _assert_close(y_ref, y_bp, "the stop-gradient reference is off")
    if rule == "bp":
        # With B = W the reference is Keras's own autodiff.
        for path, g in g_bp.items():
            _assert_close(g_ref[path], g, f"reference d {path} (B = W)")
        for dx_ref, dx_bp in zip(dxs_ref, dxs_bp):
            _assert_close(dx_ref, dx_bp, "reference d inputs (B = W)")
    for name, unit in zip(names, units):
        if not known and name != "_output_dense":
            # Its delta crossed the output projection's unknown B.
            continue
        projection = getattr(plain, name)
        _assert_close(
            grads[unit.kernel.path],
            g_ref[projection.kernel.path],
            f"d kernel of {name}",
        )
        if unit.bias is not None:
            _assert_close(
                grads[unit.bias.path],
                g_ref[projection.bias.path],
                f"d bias of {name}",
            )
    for i, (dx, dx_bp) in enumerate(zip(dxs, dxs_bp)):
        what = ("query", "value", "key")[i]
        if known:
            _assert_close(dx, dxs_ref[i], f"d {what} is not through B")
        _assert_not_backprop(dx, dx_bp, rule, what)
        assert np.isfinite(dx).all()
    _check_feedback_gradients(
        units, grads, rule, states, bs, exact=_noise_is_known(compiled)
    )
    for g in grads.values():
        assert np.isfinite(g).all()
