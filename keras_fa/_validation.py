"""Checks of numeric and boolean arguments, shared across keras_fa.

Each check raises a ValueError that names the argument, the value received
and what is allowed, before any work is done, and returns the value as a
plain Python number (numpy scalars too), so configs stay JSON.
"""

import math
import numbers

import numpy as np


def is_integer(value):
    """Returns whether `value` is an integer (a numpy one too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """Returns whether `value` is a finite real number, not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def check_integer(name, value, minimum=None):
    """Returns `value` as an int, or raises a ValueError naming `name`.

    Args:
        name: the argument's name, as the user writes it.
        value: the value received.
        minimum: the smallest allowed value, or None.

    Example:

    >>> check_integer("width", 16, minimum=1)
    16
    """
    if not is_integer(value) or (minimum is not None and value < minimum):
        allowed = (
            "an integer" if minimum is None else f"an integer >= {minimum}"
        )
        raise ValueError(
            f"`{name}` must be {allowed}. Received: {name}={value!r}"
        )
    return int(value)


def check_real(name, value, minimum=None, exclusive=False, maximum=None):
    """Returns `value` as a float, or raises a ValueError naming `name`.

    The value must be a finite real number (not a bool, not a string),
    greater than `minimum` if `exclusive` else at least `minimum`, and below
    `maximum` (exclusive), where they are given.

    Example:

    >>> check_real("scale", 0.1, minimum=0, exclusive=True)
    0.1
    """
    ok = is_real(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum
    if not ok:
        raise ValueError(
            f"`{name}` must be {_describe(minimum, exclusive, maximum)}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _describe(minimum, exclusive, maximum):
    if minimum is not None and maximum is not None:
        left = "(" if exclusive else "["
        return f"a number in {left}{minimum}, {maximum})"
    if minimum == 0 and exclusive:
        return "a finite positive number"
    if minimum is not None:
        return f"a finite number {'>' if exclusive else '>='} {minimum}"
    if maximum is not None:
        return f"a finite number < {maximum}"
    return "a finite number"


def check_bool(name, value):
    """Returns `value` as a bool, or raises a ValueError naming `name`.

    Python and NumPy booleans are accepted. Anything else is refused, a
    string such as "no" above all, which `if value:` would take as True.

    Example:

    >>> check_bool("shuffle", False)
    False
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return bool(value)
