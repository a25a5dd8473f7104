"""Layers of other libraries whose inner Keras layers follow a rule.

A layer keras_fa has no version of, such as KerasHub's
`TransformerDecoder`, is often made of Keras layers that it has: Dense,
EinsumDense (inside a `MultiHeadAttention` subclass), convolutions.
`converted_class(base)` returns a subclass of `base` that, once built,
replaces each of those inner layers by its keras_fa version with the same
configuration and weights: its own code runs unchanged, and every inner
kernel learns by the rule. `keras_fa.convert` makes these for every such
layer of a model.

The subclass saves its rule in its config (under `"keras_fa"`, with the
base class) and is registered with Keras as `keras_fa>ConvertedLayer`, so
`keras.models.load_model` rebuilds it, replaces the same inner layers in
the same order at build, and loads every weight, feedback ones included.
"""

import functools
import importlib

import keras

from keras_fa import feedback as feedback_lib
from keras_fa.cloning import is_graph_model
from keras_fa.cloning import replace_sublayer
from keras_fa.cloning import sublayers
from keras_fa.layers.base import get_feedback_initializer
from keras_fa.seeding import layer_seed
from keras_fa.seeding import standardize_seed

#: The key of a converted layer's config that holds its rule.
CONFIG_KEY = "keras_fa"
REGISTERED_NAME = "ConvertedLayer"

_CLASSES = {}


def _replacements():
    # Imported here: keras_fa.layers imports this module.
    from keras_fa.layers import REPLACEMENTS

    return REPLACEMENTS


def replaceable_sublayers(layer):
    """Returns the inner layers of `layer` (at any depth, graph models
    aside) that have a keras_fa version: those a converted `layer` puts
    on a feedback rule."""
    found = []
    for sublayer in sublayers(layer):
        if type(sublayer) in _replacements():
            found.append(sublayer)
        elif not is_graph_model(sublayer):
            found.extend(replaceable_sublayers(sublayer))
    return found


class ConvertedLayer:
    """The mixin of every converted class: see `converted_class`."""

    def __init__(self, *args, keras_fa=None, **kwargs):
        # Set before the base's __init__, which may build the layer.
        _set_conversion(self, keras_fa)
        super().__init__(*args, **kwargs)

    def _replace_inner_layers(self):
        conversion = self._keras_fa_conversion
        _replace_sublayers(
            self,
            {
                "feedback": conversion["feedback"],
                "feedback_initializer": conversion["feedback_initializer"],
            },
            conversion["seed"],
            [0],
        )

    def get_config(self):
        return {**super().get_config(), CONFIG_KEY: self._keras_fa_conversion}

    @classmethod
    def from_config(cls, config):
        conversion = config.get(CONFIG_KEY)
        if not isinstance(conversion, dict) or "base" not in conversion:
            raise ValueError(
                f"The config of a keras_fa {REGISTERED_NAME} needs a "
                f"'{CONFIG_KEY}' entry with its base class and rule. "
                f"Received keys: {sorted(config)}"
            )
        target = converted_class(_base_class(conversion["base"]))
        # The base's own from_config, on the converted class: its __init__
        # takes the `keras_fa` entry.
        return super(ConvertedLayer, target).from_config(dict(config))


def converted_class(base):
    """Returns the subclass of the layer class `base` whose inner Keras
    layers with a kernel follow a feedback rule (one class per base)."""
    if issubclass(base, ConvertedLayer):
        return base
    if base not in _CLASSES:
        cls = type(
            f"FA{base.__name__}",
            (ConvertedLayer, base),
            {
                "__module__": __name__,
                "__doc__": _doc(base),
                "build": _converted_build(base),
            },
        )
        # Every converted class answers to one registered name; its
        # `from_config` finds the base class in the config.
        keras.saving.register_keras_serializable(
            package="keras_fa", name=REGISTERED_NAME
        )(cls)
        _CLASSES[base] = cls
    return _CLASSES[base]


def _converted_build(base):
    def build(self, *args, **kwargs):
        base.build(self, *args, **kwargs)
        self._replace_inner_layers()

    # Keras reads the argument names of `build` (`input_shape`,
    # `inputs_shape`, `query_shape`...) to pass the shapes: keep the base's.
    return functools.wraps(base.build)(build)


def convert_layer(layer, feedback, feedback_initializer, seed):
    """Returns an unbuilt copy of `layer` (from its config) whose class is
    `converted_class(type(layer))`, with the given rule: `feedback` and
    `feedback_initializer` as serialized configs, `seed` an int or None."""
    base = type(layer)
    if isinstance(layer, ConvertedLayer):
        base = _base_class(layer._keras_fa_conversion["base"])
    config = layer.get_config()
    config.pop(CONFIG_KEY, None)
    conversion = {
        "base": {
            "module": base.__module__,
            "class_name": base.__name__,
            "registered_name": keras.saving.get_registered_name(base),
        },
        "feedback": feedback,
        "feedback_initializer": feedback_initializer,
        "seed": standardize_seed(seed),
    }
    # The base's own from_config, on the converted class (whose __init__
    # takes the `keras_fa` entry); the base is known, even a local class.
    target = converted_class(base)
    return super(ConvertedLayer, target).from_config(
        {**config, CONFIG_KEY: conversion}
    )


#: The initializer entries of Keras layer configs, in the order of
#: preference, whose initializer draws the layer's main kernel.
_KERNEL_INITIALIZERS = (
    "kernel_initializer",
    "embeddings_initializer",
    "pointwise_initializer",
    "depthwise_initializer",
)


def like_kernel(feedback_config, layer_config):
    """Returns `feedback_config` with a `feedback_initializer` of
    `"kernel"` replaced by the initializer of the layer's kernel in
    `layer_config` (Glorot uniform if it has none)."""
    if feedback_config.get("feedback_initializer") != "kernel":
        return feedback_config
    initializer = "glorot_uniform"
    for key in _KERNEL_INITIALIZERS:
        if layer_config.get(key) is not None:
            initializer = layer_config[key]
            break
    return {**feedback_config, "feedback_initializer": initializer}


def _doc(base):
    return (
        f"`{base.__module__}.{base.__name__}` whose inner Keras layers with "
        "a kernel follow a keras_fa feedback rule (see "
        "`keras_fa.layers.converted`)."
    )


def _set_conversion(layer, conversion):
    if not isinstance(conversion, dict) or "base" not in conversion:
        raise ValueError(
            f"A keras_fa {REGISTERED_NAME} needs `{CONFIG_KEY}=`: a dict "
            "with its base class and rule (made by keras_fa.convert). "
            f"Received: {conversion!r}"
        )
    feedback_lib.get(conversion["feedback"])
    if conversion["feedback_initializer"] != "kernel":
        get_feedback_initializer(conversion["feedback_initializer"])
    # Kept out of Keras's attribute tracking: it is config, not state.
    object.__setattr__(layer, "_keras_fa_conversion", dict(conversion))


def _base_class(identity):
    registered = keras.saving.get_registered_object(
        identity.get("registered_name")
    )
    if registered is not None and not issubclass(registered, ConvertedLayer):
        return registered
    module = importlib.import_module(identity["module"])
    base = getattr(module, identity["class_name"], None)
    if base is None or not issubclass(base, keras.layers.Layer):
        raise ValueError(
            f"keras_fa cannot find the layer class {identity['class_name']} "
            f"in module {identity['module']} to rebuild a converted layer."
        )
    return base


def _replace_sublayers(layer, feedback_config, seed, counter):
    """Replaces, depth first, every inner layer of `layer` that has a
    keras_fa version; inner layer k (in that order) gets the seed
    `keras_fa.seeding.layer_seed(seed, k)`."""
    for old in sublayers(layer):
        target = _replacements().get(type(old))
        if target is None:
            if not is_graph_model(old):
                _replace_sublayers(old, feedback_config, seed, counter)
            continue
        config = old.get_config()
        config.update(like_kernel(feedback_config, config))
        new = target.from_config(
            {**config, "seed": layer_seed(seed, counter[0])}
        )
        counter[0] += 1
        if old.built:
            new.build_from_config(old.get_build_config())
            _copy_forward_weights(old, new)
        replace_sublayer(layer, old, new)


def _copy_forward_weights(old, new):
    from keras_fa.layers import feedback_variables

    feedback = {id(v) for v in feedback_variables(new)}
    targets = [v for v in new.weights if id(v) not in feedback]
    if len(targets) != len(old.weights):
        raise ValueError(
            f"keras_fa cannot convert the inner layer '{old.name}' "
            f"({type(old).__name__}): {len(old.weights)} weights, its "
            f"keras_fa version {len(targets)}."
        )
    for target, source in zip(targets, old.weights):
        target.assign(source)

