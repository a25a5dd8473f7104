"""FAConv1D, FAConv2D and FAConv3D: Keras convolutions with a feedback rule."""

import functools

import keras
from keras import ops

from keras_fa.layers.base import FeedbackMixin
from keras_fa.ops import feedback_conv

_CONV_DOC = """

    The forward pass is that of `keras.layers.{keras_name}`. In the backward
    pass the error reaches the inputs through the transposed convolution with a
    feedback kernel B (same shape as the kernel) instead of the kernel itself,
    while the kernel still learns from its local gradient. With
    `feedback="bp"` the layer is exactly a Keras `{keras_name}` layer.

    Args:
        filters: number of output channels.
        kernel_size: size of the convolution window.
        feedback: the feedback rule: a name (`"fa"` (default), `"bp"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a config dict, or a
            `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernel (fa, kp) or
            of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights; the same seed gives the
            same B. None draws from Keras's global random state.
        **kwargs: every other argument of `keras.layers.{keras_name}` (strides,
            padding, data_format, dilation_rate, groups, activation, use_bias,
            initializers, regularizers, constraints, dtype, name...).
"""


def add_bias_and_activate(layer, outputs):
    """Adds a convolution layer's bias along its channel axis and applies its
    activation, as the Keras convolutions do after their product."""
    if layer.bias is not None:
        channels = layer.bias.shape[0]
        if layer.data_format == "channels_last":
            bias_shape = (1,) * (layer.rank + 1) + (channels,)
        else:
            bias_shape = (1, channels) + (1,) * layer.rank
        outputs = ops.add(outputs, ops.reshape(layer.bias, bias_shape))
    if layer.activation is not None:
        return layer.activation(outputs)
    return outputs


class _FAConv(FeedbackMixin):
    """Shared code of the feedback convolutions."""

    def __init__(
        self,
        filters,
        kernel_size,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_feedback(feedback, feedback_initializer, seed)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_feedback()

    def _conv(self, inputs, padding):
        op_kwargs = dict(
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._apply_feedback(
            inputs,
            functools.partial(ops.conv, **op_kwargs),
            feedback_conv,
            **op_kwargs,
        )

    def convolution_op(self, inputs, kernel):
        return self._conv(inputs, self.padding)

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv2D(_FAConv, keras.layers.Conv2D):
    __doc__ = "2D convolution whose backward pass follows a feedback rule." + (
        _CONV_DOC.format(keras_name="Conv2D")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv3D(_FAConv, keras.layers.Conv3D):
    __doc__ = "3D convolution whose backward pass follows a feedback rule." + (
        _CONV_DOC.format(keras_name="Conv3D")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv1D(_FAConv, keras.layers.Conv1D):
    __doc__ = "1D convolution whose backward pass follows a feedback rule." + (
        _CONV_DOC.format(keras_name="Conv1D")
    )

    def call(self, inputs):
        padding = self.padding
        if padding == "causal":
            # Keras's Conv1D.call pads so; no public API gives the padding.
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        outputs = self._conv(inputs, padding)
        return add_bias_and_activate(self, outputs)
