"""Alignment and the number of classes (the paper's claim 3).

    python -m benchmarks.paper.classes                 # digits, MNIST-1D
    python -m benchmarks.paper.classes --data-dir ~/tensorflow_datasets
    python -m benchmarks.paper.classes --quick         # a few seconds

Robertson & Koyejo report that better alignment with the true gradient gives
better feedback-alignment accuracy on multi-class tasks, where plain FA falls
behind backprop as the number of classes grows. This trains bp, fa, dfa, usf
and kp on random k-class subsets (k = 2, 5, 10 of digits and MNIST-1D, which
need no network; k = 2, 5, 10, 20, 50, 100 of CIFAR-100 when `--data-dir`
holds it prepared by TFDS, else it is skipped with one line saying why), and
relates each rule's alignment to its accuracy gap to backprop.

Every (data set, k, rule, seed) is a cell of `benchmarks/run.py`, trained
by its `run_cell` (Adam 1e-3, batch 128, the `keras_fa.models` MLP, or
LeNet with `--model lenet`) and written as one JSON file under
`<output>/cells/`, atomically; a rerun skips finished cells. Before any
training, a cell file made with other settings (another backend, other
versions) is refused with the differences, and one that is not a cell
(truncated, not a record) is named on stderr, with what is wrong, and moved
aside to `<name>.bad` (never deleted): its cell trains again. A bad
`--output` is a usage error, also before any training. Seed s draws the
classes, the data order and the weights: every rule of a seed sees the same
classes and starts from the same forward weights. A k-class subset has k/10
of the examples of ten classes, so the epochs scale as
`ceil(epochs * 10 / k)`: every k gets about the same number of optimizer
steps (`--epochs` is the count at ten classes, default 30).

Per (data set, k, rule), over seeds (mean and sample std):
- test accuracy;
- alignment: the update angle of each hidden layer (between the rule's
  weight update and the true gradient, on 256 test examples; 90 degrees:
  no alignment), averaged over the hidden layers, after the last epoch
  ("final") and averaged also over the epochs ("training");
- gap to bp: bp's test accuracy minus the rule's, same data set, k and
  seed; and since chance (1/k) moves with k, the relative gap
  `gap / (acc_bp - 1/k)`, the share of bp's accuracy above chance lost;
- late gain: test accuracy gained over the last fifth of the epochs (near 0
  when training has converged).

The correlation (Pearson and Spearman, with p-values and the number of
points) of each angle with the gap and the relative gap is taken over the
non-bp (data set, k, rule) means: all together, per data set, and within a
task (both centred per (data set, k), so that only rules on the same task
are compared); and again over the single seeds. The claim predicts a
positive correlation: the larger the angle, the larger the gap. Per (data
set, rule), Spearman's rho of k against the gap and the angles says whether
they grow with the number of classes.

`--quick` trains digits only, k = 2 and 4, bp and fa, one seed, 1 epoch at
ten classes (5 and 3 epochs): seconds, for the tests.

Output in `--output` (default `benchmarks/results/paper/classes/`; with
`--quick`, `runs/paper/classes-quick/`): `summary.json`, `summary.md`, and
the figures `accuracy_vs_classes.png`, `angle_vs_classes.png`,
`gap_vs_classes.png` and `gap_vs_angle.png`.
"""

import json
import math
import os
import sys
import time

import keras

from benchmarks import harness
from benchmarks import run
from keras_fa import datasets

NAME = "classes"
RULES = ("bp", "fa", "dfa", "usf", "kp")
DATASETS = ("digits", "mnist1d", "cifar100")
# Class counts per data set, full run and --quick.
CLASSES = {
    "digits": (2, 5, 10),
    "mnist1d": (2, 5, 10),
    "cifar100": (2, 5, 10, 20, 50, 100),
}
QUICK_CLASSES = {"digits": (2, 4), "mnist1d": (2, 4), "cifar100": (2, 5)}
# --quick trains digits only (and CIFAR-100 if --data-dir holds it).
QUICK_DATASETS = ("digits", "cifar100")
QUICK_RULES = ("bp", "fa")
NUM_CLASSES = {"digits": 10, "mnist1d": 10, "cifar100": 100}
TFDS = ("cifar100",)
EPOCHS = 30  # at ten classes; scaled by 10 / k
QUICK_EPOCHS = 1
SEEDS = 3
MODELS = ("mlp", "lenet")
OPTIMIZER = "adam"
LEARNING_RATE = 1e-3
BATCH_SIZE = 128
PROBE = 256
QUICK_OUTPUT = harness.quick_output(NAME)
MEASURES = ("gap", "relative_gap")
# Alignment: the final update angle, and its average over training.
ANGLES = ("angle", "angle_training")


_CLASS_COUNTS = harness.comma_list(
    harness.int_in(2), name="class count", repeats=True
)


def _class_counts(text):
    # Comma-separated class counts, each >= 2: sorted, each once.
    return tuple(sorted(set(_CLASS_COUNTS(text))))


def parse_args(argv=None):
    """Parses and checks the command line; returns the argparse namespace
    with `classes` resolved to a dict {data set: class counts}."""
    parser = harness.paper_parser(NAME, __doc__.split("\n")[0], seeds=SEEDS)
    # None: 3 seeds, or 1 with --quick.
    parser.set_defaults(seeds=None)
    parser.add_argument(
        "--data-dir",
        help="TFDS data directory holding cifar100 (skipped without it)",
    )
    parser.add_argument(
        "--datasets",
        type=harness.comma_list(allowed=DATASETS, name="data set"),
        default=None,
        help=f"comma-separated (default {','.join(DATASETS)}; --quick: "
        f"{','.join(QUICK_DATASETS)})",
    )
    parser.add_argument(
        "--classes",
        type=_class_counts,
        default=None,
        help="comma-separated class counts for every data set (default "
        "2,5,10; cifar100 2,5,10,20,50,100; --quick 2,4)",
    )
    parser.add_argument(
        "--rules",
        type=harness.comma_list(allowed=run.ALL_RULES, name="rule"),
        default=None,
        help=f"comma-separated, bp among them (default {','.join(RULES)}; "
        f"--quick {','.join(QUICK_RULES)})",
    )
    parser.add_argument("--model", choices=MODELS, default="mlp")
    parser.add_argument(
        "--epochs",
        type=harness.positive_int,
        default=None,
        help=f"epochs at 10 classes, scaled by 10/k (default {EPOCHS}; "
        f"--quick {QUICK_EPOCHS})",
    )
    return _resolve(parser, harness.parse_paper_args(parser, argv, NAME))


def _resolve(parser, args):
    # Fills in the defaults of a full or a --quick run; checks the rules
    # and the class counts against the data sets'.
    quick = args.quick
    harness.fill_defaults(
        args,
        {
            "seeds": 1 if quick else SEEDS,
            "epochs": QUICK_EPOCHS if quick else EPOCHS,
            "rules": QUICK_RULES if quick else RULES,
            "datasets": QUICK_DATASETS if quick else DATASETS,
        },
    )
    if "bp" not in args.rules:
        parser.error("--rules must include bp: the gaps are taken to it")
    if len(args.rules) < 2:
        parser.error("--rules needs a rule besides bp")
    default = QUICK_CLASSES if quick else CLASSES
    counts = {name: args.classes or default[name] for name in args.datasets}
    for name, ks in counts.items():
        if ks[-1] > NUM_CLASSES[name]:
            parser.error(
                f"--classes {ks[-1]} is more than the {NUM_CLASSES[name]} "
                f"classes of {name}"
            )
    args.classes = counts
    return args


def epochs_for(classes, epochs):
    """Returns the epochs of a k-class subset: `epochs` at ten classes,
    scaled by 10/k so that every k gets about as many optimizer steps."""
    return max(1, math.ceil(epochs * 10 / classes))


def runner_args(args, dataset, classes):
    """Returns benchmarks.run's namespace for one (data set, k)."""
    argv = [
        "--dataset",
        dataset,
        "--classes",
        str(classes),
        "--model",
        args.model,
        "--rules",
        ",".join(args.rules),
        "--epochs",
        str(epochs_for(classes, args.epochs)),
        "--optimizer",
        OPTIMIZER,
        "--learning-rate",
        str(LEARNING_RATE),
        "--batch-size",
        str(BATCH_SIZE),
        "--probe",
        str(PROBE),
        "--quiet",
    ]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return run.parse_args(argv)


def availability(args):
    """Returns {data set: {"status": "ran" or "skipped", ...}}; a TFDS set
    is skipped, with the reason, unless `--data-dir` holds it prepared."""
    status = {}
    for name in args.datasets:
        entry = {"classes": list(args.classes[name])}
        if name not in TFDS:
            entry["status"] = "ran"
        elif not args.data_dir:
            entry.update(
                status="skipped",
                reason="no --data-dir given (it needs TFDS data: "
                f"`tfds build {name} --data_dir DIR` on a machine with a "
                "network, then --data-dir DIR)",
            )
        else:
            try:
                datasets.load(
                    name, data_dir=args.data_dir, classes=2, download=False
                )
                entry["status"] = "ran"
            except (datasets.DatasetUnavailableError, ImportError) as error:
                entry.update(
                    status="skipped",
                    reason=f"not prepared in --data-dir {args.data_dir} "
                    f"(`tfds build {name} --data_dir {args.data_dir}` on a "
                    "machine with a network provides it)",
                    detail=str(error),
                )
        status[name] = entry
    return status


def planned_cells(args, status):
    """Yields `(options, rule, seed, path)` for every cell of the data sets
    that run: `options` is benchmarks.run's namespace of its (data set, k),
    `path` its file under `<output>/cells/`."""
    for dataset, entry in status.items():
        if entry["status"] != "ran":
            continue
        for classes in args.classes[dataset]:
            options = runner_args(args, dataset, classes)
            config = run.config_of(options)
            for seed in range(args.seeds):
                for rule in args.rules:
                    name = run.cell_name(config, args.model, rule, seed)
                    path = os.path.join(args.output, "cells", name + ".json")
                    yield options, rule, seed, path


def check_cells(args, status):
    """Checks the finished cells of this run before any training.

    Raises SystemExit, naming the file and the differences, if a cell was
    made with other settings (another backend, other versions, other
    epochs). Then moves each file that is not a cell (not JSON, truncated,
    not a record: `run.load_cell`) aside to `<name>.bad`, never deleting
    it, and says so on stderr: its cell trains again.
    """
    bad = []
    for options, _, _, path in planned_cells(args, status):
        record, problem = run.load_cell(path)
        if problem is not None:
            bad.append((path, problem))
        elif record is not None:
            _check_settings(path, record, run.config_of(options))
    for path, problem in bad:
        run.set_aside(path, problem)


def _check_settings(path, record, config):
    if record["config"] != config:
        raise run.settings_error(path, record["config"], config)


def train(args, status, say=print):
    """Trains (or reads back) every cell; returns the records."""
    records, tasks, current = [], {}, None
    for options, rule, seed, _ in planned_cells(args, status):
        # The rules of a (data set, k, seed) share its data, loaded by the
        # first of its cells that trains.
        if (options.dataset, options.classes, seed) != current:
            tasks, current = {}, (options.dataset, options.classes, seed)
        records.append(cell(args, options, rule, seed, tasks, say))
    return records


def cell(args, options, rule, seed, tasks, say=print):
    """Returns the finished cell of (`options`' data set and k, `rule`,
    `seed`) read back, or trains it and writes it. `tasks` caches the
    seed's data between the rules.

    A cell file made with other settings is refused (SystemExit); one that
    is not a cell is moved aside to `<name>.bad` (see `check_cells`) and
    its cell trains again.
    """
    config = run.config_of(options)
    name = run.cell_name(config, args.model, rule, seed)
    path = os.path.join(args.output, "cells", name + ".json")
    record, problem = run.load_cell(path)
    if problem is not None:
        run.set_aside(path, problem)
    elif record is not None:
        _check_settings(path, record, config)
        return record
    if "task" not in tasks:
        tasks["task"] = datasets.load(
            options.dataset,
            data_dir=options.data_dir,
            classes=options.classes,
            seed=seed,
        )
    record = run.run_cell(options, tasks["task"], args.model, rule, seed)
    harness.write_atomic(path, json.dumps(record, indent=1))
    say(
        f"{options.dataset} k={options.classes} {rule} seed {seed}: test "
        f"accuracy {record['test_accuracy']:.3f}, mean hidden update angle "
        f"{mean_angle(record):.1f} deg, {record['wall_seconds']:.1f} s"
    )
    return record


def mean_angle(record):
    """Returns the update angle averaged over a record's hidden layers
    (degrees; NaN if none was measured)."""
    angles = [
        a
        for a in record["hidden_update_angles"]
        if a is not None and math.isfinite(a)
    ]
    return sum(angles) / len(angles) if angles else math.nan


def training_angle(record):
    """Returns the update angle averaged over the hidden layers and over
    the epochs of training (measured after each epoch; degrees)."""
    values = [
        value
        for name in record.get("layers", [])[:-1]
        for value in record["history"].get(f"{name}/update_angle", [])
        if value is not None and math.isfinite(value)
    ]
    return sum(values) / len(values) if values else math.nan


def late_gain(record):
    """Returns the test accuracy gained over the last fifth of the epochs."""
    history = record["history"].get("val_accuracy", [])
    if len(history) < 2:
        return math.nan
    start = max(0, len(history) - 1 - max(1, len(history) // 5))
    return history[-1] - history[start]


def seed_points(records):
    """Returns one point per record: data set, k, rule, seed, accuracy, mean
    hidden update angle, late gain, and the gap and relative gap to bp of
    the same data set, k and seed (NaN without that bp record), and the
    angle averaged over training."""
    bp = {
        (r["config"]["dataset"], r["config"]["classes"], r["seed"]): r
        for r in records
        if r["rule"] == "bp"
    }
    points = []
    for record in records:
        dataset = record["config"]["dataset"]
        classes = record["config"]["classes"]
        accuracy = record["test_accuracy"]
        reference = bp.get((dataset, classes, record["seed"]))
        gap = relative = math.nan
        if reference is not None:
            gap = reference["test_accuracy"] - accuracy
            above = reference["test_accuracy"] - 1.0 / classes
            relative = gap / above if above > 0 else math.nan
        points.append(
            {
                "dataset": dataset,
                "classes": classes,
                "rule": record["rule"],
                "seed": record["seed"],
                "accuracy": accuracy,
                "angle": mean_angle(record),
                "angle_training": training_angle(record),
                "layer_angles": list(record["hidden_update_angles"]),
                "gap": gap,
                "relative_gap": relative,
                "late_gain": late_gain(record),
                "epochs": record["config"]["epochs"],
            }
        )
    return points


def _order(point):
    ranks = {
        rule: i for i, rule in enumerate(dict.fromkeys(RULES + run.ALL_RULES))
    }
    datasets_order = {name: i for i, name in enumerate(DATASETS)}
    return (
        datasets_order.get(point["dataset"], len(DATASETS)),
        point["dataset"],
        point["classes"],
        ranks.get(point["rule"], len(ranks)),
    )


def summarize(points):
    """Returns one row per (data set, k, rule): the seeds' mean and std of
    accuracy, angle (also per layer), gap, relative gap and late gain."""
    groups = {}
    for point in points:
        key = (point["dataset"], point["classes"], point["rule"])
        groups.setdefault(key, []).append(point)
    rows = []
    for (dataset, classes, rule), group in groups.items():
        row = {
            "dataset": dataset,
            "classes": classes,
            "rule": rule,
            "seeds": len(group),
            "epochs": group[0]["epochs"],
        }
        for key in ANGLES + ("accuracy", "gap", "relative_gap", "late_gain"):
            mean, std = harness.mean_std([p[key] for p in group])
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        row["layer_angles_mean"] = harness.column_means(
            [p["layer_angles"] for p in group]
        )
        rows.append(row)
    rows.sort(key=_order)
    return rows


def correlation(x, y):
    """Returns Pearson's r and Spearman's rho (with two-sided p-values) of
    the finite (x, y) pairs, and their number n; NaN where undefined
    (fewer than 3 pairs, or a constant variable)."""
    from scipy import stats

    pairs = [
        (float(a), float(b))
        for a, b in zip(x, y)
        if a is not None
        and b is not None
        and math.isfinite(a)
        and math.isfinite(b)
    ]
    result = {
        "n": len(pairs),
        "pearson_r": math.nan,
        "pearson_p": math.nan,
        "spearman_rho": math.nan,
        "spearman_p": math.nan,
    }
    if len(pairs) < 3:
        return result
    xs, ys = zip(*pairs)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return result
    pearson = stats.pearsonr(xs, ys)
    spearman = stats.spearmanr(xs, ys)
    result.update(
        pearson_r=float(pearson[0]),
        pearson_p=float(pearson[1]),
        spearman_rho=float(spearman[0]),
        spearman_p=float(spearman[1]),
    )
    return result


def centred(points, x_key, y_key):
    """Returns the finite (x, y) pairs of `points`, each minus the mean of
    its (data set, k) task: what is left compares rules on the same task."""
    tasks = {}
    for p in points:
        x, y = p[x_key], p[y_key]
        if x is not None and y is not None and math.isfinite(x):
            if math.isfinite(y):
                key = (p["dataset"], p["classes"])
                tasks.setdefault(key, []).append((x, y))
    xs, ys = [], []
    for pairs in tasks.values():
        mean_x = sum(x for x, _ in pairs) / len(pairs)
        mean_y = sum(y for _, y in pairs) / len(pairs)
        xs += [x - mean_x for x, _ in pairs]
        ys += [y - mean_y for _, y in pairs]
    return xs, ys


def correlations(points, suffix=""):
    """Returns {angle: {scope: {measure: correlation}}}: each alignment
    measure (`ANGLES`) against the gap and the relative gap, over the
    non-bp points, for scope "all", each data set, and "within_task" (both
    variables centred per (data set, k), so that only differences between
    rules on one task count; its p-values ignore the degrees of freedom the
    centring takes). `suffix` "_mean" reads the rows' mean columns."""
    points = [p for p in points if p["rule"] != "bp"]
    scopes = {"all": points}
    for point in points:
        scopes.setdefault(point["dataset"], []).append(point)
    found = {}
    for angle in ANGLES:
        x = angle + suffix
        found[angle] = {
            scope: {
                measure: correlation(
                    [p[x] for p in group],
                    [p[measure + suffix] for p in group],
                )
                for measure in MEASURES
            }
            for scope, group in scopes.items()
        }
        found[angle]["within_task"] = {
            measure: correlation(*centred(points, x, measure + suffix))
            for measure in MEASURES
        }
    return found


def trends(points):
    """Returns, per (data set, non-bp rule), Spearman's rho of the number of
    classes against the gap and against the angle, over the single seeds:
    positive when the rule falls further behind (or aligns worse) as k
    grows."""
    from scipy import stats

    groups = {}
    for point in points:
        if point["rule"] != "bp":
            groups.setdefault((point["dataset"], point["rule"]), []).append(
                point
            )
    out = []
    for (dataset, rule), group in groups.items():
        entry = {"dataset": dataset, "rule": rule, "n": len(group)}
        for key in ("gap",) + ANGLES:
            pairs = [
                (p["classes"], p[key]) for p in group if math.isfinite(p[key])
            ]
            rho = math.nan
            if (
                len({k for k, _ in pairs}) > 1
                and len({v for _, v in pairs}) > 1
            ):
                rho = float(stats.spearmanr(*zip(*pairs))[0])
            entry[f"spearman_classes_{key}"] = rho
        out.append(entry)
    out.sort(key=lambda e: _order({**e, "classes": 0}))
    return out


RULE_STYLE = {
    "bp": ("black", "o"),
    "fa": ("tab:red", "s"),
    "dfa": ("tab:orange", "^"),
    "usf": ("tab:blue", "D"),
    "kp": ("tab:green", "v"),
}
DATASET_MARKERS = {"digits": "o", "mnist1d": "s", "cifar100": "^"}


def _style(rule):
    return RULE_STYLE.get(rule, ("tab:purple", "x"))


ANGLE_LABELS = {
    "angle": "final update angle (deg)",
    "angle_training": "update angle over training (deg)",
}


def _panels(rows, metrics, path, rules, reference=None):
    """A panel per (metric, data set): the metric against k, a line per
    rule. `metrics`: (key, y label) pairs, one row of panels each."""
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = harness.figure(4.2 * len(names), 3.6 * len(metrics))
    for row_index, (metric, ylabel) in enumerate(metrics):
        for index, name in enumerate(names):
            axes = fig.add_subplot(
                len(metrics), len(names), row_index * len(names) + index + 1
            )
            subset = [r for r in rows if r["dataset"] == name]
            ks = sorted({r["classes"] for r in subset})
            for rule in rules:
                line = [r for r in subset if r["rule"] == rule]
                if not line:
                    continue
                color, marker = _style(rule)
                axes.errorbar(
                    [r["classes"] for r in line],
                    [r[f"{metric}_mean"] for r in line],
                    yerr=[r[f"{metric}_std"] for r in line],
                    color=color,
                    marker=marker,
                    capsize=3,
                    label=rule,
                )
            if reference == "chance":
                axes.plot(
                    ks,
                    [1 / k for k in ks],
                    color="gray",
                    linestyle="--",
                    linewidth=1,
                    label="chance",
                )
            elif reference is not None:
                axes.axhline(
                    reference, color="gray", linestyle="--", linewidth=1
                )
            axes.set_xscale("log")
            axes.set_xticks(ks)
            axes.set_xticklabels([str(k) for k in ks])
            axes.minorticks_off()
            axes.set_xlabel("number of classes k")
            axes.set_ylabel(ylabel)
            axes.set_title(name)
            axes.grid(alpha=0.3)
            if index == 0 and row_index == 0:
                axes.legend(fontsize="small")
    fig.tight_layout()
    return harness.write_png(fig, path)


def _fmt(value, digits=2):
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _scatter(rows, found, path):
    """Gap (raw, relative) against each alignment measure: 2 x 2 panels."""
    others = [r for r in rows if r["rule"] != "bp"]
    fig = harness.figure(10.0, 8.4)
    for row_index, angle in enumerate(ANGLES):
        for column, measure in enumerate(MEASURES):
            axes = fig.add_subplot(2, 2, 2 * row_index + column + 1)
            for row in others:
                axes.errorbar(
                    row[f"{angle}_mean"],
                    row[f"{measure}_mean"],
                    xerr=row[f"{angle}_std"],
                    yerr=row[f"{measure}_std"],
                    color=_style(row["rule"])[0],
                    marker=DATASET_MARKERS.get(row["dataset"], "x"),
                    markersize=4 + 1.5 * math.log2(row["classes"]),
                    capsize=2,
                    linestyle="none",
                    alpha=0.8,
                )
            c = found[angle]["all"][measure]
            w = found[angle]["within_task"][measure]
            axes.set_title(
                f"Pearson r={_fmt(c['pearson_r'])}, Spearman "
                f"rho={_fmt(c['spearman_rho'])}, n={c['n']}\n"
                f"within a (data set, k): r={_fmt(w['pearson_r'])}, "
                f"rho={_fmt(w['spearman_rho'])}",
                fontsize="medium",
            )
            axes.set_xlabel(ANGLE_LABELS[angle])
            axes.set_ylabel(
                "accuracy gap to bp"
                if measure == "gap"
                else "relative gap: gap / (bp accuracy - 1/k)"
            )
            axes.axhline(0, color="gray", linewidth=1)
            axes.grid(alpha=0.3)
    axes = fig.axes[0]
    for rule in dict.fromkeys(r["rule"] for r in others):
        axes.plot(
            [], [], color=_style(rule)[0], marker="o", ls="none", label=rule
        )
    for name in dict.fromkeys(r["dataset"] for r in others):
        marker = DATASET_MARKERS.get(name, "x")
        axes.plot([], [], color="gray", marker=marker, ls="none", label=name)
    axes.legend(fontsize="x-small", ncol=2)
    fig.suptitle(
        "gap to bp against alignment; a point per (data set, k, rule), mean "
        "± std over seeds; larger marker: more classes",
        fontsize="small",
    )
    fig.tight_layout()
    return harness.write_png(fig, path)


def figures(rows, found, rules, directory):
    """Writes the four figures; returns their file names."""
    if not rows:
        return []
    others = [rule for rule in rules if rule != "bp"]
    paths = [
        _panels(
            rows,
            [("accuracy", "test accuracy")],
            os.path.join(directory, "accuracy_vs_classes.png"),
            rules,
            reference="chance",
        ),
        _panels(
            rows,
            [(angle, ANGLE_LABELS[angle]) for angle in ANGLES],
            os.path.join(directory, "angle_vs_classes.png"),
            others,
            reference=90,
        ),
        _panels(
            rows,
            [("gap", "accuracy gap to bp"), ("relative_gap", "relative gap")],
            os.path.join(directory, "gap_vs_classes.png"),
            others,
            reference=0,
        ),
        _scatter(rows, found, os.path.join(directory, "gap_vs_angle.png")),
    ]
    return [os.path.basename(path) for path in paths]


def _pm(mean, std, digits=3):
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def markdown(summary):
    """Returns summary.md: settings, the table, correlations and trends."""
    lines = _settings_lines(summary)
    lines += _rows_table(summary["rows"])
    lines += _correlation_table(summary)
    lines += _trends_table(summary["trends"])
    lines += ["", "Figures: " + ", ".join(summary["figures"]), ""]
    return "\n".join(lines)


def _settings_lines(summary):
    # The title, the command and its settings, the data sets skipped.
    settings = summary["settings"]
    lines = [
        "# Alignment and the number of classes",
        "",
        f"`{summary['command']}` ({settings['backend']} backend; "
        f"{settings['model']}, {OPTIMIZER} {LEARNING_RATE:g}, batch "
        f"{BATCH_SIZE}, {settings['epochs_at_10_classes']} epochs at 10 "
        "classes scaled by 10/k, seeds "
        f"0..{settings['seeds'] - 1}). Mean ± std over seeds. Angles: "
        f"the update angle on {PROBE} test examples, averaged over the "
        "hidden layers, after the last epoch (final) and averaged over the "
        "epochs (training). Gap: bp's test accuracy minus the rule's, same "
        "seed; relative gap: gap / (bp accuracy - 1/k). Late gain: test "
        "accuracy gained over the last fifth of the epochs.",
        "",
    ]
    for name, entry in summary["datasets"].items():
        if entry["status"] == "skipped":
            lines.append(f"- {name}: skipped, {entry['reason']}.")
    return lines


def _rows_table(rows):
    # A line per (data set, k, rule).
    lines = [
        "",
        "| data set | k | epochs | rule | test accuracy | final angle (deg) "
        "| training angle (deg) | gap to bp | relative gap | late gain |",
        "|---|---:|---:|---|---|---|---|---|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['classes']} | {row['epochs']} "
            f"| {row['rule']} "
            f"| {_pm(row['accuracy_mean'], row['accuracy_std'])} "
            f"| {_pm(row['angle_mean'], row['angle_std'], 1)} "
            f"| {_pm(row['angle_training_mean'], row['angle_training_std'], 1)}"
            f" | {_pm(row['gap_mean'], row['gap_std'])} "
            f"| {_pm(row['relative_gap_mean'], row['relative_gap_std'])} "
            f"| {_fmt(row['late_gain_mean'], 3)} |"
        )
    return lines


def _correlation_table(summary):
    # A line per (angle, points, scope, measure).
    lines = [
        "",
        "Correlation of the alignment (update angle) with the gap to bp, "
        "non-bp rules; points: the (data set, k, rule) means over seeds, or "
        "the single seeds; within_task: both centred per (data set, k):",
        "",
        "| angle | points | scope | gap | n | Pearson r (p) "
        "| Spearman rho (p) |",
        "|---|---|---|---|---:|---|---|",
    ]
    for label, key in (
        ("means", "correlation"),
        ("seeds", "correlation_seeds"),
    ):
        for angle, scopes in summary[key].items():
            for scope, measures in scopes.items():
                for measure, c in measures.items():
                    lines.append(
                        f"| {'final' if angle == 'angle' else 'training'} "
                        f"| {label} | {scope} | {measure.replace('_', ' ')} "
                        f"| {c['n']} | {_fmt(c['pearson_r'])} "
                        f"({_fmt(c['pearson_p'], 3)}) "
                        f"| {_fmt(c['spearman_rho'])} "
                        f"({_fmt(c['spearman_p'], 3)}) |"
                    )
    return lines


def _trends_table(trends):
    # A line per (data set, rule).
    lines = [
        "",
        "Trend with k (Spearman rho of k against the gap and the angles, "
        "single seeds; positive: worse with more classes):",
        "",
        "| data set | rule | n | rho(k, gap) | rho(k, final angle) "
        "| rho(k, training angle) |",
        "|---|---|---:|---|---|---|",
    ]
    for entry in trends:
        lines.append(
            f"| {entry['dataset']} | {entry['rule']} | {entry['n']} "
            f"| {_fmt(entry['spearman_classes_gap'])} "
            f"| {_fmt(entry['spearman_classes_angle'])} "
            f"| {_fmt(entry['spearman_classes_angle_training'])} |"
        )
    return lines


def command_of(argv):
    """Returns the command line that reproduces a run."""
    return harness.command_line("python -m benchmarks.paper.classes", argv)


#: What the summary's measures are.
DEFINITIONS = {
    "angle": "update angle per hidden layer (rule's update vs the true "
    "gradient, on the probe, after the last epoch), averaged over the "
    "hidden layers",
    "angle_training": "the same, averaged also over the epochs (measured "
    "after each)",
    "gap": "bp accuracy - rule accuracy, same data set, k and seed",
    "relative_gap": "gap / (bp accuracy - 1/k)",
    "late_gain": "test accuracy gained over the last fifth of the epochs",
}
#: The columns of the summary's `points`, one per non-bp row.
POINT_KEYS = (
    "dataset",
    "classes",
    "rule",
    "angle_mean",
    "angle_training_mean",
    "gap_mean",
    "relative_gap_mean",
)


def analyse(records, args, status, argv):
    """Returns the summary (a JSON-ready dict) of the records."""
    points = seed_points(records)
    rows = summarize(points)
    return {
        "experiment": NAME,
        "claim": "better alignment with the true gradient gives better FA "
        "accuracy on multi-class tasks; FA falls behind bp as k grows",
        "command": command_of(argv),
        "settings": _settings(args, status),
        "datasets": status,
        "rows": rows,
        "points": [
            {key: row[key] for key in POINT_KEYS}
            for row in rows
            if row["rule"] != "bp"
        ],
        "seed_points": [p for p in points if p["rule"] != "bp"],
        "correlation": correlations(rows, suffix="_mean"),
        "correlation_seeds": correlations(points),
        "trends": trends(points),
    }


def _settings(args, status):
    # The summary's settings: the run's, and what its measures are.
    return {
        "model": args.model,
        "rules": list(args.rules),
        "seeds": args.seeds,
        "epochs_at_10_classes": args.epochs,
        "epochs": {
            name: {
                str(k): epochs_for(k, args.epochs) for k in args.classes[name]
            }
            for name in status
        },
        "optimizer": OPTIMIZER,
        "learning_rate": LEARNING_RATE,
        "batch_size": BATCH_SIZE,
        "probe": PROBE,
        "quick": args.quick,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        **DEFINITIONS,
    }


def main(argv=None):
    """Runs the experiment; returns the summary dict (also written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    start = time.perf_counter()
    status = availability(args)
    for name, entry in status.items():
        if entry["status"] == "skipped":
            print(f"{name} skipped: {entry['reason']}.")
    check_cells(args, status)
    records = train(args, status)
    summary = analyse(records, args, status, argv)
    summary["figures"] = figures(
        summary["rows"], summary["correlation"], args.rules, args.output
    )
    harness.write_json(os.path.join(args.output, "summary.json"), summary)
    harness.write_atomic(
        os.path.join(args.output, "summary.md"), markdown(summary)
    )
    for angle in ANGLES:
        c = summary["correlation"][angle]["all"]["gap"]
        print(
            f"{ANGLE_LABELS[angle].split(' (')[0]} vs gap to bp over "
            f"{c['n']} (data set, k, rule) means: Pearson "
            f"r={_fmt(c['pearson_r'])}, Spearman rho={_fmt(c['spearman_rho'])}"
        )
    print(
        f"{len(records)} cells, {time.perf_counter() - start:.0f} s; results "
        f"in {os.path.abspath(args.output)}"
    )
    return summary


if __name__ == "__main__":
    main()
