"""The graph of a model, and copies of its layers and operations.

`keras_fa.convert` and `keras_fa.direct_feedback` rebuild a model: they
walk its graph with the models nested in it inlined (`InlinedGraph`), make
new layers with the configuration of the old ones (`copy_operation`;
weights are copied afterwards) and run the graph again on new inputs
(`InlinedGraph.replay`). `keras_fa.feedback_summary` walks the graph below
a tensor (`node_of`).

Keras keeps a model's graph private: the calls (nodes) of a functional
model, the call that made a symbolic tensor, the layers inside a layer.
keras_fa's graph code reads them only through the small functions at the
top of this module, each saying why no public API does the job.
"""

import collections

import keras

# -- the private reads ------------------------------------------------------


def graph_nodes(model):
    """Yields the calls (Keras nodes) of a built Sequential or functional
    model, inputs first, in the order Keras runs them."""
    # A Sequential model keeps its graph in a private functional model.
    graph = model._functional if isinstance(model, keras.Sequential) else model
    # Keras orders a graph's calls only in this private table (`operations`
    # lists each operation once, not each call).
    by_depth = graph._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def node_of(tensor):
    """Returns the call (a Keras node) that made the symbolic `tensor`, or
    None for a tensor that no call made."""
    # Keras records the call that made a symbolic tensor only privately.
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    # The calls of an operation are private too; the history indexes them.
    return history.operation._inbound_nodes[history.node_index]


def sublayers(layer):
    """The layers `layer` holds directly, in the order Keras tracks them."""
    # Only a keras.Model lists its layers publicly (`layers`, without a
    # Sequential's InputLayer); a layer's own list is private.
    return list(layer._layers)


def all_layers(layer, include_self=True):
    """`layer` (if `include_self`) and every layer inside it, each once."""
    # Keras flattens the tree of layers only in a private method.
    return list(layer._flatten_layers(include_self=include_self))


def created_trainable(layer):
    """The variables `layer` itself created trainable (frozen since or
    not), not those of its sub-layers."""
    # Freezing a layer clears its variables' `trainable` flags: only this
    # private list still says which ones it created trainable.
    return list(layer._trainable_variables)


def replace_sublayer(layer, old, new):
    """Makes `layer` hold `new` wherever it held `old`: in its attributes,
    in the lists and dicts among them, and in what Keras tracks."""
    # Keras has no public way to swap a tracked sub-layer.
    layer._tracker.replace_tracked_value("layers", old, new)
    # On torch, layers are torch modules: their sub-layer attributes live in
    # `_modules`, not in `__dict__`.
    names = list(vars(layer)) + list(getattr(layer, "_modules", None) or ())
    for name in names:
        if name in ("_layers", "_modules", "_tracker"):
            continue
        value = getattr(layer, name, None)
        if value is old:
            # Through Keras's __setattr__: `new` is already tracked.
            setattr(layer, name, new)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                if item is old:
                    value[key] = new


# -- graph models -------------------------------------------------------------


def is_graph_model(layer):
    """Whether `layer` is a Sequential or functional model: a graph of
    layers that `keras.models.clone_model` rebuilds layer by layer."""
    # A functional model is a `Function`: it lists its `operations`.
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "operations")
    )


def input_structure(model):
    """The symbolic inputs of a graph model, in their structure (a dict of
    inputs stays a dict)."""
    if isinstance(model, keras.Sequential):
        return model.inputs[0]
    return model.input


def fresh_inputs(model):
    """New `keras.Input`s like those of a graph model (same names, shapes,
    dtypes), in its input structure."""

    def new_input(tensor):
        layer = node_of(tensor).operation
        return keras.Input(
            batch_shape=tensor.shape,
            dtype=tensor.dtype,
            sparse=tensor.sparse,
            name=layer.name,
            optional=getattr(layer, "optional", False),
        )

    return keras.tree.map_structure(new_input, input_structure(model))


def _nested_inputs(inner, node):
    """The tensors a call `node` of the model `inner` passes to its inputs,
    in the order of `inner.inputs`; None where it cannot be inlined."""
    args, kwargs = node.arguments.args, node.arguments.kwargs
    if len(args) != 1 or any(v is not None for v in keras.tree.flatten(kwargs)):
        return None
    value, struct = args[0], input_structure(inner)
    if isinstance(value, dict) and not isinstance(struct, dict):
        names = [node_of(t).operation.name for t in inner.inputs]
        if not set(names) <= set(value):
            return None
        flat = [value[name] for name in names]
    else:
        flat = keras.tree.flatten(value)
    if len(flat) != len(inner.inputs) or not all(
        isinstance(t, keras.KerasTensor) and len(t.shape) == len(i.shape)
        for t, i in zip(flat, inner.inputs)
    ):
        return None
    return flat


class InlinedGraph:
    """A graph model's calls, with the graph models called once in it
    inlined.

    The one walk of a model's graph that `keras_fa.convert` and
    `keras_fa.direct_feedback` share. A Sequential or functional model
    called once (a KerasHub backbone in its task model, a Sequential
    block), with its inputs as one argument, is replaced by its own calls,
    at any depth; a model called more than once stays one call.

    Attributes:
        model: the model.
        nodes: `(node, path)` of every call of a layer or operation, in the
            order they run; `path` names the inlined models it is in.
        counts: calls per operation id, in the model and the models in it.
        outputs_of: per operation id, the outputs of each of its calls.
        operations: per id, every operation or inlined model with its path.
        producer: per tensor id, the node of `nodes` that makes it.
    """

    def __init__(self, model):
        self.model = model
        self.counts = collections.Counter()
        self._count(model)
        self.nodes = []
        self.outputs_of = collections.defaultdict(list)
        self.operations = {}
        self._alias = {}
        self._inline(model, ())
        self.producer = {
            id(t): node for node, _ in self.nodes for t in node.outputs
        }

    def _count(self, model):
        for node in graph_nodes(model):
            self.counts[id(node.operation)] += 1
            if is_graph_model(node.operation):
                self._count(node.operation)

    def _inline(self, model, path):
        for node in graph_nodes(model):
            op = node.operation
            self.outputs_of[id(op)].append(node.outputs)
            self.operations[id(op)] = (op, path + (op.name,))
            flat = None
            if is_graph_model(op) and self.counts[id(op)] == 1:
                flat = _nested_inputs(op, node)
            if flat is None:
                self.nodes.append((node, path))
                continue
            for inner_input, outer in zip(op.inputs, flat):
                if inner_input is not outer:
                    self._alias[id(inner_input)] = outer
            self._inline(op, path + (op.name,))
            for outer, inner_output in zip(node.outputs, op.outputs):
                self._alias[id(outer)] = inner_output

    def resolve(self, tensor):
        """The tensor of the inlined graph that `tensor` stands for."""
        while id(tensor) in self._alias:
            tensor = self._alias[id(tensor)]
        return tensor

    def ancestors(self, tensor):
        """Ids of the tensors `tensor` is computed from, itself included."""
        seen, stack = set(), [self.resolve(tensor)]
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            node = self.producer.get(id(t))
            if node is not None:
                stack.extend(self.resolve(x) for x in node.input_tensors)
        return seen

    def output(self, op):
        """The single output tensor of `op`'s single call."""
        return self.resolve(self.outputs_of[id(op)][0][0])

    def named(self, name):
        """The operations (and inlined models) called `name` or whose path
        is `name` ("outer/inner")."""
        return [
            op
            for op, path in self.operations.values()
            if name == op.name or name == "/".join(path)
        ]

    def path(self, op):
        """The path of `op`: the inlined models it is in, then its name."""
        return "/".join(self.operations[id(op)][1])

    def replay(self, inputs, call, on_output=None):
        """Runs the inlined graph again on new symbolic `inputs`.

        Args:
            inputs: tensors in the model's input structure (as
                `fresh_inputs` makes).
            call: `call(node, args, kwargs)` makes the new call of `node`
                on the new arguments and returns its outputs.
            on_output: if given, `on_output(old, new)` returns the tensor
                that stands for the old output `old` downstream, given its
                new value `new`.

        Returns:
            The new outputs, in the model's output structure.
        """
        values = {
            id(t): new
            for t, new in zip(self.model.inputs, keras.tree.flatten(inputs))
        }

        def value(x):
            if isinstance(x, keras.KerasTensor):
                return values[id(self.resolve(x))]
            return x

        for node, _ in self.nodes:
            args, kwargs = node.arguments.convert(value)
            outputs = keras.tree.flatten(call(node, args, kwargs))
            for old, new in zip(node.outputs, outputs):
                if on_output is not None:
                    new = on_output(old, new)
                values[id(old)] = new
        return keras.tree.map_structure(value, _output_structure(self.model))


def _output_structure(model):
    if isinstance(model, keras.Sequential):
        return model.outputs[0]
    return model.output


# -- copies -------------------------------------------------------------------


def copy_operation(operation, caller, name=None):
    """Returns a new layer or operation configured like `operation`.

    An operation that is not a layer (`x + y`, `keras.ops.concatenate` on
    symbolic tensors) has no state: one whose arguments have no config is
    reused as it is. A `Lambda` layer takes the function itself (its config
    holds bytecode, which Keras refuses to load in safe mode).

    Args:
        operation: a Keras layer or operation.
        caller: the public function copying it, named in errors.
        name: the copy's name; None keeps the name.

    Returns:
        The copy, unbuilt (with fresh weights once built).
    """
    renamed = {} if name is None else {"name": name}
    if not isinstance(operation, keras.layers.Layer):
        try:
            return type(operation).from_config(
                {**operation.get_config(), **renamed}
            )
        except (NotImplementedError, TypeError, ValueError):
            return operation
    if type(operation) is keras.layers.Lambda:
        return _copy_lambda(operation, name)
    try:
        config = operation.get_config()
    except NotImplementedError as error:
        kind = "model" if isinstance(operation, keras.Model) else "layer"
        raise ValueError(
            f"{caller} cannot copy the {kind} '{operation.name}' "
            f"({type(operation).__name__}): it has no config. Give its class "
            "a `get_config` (and `from_config` if needed), or use keras_fa "
            "layers in its code and build the model with them."
        ) from error
    return from_config(
        operation,
        lambda: type(operation).from_config({**config, **renamed}),
        caller,
    )


def _copy_lambda(layer, name):
    return keras.layers.Lambda(
        layer.function,
        # The config holds it serialized (maybe as bytecode); Keras keeps
        # the given value only privately.
        output_shape=layer._output_shape,
        mask=layer.mask,
        arguments=layer.arguments,
        name=layer.name if name is None else name,
        dtype=layer.dtype_policy,
    )


def from_config(layer, make, caller):
    """Returns `make()`, a copy of `layer` made from its config, or raises a
    ValueError that names the layer, if its config does not fit its
    `__init__` (KerasHub 0.32's `ViTPatchingAndEmbedding`)."""
    try:
        return make()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{caller} cannot copy the layer '{layer.name}' "
            f"({type(layer).__name__}) from its config: {error} "
            "(keras.models.clone_model fails on it the same way; its "
            "`get_config` must give what its `__init__` takes.)"
        ) from error
