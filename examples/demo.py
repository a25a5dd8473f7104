"""Train one MLP with every feedback rule and compare test accuracies.

The same network (two hidden layers of 256 ReLU units, built from
`keras_fa.FADense`) starts from the same weights for every rule and trains
with Adam on a data set that needs no download. The dfa row trains the same
network of plain Keras layers through `keras_fa.direct_feedback`, which sends
the output error straight to each hidden layer. It prints a Markdown table
with each rule's test accuracy and, after training, the mean angle between
the hidden layers' updates and the true (backprop) gradient on 500 test
examples (`keras_fa.alignment`): 0 for bp, below 90 where the rule's updates
descend the loss.

    python examples/demo.py                      # MNIST-1D, 1-2 minutes
    python examples/demo.py --dataset digits
    KERAS_BACKEND=jax python examples/demo.py    # or torch
"""

import argparse
import os
import time

# The network is small, so one thread per op costs little (tensorflow and jax
# ran as fast), and on a busy 2-core machine it kept torch from running up to
# 10x slower, its threads waiting on each other. Set before keras imports a
# backend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402

RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "dfa")
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
    if feedback == "dfa":
        # Direct feedback: plain Keras layers, the error sent straight from
        # the output to each hidden layer.
        model = keras_fa.direct_feedback(
            build_mlp(x_train.shape[1], int(y_train.max()) + 1, "bp"), "dfa"
        )
    else:
        model = build_mlp(x_train.shape[1], int(y_train.max()) + 1, feedback)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    measures = keras_fa.alignment.measure(model, x_test[:500], y_test[:500])
    hidden = keras_fa.alignment.Alignment(model).layer_names[:-1]
    angle = sum(measures[f"{name}/update_angle"] for name in hidden)
    return accuracy, angle / len(hidden), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="mnist1d")
    parser.add_argument(
        "--epochs", type=int, help="default: 100 (mnist1d), 20 (digits)"
    )
    parser.add_argument(
        "--learning-rate", type=float, help="default: 3e-3 / 1e-3"
    )
    parser.add_argument("--batch-size", type=int, help="default: 100 / 32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=list(RULES),
        help="feedback rules to train (default: all)",
    )
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.dataset]
    epochs = args.epochs or defaults["epochs"]
    learning_rate = args.learning_rate or defaults["learning_rate"]
    batch_size = args.batch_size or defaults["batch_size"]

    data = LOADERS[args.dataset]()
    (x_train, _), (x_test, _) = data
    print(
        f"{args.dataset}: {len(x_train)} train / {len(x_test)} test examples; "
        f"MLP {x_train.shape[1]}-256-256-10, Adam lr {learning_rate}, "
        f"{epochs} epochs, batch {batch_size}, seed {args.seed}, "
        f"backend {keras.backend.backend()}\n"
    )
    print("| rule | test accuracy | update angle (deg) | train time (s) |")
    print("|---|---|---|---|")
    for rule in args.rules:
        accuracy, angle, seconds = train_and_evaluate(
            data, rule, epochs, learning_rate, batch_size, args.seed
        )
        print(
            f"| {rule} | {accuracy:.3f} | {angle:.1f} | {seconds:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
