"""The conservation law of Robertson & Koyejo: which kernels it holds for,
and the quantity Q it conserves, per hidden neuron.

The law is derived for a hidden neuron whose pre-activation is linear in
its incoming weights and bias, and whose output reaches the next kernel's
input axis only through positively homogeneous, channel-wise operations;
see the `keras_fa.alignment` docstring for where it holds.
"""

import keras
from keras import ops

from keras_fa.alignment import discovery
from keras_fa.alignment.measures import kernels
from keras_fa.alignment.measures import value
from keras_fa.feedback.base import tied_feedback_potential
from keras_fa.layers.base import FeedbackKernel
from keras_fa.layers.base import FeedbackMixin

#: `Alignment.conservation_status` of a kernel whose law holds.
HOLDS = "holds"
_OUTPUTS = "its outputs are the model's outputs"
#: The status of a kernel whose outputs are the model's: no hidden neurons.
OUTPUT_KERNEL = f"not applicable: {_OUTPUTS}"
_LORA = (
    "LoRA is enabled: its kernel W0 + A B * alpha / rank learns through "
    "the factors A and B, for which the law is not derived"
)
_ATTENTION_REASON = (
    "an attention projection: its outputs meet the other projections' in "
    "the scores' product, softmax and weighted sum, not in positively "
    "homogeneous, channel-wise layers into a next kernel"
)

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


def layout(layer):
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
    kind = layout(layer)
    if kind == "depthwise":
        return shape[-2] * shape[-1]
    return shape[-2] if kind == "transpose" else shape[-1]


def _channels_first(layer):
    return getattr(layer, "data_format", None) == "channels_first"


class Pair:
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
        """The two layers whose kernels the neurons' Q reads."""
        return [self.layer, self.next_layer]

    def potential(self, kernel, backward):
        """The next kernel's rule's `conservation_potential` (bp's for a
        layer without a rule), or None if the rule has no law."""
        if isinstance(self.next_layer, FeedbackMixin):
            return self.next_layer.feedback.conservation_potential(
                kernel, backward
            )
        return tied_feedback_potential(kernel, kernel)


def _potential_known(pair):
    kernel = ops.ones((1, 1))
    return pair.potential(kernel, kernel) is not None


# -- where the law holds -------------------------------------------------


def find_pairs(model, units):
    """Returns `({key: Pair}, {key: status})` for the kernel units (see
    `discovery.kernel_units`): a `Pair` where the law holds, and for every
    kernel `HOLDS` or `"not applicable: <reason>"`."""
    graph = discovery.graph(model)
    kernel_ops = _kernel_ops(units)
    top = {id(layer): layer for layer in model.layers}
    # The model's layer whose outputs are each kernel unit's neurons.
    outgoing = {id(out): top.get(op) for op, (out, _, _) in kernel_ops.items()}
    pairs, status = {}, {}
    for key, layer, parents in units:
        found = _pair_of(model, layer, parents, graph, kernel_ops, outgoing)
        if isinstance(found, Pair):
            pairs[key] = found
            status[key] = HOLDS
        else:
            status[key] = f"not applicable: {found}"
    return pairs, status


def _pair_of(model, layer, parents, graph, kernel_ops, outgoing):
    # The Pair of a kernel unit's neurons, or why the law does not hold.
    owner = layer._owner() if isinstance(layer, FeedbackKernel) else None
    if discovery.is_lora(layer):
        return _LORA
    if (
        owner is not None
        and layer is getattr(owner, "depthwise_feedback", None)
        and id(owner) in kernel_ops
    ):
        return _separable_pair(layer, owner)
    if any(isinstance(p, _ATTENTION) for p in parents):
        return _ATTENTION_REASON
    if outgoing.get(id(layer)) is None:
        parent = parents[-1] if parents else model
        return (
            f"it is inside {parent.name!r} "
            f"({type(parent).__name__}), whose layers are not followed"
        )
    if graph is None:
        return "the model has no graph of layers to follow (subclassed model)"
    return _follow(outgoing[id(layer)], graph, kernel_ops)


def _separable_pair(depthwise, owner):
    # Nothing between a separable convolution's two products.
    pair = Pair(depthwise, owner.pointwise_feedback)
    if not _potential_known(pair):
        return (
            f"the pointwise kernel's rule, {owner.feedback.name!r}, "
            "has no conservation law"
        )
    return pair


def _kernel_ops(units):
    """`{id(layer): (kernel unit of its outputs, kernel unit of its inputs,
    bias of its outputs)}` for the layers that hold kernel units (a
    separable convolution holds two)."""
    found = {}
    by_id = {id(layer): layer for _, layer, _ in units}
    for _, layer, _ in units:
        if isinstance(layer, FeedbackKernel):
            owner = layer._owner()
            if not isinstance(owner, _SEPARABLE):
                continue
            depthwise = owner.depthwise_feedback
            pointwise = owner.pointwise_feedback
            if id(depthwise) in by_id and id(pointwise) in by_id:
                found[id(owner)] = (pointwise, depthwise, owner.bias)
        else:
            found[id(layer)] = (layer, layer, getattr(layer, "bias", None))
    return found


def _follow(operation, graph, kernel_ops):
    """Returns the `Pair` of the hidden neurons of the kernel layer
    `operation`, or why their law does not hold."""
    _, producers, outputs = graph
    layer, _, bias = kernel_ops[id(operation)]
    if layout(layer) is None:
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
    return _walk(tensor, layer, bias, channels_first, graph, kernel_ops)


def _walk(tensor, layer, bias, channels_first, graph, kernel_ops):
    # Follows the kernel's outputs through the layers the law passes to
    # the next kernel.
    consumers, _, outputs = graph
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
    if discovery.is_lora(next_layer):
        return f"the next kernel ({name}) has {_LORA}"
    kind = layout(next_layer)
    if kind is None:
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
        axis = -1 if kind == "transpose" else -2
        if kernel_shape[axis] != size:
            return f"the next kernel ({name}) does not read the channels"
    pair = Pair(layer, next_layer, bias, flattened)
    if not _potential_known(pair):
        return (
            f"the next kernel's ({name}) rule, {next_layer.feedback.name!r}, "
            "has no conservation law"
        )
    return pair


# -- the conserved quantity -----------------------------------------------


def neuron_q(pair, read):
    """Q per neuron of a pair: `|w_in|^2 + b^2 - 2 sum(phi(w_out))`.

    `read` is `{id(layer): (W, B)}` of the kernels already read; the next
    kernel is read here otherwise. Call inside a StatelessScope.
    """
    w = ops.cast(value(pair.layer.kernel), "float32")
    channels = pair.size
    if layout(pair.layer) == "transpose":
        # (..., out, in): neuron j's incoming weights are [..., j, :].
        rank = len(w.shape)
        w = ops.transpose(w, (*range(rank - 2), rank - 1, rank - 2))
    # Depthwise (..., in, multiplier): neuron c * multiplier + m.
    q = ops.sum(ops.square(ops.reshape(w, (-1, channels))), axis=0)
    if pair.bias is not None:
        q = q + ops.square(ops.cast(value(pair.bias), "float32"))
    return q - 2.0 * _outgoing(pair, read)


def _outgoing(pair, read):
    # sum(phi(w_out)) per neuron: phi summed over all but the neuron's axis.
    next_layer, channels = pair.next_layer, pair.size
    if id(next_layer) in read:
        w_next, b_next = read[id(next_layer)]
    elif isinstance(next_layer, FeedbackMixin):
        w_next, b_next = kernels(next_layer)
    else:
        w_next = ops.cast(value(next_layer.kernel), "float32")
        b_next = w_next
    phi = pair.potential(w_next, b_next)
    if pair.flattened == "channels_first":
        n_out = phi.shape[-1]
        return ops.sum(ops.reshape(phi, (channels, -1, n_out)), axis=(1, 2))
    if pair.flattened == "channels_last":
        n_out = phi.shape[-1]
        return ops.sum(ops.reshape(phi, (-1, channels, n_out)), axis=(0, 2))
    # Sum over everything but the input channels: axis -2 of (..., in, out)
    # and of depthwise kernels, -1 of transposed ones.
    axis = -1 if layout(next_layer) == "transpose" else -2
    phi = ops.moveaxis(phi, axis, 0)
    return ops.sum(ops.reshape(phi, (channels, -1)), axis=1)
