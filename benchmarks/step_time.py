"""Time a training step of plain Keras models against their keras_fa versions.

For each model (an MLP 784-1000-1000-10 and a LeNet-style CNN on 28x28x1
inputs) it builds the plain Keras model (`keras.layers.Dense` / `Conv2D`) and
the same architecture with `keras_fa.FADense` / `FAConv2D` for each feedback
rule, compiles all of them alike (Adam, sparse categorical cross-entropy, the
default `jit_compile`), warms each up, then times `model.fit` on random data
(no download), the variants interleaved: every repeat runs every variant once,
in a rotated order, so drift in machine load hits all variants alike.

A repeat times the `--steps` steps of one `model.fit` call (verbose=0, no
metrics): from the start of its first batch to the end of its epoch, after
the weights are read back, so asynchronous dispatch (jax) is included. Set-up
that `fit` does before the first batch is outside the timing; it is the same
for every variant anyway.

It prints a Markdown table and, with `--out`, writes it to a file: per model
and variant the median wall-clock ms/step and its ratio to the plain Keras
model's, the smallest wall-clock ms/step, and the median CPU ms/step (the
process's CPU time, all threads) and its ratio.

    KERAS_BACKEND=tensorflow python benchmarks/step_time.py
    KERAS_BACKEND=jax python benchmarks/step_time.py --out \
        benchmarks/results/step_time_jax.md
    KERAS_BACKEND=torch python benchmarks/step_time.py --threads 1 \
        --models mlp --rules fa,kp --repeats 5 --steps 10

On a machine whose cores are busy with other work, torch's default OpenMP
threads wait on each other in every kernel (one step can take ten times as
long, and the variant with more kernels loses most); `--threads 1` gives
steadier ratios there.

Other work on the machine only ever adds wall-clock time, so the smallest
time of a variant is the closest to its cost on an idle machine. With
`--threads 1` the CPU time hardly depends on other work at all (it is the
compute the step costs), which makes the CPU ratio the steadier measure on a
busy machine; with several threads it also counts threads waiting for work.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np

# Run from a checkout without installing: the package is next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fa  # noqa: E402
from benchmarks.shared import limit_threads  # noqa: E402
from benchmarks.shared import names  # noqa: E402
from benchmarks.shared import write_atomic  # noqa: E402

MODELS = ("mlp", "cnn")
RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "dfa", "drtp", "shallow")
# Direct rules wrap the plain Keras model (keras_fa.direct_feedback).
DIRECT_RULES = ("dfa", "drtp", "shallow")
PLAIN = "keras"
NUM_CLASSES = 10


def build_mlp(feedback=None):
    """Returns the MLP 784-1000-1000-10; `feedback=None` gives plain Keras."""
    dense = _dense(feedback)
    return keras.Sequential(
        [
            keras.Input((784,)),
            dense(1000, activation="relu"),
            dense(1000, activation="relu"),
            dense(NUM_CLASSES),
        ],
        name="mlp",
    )


def build_cnn(feedback=None):
    """Returns a LeNet-style CNN for 28x28x1 images."""
    dense = _dense(feedback)
    conv = _conv2d(feedback)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            conv(6, 5, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            conv(16, 5, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            dense(120, activation="relu"),
            dense(84, activation="relu"),
            dense(NUM_CLASSES),
        ],
        name="cnn",
    )


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn}
INPUT_SHAPES = {"mlp": (784,), "cnn": (28, 28, 1)}


def _dense(feedback):
    if feedback is None:
        return keras.layers.Dense

    def layer(*args, **kwargs):
        return keras_fa.FADense(*args, feedback=feedback, **kwargs)

    return layer


def _conv2d(feedback):
    if feedback is None:
        return keras.layers.Conv2D

    def layer(*args, **kwargs):
        return keras_fa.FAConv2D(*args, feedback=feedback, **kwargs)

    return layer


class _StepTimer(keras.callbacks.Callback):
    """Times one epoch from the start of its first batch to its end.

    It implements no `on_*_batch_end`, so Keras keeps dispatching batches
    asynchronously, as it does without callbacks.
    """

    def __init__(self):
        super().__init__()
        self.start = None
        self.seconds = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        # Reading a weight back waits for all queued work (jax dispatches
        # asynchronously; fit has already put the state back on the model).
        keras.ops.convert_to_numpy(self.model.trainable_weights[-1])
        self.seconds = (
            time.perf_counter() - self.start[0],
            time.process_time() - self.start[1],
        )


class Variant:
    """One compiled model and the fit call that times it."""

    def __init__(self, model_name, feedback, data, batch_size, jit_compile):
        self.model_name = model_name
        self.name = PLAIN if feedback is None else feedback
        keras.utils.set_random_seed(0)
        if feedback in DIRECT_RULES:
            self.model = keras_fa.direct_feedback(
                BUILDERS[model_name](None), feedback
            )
        else:
            self.model = BUILDERS[model_name](feedback)
        self.model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        self.x, self.y = data
        self.batch_size = batch_size
        self.wall = []
        self.cpu = []

    def fit(self):
        """Runs one epoch; records its wall-clock and CPU seconds per step."""
        timer = _StepTimer()
        self.model.fit(
            self.x,
            self.y,
            batch_size=self.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        steps = len(self.x) // self.batch_size
        self.wall.append(timer.seconds[0] / steps)
        self.cpu.append(timer.seconds[1] / steps)


def make_data(model_name, steps, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    n = steps * batch_size
    x = rng.random((n, *INPUT_SHAPES[model_name]), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(n,)).astype("int32")
    return x, y


def benchmark(model_name, rules, repeats, steps, batch_size, jit_compile):
    """Returns the variants of one model, each with `repeats` timings."""
    data = make_data(model_name, steps, batch_size)
    variants = [
        Variant(model_name, feedback, data, batch_size, jit_compile)
        for feedback in (None, *rules)
    ]
    for variant in variants:
        # The first fit compiles (tf.function, jax.jit); the second runs the
        # compiled step and warms caches and allocators.
        variant.fit()
        variant.fit()
    for r in range(repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.fit()
        print(
            f"  {model_name} repeat {r + 1}/{repeats}: "
            + ", ".join(f"{v.name} {1e3 * v.wall[-1]:.1f}" for v in variants),
            file=sys.stderr,
            flush=True,
        )
    return variants


def table(results):
    """Returns the Markdown table of all models' variants."""
    lines = [
        "| model | variant | ms/step | ratio | min ms/step | CPU ms/step | "
        "CPU ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variants in results:
        plain = variants[0]
        plain_wall = statistics.median(plain.wall)
        plain_cpu = statistics.median(plain.cpu)
        for variant in variants:
            wall = statistics.median(variant.wall)
            cpu = statistics.median(variant.cpu)
            lines.append(
                f"| {variant.model_name} | {variant.name} | "
                f"{1e3 * wall:.2f} | {wall / plain_wall:.3f} | "
                f"{1e3 * min(variant.wall):.2f} | "
                f"{1e3 * cpu:.2f} | {cpu / plain_cpu:.3f} |"
            )
    return "\n".join(lines)


def describe(args, results):
    """Returns a line that says what was measured, and where."""
    backend = keras.backend.backend()
    versions = [f"keras {keras.__version__}"]
    if backend == "tensorflow":
        import tensorflow as tf

        versions.append(f"tensorflow {tf.__version__}")
    elif backend == "jax":
        import jax

        versions.append(f"jax {jax.__version__}")
    elif backend == "torch":
        import torch

        versions.append(f"torch {torch.__version__}")
    return (
        f"Backend {backend} ({', '.join(versions)}), "
        f"jit_compile={args.jit_compile!r} "
        f"(resolved: {results[0][0].model.jit_compile}), "
        f"threads={args.threads or 'default'}, batch size {args.batch_size}, "
        f"{args.steps} steps per fit, median of {args.repeats} interleaved "
        f"repeats; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}."
    )


def _jit_compile(text):
    return {"auto": "auto", "true": True, "false": False}[text.lower()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: mlp,cnn"
    )
    parser.add_argument(
        "--rules",
        default=",".join(RULES),
        help="comma-separated feedback rules: " + ",".join(RULES),
    )
    parser.add_argument(
        "--repeats", type=int, default=21, help="timed fits per variant"
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="training steps per timed fit"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--jit-compile",
        type=_jit_compile,
        default="auto",
        help="passed to model.compile: auto (the default users get), "
        "true or false",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads the backend computes with (default: its own choice)",
    )
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    args.models = names(args.models, MODELS, "--models")
    args.rules = names(args.rules, RULES, "--rules")
    if min(args.repeats, args.steps, args.batch_size, args.threads or 1) < 1:
        parser.error(
            "--repeats, --steps, --batch-size and --threads must be positive"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    results = [
        benchmark(
            name,
            args.rules,
            args.repeats,
            args.steps,
            args.batch_size,
            args.jit_compile,
        )
        for name in args.models
    ]
    report = f"{describe(args, results)}\n\n{table(results)}\n"
    print(report)
    if args.out:
        write_atomic(args.out, report)


if __name__ == "__main__":
    main()
