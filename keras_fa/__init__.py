"""keras_fa: feedback-alignment learning for Keras 3.

Layers whose forward pass is the usual one and whose backward pass sends the
error through feedback weights chosen by a rule, on the tensorflow, jax and
torch backends.
"""

from keras_fa import alignment
from keras_fa import callbacks
from keras_fa import datasets
from keras_fa import feedback
from keras_fa import models
from keras_fa import tracing
from keras_fa.convert import convert
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.direct import DirectFeedbackModel
from keras_fa.direct import direct_feedback
from keras_fa.estimators import FAClassifier
from keras_fa.estimators import FARegressor
from keras_fa.layers import FAConv1D
from keras_fa.layers import FAConv2D
from keras_fa.layers import FADense
from keras_fa.plotting import plot_alignment
from keras_fa.training import AlignmentHistory
from keras_fa.training import train

__version__ = "0.1.0"

__all__ = [
    "AlignmentHistory",
    "BlockGradient",
    "DirectFeedback",
    "DirectFeedbackModel",
    "direct_feedback",
    "FAClassifier",
    "FAConv1D",
    "FAConv2D",
    "FADense",
    "FARegressor",
    "alignment",
    "callbacks",
    "convert",
    "datasets",
    "feedback",
    "models",
    "plot_alignment",
    "tracing",
    "train",
]
