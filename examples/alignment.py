"""Watch feedback alignment happen: per-layer angles while an MLP trains.

For each rule, an MLP of `keras_fa.FADense` layers trains on a data set that
needs no download, with `keras_fa.callbacks.AlignmentCallback` measuring on a
fixed probe batch, every `--every` steps and at each epoch end:

- the angle between each layer's forward and feedback weights,
- the angles between the rule's error signals / weight updates and the true
  (backprop) ones,
- the conservation quantity Q of Robertson & Koyejo and its drift.

The epoch values land in `History` and in a CSV file (`CSVLogger`) with no
extra code; `keras_fa.plot_alignment` writes the figures. With `--loop` the
same runs use `keras_fa.train`, a training loop that records the weight
measures at every step.

    python examples/alignment.py                      # digits, fa and usf
    python examples/alignment.py --rules bp fa kp --epochs 30 --out runs
    KERAS_BACKEND=jax python examples/alignment.py --loop

It writes `<out>/<rule>/log.csv` and the figures next to it, and refuses
(before training) to write over those of an earlier run unless given
`--overwrite`.
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see examples/demo.py

import keras  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402
from keras_fa import files  # noqa: E402

LOADERS = {"mnist1d": datasets.load_mnist1d, "digits": datasets.load_digits}
# The layer-wise rules: the MLP is made of FADense layers.
RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "wm")


def build_mlp(n_features, n_classes, feedback, seed):
    """Returns a compiled 2-hidden-layer ReLU MLP trained by `feedback`."""
    model = keras.Sequential(
        [
            keras.Input((n_features,)),
            # Named: the same figure and CSV column names on every run.
            keras_fa.FADense(
                128,
                activation="relu",
                feedback=feedback,
                seed=seed,
                name="hidden_1",
            ),
            keras_fa.FADense(
                128,
                activation="relu",
                feedback=feedback,
                seed=seed + 1,
                name="hidden_2",
            ),
            keras_fa.FADense(
                n_classes, feedback=feedback, seed=seed + 2, name="output"
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def run(rule, data, args):
    """Trains one rule; returns its history (per epoch and per step)."""
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = build_mlp(x_train.shape[1], int(y_train.max()) + 1, rule, args.seed)
    probe = (x_test[:256], y_test[:256])
    directory = os.path.join(args.out, rule)
    os.makedirs(directory, exist_ok=True)
    if args.loop:
        return keras_fa.train(
            model,
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=32,
            every=args.every,
            probe_data=probe,
            validation_data=(x_test, y_test),
            seed=args.seed,
            verbose=0,
        )
    align = keras_fa.callbacks.AlignmentCallback(probe, every=args.every)
    history = model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        # The alignment callback goes first: it adds to the logs that
        # CSVLogger (and History, TensorBoard) then record.
        callbacks=[
            align,
            keras.callbacks.CSVLogger(os.path.join(directory, "log.csv")),
        ],
        verbose=0,
    )
    history.steps = align.steps  # per-step curves for the figures
    return history


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace. Refuses,
    before any training, an `--out` whose rule directories cannot be made
    and written (a path through a file), or hold an earlier run's log or
    figures, unless `--overwrite`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="digits")
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=RULES,
        default=["fa", "usf"],
        help="layer-wise rules to train (default: fa usf)",
    )
    parser.add_argument("--epochs", type=_positive, default=10)
    parser.add_argument(
        "--every",
        type=_positive,
        default=20,
        help="steps between measurements (default: 20)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default="alignment_figures",
        help="directory of the logs and figures, one subdirectory a rule",
    )
    parser.add_argument(
        "--loop", action="store_true", help="use keras_fa.train, not fit"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the logs and figures of an earlier run in --out",
    )
    args = parser.parse_args(argv)
    args.rules = list(dict.fromkeys(args.rules))  # each rule once
    for rule in args.rules:
        directory = os.path.join(args.out, rule)
        problem = files.output_problem(directory, directory=True)
        if problem:
            parser.error(
                f"argument --out: cannot write {directory!r}: {problem}"
            )
        earlier = sorted(
            name
            for name in (
                os.listdir(directory) if os.path.isdir(directory) else []
            )
            if name == "log.csv" or name.endswith(".png")
        )
        if earlier and not args.overwrite:
            parser.error(
                f"{directory} already holds an earlier run "
                f"({', '.join(earlier)}). Give another --out, or --overwrite "
                "to replace it."
            )
    return args


def main(argv=None):
    """Runs the example with command-line arguments `argv`; returns the
    history of each rule, by rule."""
    args = parse_args(argv)
    data = LOADERS[args.dataset]()
    print(
        f"{args.dataset}, MLP 128-128, Adam 1e-3, {args.epochs} epochs, "
        f"backend {keras.backend.backend()}; angles in degrees at the end\n"
    )
    print("| rule | val accuracy | layer | weight | signal | update |")
    print("|---|---|---|---|---|---|")
    histories = {}
    for rule in args.rules:
        history = histories[rule] = run(rule, data, args)
        log = history.history
        layers = keras_fa.alignment.Alignment(history.model).layer_names
        for name in layers[:-1]:  # the output layer's angles are 0
            print(
                f"| {rule} | {log['val_accuracy'][-1]:.3f} | {name} | "
                f"{log[f'{name}/weight_angle'][-1]:.1f} | "
                f"{log[f'{name}/signal_angle'][-1]:.1f} | "
                f"{log[f'{name}/update_angle'][-1]:.1f} |",
                flush=True,
            )
        keras_fa.plot_alignment(
            history, os.path.join(args.out, rule), overwrite=args.overwrite
        )
    print(f"\nFigures and logs: {os.path.abspath(args.out)}/<rule>/")
    return histories


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
