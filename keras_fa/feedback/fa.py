"""Feedback alignment (Lillicrap et al., 2016)."""

from keras_fa.feedback.base import FEEDBACK_KERNEL
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import add_feedback_kernel
from keras_fa.feedback.base import fixed_feedback_potential
from keras_fa.feedback.base import register


@register("fa")
class FeedbackAlignment(FeedbackRule):
    """Feedback alignment: the error goes back through a fixed random B.

    B (`layer.feedback_kernel`) has the kernel's shape, is drawn once from the
    layer's `feedback_initializer` and never changes in training. The input
    gradient is `delta B^T` for a dense layer (the transposed convolution with B
    for a convolution); the kernel gradient stays `x^T delta`.
    """

    def build(self, layer):
        return {FEEDBACK_KERNEL: add_feedback_kernel(layer, trainable=False)}

    def feedback_inputs(self, layer):
        return (layer.feedback_state[FEEDBACK_KERNEL],)

    def backward_kernel(self, kernel, *feedback):
        return feedback[0]

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W * B`: B is fixed."""
        return fixed_feedback_potential(kernel, backward_kernel)
