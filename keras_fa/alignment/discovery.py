"""What a meter finds in a model, once: the kernels it measures, the
variables that train them, the points where their error signals are read,
and the graph of layer calls the conservation law is followed along."""

import collections

import keras

from keras_fa import cloning
from keras_fa import tracing
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.layers.base import FeedbackKernel


def kernel_of(layer):
    """The layer's `kernel` variable, or None."""
    try:
        kernel = getattr(layer, "kernel", None)
    except (AttributeError, ValueError):
        return None
    return kernel if isinstance(kernel, keras.Variable) else None


def is_lora(layer):
    """Whether the layer's kernel learns through LoRA factors."""
    # Embedding has LoRA too, but no kernel.
    return bool(getattr(layer, "lora_enabled", False)) and hasattr(
        layer, "lora_kernel_a"
    )


def trained_by(layer):
    """The variables whose gradients are the update of `layer`'s kernel:
    the kernel, or with LoRA (`enable_lora`) its factors A and B (the
    kernel itself `W0 + A B * alpha / rank` is frozen). None if the layer
    has no kernel."""
    if is_lora(layer):
        return [layer.lora_kernel_a, layer.lora_kernel_b]
    kernel = kernel_of(layer)
    return None if kernel is None else [kernel]


def kernel_units(model, index):
    """Returns `[(key, layer, parents)]` for the layers with a trainable
    kernel (`index`: `{id(variable): i}` of the trainable variables), in
    the model's order (depth first, sub-layers in their order).

    The key is the layer's name, after the names of the layers it is
    inside (models left out); a `FeedbackKernel` is named by its kernel.
    Where that is not unique (layers with the same name in two nested
    models), the names of the models are kept too.
    """
    found = _kernel_layers(model, index)
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


def _kernel_layers(model, index):
    # [(short path, full path, layer, parents)] of the kernel layers: the
    # short path leaves the names of models out.
    found, seen = [], set()

    def walk(layer, short, full, parents):
        for child in cloning.sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            segment = (
                child.kernel_name
                if isinstance(child, FeedbackKernel)
                else child.name
            )
            trained = trained_by(child)
            if trained is not None and all(id(v) in index for v in trained):
                path = (short + [segment], full + [segment])
                found.append((*path, child, parents))
            inner = (
                short if isinstance(child, keras.Model) else short + [segment]
            )
            walk(child, inner, full + [segment], parents + [child])

    walk(model, [], [], [])
    return found


def find_signals(model, units, keys, feedback_layers):
    """Where each kernel's error signal is read.

    Returns `(signal_keys, aliases)`: `{kernel key: probe key}` (a
    keras_fa layer's own probe, or the direct-feedback tap above the
    kernel), and `{probe key: probe key}` for a `BlockGradient` on a tap,
    which reads the same signal as the tap.
    """
    signals = {
        keys[id(layer)]: tracing.probe_key(layer) for layer in feedback_layers
    }
    aliases = {}
    layers = cloning.all_layers(model, include_self=False)
    kernel_layers = [layer for _, layer, _ in units]
    blocks = [layer for layer in layers if isinstance(layer, BlockGradient)]
    for head in layers:
        if not isinstance(head, DirectFeedback):
            continue
        for i, tap in enumerate(_inputs(head)[1:]):
            owner = _kernel_layer_above(tap, kernel_layers)
            if owner is None or keys[id(owner)] in signals:
                continue
            key = keys[id(owner)]
            signals[key] = tracing.probe_key(head, i)
            for block in blocks:
                inputs = _inputs(block)
                if inputs and inputs[0] is tap:
                    aliases[tracing.probe_key(block)] = signals[key]
    return signals, aliases


def _inputs(layer):
    # The input tensors of the layer's first call, as a list.
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return []  # never called
    return inputs if isinstance(inputs, list) else [inputs]


def _kernel_layer_above(tensor, kernel_layers):
    # Walks from a tapped activation up to the layer with a kernel that made
    # it (through activations, pooling, normalization...).
    while True:
        node = cloning.node_of(tensor)
        if node is None:
            return None
        if any(node.operation is layer for layer in kernel_layers):
            return node.operation
        if len(node.input_tensors) != 1:
            return None
        tensor = node.input_tensors[0]


def graph(model):
    """`(consumers, producers, outputs)` of a Sequential or functional
    model: `{id(tensor): [nodes]}` reading each tensor, `{id(operation):
    [nodes]}` calling each operation, and the ids of the model's output
    tensors. None for a model without a graph of layers (subclassed)."""
    if not cloning.is_graph_model(model):
        return None
    try:
        outputs = model.outputs
    except AttributeError:
        return None  # a Sequential model built without an input shape
    consumers, producers = {}, {}
    for node in cloning.graph_nodes(model):
        for tensor in node.input_tensors:
            users = consumers.setdefault(id(tensor), [])
            if not any(user is node for user in users):
                users.append(node)
        producers.setdefault(id(node.operation), []).append(node)
    return consumers, producers, {id(t) for t in keras.tree.flatten(outputs)}
