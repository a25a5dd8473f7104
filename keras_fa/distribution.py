"""Feedback weights under a `keras.distribution`: laid out as their kernel.

Under `keras.distribution.ModelParallel`, Keras gives a variable its layout
when the variable is created (jax backend): the `LayoutMap` entry whose key
matches `variable.path` (an exact key first, else the one regex that
fullmatches), or replication when none does. A feedback kernel B stands in
the backward pass where the kernel W stands in backprop, and has W's shape,
so it should be sharded as W is: then `d inputs = delta B^T` is computed
with the same collectives as backprop's `delta W^T`. A `LayoutMap` written
for the Keras model does not say so: an anchored key (`"ffn/kernel"`) does
not match `"ffn/feedback_kernel"`, and a loose one (`".*ffn.*kernel"`)
matches it only by accident, possibly with another layout than W's exact
entry.

So every variable a feedback rule creates with the kernel's shape (the
`feedback_kernel` of fa, frsf, kp and wm, in a layer, in a separable or
embedding layer's `FeedbackKernel`, in an attention layer's projections)
takes the layout of its forward kernel, unless the `LayoutMap` has an entry
of its own for it: a key equal to its path, or a key that names feedback
(contains `"feedback"`) and fullmatches its path but not the kernel's
(`".*feedback_kernel"`, `"ffn/feedback.*"`). A key that matches both paths
(`".*kernel"`) is the kernel's entry; one that matches the feedback path
alone without naming feedback (`".*_kernel"`, meant for depthwise kernels)
matches it by accident and is ignored for it. Other feedback state (the
seed-generator state of brsf and wm) is laid out as Keras lays out any
variable.

`keras_fa.DirectFeedback`'s matrices B_l (shape `(outputs, tap size)`) have
no forward kernel: Keras lays them out by their paths
(`".../feedback_kernel_<l>"`), replicated unless a key matches.
"""

import contextlib
import copy
import re

import keras


def feedback_layout(distribution, variable, kernel):
    """Returns the layout of a feedback variable shaped like `kernel`.

    Args:
        distribution: the current `keras.distribution.Distribution`.
        variable: the feedback variable (its path and shape are read).
        kernel: the forward kernel variable it serves.

    Returns:
        The layout of the `LayoutMap` entry of its own, if there is one (see
        the module docstring), else the layout `distribution` gives the
        kernel.
    """
    # ModelParallel keeps its map private; other distributions have none.
    layout_map = getattr(distribution, "_layout_map", None)
    if layout_map is not None:
        keys = tuple(layout_map)
        # Not `path in layout_map`: LayoutMap's lookup answers None for a
        # missing key, so `in` is always true.
        if variable.path in keys:
            return layout_map[variable.path]
        own = [
            key
            for key in keys
            if "feedback" in key
            and re.fullmatch(key, variable.path)
            and not re.fullmatch(key, kernel.path)
        ]
        if len(own) > 1:
            raise ValueError(
                f"The feedback variable '{variable.path}' matches several "
                f"LayoutMap keys of its own: {own}. Keep at most one key "
                "that names feedback and matches it but not its kernel "
                f"'{kernel.path}' (a key matching both is the kernel's)."
            )
        if own:
            return layout_map[own[0]]
    return distribution.get_variable_layout(kernel)


@contextlib.contextmanager
def kernel_layout_scope(layer, kernel):
    """Lays out the variables `layer` creates in it shaped like `kernel`
    as `feedback_layout` says.

    Does nothing without a current distribution, when `kernel` is not a
    variable, or off jax (Keras lays variables out only on jax).

    Args:
        layer: the layer that creates the feedback variables.
        kernel: the forward kernel variable.
    """
    distribution = keras.distribution.distribution()
    if (
        distribution is None
        or not isinstance(kernel, keras.Variable)
        or keras.backend.backend() != "jax"
    ):
        yield
        return
    shape = tuple(kernel.shape)

    def get_variable_layout(variable):
        if tuple(variable.shape) == shape:
            return feedback_layout(distribution, variable, kernel)
        return distribution.get_variable_layout(variable)

    # Keras asks the current distribution for the layout of each variable
    # it creates; a copy that answers for the feedback variables is current
    # while they are created, and every other question goes to the original.
    scoped = copy.copy(distribution)
    scoped.get_variable_layout = get_variable_layout
    before = {id(v) for v in layer.variables}
    with scoped.scope():
        yield
    # A variable created in a stateless scope takes its layout only when it
    # is initialized, after this scope: give it its layout now.
    for variable in layer.variables:
        if (
            id(variable) not in before
            and getattr(variable, "_value", True) is None
            and getattr(variable, "_layout", True) is None
        ):
            variable._layout = get_variable_layout(variable)


__all__ = ["feedback_layout", "kernel_layout_scope"]
