"""FAEinsumDense: `keras.layers.EinsumDense` with a feedback rule."""

import math

import keras
from keras import ops

from keras_fa.layers.base import FeedbackMixin
from keras_fa.ops import einsum_specs
from keras_fa.ops import feedback_einsum


def kernel_axes(equation, input_rank):
    """Returns `(input_axes, output_axes)`: the axes of an einsum kernel
    shared with the input, and with the output (its fans, as Keras's
    EinsumDense counts them)."""
    in_spec, kernel_spec, out_spec = einsum_specs(equation, input_rank)
    return (
        [i for i, c in enumerate(kernel_spec) if c in in_spec],
        [i for i, c in enumerate(kernel_spec) if c in out_spec],
    )


def with_kernel_axes(initializer, equation, input_rank):
    """Returns `initializer` with the kernel axes of `equation` if it is a
    variance-scaling initializer without them (as EinsumDense draws its
    kernel), else `initializer` itself."""
    if not isinstance(initializer, keras.initializers.VarianceScaling) or (
        initializer.input_axes is not None
        and initializer.output_axes is not None
    ):
        return initializer
    input_axes, output_axes = kernel_axes(equation, input_rank)
    config = initializer.get_config()
    config["input_axes"] = input_axes
    config["output_axes"] = output_axes
    return type(initializer).from_config(config)


@keras.saving.register_keras_serializable(package="keras_fa")
class FAEinsumDense(FeedbackMixin, keras.layers.EinsumDense):
    """Einsum projection whose backward pass follows a feedback rule.

    The forward pass is that of `keras.layers.EinsumDense`:
    `activation(einsum(equation, inputs, kernel) + bias)`. In the backward
    pass the error reaches the inputs through a feedback kernel B shaped like
    the kernel, `d inputs = einsum("<out>,<kernel>-><in>", delta, B)`, while
    the kernel still learns from its local gradient
    `einsum("<in>,<out>-><kernel>", inputs, delta)`. With `feedback="bp"` the
    layer is exactly a Keras `EinsumDense` layer.

    Args:
        equation: the einsum equation, as for `keras.layers.EinsumDense`
            (e.g. `"ab,bc->ac"`, `"...b,bc->...c"`, `"abc,cde->abde"`).
        output_shape: the expected output shape, without the batch axis.
        feedback: the feedback rule: a name (`"fa"` (default), `"bp"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a config dict, or a
            `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernel (fa, kp, wm)
            or of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`; a variance-scaling initializer takes its fans
            from the equation's input and output axes, as the kernel's does.
        seed: integer seed of the feedback weights; the same seed gives the
            same B. None draws from Keras's global random state.
        **kwargs: every other argument of `keras.layers.EinsumDense`
            (bias_axes, activation, initializers, regularizers, constraints,
            lora_rank, dtype, name...).

    Example:

    >>> layer = keras_fa.FAEinsumDense(
    ...     "abc,cde->abde", output_shape=(None, 4, 16), bias_axes="de"
    ... )
    """

    def __init__(
        self,
        equation,
        output_shape,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        _check_equation(equation)
        super().__init__(equation, output_shape, **kwargs)
        self._init_feedback(feedback, feedback_initializer, seed)

    def build(self, input_shape):
        super().build(input_shape)
        # Fans from the equation, as EinsumDense takes its kernel's.
        self._input_axes, self._output_axes = kernel_axes(
            self.equation, len(input_shape)
        )
        self.feedback_initializer = with_kernel_axes(
            self.feedback_initializer, self.equation, len(input_shape)
        )
        self._build_feedback()

    @property
    def feedback_fans(self):
        """`(fan_in, fan_out)` of the kernel from the equation: the sizes of
        the kernel axes shared with the input, and with the output."""
        shape = self.kernel_shape_for_feedback
        return (
            math.prod(shape[i] for i in self._input_axes),
            math.prod(shape[i] for i in self._output_axes),
        )

    def call(self, inputs, training=None):
        x = self._apply_feedback(
            inputs,
            lambda x, w: ops.einsum(self.equation, x, w),
            _einsum_op,
            equation=self.equation,
        )
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}


def _einsum_op(inputs, kernel, rule, feedback, equation):
    return feedback_einsum(equation, inputs, kernel, rule, feedback)


def _check_equation(equation):
    # Keras accepts an operand that repeats a letter (a diagonal); its
    # gradient is not a single einsum, so it is refused here by name.
    if not isinstance(equation, str) or "->" not in equation:
        raise ValueError(
            "`equation` must be an einsum string such as 'ab,bc->ac'. "
            f"Received: equation={equation!r}"
        )
    operands, output = equation.replace(" ", "").split("->", 1)
    for spec in operands.split(",") + [output]:
        letters = spec.replace("...", "")
        if len(set(letters)) != len(letters):
            raise ValueError(
                "FAEinsumDense needs distinct letters within each operand of "
                f"`equation` (no diagonals). Received: equation={equation!r}"
            )
