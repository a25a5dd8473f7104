"""FAConv1DTranspose, FAConv2DTranspose, FAConv3DTranspose: Keras transposed
convolutions with a feedback rule."""

import functools

import keras
from keras import ops

from keras_fa.layers.base import FeedbackMixin
from keras_fa.layers.conv import add_bias_and_activate
from keras_fa.ops import feedback_conv_transpose

_DOC = """

    The forward pass is that of `keras.layers.{keras_name}`. In the backward
    pass the error reaches the inputs through the convolution of delta with a
    feedback kernel B (shaped like the kernel, `(*kernel_size, filters,
    in_channels)`) instead of the kernel itself, while the kernel still learns
    from its local gradient. With `feedback="bp"` the layer is exactly a Keras
    `{keras_name}` layer.

    Args:
        filters: number of output channels.
        kernel_size: size of the convolution window.
        feedback: the feedback rule: a name (`"fa"` (default), `"bp"`,
            `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a config dict, or a
            `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernel (fa, kp, wm)
            or of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights; the same seed gives the
            same B. None draws from Keras's global random state.
        **kwargs: every other argument of `keras.layers.{keras_name}`
            (strides, padding, output_padding, data_format, dilation_rate,
            activation, use_bias, initializers, regularizers, constraints,
            dtype, name...).
"""


class _FAConvTranspose(FeedbackMixin):
    """Shared code of the feedback transposed convolutions."""

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

    def call(self, inputs):
        op_kwargs = dict(
            strides=self.strides,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        outputs = self._apply_feedback(
            inputs,
            functools.partial(ops.conv_transpose, **op_kwargs),
            feedback_conv_transpose,
            **op_kwargs,
        )
        return add_bias_and_activate(self, outputs)

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv1DTranspose(_FAConvTranspose, keras.layers.Conv1DTranspose):
    __doc__ = (
        "1D transposed convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="Conv1DTranspose")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv2DTranspose(_FAConvTranspose, keras.layers.Conv2DTranspose):
    __doc__ = (
        "2D transposed convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="Conv2DTranspose")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FAConv3DTranspose(_FAConvTranspose, keras.layers.Conv3DTranspose):
    __doc__ = (
        "3D transposed convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="Conv3DTranspose")
    )
