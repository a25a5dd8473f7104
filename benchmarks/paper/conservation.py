"""The conservation law of Robertson & Koyejo (2024), measured.

    KERAS_BACKEND=jax python -m benchmarks.paper.conservation
    python -m benchmarks.paper.conservation --quick --seeds 2 --output /tmp/c

For hidden neuron i of layer l, with incoming weights and bias `w_in`
(column i of `W_l`, and `b_l[i]`) and outgoing weights `w_out` (row i of
`W_{l+1}`), the next layer's rule has a potential `phi` whose gradient is
the feedback `B` it uses in place of `W` (`phi = W * B` for fa and usf,
`W^2 / 2` for bp; `FeedbackRule.conservation_potential`).
`docs/paper.md` derives that under gradient flow

    Q_i = |w_in|^2 - 2 sum(phi(w_out))

is constant. Any optimizer step `dw` changes it by (pure algebra)

    Q_i(t+1) - Q_i(t) = L_i + S_i
    L_i = 2 <w_in, dw_in> - 2 <b_out, dw_out>                 first order
    S_i = |dw_in|^2 - 2 sum(phi(w_out + dw_out) - phi(w_out)
                            - b_out * dw_out)                 second order

with `b_out` the feedback of the step. For a plain SGD step `dw = -lr g`,
`L_i = 0` exactly: a ReLU satisfies `f'(a) a = f(a)`, so
`<w_in, g_in> = <b_out, g_out>` on every example. What is left, `S_i`, is
`O(lr^2)` a step (`lr^2 |g_in|^2` for fa), so over a fixed training time
`lr x steps` the drift is `O(lr)`. The other optimizers make `L_i != 0`:

- decoupled weight decay (Keras's `weight_decay`: `w <- (1 - lr wd) w -
  lr g`) gives exactly `L_i = -2 lr wd (|w_in|^2 - <w_out, b_out>)`, so
  `dQ/dt = -wd (|w_in|^2 + Q)` for fa and usf and `-2 wd Q` for bp: the
  change does not shrink with the step;
- heavy-ball momentum `beta` at the same effective step
  (`lr = lr_sgd (1 - beta)`) gives `L_i ~ 2 beta / (1 - beta) S_i` while
  the gradient varies slowly, a drift `(1 + beta) / (1 - beta)` = 19x
  plain SGD's for `beta = 0.9`, but still `O(lr)` (heavy ball tends to
  gradient flow as `lr -> 0`);
- Adam rescales each weight's step, so `L_i` is first order: `O(1)`.

The experiments train ReLU MLPs of `keras_fa.FADense` layers (64-h-h-10,
one rule in every layer, with or without biases, Glorot kernels scaled by
`init_scale`, fa's feedback at full Glorot scale) on scikit-learn's digits
with softmax cross-entropy, by full-batch gradient descent (and one
minibatch variant), and read the weights after every step:

- `law`: fa, usf and bp, with and without bias, plain SGD: Q(t) - Q(0) per
  layer against the growth of |W_l|^2 + |b_l|^2, with its first- and
  second-order parts.
- `learning_rate`: the same training time at lr, lr/2, lr/4: the drift
  ratio per halving.
- `optimizers`: fa with momentum 0.9, Adam and weight decay at two
  learning rates: the drift relative to the growth of |W|^2, against plain
  SGD's; for weight decay the measured first-order part against its formula.
- `alignment`: the angle between `W_{l+1}` and `B_{l+1}` against the growth
  of |W_l|^2 (fa, usf), and the angle the law predicts from Q(0):
  `<W_{l+1}, B_{l+1}> = (|W_l|^2 + |b_l|^2 - sum Q(0)) / 2`.

Writes `conservation.json` (every number per seed, and mean and std over
seeds) and `law.png`, `learning_rate.png`, `optimizers.png`,
`alignment.png` to `--output`, atomically.
"""

import math
import os
import platform
import sys
import time

import keras
import numpy as np

import keras_fa
from benchmarks import harness
from keras_fa.alignment import angle
from keras_fa.feedback.base import glorot_scale

NAME = "conservation"
RULES = ("fa", "usf", "bp")
OPTIMIZERS = ("sgd", "momentum", "adam", "weight_decay")
LAYERS = ("layer1", "layer2")

FULL = {
    "examples": 1347,  # digits' whole training split, one batch
    "hidden": 64,
    "init_scale": 0.1,
    "learning_rate": 0.1,
    "steps": 1000,  # at the base learning rate; 2^k x more at lr / 2^k
    "records": 50,
    "halvings": 2,
    "optimizer_halvings": 1,  # at most "halvings": SGD's runs are shared
    "batch_size": 64,  # of the minibatch variant
    "momentum": 0.9,
    "adam_learning_rate": 1e-3,
    "weight_decay": 1e-3,
}
QUICK = {
    **FULL,
    "examples": 128,
    "hidden": 16,
    "steps": 10,
    "records": 2,
    "halvings": 1,
    "batch_size": 32,
}


def _key(rule, bias, batch_size=None):
    key = f"{rule}/{'bias' if bias else 'no_bias'}"
    return key if batch_size is None else f"{key}/minibatch"


# -- models ---------------------------------------------------------------


def build_model(rule, bias, hidden, inputs=64, classes=10):
    """Returns a ReLU MLP `inputs-hidden-hidden-classes` of
    `keras_fa.FADense` layers, all with `rule`, built and not compiled.

    Its weights are the layers' defaults; `initial_weights` gives those of
    the experiments.

    Args:
        rule: feedback rule name (`"fa"`, `"usf"`, `"bp"`).
        bias: whether the layers have biases.
        hidden: width of the two hidden layers.
        inputs: number of input features.
        classes: number of outputs (logits).

    Returns:
        A `keras.Sequential`.
    """
    layers = [keras.Input((inputs,))]
    for i, units in enumerate((hidden, hidden, classes)):
        layers.append(
            keras_fa.FADense(
                units,
                activation="relu" if i < 2 else None,
                use_bias=bias,
                feedback=rule,
                seed=i,
            )
        )
    return keras.Sequential(layers)


def initial_weights(seed, sizes, scale):
    """Returns the initial `(kernel, bias, feedback)` of each layer.

    Kernels are Glorot-uniform scaled by `scale` (a small initialisation
    makes Q(0) small), biases zero, fa's feedback matrices Glorot-uniform
    at full scale. Drawn in numpy, so one seed gives every rule and every
    backend the same weights.

    Args:
        seed: integer seed.
        sizes: layer widths, inputs first, e.g. `(64, 64, 64, 10)`.
        scale: factor on the kernels' Glorot standard deviation.

    Returns:
        A list of float32 numpy triples, one per layer.
    """
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        kernel = scale * rng.uniform(-limit, limit, (fan_in, fan_out))
        feedback = rng.uniform(-limit, limit, (fan_in, fan_out))
        out.append(
            (
                kernel.astype("float32"),
                np.zeros(fan_out, "float32"),
                feedback.astype("float32"),
            )
        )
    return out


def learning_rate(kind, config, halvings=0):
    """Returns the learning rate of optimizer `kind` after `halvings`
    halvings. Momentum runs at `lr (1 - momentum)`, the effective step of
    plain SGD at `lr`; Adam at `config["adam_learning_rate"]`."""
    if kind == "adam":
        base = config["adam_learning_rate"]
    elif kind == "momentum":
        base = config["learning_rate"] * (1.0 - config["momentum"])
    else:
        base = config["learning_rate"]
    return base / 2**halvings


def _optimizer(kind, config):
    rate = learning_rate(kind, config)
    if kind == "sgd":
        return keras.optimizers.SGD(rate)
    if kind == "momentum":
        return keras.optimizers.SGD(rate, momentum=config["momentum"])
    if kind == "adam":
        return keras.optimizers.Adam(rate)
    if kind == "weight_decay":
        return keras.optimizers.SGD(rate, weight_decay=config["weight_decay"])
    raise ValueError(
        f"Unknown optimizer {kind!r}: expected one of {', '.join(OPTIMIZERS)}"
    )


# Compiled models, one per structure, optimizer and batch shape, kept for
# the process: a run copies a seed's weights into one and resets its
# optimizer, so seeds, learning rates and repeated runs compile nothing
# new (a compile takes about a second on jax, longer than a quick run).
_RUNNERS = {}


def _runner(rule, bias, kind, config, batch, inputs, classes):
    key = (
        rule,
        bias,
        kind,
        batch,
        inputs,
        classes,
        config["hidden"],
        config["momentum"] if kind == "momentum" else None,
        config["weight_decay"] if kind == "weight_decay" else None,
    )
    if key not in _RUNNERS:
        model = build_model(rule, bias, config["hidden"], inputs, classes)
        for layer in model.layers:
            _Feedback(layer, check=True)
        model.compile(
            _optimizer(kind, config),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        _RUNNERS[key] = model
    return _RUNNERS[key]


def _numpy(tensor):
    if isinstance(tensor, keras.Variable):
        tensor = tensor.numpy()
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


def _read(model):
    # (W, b) per layer in float64; b is None without biases.
    return [
        (
            _numpy(layer.kernel),
            None if layer.bias is None else _numpy(layer.bias),
        )
        for layer in model.layers
    ]


class _Feedback:
    """The B a layer's rule uses and its potential phi (grad phi = B), in
    float64 numpy; checked (`check=True`) against the rule's own
    `backward_kernel` and `conservation_potential`."""

    def __init__(self, layer, check=False):
        self.name = layer.feedback.name
        if self.name not in RULES:
            raise ValueError(f"No numpy feedback for rule {self.name!r}.")
        self.fixed = None
        if self.name == "fa":
            self.fixed = _numpy(layer.feedback_kernel)
        self.scale = None
        if self.name == "usf":
            self.scale = layer.feedback.scale or glorot_scale(
                tuple(layer.kernel.shape)
            )
        if check:
            self._check(layer)

    def backward(self, w):
        if self.name == "fa":
            return self.fixed
        if self.name == "usf":
            return np.sign(w) * self.scale
        return w

    def potential(self, w, b):
        if self.name == "bp":
            return 0.5 * w * w  # W * B - W^2 / 2 with B = W
        return w * b

    def _check(self, layer):
        rule = layer.feedback
        kernel = keras.ops.convert_to_tensor(layer.kernel.numpy())
        inputs = [
            keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(t))
            for t in rule.feedback_inputs(layer)
        ]
        b = rule.backward_kernel(kernel, *inputs)
        phi = rule.conservation_potential(kernel, b)
        w = _numpy(layer.kernel)
        mine = self.backward(w)
        error = max(
            np.max(np.abs(_numpy(b) - mine)),
            np.max(np.abs(_numpy(phi) - self.potential(w, mine))),
        )
        if not error < 1e-6:
            raise RuntimeError(
                f"The numpy feedback of {self.name!r} differs from the "
                f"rule's by {error}: update benchmarks/paper/conservation.py."
            )


# -- one training run -----------------------------------------------------


def _forward(weights, x, y):
    # Loss and accuracy of the MLP in numpy, from the weights read.
    h = np.asarray(x, dtype=np.float64)
    for i, (w, b) in enumerate(weights):
        h = h @ w + (0.0 if b is None else b)
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    h = h - h.max(axis=1, keepdims=True)
    log_p = h - np.log(np.exp(h).sum(axis=1, keepdims=True))
    loss = -float(np.mean(log_p[np.arange(len(y)), y]))
    return loss, float(np.mean(np.argmax(h, axis=1) == y))


class _Pair:
    """The neurons of hidden layer l: their Q, and the first- and
    second-order parts of its change, summed over the steps."""

    def __init__(self, l, feedback, weights):
        self.l = l
        self.feedback = feedback  # layer l + 1's: b_out and phi
        w_out = weights[l + 1][0]
        self.b_out = feedback.backward(w_out)
        self.phi = feedback.potential(w_out, self.b_out)
        self.w_in0 = self.w_in_sq(weights)
        self.q0 = self.q(weights)
        self.first = np.zeros_like(self.q0)
        self.second = np.zeros_like(self.q0)
        self.decay = np.zeros_like(self.q0)

    def w_in_sq(self, weights):
        w, b = weights[self.l]
        squares = np.sum(w * w, axis=0)
        return squares if b is None else squares + b * b

    def q(self, weights):
        # Valid for the weights of the last `step` (self.phi is theirs).
        return self.w_in_sq(weights) - 2.0 * np.sum(self.phi, axis=1)

    def step(self, old, new, decay_rate):
        (w, b), (w_out, _) = old[self.l], old[self.l + 1]
        (new_w, new_b), (new_w_out, _) = new[self.l], new[self.l + 1]
        dw, dw_out = new_w - w, new_w_out - w_out
        new_b_out = self.feedback.backward(new_w_out)
        new_phi = self.feedback.potential(new_w_out, new_b_out)
        linear = self.b_out * dw_out
        first = 2.0 * np.sum(w * dw, axis=0) - 2.0 * np.sum(linear, axis=1)
        second = np.sum(dw * dw, axis=0) - 2.0 * np.sum(
            new_phi - self.phi - linear, axis=1
        )
        if b is not None:
            db = new_b - b
            first += 2.0 * b * db
            second += db * db
        self.first += first
        self.second += second
        if decay_rate:
            # The exact first-order part of decoupled weight decay.
            aligned = np.sum(w_out * self.b_out, axis=1)
            self.decay -= 2.0 * decay_rate * (self.w_in_sq(old) - aligned)
        self.b_out, self.phi = new_b_out, new_phi

    def measures(self, weights):
        drift = self.q(weights) - self.q0
        out = {
            "growth": float(np.sum(self.w_in_sq(weights) - self.w_in0)),
            "q_drift": float(np.sum(drift)),
            "drift_abs": float(np.sum(np.abs(drift))),
            "drift_max": float(np.max(np.abs(drift))),
        }
        if self.feedback.name != "bp":  # bp's angle is 0
            w_out = weights[self.l + 1][0]
            norms = np.linalg.norm(w_out) * np.linalg.norm(self.b_out)
            # With Q = Q(0): <W, B> = sum(phi) = (|W_l|^2 - sum Q(0)) / 2.
            law = (np.sum(self.w_in_sq(weights)) - np.sum(self.q0)) / 2.0
            out["angle"] = angle(w_out, self.b_out)
            out["angle_law"] = math.degrees(
                math.acos(float(np.clip(law / norms, -1.0, 1.0)))
            )
        return out

    def neurons(self, weights):
        """Per neuron: the drift of Q, its two parts, the weight-decay
        formula, the growth of |w_in|^2 and Q(0)."""
        return {
            "drift": self.q(weights) - self.q0,
            "first": self.first,
            "second": self.second,
            "decay": self.decay,
            "growth": self.w_in_sq(weights) - self.w_in0,
            "q0": self.q0,
        }

    def final(self, weights, decay_rate):
        """The measures after the last step, with the sizes of the parts."""
        drift = self.q(weights) - self.q0
        final = self.measures(weights)
        final.update(
            {
                "relative_drift": final["drift_abs"] / final["growth"],
                "first_order": float(np.sum(np.abs(self.first))),
                "second_order": float(np.sum(np.abs(self.second))),
                # Float rounding only: the change of Q is the two parts.
                "residual": float(
                    np.max(np.abs(drift - self.first - self.second))
                ),
            }
        )
        if decay_rate:
            final["decay_formula"] = float(np.sum(self.decay))
            final["decay_error"] = float(
                np.sum(np.abs(self.first - self.decay))
            )
        return final


def train_run(
    rule,
    bias,
    seed,
    data,
    config,
    kind="sgd",
    halvings=0,
    batch_size=None,
):
    """Trains one MLP and follows its conservation law step by step.

    The weights are read after every step. For each hidden layer's neurons
    the change of Q is split into its first-order part (zero for plain SGD
    in theory) and its second-order part (module docstring).

    Args:
        rule: `"fa"`, `"usf"` or `"bp"`.
        bias: whether the layers have biases.
        seed: integer seed of the weights (and of the minibatch order).
        data: `(x, y)` numpy arrays, the training set.
        config: `FULL`, `QUICK` or a dict with the same keys.
        kind: the optimizer, one of `OPTIMIZERS`.
        halvings: halve the learning rate this many times and take 2^k
            times more steps: the same training time.
        batch_size: None for full-batch steps, or the size of shuffled
            minibatches.

    Returns:
        A dict: `"neurons"`, per hidden layer (`"layer1"`, `"layer2"`), numpy
        arrays over its neurons: `drift` Q(T) - Q(0), `first` and `second`
        (its parts), `decay` (the weight-decay formula, zero without),
        `growth` of |w_in|^2 and `q0`; `"curve"`, the measures at
        `config["records"] + 1` times (`time` is lr x steps; `loss` is the
        loss of the batch of the next step); `"summary"`, final scalars.
    """
    x, y = data
    batch = len(x) if batch_size is None else batch_size
    model = _runner(rule, bias, kind, config, batch, x.shape[1], 10)
    rate = _start(model, seed, config, kind, halvings)
    decay_rate = rate * config["weight_decay"] if kind == "weight_decay" else 0
    steps = config["steps"] * 2**halvings
    tracker = _Tracker(model, rate, decay_rate)
    batches = _batches(data, batch_size, seed)
    _train_steps(model, tracker, batches, steps, config)
    loss, accuracy = _forward(tracker.weights, x, y)
    tracker.curve["loss"].append(loss)
    neurons, summary = tracker.summary()
    summary.update(
        learning_rate=rate,
        steps=steps,
        loss_start=tracker.curve["loss"][0],
        loss=loss,
        accuracy=accuracy,
    )
    return {"neurons": neurons, "curve": tracker.curve, "summary": summary}


def _train_steps(model, tracker, batches, steps, config):
    # Trains `steps` steps on `batches`, stepping `tracker` with the weights
    # read after each; records the measures (and the loss of the step
    # after) `config["records"]` times.
    every = max(steps // config["records"], 1)
    for step in range(1, steps + 1):
        loss = float(model.train_on_batch(*next(batches)))
        if (step - 1) % every == 0:
            tracker.curve["loss"].append(loss)
        tracker.step(_read(model))
        if step % every == 0:
            tracker.record(step)


def _start(model, seed, config, kind, halvings):
    # Puts the seed's initial weights into the compiled `model`, zeroes its
    # optimizer's state and sets its learning rate; returns the rate.
    inputs = model.layers[0].kernel.shape[0]
    sizes = (inputs, config["hidden"], config["hidden"], 10)
    weights = initial_weights(seed, sizes, config["init_scale"])
    for layer, (kernel, bias_values, feedback) in zip(model.layers, weights):
        layer.kernel.assign(kernel)
        if layer.bias is not None:
            layer.bias.assign(bias_values)
        if getattr(layer, "feedback_kernel", None) is not None:
            layer.feedback_kernel.assign(feedback)
    optimizer = model.optimizer
    for variable in optimizer.variables:
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
    rate = learning_rate(kind, config, halvings)
    optimizer.learning_rate = rate
    return rate


def _batches(data, batch_size, seed):
    # Yields the (x, y) of each step: the whole set (batch_size None), or
    # minibatches of a permutation drawn from `seed` anew each epoch.
    x, y = data
    if batch_size is None:
        full = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
        while True:
            yield full
    rng = np.random.default_rng(seed)
    order = np.arange(0)
    while True:
        if len(order) < batch_size:  # a new epoch, reshuffled
            order = rng.permutation(len(x))
        index, order = order[:batch_size], order[batch_size:]
        yield x[index], y[index]


class _Tracker:
    """Follows the hidden layers' Q through a run: the `_Pair` of each
    hidden layer, stepped with the weights read after every step, and the
    curve of their measures."""

    def __init__(self, model, rate, decay_rate):
        self.rate, self.decay_rate = rate, decay_rate
        feedback = [_Feedback(layer) for layer in model.layers]
        self.weights = _read(model)
        self.pairs = {
            name: _Pair(l, feedback[l + 1], self.weights)
            for l, name in enumerate(LAYERS)
        }
        self.curve = {"time": [], "loss": []}
        self.record(0)

    def record(self, step):
        """Adds the measures of the weights after `step` to the curve."""
        self.curve["time"].append(self.rate * step)
        for name, pair in self.pairs.items():
            for key, value in pair.measures(self.weights).items():
                self.curve.setdefault(f"{name}/{key}", []).append(value)

    def step(self, new):
        """Adds the change from the last weights to `new` to each pair."""
        for pair in self.pairs.values():
            pair.step(self.weights, new, self.decay_rate)
        self.weights = new

    def summary(self):
        """Returns `(neurons, summary)` of `train_run` after the last step."""
        neurons, summary = {}, {}
        for name, pair in self.pairs.items():
            neurons[name] = pair.neurons(self.weights)
            final = pair.final(self.weights, self.decay_rate)
            if "angle" in final:
                final["angle_start"] = self.curve[f"{name}/angle"][0]
            summary.update({f"{name}/{k}": v for k, v in final.items()})
        summary["drift_abs"] = sum(summary[f"{n}/drift_abs"] for n in LAYERS)
        summary["relative_drift"] = summary["drift_abs"] / sum(
            summary[f"{n}/growth"] for n in LAYERS
        )
        return neurons, summary


# -- the experiments ------------------------------------------------------


def _stats(values):
    mean, std = harness.mean_std(values)
    return {"mean": mean, "std": std}


def _aggregate(summaries):
    # Mean and std over seeds of every scalar of per-seed summaries.
    return {k: _stats([s[k] for s in summaries]) for k in summaries[0]}


def _rank_correlation(a, b):
    # Spearman's rho (no ties expected in these curves).
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _rounded(curve):
    # Five significant digits are plenty for figures and keep the JSON
    # small; the sums of |dQ_i| are in the summaries.
    return {
        k: [float(f"{v:.5g}") if math.isfinite(v) else v for v in values]
        for k, values in curve.items()
        if not k.endswith("/drift_abs")
    }


def run_experiments(config, seeds, data, log=print):
    """Runs the four experiments; returns the results as a JSON-ready dict.

    Args:
        config: `FULL`, `QUICK` or a dict with the same keys.
        seeds: the integer seeds.
        data: `(x, y)` numpy arrays.
        log: a function printing one line of progress.

    Returns:
        A dict with `"law"`, `"learning_rate"`, `"optimizers"`,
        `"alignment"` and `"curves"` (the law runs of the first seed).
    """
    configs = [(rule, bias, None) for rule in RULES for bias in (True, False)]
    configs.append(("fa", True, config["batch_size"]))
    runs = _train_all(config, list(seeds), data, configs, log)
    results = {"law": {}, "learning_rate": {}, "optimizers": {}}
    results["alignment"] = {}
    for rule, bias, batch_size in configs:
        key = _key(rule, bias, batch_size)
        base = [r["summary"] for r in runs[(key, "sgd", 0)]]
        results["law"][key] = {
            "per_seed": base,
            "mean_std": _aggregate(base),
        }
        results["learning_rate"][key] = _halving(
            runs, key, "sgd", config["halvings"]
        )
        if rule != "bp" and batch_size is None:
            results["alignment"][key] = _alignment(runs[(key, "sgd", 0)])
    results["optimizers"] = _optimizers(runs, config)
    results["curves"] = {
        "law": {
            _key(r, b, s): _rounded(runs[(_key(r, b, s), "sgd", 0)][0]["curve"])
            for r, b, s in configs
        }
    }
    return results


def _train_all(config, seeds, data, configs, log):
    # Returns {(key, optimizer, halvings): per-seed runs}: plain SGD for
    # every (rule, bias, batch size) of `configs` at each halving, and the
    # other optimizers for fa with biases.
    runs = {}

    def run(rule, bias, batch_size, kind, halvings):
        start = time.perf_counter()
        out = runs.setdefault(
            (_key(rule, bias, batch_size), kind, halvings), []
        )
        for seed in seeds:
            out.append(
                train_run(
                    rule, bias, seed, data, config, kind, halvings, batch_size
                )
            )
        log(
            f"{_key(rule, bias, batch_size):<22} {kind:<12} "
            f"lr {learning_rate(kind, config, halvings):<9.4g} "
            f"drift/growth {out[0]['summary']['relative_drift']:.2e}  "
            f"({time.perf_counter() - start:.1f} s)"
        )

    for rule, bias, batch_size in configs:
        for h in range(config["halvings"] + 1):
            run(rule, bias, batch_size, "sgd", h)
    for kind in OPTIMIZERS[1:]:
        for h in range(config["optimizer_halvings"] + 1):
            run("fa", True, None, kind, h)
    return runs


def _optimizers(runs, config):
    # fa with biases under each optimizer, against plain SGD; weight
    # decay's first-order part per neuron against its formula.
    key = _key("fa", True)
    sgd = [r["summary"]["relative_drift"] for r in runs[(key, "sgd", 0)]]
    out = {}
    for kind in OPTIMIZERS:
        base = [r["summary"] for r in runs[(key, kind, 0)]]
        out[kind] = {
            "learning_rate": learning_rate(kind, config),
            "per_seed": base,
            "mean_std": _aggregate(base),
            # Drift relative to growth, over plain SGD's, seed by seed.
            "breakage": _stats(
                [s["relative_drift"] / r for s, r in zip(base, sgd)]
            ),
            "halving": _halving(runs, key, kind, config["optimizer_halvings"]),
        }
    decay = runs[(key, "weight_decay", 0)][0]["neurons"]
    out["weight_decay"]["neurons_first_seed"] = {
        name: {
            "first": decay[name]["first"],
            "formula": decay[name]["decay"],
        }
        for name in LAYERS
    }
    return out


def _halving(runs, key, kind, halvings):
    # Drift at lr / 2^k (same time), and its ratio per halving, per seed.
    by_rate = [runs[(key, kind, h)] for h in range(halvings + 1)]
    rates = [r[0]["summary"]["learning_rate"] for r in by_rate]
    out = {"learning_rates": rates}
    for measure in ("drift_abs", "relative_drift", "layer1/drift_max"):
        values = [[r["summary"][measure] for r in runs_h] for runs_h in by_rate]
        ratios = [
            [a / b for a, b in zip(values[h], values[h + 1])]
            for h in range(halvings)
        ]
        out[measure] = {
            "per_rate": [_stats(v) for v in values],
            "ratio_per_halving": [_stats(r) for r in ratios],
            "per_seed": values,
        }
    return out


def _alignment(runs):
    # The angle of W_{l+1} with B_{l+1} against the growth of |W_l|^2.
    out = {}
    for name in LAYERS:
        rows = []
        for run in runs:
            curve = run["curve"]
            angles = curve[f"{name}/angle"]
            law = curve[f"{name}/angle_law"]
            rows.append(
                {
                    "growth": curve[f"{name}/growth"][-1],
                    "angle_start": angles[0],
                    "angle_end": angles[-1],
                    "angle_min": min(angles),
                    "law_error_max": max(
                        abs(a - b) for a, b in zip(angles, law)
                    ),
                    "rank_correlation": _rank_correlation(
                        curve[f"{name}/growth"], angles
                    ),
                }
            )
        out[name] = {"per_seed": rows, "mean_std": _aggregate(rows)}
    return out


# -- figures --------------------------------------------------------------

_COLORS = {"bias": "C0", "no_bias": "C1", "minibatch": "C2"}
_OPTIMIZER_COLORS = {
    "sgd": "C0",
    "momentum": "C1",
    "adam": "C3",
    "weight_decay": "C4",
}


def _label(key):
    parts = key.split("/")
    label = "with bias" if parts[1] == "bias" else "no bias"
    return label + (", minibatch" if len(parts) > 2 else "")


def _write(fig, path):
    # 80 dpi keeps the four figures near 250 KB together.
    fig.set_dpi(80)
    return harness.write_png(fig, path)


def plot_law(results, path):
    """Q(t) - Q(0) and 2 (sum phi(t) - sum phi(0)) per layer against the
    growth of |W_l|^2 + |b_l|^2, per rule (the first seed)."""
    fig = harness.figure(12, 7)
    axes = fig.subplots(2, len(RULES), squeeze=False)
    for col, rule in enumerate(RULES):
        for row, name in enumerate(LAYERS):
            ax = axes[row][col]
            ratios = []
            for key, curve in results["curves"]["law"].items():
                if not key.startswith(rule + "/"):
                    continue
                kind = key.split("/")[-1]
                color = _COLORS[kind]
                growth = np.array(curve[f"{name}/growth"])
                drift = np.array(curve[f"{name}/q_drift"])
                ax.plot(growth, growth - drift, "--", color=color, lw=1.2)
                ax.plot(
                    growth, drift, "-", color=color, lw=2, label=_label(key)
                )
                stats = results["law"][key]["mean_std"]
                ratio = stats[f"{name}/relative_drift"]["mean"]
                ratios.append(f"{_label(key)}: {100 * ratio:.2g}%")
            top = ax.get_xlim()[1]
            ax.plot([0, top], [0, top], ":", color="grey", lw=1)
            ax.set_title(f"{rule}, {name}", fontsize=10)
            ax.text(
                0.97,
                0.35,
                "sum |dQ_i| / growth\n" + "\n".join(ratios),
                transform=ax.transAxes,
                ha="right",
                fontsize=8,
            )
            ax.set_xlabel(f"growth of |W{row + 1}|^2 + |b{row + 1}|^2")
            if col == 0:
                ax.set_ylabel("change since t = 0")
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "Plain SGD: Q(t) - Q(0) per layer (solid) stays at 0 while the "
        "growth of 2 sum phi(W_{l+1}) (dashed) follows that of |W_l|^2 "
        "(dotted: y = x)",
        fontsize=10,
    )
    # Fixed margins: tight_layout costs more than a quick run's training.
    fig.subplots_adjust(0.07, 0.08, 0.98, 0.88, wspace=0.25, hspace=0.4)
    return _write(fig, path)


def plot_learning_rate(results, path):
    """Drift against the learning rate over the same training time
    (log-log), for plain SGD and the other optimizers."""
    fig = harness.figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    for key, entry in results["learning_rate"].items():
        rates = np.array(entry["learning_rates"])
        stats = entry["drift_abs"]["per_rate"]
        left.errorbar(
            rates,
            [s["mean"] for s in stats],
            yerr=[s["std"] for s in stats],
            marker="o",
            capsize=3,
            label=key.replace("/", ", "),
        )
    rates = np.array(results["learning_rate"]["fa/bias"]["learning_rates"])
    reference = results["learning_rate"]["fa/bias"]["drift_abs"]["per_rate"][0]
    left.plot(
        rates, 0.5 * reference["mean"] * rates / rates[0], "k:", label="∝ lr"
    )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="learning rate (steps x lr fixed)",
        ylabel="sum_i |Q_i(T) - Q_i(0)| (both layers)",
        title="plain SGD: the drift is O(lr)",
    )
    left.set_xticks(rates, [f"{r:g}" for r in rates])
    left.legend(fontsize=7)
    for kind, entry in results["optimizers"].items():
        halving = entry["halving"]
        rates = np.array(halving["learning_rates"])
        stats = halving["relative_drift"]["per_rate"]
        right.errorbar(
            rates / rates[0],
            [s["mean"] for s in stats],
            yerr=[s["std"] for s in stats],
            marker="o",
            capsize=3,
            color=_OPTIMIZER_COLORS[kind],
            label=kind.replace("_", " "),
        )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="learning rate / base rate (steps x lr fixed)",
        ylabel="sum_i |dQ_i| / growth of |W|^2",
        title="fa: only plain SGD and momentum shrink with lr",
    )
    relative = rates / rates[0]
    right.set_xticks(relative, [f"{r:g}" for r in relative])
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.minorticks_off()  # log axes' minor ticks: half the drawing time
    fig.subplots_adjust(0.08, 0.12, 0.98, 0.9, wspace=0.25)
    return _write(fig, path)


def plot_optimizers(results, path):
    """The drift of each optimizer relative to the weight growth, split in
    its parts, and weight decay's first-order part against its formula."""
    fig = harness.figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    _drift_bars(left, results["optimizers"])
    neurons = results["optimizers"]["weight_decay"]["neurons_first_seed"]
    low, high = math.inf, -math.inf
    for name in LAYERS:
        formula = np.asarray(neurons[name]["formula"])
        measured = np.asarray(neurons[name]["first"])
        right.scatter(formula, measured, s=10, label=name)
        low = min(low, formula.min(), measured.min())
        high = max(high, formula.max(), measured.max())
    right.plot([low, high], [low, high], "k:", lw=1)
    right.set(
        xlabel="-2 lr wd sum_t (|w_in|^2 - <w_out, b_out>)",
        ylabel="measured first-order part of Q_i(T) - Q_i(0)",
        title="weight decay moves each Q_i as derived",
    )
    right.legend(fontsize=8)
    fig.subplots_adjust(0.08, 0.12, 0.98, 0.9, wspace=0.25)
    return _write(fig, path)


def _drift_bars(axes, optimizers):
    # Per optimizer, bars of the drift relative to growth and of its two
    # parts, annotated with the factor over plain SGD's.
    kinds = list(optimizers)
    width = 0.27
    parts = (
        ("relative_drift", "total", 0.0),
        ("first_order", "first-order part", 1.0),
        ("second_order", "second-order part", 2.0),
    )
    for measure, label, offset in parts:
        means, stds = [], []
        for kind in kinds:
            runs = optimizers[kind]["per_seed"]
            if measure == "relative_drift":
                values = [r["relative_drift"] for r in runs]
            else:
                values = [
                    sum(r[f"{n}/{measure}"] for n in LAYERS)
                    / sum(r[f"{n}/growth"] for n in LAYERS)
                    for r in runs
                ]
            mean, std = harness.mean_std(values)
            means.append(mean)
            stds.append(std)
        axes.bar(
            np.arange(len(kinds)) + (offset - 1) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=label,
        )
    for i, kind in enumerate(kinds):
        axes.annotate(
            f"x{optimizers[kind]['breakage']['mean']:.3g}",
            (i, optimizers[kind]["mean_std"]["relative_drift"]["mean"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    axes.set_xticks(np.arange(len(kinds)), [k.replace("_", " ") for k in kinds])
    axes.set(
        yscale="log",
        ylabel="sum_i |dQ_i| / growth of |W|^2",
        title="fa, same training time: drift relative to growth (x SGD's)",
    )
    axes.legend(fontsize=8)


def plot_alignment(results, path):
    """The angle between W_{l+1} and B_{l+1} against the growth of
    |W_l|^2, measured (solid) and predicted by the law from Q(0)
    (dashed)."""
    fig = harness.figure(11, 4.5)
    axes = fig.subplots(1, len(LAYERS), squeeze=False)[0]
    for ax, name in zip(axes, LAYERS):
        i = LAYERS.index(name) + 1
        for n, (key, curve) in enumerate(results["curves"]["law"].items()):
            if key.startswith("bp/") or key.endswith("minibatch"):
                continue
            color = f"C{n}"
            growth = curve[f"{name}/growth"]
            ax.plot(
                growth,
                curve[f"{name}/angle"],
                "-",
                color=color,
                lw=2,
                label=key.replace("/", ", "),
            )
            ax.plot(growth, curve[f"{name}/angle_law"], "--", color="k", lw=0.8)
        ax.set(
            xlabel=f"growth of |W{i}|^2 + |b{i}|^2",
            ylabel=f"angle(W{i + 1}, B{i + 1}) (degrees)",
            title=f"{name}: measured (solid), from the law and Q(0) (dashed)",
        )
        ax.legend(fontsize=8)
    fig.subplots_adjust(0.08, 0.12, 0.98, 0.9, wspace=0.25)
    return _write(fig, path)


# -- the command ----------------------------------------------------------


#: The measures of the law table, per layer.
LAW_COLUMNS = (
    "growth",
    "drift_abs",
    "drift_max",
    "relative_drift",
    "first_order",
)
#: The measures of the alignment table, per layer, and their formats.
ALIGNMENT_COLUMNS = {
    "growth": ".3g",
    "angle_start": ".1f",
    "angle_end": ".1f",
    "rank_correlation": ".2f",
    "law_error_max": ".2g",
}


def _table(results):
    # The headline numbers as Markdown, mean ± std over seeds.
    def pm(stats, fmt=".3g"):
        return f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}"

    lines = [
        "| rule | layer | growth of \\|W\\|^2 | sum \\|dQ_i\\| "
        "| max \\|dQ_i\\| | drift / growth | first-order part |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results["law"].items():
        stats = entry["mean_std"]
        for name in LAYERS:
            cells = [pm(stats[f"{name}/{m}"]) for m in LAW_COLUMNS]
            lines.append(harness.table_row(key, name, *cells))
    lines += ["", "| rule | drift ratio per halving of lr |", "|---|---|"]
    for key, entry in results["learning_rate"].items():
        ratios = entry["drift_abs"]["ratio_per_halving"]
        lines.append(f"| {key} | {', '.join(pm(r) for r in ratios)} |")
    lines += [
        "",
        "| fa, optimizer | lr | drift / growth | x plain SGD "
        "| ratio per halving of lr |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, entry in results["optimizers"].items():
        ratios = entry["halving"]["relative_drift"]["ratio_per_halving"]
        lines.append(
            f"| {kind} | {entry['learning_rate']:.3g} | "
            f"{pm(entry['mean_std']['relative_drift'])} | "
            f"{pm(entry['breakage'])} | {', '.join(pm(r) for r in ratios)} |"
        )
    lines += [
        "",
        "| rule | layer | growth | angle at start | angle at end "
        "| rank corr. (growth, angle) | max \\|angle - law\\| |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, entry in results["alignment"].items():
        for name in LAYERS:
            stats = entry[name]["mean_std"]
            cells = [pm(stats[m], f) for m, f in ALIGNMENT_COLUMNS.items()]
            lines.append(harness.table_row(key, name, *cells))
    return "\n".join(lines)


def main(argv=None):
    """Runs the experiments, writes the JSON and the figures, prints the
    tables; returns the results dict."""
    parser = harness.paper_parser(
        NAME,
        "Measure Robertson & Koyejo's conservation law on ReLU MLPs trained "
        "with fa, usf and bp: its drift under plain SGD, against the "
        "learning rate, under momentum, Adam and weight decay, and the "
        "alignment it implies.",
    )
    args = harness.parse_paper_args(parser, argv, NAME)
    config = QUICK if args.quick else FULL
    (x, y), _ = keras_fa.datasets.load_digits()
    data = x[: config["examples"]], y[: config["examples"]]
    start = time.perf_counter()
    results = run_experiments(config, range(args.seeds), data)
    results.update(
        {
            "config": config,
            "seeds": args.seeds,
            "quick": args.quick,
            "data": f"digits, first {len(data[0])} training examples",
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "python": platform.python_version(),
            "wall_time_s": time.perf_counter() - start,
        }
    )
    harness.write_json(os.path.join(args.output, f"{NAME}.json"), results)
    for name, plot in (
        ("law", plot_law),
        ("learning_rate", plot_learning_rate),
        ("optimizers", plot_optimizers),
        ("alignment", plot_alignment),
    ):
        plot(results, os.path.join(args.output, f"{name}.png"))
    print(_table(results))
    print(
        f"\nwrote {args.output} ({results['wall_time_s']:.0f} s, "
        f"{keras.backend.backend()})"
    )
    return results


if __name__ == "__main__":
    # The models are small: one thread per op costs little, and on a busy
    # machine it keeps torch from running 10x slower (benchmarks/harness.py).
    harness.limit_threads(1)
    sys.exit(main() and 0)
