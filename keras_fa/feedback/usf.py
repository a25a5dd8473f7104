"""Uniform sign-concordant feedback (Liao, Leibo & Poggio, 2016)."""

from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import fixed_feedback_potential
from keras_fa.feedback.base import glorot_scale
from keras_fa.feedback.base import register
from keras_fa.feedback.base import sign_times


@register("usf")
class UniformSignFeedback(FeedbackRule):
    """uSF: B = sign(W) * scale, recomputed from the current W.

    Args:
        scale: the magnitude of every feedback entry. None (the default) uses
            `sqrt(2 / (fan_in + fan_out))` of the kernel, the standard deviation
            of Glorot initialisation, as biotorch does.
    """

    def __init__(self, scale=None):
        if scale is not None and not float(scale) > 0:
            raise ValueError(
                f"`scale` must be a positive number or None. Received: {scale}"
            )
        self.scale = None if scale is None else float(scale)

    def backward_kernel(self, kernel, *feedback):
        scale = glorot_scale(kernel.shape) if self.scale is None else self.scale
        return sign_times(kernel, scale)

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W * B`: B = sign(W) * scale, whose gradient in W is B."""
        return fixed_feedback_potential(kernel, backward_kernel)

    def get_config(self):
        return {"scale": self.scale}
