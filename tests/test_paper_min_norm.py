"""Tests of benchmarks/paper/min_norm.py: what the theory guarantees.

For every rule that keeps the local kernel gradient, W1's update is
`X^T (...)`, so W1's component outside the row space of X never changes and
the end-to-end map's null-space part is `P_perp W1(0) W2(t)`, proportional to
the initial scale; once training interpolates, the row-space part is the
minimum-norm solution. The quick run (a few seconds) must show exactly that.
"""

import json
import os

import numpy as np
import pytest

from benchmarks.paper import min_norm
from tests._benchmark_helpers import check_paper_command_line
from tests._benchmark_helpers import check_refused
from tests._benchmark_helpers import forbid
from tests._benchmark_helpers import is_png
from tests._benchmark_helpers import without_timing


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick run (bp and fa, scales 1, 0.1, 0.01), 2 seeds."""
    output = str(tmp_path_factory.mktemp("min_norm"))
    min_norm.main(["--quick", "--seeds", "2", "--output", output])
    with open(os.path.join(output, "results.json"), encoding="utf-8") as file:
        return output, json.load(file)


def test_writes_results_and_figures(quick):
    output, results = quick
    assert results["experiment"] == "min_norm"
    assert results["config"]["rules"] == ["bp", "fa"]
    assert results["config"]["scales"] == [1.0, 0.1, 0.01]
    assert len(results["runs"]) == 2 * 2 * 3
    for key in ("summary", "slopes", "backend", "versions", "seconds"):
        assert key in results
    for run in results["runs"]:
        for key in (
            "distance",
            "null_part",
            "null_part_theory",
            "row_part",
            "w1_null_drift",
            "loss",
            "steps",
            "loss_curve",
        ):
            assert key in run
        assert ("distance_to_bp" in run) == (run["rule"] != "bp")
    assert len(results["summary"]) == 2 * 3
    assert {row["seeds"] for row in results["summary"]} == {2}
    for name in ("distance.png", "training.png"):
        assert is_png(os.path.join(output, name))
    table = open(os.path.join(output, "summary.md"), encoding="utf-8").read()
    assert table.count("| fa |") == 3 and table.count("| bp |") == 3


def test_training_converges(quick):
    _, results = quick
    tolerance = results["config"]["tolerance"]
    for run in results["runs"]:
        assert run["converged"], run
        assert run["loss"] < tolerance
        assert run["loss_curve"][0] > 1e3 * tolerance  # it had to learn
        assert run["steps"] > 0


def test_w1_outside_the_row_space_is_unchanged(quick):
    # The update of W1 is X^T (...) under fa and bp: its null-space part
    # moves by float32 rounding only, though W1 itself moves a lot.
    _, results = quick
    for run in results["runs"]:
        assert run["w1_null_drift"] < 1e-4, run
        assert run["w1_null_start"] > 0.1 * run["scale"]
        # Hence the map's null-space part is P_perp W1(0) W2(T).
        assert run["null_part"] == pytest.approx(
            run["null_part_theory"], rel=1e-3, abs=1e-6
        )


def test_distance_to_min_norm_shrinks_with_the_scale(quick):
    _, results = quick
    for rule in ("bp", "fa"):
        for seed in (0, 1):
            runs = sorted(
                (
                    r
                    for r in results["runs"]
                    if r["rule"] == rule and r["seed"] == seed
                ),
                key=lambda r: -r["scale"],
            )
            distances = [r["distance"] for r in runs]
            assert all(a > b for a, b in zip(distances, distances[1:]))
            assert distances[-1] < 0.05 * distances[0], distances
            # The row-space part is the training loss's, not the scale's.
            for r in runs:
                assert r["row_part"] < 1e-2
    slopes = results["slopes"]
    for rule in ("bp", "fa"):
        assert 0.8 < slopes[rule]["mean_std"][0] < 1.3


def test_fa_is_not_backprop_and_both_reach_the_same_map(quick):
    _, results = quick
    fa = {
        (r["seed"], r["scale"]): r for r in results["runs"] if r["rule"] == "fa"
    }
    for seed in (0, 1):
        # Feedback alignment takes another path from a large start...
        assert fa[seed, 1.0]["distance_to_bp"] > 1e-2
        assert fa[seed, 1.0]["w2_b2_angle"] > 1.0
        # ...and ends at bp's map when both start near 0.
        assert (
            fa[seed, 0.01]["distance_to_bp"]
            < 0.1 * fa[seed, 1.0]["distance_to_bp"]
        )


def test_deterministic_for_a_seed(quick, tmp_path):
    _, first = quick
    min_norm.main(
        [
            "--quick",
            "--seeds",
            "1",
            "--rules",
            "fa",
            "--scales",
            "0.1",
            "--output",
            str(tmp_path),
        ]
    )
    with open(tmp_path / "results.json", encoding="utf-8") as file:
        (again,) = json.load(file)["runs"]
    (before,) = [
        r
        for r in first["runs"]
        if (r["rule"], r["seed"], r["scale"]) == ("fa", 0, 0.1)
    ]
    before = dict(before)
    before.pop("distance_to_bp")
    assert without_timing(again) == without_timing(before)


def test_problem_and_min_norm_solution():
    x, y = min_norm.make_problem(0, samples=5, features=20, outputs=2)
    assert x.shape == (5, 20) and y.shape == (5, 2) and x.dtype == "float32"
    solution = min_norm.min_norm_solution(x, y)
    np.testing.assert_allclose(x @ solution, y, atol=1e-5)
    null = min_norm.null_projector(x)
    np.testing.assert_allclose(null @ solution, 0.0, atol=1e-6)
    np.testing.assert_allclose(null @ null, null, atol=1e-10)
    again = min_norm.make_problem(0, samples=5, features=20, outputs=2)
    np.testing.assert_array_equal(again[0], x)


@pytest.fixture
def no_run(monkeypatch):
    """Makes the experiment fail the test if it starts."""
    forbid(monkeypatch, min_norm, "run")


BAD_ARGUMENTS = [  # (command line, words of the error)
    # Not under-determined.
    (["--samples", "30", "--features", "20"], ("(30)", "(20)")),
    (["--scales", "a"], ("--scales", "'a'")),
    # Direct rules have no W1 update of this form.
    (["--rules", "dfa"], ("--rules", "dfa")),
    (["--rules", "fa,FA"], ("--rules", "rule fa given more than once")),
    (["--scales", "1,0.1,1"], ("--scales", "scale 1.0 given more")),
    (["--seeds", "0"], ("--seeds", "'0'")),
    (["--hidden", "1", "--outputs", "2"], ("--hidden (1)", "(2)")),
]


def test_bad_arguments_fail_fast(tmp_path, capsys, no_run):
    check_refused(min_norm.main, BAD_ARGUMENTS, tmp_path, capsys)


RANGE_ERRORS = [  # (flag, bad value, what is allowed)
    ("--scales", "1,0", "> 0"),
    ("--features", "0", ">= 1"),
    ("--samples", "-3", ">= 1"),
    ("--hidden", "0", ">= 1"),
    ("--outputs", "0", ">= 1"),
    ("--learning-rate", "-1", "> 0"),
    ("--tolerance", "0", "> 0"),
    ("--max-steps", "0", ">= 1"),
]


def test_command_line_is_checked_before_training(tmp_path, capsys, no_run):
    check_paper_command_line(min_norm, RANGE_ERRORS, tmp_path, capsys)
