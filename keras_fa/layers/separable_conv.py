"""FASeparableConv1D and FASeparableConv2D: Keras separable convolutions with
a feedback rule for each of their two kernels."""

import functools

import keras
from keras import ops

from keras_fa.layers.base import CompositeFeedbackMixin
from keras_fa.layers.base import FeedbackKernel
from keras_fa.layers.conv import add_bias_and_activate
from keras_fa.ops import feedback_conv
from keras_fa.ops import feedback_depthwise_conv
from keras_fa.seeding import layer_seed
from keras_fa.seeding import standardize_seed

_DOC = """

    The forward pass is that of `keras.layers.{keras_name}`: a depthwise
    convolution with the depthwise kernel, then a 1x1 convolution with the
    pointwise kernel. Each kernel has its own feedback: in the backward pass
    the error crosses the pointwise product through a feedback kernel B_p
    (shaped like the pointwise kernel) and the depthwise product through a
    feedback kernel B_d (shaped like the depthwise kernel), while each kernel
    learns from its local gradient (the depthwise kernel from the signal that
    crossed B_p). With `feedback="bp"` the layer computes what a Keras
    `{keras_name}` layer computes.

    The feedback state of each kernel lives in a sub-layer,
    `depthwise_feedback` and `pointwise_feedback` (`keras_fa.layers.
    FeedbackKernel`), which is also what alignment measures name.

    Args:
        filters: number of output channels.
        kernel_size: size of the depthwise convolution window.
        feedback: the feedback rule of both kernels: a name (`"fa"`
            (default), `"bp"`, `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a
            config dict, or a `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernels (fa, kp,
            wm) or of their random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights (the depthwise kernel's
            from `keras_fa.seeding.layer_seed(seed, 0)`, the pointwise
            kernel's from `layer_seed(seed, 1)`). None draws from Keras's
            global random state.
        **kwargs: every other argument of `keras.layers.{keras_name}`
            (strides, padding, depth_multiplier, data_format, dilation_rate,
            activation, use_bias, initializers, regularizers, constraints,
            dtype, name...).
"""


class _FASeparableConv(CompositeFeedbackMixin):
    """Shared code of the feedback separable convolutions."""

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
        self._init_composite_feedback(feedback, feedback_initializer)
        self.seed = standardize_seed(seed)
        common = dict(
            feedback=self.feedback,
            feedback_initializer=self._unseeded_feedback_initializer,
            dtype=self.dtype_policy,
        )
        self.depthwise_feedback = FeedbackKernel(
            self,
            "depthwise_kernel",
            seed=layer_seed(self.seed, 0),
            regularizer=self.depthwise_regularizer,
            constraint=self.depthwise_constraint,
            name="depthwise_feedback",
            **common,
        )
        self.pointwise_feedback = FeedbackKernel(
            self,
            "pointwise_kernel",
            seed=layer_seed(self.seed, 1),
            regularizer=self.pointwise_regularizer,
            constraint=self.pointwise_constraint,
            name="pointwise_feedback",
            **common,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.depthwise_feedback.build(self.depthwise_kernel.shape)
        self.pointwise_feedback.build(self.pointwise_kernel.shape)

    def call(self, inputs):
        depthwise_kwargs = dict(
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        # As keras.ops.separable_conv calls its pointwise convolution (the
        # dilation of a 1x1 kernel changes nothing but the kernel torch
        # picks, and so the last bit).
        pointwise_kwargs = dict(
            strides=1,
            padding="valid",
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        hidden = self.depthwise_feedback.apply(
            inputs,
            functools.partial(ops.depthwise_conv, **depthwise_kwargs),
            feedback_depthwise_conv,
            **depthwise_kwargs,
        )
        outputs = self.pointwise_feedback.apply(
            hidden,
            functools.partial(ops.conv, **pointwise_kwargs),
            feedback_conv,
            **pointwise_kwargs,
        )
        return add_bias_and_activate(self, outputs)

    def get_config(self):
        return {
            **super().get_config(),
            **self._feedback_config(),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="keras_fa")
class FASeparableConv1D(_FASeparableConv, keras.layers.SeparableConv1D):
    __doc__ = (
        "1D separable convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="SeparableConv1D")
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class FASeparableConv2D(_FASeparableConv, keras.layers.SeparableConv2D):
    __doc__ = (
        "2D separable convolution whose backward pass follows a feedback "
        "rule." + _DOC.format(keras_name="SeparableConv2D")
    )
