"""Time what recording alignment adds to training.

The target: tracking alignment every 100 steps adds less than 5% to the
training time. For each model (FA MLPs and a small FA CNN, random data, no
download) it times, side by side in one process, the variants interleaved
(every repeat runs every variant once, in a rotated order, so drift in
machine load hits all variants alike):

1. `model.fit` with no callback: the baseline;
2. `model.fit` with `keras_fa.callbacks.AlignmentCallback((x_probe,
   y_probe), every=...)` on a fixed probe batch;
3. `model.fit` with `keras_fa.callbacks.ConservationMonitor(every=...)`;

and, reported separately,

4. `keras_fa.train(model, x, y, every=k, verbose=0, shuffle=False)` for each
   `--train-every` k, against a plain Python loop of `model.train_on_batch`
   over the same batches. `train` records the cheap weight measures at every
   step and the gradient-based angles every k steps.

The variants of one model share the model (one compiled train step; the
callback is the only difference), so the ratios do not mix in differences
between model instances.

A `model.fit` repeat times one epoch of `--steps` steps from the start of
`on_train_begin` to the end of `on_train_end`, after a weight is read back
(jax dispatches asynchronously), so it includes every measurement a callback
makes: one at the start of training, one every `--every` steps and one at
the end of the epoch. Before timing, each variant runs one short fit: the
baseline's compiles the train step; a callback's first `on_train_begin`
also finds the layers and compiles the measure functions. That one-time cost
is reported in its own table and is not in the ratios. The `measure`
columns split a callback's cost: the CPU time spent in its measure calls,
and that time as a fraction of the baseline's, the rest of its overhead
being what any callback with a per-batch hook costs.

`keras_fa.train` builds a new `keras_fa.alignment.Alignment` at each call,
so every call pays the discovery and the compiles again. A `train` repeat
therefore times from the end of its first `train_on_batch` (the set-up, the
step-0 measurement and the first step are done) to the end of the call; the
loop is timed over the same window, and the set-up (the time up to the end
of the first step, less the loop's) has its own column.

It prints Markdown tables of medians (wall-clock and CPU ms/step, their
ratios to the baseline) and, with `--output`, writes them to a file.

    KERAS_BACKEND=jax python benchmarks/alignment_cost.py
    python benchmarks/alignment_cost.py --backends tensorflow,jax,torch \\
        --output benchmarks/results/alignment_cost_{backend}.md
    python benchmarks/alignment_cost.py --quick

`--backends` runs this script again once per backend (KERAS_BACKEND is read
when keras is imported); `{backend}` in `--output` gives one file per
backend, otherwise all go into one file.

As in `benchmarks/step_time.py`: on a machine whose cores are busy with other
work, wall-clock time swings from repeat to repeat, while the CPU time with
one thread (`--threads 1`, the default here) hardly depends on other work;
judge the ratios by the CPU ratio.
"""

import os
import statistics
import subprocess
import sys

import keras
import numpy as np

# Run from a checkout without installing: the package is next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fa  # noqa: E402
from benchmarks import harness  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("mlp", "mlp-wide", "cnn")
RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp")
NUM_CLASSES = 10
BASELINE = "fit"
CALLBACKS = ("AlignmentCallback", "ConservationMonitor")
LOOP = "train_on_batch loop"


def build_mlp(feedback):
    """Returns an MLP 64-256-256-10 (inputs like the 8x8 digits)."""
    return _mlp(feedback, 64, 256, "mlp")


def build_mlp_wide(feedback):
    """Returns an MLP 784-512-512-10 (inputs like MNIST)."""
    return _mlp(feedback, 784, 512, "mlp_wide")


def _mlp(feedback, inputs, hidden, name):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras_fa.FADense(hidden, activation="relu", feedback=feedback),
            keras_fa.FADense(hidden, activation="relu", feedback=feedback),
            keras_fa.FADense(NUM_CLASSES, feedback=feedback),
        ],
        name=name,
    )


def build_cnn(feedback):
    """Returns a small CNN for 8x8x1 images (like the digits)."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras_fa.FAConv2D(
                16, 3, padding="same", activation="relu", feedback=feedback
            ),
            keras.layers.MaxPooling2D(2),
            keras_fa.FAConv2D(
                32, 3, padding="same", activation="relu", feedback=feedback
            ),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras_fa.FADense(64, activation="relu", feedback=feedback),
            keras_fa.FADense(NUM_CLASSES, feedback=feedback),
        ],
        name="cnn",
    )


BUILDERS = {"mlp": build_mlp, "mlp-wide": build_mlp_wide, "cnn": build_cnn}
INPUT_SHAPES = {"mlp": (64,), "mlp-wide": (784,), "cnn": (8, 8, 1)}


def make_data(model_name, n, seed=0):
    """Returns `n` random examples `(x, y)` for `model_name`."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *INPUT_SHAPES[model_name]), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(n,)).astype("int32")
    return x, y


def build(model_name, rule, args):
    """Returns `model_name` with `rule`, compiled as `args` say."""
    keras.utils.set_random_seed(0)
    model = BUILDERS[model_name](rule)
    model.compile(
        optimizer=keras.optimizers.SGD(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit_compile,
    )
    return model


def _timed(function, record):
    """Returns `function` that also appends its (wall, CPU) seconds to
    `record`."""

    def wrapper(*args, **kwargs):
        start = harness.clock()
        result = function(*args, **kwargs)
        record.append(harness.since(start))
        return result

    return wrapper


class FitVariant(harness.Timings):
    """`model.fit` with one callback (or none), on a shared model."""

    def __init__(self, name, model, callback, data, batch_size):
        super().__init__(name)
        self.model = model
        self.callback = callback
        self.x, self.y = data
        self.batch_size = batch_size
        self.begins = []  # (wall, CPU) of each on_train_begin
        self.measures = []  # (wall, CPU) of each measurement
        self.measures_per_fit = []
        if callback is not None:
            callback.on_train_begin = _timed(
                callback.on_train_begin, self.begins
            )
            callback._measure = _timed(callback._measure, self.measures)

    def fit(self, steps=None, timed=True):
        """Runs one epoch of `steps` steps (default: all the data)."""
        n = len(self.x) if steps is None else steps * self.batch_size
        # First in the list: its on_train_begin runs before the callback's
        # and its on_train_end after the callback's on_epoch_end.
        timer = harness.FitTimer("fit", wait=True)
        callbacks = [timer] + ([self.callback] if self.callback else [])
        before = len(self.measures)
        self.model.fit(
            self.x[:n],
            self.y[:n],
            batch_size=self.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        if timed:
            self.add(timer.seconds[-1], n // self.batch_size)
            self.measures_per_fit.append(len(self.measures) - before)


class TrainVariant(harness.Timings):
    """`keras_fa.train(every=k)`, or with `every=None` a plain loop of
    `train_on_batch` over the same batches."""

    def __init__(self, model, every, data, batch_size):
        super().__init__(LOOP if every is None else f"train every={every}")
        self.model = model
        self.every = every
        self.x, self.y = data
        self.batch_size = batch_size
        self.setup = []  # (wall, CPU) up to the end of the first step

    def run(self, steps=None, timed=True):
        n = len(self.x) if steps is None else steps * self.batch_size
        x, y = self.x[:n], self.y[:n]
        marks = []
        plain = self.model.train_on_batch

        def train_on_batch(*args, **kwargs):
            result = plain(*args, **kwargs)
            if not marks:
                marks.append(harness.clock())
            return result

        # An instance attribute: `train` calls model.train_on_batch.
        self.model.train_on_batch = train_on_batch
        try:
            start = harness.clock()
            if self.every is None:
                for i in range(0, n, self.batch_size):
                    self.model.train_on_batch(
                        x[i : i + self.batch_size], y[i : i + self.batch_size]
                    )
            else:
                keras_fa.train(
                    self.model,
                    x,
                    y,
                    batch_size=self.batch_size,
                    every=self.every,
                    shuffle=False,
                    verbose=0,
                )
            harness.wait_for(self.model)
        finally:
            del self.model.train_on_batch
        if timed:
            self.add(harness.since(marks[0]), n // self.batch_size - 1)
            self.setup.append((marks[0][0] - start[0], marks[0][1] - start[1]))


def _interleave(variants, repeats, run, label):
    harness.interleave(
        variants,
        repeats,
        run,
        f"{label} ",
        lambda variant: f"{1e3 * variant.cpu[-1]:.2f}",
        unit=" CPU ms/step",
    )


def benchmark_fit(model_name, rule, args):
    """Returns the fit variants of one model, timed."""
    data = make_data(model_name, args.steps * args.batch_size)
    probe = make_data(model_name, args.probe, seed=1)
    model = build(model_name, rule, args)
    variants = [
        FitVariant(BASELINE, model, None, data, args.batch_size),
        FitVariant(
            CALLBACKS[0],
            model,
            keras_fa.callbacks.AlignmentCallback(probe, every=args.every),
            data,
            args.batch_size,
        ),
        FitVariant(
            CALLBACKS[1],
            model,
            keras_fa.callbacks.ConservationMonitor(every=args.every),
            data,
            args.batch_size,
        ),
    ]
    # The first fit compiles the train step (and a callback's measure
    # functions); the second warms caches. Short fits: the compiled
    # functions do not depend on the number of steps.
    warm = min(args.steps, args.every + 1)
    for variant in variants:
        variant.fit(warm, timed=False)
        variant.fit(warm, timed=False)
    _interleave(
        variants,
        args.repeats,
        lambda v: v.fit(),
        f"{model_name}/{rule} fit",
    )
    return variants


def benchmark_train(model_name, rule, args):
    """Returns the `keras_fa.train` variants of one model, timed."""
    data = make_data(model_name, args.steps * args.batch_size)
    model = build(model_name, rule, args)
    variants = [TrainVariant(model, None, data, args.batch_size)] + [
        TrainVariant(model, every, data, args.batch_size)
        for every in args.train_every
    ]
    for variant in variants:
        variant.run(2, timed=False)
    _interleave(
        variants,
        args.repeats,
        lambda v: v.run(),
        f"{model_name}/{rule} train",
    )
    return variants


def _ms(seconds):
    return f"{1e3 * seconds:.2f}"


def _paired(variant, baseline):
    # Each repeat's CPU time over the baseline's in the same repeat (run
    # next to each other): the median and the range of these ratios.
    ratios = [v / b for v, b in zip(variant.cpu, baseline.cpu)]
    return (
        f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
    )


def _timing_cells(variant, baseline):
    # The columns every timing table has: ms/step, its ratio to the
    # baseline's, the smallest ms/step, CPU ms/step, its ratio, and the
    # paired CPU ratio.
    base_wall, base_cpu = baseline.median()
    wall, cpu = variant.median()
    return [
        _ms(wall),
        f"{wall / base_wall:.3f}",
        _ms(min(variant.wall)),
        _ms(cpu),
        f"{cpu / base_cpu:.3f}",
        _paired(variant, baseline),
    ]


def fit_table(results):
    """Returns the Markdown table of the `model.fit` variants."""
    lines = [
        "| model | rule | variant | ms/step | ratio | min ms/step | "
        "CPU ms/step | CPU ratio | paired CPU ratio (range) | measures/fit | "
        "CPU ms/measure | measure share |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model_name, rule), variants in results:
        base_cpu = variants[0].median()[1]
        steps = len(variants[0].x) // variants[0].batch_size
        for v in variants:
            cells = ["", "", ""]
            if v.callback is not None:
                count = statistics.median(v.measures_per_fit)
                # Skip the warm-up fits' measurements (the first compiles).
                timed = [c for _, c in v.measures[-sum(v.measures_per_fit) :]]
                per = statistics.median(timed)
                cells = [
                    f"{count:g}",
                    _ms(per),
                    f"{count * per / (steps * base_cpu):.3f}",
                ]
            timing = _timing_cells(v, variants[0])
            lines.append(
                harness.table_row(model_name, rule, v.name, *timing, *cells)
            )
    return "\n".join(lines)


def once_table(results):
    """Returns the Markdown table of the callbacks' one-time cost."""
    lines = [
        "| model | rule | callback | first on_train_begin ms | CPU ms | "
        "later on_train_begin ms | CPU ms |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (model_name, rule), variants in results:
        for v in variants[1:]:
            first = v.begins[0]
            later = v.begins[1:]
            lines.append(
                f"| {model_name} | {rule} | {v.name} | {_ms(first[0])} | "
                f"{_ms(first[1])} | "
                f"{_ms(statistics.median(w for w, _ in later))} | "
                f"{_ms(statistics.median(c for _, c in later))} |"
            )
    return "\n".join(lines)


def train_table(results):
    """Returns the Markdown table of the `keras_fa.train` variants."""
    lines = [
        "| model | rule | variant | ms/step | ratio | min ms/step | "
        "CPU ms/step | CPU ratio | paired CPU ratio (range) | set-up ms | "
        "set-up CPU ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (model_name, rule), variants in results:
        base_setup = [statistics.median(s) for s in zip(*variants[0].setup)]
        for v in variants:
            setup = ["", ""]
            if v.every is not None:
                setup = [
                    _ms(statistics.median(s) - b)
                    for s, b in zip(zip(*v.setup), base_setup)
                ]
            timing = _timing_cells(v, variants[0])
            lines.append(
                harness.table_row(model_name, rule, v.name, *timing, *setup)
            )
    return "\n".join(lines)


def describe(args, resolved_jit):
    """Returns a line that says what was measured, and where."""
    where, machine = harness.describe(cpu_only=True)
    return (
        f"{where}, "
        f"jit_compile={args.jit_compile!r} (resolved: {resolved_jit}), "
        f"{harness.threads_text(args.threads)}, SGD({args.learning_rate}), "
        f"batch size {args.batch_size}, probe batch {args.probe}, "
        f"every={args.every}, {args.steps} steps per timed run, median of "
        f"{args.repeats} interleaved repeats; {machine}."
    )


def report(args, fits, trains, load_before):
    """Returns the tables of one backend, under its heading."""
    backend = keras.backend.backend()
    model = (fits or trains)[0][1][0].model
    parts = [
        f"## {backend}",
        describe(args, model.jit_compile),
        "Load average (1, 5, 15 min) before: "
        f"{load_before}; after: {harness.load_average()}.",
    ]
    if fits:
        parts += [
            f"### model.fit with a callback, every={args.every}",
            fit_table(fits),
            "### One-time cost: a callback's first on_train_begin "
            "(finds the layers, compiles the measure functions; not in the "
            "ratios above)",
            once_table(fits),
        ]
    if trains:
        parts += [
            "### keras_fa.train against a loop of train_on_batch",
            train_table(trains),
        ]
    return "\n\n".join(parts) + "\n"


def header(argv, backend=None):
    """Returns the heading of the output file: the command and machine."""
    command = harness.command_line(
        "python benchmarks/alignment_cost.py", argv, backend
    )
    return (
        "# What recording alignment adds to training\n\n"
        "Produced by `benchmarks/alignment_cost.py` (its docstring says "
        "what each variant and column is):\n\n"
        f"    {command}\n\n"
        "Machine: a 2-core x86_64 CPU (no accelerator) shared with other "
        "jobs, so wall-clock times are noisy; with one thread the CPU time "
        "(process time) is the steadier measure. `ratio` and `CPU ratio` "
        "divide a variant's median ms/step by the baseline's (plain "
        "`model.fit`, or the `train_on_batch` loop).\n"
    )


def output_paths(output, backends):
    """Returns the files `--output` names for `backends` (one per backend
    where it holds '{backend}'; none for '' or None)."""
    if not output:
        return []
    if "{backend}" not in output:
        return [output]
    return [output.replace("{backend}", backend) for backend in backends]


def parse_args(argv=None):
    """Parses the command line; exits as argparse does (status 2, naming
    the flag, the value and what is allowed) on a bad value or an
    `--output` that cannot be written, before anything is built."""
    parser = harness.script_parser(__doc__)
    _add_what_arguments(parser)
    _add_how_arguments(parser)
    parser.add_argument(
        "--output",
        help="also write the tables (Markdown) to this file; '{backend}' in "
        "it gives one file per backend",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.every = 60, 1, 20
        args.train_every, args.probe = (20, 1), 32
        args.batch_size = 32
    for path in output_paths(
        args.output, args.backends or [keras.backend.backend()]
    ):
        harness.check_output_path(parser, "--output", path)
    return args


_MODEL_LIST = harness.comma_list(allowed=MODELS, name="model")


def _train_models(text):
    # --train-models: models, or 'none' for no keras_fa.train table.
    return [] if text.strip() == "none" else _MODEL_LIST(text)


def _add_what_arguments(parser):
    # What is timed: backends, models, rules.
    parser.add_argument(
        "--backends",
        type=harness.comma_list(allowed=BACKENDS, name="backend"),
        help="comma-separated: " + ",".join(BACKENDS) + "; runs the script "
        "once per backend (default: the active one, in this process)",
    )
    parser.add_argument(
        "--models",
        type=_MODEL_LIST,
        default="mlp,mlp-wide,cnn",
        help="comma-separated: " + ",".join(MODELS),
    )
    parser.add_argument(
        "--train-models",
        type=_train_models,
        default="mlp",
        help="models for the keras_fa.train table (comma-separated, or 'none')",
    )
    harness.add_rules_argument(parser, ["fa"], RULES)


def _add_how_arguments(parser):
    # How it is timed: steps, repeats, measurement intervals, training.
    parser.add_argument(
        "--steps",
        type=harness.int_in(2),
        default=1000,
        help="training steps per timed run",
    )
    for flag, default, text in (
        ("--repeats", 5, "timed runs per variant"),
        ("--every", 100, "the callbacks' `every`"),
        ("--batch-size", 128, None),
        ("--probe", 256, "AlignmentCallback probe batch"),
    ):
        parser.add_argument(
            flag, type=harness.positive_int, default=default, help=text
        )
    parser.add_argument(
        "--train-every",
        type=harness.positive_ints,
        default=(100, 10, 1),
        help="comma-separated `every` values of keras_fa.train",
    )
    parser.add_argument(
        "--learning-rate",
        type=harness.positive_float,
        default=0.01,
        help="SGD's",
    )
    harness.add_jit_compile_argument(parser)
    harness.add_threads_argument(parser, 1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny configuration, for a smoke test",
    )


def run_backends(args, argv):
    """Runs this script once per backend; returns their reports."""
    reports = {}
    rest = []
    skip = False
    for item in argv:
        # The children get one backend each and write no file.
        if skip:
            skip = False
            continue
        if item in ("--backends", "--output"):
            skip = True
            continue
        if item.startswith(("--backends=", "--output=")):
            continue
        rest.append(item)
    for backend in args.backends:
        print(f"{backend}:", file=sys.stderr, flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), *rest],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        reports[backend] = child.stdout
    return reports


def run_here(args):
    """Runs the benchmark on the active backend; returns its report."""
    load_before = harness.load_average()
    if args.threads:
        harness.limit_threads(args.threads)
    fits = [
        ((name, rule), benchmark_fit(name, rule, args))
        for name in args.models
        for rule in args.rules
    ]
    trains = [
        ((name, rule), benchmark_train(name, rule, args))
        for name in args.train_models
        for rule in args.rules
    ]
    return report(args, fits, trains, load_before)


def main(argv=None):
    """Runs the benchmark on each backend; prints and writes the tables."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    here = keras.backend.backend()
    if args.backends in (None, [here]):
        reports = {here: run_here(args)}
        print(reports[here])
        # The command line alone does not say which backend ran.
        argv_backend = here if args.backends is None else None
    else:
        argv_backend = None
        reports = run_backends(args, argv)
        for text in reports.values():
            print(text)
    if args.output:
        if "{backend}" in args.output:
            for backend, text in reports.items():
                path = args.output.replace("{backend}", backend)
                harness.write_atomic(
                    path, f"{header(argv, argv_backend)}\n{text}"
                )
        else:
            harness.write_atomic(
                args.output,
                header(argv, argv_backend) + "\n" + "\n".join(reports.values()),
            )


if __name__ == "__main__":
    main()
