r"""Train a small transformer with feedback rules on sequences and text.

`keras_fa.models.transformer` (two pre-norm blocks, 32 wide, 2 heads, MLPs
of 64 GELU units) learns three tasks that need no download, once per rule,
from the same initial weights:

- `mnist1d`: MNIST-1D's 40 features read as a sequence of 40 scalar tokens,
  averaged into 10 class logits (chance: 10%);
- `digits`: scikit-learn's 8x8 digits as a sequence of 8 rows of 8 pixels;
- `lm`: a character-level language model of the standard library's
  docstrings (`keras_fa.datasets.load_stdlib_text`), 32 characters a
  sequence, causal attention and logits per position.

Layer-wise rules (`fa`, `usf`, `kp`, `wm`...) put every kernel of the
network on the rule (the attention projections too). Direct rules (`dfa`,
`shallow`, `drtp`) send the output error straight to the output of each
block (per position for the language model); inside a block the error
travels by backprop. For every task it prints a Markdown table with each
rule's test accuracy (test perplexity for the language model), the mean
update angle of each block's kernels (the angle between the rule's weight
update and the true gradient, on a fixed batch of test examples after
training: 0 for backprop, 90 for no alignment) and the training time.

It writes the loss and update-angle curves to `transformer.png` and the
tables, headed by the command that made them, to `transformer_example.md`,
in `--output-dir` (default `runs/transformer_example/` in the current
directory) or where `--figure` and `--table` say. It never replaces a file
unless given `--overwrite`: an output path that holds a file, or that
cannot be written (a path through a file), is refused before any training.
The figure and table of docs/transformers.md come from the last command
below.

    python examples/transformer.py                   # 4-5 min on 2 cores
    python examples/transformer.py --tasks digits --rules bp fa
    KERAS_BACKEND=torch python examples/transformer.py --output-dir runs/torch
    KERAS_BACKEND=jax python examples/transformer.py \
        --figure docs/figures/transformer.png \
        --table benchmarks/results/transformer_example.md --overwrite
"""

import argparse
import math
import os
import shlex
import sys
import time
import warnings

# The network is small, so one thread per op costs little, and on a busy
# 2-core machine it keeps torch from running far slower, its threads
# waiting on each other. Set before keras imports a backend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa import datasets  # noqa: E402
from keras_fa import files  # noqa: E402

FIGURE = "transformer.png"
TABLE = "transformer_example.md"
# Where a run writes by default: a directory of its own, never the
# committed figure and results.
OUTPUT_DIR = os.path.join("runs", "transformer_example")
# The network of every task; `intermediate_dim` is twice `hidden_dim`.
ARCHITECTURE = {
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
}
CLASSIFIER_RULES = ("bp", "fa", "usf", "kp", "wm", "dfa", "shallow")
SEQUENCE_LENGTH = 32
# Settings with which backprop learns each task well in at most about 25 s
# a rule on two CPU cores. The language model's test set is the last 10%
# of its windows.
TASKS = {
    "mnist1d": {
        "title": "MNIST-1D, a sequence of 40 scalar tokens",
        "epochs": 20,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "rules": CLASSIFIER_RULES,
    },
    "digits": {
        "title": "digits, a sequence of 8 rows of 8 pixels",
        "epochs": 20,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "rules": CLASSIFIER_RULES,
    },
    "lm": {
        "title": (
            f"character-level language model, {SEQUENCE_LENGTH} characters "
            "of standard-library docstrings"
        ),
        "epochs": 10,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "rules": ("bp", "fa", "dfa"),
    },
}
PROBE_SIZE = {"mnist1d": 256, "digits": 256, "lm": 64}
# --quick: one epoch on a few examples, to check that everything runs.
QUICK_TRAIN, QUICK_TEST, QUICK_PROBE = 128, 64, 32


def load(task):
    """Returns `((x_train, y_train), (x_test, y_test))` of `task` and the
    arguments of `keras_fa.models.transformer` that read it."""
    if task == "mnist1d":
        return datasets.load_mnist1d(), {"input_shape": (40,)}
    if task == "digits":
        (x, y), (x_test, y_test) = datasets.load_digits()
        data = (x.reshape(-1, 8, 8), y), (x_test.reshape(-1, 8, 8), y_test)
        return data, {"input_shape": (8, 8)}
    return datasets.load_stdlib_text(SEQUENCE_LENGTH), {
        "input_shape": (SEQUENCE_LENGTH,),
        "vocabulary_size": datasets.STDLIB_TEXT_VOCABULARY,
        "head": "token",
        "use_causal_mask": True,
    }


def transformer_blocks(model, kernel_paths):
    """Returns, for each block of a `keras_fa.models.transformer`, the
    paths of its kernels among `kernel_paths` (alignment keys such as
    `"fa_multi_head_attention/query"`).

    A block runs from its attention layer to its second residual `Add`:
    found in the model's graph, in order, not by layer names (which
    depend on what else the Keras session built).
    """
    owner, blocks, adds = {}, 0, 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            blocks += 1
        if isinstance(layer, keras.layers.Add):
            adds += 1
        elif blocks and adds < 2 * blocks:
            owner[layer.name] = blocks - 1
    kernels = [[] for _ in range(blocks)]
    for path in kernel_paths:
        block = owner.get(path.split("/")[0])
        if block is not None:
            kernels[block].append(path)
    return kernels


def block_angles(steps, blocks):
    """Returns, per block, its mean update angle at each measured step
    (NaN where none of its kernels has one)."""
    curves = []
    for paths in blocks:
        values = np.array(
            [steps[f"{path}/update_angle"] for path in paths], dtype=float
        )
        with warnings.catch_warnings():
            # nanmean warns on an all-NaN column; NaN is the answer there.
            warnings.simplefilter("ignore", RuntimeWarning)
            curves.append(np.nanmean(values, axis=0))
    return curves


def train(task, rule, data, model_args, settings, seed, probe_size):
    """Trains a fresh transformer on `task` with `rule`; returns a row."""
    (x, y), (x_test, y_test) = data
    keras.backend.clear_session()
    # The same seed for every rule: the same initial forward weights and
    # the same batches, so the rules differ only in their backward pass.
    keras.utils.set_random_seed(seed)
    num_classes = datasets.STDLIB_TEXT_VOCABULARY if task == "lm" else 10
    model = keras_fa.models.transformer(
        num_classes=num_classes,
        feedback=rule,
        seed=seed,
        **model_args,
        **ARCHITECTURE,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[] if task == "lm" else ["accuracy"],
    )
    steps_per_epoch = math.ceil(len(x) / settings["batch_size"])
    # Measured at the start and at the end of every epoch.
    align = keras_fa.callbacks.AlignmentCallback(
        (x_test[:probe_size], y_test[:probe_size]),
        every=steps_per_epoch,
        measures=["update_angle"],
    )
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=settings["batch_size"],
        epochs=settings["epochs"],
        callbacks=[align],
        verbose=0,
    )
    seconds = time.perf_counter() - start
    scores = model.evaluate(
        x_test, y_test, batch_size=256, verbose=0, return_dict=True
    )
    blocks = transformer_blocks(model, align.alignment.layer_names)
    curves = block_angles(align.steps, blocks)
    row = {
        "task": task,
        "rule": rule,
        "block_angles": [float(curve[-1]) for curve in curves],
        "seconds": seconds,
        "loss_curve": [float(v) for v in history.history["loss"]],
        "angle_epochs": [s / steps_per_epoch for s in align.steps["step"]],
        "angle_curves": [[float(v) for v in curve] for curve in curves],
        "block_kernels": blocks,
    }
    if task == "lm":
        row["perplexity"] = math.exp(scores["loss"])
    else:
        row["accuracy"] = scores["accuracy"]
    return row


def table(task, rows, settings, sizes, seed):
    """Returns the Markdown table of `task`'s rows, with a title line."""
    n_train, n_test = sizes
    blocks = max(len(row["block_angles"]) for row in rows)
    metric = "test perplexity" if task == "lm" else "test accuracy"
    lines = [
        f"{task}: {TASKS[task]['title']}; {n_train} train / {n_test} test "
        f"examples; {settings['epochs']} epochs, batch "
        f"{settings['batch_size']}, Adam lr {settings['learning_rate']}, "
        f"seed {seed}, backend {keras.backend.backend()}",
        "",
        f"| rule | {metric} | "
        + " | ".join(f"update angle block {b} (deg)" for b in range(blocks))
        + " | time (s) |",
        "|---" * (blocks + 3) + "|",
    ]
    for row in rows:
        value = row.get("perplexity", row.get("accuracy"))
        digits = 2 if task == "lm" else 3
        # n/a: no update reached the block (shallow trains the head only).
        angles = " | ".join(
            "n/a" if math.isnan(a) else f"{a:.1f}" for a in row["block_angles"]
        )
        lines.append(
            f"| {row['rule']} | {value:.{digits}f} | {angles} | "
            f"{row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows, tasks, path):
    """Writes the loss and update-angle curves of `rows` to a PNG file at
    `path`: a row of panels per task (training loss, then the update
    angle of each block against the epoch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rules = list(dict.fromkeys(row["rule"] for row in rows))
    colors = {rule: f"C{i}" for i, rule in enumerate(rules)}
    blocks = max(len(row["block_angles"]) for row in rows)
    figure = Figure(
        figsize=(4.5 * (blocks + 1), 3.3 * len(tasks)),
        dpi=100,
        layout="constrained",
    )
    grid = figure.subplots(len(tasks), blocks + 1, squeeze=False)
    for axes, task in zip(grid, tasks):
        task_rows = [row for row in rows if row["task"] == task]
        for row in task_rows:
            color = colors[row["rule"]]
            loss = row["loss_curve"]
            style = {"color": color, "label": row["rule"], "markersize": 3}
            if len(loss) <= 30:
                # Few points (a short run): marked, so one point shows.
                style["marker"] = "o"
            axes[0].plot(range(1, len(loss) + 1), loss, **style)
            for block, curve in enumerate(row["angle_curves"]):
                axes[block + 1].plot(row["angle_epochs"], curve, **style)
        axes[0].set(
            title=f"{task}: training loss", xlabel="epoch", ylabel="loss"
        )
        for block in range(blocks):
            axes[block + 1].axhline(90.0, color="gray", linestyle="--", lw=1)
            axes[block + 1].set(
                title=f"{task}: update angle, block {block}",
                xlabel="epoch",
                ylabel="degrees",
                ylim=(-5, 180),
            )
        for ax in axes:
            ax.grid(alpha=0.3)
        # One legend a row: the colors are the same in every panel.
        axes[0].legend(fontsize="small")
    # Whole or not at all: an interrupted run leaves the old figure.
    with files.atomic_open(path, "wb") as file:
        FigureCanvasAgg(figure).print_png(file)


def _head(data, n_train, n_test):
    (x, y), (x_test, y_test) = data
    return (x[:n_train], y[:n_train]), (x_test[:n_test], y_test[:n_test])


def output_paths(parser, args):
    """Returns the paths of the figure and of the tables that `args` ask
    for. Exits as argparse does (status 2), naming the flag and the path,
    if one holds a file and `args.overwrite` is not set, or cannot be
    written: a directory, or a path through a file. Writes nothing."""
    paths = []
    for flag, given, name in (
        ("--figure", args.figure, FIGURE),
        ("--table", args.table, TABLE),
    ):
        path = given or os.path.join(args.output_dir, name)
        flag = flag if given else "--output-dir"
        problem = files.output_problem(path)
        if problem is None and os.path.exists(path) and not args.overwrite:
            problem = (
                "a file is there (an earlier run's?); give --overwrite to "
                "replace it, or another path"
            )
        if problem:
            parser.error(f"argument {flag}: cannot write {path!r}: {problem}")
        paths.append(path)
    if os.path.abspath(paths[0]) == os.path.abspath(paths[1]):
        parser.error(
            f"argument --table: {paths[1]!r} is also the figure's path"
        )
    return paths


def _integer(flag, minimum):
    """Returns an argparse `type`: an integer >= `minimum`, or an error
    naming `flag`."""
    allowed = (
        "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    )

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"{flag} must be {allowed}. Received: {text!r}"
            )
        return value

    return parse


def main(argv=None):
    """Runs the example with command-line arguments `argv`; returns the
    rows of results (one dict per task and rule)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASKS),
        default=list(TASKS),
        help="default: all",
    )
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=keras_fa.models.rules(),
        help="rules for every task (default: bp fa usf kp wm dfa shallow, "
        "and bp fa dfa for lm)",
    )
    parser.add_argument(
        "--epochs",
        type=_integer("--epochs", minimum=1),
        help="for every task (default: 20 mnist1d, 20 digits, 10 lm)",
    )
    # Checked here: Keras refuses a negative seed only when it uses it,
    # after the data is loaded.
    parser.add_argument("--seed", type=_integer("--seed", minimum=0), default=0)
    parser.add_argument(
        "--output-dir",
        default=OUTPUT_DIR,
        help=f"where to write {FIGURE} and {TABLE} (default: {OUTPUT_DIR})",
    )
    parser.add_argument(
        "--figure",
        help=f"path of the figure (default: <output-dir>/{FIGURE})",
    )
    parser.add_argument(
        "--table",
        help=f"path of the tables (default: <output-dir>/{TABLE})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the figure and tables of an earlier run (refused "
        "otherwise)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one epoch on {QUICK_TRAIN} examples: checks that it runs",
    )
    args = parser.parse_args(argv)
    figure_path, table_path = output_paths(parser, args)

    rows, tables = [], []
    start = time.perf_counter()
    for task in args.tasks:
        settings = dict(TASKS[task])
        if args.quick:
            settings["epochs"] = 1
        if args.epochs is not None:
            settings["epochs"] = args.epochs
        data, model_args = load(task)
        probe_size = PROBE_SIZE[task]
        if args.quick:
            data = _head(data, QUICK_TRAIN, QUICK_TEST)
            probe_size = QUICK_PROBE
        sizes = (len(data[0][0]), len(data[1][0]))
        task_rows = [
            train(task, rule, data, model_args, settings, args.seed, probe_size)
            for rule in args.rules or settings["rules"]
        ]
        tables.append(table(task, task_rows, settings, sizes, args.seed))
        print(tables[-1] + "\n", flush=True)
        rows += task_rows
    seconds = time.perf_counter() - start
    print(f"{seconds:.0f} s in all")
    architecture = ", ".join(f"{k} {v}" for k, v in ARCHITECTURE.items())
    command = shlex.join(["python", "examples/transformer.py", *argv])
    command = f"KERAS_BACKEND={keras.backend.backend()} {command}"
    text = (
        f"# `{command}`\n\n"
        f"keras_fa.models.transformer: {architecture}. Update angle: mean "
        "over the block's kernels, on the probe batch after training. "
        "Time: model.fit, with its compilation and the per-epoch alignment "
        f"measures. {seconds:.0f} s in all.\n\n" + "\n\n".join(tables) + "\n"
    )
    files.write_atomic(table_path, text)
    plot(rows, args.tasks, figure_path)
    print(f"wrote {figure_path} and {table_path}")
    return rows


if __name__ == "__main__":
    main()
