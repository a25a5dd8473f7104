"""The parameters of the estimators: scikit-learn's constraints on them."""

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval
from sklearn.utils._param_validation import Options
from sklearn.utils._param_validation import StrOptions

from keras_fa import feedback as feedback_lib
from keras_fa._validation import is_integer
from keras_fa.estimators import network


class _RuleName(StrOptions):
    """The `feedback` constraint: a rule name of `keras_fa.feedback.names()`
    (read when checked, so rules registered later count), in any case, as
    the layers and `keras_fa.models` take it."""

    def __init__(self):
        super().__init__(set(feedback_lib.names()))

    def is_satisfied_by(self, val):
        return isinstance(val, str) and val.lower() in feedback_lib.names()

    def __str__(self):
        names = ", ".join(repr(name) for name in feedback_lib.names())
        return f"a str among {{{names}}} (in any case)"


def _positive(kind=numbers.Integral):
    return Interval(kind, 1, None, closed="left")


def _unit(closed):
    return Interval(numbers.Real, 0, 1, closed=closed)


def _non_negative():
    return Interval(numbers.Real, 0, None, closed="left")


def _positive_real():
    return Interval(numbers.Real, 0, None, closed="neither")


# What scikit-learn's `_validate_params` checks at fit, by parameter.
CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", _positive()],
    "activation": [StrOptions(set(network.ACTIVATIONS))],
    "feedback": [_RuleName(), feedback_lib.FeedbackRule],
    "solver": [StrOptions({"sgd", "adam", "lbfgs"})],
    "alpha": [_non_negative()],
    "batch_size": [StrOptions({"auto"}), _positive()],
    "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
    "learning_rate_init": [_positive_real()],
    "power_t": [_non_negative()],
    "max_iter": [_positive()],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [_non_negative()],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [_unit("both")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [_unit("left")],
    "beta_1": [_unit("left")],
    "beta_2": [_unit("left")],
    "epsilon": [_positive_real()],
    "n_iter_no_change": [_positive(), Options(numbers.Real, {np.inf})],
    "alignment_every": [Interval(numbers.Integral, 0, None, closed="left")],
}


def hidden_sizes(value):
    """Returns `hidden_layer_sizes` as a list of ints, or raises a
    ValueError: each must be a positive integer."""
    sizes = list(value) if hasattr(value, "__iter__") else [value]
    if not all(is_integer(s) and s > 0 for s in sizes):
        raise ValueError(
            f"hidden_layer_sizes must be positive integers, got {value!r}."
        )
    return [int(s) for s in sizes]
