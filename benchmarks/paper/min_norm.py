"""Minimum-norm solutions: two-layer linear networks trained by fa and bp.

    python -m benchmarks.paper.min_norm              # full run, 3 seeds
    python -m benchmarks.paper.min_norm --quick      # seconds (the tests)
    python -m benchmarks.paper.min_norm --rules bp,fa --scales 1,0.01

The 2023 version of Robertson & Koyejo states that over-parameterized
two-layer linear networks trained with feedback alignment from a small
initialisation converge to minimum-norm solutions. Here `x -> x W1 W2` (two
bias-free `keras_fa.FADense` layers, no activation, `W1` of `features x
hidden`, `hidden` much larger than needed) is trained by full-batch gradient
descent (plain SGD, loss `|x W1 W2 - y|^2 / 2` per example, averaged) on an
under-determined regression problem: `samples < features` Gaussian inputs,
targets from a random linear teacher, no noise. Training stops when the
relative training loss `|X M - Y|^2 / |Y|^2` (M = W1 W2) falls below
`--tolerance`. The end-to-end map M is compared with the minimum-norm
least-squares solution `M+ = pinv(X) Y` and with the map bp reaches from the
same start, as the initial scale shrinks: both kernels start at `scale`
times their Glorot-uniform draw (the same draw at every scale); the feedback
state (fa's B2, frsf's magnitudes, kp's B, brsf's random state) keeps its
default draw. Besides bp and fa, the full run trains the other layer-wise
rules (usf, frsf, brsf, kp): the argument below holds for them too.

Why it holds, for every rule that keeps the local kernel gradient (every
layer-wise rule of keras_fa): the update of W1 is `X^T (...)`, so W1's
component outside the row space of X never changes: `P_perp W1(t) =
P_perp W1(0)`, P_perp the projector onto the null space of X. So
`P_perp M(t) = P_perp W1(0) W2(t)`, which is proportional to the initial
scale, while the row-space part of an interpolating M equals `M+`. The
distance `|M - M+| / |M+|` therefore splits into a null-space part
(`null_part`, from the initialisation) and a row-space part (`row_part`,
from the remaining training loss), and goes to 0 with the scale when
training converges. The JSON records both parts, the theory's null-space
part `|P_perp W1(0) W2(T)| / |M+|`, and how much W1's null-space component
moved (float32 rounding only).

`--quick` trains bp and fa on 20 features, 5 samples, 80 hidden units and 2
outputs from scales 1, 0.1 and 0.01, to a relative loss of 1e-8.

Writes `results.json`, `summary.md`, `distance.png` (distance vs scale,
log-log) and `training.png` (relative loss vs step) under `--output`
(default `benchmarks/results/paper/min_norm/`; with `--quick`,
`runs/paper/min_norm-quick/`).
"""

import math
import os
import time

import keras
import numpy as np

import keras_fa
from benchmarks import harness

NAME = "min_norm"
# Rules whose first-layer update is X^T (...): every layer-wise rule.
RULES = ("bp", "fa", "usf", "frsf", "brsf", "kp")
FULL = {
    "rules": RULES,
    "scales": (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001),
    "features": 100,
    "samples": 40,
    "hidden": 400,
    "outputs": 5,
    "learning_rate": 0.5,
    "tolerance": 1e-10,
    "max_steps": 20000,
}
QUICK = {
    "rules": ("bp", "fa"),
    "scales": (1.0, 0.1, 0.01),
    "features": 20,
    "samples": 5,
    "hidden": 80,
    "outputs": 2,
    "learning_rate": 0.5,
    "tolerance": 1e-8,
    "max_steps": 3000,
}
SETTINGS = tuple(FULL)
QUICK_OUTPUT = harness.quick_output(NAME)
# Steps between two checks of the training loss (one Keras epoch).
CHUNK = 25


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace with every
    setting filled in (from `--quick`'s or the full run's defaults where
    not given)."""
    parser = harness.paper_parser(NAME, __doc__.split("\n")[0])
    parser.add_argument(
        "--rules",
        type=harness.comma_list(allowed=RULES, name="rule"),
        help=f"comma-separated (default all: {','.join(RULES)}; quick: "
        f"{','.join(QUICK['rules'])})",
    )
    parser.add_argument(
        "--scales",
        type=harness.comma_list(harness.positive_float, name="scale"),
        help="initial scales, comma-separated (default "
        f"{','.join(map(str, FULL['scales']))}; quick: "
        f"{','.join(map(str, QUICK['scales']))})",
    )
    for name, kind in (
        ("features", harness.positive_int),
        ("samples", harness.positive_int),
        ("hidden", harness.positive_int),
        ("outputs", harness.positive_int),
        ("learning_rate", harness.positive_float),
        ("tolerance", harness.positive_float),
        ("max_steps", harness.positive_int),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            help=f"default {FULL[name]} (quick: {QUICK[name]})",
        )
    args = harness.parse_paper_args(parser, argv, NAME)
    harness.fill_defaults(args, QUICK if args.quick else FULL)
    if args.samples >= args.features:
        parser.error(
            "the problem must be under-determined: --samples "
            f"({args.samples}) must be smaller than --features "
            f"({args.features})"
        )
    if args.hidden < args.outputs:
        parser.error(
            f"--hidden ({args.hidden}) must be at least --outputs "
            f"({args.outputs})"
        )
    return args


def make_problem(seed, samples, features, outputs):
    """Returns `(x, y)`: an under-determined regression problem as float32
    arrays. Inputs are Gaussian with rows of norm about 1, targets come
    from a Gaussian linear teacher, without noise."""
    rng = np.random.default_rng([seed, 7])
    x = rng.standard_normal((samples, features)) / np.sqrt(features)
    teacher = rng.standard_normal((features, outputs))
    return x.astype("float32"), (x @ teacher).astype("float32")


def min_norm_solution(x, y):
    """Returns `pinv(x) y` in float64: the least-squares solution of
    minimum Frobenius norm."""
    return np.linalg.pinv(x.astype("float64")) @ y.astype("float64")


def null_projector(x):
    """Returns the float64 projector onto the null space of `x` (the
    complement of its row space)."""
    x = x.astype("float64")
    return np.eye(x.shape[1]) - np.linalg.pinv(x) @ x


def relative_loss(x, y, kernels):
    """Returns `|x W1 W2 - y|^2 / |y|^2`, in float64."""
    y = y.astype("float64")
    residual = x.astype("float64") @ _product(kernels) - y
    return float(np.sum(residual**2) / np.sum(y**2))


def _product(kernels):
    result = kernels[0].astype("float64")
    for kernel in kernels[1:]:
        result = result @ kernel.astype("float64")
    return result


def _half_squared_error(y_true, y_pred):
    return 0.5 * keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)


def build(rule, features, hidden, outputs, seed):
    """Returns the (uncompiled) linear network `x -> x W1 W2` of two
    bias-free `FADense` layers trained by `rule`, kernels drawn
    Glorot-uniform from `seed` (scale 1)."""
    layers = [keras.Input((features,))]
    for index, units in enumerate((hidden, outputs)):
        layer_seed = seed * 100 + index + 1
        layers.append(
            keras_fa.FADense(
                units,
                use_bias=False,
                feedback=rule,
                seed=layer_seed,
                kernel_initializer=keras.initializers.GlorotUniform(layer_seed),
                name=f"w{index + 1}",
            )
        )
    return keras.Sequential(layers, name=f"linear_{rule}")


def _kernels(model):
    return [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]


class _LossMonitor(keras.callbacks.Callback):
    """Records the relative training loss after every epoch (CHUNK steps),
    after the starting loss the caller puts first, and stops training below
    the tolerance or on a non-finite loss."""

    def __init__(self, x, y, tolerance):
        super().__init__()
        self.x, self.y, self.tolerance = x, y, tolerance
        self.losses = []

    def on_epoch_end(self, epoch, logs=None):
        loss = relative_loss(self.x, self.y, _kernels(self.model))
        self.losses.append(loss)
        if not loss >= self.tolerance:  # below it, or NaN
            self.model.stop_training = True


class _Runner:
    """Trains one rule's network, compiled once, from each seed's start
    and each initial scale: a run restores the seed's starting variables
    (kernels times the scale, feedback state as drawn)."""

    def __init__(self, rule, args):
        self.rule, self.args = rule, args
        self.model = build(rule, args.features, args.hidden, args.outputs, 0)
        self.model.compile(
            optimizer=keras.optimizers.SGD(args.learning_rate),
            loss=_half_squared_error,
        )
        kernels = {id(layer.kernel) for layer in self.model.layers}
        self.is_kernel = [id(v) in kernels for v in self.model.variables]

    def set_problem(self, x, y, seed):
        """Sets the data and the starting variables (those of a network
        built from `seed`) of the next runs."""
        self.x, self.y = x, y
        fresh = build(
            self.rule,
            self.args.features,
            self.args.hidden,
            self.args.outputs,
            seed,
        )
        self.start = [keras.ops.convert_to_numpy(v) for v in fresh.variables]
        # One epoch is CHUNK full-batch steps over copies of the data.
        self.x_epoch = np.tile(x, (CHUNK, 1))
        self.y_epoch = np.tile(y, (CHUNK, 1))

    def run(self, scale):
        """Trains from `scale`; returns `(kernels at start, kernels at end,
        relative losses at the start and after each epoch)`."""
        for variable, value, kernel in zip(
            self.model.variables, self.start, self.is_kernel
        ):
            variable.assign(value * np.float32(scale) if kernel else value)
        initial = _kernels(self.model)
        monitor = _LossMonitor(self.x, self.y, self.args.tolerance)
        monitor.losses.append(relative_loss(self.x, self.y, initial))
        self.model.fit(
            self.x_epoch,
            self.y_epoch,
            batch_size=len(self.x),
            epochs=max(1, math.ceil(self.args.max_steps / CHUNK)),
            shuffle=False,
            verbose=0,
            callbacks=[monitor],
        )
        return initial, _kernels(self.model), monitor.losses


def _backward_kernel(layer):
    # The matrix the rule uses in place of W2 now; None for bp (W2 itself)
    # and brsf (redrawn every step).
    if layer.feedback.name in ("bp", "brsf"):
        return None
    rule = layer.feedback
    backward = rule.backward_kernel(
        layer.kernel.value, *rule.feedback_inputs(layer)
    )
    return keras.ops.convert_to_numpy(backward)


def _angle(a, b):
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def measure(x, y, initial, final):
    """Returns the distances of the trained map to the minimum-norm
    solution and the checks of the theory, as a dict."""
    target = min_norm_solution(x, y)
    norm = np.linalg.norm(target)
    null = null_projector(x)
    w1_start, w2_start = (k.astype("float64") for k in initial)
    w1, w2 = (k.astype("float64") for k in final)
    end_to_end = w1 @ w2
    moved = w1 - w1_start
    row = end_to_end - null @ end_to_end
    return {
        "distance": np.linalg.norm(end_to_end - target) / norm,
        "null_part": np.linalg.norm(null @ end_to_end) / norm,
        "null_part_theory": np.linalg.norm(null @ w1_start @ w2) / norm,
        "row_part": np.linalg.norm(row - target) / norm,
        # W1's move outside the row space, relative to its whole move.
        "w1_null_drift": np.linalg.norm(null @ moved) / np.linalg.norm(moved),
        "w1_null_start": np.linalg.norm(null @ w1_start),
        "w1_norm": np.linalg.norm(w1),
        "w2_norm": np.linalg.norm(w2),
        "map_norm_ratio": np.linalg.norm(end_to_end) / norm,
        "w2_start_norm": np.linalg.norm(w2_start),
    }


def run(args, say=print):
    """Runs every (seed, rule, scale); returns the results dict."""
    runs = []
    started = time.perf_counter()
    runners = {rule: _Runner(rule, args) for rule in args.rules}
    for seed in range(args.seeds):
        x, y = make_problem(seed, args.samples, args.features, args.outputs)
        maps = {}
        for rule in args.rules:
            runner = runners[rule]
            runner.set_problem(x, y, seed)
            for scale in args.scales:
                record, maps[rule, scale] = _train(runner, seed, scale)
                runs.append(record)
                say(
                    f"seed {seed} {rule:>4} scale {scale:<6g} "
                    f"steps {record['steps']:>5} loss {record['loss']:.1e} "
                    f"distance {record['distance']:.2e}"
                )
        norm = np.linalg.norm(min_norm_solution(x, y))
        for record in runs:
            key = ("bp", record["scale"])
            if (
                record["seed"] == seed
                and record["rule"] != "bp"
                and key in maps
            ):
                own = maps[record["rule"], record["scale"]]
                difference = np.linalg.norm(own - maps[key]) / norm
                record["distance_to_bp"] = float(difference)
    return {
        "experiment": NAME,
        "config": {
            "seeds": args.seeds,
            "quick": args.quick,
            "chunk": CHUNK,
            **{name: getattr(args, name) for name in SETTINGS},
        },
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "runs": runs,
        "summary": summarize(runs, args.rules, args.scales),
        "slopes": slopes(runs, args.rules),
        "seconds": time.perf_counter() - started,
    }


def _train(runner, seed, scale):
    # Trains `runner`'s network of the seed's problem from `scale`;
    # returns its record and its end-to-end map.
    t0 = time.perf_counter()
    initial, final, losses = runner.run(scale)
    x, y, tolerance = runner.x, runner.y, runner.args.tolerance
    record = {
        "rule": runner.rule,
        "scale": scale,
        "seed": seed,
        "steps": (len(losses) - 1) * CHUNK,
        "loss": losses[-1],
        "converged": bool(losses[-1] < tolerance),
        # 4 significant digits keep the JSON small.
        "loss_curve": [float(f"{v:.4g}") for v in losses],
        **measure(x, y, initial, final),
    }
    backward = _backward_kernel(runner.model.layers[1])
    if backward is not None:
        record["w2_b2_angle"] = _angle(final[1], backward)
    end_to_end = _product(final)
    record["seconds"] = time.perf_counter() - t0
    return record, end_to_end


SUMMARY_KEYS = (
    "distance",
    "null_part",
    "row_part",
    "distance_to_bp",
    "loss",
    "steps",
    "w1_null_drift",
    "w2_b2_angle",
)


def summarize(runs, rules, scales):
    """Returns one row per (rule, scale): mean and std over seeds of the
    measures, and whether every seed converged."""
    rows = []
    for rule in rules:
        for scale in scales:
            cell = [
                r for r in runs if r["rule"] == rule and r["scale"] == scale
            ]
            row = {"rule": rule, "scale": scale, "seeds": len(cell)}
            for key in SUMMARY_KEYS:
                values = [r[key] for r in cell if key in r]
                if values:
                    row[key] = list(harness.mean_std(values))
            row["converged"] = all(r["converged"] for r in cell)
            rows.append(row)
    return rows


def slopes(runs, rules):
    """Returns, per rule, the least-squares slope of log(distance) against
    log(scale) for each seed and their mean and std (1: proportional)."""
    result = {}
    for rule in rules:
        per_seed = []
        for seed in sorted({r["seed"] for r in runs}):
            cell = [r for r in runs if r["rule"] == rule and r["seed"] == seed]
            if len(cell) < 2:
                continue
            log_scale = np.log([r["scale"] for r in cell])
            log_distance = np.log([r["distance"] for r in cell])
            per_seed.append(float(np.polyfit(log_scale, log_distance, 1)[0]))
        result[rule] = {
            "per_seed": per_seed,
            "mean_std": list(harness.mean_std(per_seed)),
        }
    return result


def _pm(pair, spec=".2e"):
    mean, std = pair
    return f"{mean:{spec}} ± {std:{spec}}"


def summary_markdown(results):
    """Returns the summary as a Markdown table."""
    config = results["config"]
    lines = [
        f"Two-layer linear network, {config['features']} features, "
        f"{config['samples']} samples, {config['hidden']} hidden units, "
        f"{config['outputs']} outputs; full-batch SGD, learning rate "
        f"{config['learning_rate']}, until relative loss < "
        f"{config['tolerance']:g}; {config['seeds']} seeds; "
        f"backend {results['backend']}. Distances are relative to |M+|.",
        "",
        "| rule | scale | distance to pinv | null-space part | row-space part "
        "| distance to bp | angle(W2, B2) (deg) | relative loss | steps "
        "| all converged |",
        "|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        to_bp = _pm(row["distance_to_bp"]) if "distance_to_bp" in row else "-"
        angle = _pm(row["w2_b2_angle"], ".1f") if "w2_b2_angle" in row else "-"
        lines.append(
            f"| {row['rule']} | {row['scale']:g} | {_pm(row['distance'])} | "
            f"{_pm(row['null_part'])} | {_pm(row['row_part'])} | {to_bp} | "
            f"{angle} | "
            f"{_pm(row['loss'], '.1e')} | {_pm(row['steps'], '.0f')} | "
            f"{'yes' if row['converged'] else 'no'} |"
        )
    lines.append("")
    lines.append("Slope of log(distance) against log(scale), per seed:")
    lines.append("")
    for rule, slope in results["slopes"].items():
        mean, std = slope["mean_std"]
        lines.append(f"- {rule}: {mean:.3f} ± {std:.3f}")
    return "\n".join(lines) + "\n"


def plot(results, output):
    """Writes `distance.png` and `training.png`; returns their paths."""
    return [
        harness.write_png(
            _distance_figure(results), os.path.join(output, "distance.png")
        ),
        harness.write_png(
            _training_figure(results), os.path.join(output, "training.png")
        ),
    ]


def _distance_figure(results):
    # The distance to pinv(X) Y against the scale, log-log, a line per rule
    # (and fa's distance to bp's map).
    rows = results["summary"]
    rules = results["config"]["rules"]
    fig = harness.figure(6.4, 4.4)
    ax = fig.add_subplot()
    for rule in rules:
        cell = [r for r in rows if r["rule"] == rule]
        scales = [r["scale"] for r in cell]
        mean = np.array([r["distance"][0] for r in cell])
        std = np.array([r["distance"][1] for r in cell])
        ax.errorbar(scales, mean, yerr=std, marker="o", capsize=3, label=rule)
        if rule == "fa" and "distance_to_bp" in cell[0]:
            ax.plot(
                scales,
                [r["distance_to_bp"][0] for r in cell],
                linestyle="--",
                marker="x",
                label=f"{rule} to bp's map",
            )
    scales = np.array(sorted({r["scale"] for r in rows}))
    first = [r for r in rows if r["rule"] == rules[0]]
    reference = max(r["distance"][0] for r in first) / scales.max()
    ax.plot(
        scales,
        reference * scales,
        color="gray",
        linewidth=0.8,
        linestyle=":",
        label="∝ scale",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial scale (times Glorot uniform)")
    ax.set_ylabel("|W1 W2 - pinv(X) Y| / |pinv(X) Y|")
    ax.set_title("Two-layer linear net: distance to the minimum-norm solution")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _training_figure(results):
    # The relative training loss of seed 0 against the step, a panel per
    # rule and a line per scale.
    rules = results["config"]["rules"]
    chunk = results["config"]["chunk"]
    columns = min(3, len(rules))
    lines = math.ceil(len(rules) / columns)
    fig = harness.figure(3.6 * columns, 3.0 * lines + 0.4)
    axes = fig.subplots(lines, columns, squeeze=False, sharey=True)
    scales = results["config"]["scales"]
    for index, rule in enumerate(rules):
        ax = axes[index // columns][index % columns]
        for run_ in results["runs"]:
            if run_["seed"] != 0 or run_["rule"] != rule:
                continue
            steps = chunk * np.arange(len(run_["loss_curve"]))
            ax.plot(
                steps,
                run_["loss_curve"],
                color=f"C{scales.index(run_['scale'])}",
                label=f"scale {run_['scale']:g}",
            )
        ax.set_yscale("log")
        ax.set_title(rule)
        ax.set_xlabel("full-batch step")
        ax.grid(True, alpha=0.3)
        if index % columns == 0:
            ax.set_ylabel("|X W1 W2 - Y|^2 / |Y|^2")
    for index in range(len(rules), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Relative training loss (seed 0)")
    fig.tight_layout()
    return fig


def main(argv=None):
    """Runs the experiment and writes its results; returns them."""
    args = parse_args(argv)
    return harness.write_results(args.output, run(args), summary_markdown, plot)


if __name__ == "__main__":
    main()
