"""Callbacks that record alignment and conservation during `model.fit`.

The measures go into the epoch logs, so `History`, `CSVLogger` and
`TensorBoard` record them with no extra code. Like Keras's own callbacks that
add to the logs (e.g. `ReduceLROnPlateau`), put them before the callbacks that
read the logs in the `callbacks` list.
"""

import warnings

import keras

from keras_fa import alignment as alignment_lib
from keras_fa import backend
from keras_fa._validation import check_positive_integer
from keras_fa._validation import check_probe_data
from keras_fa._validation import check_real
from keras_fa.history import append_row

_ACTIONS = ("warn", "stop", None)


def _check_every(every):
    # A number of training steps, or None: only at the end of each epoch.
    if every is None:
        return None
    return check_positive_integer("every", every)


def _check_measures(measures, allowed):
    if measures is None:
        return tuple(allowed)
    if isinstance(measures, str):
        measures = (measures,)
    try:
        measures = tuple(measures)
    except TypeError:
        measures = (measures,)
    unknown = [m for m in measures if m not in allowed]
    if unknown or not measures:
        raise ValueError(
            f"Unknown alignment measure(s) {unknown or measures!r}. "
            f"Allowed: {', '.join(allowed)}."
        )
    return measures


def _check_tolerance(tolerance):
    # The largest per-neuron drift accepted, or None: no check.
    if tolerance is None:
        return None
    return check_real("tolerance", tolerance, minimum=0, exclusive=True)


class _MeasureCallback(keras.callbacks.Callback):
    """Shared by the callbacks: the meter, the schedule and the records.

    Records are kept like Keras's `History`: `history` maps each key to its
    per-epoch values; `steps` maps each key to its values at the measured
    training steps, with the optimizer's step count
    (`model.optimizer.iterations`) under `"step"`.
    `conservation_status` is the meter's: `{kernel: "holds" or
    "not applicable: <reason>"}`.
    """

    def __init__(self, every, measures, allowed):
        super().__init__()
        self.every = _check_every(every)
        self.measures = _check_measures(measures, allowed)
        self.alignment = None
        self.conservation_status = {}
        self.history = {}
        self.steps = {}
        self._step = 0
        self._epoch_start = 0
        self._last = None
        self._started = False
        self._first_step = 0

    def _select(self, values):
        return {
            key: value
            for key, value in values.items()
            if key.rsplit("/", 1)[-1] in self.measures
        }

    def _measure(self):
        raise NotImplementedError

    def _record(self, table, values, **extra):
        append_row(table, {**extra, **values})

    def _iterations(self):
        # On jax, model.fit keeps the optimizer's state outside the model
        # during an epoch; a sync brings it back (a measurement does too).
        backend.sync_state(self.model)
        iterations = self.model.optimizer.iterations
        return int(keras.ops.convert_to_numpy(iterations))

    def _ensure_built(self):
        """Builds the model if it can; returns whether it is built."""
        return self.model.built

    def _on_start(self):
        """Checks and warnings once the meter is made, before measuring."""

    def on_train_begin(self, logs=None):
        self.history = {}
        self.steps = {}
        self._last = None
        self._started = False
        self._step = self._epoch_start = self._iterations()
        self._first_step = self._step
        # On tensorflow, model.fit builds a model without an input shape
        # only in its first step: the measures then start after it.
        if self._ensure_built():
            self._start()

    def _start(self):
        if (
            self.alignment is None
            or self.alignment.model is not self.model
            or not self.alignment.is_current()
        ):
            self.alignment = alignment_lib.Alignment(self.model)
        self.conservation_status = self.alignment.conservation_status
        self._on_start()
        self.alignment.reset_reference()
        self._started = True
        if self.every is not None:
            self._last = (self._step, self._measure())
            self._record(self.steps, self._last[1], step=self._step)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._iterations()

    def on_train_batch_end(self, batch, logs=None):
        if not self._started:
            if self.model.built:
                self._step = self._iterations()
                self._start()
            return
        if self.every is None:
            return
        # With `steps_per_execution` > 1, Keras calls this once per
        # execution, `batch` being the index of its last step in the epoch
        # (past the epoch's end for a shorter last execution): an upper
        # bound of the optimizer's count, which is read only where it may
        # have crossed a multiple of `every`.
        bound = self._epoch_start + batch + 1
        if bound // self.every <= self._step // self.every:
            return
        previous, self._step = self._step, self._iterations()
        if self._step // self.every > previous // self.every:
            self._last = (self._step, self._measure())
            self._record(self.steps, self._last[1], step=self._step)

    def on_epoch_end(self, epoch, logs=None):
        if not self._started:
            return
        self._step = self._iterations()
        # The weights have not changed since a measurement at this step.
        if self._last is not None and self._last[0] == self._step:
            values = self._last[1]
        else:
            values = self._measure()
        self._record(self.history, values, epoch=epoch)
        if logs is not None:
            logs.update(values)


class AlignmentCallback(_MeasureCallback):
    """Adds per-layer alignment measures to the logs of `model.fit`.

    At the end of every epoch (and every `every` training steps, if given)
    it measures, on a fixed probe batch, each kernel's `weight_angle`,
    `norm_ratio`, `signal_angle` and `update_angle` against exact backprop,
    and the conservation quantity with its drift since the start of
    training where the law holds (see `keras_fa.alignment`;
    `callback.conservation_status` says where, and why not elsewhere).
    Epoch values go into the logs as `"<kernel>/<measure>"`, so `History`,
    `CSVLogger` and `TensorBoard` record them; step values are kept in
    `callback.steps`. One measurement runs the model forward and backward
    twice on the probe batch (with the rules, and as exact backprop): about
    `2 * len(probe) / batch_size` training steps.
    A probe the size of a training batch and `every=100` add about 2% to
    training (`benchmarks/alignment_cost.py`).

    The probe is checked when the callback is made (its parts have the
    same number of examples, at least one, are numeric and finite) and
    again at the start of training, before any step (the model takes it;
    with a sparse categorical loss, its labels are classes of the model's
    output). A model not built yet (on tensorflow, `model.fit` builds a
    model without an input shape only in its first step) is built from
    the probe. Steps are counted as the optimizer counts them
    (`model.optimizer.iterations`), also with `steps_per_execution`.

    Args:
        probe_data: the batch to measure on: a tuple `(x, y)` or
            `(x, y, sample_weight)` of arrays or tensors.
        every: also measure every this many training steps (kept in
            `steps`). None (default): only at the end of each epoch.
        measures: the measures to record, a subset of
            `keras_fa.alignment.MEASURES`. Default: all.

    Example:

    >>> align = keras_fa.callbacks.AlignmentCallback((x[:256], y[:256]))
    >>> history = model.fit(x, y, epochs=10, callbacks=[align])
    >>> history.history["fa_dense/update_angle"]
    >>> keras_fa.plot_alignment(history, "figures")
    """

    def __init__(self, probe_data, every=None, measures=None):
        super().__init__(every, measures, alignment_lib.MEASURES)
        self.probe_data = check_probe_data(probe_data)

    def _ensure_built(self):
        if not self.model.built:
            first = keras.tree.map_structure(
                lambda a: a[:1], self.probe_data[0]
            )
            try:
                self.model(first)
            except Exception as error:
                raise ValueError(
                    "AlignmentCallback builds the model from x of "
                    f"`probe_data`, which it cannot take: {error}"
                ) from error
        return True

    def _on_start(self):
        self.alignment.check_batch(*self.probe_data, name="probe_data")

    def _measure(self):
        return self._select(self.alignment.measure(*self.probe_data))


class ConservationMonitor(_MeasureCallback):
    """Watches the conservation law of Robertson & Koyejo during training.

    For each kernel whose hidden neurons have a conservation law, it logs the
    kernel's summed Q (`"<kernel>/conservation"`), its drift since the start of
    training (`conservation_drift`) and the largest per-neuron drift
    (`conservation_drift_max`). Under plain SGD with a small learning rate,
    with fa, usf, frsf, kp or bp, Q is constant up to a drift of the order of
    the learning rate; momentum, Adam and weight decay break the law. It
    needs no data: Q is a function of the weights. At the start of training
    it warns once about the hidden kernels where the law is not applicable,
    which it does not watch (`monitor.conservation_status` says why, e.g.
    attention projections).

    A drift beyond `tolerance` is recorded in `monitor.violations` as
    `(step, kernel, drift)` at every check, and warned about once per
    kernel in a `fit` (the warning says how to silence it). On tensorflow,
    `model.fit` builds a model without an input shape only in its first
    step: Q(0) is then taken after it, and the monitor says so.

    Args:
        every: also check every this many training steps (kept in
            `steps`). None (default): only at the end of each epoch.
        tolerance: largest per-neuron drift accepted, or None (no check).
        action: what to do when a drift exceeds `tolerance`: `"warn"`
            (default), `"stop"` (warn and stop training) or None (only
            record it in `violations`).

    Example:

    >>> monitor = keras_fa.callbacks.ConservationMonitor(tolerance=1e-2)
    >>> model.compile(keras.optimizers.SGD(1e-3), loss)
    >>> model.fit(x, y, epochs=5, callbacks=[monitor])
    >>> monitor.history["fa_dense/conservation_drift_max"]
    """

    def __init__(self, every=None, tolerance=None, action="warn"):
        super().__init__(
            every,
            None,
            ("conservation", "conservation_drift", "conservation_drift_max"),
        )
        if action not in _ACTIONS:
            raise ValueError(
                f"`action` must be one of {_ACTIONS}. Received: "
                f"action={action!r}"
            )
        self.tolerance = _check_tolerance(tolerance)
        self.action = action
        self.violations = []
        self._warned = set()

    def on_train_begin(self, logs=None):
        self.violations = []
        self._warned = set()
        super().on_train_begin(logs)

    def _on_start(self):
        if (
            self._step != self._first_step
            and self.alignment.conservation_layers
        ):
            warnings.warn(
                "ConservationMonitor: the model was built only in the first "
                "training step (tensorflow builds a model without an input "
                f"shape there), so Q(0) is taken at step {self._step}: the "
                "drift counts from there. Build the model before training "
                "(start it with keras.Input, or call it on a batch) to "
                "count from the start.",
                stacklevel=2,
            )
        reasons = {
            kernel: status.split(": ", 1)[-1]
            for kernel, status in self.conservation_status.items()
            if status != alignment_lib.HOLDS
        }
        if not self.alignment.conservation_layers:
            warnings.warn(
                "ConservationMonitor found no layer with a conservation law "
                "in this model: the law needs consecutive layers with a "
                "kernel linked by ReLU, leaky ReLU or linear activations "
                "(pooling, dropout, flatten allowed) whose next layer's rule "
                "is bp, fa, usf, frsf or kp. Not applicable to "
                + "; ".join(f"{k!r}: {r}" for k, r in reasons.items()),
                stacklevel=2,
            )
            return
        hidden = [
            f"{kernel!r}: {reason}"
            for kernel, reason in reasons.items()
            if self.conservation_status[kernel] != alignment_lib.OUTPUT_KERNEL
        ]
        if hidden:
            warnings.warn(
                "ConservationMonitor does not watch these kernels, to which "
                "the conservation law is not applicable: " + "; ".join(hidden),
                stacklevel=2,
            )

    def _measure(self):
        values = self._select(self.alignment.weights())
        self._check(values)
        return values

    def _check(self, values):
        if self.tolerance is None:
            return
        for key, value in values.items():
            if key.endswith("/conservation_drift_max") and (
                value > self.tolerance
            ):
                layer = key.rsplit("/", 1)[0]
                self.violations.append((self._step, layer, value))
                if self.action is not None and layer not in self._warned:
                    self._warned.add(layer)
                    warnings.warn(
                        f"Conservation law of layer '{layer}' drifted by "
                        f"{value:.3g} (> tolerance {self.tolerance:.3g}) at "
                        f"training step {self._step}"
                        + (
                            ": training stops."
                            if self.action == "stop"
                            else ". Later drifts of this layer in this fit "
                            "go to `monitor.violations` without a warning."
                        )
                        + " The law holds under plain SGD with a small "
                        "learning rate (no momentum, Adam or weight "
                        "decay); elsewhere, silence this with "
                        "`ConservationMonitor(action=None)` (violations "
                        "are still recorded) or a larger `tolerance`.",
                        stacklevel=2,
                    )
                if self.action == "stop" and self.model is not None:
                    self.model.stop_training = True
