"""The meter: `Alignment`, which measures a model through compiled
functions of its variables, and the meter keras_fa keeps for each model."""

import contextlib
import weakref

import keras
from keras import ops

from keras_fa import backend
from keras_fa import engine
from keras_fa import tracing
from keras_fa._validation import check_bool
from keras_fa._validation import check_data
from keras_fa._validation import check_labels
from keras_fa._validation import data_label
from keras_fa.alignment import measures
from keras_fa.alignment.plan import Plan


class Alignment:
    """Measures the alignment of a keras_fa model's kernels with backprop.

    It finds, once, the model's kernels (those of its layers and of their
    sub-layers: a separable convolution's two, an attention layer's
    projections), their feedback rules, the points where each kernel's error
    signal can be read, and the hidden neurons that obey a conservation law
    (kernels chained through positively homogeneous activations, pooling,
    dropout or flatten, in a Sequential or functional model; see
    `conservation_status`). Measurements are compiled functions of the
    model's current variables (jit on jax, a tf.function on tensorflow,
    eager on torch); they never change the model, its random state or its
    optimizer.

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
    >>> meter.conservation_status        # {"dense": "holds", ...}
    """

    def __init__(self, model, share=None):
        check_model(model)
        try:
            hash(share)
        except TypeError as error:
            raise TypeError(
                "`share` must be a hashable key (e.g. a string or a tuple) "
                f"or None. Received: share={share!r}"
            ) from error
        if not model.built:
            raise ValueError(
                "Build the model before measuring its alignment: call it on "
                "data, or start it with keras.Input."
            )
        self.model = model
        self._plan = Plan(model)
        self._trainable_ids = [id(v) for v in model.trainable_variables]
        self.reference = None
        self._shapes = {}
        self._output_shapes = {}
        self._loss_checked = set()
        self._functions = {}
        self._share = share

    @property
    def layer_names(self):
        """Names of the kernels, in the model's order: the keys of the
        measures (`"<name>/<measure>"`)."""
        return list(self._plan.layer_names)

    @property
    def conservation_layers(self):
        """Names of the kernels whose neurons have a conservation law."""
        return [key for key, _ in self._plan.pairs]

    @property
    def conservation_status(self):
        """`{kernel name: status}` for every kernel: `"holds"` where its
        hidden neurons have a conservation law (and conservation measures),
        `"not applicable: <reason>"` elsewhere (and no conservation
        measures)."""
        return dict(self._plan.conservation_status)

    # -- state ------------------------------------------------------------

    def is_current(self):
        """Whether the model's trainable variables are still those this
        meter was made for (enabling LoRA, freezing or unfreezing a layer
        changes them; the meter then refuses to measure)."""
        return [
            id(v) for v in self.model.trainable_variables
        ] == self._trainable_ids

    def _check_current(self):
        if not self.is_current():
            raise ValueError(
                "The model's trainable variables changed since this "
                "Alignment was made (LoRA enabled, a layer frozen or "
                "unfrozen): make a new `Alignment(model)` "
                "(`keras_fa.alignment.measure` and the callbacks do so "
                "themselves)."
            )

    def _state(self):
        self._check_current()
        return engine.state(self.model)

    def _probe_shapes(self, x):
        # The shapes of the signals at the probes, and of the outputs, on
        # inputs of `x`'s shape: one forward pass per shape.
        key = tuple(
            tuple(ops.shape(t)) for t in keras.tree.flatten(x) if t is not None
        )
        if key not in self._shapes:
            self._record_shapes(key, x)
        return key, self._shapes[key]

    def _record_shapes(self, key, x):
        trainable, non_trainable, _ = self._state()
        with (
            tracing.recording() as shapes,
            tracing.exact_backprop(),
            backend.preserve_random_state(),
        ):
            outputs, _ = self.model.stateless_call(trainable, non_trainable, x)
        self._shapes[key] = {
            name: shapes[k]
            for name, k in self._plan.signal_keys.items()
            if k in shapes
        }
        self._output_shapes[key] = [
            tuple(t.shape) for t in keras.tree.flatten(outputs)
        ]

    def _compiled(self, key, shapes, kind):
        # Compiled once per input shape and kind; shared through the
        # engine's cache between meters given the same `share` key (jax).
        if (key, kind) not in self._functions:
            shared = None
            if self._share is not None:
                shared = (self._share, "alignment", key, kind)
            self._functions[(key, kind)] = engine.compiled(
                shared, lambda: self._build(shapes, kind)
            )
        return self._functions[(key, kind)]

    def _build(self, shapes, kind):
        if kind == "gradients":
            return self._plan.gradients_functions(shapes)
        if kind == "weights":
            return self._plan.weights_function()
        return self._plan.measure_function(shapes)

    @contextlib.contextmanager
    def _replaying(self):
        # The global random state (torch's unseeded dropout) is replayed for
        # each pass and restored after: training never sees a measurement.
        previous = self._plan.rewind
        with backend.preserve_random_state() as rewind:
            self._plan.rewind = rewind
            try:
                yield
            finally:
                self._plan.rewind = previous

    # -- checking a batch ---------------------------------------------------

    def _check_compiled(self):
        if not getattr(self.model, "compiled", False):
            raise ValueError(
                "Gradient-based alignment measures need the loss: compile "
                "the model first, e.g. model.compile(optimizer, loss)."
            )

    def check_batch(self, x, y, sample_weight=None, name=None):
        """Checks a batch before it is measured: `check_data`, then that
        the model takes `x`, that sparse labels are classes of the model's
        output, and that the loss takes `y` (and `sample_weight`). Runs
        the model forward once for each new shape of the data. Raises a
        `ValueError` naming the part of the data (`name`, e.g.
        `"probe_data"`, is the argument it came in).

        Returns:
            `(x, y, sample_weight)` as tensors.
        """
        self._check_current()
        check_data(x, y, sample_weight, name=name)
        x, y, sample_weight = _to_tensors(x, y, sample_weight)
        check_labels(self.model, y, self._output_spec(x, name), name)
        shapes = tuple(
            tuple(ops.shape(t))
            for t in keras.tree.flatten((x, y, sample_weight))
            if t is not None
        )
        if shapes not in self._loss_checked and self.model.compiled:
            self._check_loss(x, y, sample_weight, name)
            self._loss_checked.add(shapes)
        return x, y, sample_weight

    def _check_loss(self, x, y, sample_weight, name):
        # Outside the compiled measurement, where an error would come
        # wrapped in the backend's trace; stateless, as a measurement.
        trainable, non_trainable, _ = self._state()
        with backend.preserve_random_state():
            y_pred, _ = self.model.stateless_call(trainable, non_trainable, x)
        try:
            # `training` left out: an override need not take it.
            self.model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
            )
        except Exception as error:
            raise ValueError(
                f"The model's loss cannot take {data_label('y', name)} (shape "
                f"{_shapes(y)}) with the model's outputs (shape "
                f"{_shapes(y_pred)}): {error}"
            ) from error

    def output_shapes(self, x):
        """Returns the shapes of the model's outputs on inputs `x`, as a
        list (one forward pass per new shape of `x`, which the measurements
        reuse). Raises a `ValueError` if the model cannot take `x`."""
        return self._output_spec(x)

    def _output_spec(self, x, name=None):
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        try:
            key, _ = self._probe_shapes(x)
        except Exception as error:
            plural = "s" if len(keras.tree.flatten(x)) > 1 else ""
            raise ValueError(
                f"The model cannot take {data_label('x', name)} (shape"
                f"{plural} {_shapes(x)}): {error}"
            ) from error
        return self._output_shapes[key]

    # -- measuring ------------------------------------------------------------

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
            gradient), and a dict from kernel name (see `layer_names`) to
            the error signal delta that kernel's product receives (see the
            module docstring).
        """
        exact = check_bool("exact", exact)
        self._check_compiled()
        x, y, sample_weight = self.check_batch(x, y, sample_weight)
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
        """Returns `{kernel name: Q_i per neuron}` (numpy) for the kernels
        whose neurons have a conservation law (see `conservation_status`)."""
        _, q = self._run_weights()
        return q

    def reset_reference(self):
        """Takes the current per-neuron Q as Q(0) of the drift measures."""
        self.reference = self.conservation()
        return self.reference

    def _run_weights(self):
        self._check_current()
        fn = self._compiled(None, None, "weights")
        backend.sync_state(self.model)
        flat = fn([v.value for v in self._plan.weight_variables])
        return self._plan.unflatten(flat)

    def weights(self):
        """Returns the measures that need no data: `weight_angle`,
        `norm_ratio` and the conservation measures, keyed
        `"<layer>/<measure>"`. Cheap: a few norms of the weights."""
        out, q = self._run_weights()
        return self._ordered(out, q)

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
        x, y, sample_weight = self.check_batch(x, y, sample_weight)
        key, shapes = self._probe_shapes(x)
        fn = self._compiled(key, shapes, "measure")
        with self._replaying():
            flat = fn(self._state(), x, y, sample_weight)
        out, q = self._plan.unflatten(flat, signals=shapes)
        return self._ordered(out, q)

    def _ordered(self, out, q):
        drift = measures.conservation_measures(q, self.reference)
        return measures.ordered({**out, **drift}, self._plan.layer_names)


def _shapes(tensors):
    # "(8, 3), (8,)": the shapes of a structure of tensors, for errors.
    return ", ".join(str(tuple(t.shape)) for t in keras.tree.flatten(tensors))


def _to_tensors(x, y, sample_weight):
    x = keras.tree.map_structure(ops.convert_to_tensor, x)
    y = keras.tree.map_structure(ops.convert_to_tensor, y)
    if sample_weight is not None:
        sample_weight = ops.convert_to_tensor(sample_weight)
    return x, y, sample_weight


def check_model(model):
    """Raises a TypeError unless `model` is a `keras.Model`."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Alignment measures a keras.Model. Received: "
            f"{type(model).__name__}"
        )


# The meter of each model (a meter holds compiled functions, not weights).
_METERS = weakref.WeakKeyDictionary()


def meter(model):
    """Returns the `Alignment` keras_fa keeps for `model`.

    `measure`, `gradients`, `true_gradients` and `keras_fa.train` all use
    it, so its compiled functions are made once per model and input shape.
    A new one is made when the model's trainable variables changed since
    (LoRA enabled, a layer frozen or unfrozen). Its `reference` (Q(0) of
    the drift measures) is set by `reset_reference()`, which
    `keras_fa.train` calls at its start.

    Example:

    >>> keras_fa.alignment.meter(model).conservation_status
    {'dense': 'holds', 'dense_1': "not applicable: its outputs are ..."}
    """
    check_model(model)
    found = _METERS.get(model)
    if found is None or not found.is_current():
        found = _METERS[model] = Alignment(model)
    return found


def measure(model, x, y, sample_weight=None):
    """Returns every alignment measure of `model` on one batch.

    A shortcut for `meter(model).measure(x, y)`: the `Alignment` kept for
    the model (so its compiled function is reused). Conservation drift is
    reported once `meter(model).reset_reference()` has been called
    (`keras_fa.train` does it at its start).

    Example:

    >>> keras_fa.alignment.measure(model, x[:256], y[:256])
    {'dense/weight_angle': 88.7, 'dense/norm_ratio': 0.98, ...}
    """
    return meter(model).measure(x, y, sample_weight)


def gradients(model, x, y, sample_weight=None):
    """Returns the gradients the model's rules give on one batch.

    A list of numpy arrays, one per `model.trainable_variables`: what
    `model.fit` would hand to the optimizer. See `true_gradients`.
    """
    return meter(model).gradients(x, y, sample_weight, exact=False)[0]


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
    return meter(model).gradients(x, y, sample_weight, exact=True)[0]
