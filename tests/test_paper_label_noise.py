"""Tests of benchmarks/paper/label_noise.py: the machinery of the
reproduction (its numbers are empirical and are not asserted): label
flips, data fallback, results, figures, determinism, argument errors."""

import json
import os

import numpy as np
import pytest

from benchmarks.paper import label_noise
from tests._benchmark_helpers import check_paper_command_line
from tests._benchmark_helpers import check_refused
from tests._benchmark_helpers import forbid
from tests._benchmark_helpers import is_png
from tests._benchmark_helpers import printed
from tests._benchmark_helpers import without_timing


def test_flip_is_exactly_the_fraction_and_to_another_class():
    for size, classes in [(4000, 10), (1347, 10), (300, 10), (51, 2)]:
        labels = np.random.default_rng(5).integers(0, classes, size)
        noisy, flipped = label_noise.flip_labels(labels, 0.2, classes, seed=3)
        assert flipped.sum() == round(0.2 * size)
        assert np.all(noisy[flipped] != labels[flipped])
        assert np.array_equal(noisy[~flipped], labels[~flipped])
        assert noisy.min() >= 0 and noisy.max() < classes
        again, again_flipped = label_noise.flip_labels(labels, 0.2, classes, 3)
        assert np.array_equal(again, noisy)
        assert np.array_equal(again_flipped, flipped)
        other, _ = label_noise.flip_labels(labels, 0.2, classes, seed=4)
        assert not np.array_equal(other, noisy)


def test_flips_spread_over_the_other_classes():
    labels = np.zeros(20000, dtype="int64")
    noisy, flipped = label_noise.flip_labels(labels, 0.2, 10, seed=0)
    counts = np.bincount(noisy[flipped], minlength=10)
    assert counts[0] == 0
    # 4000 flips over 9 classes: about 444 each.
    assert counts[1:].min() > 350 and counts[1:].max() < 540


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick run with an absent MNIST directory: the offline fallback."""
    output = str(tmp_path_factory.mktemp("label_noise"))
    absent = os.path.join(output, "no_tfds_here")
    argv = ["--quick", "--seeds", "1", "--datasets", "auto"]
    results, text = printed(
        label_noise.main, [*argv, "--data-dir", absent, "--output", output]
    )
    return output, absent, text.splitlines(), results


def test_falls_back_to_the_offline_sets_with_a_message(quick):
    _, absent, messages, results = quick
    assert "MNIST is not available" in messages[0]
    assert absent in messages[0]
    assert "falling back" in messages[0] and "digits" in messages[0]
    assert list(results["datasets"]) == ["digits"]
    assert not os.path.exists(absent)  # nothing was created there


def test_results_and_figures(quick):
    output, _, _, _ = quick
    with open(os.path.join(output, "results.json"), encoding="utf-8") as file:
        results = json.load(file)
    assert results["experiment"] == "label_noise"
    assert results["config"]["noise"] == 0.2
    assert results["datasets"]["digits"] == {
        "num_train": 300,
        "num_flipped": 60,
        "num_test": 450,
        "epochs": 4,
    }
    cells = results["cells"]
    assert [c["rule"] for c in cells] == ["bp", "fa", "dfa"]
    epochs = results["config"]["epochs"]
    for cell in cells:
        assert cell["num_flipped"] == 60 and cell["flipped_to_other_class"]
        assert cell["curves"]["epoch"] == [0, 2, 4] and epochs == 4
        assert len(cell["loss"]) == 2  # at the measured epochs 2 and 4
        assert cell["best_test"] == max(cell["curves"]["test"])
        assert cell["best_test_epoch"] in (0, 2, 4)
        assert cell["memorised_epoch"] in (None, 0, 2, 4)
        for key in label_noise.MEASURES:
            assert 0.0 <= cell["final"][key] <= 1.0
            assert cell["final"][key] == cell["curves"][key][-1]
    for row in results["summary"]:
        for key in (*label_noise.MEASURES, "best_test"):
            mean, std = row[key]
            assert 0.0 <= mean <= 1.0 and std == 0.0  # one seed
    for name in ("accuracy_digits.png", "curves_digits.png"):
        assert is_png(os.path.join(output, name))
    table = label_noise.summary_markdown(results)
    assert "300 training examples (60 flipped)" in table
    assert table.count("| fa |") == 1


def test_measures_agree_with_the_labels(quick):
    _, _, _, results = quick
    for cell in results["cells"]:
        final = cell["final"]
        # Train accuracy on noisy labels mixes memorised flips and kept
        # examples right; clean accuracy mixes the two the other way.
        share = cell["num_flipped"] / cell["num_train"]
        noisy = share * final["memorised"] + (1 - share) * final["kept_clean"]
        clean = (
            share * final["flipped_clean"] + (1 - share) * final["kept_clean"]
        )
        # The JSON keeps 6 decimals.
        assert final["train_noisy"] == pytest.approx(noisy, abs=1e-5)
        assert final["train_clean"] == pytest.approx(clean, abs=1e-5)


def test_deterministic_for_a_seed(quick):
    output, _, _, first = quick
    args = label_noise.parse_args(
        ["--quick", "--datasets", "digits", "--output", output]
    )
    data = label_noise.load_data(args)["digits"]
    again = label_noise.run_cell(args, "digits", data, "fa", seed=0)
    (before,) = [c for c in first["cells"] if c["rule"] == "fa"]
    assert without_timing(again) == without_timing(before)


def test_uses_mnist_when_prepared(prepared_mnist, tmp_path):
    root, examples = prepared_mnist  # a real TFDS directory, 60 + 30 images
    argv = ["--quick", "--seeds", "1", "--rules", "fa", "--train-size", "40"]
    results, text = printed(
        label_noise.main, [*argv, "--data-dir", root, "--output", str(tmp_path)]
    )
    assert "not available" not in text
    assert results["datasets"] == {
        "mnist": {
            "num_train": 40,
            "num_flipped": 8,
            "num_test": 30,
            "epochs": 4,
        }
    }
    (cell,) = results["cells"]
    assert cell["num_classes"] == 10 and cell["flipped_to_other_class"]
    assert os.path.exists(tmp_path / "accuracy_mnist.png")


def test_asking_for_absent_mnist_fails_with_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as error:
        label_noise.main(
            [
                "--quick",
                "--datasets",
                "mnist",
                "--data-dir",
                str(tmp_path / "absent"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert "tfds build mnist" in str(error.value.code)
    assert not os.path.exists(tmp_path / "out")


@pytest.fixture
def no_run(monkeypatch):
    """Makes the experiment fail the test if it starts."""
    forbid(monkeypatch, label_noise, "run")


BAD_ARGUMENTS = [
    ["--noise", "1.5"],
    ["--noise", "0"],
    ["--rules", "nope"],
    ["--rules", "fa,fa"],
    ["--datasets", "auto,digits"],
    ["--datasets", "imagenet"],
    ["--seeds", "0"],
    ["--hidden", "32,0"],
]


def test_bad_arguments_fail_fast(tmp_path, capsys, no_run):
    # Each error names its flag.
    cases = [(argv, (argv[0],)) for argv in BAD_ARGUMENTS]
    check_refused(label_noise.main, cases, tmp_path, capsys)


RANGE_ERRORS = [  # (flag, bad value, what is allowed)
    ("--train-size", "1", ">= 2"),
    ("--epochs", "0", ">= 1"),
    ("--eval-every", "-3", ">= 1"),
    ("--hidden", "-3", ">= 1"),
    ("--batch-size", "0", ">= 1"),
    ("--learning-rate", "0", "> 0"),
]


def test_command_line_is_checked_before_training(tmp_path, capsys, no_run):
    check_paper_command_line(label_noise, RANGE_ERRORS, tmp_path, capsys)
