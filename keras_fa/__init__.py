"""keras_fa: feedback-alignment learning for Keras 3.

Layers whose forward pass is the usual one and whose backward pass sends the
error through feedback weights chosen by a rule, on the tensorflow, jax and
torch backends.
"""

from keras_fa import alignment
from keras_fa import callbacks
from keras_fa import datasets
from keras_fa import feedback
from keras_fa import files
from keras_fa import models
from keras_fa import tracing
from keras_fa.convert import convert
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.direct import DirectFeedbackModel
from keras_fa.direct import direct_feedback
from keras_fa.history import AlignmentHistory
from keras_fa.layers import FAConv1D
from keras_fa.layers import FAConv1DTranspose
from keras_fa.layers import FAConv2D
from keras_fa.layers import FAConv2DTranspose
from keras_fa.layers import FAConv3D
from keras_fa.layers import FAConv3DTranspose
from keras_fa.layers import FADense
from keras_fa.layers import FADepthwiseConv1D
from keras_fa.layers import FADepthwiseConv2D
from keras_fa.layers import FAEinsumDense
from keras_fa.layers import FAGroupQueryAttention
from keras_fa.layers import FAMultiHeadAttention
from keras_fa.layers import FAReversibleEmbedding
from keras_fa.layers import FASeparableConv1D
from keras_fa.layers import FASeparableConv2D
from keras_fa.plotting import plot_alignment
from keras_fa.summary import feedback_summary
from keras_fa.training import train

__version__ = "0.1.0"

# The scikit-learn estimators load on first use: scikit-learn is optional.
_ESTIMATORS = ("FAClassifier", "FARegressor")


def __getattr__(name):
    if name in _ESTIMATORS:
        try:
            from keras_fa import estimators
        except ImportError as error:
            raise ImportError(
                f"keras_fa.{name} needs scikit-learn: `pip install "
                f"scikit-learn` (or `pip install keras_fa[sklearn]`). "
                f"({error})"
            ) from error
        return getattr(estimators, name)
    raise AttributeError(f"module 'keras_fa' has no attribute {name!r}")


__all__ = [
    "AlignmentHistory",
    "BlockGradient",
    "DirectFeedback",
    "DirectFeedbackModel",
    "direct_feedback",
    "FAClassifier",
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
    "FARegressor",
    "alignment",
    "callbacks",
    "convert",
    "datasets",
    "feedback",
    "files",
    "feedback_summary",
    "models",
    "plot_alignment",
    "tracing",
    "train",
]
