"""Fixed random-magnitude sign-concordant feedback (Moskovitz et al., 2018)."""

from keras import ops

from keras_fa.feedback.base import FEEDBACK_KERNEL
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import add_feedback_kernel
from keras_fa.feedback.base import fixed_feedback_potential
from keras_fa.feedback.base import register
from keras_fa.feedback.base import sign_times


@register("frsf")
class FixedRandomSignFeedback(FeedbackRule):
    """frSF: B = sign(W) * |R|, with R drawn once.

    R (`layer.feedback_kernel`) is drawn from the layer's
    `feedback_initializer` and never changes; the signs follow the current W.
    """

    def build(self, layer):
        return {FEEDBACK_KERNEL: add_feedback_kernel(layer, trainable=False)}

    def feedback_inputs(self, layer):
        return (layer.feedback_state[FEEDBACK_KERNEL],)

    def backward_kernel(self, kernel, *feedback):
        return sign_times(kernel, ops.abs(feedback[0]))

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W * B`: |R| is fixed, so the gradient in W is B."""
        return fixed_feedback_potential(kernel, backward_kernel)
