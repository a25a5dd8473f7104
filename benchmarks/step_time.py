"""Time a training step of plain Keras models against their keras_fa versions.

Models (`--models`, all by default):

- `mlp`: an MLP 784-1000-1000-10;
- `cnn`: a LeNet-style CNN on 28x28x1 inputs;
- `transformer`: a small transformer classifier on 32 tokens of width 64
  (learned position embedding, two pre-norm blocks of 4-head
  `MultiHeadAttention` (key_dim 16) and an MLP 64-128-64, residual `x + ...`
  connections, global average pooling, Dense(10));
- `sepcnn`: a MobileNet-style depthwise-separable CNN on 32x32x3 inputs (a
  stride-2 Conv2D, three blocks of DepthwiseConv2D 3x3, BatchNormalization,
  ReLU and a 1x1 Conv2D, a SeparableConv2D, global average pooling,
  Dense(10)).

For each model it builds the plain Keras model and the same architecture
with keras_fa layers for each feedback rule: `FADense` / `FAConv2D` /
`FADepthwiseConv2D` / `FASeparableConv2D` in place of the Keras layers for the
Sequential models; the transformer is the plain Keras model passed through
`keras_fa.convert(model, rule, seed=0)` (or, where `convert` fails or leaves
a Keras layer with a kernel unconverted, built directly with
`FAMultiHeadAttention` and `FADense`; the report says which). All are
compiled alike (Adam, sparse categorical cross-entropy, the default
`jit_compile`), warmed up, then `model.fit` is timed on random data (no
download), the variants interleaved: every repeat runs every variant once,
in a rotated order, so drift in machine load hits all variants alike.

A repeat times the `--steps` steps of one `model.fit` call (verbose=0, no
metrics): from the start of its first batch to the end of its epoch, after
the weights are read back, so asynchronous dispatch (jax) is included. Set-up
that `fit` does before the first batch is outside the timing; it is the same
for every variant anyway.

It prints a Markdown table and, with `--out`, writes it to a file (with
`--json`, also the per-repeat times): per model and variant the median
wall-clock ms/step and its ratio to the plain Keras model's, the smallest
wall-clock ms/step, the median CPU ms/step (the process's CPU time, all
threads) and its ratio, and the CPU ratio's budget and whether it is met:
every rule must cost at most 1.05x the plain Keras model on tensorflow and
jax and 1.10x on torch, except brsf, kp and wm, whose extra work (a fresh
random B every step; an optimizer update of B; a fresh noise draw and the
mirror's two products every step, plus B's update) is the rule's own.

    KERAS_BACKEND=tensorflow python benchmarks/step_time.py
    KERAS_BACKEND=jax python benchmarks/step_time.py --out \
        benchmarks/results/step_time_jax.md
    KERAS_BACKEND=torch python benchmarks/step_time.py --threads 1 \
        --models mlp --rules fa,kp --repeats 5 --steps 10
    KERAS_BACKEND=jax python benchmarks/step_time.py --threads 1 \
        --models transformer,sepcnn --rules bp,fa,usf,frsf,wm,brsf,kp \
        --out benchmarks/results/step_time_transformer_sepcnn_jax.md \
        --json benchmarks/results/step_time_transformer_sepcnn_jax.json

`--quick` (one warm-up fit, one timed fit of one step of batch 8, unless
given otherwise) checks that everything builds and runs; its times mean
nothing.

On a machine whose cores are busy with other work, torch's default OpenMP
threads wait on each other in every kernel (one step can take ten times as
long, and the variant with more kernels loses most); `--threads 1` gives
steadier ratios there.

Other work on the machine only ever adds wall-clock time, so the smallest
time of a variant is the closest to its cost on an idle machine. With
`--threads 1` the CPU time hardly depends on other work at all (it is the
compute the step costs), which makes the CPU ratio the steadier measure on a
busy machine, and the one the budget judges; with several threads it also
counts threads waiting for work.
"""

import functools
import json
import os
import sys

import keras
import numpy as np
from keras import ops

# Run from a checkout without installing: the package is next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fa  # noqa: E402
from benchmarks import harness  # noqa: E402

MODELS = ("mlp", "cnn", "transformer", "sepcnn")
RULES = harness.RULES
# Direct rules wrap the plain Keras model (keras_fa.direct_feedback): a
# Sequential one, or a functional one with the layers it taps.
DIRECT_RULES = ("dfa", "drtp", "shallow")
SEQUENTIAL_MODELS = ("mlp", "cnn", "sepcnn")
TRANSFORMER_BLOCKS = 2
DIRECT_TAPS = {
    "transformer": [f"block_{i}" for i in range(TRANSFORMER_BLOCKS)],
}
# Models whose feedback versions come from keras_fa.convert(plain model).
CONVERTED_MODELS = ("transformer",)
PLAIN = "keras"
NUM_CLASSES = 10
# The most a rule's step may cost, as a multiple of the plain Keras model's
# (CPU time). brsf, kp and wm have none: their extra work (a fresh random B
# each step; an optimizer update of B; wm's noise draw, mirror products and
# update of B) is the rule's own, not overhead.
BUDGETS = {"tensorflow": 1.05, "jax": 1.05, "torch": 1.10}
UNBUDGETED = ("brsf", "kp", "wm")
QUICK = {"repeats": 1, "steps": 1, "batch_size": 8, "warmup": 1}
DEFAULTS = {"repeats": 21, "steps": 10, "batch_size": 128, "warmup": 2}


def build_mlp(feedback=None):
    """Returns the MLP 784-1000-1000-10; `feedback=None` gives plain Keras."""
    dense = _layer(keras.layers.Dense, feedback)
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
    dense = _layer(keras.layers.Dense, feedback)
    conv = _layer(keras.layers.Conv2D, feedback)
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


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to a `(batch, length,
    width)` input, a lookup table as in the Keras examples' transformers."""

    def __init__(self, length, width, **kwargs):
        super().__init__(**kwargs)
        self.length = length
        self.width = width
        self.embedding = keras.layers.Embedding(
            length,
            width,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, inputs):
        positions = self.embedding(ops.arange(self.length))
        return ops.add(inputs, ops.cast(positions, inputs.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "length": self.length,
            "width": self.width,
        }


def build_transformer(
    feedback=None, length=32, width=64, blocks=TRANSFORMER_BLOCKS
):
    """Returns a small pre-norm transformer classifier of `(length, width)`
    inputs (tokens already embedded); block i ends in the layer
    `block_<i>`, which direct rules tap."""
    dense = _layer(keras.layers.Dense, feedback)
    attention = _layer(keras.layers.MultiHeadAttention, feedback)
    inputs = keras.Input((length, width))
    x = PositionEmbedding(length, width)(inputs)
    for i in range(blocks):
        h = keras.layers.LayerNormalization()(x)
        x = x + attention(num_heads=4, key_dim=width // 4)(h, h)
        h = keras.layers.LayerNormalization()(x)
        h = dense(2 * width, activation="gelu")(h)
        x = keras.layers.Add(name=f"block_{i}")([x, dense(width)(h)])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = dense(NUM_CLASSES)(x)
    return keras.Model(inputs, outputs, name="transformer")


def build_sepcnn(feedback=None):
    """Returns a MobileNet-style depthwise-separable CNN for 32x32x3 images."""
    dense = _layer(keras.layers.Dense, feedback)
    conv = _layer(keras.layers.Conv2D, feedback)
    depthwise = _layer(keras.layers.DepthwiseConv2D, feedback)
    separable = _layer(keras.layers.SeparableConv2D, feedback)
    layers = [
        keras.Input((32, 32, 3)),
        conv(16, 3, strides=2, padding="same", activation="relu"),
    ]
    for filters, strides in ((32, 1), (64, 2), (64, 1)):
        layers += [
            depthwise(3, strides=strides, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            conv(filters, 1, activation="relu"),
        ]
    layers += [
        separable(128, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        dense(NUM_CLASSES),
    ]
    return keras.Sequential(layers, name="sepcnn")


BUILDERS = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "transformer": build_transformer,
    "sepcnn": build_sepcnn,
}
INPUT_SHAPES = {
    "mlp": (784,),
    "cnn": (28, 28, 1),
    "transformer": (32, 64),
    "sepcnn": (32, 32, 3),
}


def _layer(keras_class, feedback):
    # `feedback=None`: the Keras layer; else its keras_fa version with the rule.
    if feedback is None:
        return keras_class
    return functools.partial(
        keras_fa.layers.REPLACEMENTS[keras_class], feedback=feedback
    )


def unconverted_layers(model):
    """Returns the layers of `model` that have a keras_fa version but are
    still the Keras layer (a feedback model should have none)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if type(layer) in keras_fa.layers.REPLACEMENTS
    ]


def build_model(model_name, feedback):
    """Returns `(model, how)`: the model with `feedback` (None: plain Keras)
    and how its feedback version was made."""
    builder = BUILDERS[model_name]
    if feedback is None:
        return builder(None), "plain Keras"
    if feedback in DIRECT_RULES:
        return (
            keras_fa.direct_feedback(
                builder(None), feedback, taps=DIRECT_TAPS.get(model_name)
            ),
            "keras_fa.direct_feedback",
        )
    if model_name not in CONVERTED_MODELS:
        return builder(feedback), "keras_fa layers"
    try:
        model = keras_fa.convert(builder(None), feedback, seed=0)
    except Exception as error:  # convert's limits are reported, not fatal
        reason = f"keras_fa.convert failed: {type(error).__name__}: {error}"
    else:
        left = unconverted_layers(model)
        if not left:
            return model, "keras_fa.convert"
        reason = "keras_fa.convert left " + ", ".join(
            sorted({type(layer).__name__ for layer in left})
        )
    print(
        f"  {model_name} {feedback}: {reason}; built with keras_fa layers",
        file=sys.stderr,
        flush=True,
    )
    return builder(feedback), f"keras_fa layers ({reason})"


class Variant(harness.Timings):
    """One compiled model and the fit call that times it."""

    def __init__(self, model_name, feedback, data, batch_size, jit_compile):
        super().__init__(PLAIN if feedback is None else feedback)
        self.model_name = model_name
        keras.utils.set_random_seed(0)
        self.model, self.how = build_model(model_name, feedback)
        self.model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        self.x, self.y = data
        self.batch_size = batch_size

    def fit(self):
        """Runs one epoch; records its wall-clock and CPU seconds per step,
        from the start of its first batch (after the weights are read
        back: the queued work is done)."""
        timer = harness.FitTimer("steps", wait=True)
        self.model.fit(
            self.x,
            self.y,
            batch_size=self.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[timer],
        )
        self.add(timer.seconds[-1], len(self.x) // self.batch_size)


def make_data(model_name, steps, batch_size, seed=0):
    """Returns `steps` batches of random examples `(x, y)` for
    `model_name`."""
    rng = np.random.default_rng(seed)
    n = steps * batch_size
    x = rng.random((n, *INPUT_SHAPES[model_name]), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(n,)).astype("int32")
    return x, y


def model_rules(model_name, rules):
    """Returns the rules of `rules` that apply to `model_name` (direct rules
    need a Sequential model or taps)."""
    return [
        rule
        for rule in rules
        if rule not in DIRECT_RULES
        or model_name in SEQUENTIAL_MODELS
        or model_name in DIRECT_TAPS
    ]


def benchmark(
    model_name, rules, repeats, steps, batch_size, jit_compile, warmup=2
):
    """Returns the variants of one model, each with `repeats` timings."""
    data = make_data(model_name, steps, batch_size)
    variants = [
        Variant(model_name, feedback, data, batch_size, jit_compile)
        for feedback in (None, *model_rules(model_name, rules))
    ]
    for variant in variants:
        # The first fit compiles (tf.function, jax.jit); the second runs the
        # compiled step and warms caches and allocators. Warm-up times are
        # dropped.
        for _ in range(warmup):
            variant.fit()
        variant.clear()
    harness.interleave(
        variants,
        repeats,
        lambda variant: variant.fit(),
        f"{model_name} ",
        lambda variant: f"{1e3 * variant.wall[-1]:.1f}",
    )
    return variants


def budget(backend, rule):
    """Returns the most a step of `rule` may cost relative to plain Keras on
    `backend` (CPU time), or None where no budget applies."""
    if rule == PLAIN or rule in UNBUDGETED:
        return None
    return BUDGETS[backend]


def _within(cpu_ratio, limit):
    if limit is None:
        return None
    return round(cpu_ratio, 3) <= limit


def rows(results, backend):
    """Returns one dict per model and variant: medians, ratios, budget."""
    out = []
    for variants in results:
        plain = variants[0]
        plain_wall, plain_cpu = plain.median()
        for variant in variants:
            wall, cpu = variant.median()
            limit = budget(backend, variant.name)
            cpu_ratio = cpu / plain_cpu
            out.append(
                {
                    "model": variant.model_name,
                    "variant": variant.name,
                    "built_with": variant.how,
                    "ms_per_step": 1e3 * wall,
                    "ratio": wall / plain_wall,
                    "min_ms_per_step": 1e3 * min(variant.wall),
                    "cpu_ms_per_step": 1e3 * cpu,
                    "cpu_ratio": cpu_ratio,
                    "budget": limit,
                    "within_budget": _within(cpu_ratio, limit),
                    "wall_ms": [1e3 * t for t in variant.wall],
                    "cpu_ms": [1e3 * t for t in variant.cpu],
                }
            )
    return out


def table(results, backend):
    """Returns the Markdown table of all models' variants."""
    lines = [
        "| model | variant | ms/step | ratio | min ms/step | CPU ms/step | "
        "CPU ratio | budget | within |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows(results, backend):
        limit, within = row["budget"], row["within_budget"]
        lines.append(
            f"| {row['model']} | {row['variant']} | "
            f"{row['ms_per_step']:.2f} | {row['ratio']:.3f} | "
            f"{row['min_ms_per_step']:.2f} | "
            f"{row['cpu_ms_per_step']:.2f} | {row['cpu_ratio']:.3f} | "
            f"{'-' if limit is None else f'{limit:.2f}'} | "
            f"{'-' if within is None else ('yes' if within else 'NO')} |"
        )
    return "\n".join(lines)


def describe(args, results):
    """Returns a line that says what was measured, and where."""
    backend = keras.backend.backend()
    where, machine = harness.describe()
    built = sorted(
        {
            f"{v.model_name}: {v.how}"
            for variants in results
            for v in variants[1:]
            if v.how != "keras_fa layers" and v.name not in DIRECT_RULES
        }
    )
    quick = " QUICK RUN (--quick): the times mean nothing."
    return (
        f"{where}, jit_compile={args.jit_compile!r} "
        f"(resolved: {results[0][0].model.jit_compile}), "
        f"{harness.threads_text(args.threads)}, batch size {args.batch_size}, "
        f"{args.steps} steps per fit, median of {args.repeats} interleaved "
        f"repeats; {machine}; "
        f"load average {args.load[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end. "
        f"Budget: CPU ratio <= {BUDGETS[backend]:.2f} for every rule but "
        f"{', '.join(UNBUDGETED)}."
        + "".join(f" Feedback models of {line}." for line in built)
        + (quick if args.quick else "")
    )


def parse_args(argv=None):
    """Parses the command line; exits as argparse does (status 2, naming
    the flag, the value and what is allowed) on a bad value or an output
    path that cannot be written, before anything is built."""
    parser = _parser()
    args = parser.parse_args(argv)
    harness.fill_defaults(args, QUICK if args.quick else DEFAULTS)
    harness.check_output_path(parser, "--out", args.out)
    harness.check_output_path(parser, "--json", args.json)
    if (
        args.out
        and args.json
        and os.path.abspath(args.out) == os.path.abspath(args.json)
    ):
        parser.error(
            f"argument --json: {args.json!r} is also --out: the rows would "
            "replace the table; give two paths"
        )
    return args


def _parser():
    parser = harness.script_parser(__doc__)
    parser.add_argument(
        "--models",
        type=harness.comma_list(allowed=MODELS, name="model"),
        default=",".join(MODELS),
        help="comma-separated: " + ",".join(MODELS),
    )
    direct = ",".join(SEQUENTIAL_MODELS + tuple(DIRECT_TAPS))
    harness.add_rules_argument(
        parser, RULES, note=f" (direct rules only on {direct})"
    )
    for flag, kind, text in (
        ("--repeats", harness.positive_int, "timed fits per variant"),
        ("--steps", harness.positive_int, "training steps per timed fit"),
        ("--batch-size", harness.positive_int, "examples per step"),
        (
            "--warmup",
            harness.non_negative_int,
            "untimed fits per variant before the timed ones",
        ),
    ):
        default = DEFAULTS[flag[2:].replace("-", "_")]
        parser.add_argument(flag, type=kind, help=f"{text} (default {default})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="check that everything runs: "
        + ", ".join(f"{k} {v}" for k, v in QUICK.items())
        + " unless given",
    )
    harness.add_jit_compile_argument(parser)
    harness.add_threads_argument(parser, None)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument(
        "--json", help="also write the rows and every repeat's times here"
    )
    return parser


def main(argv=None):
    """Runs the benchmark; returns the rows of the table (as `rows`)."""
    args = parse_args(argv)
    # Other work on the machine shows in the wall-clock times: say how much.
    args.load = os.getloadavg()
    if args.threads:
        harness.limit_threads(args.threads)
    results = [
        benchmark(
            name,
            args.rules,
            args.repeats,
            args.steps,
            args.batch_size,
            args.jit_compile,
            args.warmup,
        )
        for name in args.models
    ]
    backend = keras.backend.backend()
    description = describe(args, results)
    report = f"{description}\n\n{table(results, backend)}\n"
    print(report)
    if args.out:
        harness.write_atomic(args.out, report)
    result_rows = rows(results, backend)
    if args.json:
        record = {
            "backend": backend,
            "description": description,
            "command": harness.command_line(
                "python benchmarks/step_time.py",
                sys.argv[1:] if argv is None else argv,
                backend,
            ),
            "rows": result_rows,
        }
        harness.write_atomic(args.json, json.dumps(record, indent=1) + "\n")
    return result_rows


if __name__ == "__main__":
    main()
