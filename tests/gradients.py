"""Test helpers: gradients of a layer's outputs on every backend, and numpy
closed forms of the feedback rules.

`layer_gradients` is the only backend-specific test code: it differentiates
`sum(layer(x) * upstream)` with respect to the input and every float variable
of the layer, eagerly or compiled (XLA on tensorflow, jit on jax, torch.compile
on torch).
"""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def _is_float(value):
    return "float" in str(keras.backend.standardize_dtype(value.dtype))


def layer_gradients(layer, x, upstream, compiled=False):
    """Returns `(outputs, dx, grads, new_non_trainable)` for
    `L = sum(layer(x) * upstream)`.

    `grads` maps each float variable's path (trainable and non-trainable) to
    its gradient as a numpy array (zeros where the backend reports none).
    """
    variables = layer.trainable_variables + layer.non_trainable_variables
    n_train = len(layer.trainable_variables)
    values = [keras.ops.convert_to_numpy(v.value) for v in variables]
    float_idx = [i for i, v in enumerate(variables) if _is_float(v)]
    fn = _GRADIENT_FUNCTIONS[BACKEND]
    out, dx, dvars, state = fn(
        layer, n_train, values, float_idx, x, upstream, compiled
    )
    grads = {}
    for i, g in zip(float_idx, dvars):
        grads[variables[i].path] = (
            np.zeros_like(values[i]) if g is None else np.asarray(g)
        )
    dx = np.zeros_like(x) if dx is None else np.asarray(dx)
    return np.asarray(out), dx, grads, state


def _split(layer, n_train, values, float_idx, floats):
    full = list(values)
    for i, f in zip(float_idx, floats):
        full[i] = f
    return full[:n_train], full[n_train:]


def _tf_gradients(layer, n_train, values, float_idx, x, up, compiled):
    import tensorflow as tf

    def f(x, floats, others):
        with tf.GradientTape() as tape:
            tape.watch([x] + list(floats))
            full = list(others)
            for i, v in zip(float_idx, floats):
                full[i] = v
            tv, ntv = full[:n_train], full[n_train:]
            y, new_ntv = layer.stateless_call(tv, ntv, x)
            loss = tf.reduce_sum(y * up)
        dx, dfloats = tape.gradient(loss, [x, list(floats)])
        return y, dx, dfloats, new_ntv

    if compiled:
        f = tf.function(f, jit_compile=True)
    floats = [tf.constant(values[i]) for i in float_idx]
    others = [tf.constant(v) for v in values]
    y, dx, dfloats, state = f(tf.constant(x), floats, others)
    return (
        y.numpy(),
        None if dx is None else dx.numpy(),
        [None if g is None else g.numpy() for g in dfloats],
        [np.asarray(s) for s in state],
    )


def _jax_gradients(layer, n_train, values, float_idx, x, up, compiled):
    import jax
    import jax.numpy as jnp

    def loss(x, floats, others):
        full = list(others)
        for i, v in zip(float_idx, floats):
            full[i] = v
        tv, ntv = full[:n_train], full[n_train:]
        y, new_ntv = layer.stateless_call(tv, ntv, x)
        return jnp.sum(y * up), (y, new_ntv)

    f = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    if compiled:
        f = jax.jit(f)
    floats = [jnp.asarray(values[i]) for i in float_idx]
    others = [jnp.asarray(v) for v in values]
    (_, (y, state)), (dx, dfloats) = f(jnp.asarray(x), floats, others)
    return y, dx, dfloats, [np.asarray(s) for s in state]


def _torch_gradients(layer, n_train, values, float_idx, x, up, compiled):
    import torch

    def f(x, floats, others, up):
        full = list(others)
        for i, v in zip(float_idx, floats):
            full[i] = v
        tv, ntv = full[:n_train], full[n_train:]
        y, new_ntv = layer.stateless_call(tv, ntv, x)
        return y, torch.sum(y * up), new_ntv

    if compiled:
        f = torch.compile(f, dynamic=False)
    xt = torch.tensor(x, requires_grad=True)
    floats = [torch.tensor(values[i], requires_grad=True) for i in float_idx]
    others = [torch.tensor(v) for v in values]
    y, loss, state = f(xt, floats, others, torch.tensor(up))
    grads = torch.autograd.grad(loss, [xt] + floats, allow_unused=True)
    as_np = [None if g is None else g.detach().numpy() for g in grads]
    return (
        y.detach().numpy(),
        as_np[0],
        as_np[1:],
        [s.detach().numpy() for s in state],
    )


_GRADIENT_FUNCTIONS = {
    "tensorflow": _tf_gradients,
    "jax": _jax_gradients,
    "torch": _torch_gradients,
}


# ---------------------------------------------------------------------------
# numpy closed forms


def glorot_scale(shape):
    """sqrt(2 / (fan_in + fan_out)) for a Keras kernel shape, in numpy."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return np.sqrt(2.0 / (shape[-2] * receptive + shape[-1] * receptive))


def same_padding(length, kernel, stride, dilation):
    """TensorFlow's "same" padding (extra pixel at the end)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-length // stride)
    total = max(0, (out - 1) * stride + effective - length)
    return total // 2, total - total // 2


def np_conv(x, w, strides, padding, dilation, groups=1):
    """Channels-last N-d convolution in float64 by explicit sums.

    Returns `(y, backward)` where `backward(dy, b)` returns `(dx, dw)`: `dx` is
    the transposed convolution of `dy` with `b`, `dw` the kernel gradient.
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    rank = x.ndim - 2
    ksize = w.shape[:rank]
    if padding == "same":
        pads = [
            same_padding(x.shape[1 + i], ksize[i], strides[i], dilation[i])
            for i in range(rank)
        ]
    else:
        pads = [(0, 0)] * rank
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    out_shape = [
        (xp.shape[1 + i] - ((ksize[i] - 1) * dilation[i] + 1)) // strides[i] + 1
        for i in range(rank)
    ]
    cin_g = w.shape[-2]
    cout = w.shape[-1]
    cout_g = cout // groups

    def taps():
        for k in np.ndindex(*ksize):
            for o in np.ndindex(*out_shape):
                pos = tuple(
                    o[i] * strides[i] + k[i] * dilation[i] for i in range(rank)
                )
                yield k, o, pos

    y = np.zeros((x.shape[0], *out_shape, cout))
    for k, o, pos in taps():
        for g in range(groups):
            xs = xp[(slice(None),) + pos + (slice(g * cin_g, (g + 1) * cin_g),)]
            ws = w[k + (slice(None), slice(g * cout_g, (g + 1) * cout_g))]
            y[(slice(None),) + o + (slice(g * cout_g, (g + 1) * cout_g),)] += (
                xs @ ws
            )

    def backward(dy, b):
        dy = np.asarray(dy, np.float64)
        b = np.asarray(b, np.float64)
        dxp = np.zeros_like(xp)
        dw = np.zeros_like(w)
        for k, o, pos in taps():
            for g in range(groups):
                cin_s = slice(g * cin_g, (g + 1) * cin_g)
                cout_s = slice(g * cout_g, (g + 1) * cout_g)
                d = dy[(slice(None),) + o + (cout_s,)]
                dxp[(slice(None),) + pos + (cin_s,)] += (
                    d @ b[k + (slice(None), cout_s)].T
                )
                dw[k + (slice(None), cout_s)] += (
                    xp[(slice(None),) + pos + (cin_s,)].T @ d
                )
        crop = tuple(
            slice(left, dxp.shape[1 + i] - right)
            for i, (left, right) in enumerate(pads)
        )
        return dxp[(slice(None),) + crop + (slice(None),)], dw

    return y, backward


# ---------------------------------------------------------------------------
# Layers called on several inputs (attention: query, value, key)


def call_gradients(layer, inputs, upstream, compiled=False, **kwargs):
    """Returns `(outputs, dxs, grads, new_non_trainable)` for
    `L = sum(layer(*inputs, **kwargs) * upstream)`, as `layer_gradients`.

    `inputs` is a tuple of numpy arrays passed positionally and differentiated
    (`dxs` holds one gradient per input); `kwargs` are passed as they are and
    not differentiated (masks, flags).
    """
    variables = layer.trainable_variables + layer.non_trainable_variables
    n_train = len(layer.trainable_variables)
    values = [keras.ops.convert_to_numpy(v.value) for v in variables]
    float_idx = [i for i, v in enumerate(variables) if _is_float(v)]
    fn = _CALL_GRADIENT_FUNCTIONS[BACKEND]
    out, dxs, dvars, state = fn(
        layer, n_train, values, float_idx, inputs, upstream, compiled, kwargs
    )
    grads = {}
    for i, g in zip(float_idx, dvars):
        grads[variables[i].path] = (
            np.zeros_like(values[i]) if g is None else np.asarray(g)
        )
    dxs = [
        np.zeros_like(x) if dx is None else np.asarray(dx)
        for x, dx in zip(inputs, dxs)
    ]
    return np.asarray(out), dxs, grads, state


def _call(layer, n_train, values, float_idx, floats, others, xs, kwargs):
    full = list(others)
    for i, v in zip(float_idx, floats):
        full[i] = v
    tv, ntv = full[:n_train], full[n_train:]
    return layer.stateless_call(tv, ntv, *xs, **kwargs)


def _tf_call_gradients(layer, n_train, values, float_idx, xs, up, compiled, kw):
    import tensorflow as tf

    kw = {k: tf.constant(v) if _is_array(v) else v for k, v in kw.items()}

    def f(xs, floats, others):
        with tf.GradientTape() as tape:
            tape.watch(list(xs) + list(floats))
            y, new_ntv = _call(
                layer, n_train, values, float_idx, floats, others, xs, kw
            )
            loss = tf.reduce_sum(y * up)
        dxs, dfloats = tape.gradient(loss, [list(xs), list(floats)])
        return y, dxs, dfloats, new_ntv

    if compiled:
        f = tf.function(f, jit_compile=True)
    floats = [tf.constant(values[i]) for i in float_idx]
    others = [tf.constant(v) for v in values]
    y, dxs, dfloats, state = f([tf.constant(x) for x in xs], floats, others)
    return (
        y.numpy(),
        [None if g is None else g.numpy() for g in dxs],
        [None if g is None else g.numpy() for g in dfloats],
        [np.asarray(s) for s in state],
    )


def _jax_call_gradients(
    layer, n_train, values, float_idx, xs, up, compiled, kw
):
    import jax
    import jax.numpy as jnp

    kw = {k: jnp.asarray(v) if _is_array(v) else v for k, v in kw.items()}

    def loss(xs, floats, others):
        y, new_ntv = _call(
            layer, n_train, values, float_idx, floats, others, xs, kw
        )
        return jnp.sum(y * up), (y, new_ntv)

    f = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    if compiled:
        f = jax.jit(f)
    floats = [jnp.asarray(values[i]) for i in float_idx]
    others = [jnp.asarray(v) for v in values]
    xs = [jnp.asarray(x) for x in xs]
    (_, (y, state)), (dxs, dfloats) = f(xs, floats, others)
    return y, dxs, dfloats, [np.asarray(s) for s in state]


def _torch_call_gradients(
    layer, n_train, values, float_idx, xs, up, compiled, kw
):
    import torch

    kw = {k: torch.tensor(v) if _is_array(v) else v for k, v in kw.items()}

    def f(xs, floats, others, up):
        y, new_ntv = _call(
            layer, n_train, values, float_idx, floats, others, xs, kw
        )
        return y, torch.sum(y * up), new_ntv

    if compiled:
        f = torch.compile(f, dynamic=False)
    xts = [torch.tensor(x, requires_grad=True) for x in xs]
    floats = [torch.tensor(values[i], requires_grad=True) for i in float_idx]
    others = [torch.tensor(v) for v in values]
    y, loss, state = f(xts, floats, others, torch.tensor(up))
    grads = torch.autograd.grad(loss, xts + floats, allow_unused=True)
    as_np = [None if g is None else g.detach().numpy() for g in grads]
    return (
        y.detach().numpy(),
        as_np[: len(xts)],
        as_np[len(xts) :],
        [s.detach().numpy() for s in state],
    )


def _is_array(value):
    return isinstance(value, np.ndarray)


_CALL_GRADIENT_FUNCTIONS = {
    "tensorflow": _tf_call_gradients,
    "jax": _jax_call_gradients,
    "torch": _torch_call_gradients,
}
