"""Alignment measures: how far a rule's learning is from backprop's, per kernel.

For each kernel the measures are (angles in degrees; 90 means no alignment,
below 90 means the rule still descends the loss):

- `weight_angle`: angle between the forward kernel W and the feedback kernel
  B the rule uses in its place (flattened);
- `norm_ratio`: |B| / |W| (Frobenius norms);
- `signal_angle`: angle between the error signal delta the kernel's product
  receives under its rule and the one backprop gives, on the same batch (the
  gradient at the output of the kernel's product, before bias; for a
  direct-feedback tap, at the tapped activation);
- `update_angle`: angle between the kernel gradient the rule gives (what the
  optimizer receives) and the true gradient dL/dW, on the same batch;
- `conservation`: the quantity of Robertson & Koyejo's conservation law,
  summed over the hidden neurons whose incoming weights (and bias) are in
  this kernel and outgoing weights in the next kernel,
  `Q_i = |w_in|^2 + b_i^2 - 2 sum(phi(w_out))`; `phi` is the next kernel's
  rule's `conservation_potential` (`W * B` for fa, usf and frsf;
  `W * B - W^2 / 2` for bp and kp, which gives `|w_in|^2 - |w_out|^2` under
  backprop);
- `conservation_drift`: sum of `Q_i(t) - Q_i(0)` since the reference;
- `conservation_drift_max`: the largest `|Q_i(t) - Q_i(0)|` of the kernel.

A kernel with LoRA enabled (`layer.enable_lora(rank)`) is measured too: W
is the kernel the forward pass uses, `W0 + A B * alpha / rank`, and its
`update_angle` is that of the gradients the optimizer receives, those of
the factors A and B (one vector); it has no conservation law.

Measures are keyed `"<kernel>/<measure>"`. A layer of the model with one
kernel is named by its layer name (`"dense/update_angle"`); a kernel inside
another layer by the path of layer names down to it, models left out
(`"fa_multi_head_attention/query/update_angle"`), and a layer with two
kernels by the kernel's name (`"fa_separable_conv2d/depthwise_kernel/..."`,
`".../pointwise_kernel/..."`).

The conservation law is derived for a hidden neuron whose pre-activation is
linear in its incoming weights and bias, and whose output reaches the next
kernel's input axis only through positively homogeneous, channel-wise
operations (ReLU, leaky ReLU, linear, pooling, dropout, flatten): under
gradient flow, with a fixed feedback B, `d(|w_in|^2 + b^2)/dt =
2 sum(B * dW_out/dt)`. It holds between the kernels of Dense, EinsumDense
acting as a Dense on the last axis (`"...b,bc->...c"`), Conv, DepthwiseConv
(neuron `c * depth_multiplier + m`), ConvTranspose (kernel `(..., filters,
in)`: a neuron's incoming weights are `[..., j, :]`, its outgoing ones
`[..., :, j]`) and FASeparableConv (also between its depthwise and pointwise
kernels, which nothing separates), the next kernel's rule being bp, fa,
usf, frsf or kp. `Alignment.conservation_status` says, for every kernel,
`"holds"` or why not (`"not applicable: <reason>"`): attention projections,
other einsum equations, kernels inside other layers or nested models,
grouped convolutions as the next kernel, non-homogeneous activations or
layers in between, subclassed models, the output layer, kernels with LoRA
(either of the two). Such kernels get no conservation measures.

A batch to measure is checked first (`Alignment.check_batch`), with errors
naming what is wrong: arrays with the same, non-zero number of examples,
numeric and finite, that the model takes; with a sparse categorical loss,
labels that are classes of the model's output; targets the loss takes.

The true gradient comes from the same model traced inside
`keras_fa.tracing.exact_backprop()`, on every backend, with the same
variables, dropout masks and random draws as the rule's pass.
"""

import collections
import collections.abc
import contextlib
import inspect
import math
import weakref

import keras
import numpy as np
from keras import ops

from keras_fa import backend
from keras_fa import tracing
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.feedback.base import tied_feedback_potential
from keras_fa.layers.base import FeedbackKernel
from keras_fa.layers.base import FeedbackMixin

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

#: `Alignment.conservation_status` of a kernel whose law holds.
HOLDS = "holds"
_OUTPUTS = "its outputs are the model's outputs"
#: The status of a kernel whose outputs are the model's: no hidden neurons.
OUTPUT_KERNEL = f"not applicable: {_OUTPUTS}"


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


def _angle(a, b):
    # The same as `angle`, in keras.ops, inside compiled functions.
    a = ops.reshape(ops.cast(a, "float32"), (-1,))
    b = ops.reshape(ops.cast(b, "float32"), (-1,))
    u = a / ops.norm(a)
    v = b / ops.norm(b)
    radians = 2.0 * ops.arctan2(ops.norm(u - v), ops.norm(u + v))
    return radians * (180.0 / math.pi)


def _concat(tensors, indices):
    # One flat vector of `tensors[i]` for the indices: the update of a
    # kernel trained through LoRA factors is that of both factors.
    if len(indices) == 1:
        return tensors[indices[0]]
    return ops.concatenate(
        [ops.reshape(ops.cast(tensors[i], "float32"), (-1,)) for i in indices]
    )


def _angle_from_sums(aa, bb, ab):
    # Angle between a and b from |a|^2, |b|^2 and a.b: atan2(|a x b|, a.b),
    # with |a x b|^2 = |a|^2 |b|^2 - (a.b)^2. NaN if a or b is zero.
    cross = ops.sqrt(ops.maximum(aa * bb - ops.square(ab), 0.0))
    angle = ops.arctan2(cross, ab) * (180.0 / math.pi)
    return ops.where(aa * bb > 0, angle, math.nan)


def _value(tensor):
    if isinstance(tensor, keras.Variable):
        return tensor.value
    return tensor


# -- checking data -------------------------------------------------------------


def _pipeline(data):
    """What kind of data pipeline `data` is, or None if it is not one."""
    if isinstance(data, keras.utils.PyDataset):
        return f"a keras.utils.PyDataset ({type(data).__name__})"
    module = type(data).__module__ or ""
    if module.startswith("tensorflow") and hasattr(data, "element_spec"):
        return f"a tf.data.Dataset ({type(data).__name__})"
    if module.startswith("torch.utils.data"):
        return f"a torch {type(data).__name__}"
    if inspect.isgenerator(data) or isinstance(data, collections.abc.Iterator):
        return f"an iterator ({type(data).__name__})"
    return None


def _describe(data):
    if isinstance(data, (list, tuple)):
        inner = sorted({type(item).__name__ for item in data})
        return (
            f"a {type(data).__name__} of {' and '.join(inner)}"
            if inner
            else f"an empty {type(data).__name__}"
        )
    shape = getattr(data, "shape", None)
    if shape is not None:
        return f"a {type(data).__name__} of shape {tuple(shape)}"
    return f"{data!r} (a {type(data).__name__})"


def _dtype_name(leaf):
    try:
        return keras.backend.standardize_dtype(leaf.dtype)
    except (AttributeError, TypeError, ValueError):
        return str(getattr(leaf, "dtype", type(leaf).__name__))


def _is_numeric(dtype):
    return dtype == "bool" or dtype.startswith(("float", "int", "uint", "bf"))


def _part(part, name):
    return f"`{part}`" if name is None else f"{part} of `{name}`"


def check_data(x, y, sample_weight=None, name=None, hint=""):
    """Checks data given as arrays before any work is done with it.

    `x` and `y` (and `sample_weight`, if given) must each be an array or
    tensor, or a list, tuple or dict of them, of a numeric dtype, with the
    examples on the first axis: the same number of them everywhere, at
    least one, and no NaN or infinite values. Raises a `ValueError` (a
    `TypeError` for data of the wrong kind, e.g. a `tf.data.Dataset`)
    naming the part and what is wrong with it.

    Args:
        x: inputs.
        y: targets.
        sample_weight: optional per-example weights.
        name: the argument the data came in (e.g. `"probe_data"`), named in
            the errors; None if `x`, `y` and `sample_weight` are arguments.
        hint: a sentence added to the error for a data pipeline.

    Returns:
        The number of examples.
    """
    parts = [("x", x), ("y", y)]
    if sample_weight is not None:
        parts.append(("sample_weight", sample_weight))
    lengths = []
    for part, data in parts:
        label = _part(part, name)
        kind = _pipeline(data)
        if kind is not None:
            raise TypeError(
                f"{label} must be arrays or tensors (or a list, tuple or "
                f"dict of them). Received: {kind}. {hint}".rstrip()
            )
        if data is None:
            raise ValueError(f"{label} must be an array or tensor, not None.")
        leaves = keras.tree.flatten(data)
        if not leaves:
            raise ValueError(
                f"{label} holds no array. Received: {_describe(data)}."
            )
        for leaf in leaves:
            shape = getattr(leaf, "shape", None)
            if shape is None or len(shape) == 0:
                raise TypeError(
                    f"{label} must be an array or tensor (or a list, tuple "
                    "or dict of them) with the examples on the first axis. "
                    f"Received: {_describe(data)}"
                    + (
                        ": convert it with numpy.asarray."
                        if isinstance(data, (list, tuple))
                        else "."
                    )
                )
            dtype = _dtype_name(leaf)
            if not _is_numeric(dtype):
                raise TypeError(
                    f"{label} must hold numbers (a numeric or bool dtype). "
                    f"Received: an array of dtype {dtype}."
                )
            lengths.append((part, shape[0]))
            if dtype.startswith(("float", "bf")):
                values = ops.convert_to_numpy(leaf)
                finite = np.isfinite(values)
                if not finite.all():
                    index = np.unravel_index(np.argmin(finite), values.shape)
                    raise ValueError(
                        f"{label} holds {np.size(finite) - finite.sum()} NaN "
                        f"or infinite value(s), the first "
                        f"{values[index]} at index {tuple(map(int, index))}: "
                        "the loss and every measure would be NaN. Remove or "
                        "replace them."
                    )
    counts = {n for _, n in lengths}
    if len(counts) > 1:
        listed = ", ".join(f"{_part(p, name)}: {n}" for p, n in lengths)
        raise ValueError(
            "x, y and sample_weight must have the same number of examples "
            f"(first axis). Received: {listed}."
        )
    (count,) = counts
    if count == 0:
        raise ValueError(
            f"{_part('x', name)} has no examples (its first axis has length "
            "0): give at least one."
        )
    return int(count)


def check_probe_data(probe_data, name="probe_data", allow_none=False):
    """Checks a batch given as one argument, `(x, y)` or `(x, y,
    sample_weight)` (see `check_data`), and returns it as a tuple.

    Args:
        probe_data: the argument.
        name: its name, for the errors.
        allow_none: whether None is allowed (said in the error; None itself
            is the caller's to handle).
    """
    if not isinstance(probe_data, (tuple, list)) or len(probe_data) not in (
        2,
        3,
    ):
        size = (
            f" of length {len(probe_data)}"
            if isinstance(probe_data, (tuple, list))
            else ""
        )
        raise ValueError(
            f"`{name}` must be a tuple (x, y) or (x, y, sample_weight) of "
            f"arrays{', or None' if allow_none else ''}. Received: a "
            f"{type(probe_data).__name__}{size}."
        )
    check_data(
        *probe_data,
        name=name,
        hint=f"`{name}` holds arrays: take them from the data set first.",
    )
    return tuple(probe_data)


def _sparse_loss(model):
    # The compiled loss if it takes class indices as targets, else None.
    loss = getattr(model, "loss", None)
    sparse = keras.losses.sparse_categorical_crossentropy
    if isinstance(loss, str):
        found = loss in (
            "sparse_categorical_crossentropy",
            "SparseCategoricalCrossentropy",
        )
    else:
        found = isinstance(
            loss, keras.losses.SparseCategoricalCrossentropy
        ) or (loss is sparse or getattr(loss, "fn", None) is sparse)
    return loss if found else None


def _check_labels(model, y, outputs, name=None):
    """With a sparse categorical loss, checks that the labels `y` are class
    indices of the model's output (`outputs`: the list of the shapes of
    the model's outputs; only a single output is checked)."""
    loss = _sparse_loss(model)
    ys = keras.tree.flatten(y)
    if loss is None or len(outputs) != 1 or len(ys) != 1:
        return
    shape = tuple(outputs[0])
    classes = shape[-1] if shape else None
    labels = np.asarray(ops.convert_to_numpy(ys[0]))
    sparse_shape = labels.ndim == len(shape) - 1 or (
        labels.ndim == len(shape) and labels.shape[-1:] == (1,)
    )
    if not classes or not sparse_shape:
        return
    ignored = getattr(loss, "ignore_class", None)
    bad = (labels < 0) | (labels >= classes) | (labels != np.round(labels))
    if ignored is not None:
        bad &= labels != ignored
    if bad.any():
        index = np.unravel_index(np.argmax(bad), labels.shape)
        raise ValueError(
            f"{_part('y', name)} holds the label {labels[index]} (at index "
            f"{tuple(map(int, index))}; {int(bad.sum())} bad in all), but "
            f"the model has {classes} outputs: with a sparse categorical "
            f"loss the labels must be integers in [0, {classes})"
            + (f" or {ignored} (ignore_class)" if ignored is not None else "")
            + "."
        )


def _kernel_of(layer):
    try:
        kernel = getattr(layer, "kernel", None)
    except (AttributeError, ValueError):
        return None
    return kernel if isinstance(kernel, keras.Variable) else None


def _lora(layer):
    # Embedding has LoRA too, but no kernel.
    return bool(getattr(layer, "lora_enabled", False)) and hasattr(
        layer, "lora_kernel_a"
    )


_LORA = (
    "LoRA is enabled: its kernel W0 + A B * alpha / rank learns through "
    "the factors A and B, for which the law is not derived"
)


def _trained_by(layer):
    """The variables whose gradients are the update of `layer`'s kernel:
    the kernel, or with LoRA (`enable_lora`) its factors A and B (the
    kernel itself `W0 + A B * alpha / rank` is frozen). None if the layer
    has no kernel."""
    if _lora(layer):
        return [layer.lora_kernel_a, layer.lora_kernel_b]
    kernel = _kernel_of(layer)
    return None if kernel is None else [kernel]


def _kernel_units(model, index):
    """Returns `[(key, layer, parents)]` for the layers with a trainable
    kernel, in the model's order (depth first, sub-layers in their order).

    The key is the layer's name, after the names of the layers it is
    inside (models left out); a `FeedbackKernel` is named by its kernel.
    Where that is not unique (layers with the same name in two nested
    models), the names of the models are kept too.
    """
    found, seen = [], set()

    def walk(layer, short, full, parents):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) in seen:
                continue
            seen.add(id(child))
            segment = (
                child.kernel_name
                if isinstance(child, FeedbackKernel)
                else child.name
            )
            trained = _trained_by(child)
            if trained is not None and all(id(v) in index for v in trained):
                path = (short + [segment], full + [segment])
                found.append((*path, child, parents))
            inner = (
                short if isinstance(child, keras.Model) else short + [segment]
            )
            walk(child, inner, full + [segment], parents + [child])

    walk(model, [], [], [])
    count = collections.Counter("/".join(short) for short, *_ in found)
    units = []
    for short, full, layer, parents in found:
        key = "/".join(short if count["/".join(short)] == 1 else full)
        units.append((key, layer, parents))
    keys = [key for key, _, _ in units]
    if len(set(keys)) != len(keys):
        twice = sorted(k for k, n in collections.Counter(keys).items() if n > 1)
        raise ValueError(
            f"Alignment names each kernel by its layer's path, but {twice} "
            "name more than one kernel: give those layers distinct names."
        )
    return units


# -- where the conservation law holds -----------------------------------------

# Pooling acts on each channel separately when its data format puts the
# channels where the kernel did.
_GLOBAL_POOLING = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_POOLING = _GLOBAL_POOLING + (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
# Layers through which a hidden neuron's conservation law still holds: they
# act on each channel separately and are positively homogeneous.
_PASS_THROUGH = _POOLING + (
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.Identity,
    keras.layers.LeakyReLU,
)
_HOMOGENEOUS = (
    keras.activations.relu,
    keras.activations.linear,
    keras.activations.leaky_relu,
)
_ATTENTION = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_DENSE = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)


def _is_homogeneous_activation(activation):
    return activation is None or any(activation is f for f in _HOMOGENEOUS)


def _passes_law(layer):
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None and float(layer.threshold) == 0.0
    if isinstance(layer, keras.layers.Activation):
        return _is_homogeneous_activation(layer.activation)
    return isinstance(layer, _PASS_THROUGH)


def _is_dense_einsum(layer):
    # "...b,bc->...c", "abc,cd->abd": a Dense on the last axis.
    operands, out_spec = layer.equation.replace(" ", "").split("->")
    in_spec, kernel_spec = operands.split(",")
    if len(kernel_spec) != 2:
        return False
    a, b = kernel_spec
    return (
        in_spec[-1:] == a
        and out_spec[-1:] == b
        and in_spec[:-1] == out_spec[:-1]
        and b not in in_spec
        and (layer.bias_axes or b) == b
    )


def _layout(layer):
    """Where a kernel holds a neuron's incoming weights and an input
    channel's outgoing weights: `"dense"` (`(..., in, out)`),
    `"transpose"` (`(..., out, in)`), `"depthwise"` (`(..., in,
    multiplier)`: neuron `c * multiplier + m`), or None if not known."""
    if isinstance(layer, FeedbackKernel):
        if not isinstance(layer._owner(), _SEPARABLE):
            return None
        return (
            "depthwise" if layer.kernel_name == "depthwise_kernel" else "dense"
        )
    if isinstance(layer, _TRANSPOSE):
        return "transpose"
    if isinstance(layer, _DEPTHWISE):
        return "depthwise"
    if isinstance(layer, keras.layers.EinsumDense):
        return "dense" if _is_dense_einsum(layer) else None
    if isinstance(layer, _DENSE):
        return "dense"
    return None


def _neurons(layer):
    shape = tuple(layer.kernel.shape)
    layout = _layout(layer)
    if layout == "depthwise":
        return shape[-2] * shape[-1]
    return shape[-2] if layout == "transpose" else shape[-1]


def _channels_first(layer):
    return getattr(layer, "data_format", None) == "channels_first"


class _Pair:
    """Hidden neurons with a conservation law: their incoming weights are in
    `layer`'s kernel (with `bias`), their outgoing weights in `next_layer`'s.
    `flattened` is None, or the order of the channels in a Flatten between
    the two: `"channels_last"` or `"channels_first"`."""

    def __init__(self, layer, next_layer, bias=None, flattened=None):
        self.layer = layer
        self.next_layer = next_layer
        self.bias = bias
        self.flattened = flattened
        self.size = _neurons(layer)

    def pair_layers(self):
        return [self.layer, self.next_layer]

    def potential(self, kernel, backward):
        if isinstance(self.next_layer, FeedbackMixin):
            return self.next_layer.feedback.conservation_potential(
                kernel, backward
            )
        return tied_feedback_potential(kernel, kernel)


def _graph(model):
    functional = getattr(model, "_functional", None) or model
    nodes_by_depth = getattr(functional, "_nodes_by_depth", None)
    if not nodes_by_depth:
        return None
    nodes = [node for level in nodes_by_depth.values() for node in level]
    consumers, producers = {}, {}
    for node in nodes:
        for tensor in node.input_tensors:
            users = consumers.setdefault(id(tensor), [])
            if not any(user is node for user in users):
                users.append(node)
        producers.setdefault(id(node.operation), []).append(node)
    outputs = {id(t) for t in keras.tree.flatten(functional.outputs)}
    return consumers, producers, outputs


def _kernel_ops(units):
    """`{id(layer): (kernel unit of its outputs, kernel unit of its inputs,
    bias of its outputs)}` for the layers that hold kernel units (a
    separable convolution holds two)."""
    ops_ = {}
    by_id = {id(layer): layer for _, layer, _ in units}
    for _, layer, _ in units:
        if isinstance(layer, FeedbackKernel):
            owner = layer._owner()
            if not isinstance(owner, _SEPARABLE):
                continue
            depthwise = owner.depthwise_feedback
            pointwise = owner.pointwise_feedback
            if id(depthwise) in by_id and id(pointwise) in by_id:
                ops_[id(owner)] = (pointwise, depthwise, owner.bias)
        else:
            ops_[id(layer)] = (layer, layer, getattr(layer, "bias", None))
    return ops_


def _follow(operation, graph, kernel_ops):
    """Returns the `_Pair` of the hidden neurons of the kernel layer
    `operation`, or why their law does not hold."""
    consumers, producers, outputs = graph
    layer, _, bias = kernel_ops[id(operation)]
    if _layout(layer) is None:
        return "its layout of incoming weights is not known " + (
            f"(einsum {layer.equation!r} is not a Dense on the last axis)"
            if isinstance(layer, keras.layers.EinsumDense)
            else f"({type(layer).__name__})"
        )
    nodes = producers.get(id(operation), ())
    if len(nodes) != 1:
        return f"its layer is called {len(nodes)} times in the model"
    tensor = nodes[0].outputs[0]
    if id(tensor) in outputs:
        return _OUTPUTS
    activation = getattr(operation, "activation", None)
    if not _is_homogeneous_activation(activation):
        name = getattr(activation, "__name__", activation)
        return f"its activation, {name}, is not positively homogeneous"
    channels_first = _channels_first(operation) and len(tensor.shape) > 2
    flattened = None
    while True:
        users = consumers.get(id(tensor), [])
        if len(users) != 1:
            return f"its outputs feed {len(users)} layers, not one"
        node = users[0]
        next_op = node.operation
        if id(next_op) in kernel_ops:
            return _pair(
                layer, bias, next_op, kernel_ops, flattened, channels_first
            )
        if not _passes_law(next_op) or len(node.outputs) != 1:
            return (
                f"its outputs reach {next_op.name!r} "
                f"({type(next_op).__name__}) before the next kernel; the law "
                "passes only positively homogeneous, channel-wise layers "
                "(ReLU, leaky ReLU, linear, pooling, dropout, flatten)"
            )
        if (
            isinstance(next_op, _POOLING)
            and flattened is None
            and (_channels_first(next_op) != channels_first)
        ):
            return f"{next_op.name!r} pools over the channel axis"
        if isinstance(next_op, _GLOBAL_POOLING) and not next_op.keepdims:
            channels_first = False
        if isinstance(next_op, keras.layers.Flatten) and flattened is None:
            # Flatten(data_format="channels_first") moves channels last.
            flattened = (
                "channels_first"
                if channels_first and not _channels_first(next_op)
                else "channels_last"
            )
        tensor = node.outputs[0]
        if id(tensor) in outputs:
            return _OUTPUTS


def _pair(layer, bias, next_op, kernel_ops, flattened, channels_first):
    next_layer = kernel_ops[id(next_op)][1]
    name = repr(next_op.name)
    if _lora(next_layer):
        return f"the next kernel ({name}) has {_LORA}"
    layout = _layout(next_layer)
    if layout is None:
        return f"the next kernel's ({name}) layout is not known"
    if getattr(next_op, "groups", 1) != 1:
        return f"the next kernel ({name}) is a grouped convolution"
    size = _neurons(layer)
    kernel_shape = tuple(next_layer.kernel.shape)
    if flattened is not None:
        if len(kernel_shape) != 2:
            return f"the next kernel ({name}) convolves flattened channels"
        if kernel_shape[0] % size:
            return f"the next kernel ({name}) does not read the channels"
    else:
        if _channels_first(next_op) != channels_first:
            return f"the next kernel ({name}) reads another axis as channels"
        axis = -1 if layout == "transpose" else -2
        if kernel_shape[axis] != size:
            return f"the next kernel ({name}) does not read the channels"
    pair = _Pair(layer, next_layer, bias, flattened)
    if not _potential_known(pair):
        return (
            f"the next kernel's ({name}) rule, {next_layer.feedback.name!r}, "
            "has no conservation law"
        )
    return pair


def _potential_known(pair):
    kernel = ops.ones((1, 1))
    return pair.potential(kernel, kernel) is not None


def _conservation(model, units):
    """Returns `({key: _Pair}, {key: status})` for the kernel units."""
    graph = _graph(model)
    kernel_ops = _kernel_ops(units)
    top = {
        id(layer): layer
        for layer in model._flatten_layers(include_self=False, recursive=False)
    }
    # The model's layer whose outputs are each kernel unit's neurons.
    outgoing = {id(out): top.get(op) for op, (out, _, _) in kernel_ops.items()}
    pairs, status = {}, {}
    for key, layer, parents in units:
        owner = layer._owner() if isinstance(layer, FeedbackKernel) else None
        if _lora(layer):
            found = _LORA
        elif (
            owner is not None
            and layer is getattr(owner, "depthwise_feedback", None)
            and id(owner) in kernel_ops
        ):
            # Nothing between a separable convolution's two products.
            found = _Pair(layer, owner.pointwise_feedback)
            if not _potential_known(found):
                found = (
                    f"the pointwise kernel's rule, {owner.feedback.name!r}, "
                    "has no conservation law"
                )
        elif any(isinstance(p, _ATTENTION) for p in parents):
            found = (
                "an attention projection: its outputs meet the other "
                "projections' in the scores' product, softmax and weighted "
                "sum, not in positively homogeneous, channel-wise layers "
                "into a next kernel"
            )
        elif outgoing.get(id(layer)) is not None:
            if graph is None:
                found = (
                    "the model has no graph of layers to follow "
                    "(subclassed model)"
                )
            else:
                found = _follow(outgoing[id(layer)], graph, kernel_ops)
        else:
            parent = parents[-1] if parents else model
            found = (
                f"it is inside {parent.name!r} "
                f"({type(parent).__name__}), whose layers are not followed"
            )
        if isinstance(found, _Pair):
            pairs[key] = found
            status[key] = HOLDS
        else:
            status[key] = f"not applicable: {found}"
    return pairs, status


class Alignment:
    """Measures the alignment of a keras_fa model's kernels with backprop.

    It finds, once, the model's kernels (those of its layers and of their
    sub-layers: a separable convolution's two, an attention layer's
    projections), their feedback rules, the points where each kernel's error
    signal can be read, and the hidden neurons that obey a conservation law
    (kernels chained through positively homogeneous activations, pooling,
    dropout or flatten, in a Sequential or functional model; see
    `conservation_status`). Measurements are compiled functions of the
    model's current variables (jit on jax, a tf.function on tensorflow,
    eager on torch); they never change the model, its random state or its
    optimizer.

    Args:
        model: a Keras model with keras_fa layers or direct feedback, built.
            `measure` and `gradients` also need it compiled with a loss.
        share: optional hashable key. On jax, whose compiled functions are
            pure, meters of models built alike (same layers, rules, loss)
            and given the same key share their compiled functions, so a new
            model of a known structure is measured without compiling. Give
            one key per structure; ignored on the other backends.

    Example:

    >>> meter = keras_fa.alignment.Alignment(model)
    >>> meter.reset_reference()          # Q(0) for the drift
    >>> model.fit(x, y, epochs=5)
    >>> meter.measure(x[:256], y[:256])  # {"dense/update_angle": 41.2, ...}
    >>> meter.conservation_status        # {"dense": "holds", ...}
    """

    def __init__(self, model, share=None):
        _check_model(model)
        try:
            hash(share)
        except TypeError as error:
            raise TypeError(
                "`share` must be a hashable key (e.g. a string or a tuple) "
                f"or None. Received: share={share!r}"
            ) from error
        if not model.built:
            raise ValueError(
                "Build the model before measuring its alignment: call it on "
                "data, or start it with keras.Input."
            )
        self.model = model
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        units = _kernel_units(model, index)
        self._keys = {id(layer): key for key, layer, _ in units}
        self._layer_names = [key for key, _, _ in units]
        # The variables whose gradients are each kernel's update.
        self._kernel_index = {
            key: [index[id(v)] for v in _trained_by(layer)]
            for key, layer, _ in units
        }
        self._trainable_ids = [id(v) for v in model.trainable_variables]
        self._feedback_layers = [
            layer for _, layer, _ in units if isinstance(layer, FeedbackMixin)
        ]
        self._signal_keys, self._aliases = self._find_signals(model, units)
        pairs, self._conservation_status = _conservation(model, units)
        self._pairs = list(pairs.items())
        # The weight measures read only these variables.
        self._weight_variables = []
        seen = set()

        def add(variables):
            for variable in variables:
                # With LoRA, `layer.kernel` is the merged tensor; its
                # variables are among `layer.variables`.
                if (
                    isinstance(variable, keras.Variable)
                    and id(variable) not in seen
                ):
                    seen.add(id(variable))
                    self._weight_variables.append(variable)

        for layer in self._feedback_layers:
            add([layer.kernel, *layer.variables])
        for _, pair in self._pairs:
            add([pair.bias])
            for layer in pair.pair_layers():
                add([layer.kernel, *layer.variables])
        self.reference = None
        self._shapes = {}
        self._output_shapes = {}
        self._loss_checked = set()
        self._functions = {}
        self._rewind = _no_op
        self._share = share if backend.STATELESS_OPTIMIZER else None

    # -- discovery --------------------------------------------------------

    def _find_signals(self, model, units):
        keys = {}
        for layer in self._feedback_layers:
            keys[self._keys[id(layer)]] = tracing.probe_key(layer)
        aliases = {}
        layers = list(model._flatten_layers(include_self=False))
        kernel_layers = [layer for _, layer, _ in units]
        blocks = [layer for layer in layers if isinstance(layer, BlockGradient)]
        for head in layers:
            if not isinstance(head, DirectFeedback) or not head._inbound_nodes:
                continue
            taps = head._inbound_nodes[0].input_tensors[1:]
            for i, tap in enumerate(taps):
                owner = _kernel_layer_above(tap, kernel_layers)
                if owner is None or self._keys[id(owner)] in keys:
                    continue
                key = self._keys[id(owner)]
                keys[key] = tracing.probe_key(head, i)
                for block in blocks:
                    nodes = block._inbound_nodes
                    if nodes and nodes[0].input_tensors[0] is tap:
                        aliases[tracing.probe_key(block)] = keys[key]
        return keys, aliases

    @property
    def layer_names(self):
        """Names of the kernels, in the model's order: the keys of the
        measures (`"<name>/<measure>"`)."""
        return list(self._layer_names)

    @property
    def conservation_layers(self):
        """Names of the kernels whose neurons have a conservation law."""
        return [key for key, _ in self._pairs]

    @property
    def conservation_status(self):
        """`{kernel name: status}` for every kernel: `"holds"` where its
        hidden neurons have a conservation law (and conservation measures),
        `"not applicable: <reason>"` elsewhere (and no conservation
        measures)."""
        return dict(self._conservation_status)

    # -- state ------------------------------------------------------------

    def _is_current(self):
        return [
            id(v) for v in self.model.trainable_variables
        ] == self._trainable_ids

    def _check_current(self):
        if not self._is_current():
            raise ValueError(
                "The model's trainable variables changed since this "
                "Alignment was made (LoRA enabled, a layer frozen or "
                "unfrozen): make a new `Alignment(model)` "
                "(`keras_fa.alignment.measure` and the callbacks do so "
                "themselves)."
            )

    def _state(self):
        model = self.model
        self._check_current()
        # On jax, model.fit keeps the variables outside the model between
        # epochs; bring them back first.
        if hasattr(model, "jax_state_sync"):
            model.jax_state_sync()
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
        )

    def _mapping(self, trainable, non_trainable):
        model = self.model
        return list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable)
        )

    def _probe_shapes(self, x):
        key = tuple(
            tuple(ops.shape(t)) for t in keras.tree.flatten(x) if t is not None
        )
        if key not in self._shapes:
            trainable, non_trainable, _ = self._state()
            with (
                tracing.recording() as shapes,
                tracing.exact_backprop(),
                backend.preserve_random_state(),
            ):
                outputs, _ = self.model.stateless_call(
                    trainable, non_trainable, x
                )
            self._shapes[key] = {
                name: shapes[k]
                for name, k in self._signal_keys.items()
                if k in shapes
            }
            self._output_shapes[key] = [
                tuple(t.shape) for t in keras.tree.flatten(outputs)
            ]
        return key, self._shapes[key]

    # -- traced computations ----------------------------------------------

    def _weights(self, mapping):
        # Three sums per kernel (W.W, B.B, W.B) give both measures; the
        # training loop runs this every step, so it reads each kernel once.
        out, kernels = {}, {}
        with keras.StatelessScope(state_mapping=mapping):
            for layer in self._feedback_layers:
                w, b = kernels[id(layer)] = _kernels(layer)
                if layer.feedback.exact:
                    angle, ratio = ops.zeros(()), ops.ones(())
                else:
                    ww = ops.sum(ops.square(w))
                    bb = ops.sum(ops.square(b))
                    angle = _angle_from_sums(ww, bb, ops.sum(w * b))
                    ratio = ops.sqrt(bb / ww)
                key = self._keys[id(layer)]
                out[f"{key}/weight_angle"] = angle
                out[f"{key}/norm_ratio"] = ratio
            q = {key: _neuron_q(pair, kernels) for key, pair in self._pairs}
        return out, q

    def _gradients(self, state, x, y, sample_weight, shapes, exact):
        model = self.model
        trainable, non_trainable, metrics = state
        names = list(shapes)
        zeros = [ops.zeros(shapes[name], dtype="float32") for name in names]
        # Both passes draw the same unseeded random numbers (torch dropout).
        self._rewind()

        def loss_fn(diff, non_trainable, metrics, x, y, sample_weight):
            trainable, probes = diff
            by_key = {self._signal_keys[n]: p for n, p in zip(names, probes)}
            for alias, key in self._aliases.items():
                if key in by_key:
                    by_key[alias] = by_key[key]
            mode = (
                tracing.exact_backprop() if exact else contextlib.nullcontext()
            )
            kwargs = {"training": True} if model._call_has_training_arg else {}
            with mode, tracing.probing(by_key):
                y_pred, _, losses = model.stateless_call(
                    trainable,
                    non_trainable,
                    x,
                    return_losses=True,
                    **kwargs,
                )
                if losses:
                    model._losses_override.clear()
                    model._losses_override = losses
                loss, _ = model.stateless_compute_loss(
                    trainable,
                    non_trainable,
                    metrics,
                    x=x,
                    y=y,
                    y_pred=y_pred,
                    sample_weight=sample_weight,
                    training=True,
                )
                if losses:
                    model._losses_override.clear()
            return loss, ()

        loss, _, (d_trainable, d_probes) = backend.value_and_grad(
            loss_fn,
            [list(trainable), zeros],
            list(non_trainable),
            list(metrics),
            x,
            y,
            sample_weight,
        )
        return loss, list(d_trainable), dict(zip(names, d_probes))

    def _measure_fn(self, shapes):
        def measure(state, x, y, sample_weight):
            trainable, non_trainable, _ = state
            out, q = self._weights(self._mapping(trainable, non_trainable))
            _, rule_grads, rule_signals = self._gradients(
                state, x, y, sample_weight, shapes, exact=False
            )
            _, true_grads, true_signals = self._gradients(
                state, x, y, sample_weight, shapes, exact=True
            )
            for name in self._layer_names:
                if name in rule_signals:
                    out[f"{name}/signal_angle"] = _angle(
                        rule_signals[name], true_signals[name]
                    )
                i = self._kernel_index[name]
                out[f"{name}/update_angle"] = _angle(
                    _concat(rule_grads, i), _concat(true_grads, i)
                )
            return _flatten(out, q)

        return backend.compile_function(measure, differentiable=False)

    def _weights_fn(self):
        def weights(values):
            return _flatten(
                *self._weights(list(zip(self._weight_variables, values)))
            )

        return backend.compile_function(weights, differentiable=False)

    def _compiled(self, key, shapes, kind):
        if (key, kind) not in self._functions:
            shared = None if self._share is None else (self._share, key, kind)
            if shared in _SHARED:
                _SHARED.move_to_end(shared)
                fn = _SHARED[shared]
            elif kind == "gradients":
                fn = self._gradients_fn(shapes)
            elif kind == "weights":
                fn = self._weights_fn()
            else:
                fn = self._measure_fn(shapes)
            if shared is not None:
                _SHARED[shared] = fn
                while len(_SHARED) > _SHARED_SIZE:
                    _SHARED.popitem(last=False)
            self._functions[(key, kind)] = fn
        return self._functions[(key, kind)]

    def _gradients_fn(self, shapes):
        def gradients(state, x, y, sample_weight, exact):
            return self._gradients(state, x, y, sample_weight, shapes, exact)

        rule = backend.compile_function(
            lambda state, x, y, sw: gradients(state, x, y, sw, False)
        )
        true = backend.compile_function(
            lambda state, x, y, sw: gradients(state, x, y, sw, True)
        )
        return rule, true

    # -- public API ---------------------------------------------------------

    @contextlib.contextmanager
    def _replaying(self):
        # The global random state (torch's unseeded dropout) is replayed for
        # each pass and restored after: training never sees a measurement.
        with backend.preserve_random_state() as rewind:
            self._rewind = rewind
            try:
                yield
            finally:
                self._rewind = _no_op

    def _check_compiled(self):
        if not getattr(self.model, "compiled", False):
            raise ValueError(
                "Gradient-based alignment measures need the loss: compile "
                "the model first, e.g. model.compile(optimizer, loss)."
            )

    def check_batch(self, x, y, sample_weight=None, name=None):
        """Checks a batch before it is measured: `check_data`, then that
        the model takes `x`, that sparse labels are classes of the model's
        output, and that the loss takes `y` (and `sample_weight`). Runs
        the model forward once for each new shape of the data. Raises a
        `ValueError` naming the part of the data (`name`, e.g.
        `"probe_data"`, is the argument it came in).

        Returns:
            `(x, y, sample_weight)` as tensors.
        """
        self._check_current()
        check_data(x, y, sample_weight, name=name)
        x, y, sample_weight = self._prepare(x, y, sample_weight)
        _check_labels(self.model, y, self._output_spec(x, name), name)
        shapes = tuple(
            tuple(ops.shape(t))
            for t in keras.tree.flatten((x, y, sample_weight))
            if t is not None
        )
        if shapes not in self._loss_checked and self.model.compiled:
            self._check_loss(x, y, sample_weight, name)
            self._loss_checked.add(shapes)
        return x, y, sample_weight

    def _check_loss(self, x, y, sample_weight, name):
        # Outside the compiled measurement, where an error would come
        # wrapped in the backend's trace; stateless, as a measurement.
        trainable, non_trainable, _ = self._state()
        with backend.preserve_random_state():
            y_pred, _ = self.model.stateless_call(trainable, non_trainable, x)
        try:
            # `training` left out: an override need not take it.
            self.model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
            )
        except Exception as error:
            shapes = [tuple(t.shape) for t in keras.tree.flatten(y)]
            outputs = [tuple(t.shape) for t in keras.tree.flatten(y_pred)]
            raise ValueError(
                f"The model's loss cannot take {_part('y', name)} (shape "
                f"{', '.join(map(str, shapes))}) with the model's outputs "
                f"(shape {', '.join(map(str, outputs))}): {error}"
            ) from error

    def _output_spec(self, x, name=None):
        # The shapes of the model's outputs on `x` (a forward pass per
        # input shape, reused by the measurements).
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        try:
            key, _ = self._probe_shapes(x)
        except Exception as error:
            shapes = [tuple(t.shape) for t in keras.tree.flatten(x)]
            raise ValueError(
                f"The model cannot take {_part('x', name)} (shape"
                f"{'s' if len(shapes) > 1 else ''} "
                f"{', '.join(map(str, shapes))}): {error}"
            ) from error
        return self._output_shapes[key]

    def _prepare(self, x, y, sample_weight):
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        y = keras.tree.map_structure(ops.convert_to_tensor, y)
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight)
        return x, y, sample_weight

    def gradients(self, x, y, sample_weight=None, exact=False):
        """Returns the gradients of the model's loss on one batch.

        Args:
            x: input batch.
            y: targets.
            sample_weight: optional per-example weights.
            exact: True for the true backprop gradient, False for the one
                the model's rules give (what `model.fit` applies).

        Returns:
            `(gradients, signals)`: a list of numpy arrays, one per
            `model.trainable_variables` (zeros where a variable gets no
            gradient), and a dict from kernel name (see `layer_names`) to
            the error signal delta that kernel's product receives (see the
            module docstring).
        """
        if not isinstance(exact, (bool, np.bool_)):
            raise ValueError(
                f"`exact` must be True or False. Received: exact={exact!r}"
            )
        self._check_compiled()
        x, y, sample_weight = self.check_batch(x, y, sample_weight)
        key, shapes = self._probe_shapes(x)
        rule, true = self._compiled(key, shapes, "gradients")
        fn = true if exact else rule
        with self._replaying():
            _, grads, signals = fn(self._state(), x, y, sample_weight)
        to_numpy = ops.convert_to_numpy
        return (
            [to_numpy(g) for g in grads],
            {name: to_numpy(s) for name, s in signals.items()},
        )

    def conservation(self):
        """Returns `{kernel name: Q_i per neuron}` (numpy) for the kernels
        whose neurons have a conservation law (see `conservation_status`)."""
        _, q = self._run_weights()
        return q

    def reset_reference(self):
        """Takes the current per-neuron Q as Q(0) of the drift measures."""
        self.reference = self.conservation()
        return self.reference

    def _run_weights(self):
        self._check_current()
        fn = self._compiled(None, None, "weights")
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        flat = fn([v.value for v in self._weight_variables])
        return self._unflatten(flat)

    def _unflatten(self, flat, signals=None):
        # One array comes back from the device; the layout is known here.
        flat = np.asarray(ops.convert_to_numpy(flat), dtype=np.float64)
        out, q, i = {}, {}, 0
        for key in self._scalar_keys(signals):
            out[key] = float(flat[i])
            i += 1
        for key, pair in self._pairs:
            q[key] = flat[i : i + pair.size]
            i += pair.size
        assert i == flat.size, "alignment measures: layout mismatch"
        return out, q

    def weights(self):
        """Returns the measures that need no data: `weight_angle`,
        `norm_ratio` and the conservation measures, keyed
        `"<layer>/<measure>"`. Cheap: a few norms of the weights."""
        out, q = self._run_weights()
        return self._ordered({**out, **self._conservation_measures(q)})

    def measure(self, x, y, sample_weight=None):
        """Returns every measure on one batch, keyed `"<layer>/<measure>"`.

        Runs the model twice on the batch (with its rules, and as exact
        backprop), in one compiled function.

        Args:
            x: input batch.
            y: targets.
            sample_weight: optional per-example weights.

        Returns:
            A dict of Python floats, in the model's layer order.
        """
        self._check_compiled()
        x, y, sample_weight = self.check_batch(x, y, sample_weight)
        key, shapes = self._probe_shapes(x)
        fn = self._compiled(key, shapes, "measure")
        with self._replaying():
            flat = fn(self._state(), x, y, sample_weight)
        out, q = self._unflatten(flat, signals=shapes)
        return self._ordered({**out, **self._conservation_measures(q)})

    def _scalar_keys(self, signals):
        # The order in which `_weights` and `_measure_fn` fill their dict.
        keys = []
        for layer in self._feedback_layers:
            key = self._keys[id(layer)]
            keys += [f"{key}/weight_angle", f"{key}/norm_ratio"]
        if signals is not None:
            for name in self._layer_names:
                if name in signals:
                    keys.append(f"{name}/signal_angle")
                keys.append(f"{name}/update_angle")
        return keys

    def _conservation_measures(self, q):
        out = {}
        for name, values in q.items():
            out[f"{name}/conservation"] = float(np.sum(values))
            if self.reference is not None and name in self.reference:
                drift = values - self.reference[name]
                out[f"{name}/conservation_drift"] = float(np.sum(drift))
                out[f"{name}/conservation_drift_max"] = float(
                    np.max(np.abs(drift))
                )
        return out

    def _ordered(self, values):
        order = {name: i for i, name in enumerate(self._layer_names)}
        rank = {m: i for i, m in enumerate(MEASURES)}

        def sort_key(item):
            name, measure = item[0].rsplit("/", 1)
            return order.get(name, len(order)), rank.get(measure, len(rank))

        return dict(sorted(values.items(), key=sort_key))


def _no_op():
    pass


def _flatten(out, q):
    # Scalars in insertion order, then each layer's Q: one array to fetch.
    parts = [ops.reshape(ops.cast(v, "float32"), (1,)) for v in out.values()]
    parts += [ops.cast(v, "float32") for v in q.values()]
    if not parts:
        return ops.zeros((0,), dtype="float32")
    return ops.concatenate(parts)


def _kernel_layer_above(tensor, kernel_layers):
    # Walks from a tapped activation up to the layer with a kernel that made
    # it (through activations, pooling, normalization...).
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        operation = history.operation
        if any(operation is layer for layer in kernel_layers):
            return operation
        node = operation._inbound_nodes[history.node_index]
        if len(node.input_tensors) != 1:
            return None
        tensor = node.input_tensors[0]


def _kernels(layer):
    # W and the B the layer's rule uses, read inside a StatelessScope.
    w = ops.cast(_value(layer.kernel), "float32")
    if layer.feedback.exact:
        return w, w
    feedback = [
        ops.cast(_value(t), "float32")
        for t in layer.feedback.feedback_inputs(layer)
    ]
    return w, layer.feedback.backward_kernel(w, *feedback)


def _neuron_q(pair, kernels):
    layer, next_layer = pair.layer, pair.next_layer
    w = ops.cast(_value(layer.kernel), "float32")
    channels = pair.size
    layout = _layout(layer)
    if layout == "transpose":
        # (..., out, in): neuron j's incoming weights are [..., j, :].
        rank = len(w.shape)
        w = ops.transpose(w, (*range(rank - 2), rank - 1, rank - 2))
    # Depthwise (..., in, multiplier): neuron c * multiplier + m.
    q = ops.sum(ops.square(ops.reshape(w, (-1, channels))), axis=0)
    if pair.bias is not None:
        q = q + ops.square(ops.cast(_value(pair.bias), "float32"))
    if id(next_layer) in kernels:
        w_next, b_next = kernels[id(next_layer)]
    elif isinstance(next_layer, FeedbackMixin):
        w_next, b_next = _kernels(next_layer)
    else:
        w_next = ops.cast(_value(next_layer.kernel), "float32")
        b_next = w_next
    phi = pair.potential(w_next, b_next)
    if pair.flattened == "channels_first":
        n_out = phi.shape[-1]
        phi = ops.sum(ops.reshape(phi, (channels, -1, n_out)), axis=(1, 2))
    elif pair.flattened == "channels_last":
        n_out = phi.shape[-1]
        phi = ops.sum(ops.reshape(phi, (-1, channels, n_out)), axis=(0, 2))
    else:
        # Sum over everything but the input channels: axis -2 of
        # (..., in, out) and of depthwise kernels, -1 of transposed ones.
        axis = -1 if _layout(next_layer) == "transpose" else -2
        phi = ops.moveaxis(phi, axis, 0)
        phi = ops.sum(ops.reshape(phi, (channels, -1)), axis=1)
    return q - 2.0 * phi


_METERS = weakref.WeakKeyDictionary()
# Compiled functions shared by meters given a `share` key (jax only).
_SHARED = collections.OrderedDict()
_SHARED_SIZE = 24


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Alignment measures a keras.Model. Received: "
            f"{type(model).__name__}"
        )


def _meter(model):
    _check_model(model)
    meter = _METERS.get(model)
    if meter is None or not meter._is_current():
        meter = _METERS[model] = Alignment(model)
    return meter


def measure(model, x, y, sample_weight=None):
    """Returns every alignment measure of `model` on one batch.

    A shortcut for `Alignment(model).measure(x, y)`, with the `Alignment`
    kept for the model (so its compiled function is reused). Conservation
    drift is reported once `reset_reference()` has been called on
    `keras_fa.alignment.Alignment` (the callbacks do it at the start of
    training).

    Example:

    >>> keras_fa.alignment.measure(model, x[:256], y[:256])
    {'dense/weight_angle': 88.7, 'dense/norm_ratio': 0.98, ...}
    """
    return _meter(model).measure(x, y, sample_weight)


def gradients(model, x, y, sample_weight=None):
    """Returns the gradients the model's rules give on one batch.

    A list of numpy arrays, one per `model.trainable_variables`: what
    `model.fit` would hand to the optimizer. See `true_gradients`.
    """
    return _meter(model).gradients(x, y, sample_weight, exact=False)[0]


def true_gradients(model, x, y, sample_weight=None):
    """Returns the true (backprop) gradients of the model's loss on a batch.

    The same model is traced as exact backprop: feedback rules act as bp,
    direct feedback passes the gradient through the forward layers. Works on
    every backend with no backend code. A list of numpy arrays, one per
    `model.trainable_variables` (zeros for feedback variables, which backprop
    does not have).

    Example:

    >>> true = keras_fa.alignment.true_gradients(model, x[:128], y[:128])
    >>> used = keras_fa.alignment.gradients(model, x[:128], y[:128])
    >>> keras_fa.alignment.angle(true[0], used[0])  # first kernel, degrees
    """
    return _meter(model).gradients(x, y, sample_weight, exact=True)[0]
