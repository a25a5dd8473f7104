"""Batchwise random-magnitude sign-concordant feedback (Moskovitz et al.)."""

from keras import ops

from keras_fa.feedback.base import SEED_GENERATOR
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import new_seed_generator
from keras_fa.feedback.base import register
from keras_fa.feedback.base import sign_times
from keras_fa.seeding import is_random_initializer

#: The `feedback_state` name of brsf's sampler of R.
SAMPLER = "sampler"


@register("brsf")
class BatchRandomSignFeedback(FeedbackRule):
    """brSF: B = sign(W) * |R|, with R redrawn at every call (every batch).

    R is drawn from the layer's `feedback_initializer`, which must be a random
    Keras initializer, with a seed generator the rule owns on the layer
    (`layer.feedback_seed_generator`, and the sampler that uses it,
    `layer.feedback_state["sampler"]`), so draws are reproducible for a
    `seed` and the generator's state is saved with the model.
    """

    def validate(self, layer):
        init = layer.feedback_initializer
        if not is_random_initializer(init):
            raise ValueError(
                "feedback='brsf' redraws its feedback magnitudes from the "
                "layer's `feedback_initializer`, which must be a random Keras "
                "initializer (e.g. 'glorot_uniform', 'he_normal', "
                f"RandomNormal). Received: {init!r}"
            )

    def build(self, layer):
        init = layer.feedback_initializer
        generator = new_seed_generator(layer)
        config = dict(init.get_config(), seed=generator)
        # The sampler draws R with the generator: R is new at every call.
        return {SEED_GENERATOR: generator, SAMPLER: type(init)(**config)}

    def feedback_inputs(self, layer):
        sampler = layer.feedback_state[SAMPLER]
        shape = layer.kernel_shape_for_feedback
        return (ops.abs(sampler(shape, dtype=layer.compute_dtype)),)

    def backward_kernel(self, kernel, *feedback):
        return sign_times(kernel, feedback[0])
