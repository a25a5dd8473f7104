"""Feedback rules: how a keras_fa layer sends its error backwards.

A rule is given to a layer as a name (`feedback="fa"`), a config dict, or a
rule object (`feedback=keras_fa.feedback.UniformSignFeedback(scale=0.1)`), the
way Keras takes `activation=`.

Every rule name lives in one namespace (`names()`), of two kinds: the
layer-wise rules a layer takes (`get`, `names("layer")`) and the direct
rules dfa, drtp and shallow that `keras_fa.direct_feedback` runs
(`get_direct`, `names("direct")`).
"""

import keras

from keras_fa.feedback import base
from keras_fa.feedback import direct_rules  # noqa: F401 (registers them)
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import names
from keras_fa.feedback.base import register
from keras_fa.feedback.base import registered_names
from keras_fa.feedback.bp import Backprop
from keras_fa.feedback.brsf import BatchRandomSignFeedback
from keras_fa.feedback.fa import FeedbackAlignment
from keras_fa.feedback.frsf import FixedRandomSignFeedback
from keras_fa.feedback.kp import KolenPollack
from keras_fa.feedback.usf import UniformSignFeedback
from keras_fa.feedback.wm import WeightMirror


def serialize(rule):
    """Returns a JSON-friendly config of a feedback rule.

    Args:
        rule: a `keras_fa.feedback.FeedbackRule` instance.
    """
    if not isinstance(rule, FeedbackRule):
        raise TypeError(
            "`rule` must be a keras_fa.feedback.FeedbackRule instance (use "
            "keras_fa.feedback.get to make one from a name). Received: "
            f"rule={rule!r} of type {type(rule).__name__}"
        )
    return keras.saving.serialize_keras_object(rule)


def deserialize(config):
    """Returns the feedback rule described by `config` (from `serialize`).

    Args:
        config: the dict `serialize` returned.
    """
    if not isinstance(config, dict):
        raise TypeError(
            "`config` must be a dict from keras_fa.feedback.serialize. "
            f"Received: config={config!r} of type {type(config).__name__}"
        )
    rule = keras.saving.deserialize_keras_object(config)
    if not isinstance(rule, FeedbackRule):
        raise ValueError(
            "`config` must describe a keras_fa.feedback.FeedbackRule (a "
            "dict from keras_fa.feedback.serialize). Received: "
            f"config={config!r}, which makes a {type(rule).__name__}"
        )
    return rule


def get(identifier):
    """Returns a feedback rule object.

    Args:
        identifier: a registered name, in any case (`"bp"`, `"fa"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`, or one added with
            `register`; `"FA"` is `"fa"`), a config dict from `serialize`, a
            `FeedbackRule` subclass or instance. A direct rule's name
            (`"dfa"`: see `get_direct`) raises an error that says where
            direct rules go.

    Example:

    >>> keras_fa.feedback.get("fa")
    FeedbackAlignment()
    """
    if isinstance(identifier, FeedbackRule):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, FeedbackRule):
        return identifier()
    if isinstance(identifier, str):
        if is_direct(identifier):
            raise ValueError(_direct_given_to_a_layer(identifier))
        cls = base._RULES.get(identifier.lower())
        if cls is None:
            raise ValueError(
                f"Unknown feedback rule '{identifier}'. Allowed names: "
                f"{', '.join(registered_names())}; or pass a "
                "keras_fa.feedback.FeedbackRule object."
            )
        return cls()
    if isinstance(identifier, dict):
        rule = keras.saving.deserialize_keras_object(identifier)
        if isinstance(rule, FeedbackRule):
            return rule
    raise ValueError(
        "Could not interpret feedback rule identifier "
        f"{identifier!r}: expected one of the names "
        f"{', '.join(registered_names())}, a config dict from "
        "keras_fa.feedback.serialize, or a FeedbackRule object."
    )


def is_direct(identifier):
    """Returns whether `identifier` names a direct rule (dfa, drtp,
    shallow), in any case.

    Args:
        identifier: anything given as `feedback=`; only a str can name a
            direct rule.
    """
    return (
        isinstance(identifier, str)
        and identifier.lower() in base._DIRECT_RULES
    )


def get_direct(identifier):
    """Returns the canonical (lower-case) name of a direct rule.

    Args:
        identifier: `"dfa"`, `"drtp"` or `"shallow"`, in any case.

    Example:

    >>> keras_fa.feedback.get_direct("DFA")
    'dfa'
    """
    if not is_direct(identifier):
        raise ValueError(
            f"Unknown direct feedback rule {identifier!r}. Allowed: "
            f"{', '.join(names('direct'))}. (Layer-wise rules such as 'fa' "
            "go to the layers: keras_fa.FADense(..., feedback='fa').)"
        )
    return identifier.lower()


def _direct_given_to_a_layer(identifier):
    return (
        f"feedback={identifier!r} is a direct rule: it sends the output "
        "error straight to every hidden layer, which one layer's backward "
        "pass cannot do. Use keras_fa.direct_feedback(model, "
        f"{identifier!r}) instead (or feedback={identifier!r} in "
        "keras_fa.models). Allowed names for a layer: "
        f"{', '.join(registered_names())}; or pass a "
        "keras_fa.feedback.FeedbackRule object."
    )


__all__ = [
    "Backprop",
    "BatchRandomSignFeedback",
    "FeedbackAlignment",
    "FeedbackRule",
    "FixedRandomSignFeedback",
    "KolenPollack",
    "UniformSignFeedback",
    "WeightMirror",
    "deserialize",
    "get",
    "get_direct",
    "is_direct",
    "names",
    "register",
    "registered_names",
    "serialize",
]
