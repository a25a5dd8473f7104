"""Alignment measures: how far a rule's learning is from backprop's, per layer.

For each layer the measures are (angles in degrees; 90 means no alignment,
below 90 means the rule still descends the loss):

- `weight_angle`: angle between the forward kernel W and the feedback kernel
  B the rule uses in its place (flattened);
- `norm_ratio`: |B| / |W| (Frobenius norms);
- `signal_angle`: angle between the error signal delta the layer receives
  under its rule and the one backprop gives, on the same batch (the gradient
  at the output of the layer's kernel product; for a direct-feedback tap, at
  the tapped activation);
- `update_angle`: angle between the kernel gradient the rule gives (what the
  optimizer receives) and the true gradient dL/dW, on the same batch;
- `conservation`: the quantity of Robertson & Koyejo's conservation law,
  summed over the layer's neurons, `Q_i = |w_in|^2 + b_i^2 - 2 sum(phi(w_out))`
  for hidden neuron i, whose incoming weights (and bias) are in this layer
  and outgoing weights in the next; `phi` is the next layer's rule's
  `conservation_potential` (`W * B` for fa, usf and frsf; `W * B - W^2 / 2`
  for bp and kp, which gives `|w_in|^2 - |w_out|^2` under backprop);
- `conservation_drift`: sum of `Q_i(t) - Q_i(0)` since the reference;
- `conservation_drift_max`: the largest `|Q_i(t) - Q_i(0)|` of the layer.

The true gradient comes from the same model traced inside
`keras_fa.tracing.exact_backprop()`, on every backend, with the same
variables, dropout masks and random draws as the rule's pass.
"""

import collections
import contextlib
import math
import weakref

import keras
import numpy as np
from keras import ops

from keras_fa import backend
from keras_fa import tracing
from keras_fa.direct import BlockGradient
from keras_fa.direct import DirectFeedback
from keras_fa.feedback.base import tied_feedback_potential
from keras_fa.layers.base import FeedbackMixin

MEASURES = (
    "weight_angle",
    "norm_ratio",
    "signal_angle",
    "update_angle",
    "conservation",
    "conservation_drift",
    "conservation_drift_max",
)
ANGLE_MEASURES = ("weight_angle", "signal_angle", "update_angle")


def angle(a, b):
    """Returns the angle in degrees between two arrays, flattened.

    Computed as `2 atan2(|u - v|, |u + v|)` of the unit vectors, which stays
    accurate near 0 and 180 degrees where `arccos` of the cosine does not.
    NaN if either array is zero.

    Args:
        a: array-like.
        b: array-like of the same size.

    Returns:
        A Python float.
    """
    a = np.ravel(np.asarray(a, dtype=np.float64))
    b = np.ravel(np.asarray(b, dtype=np.float64))
    if a.size != b.size:
        raise ValueError(
            f"angle() needs arrays of the same size. Received sizes {a.size} "
            f"and {b.size}."
        )
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return math.nan
    u, v = a / norm_a, b / norm_b
    return math.degrees(
        2.0 * math.atan2(np.linalg.norm(u - v), np.linalg.norm(u + v))
    )


def _angle(a, b):
    # The same as `angle`, in keras.ops, inside compiled functions.
    a = ops.reshape(ops.cast(a, "float32"), (-1,))
    b = ops.reshape(ops.cast(b, "float32"), (-1,))
    u = a / ops.norm(a)
    v = b / ops.norm(b)
    radians = 2.0 * ops.arctan2(ops.norm(u - v), ops.norm(u + v))
    return radians * (180.0 / math.pi)


def _angle_from_sums(aa, bb, ab):
    # Angle between a and b from |a|^2, |b|^2 and a.b: atan2(|a x b|, a.b),
    # with |a x b|^2 = |a|^2 |b|^2 - (a.b)^2. NaN if a or b is zero.
    cross = ops.sqrt(ops.maximum(aa * bb - ops.square(ab), 0.0))
    angle = ops.arctan2(cross, ab) * (180.0 / math.pi)
    return ops.where(aa * bb > 0, angle, math.nan)


def _value(tensor):
    if isinstance(tensor, keras.Variable):
        return tensor.value
    return tensor


def _kernel_of(layer):
    try:
        kernel = getattr(layer, "kernel", None)
    except (AttributeError, ValueError):
        return None
    return kernel if isinstance(kernel, keras.Variable) else None


# Layers through which a hidden neuron's conservation law still holds: they
# act on each channel separately and are positively homogeneous.
_PASS_THROUGH = (
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Identity,
    keras.layers.LeakyReLU,
)
_HOMOGENEOUS = (
    keras.activations.relu,
    keras.activations.linear,
    keras.activations.leaky_relu,
)


def _is_homogeneous_activation(activation):
    return activation is None or any(activation is f for f in _HOMOGENEOUS)


def _passes_law(layer):
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None and float(layer.threshold) == 0.0
    if isinstance(layer, keras.layers.Activation):
        return _is_homogeneous_activation(layer.activation)
    return isinstance(layer, _PASS_THROUGH)


def _graph(model):
    functional = getattr(model, "_functional", None) or model
    nodes_by_depth = getattr(functional, "_nodes_by_depth", None)
    if not nodes_by_depth:
        return None
    nodes = [node for level in nodes_by_depth.values() for node in level]
    return nodes, functional


class _Pair:
    """A layer whose hidden neurons have a conservation law, with the next
    layer holding their outgoing weights."""

    def __init__(self, layer, next_layer, flattened):
        self.layer = layer
        self.next_layer = next_layer
        self.flattened = flattened

    def pair_layers(self):
        return [self.layer, self.next_layer]

    def potential(self, kernel, backward):
        if isinstance(self.next_layer, FeedbackMixin):
            return self.next_layer.feedback.conservation_potential(
                kernel, backward
            )
        return tied_feedback_potential(kernel, kernel)


def _conservation_pairs(model, kernel_layers):
    graph = _graph(model)
    if graph is None:
        return []
    nodes, functional = graph
    consumers = {}
    producers = {}
    for node in nodes:
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
        producers.setdefault(id(node.operation), []).append(node)
    outputs = {id(t) for t in keras.tree.flatten(functional.outputs)}
    pairs = []
    for layer in kernel_layers:
        if len(producers.get(id(layer), ())) != 1:
            continue
        if not _is_homogeneous_activation(getattr(layer, "activation", None)):
            continue
        tensor = producers[id(layer)][0].outputs[0]
        flattened = False
        while True:
            users = consumers.get(id(tensor), [])
            if len(users) != 1 or id(tensor) in outputs:
                break
            operation = users[0].operation
            if any(operation is other for other in kernel_layers):
                kernel = _kernel_of(operation)
                if getattr(operation, "groups", 1) == 1 and (
                    len(kernel.shape) == 2 or not flattened
                ):
                    pair = _Pair(layer, operation, flattened)
                    if _potential_known(pair):
                        pairs.append(pair)
                break
            if not _passes_law(operation) or len(users[0].outputs) != 1:
                break
            if isinstance(operation, keras.layers.Flatten):
                flattened = True
            tensor = users[0].outputs[0]
    return pairs


def _potential_known(pair):
    kernel = ops.ones((1, 1))
    return pair.potential(kernel, kernel) is not None


class Alignment:
    """Measures the alignment of a keras_fa model's layers with backprop.

    It finds, once, the model's layers with a kernel, their feedback rules,
    the points where each layer's error signal can be read, and the pairs of
    layers whose hidden neurons obey a conservation law (layers chained
    through positively homogeneous activations, pooling, dropout or flatten,
    in a Sequential or functional model). Measurements are compiled
    functions of the model's current variables (jit on jax, a tf.function on
    tensorflow, eager on torch); they never change the model, its random
    state or its optimizer.

    Args:
        model: a Keras model with keras_fa layers or direct feedback, built.
            `measure` and `gradients` also need it compiled with a loss.
        share: optional hashable key. On jax, whose compiled functions are
            pure, meters of models built alike (same layers, rules, loss)
            and given the same key share their compiled functions, so a new
            model of a known structure is measured without compiling. Give
            one key per structure; ignored on the other backends.

    Example:

    >>> meter = keras_fa.alignment.Alignment(model)
    >>> meter.reset_reference()          # Q(0) for the drift
    >>> model.fit(x, y, epochs=5)
    >>> meter.measure(x[:256], y[:256])  # {"dense/update_angle": 41.2, ...}
    """

    def __init__(self, model, share=None):
        if not isinstance(model, keras.Model):
            raise TypeError(
                "Alignment measures a keras.Model. Received: "
                f"{type(model).__name__}"
            )
        if not model.built:
            raise ValueError(
                "Build the model before measuring its alignment: call it on "
                "data, or start it with keras.Input."
            )
        self.model = model
        layers = list(model._flatten_layers(include_self=False))
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        self._kernel_index = {}
        kernel_layers = []
        for layer in layers:
            kernel = _kernel_of(layer)
            if kernel is not None and id(kernel) in index:
                self._kernel_index[layer.name] = index[id(kernel)]
                kernel_layers.append(layer)
        self._feedback_layers = [
            layer for layer in kernel_layers if isinstance(layer, FeedbackMixin)
        ]
        self._signal_keys, self._aliases = self._find_signals(
            layers, kernel_layers
        )
        self._pairs = _conservation_pairs(model, kernel_layers)
        self._layer_names = [layer.name for layer in kernel_layers]
        # The weight measures read only these layers' variables.
        weight_layers = self._feedback_layers + [
            layer for pair in self._pairs for layer in pair.pair_layers()
        ]
        self._weight_variables = []
        seen = set()
        for layer in weight_layers:
            for variable in layer.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    self._weight_variables.append(variable)
        self.reference = None
        self._shapes = {}
        self._functions = {}
        self._rewind = _no_op
        self._share = share if backend.STATELESS_OPTIMIZER else None

    # -- discovery --------------------------------------------------------

    def _find_signals(self, layers, kernel_layers):
        keys = {}
        for layer in self._feedback_layers:
            keys[layer.name] = tracing.probe_key(layer)
        aliases = {}
        blocks = [layer for layer in layers if isinstance(layer, BlockGradient)]
        for head in layers:
            if not isinstance(head, DirectFeedback) or not head._inbound_nodes:
                continue
            taps = head._inbound_nodes[0].input_tensors[1:]
            for i, tap in enumerate(taps):
                owner = _kernel_layer_above(tap, kernel_layers)
                if owner is None or owner.name in keys:
                    continue
                keys[owner.name] = tracing.probe_key(head, i)
                for block in blocks:
                    nodes = block._inbound_nodes
                    if nodes and nodes[0].input_tensors[0] is tap:
                        aliases[tracing.probe_key(block)] = keys[owner.name]
        return keys, aliases

    @property
    def layer_names(self):
        """Names of the layers with a kernel, in the model's order."""
        return list(self._layer_names)

    @property
    def conservation_layers(self):
        """Names of the layers whose neurons have a conservation law."""
        return [pair.layer.name for pair in self._pairs]

    # -- state ------------------------------------------------------------

    def _state(self):
        model = self.model
        # On jax, model.fit keeps the variables outside the model between
        # epochs; bring them back first.
        if hasattr(model, "jax_state_sync"):
            model.jax_state_sync()
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
        )

    def _mapping(self, trainable, non_trainable):
        model = self.model
        return list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable)
        )

    def _probe_shapes(self, x):
        key = tuple(
            tuple(ops.shape(t)) for t in keras.tree.flatten(x) if t is not None
        )
        if key not in self._shapes:
            trainable, non_trainable, _ = self._state()
            with (
                tracing.recording() as shapes,
                tracing.exact_backprop(),
                backend.preserve_random_state(),
            ):
                self.model.stateless_call(trainable, non_trainable, x)
            self._shapes[key] = {
                name: shapes[k]
                for name, k in self._signal_keys.items()
                if k in shapes
            }
        return key, self._shapes[key]

    # -- traced computations ----------------------------------------------

    def _weights(self, mapping):
        # Three sums per kernel (W.W, B.B, W.B) give both measures; the
        # training loop runs this every step, so it reads each kernel once.
        out, kernels = {}, {}
        with keras.StatelessScope(state_mapping=mapping):
            for layer in self._feedback_layers:
                w, b = kernels[id(layer)] = _kernels(layer)
                if layer.feedback.exact:
                    angle, ratio = ops.zeros(()), ops.ones(())
                else:
                    ww = ops.sum(ops.square(w))
                    bb = ops.sum(ops.square(b))
                    angle = _angle_from_sums(ww, bb, ops.sum(w * b))
                    ratio = ops.sqrt(bb / ww)
                out[f"{layer.name}/weight_angle"] = angle
                out[f"{layer.name}/norm_ratio"] = ratio
            q = {
                pair.layer.name: _neuron_q(pair, kernels)
                for pair in self._pairs
            }
        return out, q

    def _gradients(self, state, x, y, sample_weight, shapes, exact):
        model = self.model
        trainable, non_trainable, metrics = state
        names = list(shapes)
        zeros = [ops.zeros(shapes[name], dtype="float32") for name in names]
        # Both passes draw the same unseeded random numbers (torch dropout).
        self._rewind()

        def loss_fn(diff, non_trainable, metrics, x, y, sample_weight):
            trainable, probes = diff
            by_key = {self._signal_keys[n]: p for n, p in zip(names, probes)}
            for alias, key in self._aliases.items():
                if key in by_key:
                    by_key[alias] = by_key[key]
            mode = (
                tracing.exact_backprop() if exact else contextlib.nullcontext()
            )
            kwargs = {"training": True} if model._call_has_training_arg else {}
            with mode, tracing.probing(by_key):
                y_pred, _, losses = model.stateless_call(
                    trainable,
                    non_trainable,
                    x,
                    return_losses=True,
                    **kwargs,
                )
                if losses:
                    model._losses_override.clear()
                    model._losses_override = losses
                loss, _ = model.stateless_compute_loss(
                    trainable,
                    non_trainable,
                    metrics,
                    x=x,
                    y=y,
                    y_pred=y_pred,
                    sample_weight=sample_weight,
                    training=True,
                )
                if losses:
                    model._losses_override.clear()
            return loss, ()

        loss, _, (d_trainable, d_probes) = backend.value_and_grad(
            loss_fn,
            [list(trainable), zeros],
            list(non_trainable),
            list(metrics),
            x,
            y,
            sample_weight,
        )
        return loss, list(d_trainable), dict(zip(names, d_probes))

    def _measure_fn(self, shapes):
        def measure(state, x, y, sample_weight):
            trainable, non_trainable, _ = state
            out, q = self._weights(self._mapping(trainable, non_trainable))
            _, rule_grads, rule_signals = self._gradients(
                state, x, y, sample_weight, shapes, exact=False
            )
            _, true_grads, true_signals = self._gradients(
                state, x, y, sample_weight, shapes, exact=True
            )
            for name in self._layer_names:
                if name in rule_signals:
                    out[f"{name}/signal_angle"] = _angle(
                        rule_signals[name], true_signals[name]
                    )
                i = self._kernel_index[name]
                out[f"{name}/update_angle"] = _angle(
                    rule_grads[i], true_grads[i]
                )
            return _flatten(out, q)

        return backend.compile_function(measure, differentiable=False)

    def _weights_fn(self):
        def weights(values):
            return _flatten(
                *self._weights(list(zip(self._weight_variables, values)))
            )

        return backend.compile_function(weights, differentiable=False)

    def _compiled(self, key, shapes, kind):
        if (key, kind) not in self._functions:
            shared = None if self._share is None else (self._share, key, kind)
            if shared in _SHARED:
                _SHARED.move_to_end(shared)
                fn = _SHARED[shared]
            elif kind == "gradients":
                fn = self._gradients_fn(shapes)
            elif kind == "weights":
                fn = self._weights_fn()
            else:
                fn = self._measure_fn(shapes)
            if shared is not None:
                _SHARED[shared] = fn
                while len(_SHARED) > _SHARED_SIZE:
                    _SHARED.popitem(last=False)
            self._functions[(key, kind)] = fn
        return self._functions[(key, kind)]

    def _gradients_fn(self, shapes):
        def gradients(state, x, y, sample_weight, exact):
            return self._gradients(state, x, y, sample_weight, shapes, exact)

        rule = backend.compile_function(
            lambda state, x, y, sw: gradients(state, x, y, sw, False)
        )
        true = backend.compile_function(
            lambda state, x, y, sw: gradients(state, x, y, sw, True)
        )
        return rule, true

    # -- public API ---------------------------------------------------------

    @contextlib.contextmanager
    def _replaying(self):
        # The global random state (torch's unseeded dropout) is replayed for
        # each pass and restored after: training never sees a measurement.
        with backend.preserve_random_state() as rewind:
            self._rewind = rewind
            try:
                yield
            finally:
                self._rewind = _no_op

    def _check_compiled(self):
        if not getattr(self.model, "compiled", False):
            raise ValueError(
                "Gradient-based alignment measures need the loss: compile "
                "the model first, e.g. model.compile(optimizer, loss)."
            )

    def _prepare(self, x, y, sample_weight):
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        y = keras.tree.map_structure(ops.convert_to_tensor, y)
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight)
        return x, y, sample_weight

    def gradients(self, x, y, sample_weight=None, exact=False):
        """Returns the gradients of the model's loss on one batch.

        Args:
            x: input batch.
            y: targets.
            sample_weight: optional per-example weights.
            exact: True for the true backprop gradient, False for the one
                the model's rules give (what `model.fit` applies).

        Returns:
            `(gradients, signals)`: a list of numpy arrays, one per
            `model.trainable_variables` (zeros where a variable gets no
            gradient), and a dict from layer name to the error signal delta
            that layer receives (see the module docstring).
        """
        self._check_compiled()
        x, y, sample_weight = self._prepare(x, y, sample_weight)
        key, shapes = self._probe_shapes(x)
        rule, true = self._compiled(key, shapes, "gradients")
        fn = true if exact else rule
        with self._replaying():
            _, grads, signals = fn(self._state(), x, y, sample_weight)
        to_numpy = ops.convert_to_numpy
        return (
            [to_numpy(g) for g in grads],
            {name: to_numpy(s) for name, s in signals.items()},
        )

    def conservation(self):
        """Returns `{layer name: Q_i per neuron}` (numpy) for the layers
        whose neurons have a conservation law."""
        _, q = self._run_weights()
        return q

    def reset_reference(self):
        """Takes the current per-neuron Q as Q(0) of the drift measures."""
        self.reference = self.conservation()
        return self.reference

    def _run_weights(self):
        fn = self._compiled(None, None, "weights")
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        flat = fn([v.value for v in self._weight_variables])
        return self._unflatten(flat)

    def _unflatten(self, flat, signals=None):
        # One array comes back from the device; the layout is known here.
        flat = np.asarray(ops.convert_to_numpy(flat), dtype=np.float64)
        out, q, i = {}, {}, 0
        for key in self._scalar_keys(signals):
            out[key] = float(flat[i])
            i += 1
        for pair in self._pairs:
            size = pair.layer.kernel.shape[-1]
            q[pair.layer.name] = flat[i : i + size]
            i += size
        assert i == flat.size, "alignment measures: layout mismatch"
        return out, q

    def weights(self):
        """Returns the measures that need no data: `weight_angle`,
        `norm_ratio` and the conservation measures, keyed
        `"<layer>/<measure>"`. Cheap: a few norms of the weights."""
        out, q = self._run_weights()
        return self._ordered({**out, **self._conservation_measures(q)})

    def measure(self, x, y, sample_weight=None):
        """Returns every measure on one batch, keyed `"<layer>/<measure>"`.

        Runs the model twice on the batch (with its rules, and as exact
        backprop), in one compiled function.

        Args:
            x: input batch.
            y: targets.
            sample_weight: optional per-example weights.

        Returns:
            A dict of Python floats, in the model's layer order.
        """
        self._check_compiled()
        x, y, sample_weight = self._prepare(x, y, sample_weight)
        key, shapes = self._probe_shapes(x)
        fn = self._compiled(key, shapes, "measure")
        with self._replaying():
            flat = fn(self._state(), x, y, sample_weight)
        out, q = self._unflatten(flat, signals=shapes)
        return self._ordered({**out, **self._conservation_measures(q)})

    def _scalar_keys(self, signals):
        # The order in which `_weights` and `_measure_fn` fill their dict.
        keys = []
        for layer in self._feedback_layers:
            keys += [f"{layer.name}/weight_angle", f"{layer.name}/norm_ratio"]
        if signals is not None:
            for name in self._layer_names:
                if name in signals:
                    keys.append(f"{name}/signal_angle")
                keys.append(f"{name}/update_angle")
        return keys

    def _conservation_measures(self, q):
        out = {}
        for name, values in q.items():
            out[f"{name}/conservation"] = float(np.sum(values))
            if self.reference is not None and name in self.reference:
                drift = values - self.reference[name]
                out[f"{name}/conservation_drift"] = float(np.sum(drift))
                out[f"{name}/conservation_drift_max"] = float(
                    np.max(np.abs(drift))
                )
        return out

    def _ordered(self, values):
        order = {name: i for i, name in enumerate(self._layer_names)}
        rank = {m: i for i, m in enumerate(MEASURES)}

        def sort_key(item):
            name, measure = item[0].rsplit("/", 1)
            return order.get(name, len(order)), rank.get(measure, len(rank))

        return dict(sorted(values.items(), key=sort_key))


def _no_op():
    pass


def _flatten(out, q):
    # Scalars in insertion order, then each layer's Q: one array to fetch.
    parts = [ops.reshape(ops.cast(v, "float32"), (1,)) for v in out.values()]
    parts += [ops.cast(v, "float32") for v in q.values()]
    if not parts:
        return ops.zeros((0,), dtype="float32")
    return ops.concatenate(parts)


def _kernel_layer_above(tensor, kernel_layers):
    # Walks from a tapped activation up to the layer with a kernel that made
    # it (through activations, pooling, normalization...).
    while True:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        operation = history.operation
        if any(operation is layer for layer in kernel_layers):
            return operation
        node = operation._inbound_nodes[history.node_index]
        if len(node.input_tensors) != 1:
            return None
        tensor = node.input_tensors[0]


def _kernels(layer):
    # W and the B the layer's rule uses, read inside a StatelessScope.
    w = ops.cast(_value(layer.kernel), "float32")
    if layer.feedback.exact:
        return w, w
    feedback = [
        ops.cast(_value(t), "float32")
        for t in layer.feedback.feedback_inputs(layer)
    ]
    return w, layer.feedback.backward_kernel(w, *feedback)


def _neuron_q(pair, kernels):
    layer, next_layer = pair.layer, pair.next_layer
    w = ops.cast(_value(layer.kernel), "float32")
    channels = w.shape[-1]
    q = ops.sum(ops.square(ops.reshape(w, (-1, channels))), axis=0)
    if getattr(layer, "bias", None) is not None:
        q = q + ops.square(ops.cast(_value(layer.bias), "float32"))
    if id(next_layer) in kernels:
        w_next, b_next = kernels[id(next_layer)]
    elif isinstance(next_layer, FeedbackMixin):
        w_next, b_next = _kernels(next_layer)
    else:
        w_next = ops.cast(_value(next_layer.kernel), "float32")
        b_next = w_next
    phi = pair.potential(w_next, b_next)
    if pair.flattened:
        n_out = phi.shape[-1]
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            phi = ops.sum(ops.reshape(phi, (channels, -1, n_out)), axis=(1, 2))
        else:
            phi = ops.sum(ops.reshape(phi, (-1, channels, n_out)), axis=(0, 2))
    else:
        # (..., in, out): sum over everything but the input channels.
        phi = ops.moveaxis(phi, -2, 0)
        phi = ops.sum(ops.reshape(phi, (channels, -1)), axis=1)
    return q - 2.0 * phi


_METERS = weakref.WeakKeyDictionary()
# Compiled functions shared by meters given a `share` key (jax only).
_SHARED = collections.OrderedDict()
_SHARED_SIZE = 24


def _meter(model):
    meter = _METERS.get(model)
    if meter is None:
        meter = _METERS[model] = Alignment(model)
    return meter


def measure(model, x, y, sample_weight=None):
    """Returns every alignment measure of `model` on one batch.

    A shortcut for `Alignment(model).measure(x, y)`, with the `Alignment`
    kept for the model (so its compiled function is reused). Conservation
    drift is reported once `reset_reference()` has been called on
    `keras_fa.alignment.Alignment` (the callbacks do it at the start of
    training).

    Example:

    >>> keras_fa.alignment.measure(model, x[:256], y[:256])
    {'dense/weight_angle': 88.7, 'dense/norm_ratio': 0.98, ...}
    """
    return _meter(model).measure(x, y, sample_weight)


def gradients(model, x, y, sample_weight=None):
    """Returns the gradients the model's rules give on one batch.

    A list of numpy arrays, one per `model.trainable_variables`: what
    `model.fit` would hand to the optimizer. See `true_gradients`.
    """
    return _meter(model).gradients(x, y, sample_weight, exact=False)[0]


def true_gradients(model, x, y, sample_weight=None):
    """Returns the true (backprop) gradients of the model's loss on a batch.

    The same model is traced as exact backprop: feedback rules act as bp,
    direct feedback passes the gradient through the forward layers. Works on
    every backend with no backend code. A list of numpy arrays, one per
    `model.trainable_variables` (zeros for feedback variables, which backprop
    does not have).

    Example:

    >>> true = keras_fa.alignment.true_gradients(model, x[:128], y[:128])
    >>> used = keras_fa.alignment.gradients(model, x[:128], y[:128])
    >>> keras_fa.alignment.angle(true[0], used[0])  # first kernel, degrees
    """
    return _meter(model).gradients(x, y, sample_weight, exact=True)[0]
