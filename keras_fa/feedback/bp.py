"""Backpropagation: the control."""

from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import register
from keras_fa.feedback.base import tied_feedback_potential


@register("bp")
class Backprop(FeedbackRule):
    """Exact backpropagation: the error goes back through W itself.

    A layer with this rule runs the plain Keras op, so it computes exactly what
    the Keras layer it replaces computes. Use it as the control.
    """

    exact = True

    def backward_kernel(self, kernel, *feedback):
        return kernel

    def conservation_potential(self, kernel, backward_kernel):
        """Returns `W^2 / 2` (`W * B - W^2 / 2` with B = W)."""
        return tied_feedback_potential(kernel, backward_kernel)
