"""Which rule trains each kernel of a model: `feedback_summary`."""

import collections
import typing

import keras

from keras_fa.cloning import all_layers
from keras_fa.cloning import created_trainable
from keras_fa.cloning import is_graph_model
from keras_fa.cloning import node_of
from keras_fa.cloning import sublayers
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.layers import FAReversibleEmbedding
from keras_fa.layers import FeedbackKernel
from keras_fa.layers import FeedbackMixin
from keras_fa.layers import feedback_variables


class KernelFeedback(typing.NamedTuple):
    """One row of `feedback_summary`: a kernel and the rule it learns by."""

    #: The kernel's path: the layers that lead to it, then its name.
    path: str
    #: The class name of the layer that uses it.
    layer: str
    #: The rule of its error signal: "fa", "dfa"..., "bp" for plain Keras.
    rule: str
    #: "" or why the rule does not matter (no input gradient, frozen).
    note: str


NO_INPUT_GRADIENT = "no input gradient: same under every rule"
FROZEN = "frozen"

#: Layers whose `embeddings` is a lookup table: it sends no error to the
#: (integer) inputs, and a rule only changes the error a layer sends to its
#: inputs, so it trains the same under every rule. Unless it is also the
#: reverse projection (`tie_weights=True`), which does send one. Exact types:
#: a subclass may use the table elsewhere.
LOOKUP_LAYERS = (
    keras.layers.Embedding,
    keras.layers.ReversibleEmbedding,
    FAReversibleEmbedding,
)

#: Layers whose trainable weights act elementwise (scales, offsets, slopes),
#: whatever their rank (`LayerNormalization(axis=[-2, -1])`, `PReLU` on
#: images): the error crosses them by their exact derivative under every
#: rule, so they have no kernel. Exact types, as above.
ELEMENTWISE_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.RMSNormalization,
    keras.layers.PReLU,
)


class _Kernel(typing.NamedTuple):
    """A kernel as `kernels` finds it."""

    path: str
    variable: keras.Variable
    #: The layer that owns it (a separable convolution for both kernels).
    layer: keras.layers.Layer
    #: The feedback layer whose rule it follows; None for plain Keras.
    unit: object
    #: The layer of the model's graph that holds it (what convert replaces)
    #: and that layer's path through nested models.
    top: keras.layers.Layer
    top_path: str
    rule: str
    note: str

    def record(self):
        return KernelFeedback(
            self.path, type(self.layer).__name__, self.rule, self.note
        )


def check_model(model, caller, accepted="a keras.Model"):
    """Raises a clear error unless `model` is a built keras.Model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{caller} takes {accepted}. Received: {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"{caller}: model '{model.name}' is not built; build it first "
            "(call it on data or start with keras.Input)."
        )


def kernels(model):
    """Returns every kernel of `model` (a `_Kernel` each), in model order.

    A kernel is a variable of rank >= 2 that a layer creates trainable,
    except its `bias` (an attention projection's is 2-D), the weights of
    `ELEMENTWISE_LAYERS` and the feedback state of keras_fa layers. Its path
    is the names of the layers that lead to it, then its own name. Its
    rule: that of the keras_fa layer (or the `FeedbackKernel`) that uses it;
    the direct rule of a `DirectFeedback` head for the layers whose outputs
    the head taps; "bp" otherwise.
    """
    feedback_ids = {id(v) for v in feedback_variables(model)}
    # A separable convolution's kernels follow the FeedbackKernel sub-layer
    # that uses them, not the layer that holds them.
    units = {}
    for layer in all_layers(model):
        if isinstance(layer, FeedbackKernel):
            units[id(layer.kernel)] = layer
    found = []
    seen = set()

    def visit(layer, names, top, top_path):
        if id(layer) in seen:  # a shared layer has its kernels once
            return
        seen.add(id(layer))
        if top is None and not (layer is model or is_graph_model(layer)):
            top, top_path = layer, "/".join(names)
        for variable in _own_kernels(layer, feedback_ids):
            unit = units.get(id(variable))
            if unit is None and isinstance(layer, FeedbackMixin):
                unit = layer
            note = NO_INPUT_GRADIENT if _is_lookup(layer, variable) else ""
            if not variable.trainable:
                note = FROZEN
            found.append(
                _Kernel(
                    "/".join(names + [variable.name]),
                    variable,
                    layer,
                    unit,
                    top,
                    top_path,
                    "bp" if unit is None else unit.feedback.name,
                    note,
                )
            )
        for sublayer in sublayers(layer):
            visit(sublayer, names + [sublayer.name], top, top_path)

    visit(model, [], None, None)
    return _with_direct_rules(model, found)


def _own_kernels(layer, feedback_ids):
    # Variables the layer itself created trainable (frozen since, or not),
    # not those of its sub-layers.
    if type(layer) in ELEMENTWISE_LAYERS:
        return []
    bias = getattr(layer, "bias", None)
    return [
        v
        for v in created_trainable(layer)
        if len(v.shape) >= 2 and id(v) not in feedback_ids and v is not bias
    ]


#: Weights of other libraries' layers (by module and class name) that are
#: added to or stacked with the activations, never multiplied with the
#: layer's input: position tables, class tokens. They receive no input
#: gradient, so they train the same under every rule.
INPUT_FREE_WEIGHTS = {
    "keras_hub.src.layers.modeling.position_embedding.PositionEmbedding": (
        "embeddings",
    ),
    "keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding": (
        "class_token",
    ),
}


def _is_lookup(layer, variable):
    name = f"{type(layer).__module__}.{type(layer).__name__}"
    if variable.name in INPUT_FREE_WEIGHTS.get(name, ()):
        return True
    return (
        type(layer) in LOOKUP_LAYERS
        and variable is layer.embeddings
        and not getattr(layer, "tie_weights", False)
    )


def _with_direct_rules(model, found):
    # The layers that compute an activation tapped by a DirectFeedback head,
    # down to the cuts below, learn from the head's signal, whatever their
    # own rule.
    direct = {}
    for head in all_layers(model, include_self=False):
        if not isinstance(head, DirectFeedback):
            continue
        try:
            inputs = keras.tree.flatten(head.input)  # of its first call
        except AttributeError:  # never called
            continue
        for tap in inputs[1:]:
            for operation in _region_below(tap):
                direct.setdefault(id(operation), head.feedback)
    return [
        # `_replace` is the public API of a named tuple.
        kernel._replace(rule=direct[id(kernel.top)])
        if id(kernel.top) in direct
        else kernel
        for kernel in found
    ]


def _region_below(tensor):
    """Returns the layers that compute `tensor` up to the cuts: what a
    direct signal at `tensor` trains. It stops at `BlockGradient` layers
    and the model's inputs, and takes every layer of a model called on the
    way. Residual branches (`x + f(x)`) are followed on both sides."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        node = node_of(stack.pop())
        if node is None:
            continue
        operation = node.operation
        if isinstance(operation, (BlockGradient, keras.layers.InputLayer)):
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(operation, keras.layers.Layer):
            found.extend(all_layers(operation))
        stack.extend(node.input_tensors)
    return found


def feedback_summary(model, print_fn=print):
    """Lists the rule by which each kernel of `model` learns.

    One row per kernel (a trainable weight of rank >= 2, biases aside: the
    kernels of Dense, convolution, attention projection, embedding and
    recurrent layers), in the order of the model: its path (the names of
    the layers that lead to it, then its own, e.g. `"mha/query/kernel"`;
    the same in a model and in its `keras_fa.convert` copy), the class of
    the layer that uses it (`FAEinsumDense` for an attention projection, the
    separable convolution for both its kernels) and its rule: the keras_fa
    layer's `feedback.name`, the direct rule (e.g. `"dfa"`) for a layer
    whose output a `keras_fa.DirectFeedback` head taps, or `"bp"` for a
    plain Keras layer, which sends the exact gradient to its inputs. A note
    says where the rule cannot matter: an `Embedding` receives no input
    gradient; a frozen kernel does not train. Weights that act elementwise
    (normalization scales, `PReLU` slopes) are not kernels.

    Args:
        model: a built keras.Model (Sequential, functional or subclassed).
        print_fn: called with each line of the table; None prints nothing.

    Returns:
        A list of `KernelFeedback(path, layer, rule, note)` named tuples.

    Example:

    >>> rows = keras_fa.feedback_summary(keras_fa.convert(model, "fa"))
    >>> [row.path for row in rows if row.rule == "bp"]
    []
    """
    check_model(
        model,
        "keras_fa.feedback_summary",
        "a keras.Model (Sequential, functional or subclassed)",
    )
    if print_fn is not None and not callable(print_fn):
        raise ValueError(
            "`print_fn` must be a callable (such as print) or None. "
            f"Received: print_fn={print_fn!r}"
        )
    rows = [kernel.record() for kernel in kernels(model)]
    if print_fn is not None:
        for line in _table(rows):
            print_fn(line)
    return rows


def _label(row, short=False):
    if not row.note:
        return row.rule
    note = row.note.split(":")[0] if short else row.note
    return f"{row.rule} ({note})"


def _table(rows):
    header = ("Kernel", "Layer", "Rule")
    cells = [header] + [(row.path, row.layer, _label(row)) for row in rows]
    widths = [max(len(cell[i]) for cell in cells) for i in range(3)]

    def line(cell):
        return "  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip()

    rule = "-" * (sum(widths) + 4)
    counts = collections.Counter(_label(row, short=True) for row in rows)
    plural = "" if len(rows) == 1 else "s"
    total = f"{len(rows)} kernel{plural}"
    if counts:
        total += ": " + ", ".join(f"{n} {label}" for label, n in counts.items())
    return [line(header), rule] + [line(c) for c in cells[1:]] + [rule, total]
