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
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see examples/demo.py

import keras  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402

LOADERS = {"mnist1d": datasets.load_mnist1d, "digits": datasets.load_digits}


def build_mlp(n_features, n_classes, feedback, seed):
    """Returns a compiled 2-hidden-layer ReLU MLP trained by `feedback`."""
    model = keras.Sequential(
        [
            keras.Input((n_features,)),
            keras_fa.FADense(
                128, activation="relu", feedback=feedback, seed=seed
            ),
            keras_fa.FADense(
                128, activation="relu", feedback=feedback, seed=seed + 1
            ),
            keras_fa.FADense(n_classes, feedback=feedback, seed=seed + 2),
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(LOADERS), default="digits")
    parser.add_argument("--rules", nargs="+", default=["fa", "usf"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="alignment_figures")
    parser.add_argument(
        "--loop", action="store_true", help="use keras_fa.train, not fit"
    )
    args = parser.parse_args(argv)
    for rule in args.rules:
        keras_fa.feedback.get(rule)  # a clear error before any training
    data = LOADERS[args.dataset]()
    print(
        f"{args.dataset}, MLP 128-128, Adam 1e-3, {args.epochs} epochs, "
        f"backend {keras.backend.backend()}; angles in degrees at the end\n"
    )
    print("| rule | val accuracy | layer | weight | signal | update |")
    print("|---|---|---|---|---|---|")
    for rule in args.rules:
        history = run(rule, data, args)
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
        keras_fa.plot_alignment(history, os.path.join(args.out, rule))
    print(f"\nFigures and logs: {os.path.abspath(args.out)}/<rule>/")


if __name__ == "__main__":
    main()
