r"""Direct feedback alignment (dfa), drtp and the shallow control on digits.

Two ways to build a direct-feedback model:

1. `keras_fa.direct_feedback(model, "dfa")` rewires a Sequential model of any
   layers (here a small CNN with pooling and batch normalization);
2. by hand in the functional API: cut each hidden activation from the layers
   above with `keras_fa.BlockGradient` and hand it to `keras_fa.DirectFeedback`
   together with the logits.

Every model starts from the same seed and trains with Adam on scikit-learn's
8x8 digits; it prints a Markdown table of the test accuracies and, with
`--output`, writes it to a file with the command and the versions that made
it (docs/direct_feedback.md quotes `benchmarks/results/direct_feedback.md`,
written by the second command below).

    python examples/direct_feedback.py                     # 2-4 min on 2 cores
    KERAS_BACKEND=jax python examples/direct_feedback.py \
        --output benchmarks/results/direct_feedback.md
    python examples/direct_feedback.py --quick             # seconds: it runs
"""

import argparse
import importlib
import os
import sys
import time

# The models are small, so one thread per op costs little, and on a busy
# 2-core machine it keeps torch from running far slower, its threads waiting
# on each other. Set before keras imports a backend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402
from keras_fa import files  # noqa: E402

RULES = ("bp", "dfa", "drtp", "shallow")
MODELS = ("cnn", "functional mlp")
EPOCHS = 20
# --quick: one epoch on this many training examples.
QUICK_TRAIN = 128
TABLE_HEADER = "| model | rule | test accuracy |\n|---|---|---|"


def cnn():
    """A small CNN for 8x8 digits, in plain Keras layers."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def functional_mlp(feedback, seed=0):
    """The same recipe by hand: taps, BlockGradient, DirectFeedback."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    h1 = keras.layers.Dense(128, activation="relu")(x)
    h2 = keras.layers.Dense(128, activation="relu")(
        keras_fa.BlockGradient()(h1)
    )
    logits = keras.layers.Dense(10)(keras_fa.BlockGradient()(h2))
    outputs = keras_fa.DirectFeedback(feedback, seed=seed)([logits, h1, h2])
    # DirectFeedbackModel gives drtp the targets; for dfa and shallow a plain
    # keras.Model would do as well.
    return keras_fa.DirectFeedbackModel(inputs, outputs)


def train(name, feedback, data, epochs, seed):
    """Trains model `name` with rule `feedback`; returns its test accuracy."""
    (x_train, y_train), (x_test, y_test) = data
    # The same seed for every run: the same initial weights and batches.
    keras.utils.set_random_seed(seed)
    if name == "cnn":
        model = cnn()
        if feedback != "bp":
            model = keras_fa.direct_feedback(model, feedback, seed=seed)
        loss = "sparse_categorical_crossentropy"
    else:
        model = functional_mlp(feedback, seed)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return accuracy


def runs(rules=RULES):
    """The (model, rule) pairs trained, in order: the functional MLP is
    built for the direct rules only (with bp it is a plain MLP)."""
    return [
        (name, rule)
        for rule in RULES
        if rule in rules
        for name in MODELS
        if not (rule == "bp" and name == "functional mlp")
    ]


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--epochs",
        type=_positive,
        help=f"default: {EPOCHS} (1 with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=list(RULES),
        help="rules to train (default: all)",
    )
    parser.add_argument(
        "--output",
        help="also write the table, with the command and versions, to this "
        "Markdown file (replaced whole, or left as it was on failure)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one epoch on {QUICK_TRAIN} training examples: checks that it "
        "runs",
    )
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else EPOCHS
    if args.output is not None:
        directory = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.path.isdir(directory):
            parser.error(
                f"--output must be a file in an existing directory. "
                f"Received: {args.output!r}"
            )
    return args


def main(argv=None):
    """Runs the example with command-line arguments `argv`; returns the
    rows (dicts of model, rule and test accuracy)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_test = x_test.reshape(-1, 8, 8, 1)
    if args.quick:
        x_train, y_train = x_train[:QUICK_TRAIN], y_train[:QUICK_TRAIN]
    data = (x_train, y_train), (x_test, y_test)
    backend = keras.backend.backend()
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test examples; Adam "
        f"1e-3, {args.epochs} epochs, batch 32, seed {args.seed}, backend "
        f"{backend}\n"
    )
    print(TABLE_HEADER, flush=True)
    rows = []
    start = time.perf_counter()
    for name, rule in runs(args.rules):
        accuracy = train(name, rule, data, args.epochs, args.seed)
        rows.append({"model": name, "rule": rule, "accuracy": accuracy})
        print(row_line(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    if args.output is not None:
        command = " ".join(
            [f"KERAS_BACKEND={backend}", "python examples/direct_feedback.py"]
            + argv
        )
        versions = (
            f"keras {keras.__version__}, {backend} "
            f"{importlib.import_module(backend).__version__}"
        )
        text = (
            f"# `{command}`\n\n"
            f"digits: {len(x_train)} train / {len(x_test)} test examples; "
            f"Adam 1e-3, {args.epochs} epochs, batch 32, seed {args.seed}; "
            f"{versions}; {seconds:.0f} s in all.\n\n"
            + "\n".join([TABLE_HEADER] + [row_line(row) for row in rows])
            + "\n"
        )
        # Whole or not at all: an interrupted run leaves the old table.
        files.write_atomic(args.output, text)
        print(f"\nwrote {args.output}")
    return rows


def row_line(row):
    """One row of the results table."""
    return f"| {row['model']} | {row['rule']} | {row['accuracy']:.3f} |"


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer. Received: {text!r}"
        )
    return value


if __name__ == "__main__":
    main()
