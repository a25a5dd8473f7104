"""A meter's plan of its model, and the computations it traces on it.

`Plan(model)` finds, once, what a meter measures (`discovery`,
`conservation`). Its methods are the measurements as functions of the
variables' values, for the meter to compile: the weight measures, the
gradients of the loss with the rules or as backprop (with the error signal
at every probe), and every measure of a batch. Each returns one flat array
(a single transfer from the device), which `unflatten` reads back.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_fa import engine
from keras_fa import tracing
from keras_fa.alignment import conservation
from keras_fa.alignment import discovery
from keras_fa.alignment import measures
from keras_fa.layers.base import FeedbackMixin


def _no_op():
    pass


class Plan:
    """The kernels, signals and conservation pairs of a model, and the
    traced computations of their measures.

    Attributes:
        layer_names: the kernels' names, in the model's order.
        conservation_status: `{kernel name: status}`.
        pairs: `[(kernel name, conservation.Pair)]` where the law holds.
        weight_variables: the variables the weight measures read.
        rewind: called before each pass of a measurement, to replay the
            global random state (set by the meter while it measures).
    """

    def __init__(self, model):
        self.model = model
        index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        units = discovery.kernel_units(model, index)
        self.keys = {id(layer): key for key, layer, _ in units}
        self.layer_names = [key for key, _, _ in units]
        # The variables whose gradients are each kernel's update.
        self.kernel_index = {
            key: [index[id(v)] for v in discovery.trained_by(layer)]
            for key, layer, _ in units
        }
        self.feedback_layers = [
            layer for _, layer, _ in units if isinstance(layer, FeedbackMixin)
        ]
        self.signal_keys, self.aliases = discovery.find_signals(
            model, units, self.keys, self.feedback_layers
        )
        pairs, self.conservation_status = conservation.find_pairs(model, units)
        self.pairs = list(pairs.items())
        self.weight_variables = self._weight_variables()
        self.rewind = _no_op

    def _weight_variables(self):
        # The weight measures read only these variables. With LoRA,
        # `layer.kernel` is the merged tensor; its variables are among
        # `layer.variables`.
        layers = list(self.feedback_layers)
        groups = [[layer.kernel, *layer.variables] for layer in layers]
        for _, pair in self.pairs:
            groups.append([pair.bias])
            groups += [
                [layer.kernel, *layer.variables] for layer in pair.pair_layers()
            ]
        found, seen = [], set()
        for variable in (v for group in groups for v in group):
            if isinstance(variable, keras.Variable) and (
                id(variable) not in seen
            ):
                seen.add(id(variable))
                found.append(variable)
        return found

    # -- traced computations ----------------------------------------------

    def weights(self, mapping):
        """Returns `(out, q)`: the weight measures `{key: scalar}` and Q per
        neuron `{kernel: vector}`, the variables read from `mapping`."""
        out, read = {}, {}
        with keras.StatelessScope(state_mapping=mapping):
            for layer in self.feedback_layers:
                w, b = read[id(layer)] = measures.kernels(layer)
                key = self.keys[id(layer)]
                angle, ratio = measures.weight_measures(
                    w, b, layer.feedback.exact
                )
                out[f"{key}/weight_angle"] = angle
                out[f"{key}/norm_ratio"] = ratio
            q = {
                key: conservation.neuron_q(pair, read)
                for key, pair in self.pairs
            }
        return out, q

    def gradients(self, state, x, y, sample_weight, shapes, exact):
        """Returns `(loss, gradients, signals)` of a batch: one gradient per
        trainable variable, and `{kernel: error signal}` at the probes of
        `shapes` (`{kernel: shape}`); as backprop if `exact`, else with
        the rules."""
        trainable, non_trainable, metrics = state
        names = list(shapes)
        zeros = [ops.zeros(shapes[name], dtype="float32") for name in names]
        # Both passes draw the same unseeded random numbers (torch dropout).
        self.rewind()

        def loss_fn(diff, non_trainable, metrics, x, y, sample_weight):
            trainable, probes = diff
            mode = (
                tracing.exact_backprop() if exact else contextlib.nullcontext()
            )
            with mode, tracing.probing(self._probes(names, probes)):
                loss, _ = engine.stateless_loss(
                    self.model,
                    trainable,
                    non_trainable,
                    metrics,
                    x,
                    y,
                    sample_weight,
                )
            return loss, ()

        loss, _, (d_trainable, d_probes) = engine.value_and_grad(
            loss_fn,
            [list(trainable), zeros],
            list(non_trainable),
            list(metrics),
            x,
            y,
            sample_weight,
        )
        return loss, list(d_trainable), dict(zip(names, d_probes))

    def _probes(self, names, probes):
        # `{probe key: zeros}` of the signals, a BlockGradient on a tap
        # sharing the tap's.
        by_key = {self.signal_keys[n]: p for n, p in zip(names, probes)}
        for alias, key in self.aliases.items():
            if key in by_key:
                by_key[alias] = by_key[key]
        return by_key

    def _mapping(self, trainable, non_trainable):
        model = self.model
        return list(zip(model.trainable_variables, trainable)) + list(
            zip(model.non_trainable_variables, non_trainable)
        )

    def _data_measures(self, rule, true):
        # signal_angle and update_angle of every kernel, from the
        # `(gradients, signals)` of both passes.
        out = {}
        for name in self.layer_names:
            if name in rule[1]:
                out[f"{name}/signal_angle"] = measures.tensor_angle(
                    rule[1][name], true[1][name]
                )
            i = self.kernel_index[name]
            out[f"{name}/update_angle"] = measures.tensor_angle(
                measures.concat(rule[0], i), measures.concat(true[0], i)
            )
        return out

    # -- the functions a meter compiles -------------------------------------

    def measure_function(self, shapes):
        """Every measure of a batch, as one flat array (see `unflatten`)."""

        def measure(state, x, y, sample_weight):
            trainable, non_trainable, _ = state
            out, q = self.weights(self._mapping(trainable, non_trainable))
            passes = [
                self.gradients(state, x, y, sample_weight, shapes, exact)[1:]
                for exact in (False, True)
            ]
            out.update(self._data_measures(*passes))
            return measures.flatten(out, q)

        return engine.compile_function(measure, differentiable=False)

    def weights_function(self):
        """The weight measures of `weight_variables`' values, flat."""

        def weights(values):
            mapping = list(zip(self.weight_variables, values))
            return measures.flatten(*self.weights(mapping))

        return engine.compile_function(weights, differentiable=False)

    def gradients_functions(self, shapes):
        """`(rule, true)`: `gradients` with the rules and as backprop."""

        def compile_pass(exact):
            return engine.compile_function(
                lambda state, x, y, sample_weight: self.gradients(
                    state, x, y, sample_weight, shapes, exact
                )
            )

        return compile_pass(False), compile_pass(True)

    # -- reading results ----------------------------------------------------

    def _scalar_keys(self, signals):
        # The order in which `weights` and `measure_function` fill their
        # dict.
        keys = []
        for layer in self.feedback_layers:
            key = self.keys[id(layer)]
            keys += [f"{key}/weight_angle", f"{key}/norm_ratio"]
        if signals is not None:
            for name in self.layer_names:
                if name in signals:
                    keys.append(f"{name}/signal_angle")
                keys.append(f"{name}/update_angle")
        return keys

    def unflatten(self, flat, signals=None):
        """Returns `(out, q)` of a flat result: `{key: float}` and
        `{kernel: Q per neuron}` (numpy). `signals`: the shapes of the
        measured signals, None for the weight measures alone."""
        flat = np.asarray(ops.convert_to_numpy(flat), dtype=np.float64)
        out, q, i = {}, {}, 0
        for key in self._scalar_keys(signals):
            out[key] = float(flat[i])
            i += 1
        for key, pair in self.pairs:
            q[key] = flat[i : i + pair.size]
            i += pair.size
        assert i == flat.size, "alignment measures: layout mismatch"
        return out, q
