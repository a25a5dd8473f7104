"""Direct feedback: dfa, drtp and the shallow control, for any hidden layers.

Direct rules send a signal from the output straight to every hidden layer
through a fixed random matrix B_l per layer, instead of back through the
layers above. The design works on every backend (jax rejects a cotangent whose
shape differs from its input, so a hidden layer cannot simply be handed the
output error):

- the hidden activations to be trained ("taps") are cut from the layers above
  them with `BlockGradient`, so no error travels through a forward weight;
- one `DirectFeedback` layer at the output takes `[logits, *taps]` and returns
  the logits; its custom gradient returns the error e for the logits and, for
  each tap, e B_l reshaped to the tap's shape (dfa), the one-hot target y* B_l
  scaled like e (drtp, added by `DirectFeedbackModel.compute_loss`, where the
  targets are known), or nothing (shallow).

Autodiff then multiplies by f'(a_l) and forms each layer's local weight
gradient, whatever the hidden layer is (Dense, convolution, pooling,
normalization, keras_fa layers).
"""

import math

import keras
from keras import ops

from keras_fa import tracing
from keras_fa.layers.base import feedback_seed
from keras_fa.layers.base import get_feedback_initializer
from keras_fa.layers.base import reseeded
from keras_fa.layers.base import standardize_seed

DIRECT_RULES = ("dfa", "drtp", "shallow")


@keras.saving.register_keras_serializable(package="keras_fa")
class BlockGradient(keras.layers.Layer):
    """Identity in the forward pass; passes no gradient backwards.

    Put it after each tapped hidden activation of a direct-feedback model, so
    the layers below learn only from their direct feedback.
    """

    def call(self, inputs):
        # Alignment measures probe the tapped activation here too: under
        # exact backprop its true gradient arrives through this layer.
        inputs = tracing.probe(self, inputs)
        if tracing.is_exact():
            return inputs
        return ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


class _Scratch:
    # Holds the tensors of the current trace out of Keras's attribute tracking.
    taps = None


@keras.saving.register_keras_serializable(package="keras_fa")
class DirectFeedback(keras.layers.Layer):
    """The output end of a direct-feedback model.

    Called on `[logits, tap_1, ..., tap_L]`, it returns `logits` unchanged. In
    the backward pass the logits receive their true gradient e; tap l receives
    `e B_l` (dfa), `y* B_l / batch_size` (drtp) or nothing (shallow), reshaped
    to the tap's shape. B_l has shape `(n_outputs, tap size)` and is fixed.

    drtp needs the targets, which only the loss sees: use it in a
    `keras_fa.DirectFeedbackModel` (as `keras_fa.direct_feedback` builds).

    Args:
        feedback: `"dfa"` (default), `"drtp"` or `"shallow"`.
        feedback_initializer: initializer of the B_l. Default
            `"glorot_uniform"`.
        seed: integer seed of the B_l; the same seed gives the same B_l.
        **kwargs: base layer arguments (name, dtype...).

    Example:

    >>> inputs = keras.Input((784,))
    >>> h1 = keras.layers.Dense(256, activation="relu")(inputs)
    >>> h2 = keras.layers.Dense(256, activation="relu")(
    ...     keras_fa.BlockGradient()(h1))
    >>> logits = keras.layers.Dense(10)(keras_fa.BlockGradient()(h2))
    >>> outputs = keras_fa.DirectFeedback("dfa")([logits, h1, h2])
    >>> model = keras_fa.DirectFeedbackModel(inputs, outputs)
    """

    def __init__(
        self,
        feedback="dfa",
        feedback_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            not isinstance(feedback, str)
            or feedback.lower() not in DIRECT_RULES
        ):
            raise ValueError(
                f"Unknown direct feedback rule {feedback!r}. Allowed: "
                f"{', '.join(DIRECT_RULES)}. (Layer-wise rules such as 'fa' "
                "go to the layers: keras_fa.FADense(..., feedback='fa').)"
            )
        self.feedback = feedback.lower()
        self.seed = standardize_seed(seed)
        self._unseeded_feedback_initializer = get_feedback_initializer(
            feedback_initializer
        )
        self._scratch = _Scratch()
        self.feedback_kernels = []

    def _initializer(self, index):
        return reseeded(
            self._unseeded_feedback_initializer, feedback_seed(self.seed, index)
        )

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not isinstance(
            input_shape[0], (list, tuple)
        ):
            raise ValueError(
                "DirectFeedback is called on a list [logits, tap_1, ...]. "
                f"Received a single input of shape {input_shape}."
            )
        logits_shape, *tap_shapes = input_shape
        if len(logits_shape) != 2 or logits_shape[-1] is None:
            raise ValueError(
                "The logits given to DirectFeedback must have shape "
                f"(batch, n_outputs). Received: {logits_shape}."
            )
        n_out = logits_shape[-1]
        self.feedback_kernels = []
        for i, shape in enumerate(tap_shapes):
            if any(d is None for d in shape[1:]):
                raise ValueError(
                    f"Tap {i} of DirectFeedback has an unknown dimension: "
                    f"{shape}. Every tap needs a known shape after the batch."
                )
            self.feedback_kernels.append(
                self.add_weight(
                    name=f"feedback_kernel_{i}",
                    shape=(n_out, math.prod(shape[1:])),
                    initializer=self._initializer(i),
                    trainable=False,
                )
            )

    def call(self, inputs):
        logits, *taps = inputs
        taps = [tracing.probe(self, t, i) for i, t in enumerate(taps)]
        self._scratch.taps = taps
        if tracing.is_exact():
            return logits
        if self.feedback != "dfa" or not taps:
            # shallow: the taps get no gradient; drtp: theirs is added by
            # DirectFeedbackModel.compute_loss from the targets.
            return logits
        dtype = logits.dtype
        kernels = [
            ops.cast(ops.convert_to_tensor(b), dtype)
            for b in self.feedback_kernels
        ]
        shapes = [tuple(t.shape[1:]) for t in taps]
        n = len(taps)

        @ops.custom_gradient
        def project(z, *args):
            def grad(*upstreams, upstream=None):
                e = upstreams[0] if upstream is None else upstream
                d_taps = tuple(
                    ops.reshape(ops.matmul(e, b), (-1, *shape))
                    for b, shape in zip(args[n:], shapes)
                )
                return (e, *d_taps, *(None for _ in range(n)))

            return z, grad

        return project(logits, *taps, *kernels)

    def target_loss(self, y, logits, sample_weight=None):
        """Returns drtp's surrogate loss: value 0, gradient `y* B_l / N` at
        each tap. Zero for other rules.

        With `sample_weight`, each example's signal is weighted like its
        loss, `s_n y*_n B_l / N` (a weight of 0 removes the example)."""
        taps = self._scratch.taps
        if self.feedback != "drtp" or not taps or tracing.is_exact():
            return ops.zeros((), dtype="float32")
        n_out = logits.shape[-1]
        y = ops.convert_to_tensor(y)
        if len(y.shape) == len(logits.shape) and y.shape[-1] == n_out:
            target = ops.cast(y, logits.dtype)
        else:
            target = ops.one_hot(
                ops.reshape(ops.cast(y, "int32"), (-1,)),
                n_out,
                dtype=logits.dtype,
            )
        if sample_weight is not None:
            weight = ops.cast(
                ops.convert_to_tensor(sample_weight), target.dtype
            )
            target = target * ops.reshape(weight, (-1, 1))
        batch = ops.cast(ops.shape(logits)[0], logits.dtype)
        total = ops.zeros((), dtype=logits.dtype)
        for tap, b in zip(taps, self.feedback_kernels):
            signal = ops.stop_gradient(
                ops.reshape(
                    ops.matmul(target, ops.cast(b, tap.dtype)),
                    ops.shape(tap),
                )
                / ops.cast(batch, tap.dtype)
            )
            term = ops.cast(ops.sum(tap * signal), logits.dtype)
            total = total + term - ops.stop_gradient(term)
        return ops.cast(total, "float32")

    def get_config(self):
        return {
            **super().get_config(),
            "feedback": self.feedback,
            "feedback_initializer": keras.initializers.serialize(
                self._unseeded_feedback_initializer
            ),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="keras_fa")
class DirectFeedbackModel(keras.Model):
    """A functional Keras model that gives drtp its targets.

    Build it like `keras.Model(inputs, outputs)`. Its `compute_loss` adds each
    drtp `DirectFeedback` layer's surrogate term (value 0), whose gradient
    delivers `y* B_l` to the taps. For dfa and shallow it behaves exactly as
    `keras.Model`.
    """

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        if not training or y is None:
            return loss
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, DirectFeedback) and layer.feedback == "drtp":
                term = layer.target_loss(y, y_pred, sample_weight)
                loss = loss + ops.cast(term, loss.dtype)
        return loss


def _has_kernel(layer):
    return any(
        v.path.split("/")[-1] in ("kernel", "depthwise_kernel")
        for v in layer.trainable_weights
    )


def direct_feedback(
    model, feedback="dfa", feedback_initializer="glorot_uniform", seed=None
):
    """Returns a copy of a Sequential model trained by a direct rule.

    The layers are grouped into blocks, each starting at a layer with a
    kernel (Dense, convolutions, keras_fa layers...) and holding the
    parameter-free or normalization layers that follow it (activations,
    pooling, batch normalization, dropout, flatten). The output of every
    block but the last is tapped and cut with `BlockGradient`; the output
    layer's activation, if any, is moved after the `DirectFeedback` layer, so
    the error e is taken at the logits. Weights are copied; the original
    model is not changed and the copy is not compiled.

    Args:
        model: a `keras.Sequential` model (built, with an `Input`).
        feedback: `"dfa"`, `"drtp"` or `"shallow"`.
        feedback_initializer: initializer of the direct feedback matrices.
        seed: integer seed of the direct feedback matrices.

    Returns:
        A `keras_fa.DirectFeedbackModel`.

    Example:

    >>> dfa_model = keras_fa.direct_feedback(mlp, "dfa")
    >>> dfa_model.compile("adam", keras.losses.SparseCategoricalCrossentropy())
    """
    head = DirectFeedback(feedback, feedback_initializer, seed)
    if not isinstance(model, keras.Sequential):
        raise ValueError(
            "keras_fa.direct_feedback takes a keras.Sequential model. For "
            "other models, place keras_fa.BlockGradient and "
            "keras_fa.DirectFeedback yourself (see DirectFeedback)."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            "Build the Sequential model first: start it with keras.Input."
        )
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layers = copy.layers
    starts = [i for i, layer in enumerate(layers) if _has_kernel(layer)]
    if not starts:
        raise ValueError("The model has no layer with a kernel to train.")
    inputs = keras.Input(batch_shape=model.inputs[0].shape)
    x = inputs
    taps = []
    last = starts[-1]
    for i, layer in enumerate(layers[:last]):
        x = layer(x)
        # Layers before the first kernel (Flatten, Rescaling...) form no
        # block: tapping them would give B to an input with nothing to train.
        if i + 1 in starts[1:]:
            taps.append(x)
            x = BlockGradient()(x)
    output_layer = layers[last]
    activation = getattr(output_layer, "activation", None)
    linear = activation is None or activation is keras.activations.linear
    if not linear:
        output_layer.activation = keras.activations.linear
    x = head([output_layer(x), *taps])
    if not linear:
        x = keras.layers.Activation(activation)(x)
    for layer in layers[last + 1 :]:
        x = layer(x)
    return DirectFeedbackModel(inputs, x)
