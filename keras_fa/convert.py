"""Turn an existing Keras model into a keras_fa model."""

import keras

from keras_fa import feedback as feedback_lib
from keras_fa.layers import FAConv1D
from keras_fa.layers import FAConv2D
from keras_fa.layers import FADense
from keras_fa.layers.base import FeedbackMixin
from keras_fa.layers.base import get_feedback_initializer

_REPLACEMENTS = {
    keras.layers.Dense: FADense,
    keras.layers.Conv1D: FAConv1D,
    keras.layers.Conv2D: FAConv2D,
}


def convert(
    model, feedback="fa", feedback_initializer="glorot_uniform", seed=None
):
    """Returns a copy of `model` whose Dense and conv layers use `feedback`.

    Every `keras.layers.Dense`, `Conv1D` and `Conv2D` (and every keras_fa
    layer) is replaced by the keras_fa layer with the same configuration and
    weights and the given feedback rule; all other layers are copied with
    their weights. The original model is not changed. Like
    `keras.models.clone_model`, the copy is not compiled.

    Args:
        model: a Sequential or functional Keras model (nested models too).
        feedback: the feedback rule for the replaced layers: a name, a config
            dict or a `keras_fa.feedback.FeedbackRule`.
        feedback_initializer: initializer of the new feedback weights.
        seed: integer seed; layer i (in the order of the model) gets
            `seed + i`. None draws from Keras's global random state.

    Example:

    >>> fa_model = keras_fa.convert(model, feedback="usf")
    """
    rule = feedback_lib.get(feedback)
    initializer = get_feedback_initializer(feedback_initializer)
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or _is_functional(model)
    ):
        raise ValueError(
            "keras_fa.convert works on Sequential and functional Keras "
            f"models. Received: {type(model).__name__}. For a subclassed "
            "model, use keras_fa.FADense / FAConv1D / FAConv2D in its code."
        )
    pairs = []

    def clone(layer):
        cls = _REPLACEMENTS.get(type(layer))
        if isinstance(layer, FeedbackMixin):
            cls = type(layer)
        config = layer.get_config()
        if cls is None:
            new = type(layer).from_config(config)
        else:
            config.update(
                feedback=feedback_lib.serialize(rule),
                feedback_initializer=keras.initializers.serialize(initializer),
                seed=None if seed is None else seed + len(pairs),
            )
            new = cls.from_config(config)
        pairs.append((layer, new, cls is not None))
        return new

    new_model = keras.models.clone_model(
        model, clone_function=clone, recursive=True
    )
    # Copy through numpy: on jax, assigning one variable's value to another
    # shares the buffer, and training the copy (which donates its buffers)
    # would delete the original model's weights.
    for old, new, replaced in pairs:
        if replaced:
            new._kernel.assign(keras.ops.convert_to_numpy(old.kernel))
            if old.bias is not None:
                new.bias.assign(keras.ops.convert_to_numpy(old.bias))
        else:
            new.set_weights(old.get_weights())
    return new_model


def _is_functional(model):
    return type(model).__name__ == "Functional" or (
        hasattr(model, "_operations") and hasattr(model, "_nodes_by_depth")
    )
