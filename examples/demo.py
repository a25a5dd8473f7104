"""Train one MLP with every feedback rule and compare test accuracies.

The same network (two hidden layers of 256 ReLU units, built from
`keras_fa.FADense`) starts from the same weights for every rule and trains
with Adam on a data set that needs no download: the seven layer-wise rules
(bp, fa, usf, brsf, frsf, kp, wm) through `FADense(feedback=rule)`, and the
three direct ones (dfa, drtp, shallow) as the same network of plain Keras
layers through `keras_fa.direct_feedback`, which sends the output error
(dfa), the one-hot target (drtp) or nothing (shallow, the control: only the
output layer learns) straight to each hidden layer. It prints a Markdown
table with each rule's test accuracy and, after training, the mean angle
between the hidden layers' updates and the true (backprop) gradient on 500
test examples (`keras_fa.alignment`): 0 for bp, below 90 where the rule's
updates descend the loss, n/a for shallow, whose hidden layers get no
update. With `--output` it also writes the table, with the command that made
it, to a Markdown file.

    python examples/demo.py                      # MNIST-1D, 1-3 minutes
    python examples/demo.py --dataset digits
    python examples/demo.py --rules bp fa dfa    # some of the rules
    KERAS_BACKEND=jax python examples/demo.py    # or torch
"""

import argparse
import math
import os
import sys
import time

# The network is small, so one thread per op costs little (tensorflow and jax
# ran as fast), and on a busy 2-core machine it kept torch from running up to
# 10x slower, its threads waiting on each other. Set before keras imports a
# backend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402
from keras_fa import files  # noqa: E402
from keras_fa.direct import DIRECT_RULES  # noqa: E402

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm", *DIRECT_RULES)
LOADERS = {"mnist1d": datasets.load_mnist1d, "digits": datasets.load_digits}
# Settings with which backprop is near its best test accuracy on each set
# (the MNIST-1D paper reports about 68% for an MLP) in about 15 s a rule.
DEFAULTS = {
    "mnist1d": {"epochs": 100, "learning_rate": 3e-3, "batch_size": 100},
    "digits": {"epochs": 20, "learning_rate": 1e-3, "batch_size": 32},
}


def build_mlp(n_features, n_classes, feedback, hidden=(256, 256)):
    """Returns an MLP whose Dense layers all use the feedback rule."""
    layers = [keras.Input((n_features,))]
    for units in hidden:
        layers.append(
            keras_fa.FADense(units, activation="relu", feedback=feedback)
        )
    layers.append(keras_fa.FADense(n_classes, feedback=feedback))
    return keras.Sequential(layers)


def train_and_evaluate(data, feedback, epochs, learning_rate, batch_size, seed):
    """Trains a fresh MLP with `feedback`; returns (test accuracy, mean
    update angle of the hidden layers in degrees, seconds)."""
    (x_train, y_train), (x_test, y_test) = data
    # The same seed for every rule: the same initial forward weights and the
    # same batches, so the rules differ only in their backward pass.
    keras.utils.set_random_seed(seed)
    if feedback in DIRECT_RULES:
        # Direct feedback: plain Keras layers, the signal sent straight from
        # the output to each hidden layer.
        model = keras_fa.direct_feedback(
            build_mlp(x_train.shape[1], int(y_train.max()) + 1, "bp"),
            feedback,
        )
    else:
        model = build_mlp(x_train.shape[1], int(y_train.max()) + 1, feedback)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    measures = keras_fa.alignment.measure(model, x_test[:500], y_test[:500])
    hidden = keras_fa.alignment.Alignment(model).layer_names[:-1]
    # NaN where no update reaches the hidden layers (shallow).
    angle = sum(measures[f"{name}/update_angle"] for name in hidden)
    return accuracy, angle / len(hidden), seconds


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace, with the
    data set's defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="mnist1d")
    parser.add_argument(
        "--epochs",
        type=_positive(int),
        help="default: 100 (mnist1d), 20 (digits)",
    )
    parser.add_argument(
        "--learning-rate", type=_positive(float), help="default: 3e-3 / 1e-3"
    )
    parser.add_argument(
        "--batch-size", type=_positive(int), help="default: 100 / 32"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=list(RULES),
        help="feedback rules to train (default: all)",
    )
    parser.add_argument(
        "--output",
        help="also write the table, with the command that made it, to this "
        "Markdown file (replaced whole, or left as it was on failure)",
    )
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is not None:
        directory = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.path.isdir(directory):
            parser.error(
                "--output must be a file in an existing directory. "
                f"Received: {args.output!r}"
            )
    return args


def main(argv=None):
    """Runs the demo with command-line arguments `argv`; returns the rows
    (dicts of rule, test accuracy, update angle and seconds)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    data = LOADERS[args.dataset]()
    (x_train, _), (x_test, _) = data
    lines = [
        f"{args.dataset}: {len(x_train)} train / {len(x_test)} test "
        f"examples; MLP {x_train.shape[1]}-256-256-10, Adam lr "
        f"{args.learning_rate}, {args.epochs} epochs, batch "
        f"{args.batch_size}, seed {args.seed}, backend "
        f"{keras.backend.backend()}",
        "",
        "| rule | test accuracy | update angle (deg) | train time (s) |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    start = time.perf_counter()
    for rule in args.rules:
        accuracy, angle, seconds = train_and_evaluate(
            data,
            rule,
            args.epochs,
            args.learning_rate,
            args.batch_size,
            args.seed,
        )
        rows.append(
            {
                "rule": rule,
                "accuracy": accuracy,
                "angle": angle,
                "seconds": seconds,
            }
        )
        angle = "n/a" if math.isnan(angle) else f"{angle:.1f}"
        lines.append(f"| {rule} | {accuracy:.3f} | {angle} | {seconds:.1f} |")
        print(lines[-1], flush=True)
    total = time.perf_counter() - start
    print(f"\n{total:.0f} s in all")
    if args.output is not None:
        command = " ".join(
            [f"KERAS_BACKEND={keras.backend.backend()}"]
            + ["python examples/demo.py"]
            + argv
        )
        text = f"# `{command}`\n\n" + "\n".join(lines)
        # Whole or not at all: an interrupted run leaves the old table.
        files.write_atomic(args.output, f"{text}\n\n{total:.0f} s in all.\n")
        print(f"wrote {args.output}")
    return rows


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(
                f"must be a positive {kind.__name__}. Received: {text!r}"
            )
        return value

    return parse


if __name__ == "__main__":
    main()
