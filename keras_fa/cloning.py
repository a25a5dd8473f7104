"""Copies of the layers and operations of a model, from their configs.

`keras_fa.convert` and `keras_fa.direct_feedback` rebuild a model from new
layers with the configuration of the old ones; this is the one way both
make them (weights are copied afterwards).
"""

import keras


def is_graph_model(layer):
    """Whether `layer` is a Sequential or functional model: a graph of
    layers that `keras.models.clone_model` rebuilds layer by layer."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")
    )


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
        return keras.layers.Lambda(
            operation.function,
            output_shape=operation._output_shape,
            mask=operation.mask,
            arguments=operation.arguments,
            name=operation.name if name is None else name,
            dtype=operation.dtype_policy,
        )
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
