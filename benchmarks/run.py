"""Compare learning rules on multi-class tasks: one command, resumable.

    python -m benchmarks.run                                 # digits, MLP
    python -m benchmarks.run --dataset mnist1d --model mlp,lenet --seeds 3
    python -m benchmarks.run --dataset cifar10 --model resnet20 \\
        --rules bp,fa,dfa,usf,kp --seeds 3 --epochs 20 --data-dir ~/tfds

Every (dataset, model, rule, seed) is a cell. A finished cell is one JSON
file under `--output`, written atomically (a temporary file, then a rename),
so an interrupt never loses a finished cell and never leaves a half-written
one; running the same command again skips the finished cells. Ctrl-C stops
a run with one line: how many cells are finished and kept, and the command
that resumes (the same one); the exit status is 130. The summary
(`summary.md`, `summary.csv`: test accuracy mean and std over seeds, the
final per-layer alignment angles, throughput and wall time) and the figures
(`accuracy_<dataset>_<model>.png`, `alignment_<dataset>_<model>.png`) are
rewritten from all finished cells after each cell. Files are written with
the permissions the umask gives.

One `--output` directory holds the cells of one set of settings. The
settings are every option that changes results (`CONFIG_KEYS`: data set,
classes, epochs, optimizer, learning rate, weight decay, batch size,
precision, distribute, probe, patch size) and the backend with the versions
of Keras, the backend's library and keras_fa. The runner creates the
directory, or takes an empty one, and records the settings in its manifest
`.keras_fa_run.json`; later commands into it may add models, rules and
seeds. Everything is checked before any cell trains (and before any data
is loaded, but for `--patch-size`, which needs the inputs' shape):
- a directory that is not empty and has no manifest is refused (the runner
  writes its summary only into a directory of its own);
- other settings are refused, naming the differences (so a jax run resumed
  under `KERAS_BACKEND=torch` is refused, not reported as torch's), unless
  the directory holds no finished cell yet: then the new settings replace
  the old; the summary thus always covers every cell in the directory;
- a cell file that is not a cell (not JSON, truncated, not a record, a key
  the summary reads missing) is reported with what is wrong and moved
  aside to `<name>.json.bad`, never deleted; its cell runs again;
- bad arguments, an `--output` that cannot be written, and a `--classes`
  above the data set's are argparse errors (exit status 2).

Data: MNIST-1D and scikit-learn's digits need no network (digits is the
default, so the command runs anywhere); the TFDS sets (mnist, fashion_mnist,
kmnist, emnist/balanced, cifar10, cifar100) are read from `--data-dir` and
fail within seconds, with what to do, when they are absent and there is no
network. Models are `keras_fa.models` (mlp, lenet, resnet<6n+2>,
transformer: images cut into patches, 4x4 for 28x28 and 32x32 images and
2x2 for the 8x8 digits unless `--patch-size` says otherwise; MNIST-1D read
as a sequence of 40 scalar tokens). Training
uses the accelerator Keras finds (GPU, TPU) with no change; `--distribute`
shards each batch over all local devices (`keras.distribution.DataParallel`
on jax, `tf.distribute.MirroredStrategy` on tensorflow).
"""

import argparse
import contextlib
import csv
import functools
import io
import json
import math
import os
import platform
import sys
import time

import keras
import numpy as np

# Run from a checkout without installing: the package is next to benchmarks/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_fa  # noqa: E402
from benchmarks import harness  # noqa: E402
from keras_fa import datasets  # noqa: E402
from keras_fa.files import output_problem  # noqa: E402
from keras_fa.files import write_atomic  # noqa: E402

ALL_RULES = harness.RULES
OPTIMIZERS = ("adam", "sgd", "momentum")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Settings that change results: a finished cell is reused only if they match.
CONFIG_KEYS = (
    "dataset",
    "classes",
    "epochs",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "precision",
    "distribute",
    "probe",
    "patch_size",
    "backend",
    "backend_version",
    "keras_version",
    "keras_fa_version",
)
FORMAT_VERSION = 1
# What the summary and the figures read from a cell record, and its type.
RECORD_KEYS = {
    "model": str,
    "rule": str,
    "seed": int,
    "test_accuracy": float,
    "throughput": float,
    "wall_seconds": float,
    "layers": list,
    "hidden_update_angles": list,
    "history": dict,
}
# The file in `--output` that marks it as the runner's, with its settings.
MANIFEST = ".keras_fa_run.json"
# Flat data sets that are images: convolutional models see them as such.
IMAGES = {"digits": (8, 8, 1)}
# Classes of the offline sets (the TFDS sets' come from their builders).
OFFLINE_CLASSES = {"digits": 10, "mnist1d": 10}


def _model(name):
    # One model name of --model, lower-cased: mlp, lenet, resnet<6n+2> or
    # transformer.
    base = name.lower()
    depth = base[len("resnet") :]
    if base in ("mlp", "lenet", "transformer") or (
        base.startswith("resnet")
        and depth.isdigit()
        and int(depth) >= 8
        and (int(depth) - 2) % 6 == 0
    ):
        return base
    raise argparse.ArgumentTypeError(
        f"unknown model {name!r}; allowed: mlp, lenet, resnet<6n+2> "
        "(resnet8, resnet20, resnet32, resnet56...), transformer"
    )


def _seeds(value):
    # "3" means seeds 0, 1, 2; "0,5,7" lists them.
    allowed = (
        "a count >= 1 (seeds 0 to count - 1) or a comma-separated list of "
        f"seeds >= 0, got {value!r}"
    )
    try:
        if "," in value:
            seeds = [int(v) for v in value.split(",") if v.strip()]
        else:
            seeds = list(range(int(value)))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"must be {allowed}")
    return harness.unique(seeds, "seed")


def _class_count(dataset, data_dir):
    """Returns the number of classes of `dataset`, known without loading
    it: a TFDS builder's code knows it before any data is there. None if
    tensorflow-datasets is missing (loading then says what to install)."""
    if dataset in OFFLINE_CLASSES:
        return OFFLINE_CLASSES[dataset]
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    builder = tfds.builder(dataset, data_dir=data_dir)
    return builder.info.features["label"].num_classes


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n")[0],
    )
    _add_cell_arguments(parser)
    _add_training_arguments(parser)
    parser.add_argument("--output", default="runs", help="results directory")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or lines"
    )
    return parser


def _add_cell_arguments(parser):
    # What the cells are: data set, models, rules and seeds.
    names = datasets.OFFLINE_DATASETS + datasets.TFDS_DATASETS
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=names,
        help="default: digits (no network needed)",
    )
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument(
        "--model",
        type=harness.comma_list(_model, name="model"),
        default=["mlp"],
        help="comma-separated: mlp, lenet, resnet20..., transformer "
        "(default: mlp)",
    )
    parser.add_argument(
        "--patch-size",
        type=harness.positive_int,
        default=None,
        help="side (images) or length (sequences) of the transformer's "
        "patches; default: 4 for images, 2 where 4 leaves fewer than 16 "
        "patches, none for sequences (a token per position)",
    )
    parser.add_argument(
        "--rules",
        type=harness.comma_list(allowed=ALL_RULES, name="rule"),
        default=list(ALL_RULES),
        help=f"comma-separated (default: all: {','.join(ALL_RULES)})",
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default=[0],
        help="a count N (seeds 0..N-1) or a comma-separated list",
    )


def _add_training_arguments(parser):
    # How every cell trains: the settings in CONFIG_KEYS.
    parser.add_argument("--epochs", type=harness.positive_int, default=20)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument(
        "--learning-rate", type=harness.positive_float, default=1e-3
    )
    parser.add_argument(
        "--weight-decay", type=harness.non_negative_float, default=None
    )
    parser.add_argument("--batch-size", type=harness.positive_int, default=128)
    parser.add_argument(
        "--classes",
        type=int,
        default=None,
        help="train on a random subset of this many classes (seeded)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="Keras dtype policy",
    )
    parser.add_argument(
        "--distribute",
        action="store_true",
        help="data-parallel over all local devices (jax, tensorflow)",
    )
    parser.add_argument(
        "--probe",
        type=harness.positive_int,
        default=256,
        help="test examples the alignment is measured on each epoch",
    )


def _usage_error(message):
    """Exits as argparse does on a bad argument: usage, `message`, status
    2."""
    _parser().error(message)


def parse_args(argv=None):
    """Parses the command line; returns the argparse namespace.

    Exits as argparse does (status 2, naming the flag, the value and what
    is allowed) on a bad value, before any data is loaded.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.classes is not None:
        available = _class_count(args.dataset, args.data_dir)
        if args.classes < 2 or (available and args.classes > available):
            most = (
                f" and {available}, the classes of {args.dataset}"
                if available
                else ""
            )
            parser.error(
                f"argument --classes: must be between 2{most}, got "
                f"{args.classes}"
            )
    if args.distribute and keras.backend.backend() == "torch":
        parser.error(
            "--distribute needs the jax or tensorflow backend (Keras has no "
            "data-parallel API for torch); set KERAS_BACKEND."
        )
    return args


def config_of(args):
    """Returns the settings a finished cell must match to be reused: the
    options that change results, the backend and the versions of Keras, the
    backend's library and keras_fa (`CONFIG_KEYS`)."""
    config = {
        "dataset": args.dataset,
        "classes": args.classes,
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "distribute": args.distribute,
        "probe": args.probe,
    }
    # Only when given: the cells of earlier versions stay reusable.
    if args.patch_size is not None:
        config["patch_size"] = args.patch_size
    config["backend"] = keras.backend.backend()
    config["backend_version"] = harness.backend_version()
    config["keras_version"] = keras.__version__
    config["keras_fa_version"] = keras_fa.__version__
    return config


def model_kwargs(args, task, model_name):
    """Returns the arguments of `model_name` for `task` beyond its shape:
    the image of a flat image set; the transformer's patches (see
    `--patch-size`). Exits as argparse does if `--patch-size` does not tile
    the inputs."""
    kwargs = {}
    if model_name != "mlp" and task.name in IMAGES:
        kwargs["image_shape"] = IMAGES[task.name]
    if model_name != "transformer":
        return kwargs
    shape = kwargs.get("image_shape", task.input_shape)
    # The axes cut into patches: height and width, or the sequence.
    size = shape[:2] if len(shape) == 3 else shape[:1]
    side = args.patch_size
    if side is None and len(shape) == 3:
        side = next(
            (
                p
                for p in (4, 2)
                if not any(s % p for s in size)
                and math.prod(s // p for s in size) >= 16
            ),
            1,
        )
    if side is not None and any(s % side for s in size):
        _usage_error(
            f"argument --patch-size: {side} does not tile the {args.dataset} "
            f"inputs of size {tuple(size)}: give a divisor of each."
        )
    if side is not None:
        kwargs["patch_size"] = side
    return kwargs


def task_label(config):
    """Returns the dataset name, with its class count if subsetted, safe
    for file names (emnist/balanced: emnist-balanced)."""
    dataset = config["dataset"].replace("/", "-")
    classes = "" if config["classes"] is None else f"-c{config['classes']}"
    return dataset + classes


def cell_name(config, model, rule, seed):
    """Returns the file stem of a cell."""
    return f"{task_label(config)}__{model}__{rule}__seed{seed}"


def read_cell(path):
    """Returns a finished cell's record, or None if there is none or it is
    not a cell (`load_cell` says what is wrong)."""
    return load_cell(path)[0]


def load_cell(path):
    """Reads the cell file at `path`.

    Returns `(record, None)` for a cell, `(None, None)` if there is no
    file, and `(None, problem)`, `problem` saying what is wrong, if the
    file is not a cell: not JSON (a truncated write), not a JSON object,
    another format, no `config`, a key the summary reads missing or of
    another type, or the record of another cell than its name says.
    """
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"cannot be read ({error})"
    try:
        record = json.loads(text)
    except ValueError as error:
        return None, f"is not valid JSON, truncated or damaged ({error})"
    problem = _record_problem(record)
    if problem is None:
        stem = os.path.basename(path)[: -len(".json")]
        config = record["config"]
        if "dataset" in config and "classes" in config:
            name = cell_name(
                config, record["model"], record["rule"], record["seed"]
            )
            if name != stem:
                problem = f"holds the record of cell {name}"
    return (None, problem) if problem else (record, None)


def _record_problem(record):
    # What keeps a parsed cell file from being a record, or None.
    if not isinstance(record, dict):
        return f"holds {_shown(record)}, not a cell record (a JSON object)"
    if record.get("format") != FORMAT_VERSION:
        return (
            f"has format {record.get('format')!r}, where this runner "
            f"reads format {FORMAT_VERSION}"
        )
    if not isinstance(record.get("config"), dict):
        return "has no config (the settings it was made with)"
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, kind in RECORD_KEYS.items():
        value = record[key]
        numbers = (int, float) if kind is float else kind
        if not isinstance(value, numbers) or isinstance(value, bool):
            return f"has {key} {_shown(value)}, not a {kind.__name__}"
    angles = record["hidden_update_angles"]
    if not all(_is_number(a) or a is None for a in angles):
        return f"has hidden_update_angles {_shown(angles)}, not numbers"
    for key, values in record["history"].items():
        if not isinstance(values, list) or not all(map(_is_number, values)):
            return f"has history {key} {_shown(values)}, not numbers"
    return None


def _shown(value):
    # `value` as JSON, cut to a length that fits in a message.
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optimizer(args):
    if args.optimizer == "adam":
        return keras.optimizers.Adam(
            args.learning_rate, weight_decay=args.weight_decay
        )
    momentum = 0.9 if args.optimizer == "momentum" else 0.0
    return keras.optimizers.SGD(
        args.learning_rate, momentum=momentum, weight_decay=args.weight_decay
    )


def _distribution(args):
    """Returns `(strategy, shards)`: a tf.distribute strategy to build and
    train in (None: none needed), and the number of devices every batch
    must split evenly over (jax's DataParallel needs it)."""
    if not args.distribute:
        return None, 1
    if keras.backend.backend() == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        if args.batch_size % len(devices):
            raise SystemExit(
                f"--batch-size {args.batch_size} must be a multiple of the "
                f"{len(devices)} devices to shard it over."
            )
        return None, len(devices)
    # MirroredStrategy splits uneven batches itself.
    return _mirrored_strategy(), 1


@functools.cache
def _mirrored_strategy():
    # One strategy per process: a second MirroredStrategy reuses the first
    # one's collective instance keys, and its all-reduce then fails on
    # gradients of another shape ("Shape mismatch in the collective
    # instance 100") when a run's cells train models of different sizes.
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def _even(dataset, shards, examples, batch_size):
    # A batch sharded over devices must split evenly: the last partial
    # batch loses its last (at most shards - 1) examples.
    if shards == 1:
        return dataset
    import tensorflow as tf

    def trim(x, y):
        n = tf.shape(x)[0] // shards * shards
        return x[:n], y[:n]

    last = examples % batch_size // shards * shards
    batches = examples // batch_size + (1 if last else 0)
    dataset = dataset.map(trim).filter(lambda x, y: tf.shape(x)[0] > 0)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


def _hidden_angles(measures, layer_names):
    # Final update angle of each hidden layer (all kernel layers but the
    # output one), in the model's order.
    return [
        measures.get(f"{name}/update_angle", math.nan)
        for name in layer_names[:-1]
    ]


def run_cell(args, task, model_name, rule, seed):
    """Trains one cell; returns its record (a JSON-ready dict)."""
    keras.utils.set_random_seed(seed)
    model, shards = _compiled_model(args, task, model_name, rule, seed)
    x_probe, y_probe = task.arrays("test")
    align = keras_fa.callbacks.AlignmentCallback(
        (x_probe[: args.probe], y_probe[: args.probe]),
        measures=("weight_angle", "signal_angle", "update_angle"),
    )
    timer = harness.FitTimer("epoch")
    start = time.perf_counter()
    batch = args.batch_size
    test_data = _even(task.test(batch), shards, task.num_test, batch)
    train_data = _even(
        task.train(batch, seed=seed), shards, task.num_train, batch
    )
    history = model.fit(
        train_data,
        epochs=args.epochs,
        validation_data=test_data,
        callbacks=[align, timer],
        shuffle=False,  # the pipeline shuffles, seeded
        verbose=0,
    )
    test_loss, test_accuracy = model.evaluate(test_data, verbose=0)
    wall = time.perf_counter() - start
    record = {
        "format": FORMAT_VERSION,
        "config": config_of(args),
        "model": model_name,
        "rule": rule,
        "seed": seed,
        "num_classes": task.num_classes,
        "classes": list(task.classes) if task.classes is not None else None,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
    }
    epochs = [seconds for seconds, _ in timer.seconds]
    return {
        **record,
        **_results(history.history, align.alignment.layer_names),
        **_costs(task, model, epochs, wall),
    }


def _compiled_model(args, task, model_name, rule, seed):
    # Returns (model, shards): the cell's model, built and compiled in the
    # distribution's scope, and the devices a batch is sharded over.
    strategy, shards = _distribution(args)
    scope = contextlib.nullcontext() if strategy is None else strategy.scope()
    kwargs = model_kwargs(args, task, model_name)
    with scope:
        model = keras_fa.models.get(
            model_name,
            task.input_shape,
            task.num_classes,
            feedback=rule,
            seed=seed,
            **kwargs,
        )
        model.compile(
            optimizer=_optimizer(args),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model, shards


def _results(history, layer_names):
    # The record's history and the alignment after the last epoch.
    final = {key: values[-1] for key, values in history.items() if "/" in key}
    return {
        "history": {
            key: [float(v) for v in values] for key, values in history.items()
        },
        "layers": layer_names,
        "final_alignment": final,
        "hidden_update_angles": _hidden_angles(final, layer_names),
    }


def _costs(task, model, epochs, wall):
    # The record's times (`epochs`: each epoch's training seconds), size
    # and environment. The first epoch includes compilation; throughput
    # counts the others.
    steady = epochs[1:] or epochs
    return {
        "throughput": task.num_train * len(steady) / sum(steady),
        "train_seconds": sum(epochs),
        "wall_seconds": wall,
        "parameters": int(model.count_params()),
        "backend": keras.backend.backend(),
        "devices": harness.devices(),
        "versions": {
            "keras": keras.__version__,
            "keras_fa": keras_fa.__version__,
            "python": platform.python_version(),
        },
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summarize(records):
    """Returns summary rows: one per (dataset, model, rule) over seeds."""
    groups = {}
    for record in records:
        key = (
            record["config"]["dataset"],
            record["config"]["classes"],
            record["model"],
            record["rule"],
        )
        groups.setdefault(key, []).append(record)
    rows = []
    for (dataset, classes, model, rule), group in groups.items():
        accuracy = harness.mean_std([r["test_accuracy"] for r in group])
        layers = harness.column_means(
            [r["hidden_update_angles"] for r in group]
        )
        rows.append(
            {
                "dataset": dataset,
                "classes": classes,
                "model": model,
                "rule": rule,
                "seeds": len(group),
                "test_accuracy_mean": accuracy[0],
                "test_accuracy_std": accuracy[1],
                "hidden_update_angles": layers,
                "throughput": harness.mean_std(
                    [r["throughput"] for r in group]
                )[0],
                "wall_seconds": harness.mean_std(
                    [r["wall_seconds"] for r in group]
                )[0],
            }
        )
    order = {rule: i for i, rule in enumerate(ALL_RULES)}
    rows.sort(
        key=lambda r: (
            r["dataset"],
            r["model"],
            order.get(r["rule"], len(order)),
        )
    )
    return rows


def _angles_text(angles):
    return ", ".join("-" if math.isnan(a) else f"{a:.0f}" for a in angles)


def summary_markdown(rows):
    """Returns the summary table as Markdown."""
    lines = [
        "| dataset | model | rule | seeds | test accuracy | update angle "
        "per hidden layer (deg) | examples/s | wall time (s) |",
        "|---|---|---|---:|---|---|---:|---:|",
    ]
    for row in rows:
        dataset = row["dataset"] + (
            f" ({row['classes']} classes)" if row["classes"] else ""
        )
        lines.append(
            f"| {dataset} | {row['model']} | {row['rule']} | {row['seeds']} "
            f"| {row['test_accuracy_mean']:.3f} ± "
            f"{row['test_accuracy_std']:.3f} "
            f"| {_angles_text(row['hidden_update_angles'])} "
            f"| {row['throughput']:.0f} | {row['wall_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def summary_csv(rows):
    """Returns the summary table as CSV (one column per hidden layer)."""
    depth = max((len(r["hidden_update_angles"]) for r in rows), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "dataset",
            "classes",
            "model",
            "rule",
            "seeds",
            "test_accuracy_mean",
            "test_accuracy_std",
            *[f"update_angle_hidden_{i + 1}" for i in range(depth)],
            "examples_per_second",
            "wall_seconds",
        ]
    )
    for row in rows:
        angles = row["hidden_update_angles"]
        writer.writerow(
            [
                row["dataset"],
                row["classes"] if row["classes"] else "",
                row["model"],
                row["rule"],
                row["seeds"],
                f"{row['test_accuracy_mean']:.4f}",
                f"{row['test_accuracy_std']:.4f}",
                *[
                    ""
                    if i >= len(angles) or math.isnan(angles[i])
                    else f"{angles[i]:.2f}"
                    for i in range(depth)
                ],
                f"{row['throughput']:.1f}",
                f"{row['wall_seconds']:.2f}",
            ]
        )
    return buffer.getvalue()


def _curves(records, metric):
    # Per rule: the metric per epoch, averaged over seeds.
    by_rule = {}
    for record in records:
        if metric == "update_angle":
            names = record["layers"][:-1]
            keys = [f"{name}/update_angle" for name in names]
            series = [
                np.nanmean(values) if not np.all(np.isnan(values)) else np.nan
                for values in zip(*[record["history"].get(k, []) for k in keys])
            ]
        else:
            series = record["history"].get(metric, [])
        by_rule.setdefault(record["rule"], []).append(series)
    curves = {}
    for rule, runs in by_rule.items():
        if not runs or any(len(run) != len(runs[0]) for run in runs):
            continue
        runs = np.array(runs, dtype=float)
        # The mean over the seeds that measured each epoch; a rule that
        # measured nothing (shallow's hidden layers get no signal) gets no
        # curve, not a line at 0 nor a legend entry.
        measured = ~np.isnan(runs)
        if not measured.any():
            continue
        total = np.where(measured, runs, 0.0).sum(axis=0)
        count = measured.sum(axis=0)
        curves[rule] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return curves


def plot_curves(records, directory):
    """Writes accuracy and alignment curves per (dataset, model); returns
    the paths written."""
    groups = {}
    for record in records:
        key = (task_label(record["config"]), record["model"])
        groups.setdefault(key, []).append(record)
    paths = []
    for (dataset, model), group in groups.items():
        for kind, metric, label in (
            ("accuracy", "val_accuracy", "test accuracy"),
            ("alignment", "update_angle", "mean hidden update angle (deg)"),
        ):
            curves = _curves(group, metric)
            if not curves:
                continue
            figure = harness.figure(6, 4)
            axes = figure.add_subplot()
            order = {rule: i for i, rule in enumerate(ALL_RULES)}
            for rule in sorted(curves, key=lambda r: order.get(r, 99)):
                values = curves[rule]
                axes.plot(range(1, len(values) + 1), values, label=rule)
            if kind == "alignment":
                axes.axhline(90, color="gray", linestyle="--", linewidth=1)
            axes.set_xlabel("epoch")
            axes.set_ylabel(label)
            axes.set_title(f"{dataset}, {model}")
            axes.grid(alpha=0.3)
            axes.legend(fontsize="small")
            figure.tight_layout()
            path = os.path.join(directory, f"{kind}_{dataset}_{model}.png")
            paths.append(harness.write_png(figure, path))
    return paths


def cell_files(output):
    """Returns the paths of the cell files under `output` (not the
    temporary files of a write in progress), sorted."""
    cells = os.path.join(output, "cells")
    if not os.path.isdir(cells):
        return []
    return [
        os.path.join(cells, name)
        for name in sorted(os.listdir(cells))
        if name.endswith(".json") and not name.startswith(".")
    ]


def finished_records(output, config):
    """Returns the records under `output` made with `config`."""
    records = [read_cell(path) for path in cell_files(output)]
    return [r for r in records if r is not None and r["config"] == config]


def write_summary(output, config):
    """Rewrites summary.md, summary.csv and the figures from the finished
    cells made with `config`; returns the summary rows."""
    records = finished_records(output, config)
    rows = summarize(records)
    write_atomic(os.path.join(output, "summary.md"), summary_markdown(rows))
    write_atomic(os.path.join(output, "summary.csv"), summary_csv(rows))
    plot_curves(records, output)
    return rows


def _output_problem(output):
    """Returns what keeps the directory `output` (and its `cells`) from
    being created and written, or None. Writes nothing."""
    cells = os.path.join(output, "cells")
    return output_problem(output, directory=True) or output_problem(
        cells, directory=True, name=os.path.abspath(cells)
    )


def output_settings(output):
    """Returns the settings `output`'s manifest records, or None if
    `output` is absent or empty (the runner may take it).

    Raises SystemExit if `output` holds files and no manifest: the runner
    writes its summary and figures only into a directory of its own.
    """
    if not os.path.isdir(output) or not os.listdir(output):
        return None
    path = os.path.join(output, MANIFEST)
    if not os.path.exists(path):
        raise SystemExit(
            f"--output {output} holds files that benchmarks.run did not "
            f"write (it has no {MANIFEST}), and the runner writes its "
            "summary and figures only into a directory of its own. Give a "
            "new or empty --output."
        )
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError) as error:
        manifest = error
    if (
        not isinstance(manifest, dict)
        or manifest.get("written_by") != "benchmarks.run"
        or not isinstance(manifest.get("config"), dict)
    ):
        raise SystemExit(
            f"--output {output}: {path} is not a manifest of benchmarks.run "
            f"({str(manifest)[:80]}). Give a new or empty --output."
        )
    return manifest["config"]


def _check_cells(output, config):
    """Returns [(path, problem)] of the cell files under `output` that are
    not cells; raises SystemExit if a cell was made with other settings.
    Writes nothing."""
    bad, other = [], []
    for path in cell_files(output):
        record, problem = load_cell(path)
        if problem is not None:
            bad.append((path, problem))
        elif record["config"] != config:
            other.append((path, record["config"]))
    if other:
        path, settings = other[0]
        raise settings_error(path, settings, config, len(other) - 1)
    return bad


def settings_error(path, old, new, others=0):
    """Returns the SystemExit that refuses the cell file `path`, made with
    the settings `old` where this command has `new` (and `others` more
    such files), naming the differences."""
    more = f" (and {others} more cells)" if others else ""
    return SystemExit(
        f"{path}{more} was made with other settings "
        f"({_differences(old, new)}). Use another --output, or move that "
        "file away to run the cell again."
    )


def set_aside(path, problem, when=""):
    """Renames `path`, a file that is not a cell (`problem` says why), to
    `<path>.bad` (`.bad2`, ... if taken), and says so on stderr: its cell
    runs again (`when`, if given). Returns the new path."""
    target, number = path + ".bad", 1
    while os.path.lexists(target):
        number += 1
        target = f"{path}.bad{number}"
    os.rename(path, target)
    print(
        f"{path} {problem}: moved aside to {target}; the cell runs again"
        + (f" {when}" if when else "")
        + ".",
        file=sys.stderr,
    )
    return target


def _claim(output, config, settings, bad, cell_paths):
    """Makes `output` the runner's with `config`: creates it, writes its
    manifest where new or changed, moves the `bad` cell files aside (and
    says so on stderr)."""
    try:
        os.makedirs(os.path.join(output, "cells"), exist_ok=True)
        if settings != config:
            manifest = {
                "written_by": "benchmarks.run",
                "about": "The settings of every cell in this directory; "
                "benchmarks.run refuses other settings here.",
                "config": config,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            text = json.dumps(manifest, indent=1)
            write_atomic(os.path.join(output, MANIFEST), text)
        for path, problem in bad:
            when = "now" if path in cell_paths else "when a command includes it"
            set_aside(path, problem, when)
    except OSError as error:
        _usage_error(f"argument --output: cannot write to {output!r}: {error}")


def _resume_command(argv):
    words = sys.argv[1:] if argv is None else list(argv)
    return harness.command_line(
        "python -m benchmarks.run", words, keras.backend.backend()
    )


def main(argv=None):
    """Runs the benchmark; returns the summary rows.

    Exits before any data is loaded or any cell trains if an argument is
    bad, `--output` cannot be written or is not the runner's, or holds
    cells of other settings; cell files that are not cells are moved aside
    (see the module's docstring). Ctrl-C exits with status 130 after one
    line saying how many cells are kept and how to resume.
    """
    args = parse_args(argv)
    config = config_of(args)
    cells = _planned_cells(args, config)
    _take_output(args.output, config, {path for *_, path in cells})
    keras.config.set_dtype_policy(args.precision)
    todo = [cell for cell in cells if not os.path.exists(cell[3])]
    say = (lambda *a: None) if args.quiet else print
    say(
        f"{len(cells)} cells ({len(cells) - len(todo)} finished), backend "
        f"{keras.backend.backend()}, devices "
        f"{', '.join(harness.devices())}; "
        f"results in {os.path.abspath(args.output)}"
    )
    progress = None if args.quiet else keras.utils.Progbar(len(cells))
    done = len(cells) - len(todo)
    try:
        if progress is not None:
            progress.update(done)
        rows = _train(args, config, todo, done, progress, say)
    except KeyboardInterrupt:
        done = sum(os.path.exists(path) for *_, path in cells)
        say()
        print(
            f"Interrupted: {done} of {len(cells)} cells are finished and kept "
            f"in {os.path.join(args.output, 'cells')}; resume with: "
            f"{_resume_command(argv)}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    say("\n" + summary_markdown(rows))
    return rows


def _planned_cells(args, config):
    # (model, rule, seed, path) of every cell of the command.
    return [
        (
            model,
            rule,
            seed,
            os.path.join(
                args.output, "cells", cell_name(config, model, rule, seed)
            )
            + ".json",
        )
        for model in args.model
        for rule in args.rules
        for seed in args.seeds
    ]


def _take_output(output, config, cell_paths):
    # Checks `output` and its cells before any work (see `main`), then
    # claims it: the manifest written, the files that are not cells set
    # aside. `cell_paths`: this command's cells.
    problem = _output_problem(output)
    if problem:
        _usage_error(f"argument --output: cannot use {output!r}: {problem}")
    settings = output_settings(output)
    if settings is not None and settings != config and cell_files(output):
        raise SystemExit(
            f"--output {output} holds cells made with other settings "
            f"({_differences(settings, config)}): a directory holds one set "
            "of settings (models, rules and seeds may be added). Use another "
            "--output."
        )
    bad = _check_cells(output, config)
    _claim(output, config, settings, bad, cell_paths)


def _train(args, config, todo, done, progress, say):
    # Trains the `todo` cells, rewriting the summary after each; returns the
    # summary rows.
    tasks = {}
    for model, rule, seed, path in todo:
        # Class subsets are drawn per seed: each seed sees other classes.
        key = seed if args.classes else None
        if key not in tasks:
            try:
                tasks[key] = datasets.load(
                    args.dataset,
                    data_dir=args.data_dir,
                    classes=args.classes,
                    seed=seed,
                )
            except datasets.DatasetUnavailableError as error:
                raise SystemExit(str(error)) from error
            for name in args.model:  # bad patches fail before training
                model_kwargs(args, tasks[key], name)
        record = run_cell(args, tasks[key], model, rule, seed)
        write_atomic(path, json.dumps(record, indent=1))
        done += 1
        if progress is not None:
            say(
                f"\n{model} {rule} seed {seed}: test accuracy "
                f"{record['test_accuracy']:.3f}, hidden update angles "
                f"{_angles_text(record['hidden_update_angles'])} deg, "
                f"{record['wall_seconds']:.1f} s"
            )
            progress.update(done)
        write_summary(args.output, config)
    return write_summary(args.output, config)


def _differences(old, new):
    keys = [*CONFIG_KEYS, *sorted((set(old) | set(new)) - set(CONFIG_KEYS))]
    return ", ".join(
        f"{key}={old.get(key)!r}, now {new.get(key)!r}"
        for key in keys
        if old.get(key) != new.get(key)
    )


if __name__ == "__main__":
    main()
