"""Time `keras_fa.FAClassifier.fit` against scikit-learn's `MLPClassifier`.

Both estimators get the same settings on scikit-learn's digits (offline:
`load_digits`, X / 16, a fixed stratified train/test split): the same
`hidden_layer_sizes`, `max_iter`, Adam, `batch_size="auto"` and
`random_state`, with `tol=0` and `n_iter_no_change=max_iter`, so that both
run exactly `max_iter` epochs (the script checks `n_iter_` on both sides).
For each feedback rule it times `FAClassifier(feedback=rule)` with the
default `alignment_every=10` and with `alignment_every=0` (no alignment
measurements), next to `MLPClassifier`, all in one process on the active
Keras backend (KERAS_BACKEND), the variants interleaved: every repeat runs
every variant once, in a rotated order, so drift in machine load hits all
variants alike.

Every timed call is what a user sees: `fit` on a fresh estimator, from the
call to its return (validation, building the Keras model, compiling the
epoch function, the epochs, the alignment measurements). On tensorflow each
new `FAClassifier` traces its own functions, so every fit includes that; on
jax, networks of one structure share their compiled functions, so only the
first fit of a structure compiles (what a grid search or cross-validation
sees); torch compiles nothing. The first fit of each variant in the process
is a warm-up, reported on its own (`first fit`) and not in the medians: it
also pays the one-time costs of the process (loading and initialising the
backend's compiler, kernels and caches); the variant that runs first
(MLPClassifier, then the first rule with alignment) pays most of them.

It prints a Markdown table and writes it, through a temporary file and
`os.replace`, to `--output` (by default
`benchmarks/results/estimator_time_<backend>.md`):

    KERAS_BACKEND=jax python -m benchmarks.estimator_time
    KERAS_BACKEND=tensorflow python -m benchmarks.estimator_time
    KERAS_BACKEND=torch python -m benchmarks.estimator_time
    KERAS_BACKEND=jax python -m benchmarks.estimator_time --rules fa,kp \\
        --repeats 5 --max-iter 50 --hidden-layer-sizes 256,256 --output ''

Columns: the median wall-clock seconds of a fit and of its CPU time (the
process's, all threads), their ratios to MLPClassifier's medians measured
in the same run, the smallest wall-clock time, the same for
`alignment_every=0`, what the alignment measurements add (CPU time of the
default over `alignment_every=0`), and the test accuracy of each.

As in `benchmarks/step_time.py`: on a machine whose cores are busy with
other work, wall-clock time swings from repeat to repeat, while the CPU
time with one thread (`--threads 1`, the default here) hardly depends on
other work; judge the ratios by the CPU ratio. `--threads` limits the Keras
backend and, through threadpoolctl, the BLAS that MLPClassifier uses alike.
"""

import os
import statistics
import sys
import warnings

import keras
import numpy as np
import sklearn
import threadpoolctl
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

# Run from a checkout without installing: the package is next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fa  # noqa: E402
from benchmarks import harness  # noqa: E402

RULES = tuple(keras_fa.models.rules())
DEFAULT_RULES = ("bp", "fa", "usf", "kp", "dfa")
DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    "estimator_time_{backend}.md",
)
MLP = "MLPClassifier"
# FAClassifier's default alignment_every.
ALIGNMENT_EVERY = 10


def load_data(test_size, seed):
    """Returns digits (X / 16) split into `(X_train, X_test, y_train,
    y_test)`, stratified, the same split for a seed."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(
        X / 16.0, y, test_size=test_size, random_state=seed, stratify=y
    )


class Variant(harness.Timings):
    """One estimator configuration and the timings of its fits."""

    def __init__(self, name, make, alignment_every=None, rule=None):
        super().__init__(name)
        self.rule = rule
        self.alignment_every = alignment_every
        self.make = make
        self.first = None
        self.short_cpu = []
        self.accuracy = []
        self.n_iter = set()

    def fit(self, data, **params):
        """Fits a fresh estimator (`params` override its parameters);
        returns its wall-clock and CPU seconds."""
        X_train, X_test, y_train, y_test = data
        estimator = self.make()
        estimator.set_params(**params)
        start = harness.clock()
        estimator.fit(X_train, y_train)
        seconds = harness.since(start)
        if not params:
            self.n_iter.add(estimator.n_iter_)
            self.accuracy.append(estimator.score(X_test, y_test))
        return seconds

    def warm_up(self, data):
        """The variant's first fit in the process, kept apart."""
        self.first = self.fit(data)

    def timed(self, data):
        """One timed repeat: a full fit, then a one-epoch fit."""
        self.add(self.fit(data))
        self.short_cpu.append(self.fit(data, max_iter=1)[1])


def make_variants(args):
    """Returns MLPClassifier's variant, then two per rule (alignment on and
    off)."""
    common = {
        "hidden_layer_sizes": args.hidden_layer_sizes,
        "max_iter": args.max_iter,
        "solver": "adam",
        "batch_size": "auto",
        "random_state": args.random_state,
        # No early stop: both sides run exactly max_iter epochs (the
        # no-improvement count can never exceed max_iter).
        "tol": 0.0,
        "n_iter_no_change": args.max_iter,
    }
    variants = [Variant(MLP, lambda: MLPClassifier(**common))]
    for rule in args.rules:
        for every in (ALIGNMENT_EVERY, 0):
            variants.append(
                Variant(
                    f"{rule} (alignment_every={every})",
                    _fa_maker(common, rule, every),
                    alignment_every=every,
                    rule=rule,
                )
            )
    return variants


def _fa_maker(common, rule, every):
    def make():
        return keras_fa.FAClassifier(
            **common, feedback=rule, alignment_every=every
        )

    return make


def benchmark(args):
    """Runs the warm-up fits and the interleaved repeats; returns the
    variants."""
    data = load_data(args.test_size, args.random_state)
    variants = make_variants(args)
    for variant in variants:
        variant.warm_up(data)
        print(
            f"  first fit {variant.name}: {variant.first[0]:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    harness.interleave(
        variants,
        args.repeats,
        lambda variant: variant.timed(data),
        "",
        lambda variant: f"{variant.wall[-1]:.2f}",
    )
    for variant in variants:
        if variant.n_iter != {args.max_iter}:
            raise RuntimeError(
                f"{variant.name} ran {sorted(variant.n_iter)} epochs, not "
                f"max_iter={args.max_iter}: the timings do not compare."
            )
    return variants


def _accuracy(variant):
    values = sorted(set(variant.accuracy))
    text = f"{values[0]:.4f}"
    if len(values) > 1:
        # Fits of one seed should agree; show it when they do not.
        text += f" ({values[0]:.4f}-{values[-1]:.4f})"
    return text


def table(variants):
    """Returns the Markdown table: one row for MLPClassifier, one per
    rule."""
    mlp = variants[0]
    mlp_wall, mlp_cpu = mlp.median()
    lines = [
        "| estimator | first fit s | fit s | CPU s | ratio | CPU ratio | "
        "min fit s | fit s, no alignment | CPU s, no alignment | "
        "ratio, no alignment | CPU ratio, no alignment | alignment cost "
        "(CPU) | test accuracy | test accuracy, no alignment |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {MLP} | {mlp.first[0]:.2f} | {mlp_wall:.2f} | {mlp_cpu:.2f} | "
        f"1.000 | 1.000 | {min(mlp.wall):.2f} |  |  |  |  |  | "
        f"{_accuracy(mlp)} |  |",
    ]
    by_rule = {}
    for v in variants[1:]:
        by_rule.setdefault(v.rule, {})[v.alignment_every] = v
    for rule, pair in by_rule.items():
        on, off = pair[ALIGNMENT_EVERY], pair[0]
        on_wall, on_cpu = on.median()
        off_wall, off_cpu = off.median()
        lines.append(
            f"| FAClassifier {rule} | {on.first[0]:.2f} | {on_wall:.2f} | "
            f"{on_cpu:.2f} | {on_wall / mlp_wall:.3f} | "
            f"{on_cpu / mlp_cpu:.3f} | {min(on.wall):.2f} | "
            f"{off_wall:.2f} | {off_cpu:.2f} | {off_wall / mlp_wall:.3f} | "
            f"{off_cpu / mlp_cpu:.3f} | {on_cpu / off_cpu:.3f} | "
            f"{_accuracy(on)} | {_accuracy(off)} |"
        )
    return "\n".join(lines)


def first_fit_table(variants, max_iter):
    """Returns the Markdown table of every variant's first fit, and of
    where the later fits' time goes."""
    lines = [
        "| variant (in the order run) | first fit s | first fit CPU s | "
        "later fit CPU s | 1-epoch fit CPU s | CPU ms/epoch after the "
        "first | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    mlp_epoch = None
    for v in variants:
        cells = ["", ""]
        if max_iter > 1:
            # Paired: each repeat's full fit less its own 1-epoch fit.
            epoch = statistics.median(
                (full - short) / (max_iter - 1)
                for full, short in zip(v.cpu, v.short_cpu)
            )
            mlp_epoch = epoch if mlp_epoch is None else mlp_epoch
            ratio = f"{epoch / mlp_epoch:.3f}" if mlp_epoch > 0 else ""
            cells = [f"{1e3 * epoch:.2f}", ratio]
        lines.append(
            f"| {v.name} | {v.first[0]:.2f} | {v.first[1]:.2f} | "
            f"{statistics.median(v.cpu):.2f} | "
            f"{statistics.median(v.short_cpu):.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def limit_all_threads(threads):
    """Makes the active backend, and the BLAS and OpenMP libraries loaded
    (MLPClassifier's), compute with `threads` threads; see
    `benchmarks.harness.limit_threads`."""
    harness.limit_threads(threads)
    # Set for the rest of the process (no context): numpy's BLAS, OpenMP.
    threadpoolctl.threadpool_limits(limits=threads)


def describe(args, data_shapes):
    """Returns the lines that say what was measured, and where."""
    (n_train, n_features), n_test = data_shapes
    batch = min(200, n_train)
    where, machine = harness.describe(
        f"scikit-learn {sklearn.__version__}",
        f"numpy {np.__version__}",
        cpu_only=True,
    )
    return (
        f"{where}; {harness.threads_text(args.threads)}; {machine}.\n\n"
        f"Digits X / 16: {n_train} training and {n_test} test examples, "
        f"{n_features} features, 10 classes (split seed "
        f"{args.random_state}). Both estimators: "
        f"hidden_layer_sizes={args.hidden_layer_sizes}, adam, "
        f"batch_size='auto' ({batch}), max_iter={args.max_iter} (tol=0, "
        f"n_iter_no_change={args.max_iter}: all {args.max_iter} epochs run, "
        f"checked by n_iter_), random_state={args.random_state}. Median of "
        f"{args.repeats} interleaved repeats, each `fit` on a fresh "
        "estimator (its compilation included); `ratio` is over "
        "MLPClassifier's median in the same run."
    )


def report(args, argv, variants, data_shapes, load_before):
    """Returns the whole Markdown report."""
    backend = keras.backend.backend()
    command = harness.command_line(
        "python -m benchmarks.estimator_time", argv, backend
    )
    return (
        "# FAClassifier.fit against MLPClassifier.fit\n\n"
        "Produced by `benchmarks/estimator_time.py` (its docstring says what "
        "each column is):\n\n"
        f"    {command}\n\n"
        "Machine: a 2-core x86_64 CPU (no accelerator) shared with other "
        "jobs, so wall-clock times are noisy; with one thread the CPU time "
        "(process time) is the steadier measure.\n\n"
        f"## {backend}\n\n"
        f"{describe(args, data_shapes)}\n\n"
        f"Load average (1, 5, 15 min) before: {load_before}; after: "
        f"{harness.load_average()}.\n\n"
        f"{table(variants)}\n\n"
        "### First fit in the process, and fixed against per-epoch cost\n\n"
        "Each variant's first fit (a warm-up, not in the medians), in the "
        "order they ran: the first fits of the process also pay its "
        "one-time costs (loading the backend's compiler and kernels). "
        "Later fits re-trace on tensorflow and reuse the compiled "
        "functions of the same structure on jax: "
        "`1-epoch fit CPU s` is the median CPU time of a fresh fit with "
        "max_iter=1 (set-up, compilation, one epoch, and with alignment "
        "its two measurements), timed in each repeat right after the full "
        "fit; `CPU ms/epoch after the first` is the median over repeats of "
        "(fit - 1-epoch fit) / (max_iter - 1), what each further epoch "
        "costs (alignment measurements included), and `ratio` divides it "
        "by MLPClassifier's.\n\n"
        f"{first_fit_table(variants, args.max_iter)}\n"
    )


def output_path(output):
    """Returns the file `--output` names on the active backend ('' for
    none)."""
    return output.replace("{backend}", keras.backend.backend())


def parse_args(argv=None):
    """Parses the command line; exits as argparse does (status 2, naming
    the flag, the value and what is allowed) on a bad value or an
    `--output` that cannot be written, before any data is loaded."""
    parser = harness.script_parser(__doc__)
    harness.add_rules_argument(parser, DEFAULT_RULES, RULES)
    parser.add_argument(
        "--repeats",
        type=harness.positive_int,
        default=3,
        help="timed fits per variant",
    )
    parser.add_argument(
        "--hidden-layer-sizes",
        type=harness.positive_ints,
        default=(100,),
        help="comma-separated units of the hidden layers (default: 100)",
    )
    parser.add_argument(
        "--max-iter", type=harness.positive_int, default=200, help="epochs"
    )
    parser.add_argument(
        "--random-state",
        type=harness.seed,
        default=0,
        help="seed of both estimators and of the train/test split",
    )
    parser.add_argument(
        "--test-size",
        type=harness.float_in(0, 1, low_open=True, high_open=True),
        default=0.25,
        help="held-out fraction",
    )
    harness.add_threads_argument(parser, 1, "the backend and BLAS compute")
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help="write the report here ('{backend}' is replaced by the active "
        "backend; '' writes nothing; default: "
        "benchmarks/results/estimator_time_{backend}.md)",
    )
    args = parser.parse_args(argv)
    harness.check_output_path(parser, "--output", output_path(args.output))
    return args


def main(argv=None):
    """Runs the benchmark on the active backend; prints and writes the
    report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    load_before = harness.load_average()
    if args.threads:
        limit_all_threads(args.threads)
    X_train, X_test, _, _ = load_data(args.test_size, args.random_state)
    with warnings.catch_warnings():
        # Every fit stops at max_iter by design.
        warnings.simplefilter("ignore", ConvergenceWarning)
        variants = benchmark(args)
    text = report(
        args, argv, variants, (X_train.shape, X_test.shape[0]), load_before
    )
    print(text)
    if args.output:
        path = output_path(args.output)
        harness.write_atomic(path, text)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
