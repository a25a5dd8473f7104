"""Tests of benchmarks/paper/classes.py: the machinery, not the finding.

Whether alignment predicts the gap to backprop is what the experiment
measures, so nothing here asserts it. What is checked: the quick run writes
its JSON, Markdown and PNGs; gaps, means and correlations are what they say
(against scipy and against numbers worked out by hand); a seed gives the
same cell twice; finished cells are reused and a rerun changes nothing;
CIFAR-100 without data is skipped with a message; bad arguments fail before
any training.
"""

import json
import math
import os
import shutil
import time

import numpy as np
import pytest
from scipy import stats

from benchmarks import harness
from benchmarks import run
from benchmarks.paper import classes
from tests._benchmark_helpers import check_output_through_a_file
from tests._benchmark_helpers import forbid
from tests._benchmark_helpers import is_png
from tests._benchmark_helpers import printed

FIGURES = (
    "accuracy_vs_classes.png",
    "angle_vs_classes.png",
    "gap_vs_classes.png",
    "gap_vs_angle.png",
)


def _main(argv):
    return printed(classes.main, argv)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run (digits, k = 2 and 4, bp and fa, one seed)."""
    output = str(tmp_path_factory.mktemp("classes"))
    argv = ["--quick", "--output", output]
    summary, printed = _main(argv)
    return {"output": output, "argv": argv, "summary": summary, "out": printed}


def _cells(output):
    directory = os.path.join(output, "cells")
    return {
        name: json.load(open(os.path.join(directory, name)))
        for name in sorted(os.listdir(directory))
        if name.endswith(".json")
    }


def test_quick_writes_json_markdown_and_figures(quick):
    output = quick["output"]
    summary = json.load(open(os.path.join(output, "summary.json")))
    for key in (
        "claim",
        "command",
        "settings",
        "datasets",
        "rows",
        "points",
        "seed_points",
        "correlation",
        "correlation_seeds",
        "trends",
        "figures",
    ):
        assert key in summary
    assert summary["datasets"]["digits"] == {"classes": [2, 4], "status": "ran"}
    assert summary["settings"]["epochs"]["digits"] == {"2": 5, "4": 3}
    cells = _cells(output)
    assert sorted(cells) == sorted(
        f"digits-c{k}__mlp__{rule}__seed0.json"
        for k in (2, 4)
        for rule in ("bp", "fa")
    )
    rows = {(r["classes"], r["rule"]): r for r in summary["rows"]}
    assert sorted(rows) == [(2, "bp"), (2, "fa"), (4, "bp"), (4, "fa")]
    for (k, rule), row in rows.items():
        cell = cells[f"digits-c{k}__mlp__{rule}__seed0.json"]
        bp = cells[f"digits-c{k}__mlp__bp__seed0.json"]
        assert cell["num_classes"] == k
        assert len(cell["history"]["val_accuracy"]) == row["epochs"]
        assert row["seeds"] == 1 and row["accuracy_std"] == 0.0
        assert row["accuracy_mean"] == cell["test_accuracy"]
        assert row["angle_mean"] == pytest.approx(
            np.mean(cell["hidden_update_angles"])
        )
        per_epoch = [
            cell["history"][f"{name}/update_angle"]
            for name in cell["layers"][:-1]
        ]
        assert len(per_epoch) == 2  # two hidden layers
        assert row["angle_training_mean"] == pytest.approx(np.mean(per_epoch))
        gap = bp["test_accuracy"] - cell["test_accuracy"]
        assert row["gap_mean"] == pytest.approx(gap)
        assert row["relative_gap_mean"] == pytest.approx(
            gap / (bp["test_accuracy"] - 1 / k)
        )
        if rule == "bp":
            assert row["gap_mean"] == 0.0
            assert row["angle_mean"] < 1e-2
        else:
            assert row["angle_mean"] > 5  # not silently backprop
    # Two non-bp points: a correlation is undefined, and says so.
    for angle in classes.ANGLES:
        for scope in ("all", "digits", "within_task"):
            for measure in classes.MEASURES:
                found = summary["correlation"][angle][scope][measure]
                assert found["n"] == 2 and found["pearson_r"] is None
    assert len(summary["points"]) == 2
    assert summary["figures"] == list(FIGURES)
    for name in FIGURES:
        assert is_png(os.path.join(output, name))
    table = open(os.path.join(output, "summary.md")).read()
    assert table.count("| digits | 2 | 5 |") == 2
    assert table.count("| digits | 4 | 3 |") == 2
    assert "cifar100: skipped" in table


def test_rerun_trains_only_the_missing_cell_and_gives_the_same(
    quick, monkeypatch
):
    # Resumable and deterministic: with one cell deleted, a rerun trains
    # that cell alone, from the same seed, and writes the same summary.
    output = quick["output"]
    before = open(os.path.join(output, "summary.json")).read()
    name = "digits-c2__mlp__fa__seed0.json"
    cell = _cells(output)[name]
    os.remove(os.path.join(output, "cells", name))
    trained = []
    real = run.run_cell

    def counted(args, task, model, rule, seed):
        trained.append((task.name, task.num_classes, model, rule, seed))
        return real(args, task, model, rule, seed)

    monkeypatch.setattr(run, "run_cell", counted)
    _main(quick["argv"])
    assert trained == [("digits", 2, "mlp", "fa", 0)]
    again = _cells(output)[name]
    assert again["classes"] == cell["classes"]
    assert again["test_accuracy"] == cell["test_accuracy"]
    assert again["history"]["loss"] == cell["history"]["loss"]
    assert again["hidden_update_angles"] == cell["hidden_update_angles"]
    after = open(os.path.join(output, "summary.json")).read()
    assert after == before


def test_cells_of_other_settings_are_refused(quick, tmp_path):
    shutil.copytree(os.path.join(quick["output"], "cells"), tmp_path / "cells")
    with pytest.raises(SystemExit, match="other settings"):
        _main(["--quick", "--epochs", "2", "--output", str(tmp_path)])


# Cell files that are not cells: what run.load_cell says of each.
NOT_CELLS = {
    "truncated": (lambda text: text[: len(text) // 2], "is not valid JSON"),
    "a list": (lambda text: "[1, 2, 3]", "not a cell record"),
    "no config": (
        lambda text: json.dumps({**json.loads(text), "config": None}),
        "has no config",
    ),
}


@pytest.mark.parametrize("damage", list(NOT_CELLS))
def test_a_file_that_is_not_a_cell_is_named_kept_and_run_again(
    quick, tmp_path, monkeypatch, capsys, damage
):
    # Two damaged cells, one of which has a `.bad` file already: both are
    # named on stderr with what is wrong and moved aside (the older `.bad`
    # kept) before the first cell trains, and both train again. Training
    # is replaced by the cell's original record: what is tested is the
    # handling of the files.
    output = tmp_path / "out"
    shutil.copytree(os.path.join(quick["output"], "cells"), output / "cells")
    originals = _cells(str(output))
    make, problem = NOT_CELLS[damage]
    names = ["digits-c2__mlp__fa__seed0.json", "digits-c4__mlp__bp__seed0.json"]
    paths = [str(output / "cells" / name) for name in names]
    damaged = {}
    for path in paths:
        with open(path) as file:
            damaged[path] = make(file.read())
        with open(path, "w") as file:
            file.write(damaged[path])
    with open(paths[1] + ".bad", "w") as file:
        file.write("an older bad file")
    trained = []

    def fake_run_cell(args, task, model, rule, seed):
        # Both files were moved aside before anything trained.
        assert trained or not any(map(os.path.exists, paths))
        name = f"digits-c{task.num_classes}__{model}__{rule}__seed{seed}.json"
        trained.append(name)
        return originals[name]

    monkeypatch.setattr(run, "run_cell", fake_run_cell)
    argv = ["--quick", "--output", str(output)]
    summary, _ = _main(argv)
    assert trained == names
    lines = capsys.readouterr().err.splitlines()
    for path, moved in zip(paths, [".bad", ".bad2"]):
        line = next(line for line in lines if line.startswith(path + " "))
        assert problem in line
        assert line.endswith(
            f": moved aside to {path + moved}; the cell runs again."
        )
        with open(path + moved) as file:
            assert file.read() == damaged[path]
    with open(paths[1] + ".bad") as file:
        assert file.read() == "an older bad file"
    assert _cells(str(output)) == originals
    assert summary["rows"] == quick["summary"]["rows"]


def test_an_output_through_a_file_is_refused_before_training(
    tmp_path, monkeypatch, capsys
):
    forbid(monkeypatch, run, "run_cell")
    forbid(monkeypatch, classes, "availability")
    check_output_through_a_file(classes.main, tmp_path, capsys)


def test_cifar100_without_data_is_skipped_with_a_message(quick, tmp_path):
    # No --data-dir: skipped before any TFDS look-up.
    lines = [line for line in quick["out"].splitlines() if "cifar100" in line]
    assert len(lines) == 1 and lines[0].startswith("cifar100 skipped: ")
    entry = quick["summary"]["datasets"]["cifar100"]
    assert entry["status"] == "skipped" and "--data-dir" in entry["reason"]
    # A --data-dir without it: looked up, not downloaded, nothing written.
    empty = tmp_path / "tfds"
    empty.mkdir()
    output = str(tmp_path / "out")
    start = time.perf_counter()
    summary, printed = _main(
        ["--quick", "--datasets", "cifar100", "--data-dir", str(empty)]
        + ["--output", output]
    )
    assert time.perf_counter() - start < 15
    entry = summary["datasets"]["cifar100"]
    assert entry["status"] == "skipped"
    assert "not prepared" in entry["reason"] and str(empty) in entry["reason"]
    assert "download=False" in entry["detail"]
    assert printed.startswith("cifar100 skipped: not prepared")
    assert os.listdir(empty) == []
    assert summary["rows"] == [] and summary["figures"] == []
    assert summary["correlation"]["angle"]["all"]["gap"]["n"] == 0
    saved = json.load(open(os.path.join(output, "summary.json")))
    assert saved["datasets"]["cifar100"]["status"] == "skipped"


BAD_ARGUMENTS = (
    ["--seeds", "0"],
    ["--classes", "1"],
    ["--classes", "2,x"],
    ["--classes", "11"],  # digits has 10 classes
    ["--rules", "fa,dfa"],  # no bp to take the gap to
    ["--rules", "bp"],
    ["--rules", "bp,nope"],
    ["--rules", "bp,fa,BP"],  # bp twice
    ["--datasets", "mnist"],
    ["--epochs", "0"],
    ["--model", "resnet20"],
)


def test_arguments_defaults_and_failures(tmp_path, capsys):
    output = tmp_path / "out"
    for argv in BAD_ARGUMENTS:
        start = time.perf_counter()
        with pytest.raises(SystemExit) as error:
            classes.main(["--quick", "--output", str(output), *argv])
        assert error.value.code == 2, argv
        assert time.perf_counter() - start < 2, argv
        assert not output.exists(), argv
        assert "error:" in capsys.readouterr().err, argv
    full = classes.parse_args([])
    assert full.seeds == 3 and full.epochs == classes.EPOCHS
    assert full.rules == ("bp", "fa", "dfa", "usf", "kp")
    assert full.classes == {
        "digits": (2, 5, 10),
        "mnist1d": (2, 5, 10),
        "cifar100": (2, 5, 10, 20, 50, 100),
    }
    assert full.output.endswith(os.path.join("results", "paper", "classes"))
    # A quick run never writes over the committed results.
    assert classes.parse_args(["--quick"]).output == classes.QUICK_OUTPUT
    digits = classes.parse_args(["--classes", "5,2,5"]).classes["digits"]
    assert digits == (2, 5)
    # Rule names ignore case, as in the layers.
    assert classes.parse_args(["--rules", "BP,Fa"]).rules == ["bp", "fa"]
    ks = (2, 5, 10, 20, 50, 100)
    assert [classes.epochs_for(k, 30) for k in ks] == [150, 60, 30, 15, 6, 3]
    assert classes.epochs_for(100, 1) == 1


def _record(dataset, k, rule, seed, accuracy, angles, history=(0.5, 0.6)):
    # A cell as benchmarks/run.py writes it, reduced to what is read; each
    # hidden layer's angle was 10 degrees larger after the first epoch.
    names = [f"hidden_{i}" for i in range(len(angles))] + ["output"]
    record = {
        "config": {"dataset": dataset, "classes": k, "epochs": len(history)},
        "rule": rule,
        "seed": seed,
        "test_accuracy": accuracy,
        "layers": names,
        "hidden_update_angles": list(angles),
        "history": {"val_accuracy": list(history)},
    }
    for name, angle in zip(names, angles):
        record["history"][f"{name}/update_angle"] = [angle + 10, angle]
    return record


def test_gaps_and_means_by_hand():
    records = [
        _record("digits", 2, "bp", 0, 0.9, [0.0, 0.0]),
        _record("digits", 2, "bp", 1, 0.8, [0.0, 0.0]),
        _record("digits", 2, "fa", 0, 0.7, [60.0, 80.0]),
        _record("digits", 2, "fa", 1, 0.5, [50.0, math.nan]),
        _record("digits", 5, "fa", 0, 0.4, [70.0, 70.0]),  # no bp
    ]
    points = classes.seed_points(records)
    fa0, fa1 = points[2], points[3]
    assert fa0["gap"] == pytest.approx(0.2)
    assert fa0["relative_gap"] == pytest.approx(0.2 / 0.4)
    assert fa0["angle"] == 70.0 and fa1["angle"] == 50.0  # NaN skipped
    assert fa0["angle_training"] == 75.0 and fa1["angle_training"] == 55.0
    assert fa1["relative_gap"] == pytest.approx(0.3 / 0.3)
    assert math.isnan(points[4]["gap"])
    assert fa0["late_gain"] == pytest.approx(0.1)
    rows = {(r["classes"], r["rule"]): r for r in classes.summarize(points)}
    fa = rows[(2, "fa")]
    assert fa["accuracy_mean"] == pytest.approx(0.6)
    assert fa["accuracy_std"] == pytest.approx(np.std([0.7, 0.5], ddof=1))
    assert fa["gap_mean"] == pytest.approx(0.25)
    assert fa["angle_mean"] == pytest.approx(60.0)
    assert fa["angle_training_mean"] == pytest.approx(65.0)
    assert fa["layer_angles_mean"] == pytest.approx([55.0, 80.0])
    assert rows[(2, "bp")]["gap_mean"] == 0.0


def _synthetic():
    # Two data sets' worth of made-up cells with unequal gaps and angles.
    rng = np.random.default_rng(0)
    records = []
    for dataset in ("digits", "mnist1d"):
        for k in (2, 5, 10):
            for seed in range(2):
                bp = 0.95 - 0.02 * k + 0.01 * seed
                records.append(_record(dataset, k, "bp", seed, bp, [0, 0]))
                for rule in ("fa", "usf", "dfa"):
                    angle = rng.uniform(20, 90)
                    accuracy = bp - rng.uniform(0, 0.2)
                    records.append(
                        _record(dataset, k, rule, seed, accuracy, [angle] * 2)
                    )
    return records


def _ranks(values):
    order = np.argsort(values)
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def _as_array(values, tasks):
    return np.array(values, dtype=float)


def _centre(values, tasks):
    # Each task's values minus their mean.
    values = np.array(values, dtype=float)
    for task in set(tasks):
        mask = np.array([t == task for t in tasks])
        values[mask] -= values[mask].mean()
    return values


def test_correlation_equals_scipy_and_hand_computation(tmp_path):
    args = classes.parse_args(["--datasets", "digits,mnist1d"])
    status = {name: {"status": "ran"} for name in ("digits", "mnist1d")}
    summary = classes.analyse(_synthetic(), args, status, [])
    summary["figures"] = []
    path = harness.write_json(tmp_path / "summary.json", summary)
    saved = json.load(open(path))
    assert len(saved["points"]) == 2 * 3 * 3
    points = saved["points"]
    tasks = [(p["dataset"], p["classes"]) for p in points]
    for angle in classes.ANGLES:
        for scope in ("all", "digits", "mnist1d", "within_task"):
            chosen = [
                p
                for p in points
                if scope in ("all", "within_task", p["dataset"])
            ]
            centre = _centre if scope == "within_task" else _as_array
            x = centre([p[f"{angle}_mean"] for p in chosen], tasks)
            for measure in classes.MEASURES:
                y = centre([p[f"{measure}_mean"] for p in chosen], tasks)
                found = saved["correlation"][angle][scope][measure]
                assert found["n"] == len(chosen)
                pearson = stats.pearsonr(x, y)
                spearman = stats.spearmanr(x, y)
                assert found["pearson_r"] == pytest.approx(pearson[0])
                assert found["pearson_p"] == pytest.approx(pearson[1])
                assert found["spearman_rho"] == pytest.approx(spearman[0])
                assert found["spearman_p"] == pytest.approx(spearman[1])
                # By hand: r is the cosine of the centred vectors; rho is
                # r of the ranks (no ties here).
                xc, yc = x - x.mean(), y - y.mean()
                r = xc @ yc / np.sqrt((xc @ xc) * (yc @ yc))
                assert found["pearson_r"] == pytest.approx(r)
                rx, ry = _ranks(x), _ranks(y)
                rx, ry = rx - rx.mean(), ry - ry.mean()
                rho = rx @ ry / np.sqrt((rx @ rx) * (ry @ ry))
                assert found["spearman_rho"] == pytest.approx(rho)
    seeds = saved["correlation_seeds"]["angle"]["all"]["gap"]
    assert seeds["n"] == len(saved["seed_points"]) == 2 * 3 * 3 * 2
    text = classes.markdown(summary)
    assert "| final | means | all | gap | 18 |" in text
    # Edge cases.
    perfect = classes.correlation([1, 2, 3, 4], [2, 4, 6, 9])
    assert perfect["n"] == 4 and perfect["spearman_rho"] == pytest.approx(1)
    assert perfect["pearson_r"] > 0.99
    flipped = classes.correlation([1, 2, 3], [3, 2, 1])
    assert flipped["pearson_r"] == pytest.approx(-1)
    too_few = classes.correlation([1, 2, math.nan], [1, 2, 3])
    assert too_few["n"] == 2 and math.isnan(too_few["pearson_r"])
    constant = classes.correlation([1, 2, 3], [5, 5, 5])
    assert constant["n"] == 3 and math.isnan(constant["spearman_rho"])
