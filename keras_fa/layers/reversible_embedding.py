"""FAReversibleEmbedding: `keras.layers.ReversibleEmbedding` whose reverse
(output) projection follows a feedback rule."""

import keras
from keras import ops

from keras_fa.layers.base import CompositeFeedbackMixin
from keras_fa.layers.base import FeedbackKernel
from keras_fa.ops import feedback_matmul
from keras_fa.ops import feedback_matmul_transposed
from keras_fa.seeding import standardize_seed


@keras.saving.register_keras_serializable(package="keras_fa")
class FAReversibleEmbedding(
    CompositeFeedbackMixin, keras.layers.ReversibleEmbedding
):
    """Reversible embedding whose reverse projection follows a feedback rule.

    The forward pass is that of `keras.layers.ReversibleEmbedding`. Looking
    tokens up (`reverse=False`) sends no gradient to the inputs, so it trains
    the same under every rule. The reverse call, `logits = x E^T` (or
    `x @ reverse_embeddings` with `tie_weights=False`), is a product with an
    input gradient: there the error reaches `x` through a feedback kernel B
    shaped like the matrix used (`(input_dim, output_dim)` when tied), while
    the matrix learns from its local gradient. The feedback state lives in the
    sub-layer `reverse_feedback` (a `keras_fa.layers.FeedbackKernel`). With
    `feedback="bp"` the layer computes what the Keras layer computes.

    Args:
        input_dim: size of the vocabulary.
        output_dim: dimension of the embedding.
        feedback: the feedback rule of the reverse projection: a name
            (`"fa"` (default), `"bp"`, `"usf"`, `"brsf"`, `"frsf"`, `"kp"`,
            `"wm"`), a config dict, or a `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernel (fa, kp,
            wm) or of its random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed of the feedback weights. None draws from Keras's
            global random state.
        **kwargs: every other argument of `keras.layers.ReversibleEmbedding`
            (tie_weights, embeddings_initializer, mask_zero, reverse_dtype,
            logit_soft_cap, dtype, name...).
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(input_dim, output_dim, **kwargs)
        self._init_composite_feedback(feedback, feedback_initializer)
        self.seed = standardize_seed(seed)
        self.reverse_feedback = FeedbackKernel(
            self,
            "embeddings" if self.tie_weights else "reverse_embeddings",
            feedback=self.feedback,
            feedback_initializer=self._unseeded_feedback_initializer,
            seed=self.seed,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
            name="reverse_feedback",
            # Keras computes the reverse product in `reverse_dtype` if set.
            dtype=self.reverse_dtype or self.dtype_policy,
        )

    def build(self, input_shape=None):
        super().build(input_shape)
        self.reverse_feedback.build(self.reverse_feedback.kernel.shape)

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs, reverse=False)
        if self.tie_weights:
            forward = lambda x, w: ops.matmul(x, ops.transpose(w))  # noqa: E731
            op = feedback_matmul_transposed
        else:
            forward, op = ops.matmul, feedback_matmul
        if self.reverse_dtype is not None:
            inputs = ops.cast(inputs, self.reverse_dtype)
        logits = self.reverse_feedback.apply(inputs, forward, op)
        if self.logit_soft_cap is not None:
            soft_cap = self.logit_soft_cap
            logits = ops.multiply(
                ops.tanh(ops.divide(logits, soft_cap)), soft_cap
            )
        return logits

    def get_config(self):
        return {
            **super().get_config(),
            **self._feedback_config(),
            "seed": self.seed,
        }
