"""Checks of numeric and boolean arguments, shared across keras_fa.

Each check raises a ValueError that names the argument, the value received
and what is allowed, before any work is done, and returns the value as a
plain Python number (numpy scalars too), so configs stay JSON.

The checks of data given as arrays (`check_data`, `check_probe_data`,
`check_labels`) raise a ValueError (a TypeError for data of the wrong kind)
naming the part of the data and what is wrong with it.
"""

import collections.abc
import inspect
import math
import numbers

import keras
import numpy as np
from keras import ops


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


def check_positive_integer(name, value):
    """Returns `value` as an int >= 1, or raises a ValueError naming `name`.

    Example:

    >>> check_positive_integer("batch_size", 32)
    32
    """
    if not is_integer(value) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def check_seed(name, value):
    """Returns `value` as an int in `[0, 2**32)`, the seeds NumPy's and
    scikit-learn's generators take, or raises a ValueError naming `name`.

    Example:

    >>> check_seed("seed", 7)
    7
    """
    if not is_integer(value) or not 0 <= value < 2**32:
        raise ValueError(
            f"`{name}` must be an integer in [0, 2**32). "
            f"Received: {name}={value!r}"
        )
    return int(value)


def check_fraction(name, value):
    """Returns `value` as a float strictly between 0 and 1, or raises a
    ValueError naming `name`.

    Example:

    >>> check_fraction("test_fraction", 0.25)
    0.25
    """
    if not is_real(value) or not 0.0 < value < 1.0:
        raise ValueError(
            f"`{name}` must be a number between 0 and 1 (exclusive). "
            f"Received: {name}={value!r}"
        )
    return float(value)


# -- data given as arrays -----------------------------------------------------


def data_label(part, name):
    """How an error names `part` (`"x"`, `"y"`, `"sample_weight"`) of data
    given as arguments (`name` None) or in the argument `name`."""
    return f"`{part}`" if name is None else f"{part} of `{name}`"


def _pipeline(data):
    """What kind of data pipeline `data` is, or None if it is not one."""
    if isinstance(data, keras.utils.PyDataset):
        return f"a keras.utils.PyDataset ({type(data).__name__})"
    module = type(data).__module__ or ""
    if module.startswith("tensorflow") and hasattr(data, "element_spec"):
        return f"a tf.data.Dataset ({type(data).__name__})"
    if module.startswith("torch.utils.data"):
        return f"a torch {type(data).__name__}"
    if inspect.isgenerator(data) or isinstance(data, collections.abc.Iterator):
        return f"an iterator ({type(data).__name__})"
    return None


def _describe_data(data):
    if isinstance(data, (list, tuple)):
        inner = sorted({type(item).__name__ for item in data})
        return (
            f"a {type(data).__name__} of {' and '.join(inner)}"
            if inner
            else f"an empty {type(data).__name__}"
        )
    shape = getattr(data, "shape", None)
    if shape is not None:
        return f"a {type(data).__name__} of shape {tuple(shape)}"
    return f"{data!r} (a {type(data).__name__})"


def _dtype_name(leaf):
    try:
        return keras.backend.standardize_dtype(leaf.dtype)
    except (AttributeError, TypeError, ValueError):
        return str(getattr(leaf, "dtype", type(leaf).__name__))


def _is_numeric(dtype):
    return dtype == "bool" or dtype.startswith(("float", "int", "uint", "bf"))


def check_data(x, y, sample_weight=None, name=None, hint=""):
    """Checks data given as arrays before any work is done with it.

    `x` and `y` (and `sample_weight`, if given) must each be an array or
    tensor, or a list, tuple or dict of them, of a numeric dtype, with the
    examples on the first axis: the same number of them everywhere, at
    least one, and no NaN or infinite values. Raises a `ValueError` (a
    `TypeError` for data of the wrong kind, e.g. a `tf.data.Dataset`)
    naming the part and what is wrong with it.

    Args:
        x: inputs.
        y: targets.
        sample_weight: optional per-example weights.
        name: the argument the data came in (e.g. `"probe_data"`), named in
            the errors; None if `x`, `y` and `sample_weight` are arguments.
        hint: a sentence added to the error for a data pipeline.

    Returns:
        The number of examples.
    """
    parts = [("x", x), ("y", y)]
    if sample_weight is not None:
        parts.append(("sample_weight", sample_weight))
    lengths = []
    for part, data in parts:
        label = data_label(part, name)
        for leaf in _arrays(label, data, hint):
            _check_array(label, data, leaf)
            lengths.append((part, leaf.shape[0]))
    return _example_count(lengths, name)


def _arrays(label, data, hint):
    # The arrays of one part of the data, which must be a structure of them.
    kind = _pipeline(data)
    if kind is not None:
        raise TypeError(
            f"{label} must be arrays or tensors (or a list, tuple or "
            f"dict of them). Received: {kind}. {hint}".rstrip()
        )
    if data is None:
        raise ValueError(f"{label} must be an array or tensor, not None.")
    leaves = keras.tree.flatten(data)
    if not leaves:
        raise ValueError(
            f"{label} holds no array. Received: {_describe_data(data)}."
        )
    return leaves


def _check_array(label, data, leaf):
    # One array: examples on a first axis, numbers, finite.
    shape = getattr(leaf, "shape", None)
    if shape is None or len(shape) == 0:
        raise TypeError(
            f"{label} must be an array or tensor (or a list, tuple "
            "or dict of them) with the examples on the first axis. "
            f"Received: {_describe_data(data)}"
            + (
                ": convert it with numpy.asarray."
                if isinstance(data, (list, tuple))
                else "."
            )
        )
    dtype = _dtype_name(leaf)
    if not _is_numeric(dtype):
        raise TypeError(
            f"{label} must hold numbers (a numeric or bool dtype). "
            f"Received: an array of dtype {dtype}."
        )
    if dtype.startswith(("float", "bf")):
        _check_finite(label, leaf)


def _check_finite(label, leaf):
    values = ops.convert_to_numpy(leaf)
    finite = np.isfinite(values)
    if not finite.all():
        index = np.unravel_index(np.argmin(finite), values.shape)
        raise ValueError(
            f"{label} holds {np.size(finite) - finite.sum()} NaN "
            f"or infinite value(s), the first "
            f"{values[index]} at index {tuple(map(int, index))}: "
            "the loss and every measure would be NaN. Remove or "
            "replace them."
        )


def _example_count(lengths, name):
    # The number of examples of `[(part, first axis)]`: one, not zero.
    counts = {n for _, n in lengths}
    if len(counts) > 1:
        listed = ", ".join(f"{data_label(p, name)}: {n}" for p, n in lengths)
        raise ValueError(
            "x, y and sample_weight must have the same number of examples "
            f"(first axis). Received: {listed}."
        )
    (count,) = counts
    if count == 0:
        raise ValueError(
            f"{data_label('x', name)} has no examples (its first axis has "
            "length 0): give at least one."
        )
    return int(count)


def check_probe_data(probe_data, name="probe_data", allow_none=False):
    """Checks a batch given as one argument, `(x, y)` or `(x, y,
    sample_weight)` (see `check_data`), and returns it as a tuple.

    Args:
        probe_data: the argument.
        name: its name, for the errors.
        allow_none: whether None is allowed (said in the error; None itself
            is the caller's to handle).
    """
    if not isinstance(probe_data, (tuple, list)) or len(probe_data) not in (
        2,
        3,
    ):
        size = (
            f" of length {len(probe_data)}"
            if isinstance(probe_data, (tuple, list))
            else ""
        )
        raise ValueError(
            f"`{name}` must be a tuple (x, y) or (x, y, sample_weight) of "
            f"arrays{', or None' if allow_none else ''}. Received: a "
            f"{type(probe_data).__name__}{size}."
        )
    check_data(
        *probe_data,
        name=name,
        hint=f"`{name}` holds arrays: take them from the data set first.",
    )
    return tuple(probe_data)


def _sparse_loss(model):
    # The compiled loss if it takes class indices as targets, else None.
    loss = getattr(model, "loss", None)
    sparse = keras.losses.sparse_categorical_crossentropy
    if isinstance(loss, str):
        found = loss in (
            "sparse_categorical_crossentropy",
            "SparseCategoricalCrossentropy",
        )
    else:
        found = isinstance(
            loss, keras.losses.SparseCategoricalCrossentropy
        ) or (loss is sparse or getattr(loss, "fn", None) is sparse)
    return loss if found else None


def check_labels(model, y, outputs, name=None):
    """With a sparse categorical loss, checks that the labels `y` are class
    indices of the model's output.

    Args:
        model: the compiled model.
        y: the targets.
        outputs: the list of the shapes of the model's outputs (only a
            single output is checked).
        name: the argument `y` came in, as in `check_data`.
    """
    loss = _sparse_loss(model)
    ys = keras.tree.flatten(y)
    if loss is None or len(outputs) != 1 or len(ys) != 1:
        return
    shape = tuple(outputs[0])
    classes = shape[-1] if shape else None
    labels = np.asarray(ops.convert_to_numpy(ys[0]))
    sparse_shape = labels.ndim == len(shape) - 1 or (
        labels.ndim == len(shape) and labels.shape[-1:] == (1,)
    )
    if not classes or not sparse_shape:
        return
    ignored = getattr(loss, "ignore_class", None)
    bad = (labels < 0) | (labels >= classes) | (labels != np.round(labels))
    if ignored is not None:
        bad &= labels != ignored
    if bad.any():
        index = np.unravel_index(np.argmax(bad), labels.shape)
        raise ValueError(
            f"{data_label('y', name)} holds the label {labels[index]} (at "
            f"index {tuple(map(int, index))}; {int(bad.sum())} bad in all), "
            f"but the model has {classes} outputs: with a sparse categorical "
            f"loss the labels must be integers in [0, {classes})"
            + (f" or {ignored} (ignore_class)" if ignored is not None else "")
            + "."
        )
