"""FAMultiHeadAttention and FAGroupQueryAttention: Keras attention layers
whose projections are feedback layers."""

import keras

from keras_fa._validation import check_integer
from keras_fa.layers.base import CompositeFeedbackMixin
from keras_fa.layers.einsum_dense import FAEinsumDense
from keras_fa.seeding import layer_seed
from keras_fa.seeding import standardize_seed

# The projections of Keras's attention layers (private attributes: Keras
# has public properties for four of them, not for the gate, and none to
# replace them), in the order their feedback seeds are derived:
# `seeding.layer_seed(seed, i)` for projection i.
_PROJECTIONS = (
    "_query_dense",
    "_key_dense",
    "_value_dense",
    "_output_dense",
    "_gate_dense",
)

_DOC = """

    The forward pass is that of `keras.layers.{keras_name}`. Its query, key,
    value and output projections (and the gate, with `use_gate=True`) are
    `keras_fa.FAEinsumDense` layers with the given rule, so the error crosses
    each projection through a feedback kernel; the scores, softmax and
    weighted sum have no weights and are differentiated exactly. The
    projections are built from the same Keras code and initial weights as in
    `keras.layers.{keras_name}`. With `feedback="bp"` the layer computes what
    the Keras layer computes.

    Args:
        feedback: the feedback rule of every projection: a name (`"fa"`
            (default), `"bp"`, `"usf"`, `"brsf"`, `"frsf"`, `"kp"`, `"wm"`), a
            config dict, or a `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the feedback kernels (fa, kp,
            wm) or of their random magnitudes (frsf, brsf). Defaults to
            `"glorot_uniform"`.
        seed: integer seed, used as in Keras for the attention dropout and
            for the feedback weights (projection i, in the order query, key,
            value, output, gate, from `keras_fa.seeding.layer_seed(seed,
            i)`). None draws from Keras's global random state.
        **kwargs: every other argument of `keras.layers.{keras_name}`.
"""


class _FAAttention(CompositeFeedbackMixin):
    """Shared code: swaps the built projections for feedback ones."""

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        # Keras builds plain EinsumDense projections; each is replaced by an
        # FAEinsumDense with the same config and initial weights.
        for i, attribute in enumerate(_PROJECTIONS):
            old = getattr(self, attribute, None)
            if old is None:
                continue
            new = FAEinsumDense.from_config(
                {
                    **old.get_config(),
                    **self._feedback_config(),
                    "seed": layer_seed(self.seed, i),
                }
            )
            new.build(old.get_build_config()["input_shape"])
            for target, source in zip(_forward_weights(new), old.weights):
                target.assign(source)
            # Keras has no public way to swap a tracked sub-layer; without
            # this the old projection would stay in `self._layers`.
            self._tracker.replace_tracked_value("layers", old, new)
            setattr(self, attribute, new)


def _forward_weights(layer):
    feedback = {id(v) for v in layer._feedback_variables()}
    return [v for v in layer.weights if id(v) not in feedback]


@keras.saving.register_keras_serializable(package="keras_fa")
class FAMultiHeadAttention(_FAAttention, keras.layers.MultiHeadAttention):
    __doc__ = (
        "Multi-head attention whose projections follow a feedback rule."
        + _DOC.format(keras_name="MultiHeadAttention")
    )

    def __init__(
        self,
        num_heads,
        key_dim,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(
            num_heads, key_dim, seed=standardize_seed(seed), **kwargs
        )
        self._init_composite_feedback(feedback, feedback_initializer)

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}


@keras.saving.register_keras_serializable(package="keras_fa")
class FAGroupQueryAttention(_FAAttention, keras.layers.GroupQueryAttention):
    __doc__ = (
        "Group-query attention whose projections follow a feedback rule."
        + _DOC.format(keras_name="GroupQueryAttention")
    )

    def __init__(
        self,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        # Keras divides by them (ZeroDivisionError) or takes 0 silently.
        head_dim = check_integer("head_dim", head_dim, minimum=1)
        num_query_heads = check_integer(
            "num_query_heads", num_query_heads, minimum=1
        )
        num_key_value_heads = check_integer(
            "num_key_value_heads", num_key_value_heads, minimum=1
        )
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                "`num_query_heads` must be divisible by "
                "`num_key_value_heads`. Received: "
                f"num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        super().__init__(
            head_dim,
            num_query_heads,
            num_key_value_heads,
            seed=standardize_seed(seed),
            **kwargs,
        )
        self._init_composite_feedback(feedback, feedback_initializer)

    def get_config(self):
        return {**super().get_config(), **self._feedback_config()}
