"""FADense: `keras.layers.Dense` with a feedback rule."""

import keras
from keras import ops

from keras_fa.layers.base import FeedbackMixin
from keras_fa.ops import feedback_matmul


@keras.saving.register_keras_serializable(package="keras_fa")
class FADense(FeedbackMixin, keras.layers.Dense):
    """Densely-connected layer whose backward pass follows a feedback rule.

    The forward pass is that of `keras.layers.Dense`:
    `activation(inputs @ kernel + bias)`. In the backward pass the error
    reaches the inputs through a feedback matrix B instead of the kernel
    (`dL/dx = delta B^T`), while the kernel still learns from its local
    gradient `dL/dW = x^T delta`. With `feedback="bp"` the layer is exactly a
    Keras `Dense` layer.

    Args:
        units: Positive integer, dimensionality of the output space.
        feedback: the feedback rule: a name (`"fa"` (default), `"bp"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a config dict, or a
            `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback matrix (fa, kp) or
            of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights; the same seed gives the
            same B. None draws from Keras's global random state
            (`keras.utils.set_random_seed`).
        **kwargs: every other argument of `keras.layers.Dense` (activation,
            use_bias, initializers, regularizers, constraints, dtype, name...).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((784,)),
    ...     keras_fa.FADense(256, activation="relu"),
    ...     keras_fa.FADense(10, feedback="usf"),
    ... ])
    """

    def __init__(
        self,
        units,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(units, **kwargs)
        self._init_feedback(feedback, feedback_initializer, seed)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_feedback()

    def call(self, inputs, training=None):
        x = self._apply_feedback(inputs, ops.matmul, feedback_matmul)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}
