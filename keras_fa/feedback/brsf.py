"""Batchwise random-magnitude sign-concordant feedback (Moskovitz et al.)."""

from keras import ops

from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import add_feedback_seed_generator
from keras_fa.feedback.base import register
from keras_fa.feedback.base import sign_times


@register("brsf")
class BatchRandomSignFeedback(FeedbackRule):
    """brSF: B = sign(W) * |R|, with R redrawn at every call (every batch).

    R is drawn from the layer's `feedback_initializer`, which must be a random
    Keras initializer, with a seed generator the layer owns
    (`layer.feedback_seed_generator`), so draws are reproducible for a `seed`
    and the generator's state is saved with the model.
    """

    def validate(self, layer):
        init = layer.feedback_initializer
        if "seed" not in init.get_config():
            raise ValueError(
                "feedback='brsf' redraws its feedback magnitudes from the "
                "layer's `feedback_initializer`, which must be a random Keras "
                "initializer (e.g. 'glorot_uniform', 'he_normal', "
                f"RandomNormal). Received: {init!r}"
            )

    def build(self, layer):
        init = layer.feedback_initializer
        add_feedback_seed_generator(layer)
        config = dict(init.get_config(), seed=layer.feedback_seed_generator)
        layer._brsf_sampler = type(init)(**config)

    def feedback_inputs(self, layer):
        shape = layer.kernel_shape_for_feedback
        return (ops.abs(layer._brsf_sampler(shape, dtype=layer.compute_dtype)),)

    def backward_kernel(self, kernel, *feedback):
        return sign_times(kernel, feedback[0])
