"""keras_fa layers."""

from keras_fa.layers.conv import FAConv1D
from keras_fa.layers.conv import FAConv2D
from keras_fa.layers.dense import FADense

__all__ = ["FAConv1D", "FAConv2D", "FADense"]
