"""Uniform sign-concordant feedback (Liao, Leibo & Poggio, 2016)."""

import math

from keras import ops

from keras_fa._validation import check_real
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import fixed_feedback_potential
from keras_fa.feedback.base import glorot_scale
from keras_fa.feedback.base import register
from keras_fa.feedback.base import sign_times


@register("usf")
class UniformSignFeedback(FeedbackRule):
    """uSF: B = sign(W) * scale, recomputed from the current W.

    Args:
        scale: the magnitude of every feedback entry, a finite positive
            number. None (the default) uses
            `sqrt(2 / (fan_in + fan_out))` of the kernel, the standard deviation
            of Glorot initialisation, as biotorch does, with the fans Keras
            gives the kernel's initializer (`layer.feedback_fans`: for an
            einsum kernel, its input and output axes).
    """

    def __init__(self, scale=None):
        if scale is not None:
            scale = check_real("scale", scale, minimum=0, exclusive=True)
        self.scale = scale

    def feedback_inputs(self, layer):
        if self.scale is not None:
            return ()
        fan_in, fan_out = layer.feedback_fans
        scale = math.sqrt(2.0 / (fan_in + fan_out))
        return (ops.convert_to_tensor(scale, dtype=layer.compute_dtype),)

    def backward_kernel(self, kernel, *feedback):
        if self.scale is not None:
            scale = self.scale
        elif feedback:
            scale = feedback[0]
        else:
            scale = glorot_scale(kernel.shape)
        return sign_times(kernel, scale)

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W * B`: B = sign(W) * scale, whose gradient in W is B."""
        return fixed_feedback_potential(kernel, backward_kernel)

    def get_config(self):
        return {"scale": self.scale}
