"""Kolen-Pollack learning (Kolen & Pollack 1994; Akrout et al. 2019)."""

from keras_fa.feedback.base import FEEDBACK_KERNEL
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import add_feedback_kernel
from keras_fa.feedback.base import register
from keras_fa.feedback.base import tied_feedback_potential


@register("kp")
class KolenPollack(FeedbackRule):
    """Kolen-Pollack: B receives the same update as W, so B converges to W.

    B (`layer.feedback_kernel`) starts random and is trainable; its gradient is
    the kernel's gradient `x^T delta`, so the optimizer moves both by the same
    step. B also carries the layer's `kernel_regularizer` and
    `kernel_constraint`, and the optimizer's `weight_decay` applies to both:
    with any decay, `W - B` shrinks geometrically and B aligns with W.
    """

    def build(self, layer):
        kernel = add_feedback_kernel(
            layer,
            trainable=True,
            regularizer=layer.kernel_regularizer,
            constraint=layer.kernel_constraint,
        )
        return {FEEDBACK_KERNEL: kernel}

    def feedback_inputs(self, layer):
        return (layer.feedback_state[FEEDBACK_KERNEL],)

    def backward_kernel(self, kernel, *feedback):
        return feedback[0]

    def feedback_gradients(self, d_kernel, feedback, kernel):
        return (d_kernel,)

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W * B - W^2 / 2`: B - W is fixed under plain SGD."""
        return tied_feedback_potential(kernel, backward_kernel)
