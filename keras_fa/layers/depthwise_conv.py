"""FADepthwiseConv1D and FADepthwiseConv2D: Keras depthwise convolutions with
a feedback rule."""

import functools

import keras
from keras import ops

from keras_fa.layers.base import FeedbackMixin
from keras_fa.layers.conv import add_bias_and_activate
from keras_fa.ops import feedback_depthwise_conv

_DOC = """

    The forward pass is that of `keras.layers.{keras_name}`. In the backward
    pass the error reaches the inputs through the transposed depthwise
    convolution with a feedback kernel B (shaped like the depthwise kernel,
    `(*kernel_size, in_channels, depth_multiplier)`) instead of the kernel
    itself, while the kernel still learns from its local gradient. With
    `feedback="bp"` the layer is exactly a Keras `{keras_name}` layer.

    Args:
        kernel_size: size of the depthwise convolution window.
        feedback: the feedback rule: a name (`"fa"` (default), `"bp"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a config dict, or a
            `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernel (fa, kp, wm)
            or of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights; the same seed gives the
            same B. None draws from Keras's global random state.
        **kwargs: every other argument of `keras.layers.{keras_name}`
            (strides, padding, depth_multiplier, data_format, dilation_rate,
            activation, use_bias, initializers, regularizers, constraints,
            dtype, name...).
"""


class _FADepthwiseConv(FeedbackMixin):
    """Shared code of the feedback depthwise convolutions."""

    def __init__(
        self,
        kernel_size,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(kernel_size, **kwargs)
        self._init_feedback(feedback, feedback_initializer, seed)
        # Keras names the depthwise kernel's regularizer and constraint
        # apart; kp's B carries them like the kernel's.
        self.kernel_regularizer = self.depthwise_regularizer
        self.kernel_constraint = self.depthwise_constraint

    def build(self, input_shape):
        super().build(input_shape)
        self._build_feedback()

    def call(self, inputs):
        op_kwargs = dict(
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        outputs = self._apply_feedback(
            inputs,
            functools.partial(ops.depthwise_conv, **op_kwargs),
            feedback_depthwise_conv,
            **op_kwargs,
        )
        return add_bias_and_activate(self, outputs)

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}


@keras.saving.register_keras_serializable(package="keras_fa")
class FADepthwiseConv1D(_FADepthwiseConv, keras.layers.DepthwiseConv1D):
    __doc__ = (
        "1D depthwise convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="DepthwiseConv1D")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FADepthwiseConv2D(_FADepthwiseConv, keras.layers.DepthwiseConv2D):
    __doc__ = (
        "2D depthwise convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="DepthwiseConv2D")
    )
