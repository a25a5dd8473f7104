"""The alignment measures: their names, and the angles and sums they are
computed from, in numpy for the user and in `keras.ops` inside the meter's
compiled functions."""

import math

import keras
import numpy as np
from keras import ops

MEASURES = (
    "weight_angle",
    "norm_ratio",
    "signal_angle",
    "update_angle",
    "conservation",
    "conservation_drift",
    "conservation_drift_max",
)
ANGLE_MEASURES = ("weight_angle", "signal_angle", "update_angle")


def angle(a, b):
    """Returns the angle in degrees between two arrays, flattened.

    Computed as `2 atan2(|u - v|, |u + v|)` of the unit vectors, which stays
    accurate near 0 and 180 degrees where `arccos` of the cosine does not.
    NaN if either array is zero.

    Args:
        a: array-like.
        b: array-like of the same size.

    Returns:
        A Python float.
    """
    a, b = _numbers("a", a), _numbers("b", b)
    if a.size != b.size:
        raise ValueError(
            f"angle() needs arrays of the same size. Received sizes {a.size} "
            f"and {b.size}."
        )
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return math.nan
    u, v = a / norm_a, b / norm_b
    return math.degrees(
        2.0 * math.atan2(np.linalg.norm(u - v), np.linalg.norm(u + v))
    )


def _numbers(name, value):
    # `value` flattened to float64, or a clear error naming `name`.
    try:
        return np.ravel(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{name}` must be an array of numbers. Received: {name}="
            f"{value!r} ({error})"
        ) from error


def tensor_angle(a, b):
    """`angle` in `keras.ops`, for compiled functions."""
    a = ops.reshape(ops.cast(a, "float32"), (-1,))
    b = ops.reshape(ops.cast(b, "float32"), (-1,))
    u = a / ops.norm(a)
    v = b / ops.norm(b)
    radians = 2.0 * ops.arctan2(ops.norm(u - v), ops.norm(u + v))
    return radians * (180.0 / math.pi)


def angle_from_sums(aa, bb, ab):
    """The angle between a and b from |a|^2, |b|^2 and a.b, NaN if a or b
    is zero: `atan2(|a x b|, a.b)`, `|a x b|^2 = |a|^2 |b|^2 - (a.b)^2`."""
    cross = ops.sqrt(ops.maximum(aa * bb - ops.square(ab), 0.0))
    degrees = ops.arctan2(cross, ab) * (180.0 / math.pi)
    return ops.where(aa * bb > 0, degrees, math.nan)


def weight_measures(w, b, exact):
    """`(weight_angle, norm_ratio)` of a kernel `w` and its feedback `b`.

    Three sums (W.W, B.B, W.B) give both: the training loop measures them
    every step, so each kernel is read once. An exact rule's B is W.
    """
    if exact:
        return ops.zeros(()), ops.ones(())
    ww = ops.sum(ops.square(w))
    bb = ops.sum(ops.square(b))
    return angle_from_sums(ww, bb, ops.sum(w * b)), ops.sqrt(bb / ww)


def concat(tensors, indices):
    """One flat vector of `tensors[i]` for the indices: the update of a
    kernel trained through LoRA factors is that of both factors."""
    if len(indices) == 1:
        return tensors[indices[0]]
    return ops.concatenate(
        [ops.reshape(ops.cast(tensors[i], "float32"), (-1,)) for i in indices]
    )


def value(tensor):
    """The value of a variable (as read in a StatelessScope), or `tensor`."""
    if isinstance(tensor, keras.Variable):
        return tensor.value
    return tensor


def kernels(layer):
    """`(W, B)`: a keras_fa layer's kernel and the one its rule sends the
    error through, as float32 (read inside a StatelessScope)."""
    w = ops.cast(value(layer.kernel), "float32")
    if layer.feedback.exact:
        return w, w
    feedback = [
        ops.cast(value(t), "float32")
        for t in layer.feedback.feedback_inputs(layer)
    ]
    return w, layer.feedback.backward_kernel(w, *feedback)


def flatten(out, q):
    """One float32 vector of the scalars of `out` (in insertion order), then
    each kernel's Q: a single array to fetch from the device."""
    parts = [ops.reshape(ops.cast(v, "float32"), (1,)) for v in out.values()]
    parts += [ops.cast(v, "float32") for v in q.values()]
    if not parts:
        return ops.zeros((0,), dtype="float32")
    return ops.concatenate(parts)


def conservation_measures(q, reference):
    """The conservation measures of `{kernel: Q per neuron}` (numpy): the
    sum of Q, and its drift from `reference` (Q(0)) where there is one."""
    out = {}
    for name, values in q.items():
        out[f"{name}/conservation"] = float(np.sum(values))
        if reference is not None and name in reference:
            drift = values - reference[name]
            out[f"{name}/conservation_drift"] = float(np.sum(drift))
            out[f"{name}/conservation_drift_max"] = float(np.max(np.abs(drift)))
    return out


def ordered(values, layer_names):
    """`values` sorted by kernel (in `layer_names`' order), then measure (in
    `MEASURES`' order)."""
    order = {name: i for i, name in enumerate(layer_names)}
    rank = {m: i for i, m in enumerate(MEASURES)}

    def sort_key(item):
        name, measure = item[0].rsplit("/", 1)
        return order.get(name, len(order)), rank.get(measure, len(rank))

    return dict(sorted(values.items(), key=sort_key))
