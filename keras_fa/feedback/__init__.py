"""Feedback rules: how a keras_fa layer sends its error backwards.

A rule is given to a layer as a name (`feedback="fa"`), a config dict, or a
rule object (`feedback=keras_fa.feedback.UniformSignFeedback(scale=0.1)`), the
way Keras takes `activation=`.
"""

import keras

from keras_fa.feedback import base
from keras_fa.feedback.base import FeedbackRule
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
            `FeedbackRule` subclass or instance.

    Example:

    >>> keras_fa.feedback.get("fa")
    FeedbackAlignment()
    """
    if isinstance(identifier, FeedbackRule):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, FeedbackRule):
        return identifier()
    if isinstance(identifier, str):
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
    "register",
    "registered_names",
    "serialize",
]
