"""Switches read while a model is traced: exact backprop, and signal probes.

Alignment measures compare what a rule does with what backprop would do on
the same batch. Both need the same model evaluated in two ways, which these
switches provide without changing the model:

- `exact_backprop()`: inside it, every keras_fa layer and direct-feedback
  layer runs as exact backprop (the plain Keras op, `BlockGradient` passes the
  gradient, `DirectFeedback` adds no direct signal).
- `probing(probes)`: adds a zero tensor to the output of each probed layer's
  kernel product, so the gradient with respect to that tensor is the error
  signal delta the layer receives.
- `recording()`: records the shape of each probe point while a model runs,
  so the probes can be made.

They are read when a function is traced: a function compiled outside them
(`model.fit`'s train step) is not affected by them later.
"""

import contextlib
import threading

from keras import ops

_STATE = threading.local()


def _get(name, default):
    return getattr(_STATE, name, default)


def is_exact():
    """Returns whether models are being traced as exact backprop."""
    return _get("exact", False)


@contextlib.contextmanager
def exact_backprop():
    """Context in which keras_fa models are traced as exact backprop.

    Every feedback rule then behaves as `"bp"`, `BlockGradient` passes the
    gradient through and `DirectFeedback` passes only the logits' gradient: a
    function traced inside it computes the true gradient of the loss.

    Example:

    >>> with keras_fa.tracing.exact_backprop():
    ...     y = model(x)  # gradients of y are backprop's
    """
    previous = is_exact()
    _STATE.exact = True
    try:
        yield
    finally:
        _STATE.exact = previous


@contextlib.contextmanager
def probing(probes):
    """Context that adds `probes[key]` at each probe point named `key`.

    Args:
        probes: dict from probe key (see `probe_key`) to a tensor of the
            probe point's shape, normally zeros.
    """
    previous = _get("probes", None)
    _STATE.probes = probes
    try:
        yield
    finally:
        _STATE.probes = previous


@contextlib.contextmanager
def recording():
    """Context that records `{probe key: shape}` of every probe point met.

    Yields the dict, filled as the model runs.
    """
    previous = _get("record", None)
    shapes = {}
    _STATE.record = shapes
    try:
        yield shapes
    finally:
        _STATE.record = previous


def probe_key(layer, index=0):
    """Returns the key of probe point `index` of `layer`."""
    return (id(layer), index)


def probe(layer, tensor, index=0):
    """Returns `tensor`, plus the probe of this point when one is active."""
    key = probe_key(layer, index)
    record = _get("record", None)
    if record is not None:
        record[key] = tuple(tensor.shape)
    probes = _get("probes", None)
    if probes is not None and key in probes:
        return ops.add(tensor, ops.cast(probes[key], tensor.dtype))
    return tensor
