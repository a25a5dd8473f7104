"""examples/transformer.py: a quick run writes its table and figure, with
a row per task and rule, and per-block angles that tell the rules apart."""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
)
import transformer  # noqa: E402

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")


# Three trainings keep it to seconds: bp and fa on digits (pooled logits,
# layer-wise rules), dfa on the language model (logits per position, a
# direct rule).
RUNS = {"digits": ("bp", "fa"), "lm": ("dfa",)}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    rows, outputs = [], {}
    for task, rules in RUNS.items():
        output = tmp_path_factory.mktemp(f"transformer_{task}")
        argv = ["--quick", "--tasks", task, "--rules", *rules]
        rows += transformer.main([*argv, "--output-dir", str(output)])
        outputs[task] = output
    return rows, outputs


def test_quick_run_rows(quick_run):
    rows, _ = quick_run
    keys = [(row["task"], row["rule"]) for row in rows]
    assert keys == [
        (task, rule) for task, rules in RUNS.items() for rule in rules
    ]
    for row in rows:
        metric = row["perplexity"] if row["task"] == "lm" else row["accuracy"]
        assert math.isfinite(metric) and row["seconds"] > 0
        if row["task"] == "lm":
            assert metric > 1  # exp of a cross-entropy
        else:
            assert 0 <= metric <= 1
        # Two blocks of six kernels each: query, key, value, attention
        # output and the two MLP layers (not the input projection or head).
        assert [len(kernels) for kernels in row["block_kernels"]] == [6, 6]
        assert all(
            kernel.split("/")[-1] in ("query", "key", "value")
            or kernel.split("/")[-1] == "attention_output"
            or "/" not in kernel
            for kernels in row["block_kernels"]
            for kernel in kernels
        )
        assert len(row["block_angles"]) == 2
        assert all(math.isfinite(a) for a in row["block_angles"])
        # Measured before training and after the (one) epoch.
        assert row["angle_epochs"] == [0.0, 1.0]
        assert len(row["loss_curve"]) == 1
        assert np.isfinite(row["loss_curve"]).all()


def test_quick_run_angles_tell_rules_apart(quick_run):
    rows, _ = quick_run
    for row in rows:
        angles = row["block_angles"]
        if row["rule"] == "bp":
            np.testing.assert_allclose(angles, 0.0, atol=0.1)
        else:
            # A rule that fell back to backprop would measure 0.
            assert min(angles) > 5.0, (row["task"], row["rule"], angles)


@pytest.mark.parametrize("task", list(RUNS))
def test_quick_run_files(quick_run, task):
    output = quick_run[1][task]
    # Only the two files: no temporary file left behind.
    assert sorted(os.listdir(output)) == [
        "transformer.png",
        "transformer_example.md",
    ]
    with open(output / "transformer.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    text = (output / "transformer_example.md").read_text()
    metric = "test perplexity" if task == "lm" else "test accuracy"
    assert f"\n{task}: " in text
    assert (
        f"| rule | {metric} | update angle block 0 (deg) | "
        "update angle block 1 (deg) | time (s) |"
    ) in text
    for rule in RUNS[task]:
        assert text.count(f"\n| {rule} | ") == 1


def test_bad_arguments_name_the_option(capsys):
    with pytest.raises(SystemExit):
        transformer.main(["--epochs", "0"])
    assert "--epochs must be a positive integer. Received: '0'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        transformer.main(["--rules", "sgd"])
    assert "invalid choice: 'sgd'" in capsys.readouterr().err


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old")

    def fail(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        transformer._write_atomic(str(path), fail)
    # The old file whole, no temporary file.
    assert os.listdir(tmp_path) == ["table.md"]
    assert path.read_text() == "old"
    transformer._write_atomic(str(path), lambda file: file.write(b"new"))
    assert os.listdir(tmp_path) == ["table.md"]
    assert path.read_text() == "new"
