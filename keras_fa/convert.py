"""Turn an existing Keras model into a keras_fa model."""

import warnings

import keras

from keras_fa import feedback as feedback_lib
from keras_fa.cloning import InlinedGraph
from keras_fa.cloning import copy_operation
from keras_fa.cloning import fresh_inputs
from keras_fa.cloning import from_config
from keras_fa.cloning import is_graph_model
from keras_fa.layers import REPLACEMENTS
from keras_fa.layers import FADense
from keras_fa.layers import feedback_variables
from keras_fa.layers import is_feedback_layer
from keras_fa.layers.base import get_feedback_initializer
from keras_fa.layers.converted import ConvertedLayer
from keras_fa.layers.converted import convert_layer
from keras_fa.layers.converted import like_kernel
from keras_fa.layers.converted import replaceable_sublayers
from keras_fa.seeding import layer_seed
from keras_fa.seeding import standardize_seed
from keras_fa.summary import check_model
from keras_fa.summary import kernels


# long: its public docstring is 53 lines; the body is 15, in named steps.
def convert(
    model,
    feedback="fa",
    feedback_initializer="glorot_uniform",
    seed=None,
    strict=False,
):
    """Returns a copy of `model` whose layers with a kernel use `feedback`.

    Every layer of a type in `keras_fa.layers.REPLACEMENTS` (Dense,
    EinsumDense, Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D,
    Conv1D/2D/3DTranspose, MultiHeadAttention, GroupQueryAttention,
    ReversibleEmbedding), also inside `TimeDistributed`, is replaced by its
    keras_fa version with the same configuration and weights and the given
    rule; keras_fa layers get the new rule (and new feedback weights).
    Nested Sequential and functional models are converted too. Every other
    layer and operation (`x + y`, `keras.ops.concatenate` on symbolic
    tensors) is copied with its weights. The original model is not changed
    and shares no variable with the copy. Like `keras.models.clone_model`,
    the copy is compiled only if the original was, from its compile config.

    No layer is left on backprop silently. A layer with a trainable kernel
    (a trainable weight of rank >= 2, see `keras_fa.feedback_summary`) that
    has no keras_fa version keeps learning by backprop: recurrent layers
    (`LSTM`, `GRU`, `SimpleRNN`, `ConvLSTM*`, also in `Bidirectional`),
    subclasses of Keras layers (which may compute something else), custom
    layers, and subclassed models inside the model (copied from their
    config; the layers inside them are not replaced). `convert` names them
    all, with why, in one warning, or raises with `strict=True`. An
    `Embedding` is not named: its table receives no input gradient, so it
    trains the same under every rule.

    Args:
        model: a built `keras.Sequential` or functional `keras.Model` (start
            it with `keras.Input`, or call it on data).
        feedback: the rule of the replaced layers: a name in any case
            (`"fa"`, `"bp"`, `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a
            config dict or a `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the new feedback weights, or
            `"kernel"`: each layer's feedback weights are drawn like its
            forward kernel (its `kernel_initializer`, reseeded), so B and W
            start at one scale. Models that initialize small (GPT-2's
            N(0, 0.02)) learn far better by fa with `"kernel"` than with
            the default Glorot B, whose error signals then dwarf the
            residual stream's.
        seed: integer seed (negative ones too); layer i, counting every
            layer of the model in order, gets the seed
            `keras_fa.seeding.layer_seed(seed, i)`, `(seed * 1000 + i) mod
            2**31`. None draws from Keras's global random state.
        strict: if True, raise a ValueError instead of warning when a layer
            with a trainable kernel stays on backprop.

    Returns:
        The converted model: Sequential where `model` is, functional
        otherwise.

    Example:

    >>> fa_model = keras_fa.convert(model, feedback="usf", seed=0)
    >>> keras_fa.feedback_summary(fa_model)
    """
    _check_convertible(model)
    feedback_config, seed = _check_arguments(
        feedback, feedback_initializer, seed, strict
    )
    left_on_backprop = _left_on_backprop(model)
    if left_on_backprop and strict:
        raise ValueError(left_on_backprop + "(Raised because strict=True.)")
    new_model = _clone(model, feedback_config, seed)
    if left_on_backprop:
        warnings.warn(
            left_on_backprop + "Pass strict=True to make this an error; "
            "keras_fa.feedback_summary(model) lists the rule of every kernel.",
            stacklevel=2,
        )
    return new_model


CALLER = "keras_fa.convert"

#: The `feedback_initializer` of `convert` that draws each layer's
#: feedback weights like its forward kernel.
KERNEL = "kernel"


def _check_convertible(model):
    check_model(
        model,
        CALLER,
        "a Sequential or functional keras.Model (not a layer)",
    )
    if not is_graph_model(model):
        raise ValueError(
            "keras_fa.convert works on Sequential and functional Keras "
            f"models. Received: {type(model).__name__}, a subclassed model. "
            "Use keras_fa layers (keras_fa.FADense, FAConv2D, ...) in its "
            "code instead."
        )


def _check_arguments(feedback, feedback_initializer, seed, strict):
    """Returns the serialized `feedback` and `feedback_initializer` of
    every replaced layer, and the seed, or raises a clear error."""
    rule = _get_rule(feedback)
    kernel_like = feedback_initializer == KERNEL
    initializer = get_feedback_initializer(
        "glorot_uniform" if kernel_like else feedback_initializer
    )
    seed = standardize_seed(seed)
    if not isinstance(strict, bool):
        raise ValueError(
            f"`strict` must be True or False. Received: strict={strict!r}"
        )
    # Rules check their arguments when a layer is made (brsf needs a random
    # initializer): once here, before any work. The name keeps Keras's
    # automatic layer names unchanged.
    FADense(
        1,
        feedback=rule,
        feedback_initializer=initializer,
        name="keras_fa_convert_check",
    )
    feedback_config = dict(
        feedback=feedback_lib.serialize(rule),
        feedback_initializer=KERNEL
        if kernel_like
        else keras.initializers.serialize(initializer),
    )
    return feedback_config, seed


def _clone(model, feedback_config, seed):
    """The converted copy of `model`, with its weights: copied layer i (in
    the order `keras.models.clone_model` copies them) gets the seed
    `layer_seed(seed, i)`."""
    copies = []

    def clone(operation):
        if not isinstance(operation, keras.layers.Layer):
            return copy_operation(operation, CALLER)
        config = dict(feedback_config, seed=layer_seed(seed, len(copies)))
        new, replaced = _clone_layer(operation, config)
        copies.append((operation, new, replaced))
        return new

    new_model = keras.models.clone_model(
        model, clone_function=clone, recursive=True
    )
    for old, new, replaced in copies:
        _copy_weights(old, new, replaced)
    if _shared_across_models(new_model):
        new_model = _inline_models(new_model)
    return new_model


def _shared_across_models(model):
    """Whether a layer of `model` is called in two of the graph models that
    make it (a tied embedding: in a backbone and in the task's head)."""
    owners = {}

    def visit(graph_model):
        for layer in graph_model.layers:
            owners.setdefault(id(layer), set()).add(id(graph_model))
            if is_graph_model(layer):
                visit(layer)

    visit(model)
    return any(len(models) > 1 for models in owners.values())


def _inline_models(model):
    """Returns a functional model of the same layers with the graph models
    called once in `model` inlined (see `keras_fa.cloning.InlinedGraph`).

    Keras saves a layer shared by two nested models twice and loads it as
    two layers, untying it; in one graph it is saved once. Kernel paths
    then start at the inlined layers ("transformer_layer_0/..." for
    "gpt2_backbone/transformer_layer_0/...").
    """
    inputs = fresh_inputs(model)
    outputs = InlinedGraph(model).replay(
        inputs, lambda node, args, kwargs: node.operation(*args, **kwargs)
    )
    inlined = keras.Model(inputs, outputs, name=model.name)
    if model.compiled:
        inlined.compile_from_config(model.get_compile_config())
    return inlined


def _get_rule(feedback):
    if feedback_lib.is_direct(feedback):
        raise ValueError(
            f"feedback={feedback!r} is a direct rule: it sends the output "
            "error to every hidden layer, which a layer-by-layer conversion "
            "cannot do. Use keras_fa.direct_feedback(model, "
            f"{feedback!r}) instead."
        )
    return feedback_lib.get(feedback)


def _target_class(layer):
    # Exact types: a subclass of a Keras layer may compute something else.
    if is_feedback_layer(layer):
        return type(layer)
    return REPLACEMENTS.get(type(layer))


def _replacement(layer):
    """The keras_fa class that takes the place of `layer` (of the layer it
    wraps, for `TimeDistributed`), or None."""
    if type(layer) is keras.layers.TimeDistributed:
        return _target_class(layer.layer)
    return _target_class(layer)


def _clone_layer(layer, feedback_config):
    """Returns the copy of `layer` and whether it was replaced."""
    target = _replacement(layer)
    if target is not None and type(layer) is keras.layers.TimeDistributed:
        config = layer.get_config()
        config.pop("layer")
        inner_config = layer.layer.get_config()
        inner = target.from_config(
            {**inner_config, **like_kernel(feedback_config, inner_config)}
        )
        return keras.layers.TimeDistributed(inner, **config), True
    if target is not None:
        config = layer.get_config()
        config.update(like_kernel(feedback_config, config))
        return target.from_config(config), True
    if _converts_inside(layer):
        return from_config(
            layer, lambda: convert_layer(layer, **feedback_config), CALLER
        ), True
    return copy_operation(layer, CALLER), False


def _converts_inside(layer):
    """Whether `layer`, which has no keras_fa version, is converted by
    replacing the Keras layers inside it (see `keras_fa.layers.converted`).
    Models inside a model are not: graph models are rebuilt layer by layer,
    subclassed ones are copied and named."""
    if isinstance(layer, keras.Model):
        return False
    return isinstance(layer, ConvertedLayer) or bool(
        replaceable_sublayers(layer)
    )


def _forward_weights(layer):
    """The weights of `layer` that its Keras version has, in its order."""
    feedback = {id(v) for v in feedback_variables(layer)}
    return [v for v in layer.weights if id(v) not in feedback]


def _copy_weights(old, new, replaced):
    # A replaced layer takes the forward weights; a copied layer all of them.
    sources = _forward_weights(old) if replaced else old.weights
    targets = _forward_weights(new) if replaced else new.weights
    where = f"layer '{old.name}' ({type(old).__name__} -> {type(new).__name__})"
    if len(sources) != len(targets):
        raise ValueError(
            f"keras_fa.convert: {where} has {len(sources)} weights but its "
            f"copy has {len(targets)}: {[v.path for v in sources]} vs "
            f"{[v.path for v in targets]}."
        )
    for source, target in zip(sources, targets):
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(
                f"keras_fa.convert: in {where}, weight '{source.path}' has "
                f"shape {tuple(source.shape)} but its copy '{target.path}' "
                f"has shape {tuple(target.shape)}."
            )
    # Copy through numpy: on jax, assigning one variable's value to another
    # shares the buffer, and training the copy (which donates its buffers)
    # would delete the original model's weights.
    for source, target in zip(sources, targets):
        target.assign(keras.ops.convert_to_numpy(source))


def _left_on_backprop(model):
    """Returns the message that names every layer of `model` whose
    trainable kernels convert leaves on backprop, or "" if there is none."""
    layers = {}
    for kernel in kernels(model):
        if kernel.unit is not None or kernel.rule != "bp" or kernel.note:
            continue
        if _replacement(kernel.top) is not None:
            continue
        inside = kernel.layer is not kernel.top
        if inside and _converts_inside(kernel.top):
            if type(kernel.layer) in REPLACEMENTS:
                continue
            # Kept on backprop inside a layer whose other kernels convert.
            key = id(kernel.layer)
            if key not in layers:
                path = kernel.path.rsplit("/", 1)[0]
                layers[key] = (kernel.layer, path, [])
        else:
            key = id(kernel.top)
            if key not in layers:
                layers[key] = (kernel.top, kernel.top_path, [])
        layers[key][2].append(kernel.path)
    if not layers:
        return ""
    lines = [
        f"  {path} ({type(layer).__name__}): {_why(layer)} Kernels: "
        f"{', '.join(paths)}."
        for layer, path, paths in layers.values()
    ]
    return (
        f"keras_fa.convert leaves {len(lines)} layer(s) with trainable "
        "kernels on backprop: they learn from the exact gradient and send "
        "it on to the layers below.\n" + "\n".join(lines) + "\n"
    )


def _why(layer):
    """Why `convert` leaves `layer` on backprop, in one sentence."""
    name = type(layer).__name__
    if isinstance(layer, keras.Model):
        return (
            "a subclassed model: convert copies it with its weights but "
            "cannot replace the layers inside it; use keras_fa layers in its "
            "code."
        )
    if isinstance(layer, keras.layers.Bidirectional):
        inner = layer.forward_layer
        return f"it wraps {type(inner).__name__}, " + _why(inner)
    if isinstance(layer, keras.layers.Wrapper):
        inner = layer.layer
        return f"it wraps {type(inner).__name__}, " + _why(inner)
    if isinstance(layer, keras.layers.RNN):
        return "a recurrent layer; keras_fa has no recurrent layers yet."
    for keras_class, fa_class in REPLACEMENTS.items():
        if isinstance(layer, keras_class):
            return (
                f"a subclass of {keras_class.__name__}, which may compute "
                "something else, so convert does not replace it; derive it "
                f"from keras_fa.{fa_class.__name__} instead."
            )
    if _converts_inside(layer):
        return (
            f"keras_fa has no version of {name}: convert puts the Keras "
            "layers inside it on the rule, but not the kernels it uses "
            "itself; use keras_fa layers or ops in its code."
        )
    return (
        f"keras_fa has no version of {name}, and it holds no Keras layer "
        "that convert could replace; use keras_fa layers in its code."
    )
