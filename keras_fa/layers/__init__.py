"""keras_fa layers: the Keras layers with a kernel, with a feedback rule."""

import keras

from keras_fa.layers.attention import FAGroupQueryAttention
from keras_fa.layers.attention import FAMultiHeadAttention
from keras_fa.layers.base import FeedbackKernel
from keras_fa.layers.base import FeedbackMixin
from keras_fa.layers.conv import FAConv1D
from keras_fa.layers.conv import FAConv2D
from keras_fa.layers.conv import FAConv3D
from keras_fa.layers.conv_transpose import FAConv1DTranspose
from keras_fa.layers.conv_transpose import FAConv2DTranspose
from keras_fa.layers.conv_transpose import FAConv3DTranspose
from keras_fa.layers.dense import FADense
from keras_fa.layers.depthwise_conv import FADepthwiseConv1D
from keras_fa.layers.depthwise_conv import FADepthwiseConv2D
from keras_fa.layers.einsum_dense import FAEinsumDense
from keras_fa.layers.reversible_embedding import FAReversibleEmbedding
from keras_fa.layers.separable_conv import FASeparableConv1D
from keras_fa.layers.separable_conv import FASeparableConv2D

#: Every Keras layer with a kernel that has a keras_fa version, mapped to it
#: (exact types: a subclass of a Keras layer may change what it computes).
REPLACEMENTS = {
    keras.layers.Dense: FADense,
    keras.layers.EinsumDense: FAEinsumDense,
    keras.layers.Conv1D: FAConv1D,
    keras.layers.Conv2D: FAConv2D,
    keras.layers.Conv3D: FAConv3D,
    keras.layers.DepthwiseConv1D: FADepthwiseConv1D,
    keras.layers.DepthwiseConv2D: FADepthwiseConv2D,
    keras.layers.SeparableConv1D: FASeparableConv1D,
    keras.layers.SeparableConv2D: FASeparableConv2D,
    keras.layers.Conv1DTranspose: FAConv1DTranspose,
    keras.layers.Conv2DTranspose: FAConv2DTranspose,
    keras.layers.Conv3DTranspose: FAConv3DTranspose,
    keras.layers.MultiHeadAttention: FAMultiHeadAttention,
    keras.layers.GroupQueryAttention: FAGroupQueryAttention,
    keras.layers.ReversibleEmbedding: FAReversibleEmbedding,
}

#: The keras_fa layers made of other feedback layers or kernels: their
#: feedback lives in sub-layers (`FeedbackKernel`, `FAEinsumDense`).
COMPOSITE_LAYERS = (
    FAMultiHeadAttention,
    FAGroupQueryAttention,
    FASeparableConv1D,
    FASeparableConv2D,
    FAReversibleEmbedding,
)


def is_feedback_layer(layer):
    """Returns whether `layer` is a keras_fa layer (with a feedback rule)."""
    return isinstance(layer, (FeedbackMixin,) + COMPOSITE_LAYERS)


def feedback_variables(layer):
    """Returns the feedback state variables of `layer` and its sub-layers
    (feedback kernels, seed-generator states): what the Keras layer it
    replaces does not have."""
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(
            "`layer` must be a keras.layers.Layer (a keras_fa layer, or a "
            f"model holding some). Received: layer={layer!r} of type "
            f"{type(layer).__name__}"
        )
    variables = []
    # Keras has no public walk over every nested layer (`layers` is one
    # level of a model only).
    for sublayer in layer._flatten_layers(include_self=True):
        if isinstance(sublayer, FeedbackMixin):
            variables.extend(sublayer._feedback_variables())
    return variables


__all__ = [
    "COMPOSITE_LAYERS",
    "FAConv1D",
    "FAConv1DTranspose",
    "FAConv2D",
    "FAConv2DTranspose",
    "FAConv3D",
    "FAConv3DTranspose",
    "FADense",
    "FADepthwiseConv1D",
    "FADepthwiseConv2D",
    "FAEinsumDense",
    "FAGroupQueryAttention",
    "FAMultiHeadAttention",
    "FAReversibleEmbedding",
    "FASeparableConv1D",
    "FASeparableConv2D",
    "FeedbackKernel",
    "FeedbackMixin",
    "REPLACEMENTS",
    "feedback_variables",
    "is_feedback_layer",
]
