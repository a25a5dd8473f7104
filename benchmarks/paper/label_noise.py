"""Label noise: fitting 20% flipped training labels, per learning rule.

    python -m benchmarks.paper.label_noise                       # full run
    python -m benchmarks.paper.label_noise --data-dir ~/tfds     # with MNIST
    python -m benchmarks.paper.label_noise --quick               # seconds

Robertson & Koyejo fit a random 4,000-example MNIST subset with 20% of its
labels flipped (benign overfitting) and compare the rules. Here each rule's
`keras_fa.models.mlp` (two hidden ReLU layers) is trained with Adam on a
training subset whose labels are flipped, each to another class drawn
uniformly, for a fraction `--noise` of its examples (exactly
`round(noise * n)` of them), long enough to fit it: 200 epochs on MNIST and
MNIST-1D, 600 on digits, about 6,400 updates of batch 128 each. For each
rule and seed the JSON records, before training, every `--eval-every`
epochs and at the end: accuracy on the noisy training labels, the fraction
of flipped examples memorised (predicted as their noisy label), training
accuracy on the clean labels (all examples, flipped ones, kept ones) and
test accuracy on the clean test labels.

Data: MNIST (a random `--train-size` subset of its training set drawn per
seed, the whole test set) when it is prepared in the TFDS directory
`--data-dir` (or `$TFDS_DATA_DIR`, `~/tensorflow_datasets`; nothing is
downloaded). Otherwise, with a printed message, the offline sets: MNIST-1D
(its 4,000 training examples, 1,000 test) and scikit-learn's digits (all
1,347 examples of its default training split, 450 test). The subset and the
flips are drawn from the seed, the same for every rule. `--quick` trains
bp, fa and dfa networks of 32-32 hidden units on 300 examples (of MNIST, or
of digits only) for 4 epochs.

Writes `results.json`, `summary.md`, and per data set
`accuracy_<set>.png` (bars: noisy-label training accuracy, memorised
fraction, test accuracy per rule) and `curves_<set>.png` (the same over
epochs, mean over seeds) under `--output` (default
`benchmarks/results/paper/label_noise/`; with `--quick`,
`runs/paper/label_noise-quick/`).
"""

import os
import time

import keras
import numpy as np

from benchmarks import harness
from keras_fa import datasets
from keras_fa import models

NAME = "label_noise"
DATASETS = ("auto", "mnist", "mnist1d", "digits")
FULL = {
    "rules": ("bp", "fa", "dfa", "usf", "frsf", "kp"),
    "datasets": ("auto",),
    "train_size": 4000,
    "epochs": None,  # per data set: EPOCHS
    "eval_every": 5,
    "hidden": (256, 256),
}
QUICK = {
    "rules": ("bp", "fa", "dfa"),
    "datasets": ("auto",),
    "train_size": 300,
    "epochs": 4,
    "eval_every": 2,
    "hidden": (32, 32),
}
SETTINGS = tuple(FULL)
QUICK_OUTPUT = harness.quick_output(NAME)
# Epochs of the full run: about 6,400 updates of batch 128 on every set
# (digits, with 1,347 examples, needs them to fit its flipped labels).
EPOCHS = {"mnist": 200, "mnist1d": 200, "digits": 600}
# Offline stand-ins for MNIST: all of them, or only digits in --quick.
OFFLINE = ("mnist1d", "digits")
QUICK_OFFLINE = ("digits",)
MEASURES = (
    "train_noisy",
    "memorised",
    "train_clean",
    "flipped_clean",
    "kept_clean",
    "test",
)


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace with every
    setting filled in (from `--quick`'s or the full run's defaults where
    not given)."""
    parser = _parser()
    args = harness.parse_paper_args(parser, argv, NAME)
    harness.fill_defaults(args, QUICK if args.quick else FULL)
    if not 0.0 < args.noise < 1.0:
        parser.error(f"--noise must be in (0, 1), got {args.noise}")
    if "auto" in args.datasets and len(args.datasets) > 1:
        parser.error("--datasets auto stands alone")
    return args


def _parser():
    parser = harness.paper_parser(NAME, __doc__.split("\n")[0])
    rules = models.rules()
    parser.add_argument(
        "--rules",
        type=harness.comma_list(allowed=rules, name="rule"),
        help="comma-separated, of "
        f"{','.join(rules)} (default {','.join(FULL['rules'])}; quick: "
        f"{','.join(QUICK['rules'])})",
    )
    parser.add_argument(
        "--datasets",
        type=harness.comma_list(allowed=DATASETS, name="data set"),
        help="comma-separated, of auto (MNIST if prepared, else the "
        "offline sets mnist1d and digits), mnist, mnist1d, digits "
        "(default auto; quick: auto, falling back to digits only)",
    )
    parser.add_argument(
        "--data-dir",
        help="TFDS data directory holding the prepared mnist",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.2,
        help="fraction of training labels flipped (default 0.2)",
    )
    parser.add_argument(
        "--train-size",
        type=harness.int_in(2),
        help="training examples drawn from MNIST (default 4000; quick: "
        "300); the offline sets use at most this many of theirs",
    )
    parser.add_argument(
        "--epochs",
        type=harness.positive_int,
        help="training epochs on every data set (default: mnist and "
        "mnist1d 200, digits 600; quick: 4)",
    )
    parser.add_argument(
        "--eval-every",
        type=harness.positive_int,
        help="epochs between measurements (default 5; quick: 2)",
    )
    parser.add_argument(
        "--hidden",
        type=harness.positive_ints,
        help="units of the hidden layers (default 256,256; quick: 32,32)",
    )
    parser.add_argument("--batch-size", type=harness.positive_int, default=128)
    parser.add_argument(
        "--learning-rate", type=harness.positive_float, default=1e-3
    )
    return parser


def flip_labels(labels, fraction, num_classes, seed):
    """Flips `round(fraction * n)` labels, drawn at random, each to another
    class drawn uniformly.

    Args:
        labels: integer labels, shape `(n,)`, in `[0, num_classes)`.
        fraction: the fraction of labels to flip, in `[0, 1]`.
        num_classes: the number of classes (>= 2).
        seed: integer seed (or sequence of them) of the draw.

    Returns:
        `(noisy, flipped)`: the new int64 labels and the boolean mask of the
        flipped examples.
    """
    labels = np.asarray(labels).astype("int64")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    count = int(round(fraction * len(labels)))
    chosen = rng.choice(len(labels), size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[chosen] = True
    return noisy, flipped


def load_data(args, say=print):
    """Returns `{name: ((x_train, y_train), (x_test, y_test))}` for the data
    sets asked for; `auto` falls back to the offline sets, with a message,
    when MNIST is not prepared."""
    names = list(args.datasets)
    data = {}
    if names == ["auto"]:
        try:
            data["mnist"] = _load_mnist(args.data_dir)
            return data
        except (datasets.DatasetUnavailableError, ImportError) as error:
            offline = QUICK_OFFLINE if args.quick else OFFLINE
            reason = str(error).split(". ")[0]
            say(
                f"MNIST is not available ({reason}); falling back to the "
                f"offline data sets: {', '.join(offline)}."
            )
            names = list(offline)
    for name in names:
        if name == "mnist":
            try:
                data[name] = _load_mnist(args.data_dir)
            except (datasets.DatasetUnavailableError, ImportError) as error:
                raise SystemExit(str(error)) from error
        elif name == "mnist1d":
            data[name] = datasets.load_mnist1d()
        else:
            data[name] = datasets.load_digits()
    return data


def _load_mnist(data_dir):
    task = datasets.load("mnist", data_dir=data_dir, download=False)
    return task.arrays("train"), task.arrays("test")


def training_subset(x, y, size, seed):
    """Returns `size` training examples drawn at random from `seed` (all of
    them, shuffled, if there are no more than `size`)."""
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(y))[:size]
    return x[order], y[order]


def accuracies(model, x_train, clean, noisy, flipped, x_test, y_test):
    """Returns the measures of `MEASURES` for `model`'s predictions."""
    # One call: the model is compiled for prediction once.
    predicted = _predict(model, np.concatenate([x_train, x_test]))
    train, test = predicted[: len(x_train)], predicted[len(x_train) :]
    return {
        "train_noisy": np.mean(train == noisy),
        "memorised": np.mean(train[flipped] == noisy[flipped]),
        "train_clean": np.mean(train == clean),
        "flipped_clean": np.mean(train[flipped] == clean[flipped]),
        "kept_clean": np.mean(train[~flipped] == clean[~flipped]),
        "test": np.mean(test == y_test),
    }


def _predict(model, x):
    logits = model.predict(x, batch_size=len(x), verbose=0)
    return np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)


class _Measure(keras.callbacks.Callback):
    """Records `accuracies` before training and every `every` epochs."""

    def __init__(self, every, epochs, data):
        super().__init__()
        self.every, self.epochs, self.data = every, epochs, data
        self.curves = {"epoch": [], **{key: [] for key in MEASURES}}

    def record(self, epoch):
        self.curves["epoch"].append(epoch)
        for key, value in accuracies(self.model, *self.data).items():
            # Fractions of at most 60,000 examples: 6 decimals are exact
            # enough and keep the JSON small.
            self.curves[key].append(round(float(value), 6))

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every == 0 or done == self.epochs:
            self.record(done)


def run_cell(args, name, data, rule, seed):
    """Trains one rule on one data set with one seed; returns its record."""
    (x_all, y_all), (x_test, y_test) = data
    x_train, clean = training_subset(x_all, y_all, args.train_size, seed)
    num_classes = int(max(y_all.max(), y_test.max())) + 1
    noisy, flipped = flip_labels(clean, args.noise, num_classes, [seed, 2])
    epochs = args.epochs or EPOCHS[name]
    keras.utils.set_random_seed(seed)
    model = models.mlp(
        x_train.shape[1:],
        num_classes,
        feedback=rule,
        hidden=tuple(args.hidden),
        seed=seed,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    measure = _Measure(
        args.eval_every,
        epochs,
        (x_train, clean, noisy, flipped, x_test, y_test),
    )
    measure.set_model(model)
    measure.record(0)
    start = time.perf_counter()
    history = model.fit(
        x_train,
        noisy,
        batch_size=args.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[measure],
    )
    seconds = time.perf_counter() - start
    return {
        "dataset": name,
        "rule": rule,
        "seed": seed,
        "num_train": len(clean),
        "num_test": len(y_test),
        "num_classes": num_classes,
        "num_flipped": int(flipped.sum()),
        "epochs": epochs,
        "flipped_to_other_class": bool(
            np.all(noisy[flipped] != clean[flipped])
        ),
        **_outcome(measure.curves, history.history["loss"]),
        "seconds": seconds,
    }


def _outcome(curves, losses):
    # The record's measures: final, best, when memorised, the curves and
    # the training loss at the measured epochs (4 significant digits).
    return {
        "final": {key: curves[key][-1] for key in MEASURES},
        "best_test": max(curves["test"]),
        "best_test_epoch": curves["epoch"][int(np.argmax(curves["test"]))],
        "memorised_epoch": _first_epoch(curves, "memorised", 0.9),
        "curves": curves,
        "loss": [
            float(f"{losses[epoch - 1]:.4g}") for epoch in curves["epoch"][1:]
        ],
    }


def _first_epoch(curves, key, level):
    # The first measured epoch at which curves[key] reached level, or None.
    for epoch, value in zip(curves["epoch"], curves[key]):
        if value >= level:
            return epoch
    return None


def run(args, say=print):
    """Runs every (data set, rule, seed); returns the results dict."""
    started = time.perf_counter()
    data = load_data(args, say)
    cells = []
    for name, arrays in data.items():
        for rule in args.rules:
            for seed in range(args.seeds):
                cell = run_cell(args, name, arrays, rule, seed)
                cells.append(cell)
                final = cell["final"]
                say(
                    f"{name} {rule:>5} seed {seed}: train (noisy) "
                    f"{final['train_noisy']:.3f}, memorised "
                    f"{final['memorised']:.3f}, test {final['test']:.3f}, "
                    f"{cell['seconds']:.1f} s"
                )
    return {
        "experiment": NAME,
        "config": {
            "seeds": args.seeds,
            "quick": args.quick,
            "noise": args.noise,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "optimizer": "adam",
            "data_dir": args.data_dir,
            **{name: getattr(args, name) for name in SETTINGS},
        },
        "datasets": {
            name: {
                "num_train": next(
                    c["num_train"] for c in cells if c["dataset"] == name
                ),
                "num_flipped": next(
                    c["num_flipped"] for c in cells if c["dataset"] == name
                ),
                "num_test": len(arrays[1][1]),
                "epochs": next(
                    c["epochs"] for c in cells if c["dataset"] == name
                ),
            }
            for name, arrays in data.items()
        },
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "cells": cells,
        "summary": summarize(cells),
        "seconds": time.perf_counter() - started,
    }


def summarize(cells):
    """Returns one row per (data set, rule): mean and std over seeds of the
    final measures, of the best test accuracy over the epochs and of the
    epoch it was measured at."""
    rows = []
    keys = []
    for cell in cells:
        key = (cell["dataset"], cell["rule"])
        if key not in keys:
            keys.append(key)
    for name, rule in keys:
        group = [c for c in cells if (c["dataset"], c["rule"]) == (name, rule)]
        row = {"dataset": name, "rule": rule, "seeds": len(group)}
        for measure in MEASURES:
            row[measure] = list(
                harness.mean_std([c["final"][measure] for c in group])
            )
        for key in ("best_test", "best_test_epoch", "memorised_epoch"):
            row[key] = list(harness.mean_std([c[key] for c in group]))
        row["memorised_all_seeds"] = all(
            c["memorised_epoch"] is not None for c in group
        )
        rows.append(row)
    return rows


def _pm(pair):
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def _epochs(row):
    mean, std = row["memorised_epoch"]
    if not row["memorised_all_seeds"]:
        return "not by every seed"
    return f"{mean:.0f} ± {std:.0f}"


def summary_markdown(results):
    """Returns the summary as Markdown tables, one per data set."""
    config = results["config"]
    lines = [
        f"{config['noise']:.0%} of the training labels flipped; "
        f"mlp {'-'.join(map(str, config['hidden']))}, Adam "
        f"{config['learning_rate']:g}, batch {config['batch_size']}; "
        f"{config['seeds']} seeds; backend "
        f"{results['backend']}.",
    ]
    for name, sizes in results["datasets"].items():
        lines += [
            "",
            f"**{name}**: {sizes['num_train']} training examples "
            f"({sizes['num_flipped']} flipped), {sizes['num_test']} test; "
            f"{sizes['epochs']} epochs.",
            "",
            "| rule | train acc. (noisy labels) | flipped memorised "
            "| train acc. (clean labels) | clean acc. on flipped "
            "| test acc. | best test acc. | at epoch "
            "| 90% of flips memorised at epoch |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in results["summary"]:
            if row["dataset"] != name:
                continue
            lines.append(
                f"| {row['rule']} | {_pm(row['train_noisy'])} | "
                f"{_pm(row['memorised'])} | {_pm(row['train_clean'])} | "
                f"{_pm(row['flipped_clean'])} | {_pm(row['test'])} | "
                f"{_pm(row['best_test'])} | "
                f"{row['best_test_epoch'][0]:.0f} ± "
                f"{row['best_test_epoch'][1]:.0f} | "
                f"{_epochs(row)} |"
            )
    return "\n".join(lines) + "\n"


def plot(results, output):
    """Writes `accuracy_<set>.png` and `curves_<set>.png` per data set;
    returns their paths."""
    paths = []
    for name in results["datasets"]:
        rows = [r for r in results["summary"] if r["dataset"] == name]
        fig = _accuracy_bars(results, name, rows)
        paths.append(
            harness.write_png(fig, os.path.join(output, f"accuracy_{name}.png"))
        )
        fig = _curves(results, name, [r["rule"] for r in rows])
        paths.append(
            harness.write_png(fig, os.path.join(output, f"curves_{name}.png"))
        )
    return paths


#: The bars of `accuracy_<set>.png`: (measure, label); the first three are
#: also the panels of `curves_<set>.png`.
BARS = (
    ("train_noisy", "train (noisy labels)"),
    ("memorised", "flipped memorised"),
    ("test", "test (clean labels)"),
    ("best_test", "best test over epochs"),
)


def _accuracy_bars(results, name, rows):
    # The final measures of data set `name`, a group of bars per rule.
    rules = [r["rule"] for r in rows]
    fig = harness.figure(max(6.0, 1.0 + 1.3 * len(rules)), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / len(BARS)
    for index, (key, label) in enumerate(BARS):
        positions = (
            np.arange(len(rules)) + (index - (len(BARS) - 1) / 2) * width
        )
        ax.bar(
            positions,
            [r[key][0] for r in rows],
            width,
            yerr=[r[key][1] for r in rows],
            capsize=2,
            label=label,
        )
    ax.set_xticks(np.arange(len(rules)), rules)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy / fraction")
    ax.set_title(
        f"{name}: {results['config']['noise']:.0%} flipped labels, "
        f"after {results['datasets'][name]['epochs']} epochs"
    )
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=2,
    )
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _curves(results, name, rules):
    # The measures of data set `name` over the epochs, mean over seeds, a
    # panel per measure and a line per rule.
    fig = harness.figure(11.0, 3.6)
    curves = BARS[:3]  # the best test accuracy is not a curve
    axes = fig.subplots(1, len(curves), sharey=True)
    for ax, (key, label) in zip(axes, curves):
        for index, rule in enumerate(rules):
            group = [
                c
                for c in results["cells"]
                if c["dataset"] == name and c["rule"] == rule
            ]
            epochs = group[0]["curves"]["epoch"]
            values = np.mean([c["curves"][key] for c in group], axis=0)
            ax.plot(epochs, values, color=f"C{index}", label=rule)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{name} (mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    """Runs the experiment and writes its results; returns them."""
    args = parse_args(argv)
    return harness.write_results(args.output, run(args), summary_markdown, plot)


if __name__ == "__main__":
    main()
