"""examples/transformer.py: a quick run writes its table and figure, with
a row per task and rule, and per-block angles that tell the rules apart."""

import math
import os
import shlex
import sys

import keras
import numpy as np
import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
)
import transformer  # noqa: E402

import keras_fa.files  # noqa: E402

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")


TABLE = "transformer_example.md"
# Three trainings keep it to seconds: bp and fa on digits (pooled logits,
# layer-wise rules), dfa on the language model (logits per position, a
# direct rule).
RUNS = {"digits": ("bp", "fa"), "lm": ("dfa",)}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    # digits writes into --output-dir; lm replaces the files of an earlier
    # run named by --figure and --table, as asked by --overwrite.
    rows, outputs = [], {}
    for task, rules in RUNS.items():
        output = tmp_path_factory.mktemp(f"transformer_{task}")
        argv = ["--quick", "--tasks", task, "--rules", *rules]
        if task == "lm":
            figure, table = output / "transformer.png", output / TABLE
            figure.write_bytes(b"an earlier figure")
            table.write_text("an earlier table")
            argv += ["--figure", str(figure), "--table", str(table)]
            argv += ["--overwrite"]
        else:
            argv += ["--output-dir", str(output)]
        rows += transformer.main(argv)
        outputs[task] = output, argv
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
    output, argv = quick_run[1][task]
    # Only the two files: no temporary file left behind.
    assert sorted(os.listdir(output)) == [
        "transformer.png",
        "transformer_example.md",
    ]
    with open(output / "transformer.png", "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    text = (output / "transformer_example.md").read_text()
    # Headed by the command that made it.
    backend = keras.backend.backend()
    command = shlex.join(["python", "examples/transformer.py", *argv])
    assert text.startswith(f"# `KERAS_BACKEND={backend} {command}`\n")
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


def test_a_failed_figure_keeps_the_old_one(tmp_path, monkeypatch):
    # Written through keras_fa.files.atomic_open (tests/test_files.py).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = tmp_path / "transformer.png"
    path.write_bytes(b"old")

    def fail(canvas, file, **kwargs):
        file.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", fail)
    row = _fake_train("digits", "bp", None, None, None, 0, 0)
    with pytest.raises(RuntimeError, match="disk full"):
        transformer.plot([row], ["digits"], str(path))
    # The old file whole, no temporary file.
    assert os.listdir(tmp_path) == ["transformer.png"]
    assert path.read_bytes() == b"old"


def _fake_train(task, rule, data, model_args, settings, seed, probe_size):
    # A row as `train` returns it, without training.
    return {
        "task": task,
        "rule": rule,
        "block_angles": [10.0, 20.0],
        "seconds": 0.1,
        "loss_curve": [2.0],
        "angle_epochs": [0.0, 1.0],
        "angle_curves": [[30.0, 10.0], [40.0, 20.0]],
        "block_kernels": [[], []],
        "accuracy": 0.5,
    }


def test_default_output_is_a_directory_of_its_own(tmp_path, monkeypatch):
    # By default a run writes into runs/transformer_example/ of the current
    # directory, never over the committed figure and results; a second run
    # there is refused before any work unless given --overwrite. Nothing
    # trains: `train` returns a made-up row, and a write anywhere but under
    # tmp_path fails (without the fix it would hit the committed files).
    written = []
    real_open = keras_fa.files.atomic_open

    def atomic_open(path, mode="w"):
        path = os.path.abspath(path)
        assert path.startswith(str(tmp_path) + os.sep), path
        written.append(os.path.relpath(path, tmp_path))
        return real_open(path, mode)

    # Every file the example writes goes through atomic_open.
    monkeypatch.setattr(keras_fa.files, "atomic_open", atomic_open)
    monkeypatch.setattr(transformer, "train", _fake_train)
    monkeypatch.chdir(tmp_path)
    argv = ["--quick", "--tasks", "digits", "--rules", "bp"]
    transformer.main(argv)
    directory = os.path.join("runs", "transformer_example")
    assert written == [
        os.path.join(directory, TABLE),
        os.path.join(directory, "transformer.png"),
    ]
    table = tmp_path / directory / TABLE
    before = table.read_text()

    def never(*args, **kwargs):
        raise AssertionError("work started before the error")

    with monkeypatch.context() as patch:
        patch.setattr(transformer, "load", never)
        with pytest.raises(SystemExit) as exit:
            transformer.main(argv)
    assert exit.value.code == 2
    assert len(written) == 2 and table.read_text() == before
    transformer.main([*argv, "--overwrite"])
    assert written[2:] == written[:2]


def _bad_path(tmp_path, flag, problem, user_file):
    # (path, words of the error) of a bad `flag` of kind `problem`.
    if problem == "through a file":
        return user_file / "out", f"{user_file} is a file, not a directory"
    if flag != "--output-dir":
        if problem == "a file":
            return user_file, "give --overwrite to replace it"
        return tmp_path, "it is a directory"
    path = tmp_path / problem.replace(" ", "_")
    if problem == "a file":
        # A directory holding a file of an earlier run.
        path.mkdir()
        (path / TABLE).write_text("the user's")
        return path, "give --overwrite to replace it"
    (path / "transformer.png").mkdir(parents=True)
    return path, "it is a directory"


@pytest.mark.parametrize("flag", ["--output-dir", "--figure", "--table"])
def test_bad_output_paths_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys, flag
):
    def never(*args, **kwargs):
        raise AssertionError("work started before the error")

    monkeypatch.setattr(transformer, "load", never)
    monkeypatch.setattr(transformer, "train", never)
    user_file = tmp_path / "kept"
    user_file.write_text("the user's")
    for problem in ("through a file", "a file", "a directory"):
        path, words = _bad_path(tmp_path, flag, problem, user_file)
        with pytest.raises(SystemExit) as exit:
            transformer.main(["--quick", flag, str(path)])
        assert exit.value.code == 2, problem
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {flag}: cannot write " in error, problem
        assert str(path) in error and words in error, problem
        assert user_file.read_text() == "the user's"
        if flag == "--output-dir" and problem == "a file":
            assert (path / TABLE).read_text() == "the user's"


def test_the_readme_regenerates_the_committed_files_explicitly():
    # The documented command names the committed figure and table (and
    # --overwrite, as they exist); run without arguments, the example
    # writes elsewhere.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    page = os.path.join(root, "docs", "transformers.md")
    with open(page, encoding="utf-8") as file:
        readme = file.read()
    command = (
        "    KERAS_BACKEND=jax python examples/transformer.py "
        "--figure docs/figures/transformer.png "
        f"--table benchmarks/results/{TABLE} --overwrite\n"
    )
    assert command in readme
    assert transformer.OUTPUT_DIR == os.path.join("runs", "transformer_example")
