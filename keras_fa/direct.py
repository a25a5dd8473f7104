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
  each tap, e B_l shaped like the tap (dfa), the one-hot target y* B_l scaled
  like e (drtp, added by `DirectFeedbackModel.compute_loss`, where the
  targets are known), or nothing (shallow).

Autodiff then multiplies by f'(a_l) and forms each layer's local weight
gradient, whatever the hidden layer is (Dense, convolution, pooling,
normalization, attention, keras_fa layers).

Shapes. The logits have shape `(batch, *positions, classes)`: `(batch,
classes)` for a classifier, `(batch, time, classes)` for a language model.
A tap of shape `(batch, *positions, features)`, with the logits' positions,
gets the signal position by position, `d tap[b, t] = e[b, t] B_l` with B_l
of shape `(classes, features)` (as in Launay et al., 2020, for
transformers): its memory is classes x features, whatever the sequence
length. Any other tap (a convolution's feature map under a classifier, a
pooled vector under a language model) gets the flattened projection: e as
`(batch, prod(positions) * classes)` times B_l of shape
`(prod(positions) * classes, prod(tap shape))`. For `(batch, classes)`
logits and a `(batch, features)` tap both read the same.

`direct_feedback(model, rule, taps=...)` builds such a model from any
Sequential or functional Keras model (KerasHub task models too).
"""

import collections
import math

import keras
from keras import ops

from keras_fa import feedback as feedback_lib
from keras_fa import tracing
from keras_fa.cloning import InlinedGraph
from keras_fa.cloning import all_layers
from keras_fa.cloning import copy_operation
from keras_fa.cloning import fresh_inputs
from keras_fa.cloning import is_graph_model
from keras_fa.cloning import node_of
from keras_fa.layers.base import get_feedback_initializer
from keras_fa.seeding import feedback_seed
from keras_fa.seeding import reseeded
from keras_fa.seeding import standardize_seed

CALLER = "keras_fa.direct_feedback"
#: How a tap with positions the logits do not have gets its signal.
POSITIONS = ("flatten", "shared")
#: The direct rules, from the one rule namespace (`keras_fa.feedback`).
DIRECT_RULES = tuple(feedback_lib.names("direct"))


def _check_positions(positions):
    if positions not in POSITIONS:
        raise ValueError(
            f"`positions` must be one of {', '.join(POSITIONS)}. "
            f"Received: positions={positions!r}"
        )
    return positions


@keras.saving.register_keras_serializable(package="keras_fa")
class BlockGradient(keras.layers.Layer):
    """Identity in the forward pass; passes no gradient backwards.

    Put it after each tapped hidden activation of a direct-feedback model, so
    the layers below learn only from their direct feedback. Keras masks
    pass through it.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

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


def _compatible(a, b):
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b)
    )


@keras.saving.register_keras_serializable(package="keras_fa")
class DirectFeedback(keras.layers.Layer):
    """The output end of a direct-feedback model.

    Called on `[logits, tap_1, ..., tap_L]`, it returns `logits` unchanged
    (with their Keras mask, if any). In the backward pass the logits receive
    their true gradient e; tap l receives `e B_l` (dfa), the one-hot targets
    `y* B_l` divided by the number of predictions (drtp) or nothing
    (shallow: in a `DirectFeedbackModel` the layers below the taps then
    get a zero gradient, see `DirectFeedbackModel.untrained_variables`).
    The B_l are fixed (non-trainable weights, saved with the model).

    Shapes: the logits are `(batch, *positions, classes)`, e.g. `(batch,
    classes)` or `(batch, time, classes)`. A tap of shape `(batch,
    *positions, features)` with the logits' positions (None matches any
    length) is fed position by position: `d tap[b, t] = e[b, t] B_l`, B_l of
    shape `(classes, features)`, so memory does not grow with the sequence
    length. Every other tap gets the flattened projection: e reshaped to
    `(batch, prod(positions) * classes)` times B_l of shape
    `(prod(positions) * classes, prod(tap.shape[1:]))`, which needs every
    dimension known. With `(batch, classes)` logits a `(batch, features)`
    tap has B_l of shape `(classes, features)` either way.

    drtp needs the targets, which only the loss sees: use it in a
    `keras_fa.DirectFeedbackModel` (as `keras_fa.direct_feedback` builds).
    Its targets are integer labels of shape `(batch, *positions)` (or with
    a trailing 1) or one-hot `(batch, *positions, classes)`; the signal at
    each position is `y*_t B_l / (batch * prod(positions))`, the scale a
    mean loss gives e, times the position's `sample_weight` (of shape
    `(batch,)` or `(batch, *positions)`) when there is one. drtp does not
    read Keras masks: give padding a sample weight of 0.

    Args:
        feedback: `"dfa"` (default), `"drtp"` or `"shallow"`, in any case
            (stored and saved in lower case).
        feedback_initializer: initializer of the B_l. Default
            `"glorot_uniform"`.
        seed: integer seed of the B_l; the same seed gives the same B_l.
        positions: `"flatten"` (default) or `"shared"`: with
            `(batch, classes)` logits, a tap of shape `(batch, *positions,
            features)` gets, under `"shared"`, one B_l of shape
            `(classes, features)` for all its positions, each receiving
            `e B_l / prod(positions)` (the way mean pooling shares the
            error), instead of the flattened projection.
        **kwargs: base layer arguments (name, dtype...).

    Example:

    >>> inputs = keras.Input((784,))
    >>> h1 = keras.layers.Dense(256, activation="relu")(inputs)
    >>> h2 = keras.layers.Dense(256, activation="relu")(
    ...     keras_fa.BlockGradient()(h1))
    >>> logits = keras.layers.Dense(10)(keras_fa.BlockGradient()(h2))
    >>> outputs = keras_fa.DirectFeedback("dfa")([logits, h1, h2])
    >>> model = keras_fa.DirectFeedbackModel(inputs, outputs)

    A language-model head, one B_l of shape `(vocabulary, d)` per block:

    >>> tokens = keras.Input((None,), dtype="int32")
    >>> h = keras.layers.Embedding(1000, 64)(tokens)
    >>> h1 = keras.layers.Dense(64, activation="gelu")(h)
    >>> logits = keras.layers.Dense(1000)(keras_fa.BlockGradient()(h1))
    >>> outputs = keras_fa.DirectFeedback("dfa")([logits, h1])
    """

    def __init__(
        self,
        feedback="dfa",
        feedback_initializer="glorot_uniform",
        seed=None,
        positions="flatten",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.feedback = feedback_lib.get_direct(feedback)
        self.seed = standardize_seed(seed)
        self.positions = _check_positions(positions)
        self._unseeded_feedback_initializer = get_feedback_initializer(
            feedback_initializer
        )
        self._scratch = _Scratch()
        self.feedback_kernels = []
        # Per tap, how e reaches it: "position", "flatten" or "shared".
        self._modes = []

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
        logits_shape, *tap_shapes = (tuple(s) for s in input_shape)
        if len(logits_shape) < 2 or logits_shape[-1] is None:
            raise ValueError(
                "The logits given to DirectFeedback must have shape "
                "(batch, classes) or (batch, *positions, classes), with the "
                f"classes known. Received: {logits_shape}."
            )
        n_out = logits_shape[-1]
        positions = logits_shape[1:-1]
        self.feedback_kernels = []
        self._modes = []
        for i, shape in enumerate(tap_shapes):
            mode = "flatten"
            if (
                len(shape) >= 2
                and shape[-1] is not None
                and _compatible(shape[1:-1], positions)
            ):
                mode = "position"
            elif (
                self.positions == "shared"
                and not positions
                and len(shape) >= 3
                and shape[-1] is not None
            ):
                mode = "shared"
            if mode != "flatten":
                kernel_shape = (n_out, shape[-1])
            elif all(d is not None for d in positions + shape[1:]):
                kernel_shape = (
                    math.prod(positions) * n_out,
                    math.prod(shape[1:]),
                )
            else:
                raise ValueError(
                    f"Tap {i} of DirectFeedback has shape {shape}, and the "
                    f"logits {logits_shape}. A tap is fed position by "
                    "position when it has the logits' positions, shape "
                    f"{('batch', *positions, 'features')}; otherwise "
                    "through the flattened logits, which needs every "
                    "dimension of the tap and of the logits' positions "
                    "known."
                )
            self._modes.append(mode)
            self.feedback_kernels.append(
                self.add_weight(
                    name=f"feedback_kernel_{i}",
                    shape=kernel_shape,
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
        modes = list(self._modes)
        n = len(taps)

        @ops.custom_gradient
        def project(z, *args):
            def grad(*upstreams, upstream=None):
                e = upstreams[0] if upstream is None else upstream
                d_taps = tuple(
                    ops.cast(_project(e, b, mode, ops.shape(tap)), tap.dtype)
                    for tap, b, mode, shape in zip(
                        args[:n], args[n:], modes, shapes
                    )
                )
                return (e, *d_taps, *(None for _ in range(n)))

            return z, grad

        return project(logits, *taps, *kernels)

    def compute_mask(self, inputs, previous_mask=None):
        # The logits' mask, so that the loss sees what it would without us.
        if isinstance(previous_mask, (list, tuple)):
            return previous_mask[0]
        return previous_mask

    def _targets(self, y, logits):
        """The targets y* as `(batch, *positions, classes)`."""
        n_out = logits.shape[-1]
        rank = len(logits.shape)
        y = ops.convert_to_tensor(y)
        shape = tuple(y.shape)
        if len(shape) == rank and shape[-1] == n_out:
            return ops.cast(y, logits.dtype)
        if len(shape) == rank and shape[-1] == 1:
            shape = shape[:-1]
        if not _compatible(shape, tuple(logits.shape[:-1])):
            raise ValueError(
                "drtp needs targets y of shape (batch, *positions) (integer "
                "labels, also with a trailing 1) or (batch, *positions, "
                f"classes) (one-hot); the logits have shape {logits.shape}. "
                f"Received y of shape {tuple(y.shape)}."
            )
        labels = ops.reshape(ops.cast(y, "int32"), (-1,))
        target = ops.one_hot(labels, n_out, dtype=logits.dtype)
        return ops.reshape(target, ops.shape(logits))

    def target_loss(self, y, logits, sample_weight=None):
        """Returns drtp's surrogate loss: value 0, gradient the drtp signal
        at each tap. Zero for other rules.

        The signal is `y* B_l / M`, position by position or flattened like
        dfa's (see the class docstring), where M = batch x positions is the
        number of predictions, the scale a mean loss gives e. With
        `sample_weight` (shape `(batch,)` or `(batch, *positions)`) each
        position's signal is weighted like its loss, `s y* B_l / M` (a
        weight of 0 removes it)."""
        taps = self._scratch.taps
        if self.feedback != "drtp" or not taps or tracing.is_exact():
            return ops.zeros((), dtype="float32")
        target = self._targets(y, logits)
        if sample_weight is not None:
            weight = ops.cast(
                ops.convert_to_tensor(sample_weight), target.dtype
            )
            for _ in range(len(target.shape) - len(weight.shape)):
                weight = ops.expand_dims(weight, -1)
            target = target * weight
        count = ops.prod(
            ops.convert_to_tensor(ops.shape(logits)[:-1], dtype="int32")
        )
        total = ops.zeros((), dtype=logits.dtype)
        for tap, b, mode in zip(taps, self.feedback_kernels, self._modes):
            signal = _project(
                ops.cast(target, tap.dtype),
                ops.cast(b, tap.dtype),
                mode,
                ops.shape(tap),
            )
            signal = ops.stop_gradient(signal / ops.cast(count, tap.dtype))
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
            "positions": self.positions,
        }


def _project(signal, b, mode, tap_shape):
    """`signal` (batch, *positions, classes) through B to a tap's shape
    (`tap_shape` with the batch)."""
    if mode == "position":
        return ops.matmul(signal, b)
    if mode == "shared":
        # One B for every position of the tap; each gets 1/P of e B, as
        # mean pooling shares the error among them.
        projected = ops.matmul(signal, b)
        for _ in range(len(tap_shape) - 2):
            projected = ops.expand_dims(projected, 1)
        count = ops.prod(ops.convert_to_tensor(tap_shape[1:-1], "int32"))
        return ops.broadcast_to(
            projected / ops.cast(count, projected.dtype), tap_shape
        )
    flat = ops.reshape(signal, (-1, b.shape[0]))
    return ops.reshape(ops.matmul(flat, b), tap_shape)


@keras.saving.register_keras_serializable(package="keras_fa")
class DirectFeedbackModel(keras.Model):
    """A functional Keras model that gives drtp its targets.

    Build it like `keras.Model(inputs, outputs)`. Its `compute_loss` adds each
    drtp `DirectFeedback` layer's surrogate term (value 0), whose gradient
    delivers `y* B_l` to the taps. Under shallow it adds a term of value 0
    whose gradient is zero for the variables of the layers below the taps,
    which by design get no error: they then receive a zero gradient on
    every backend (as jax gives unconnected variables), and `compile`
    excludes them from the optimizer's weight decay, so the optimizer
    leaves them as they were drawn and Keras does not warn "Gradients do
    not exist for variables ...". For dfa it behaves exactly as
    `keras.Model`.

    It takes the arguments of `keras.Model(inputs, outputs, name=...,
    trainable=...)`, and refuses any other keyword (which Keras's
    functional model would ignore).
    """

    # What Keras's functional Model uses; it ignores any other keyword.
    _KEYWORDS = ("inputs", "outputs", "name", "trainable")

    def __init__(self, *args, **kwargs):
        unknown = {k: v for k, v in kwargs.items() if k not in self._KEYWORDS}
        if unknown:
            raise TypeError(
                "Unrecognized keyword arguments passed to "
                f"{type(self).__name__}: {unknown}. Allowed: "
                f"{', '.join(self._KEYWORDS)}."
            )
        super().__init__(*args, **kwargs)

    def compile(self, *args, **kwargs):
        """Configures the model for training, as `keras.Model.compile`.

        Also excludes `untrained_variables()` (the hidden layers of a
        shallow model) from the optimizer's weight decay, which would
        otherwise shrink them at every step, though by the rule they keep
        their initial weights. Exclusions already set on the optimizer
        (`exclude_from_weight_decay` before `compile`) are kept.
        """
        super().compile(*args, **kwargs)
        self._exclude_untrained_from_weight_decay()

    def compile_from_config(self, config):
        """Compiles the model from `get_compile_config()`'s dict (when a
        saved model loads), as Keras's Model does, through this `compile`."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if hasattr(self, "optimizer") and self.built:
            # Create the optimizer's variables, which loading then fills.
            self.optimizer.build(self.trainable_variables)

    def _exclude_untrained_from_weight_decay(self):
        untrained = self.untrained_variables()
        optimizer = getattr(self, "optimizer", None)
        # A LossScaleOptimizer decays through the optimizer it wraps.
        while getattr(optimizer, "inner_optimizer", None) is not None:
            optimizer = optimizer.inner_optimizer
        if not untrained or optimizer is None:
            return
        # As `optimizer.exclude_from_weight_decay(var_list=...)`, which
        # refuses a built optimizer and would replace the user's own
        # exclusions (by variable and by name): added to them here.
        excluded = set(getattr(optimizer, "_exclude_from_weight_decay", ()))
        # The optimizer keys its exclusions privately, by `_var_key`.
        excluded |= {optimizer._var_key(v) for v in untrained}
        optimizer._exclude_from_weight_decay = excluded
        optimizer._exclude_from_weight_decay_cache = {}

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
        if not training:
            return loss
        for layer in all_layers(self, include_self=False):
            if (
                y is not None
                and isinstance(layer, DirectFeedback)
                and layer.feedback == "drtp"
            ):
                term = layer.target_loss(y, y_pred, sample_weight)
                loss = loss + ops.cast(term, loss.dtype)
        frozen = self.untrained_variables()
        if frozen:
            # Value 0 (the hidden weights feed the logits: were one not
            # finite, the loss would not be either), gradient 0.
            zero = sum(ops.cast(ops.sum(v), "float32") for v in frozen) * 0.0
            loss = loss + ops.cast(zero, loss.dtype)
        return loss

    def untrained_variables(self):
        """Returns the trainable variables that get no error by design.

        Those of the layers that reach the loss only through the taps of a
        shallow `DirectFeedback` head (cut by `BlockGradient`): every hidden
        layer of a shallow model. They stay in `trainable_variables` and
        get a zero gradient, and `compile` excludes them from the
        optimizer's weight decay, so they keep their initial weights.
        (`optimizer.exclude_from_weight_decay` after `compile` replaces
        that exclusion, as Keras's method does: call it before.) Empty
        for dfa and drtp.
        """
        if not hasattr(self, "_shallow_cut"):
            self._shallow_cut = _ShallowCut(self)
        cut = self._shallow_cut
        reached = {
            id(v) for layer in cut.reached for v in layer.trainable_variables
        }
        below = {
            id(v)
            for layer in cut.below
            for v in layer.trainable_variables
            if id(v) not in reached
        }
        return [v for v in self.trainable_variables if id(v) in below]


class _ShallowCut:
    """The layers of a functional model that the loss reaches without
    crossing a `BlockGradient` or a shallow head's taps (`reached`), and
    the other layers of its graph (`below`); both empty without a shallow
    head. An object of its own, out of Keras's attribute tracking."""

    def __init__(self, model):
        self.reached, self.below = [], []
        if not any(
            isinstance(layer, DirectFeedback) and layer.feedback == "shallow"
            for layer in all_layers(model, include_self=False)
        ):
            return
        reached, everything = {}, {}
        for cut in (False, True):
            seen = set()
            stack = list(keras.tree.flatten(model.outputs))
            while stack:
                node = node_of(stack.pop())
                op = node.operation
                if id(node) in seen:
                    continue
                seen.add(id(node))
                inputs = list(node.input_tensors)
                if cut:
                    if isinstance(op, BlockGradient):
                        continue
                    if isinstance(op, DirectFeedback) and (
                        op.feedback == "shallow"
                    ):
                        inputs = inputs[:1]
                    reached[id(op)] = op
                else:
                    everything[id(op)] = op
                stack.extend(inputs)
        self.reached = [
            op for op in reached.values() if isinstance(op, keras.layers.Layer)
        ]
        self.below = [
            op
            for key, op in everything.items()
            if key not in reached and isinstance(op, keras.layers.Layer)
        ]


def _has_kernel(layer):
    return any(
        v.path.split("/")[-1] in ("kernel", "depthwise_kernel")
        for v in layer.trainable_weights
    )


# long: its public docstring is 75 lines; the body is 10, in named steps.
def direct_feedback(
    model,
    feedback="dfa",
    feedback_initializer="glorot_uniform",
    seed=None,
    taps=None,
    positions="flatten",
):
    """Returns a copy of a Sequential or functional model trained by a
    direct rule.

    The output of each tap receives the direct signal of `feedback` and is
    cut from the layers above it with `BlockGradient`: every use of the
    tapped output downstream (a residual `x + f(x)` included) sees the cut
    tensor, so no error reaches the tap through the layers above. The layers
    between a tap and the taps (or inputs) below it learn from its signal by
    their local derivatives; the layers between the last taps and the logits
    learn from the logits' error e, as in backprop. A `DirectFeedback` head
    takes the logits and the taps; if the layer that computes the logits has
    a non-linear `activation` (a softmax), it moves after the head, so e is
    taken at the logits. The head's B_l are position by position for taps
    with the logits' positions (`(batch, time, features)` under `(batch,
    time, classes)` logits: B_l of shape `(classes, features)`) and through
    the flattened logits otherwise (see `DirectFeedback`).

    Choosing the taps:

    - Sequential model, `taps=None`: the layers are grouped into blocks,
      each starting at a layer with a kernel (Dense, convolutions, keras_fa
      layers...) and holding the parameter-free or normalization layers that
      follow it (activations, pooling, batch normalization, dropout,
      flatten). The output of every block but the last is tapped; the head
      follows the last layer with a kernel (layers after it follow the
      head).
    - Functional model: `taps` is required (a ValueError lists candidates
      otherwise). Tap the output of each block: a residual `Add` (or `x +
      y`), a transformer block, a Dense layer with its activation (tap the
      activation layer if it is separate). The head is at the model's
      output, which must be one tensor, the logits.

    Models nested in the model (a KerasHub backbone in its task model, a
    Sequential block) are inlined when called once, so their layers can be
    taps. A layer called more than once (shared) cannot be a tap, nor the
    model's inputs or output. Layers that are not `keras.layers.Layer`
    (`x + y`, `keras.ops.concatenate` on symbolic tensors) are kept. Weights
    are copied; the original model is not changed and the copy is not
    compiled. The copy has the model's input structure (a dict of inputs
    stays a dict).

    Args:
        model: a built `keras.Sequential` or functional `keras.Model`
            (functional subclasses such as KerasHub models too).
        feedback: `"dfa"`, `"drtp"` or `"shallow"`, in any case.
        feedback_initializer: initializer of the direct feedback matrices.
        seed: integer seed of the direct feedback matrices.
        taps: list of the taps, each a layer name (`"outer/inner"` for a
            layer of a nested model when the name alone is ambiguous), a
            layer of the model, or a symbolic tensor of the model (the
            output of `x + y`). Tap i gets the head's B_i. None: the blocks
            of a Sequential model; required for a functional model.
        positions: how a tap with positions the logits do not have (a
            `(batch, time, features)` block output under a pooled
            `(batch, classes)` head) gets its signal: `"flatten"` (one B
            row per position, B of shape `(classes, time x features)`) or
            `"shared"` (one B of shape `(classes, features)` for every
            position, each getting `e B / time`, as mean pooling shares
            the error; on a pooled transformer classifier it learns far
            better). See `DirectFeedback`.

    Returns:
        A `keras_fa.DirectFeedbackModel`.

    Example:

    >>> dfa_model = keras_fa.direct_feedback(mlp, "dfa")
    >>> dfa_model.compile("adam", keras.losses.SparseCategoricalCrossentropy())

    A KerasHub language model, one tap per transformer block:

    >>> lm = keras_hub.models.GPT2CausalLM(backbone)
    >>> dfa_lm = keras_fa.direct_feedback(
    ...     lm, "dfa", taps=["transformer_layer_0", "transformer_layer_1"])
    """
    head_config = dict(
        feedback=feedback_lib.get_direct(feedback),
        positions=_check_positions(positions),
        seed=standardize_seed(seed),
        feedback_initializer=get_feedback_initializer(feedback_initializer),
    )
    graph = _check_model(model)
    logits, taps = _logits_and_taps(graph, taps, head_config["feedback"])
    activation = _output_activation(graph, logits)
    return _rebuild(graph, taps, logits, activation, head_config)


def _logits_and_taps(graph, taps, feedback):
    """The logits of `graph.model` and the tensors to tap: `taps`
    resolved, or the blocks of a Sequential model when it is None."""
    model = graph.model
    sequential = isinstance(model, keras.Sequential)
    if sequential:
        logits, block_taps = _sequential_blocks(model, graph)
    else:
        logits = graph.resolve(model.outputs[0])
    if id(logits) not in graph.producer:
        raise ValueError(
            f"The output of model '{model.name}' is one of its inputs: "
            "there are no logits to train."
        )
    if taps is None and not sequential:
        raise ValueError(_no_taps_message(graph, logits, feedback))
    taps = block_taps if taps is None else _resolve_taps(graph, taps, logits)
    return logits, taps


def _output_activation(graph, logits):
    """The non-linear activation of the layer computing the logits, which
    moves after the head, or None."""
    output_layer = graph.producer[id(logits)].operation
    activation = getattr(output_layer, "activation", None)
    if activation is keras.activations.linear or not callable(activation):
        return None
    if graph.counts[id(output_layer)] > 1:
        raise ValueError(
            f"The logits of model '{graph.model.name}' come from layer "
            f"'{output_layer.name}', which is called "
            f"{graph.counts[id(output_layer)]} times: its activation cannot "
            "move after the DirectFeedback head. Give the model an output "
            "layer of its own."
        )
    return activation


def _check_model(model):
    """Returns the `InlinedGraph` of `model`, or raises a clear error."""
    if not isinstance(model, keras.Model) or not is_graph_model(model):
        kind = type(model).__name__
        raise ValueError(
            "keras_fa.direct_feedback takes a keras.Sequential or functional "
            f"keras.Model. Received: {kind}"
            + (", a subclassed model" if isinstance(model, keras.Model) else "")
            + ". For other models, place keras_fa.BlockGradient and "
            "keras_fa.DirectFeedback yourself (see DirectFeedback)."
        )
    # An unbuilt Sequential model has no `inputs` (AttributeError).
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"Build the model '{model.name}' first: start it with keras.Input."
        )
    if len(model.outputs) != 1:
        raise ValueError(
            "keras_fa.direct_feedback needs a model with one output, the "
            f"logits. Model '{model.name}' has {len(model.outputs)}."
        )
    graph = InlinedGraph(model)
    for node, _ in graph.nodes:
        if isinstance(node.operation, DirectFeedback):
            raise ValueError(
                f"Model '{model.name}' already has a DirectFeedback head "
                f"('{node.operation.name}'). Pass the model without it."
            )
    return graph


def _sequential_blocks(model, graph):
    """The logits and the block outputs of a Sequential model."""
    layers = model.layers
    starts = [i for i, layer in enumerate(layers) if _has_kernel(layer)]
    if not starts:
        raise ValueError("The model has no layer with a kernel to train.")
    # Layers before the first kernel (Flatten, Rescaling...) form no block:
    # tapping them would give B to an input with nothing to train.
    taps = [graph.output(layers[i - 1]) for i in starts[1:]]
    return graph.output(layers[starts[-1]]), taps


def _describe(item):
    if isinstance(item, keras.KerasTensor):
        return f"the tensor {item.name} of shape {item.shape}"
    if isinstance(item, keras.Operation):
        return f"layer '{item.name}'"
    return repr(item)


def _resolve_taps(graph, taps, logits):
    """The tensors of the inlined graph named by `taps`."""
    if not isinstance(taps, (list, tuple)):
        raise ValueError(
            "`taps` must be a list of layer names, layers or symbolic "
            f"tensors of the model. Received: taps={taps!r}"
        )
    model = graph.model
    inputs = {id(t): t for t in model.inputs}
    below = graph.ancestors(logits)
    result = []
    for item in taps:
        tensor = _tap_tensor(graph, item, inputs)
        where = f"taps: {_describe(item)}"
        if id(tensor) in inputs:
            raise ValueError(
                f"In {where} is an input of model '{model.name}': a tap is "
                "the output of a hidden layer, which it trains."
            )
        if tensor is logits:
            raise ValueError(
                f"In {where} computes the logits (the model's output), "
                "which receive the error e itself: tap hidden layers only."
            )
        if id(tensor) not in below:
            raise ValueError(
                f"In {where} is not computed below the logits (those of "
                f"layer '{graph.producer[id(logits)].operation.name}'), so "
                "no signal can reach it."
            )
        if any(tensor is t for t in result):
            raise ValueError(f"In {where} is tapped twice.")
        result.append(tensor)
    return result


def _tap_tensor(graph, item, inputs):
    model = graph.model
    input_names = {node_of(t).operation.name: t for t in inputs.values()}
    if isinstance(item, keras.KerasTensor):
        tensor = graph.resolve(item)
        node = graph.producer.get(id(tensor))
        if node is None and id(tensor) not in inputs:
            raise ValueError(
                f"In taps: {_describe(item)} is not a tensor of model "
                f"'{model.name}' (nor of a model inlined in it)."
            )
        if node is not None:
            _check_single_call(graph, node.operation, item)
        return tensor
    if isinstance(item, str):
        if item in input_names:
            return input_names[item]
        found = graph.named(item)
        if not found:
            names = [graph.path(op) for op, _ in graph.operations.values()]
            raise ValueError(
                f"Unknown tap {item!r} in `taps`: model '{model.name}' has "
                f"no layer of that name. Allowed: {', '.join(names)}."
            )
        if len(found) > 1:
            paths = [graph.path(op) for op in found]
            raise ValueError(
                f"The tap {item!r} in `taps` names {len(found)} layers: "
                f"{', '.join(paths)}. Pass one of these paths, or the layer."
            )
        op = found[0]
    elif isinstance(item, keras.Operation):
        if any(item is node_of(t).operation for t in inputs.values()):
            return item.output
        if id(item) not in graph.operations:
            raise ValueError(
                f"In taps: {_describe(item)} is not a layer of model "
                f"'{model.name}', or is inside a nested model that is called "
                "more than once or is not functional."
            )
        op = item
    else:
        raise ValueError(
            "Each tap in `taps` is a layer name, a layer or a symbolic tensor "
            f"of the model. Received: {item!r} ({type(item).__name__})."
        )
    _check_single_call(graph, op, item)
    (outputs,) = graph.outputs_of[id(op)]
    if len(outputs) != 1:
        raise ValueError(
            f"In taps: {_describe(item)} has {len(outputs)} outputs; pass "
            "the one to tap (a symbolic tensor of the model) instead."
        )
    return graph.resolve(outputs[0])


def _check_single_call(graph, op, item):
    calls = graph.counts[id(op)]
    if calls > 1:
        raise ValueError(
            f"In taps: {_describe(item)} is from layer '{op.name}', which "
            f"is called {calls} times (shared): its output is not one "
            "activation, so it cannot be a tap. Tap a layer called once."
        )


def _no_taps_message(graph, logits, feedback):
    candidates = _candidates(graph, logits)
    return (
        "keras_fa.direct_feedback needs `taps=` for the functional model "
        f"'{graph.model.name}': the layers whose outputs receive the direct "
        "signal, each cut from the layers above. Tap the output of each "
        "block (a residual Add, a transformer block, a Dense layer with its "
        "activation): the layers below a tap learn from its signal, the "
        "layers above the last taps by backprop from the logits. "
        f"Candidates, in graph order: {', '.join(candidates) or '(none)'}. "
        f"Example: keras_fa.direct_feedback(model, {feedback!r}, "
        f"taps={candidates[:2]!r})."
    )


def _is_add(op):
    return isinstance(op, keras.layers.Add) or (
        not isinstance(op, keras.layers.Layer) and type(op).__name__ == "Add"
    )


def _is_block(op):
    # A layer made of layers with kernels: a transformer block, attention.
    return isinstance(op, keras.layers.Layer) and any(
        _has_kernel(layer) for layer in all_layers(op, include_self=False)
    )


def _candidates(graph, logits):
    """Paths of likely taps: residual additions, blocks of layers, and the
    end of the chain of activations, normalizations and pooling after each
    layer with a kernel."""
    below = graph.ancestors(logits)
    users = collections.defaultdict(list)
    for node, _ in graph.nodes:
        for t in node.input_tensors:
            users[id(graph.resolve(t))].append(node)

    def single(op):
        return (
            graph.counts[id(op)] == 1 and len(graph.outputs_of[id(op)][0]) == 1
        )

    found = []
    for node, _ in graph.nodes:
        op = node.operation
        if not single(op):
            continue
        if _is_add(op) or _is_block(op):
            tensor = node.outputs[0]
        elif isinstance(op, keras.layers.Layer) and _has_kernel(op):
            tensor = node.outputs[0]
            # Through the activation, normalization, pooling... after it.
            while len(users[id(tensor)]) == 1:
                (following,) = users[id(tensor)]
                user = following.operation
                if (
                    len(following.input_tensors) != 1
                    or not single(user)
                    or not isinstance(user, keras.layers.Layer)
                    or _has_kernel(user)
                    or _is_block(user)
                    or id(following.outputs[0]) not in below
                ):
                    break
                tensor = following.outputs[0]
        else:
            continue
        if id(tensor) in below and tensor is not logits:
            path = graph.path(graph.producer[id(tensor)].operation)
            if path not in found:
                found.append(path)
    return found


def _rebuild(graph, taps, logits, activation, head_config):
    """Builds the direct-feedback copy of `graph.model`: a copy of each
    layer and operation called as in the inlined graph, each tap cut by a
    `BlockGradient`, the head after the logits."""
    names = _Names(graph)
    output_layer = graph.producer[id(logits)].operation
    copies = {}

    def call(node, args, kwargs):
        op = node.operation
        if id(op) not in copies:
            copy = copy_operation(op, CALLER, names.of[id(op)])
            if op is output_layer and activation is not None:
                copy.activation = keras.activations.linear
            copies[id(op)] = (op, copy)
        return copies[id(op)][1](*args, **kwargs)

    place = _place_head(taps, logits, activation, head_config, names.unique)
    inputs = fresh_inputs(graph.model)
    outputs = graph.replay(inputs, call, on_output=place)
    for old, new in copies.values():
        if isinstance(old, keras.layers.Layer):
            _copy_weights(old, new)
    return DirectFeedbackModel(inputs, keras.tree.flatten(outputs)[0])


class _Names:
    """The names of the copy's layers, each used once: `of[id(op)]` for
    the copy of each operation of the graph, `unique(name)` for new ones.

    Layers of the top level keep their names; an inlined one whose name is
    taken gets the names of the models it was in."""

    def __init__(self, graph):
        self.used = {node_of(t).operation.name for t in graph.model.inputs}
        self.of = {}
        top_first = sorted(graph.nodes, key=lambda item: len(item[1]) > 0)
        for node, path in top_first:
            op = node.operation
            if id(op) not in self.of:
                name = op.name
                if name in self.used:
                    name = "_".join(path + (op.name,))
                self.of[id(op)] = self.unique(name)

    def unique(self, name):
        """`name`, or `name_1`, `name_2`... if it is taken; then taken."""
        candidate, i = name, 0
        while candidate in self.used:
            i += 1
            candidate = f"{name}_{i}"
        self.used.add(candidate)
        return candidate


def _place_head(taps, logits, activation, head_config, unique):
    """Returns the `on_output` of `InlinedGraph.replay` that cuts each tap
    with a `BlockGradient` and puts the `DirectFeedback` head (and the
    moved activation) after the logits."""
    tap_index = {id(t): i for i, t in enumerate(taps)}
    tapped = [None] * len(taps)

    def place(old, new):
        if id(old) in tap_index:
            tapped[tap_index[id(old)]] = new
            new = BlockGradient(name=unique("block_gradient"))(new)
        if old is logits:
            head = DirectFeedback(**head_config, name=unique("direct_feedback"))
            new = head([new, *tapped])
            if activation is not None:
                new = keras.layers.Activation(
                    activation, name=unique("activation")
                )(new)
        return new

    return place


def _copy_weights(old, new):
    if [tuple(v.shape) for v in old.weights] != [
        tuple(v.shape) for v in new.weights
    ]:
        raise ValueError(
            f"keras_fa.direct_feedback: the copy of layer '{old.name}' "
            f"({type(old).__name__}) has weights "
            f"{[tuple(v.shape) for v in new.weights]}, the layer "
            f"{[tuple(v.shape) for v in old.weights]}."
        )
    # Through numpy: on jax, assigning one variable's value to another
    # shares the buffer, which training the copy would delete.
    for source, target in zip(old.weights, new.weights):
        target.assign(keras.ops.convert_to_numpy(source))
