"""examples/*.py: each takes `--help` and exits at once without training;
short runs of demo, direct_feedback and alignment print and write what
they say, and refuse bad arguments before training.

(examples/transformer.py and examples/keras_hub_lm.py have their own runs in
tests/test_example_transformer.py and tests/test_keras_hub.py.)
"""

import glob
import math
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "examples", "*.py"))
)
# Importing keras and a backend takes seconds; training anything, minutes.
HELP_TIMEOUT = 180

sys.path.insert(0, os.path.join(ROOT, "examples"))
import alignment as alignment_example  # noqa: E402
import demo  # noqa: E402
import direct_feedback  # noqa: E402

import keras_fa  # noqa: E402
from keras_fa.feedback import base as feedback_base  # noqa: E402


@pytest.fixture(scope="module")
def helps():
    """Example -> (exit code or None on timeout, stdout, stderr) of
    `python <example> --help`, all started at once."""
    processes = {
        example: subprocess.Popen(
            [sys.executable, example, "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for example in EXAMPLES
    }
    results = {}
    for example, process in processes.items():
        try:
            out, err = process.communicate(timeout=HELP_TIMEOUT)
            results[example] = (process.returncode, out, err)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            results[example] = (None, out, err)
    return results


def test_every_example_is_checked():
    assert "examples/demo.py" in EXAMPLES
    assert "examples/direct_feedback.py" in EXAMPLES
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_takes_help_and_trains_nothing(helps, example):
    code, out, err = helps[example]
    assert code is not None, f"{example} --help ran past {HELP_TIMEOUT} s"
    assert code == 0, err[-2000:]
    assert out.startswith("usage: "), out[:500]
    assert "-h, --help" in out
    # No results table: nothing was trained.
    assert "\n|" not in out and not out.startswith("|"), out[-1000:]


def test_demo_runs_every_builtin_rule():
    builtin = {
        name
        for name, rule in feedback_base._RULES.items()
        if rule.__module__.startswith("keras_fa.")
    }
    assert set(demo.RULES) == builtin | set(keras_fa.direct.DIRECT_RULES)
    assert len(demo.RULES) == 10
    assert demo.parse_args([]).rules == list(demo.RULES)


def test_demo_short_run(tmp_path, capsys):
    output = tmp_path / "demo.md"
    argv = [
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--rules",
        "fa",
        "shallow",
        "--output",
        str(output),
    ]
    rows = demo.main(argv)
    assert [row["rule"] for row in rows] == ["fa", "shallow"]
    by_rule = {row["rule"]: row for row in rows}
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["seconds"] > 0
    # fa's updates are not backprop's; had it fallen back to backprop, 0.
    assert by_rule["fa"]["angle"] > 5.0
    # shallow's hidden layers get no update: no angle, printed as n/a.
    assert math.isnan(by_rule["shallow"]["angle"])
    printed = capsys.readouterr().out
    text = output.read_text()
    backend = keras.backend.backend()
    assert text.startswith(
        f"# `KERAS_BACKEND={backend} python examples/demo.py "
        + " ".join(argv)
        + "`\n"
    )
    for row in rows:
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {row['rule']} |")
        )
        assert line in printed
        cells = line.strip("|").split("|")
        assert float(cells[1]) == pytest.approx(row["accuracy"], abs=5e-4)
    assert f"| shallow | {by_rule['shallow']['accuracy']:.3f} | n/a |" in text
    assert os.listdir(tmp_path) == ["demo.md"]


@pytest.mark.parametrize(
    "module, argv, words",
    [
        (demo, ["--epochs", "0"], "--epochs: must be a positive int. "),
        (demo, ["--learning-rate", "-1"], "Received: '-1'"),
        (demo, ["--rules", "sgd"], "invalid choice: 'sgd'"),
        (demo, ["--output", "/nonexistent/x.md"], "--output must be a file"),
        (direct_feedback, ["--epochs", "x"], "Received: 'x'"),
        (direct_feedback, ["--rules", "fa"], "invalid choice: 'fa'"),
        (direct_feedback, ["--output", "."], "--output must be a file"),
        (alignment_example, ["--rules", "dfa"], "invalid choice: 'dfa'"),
        (alignment_example, ["--every", "0"], "Received: '0'"),
    ],
)
def test_bad_arguments_are_refused_before_training(
    module, argv, words, capsys, monkeypatch
):
    def train(*args, **kwargs):
        raise AssertionError("trained before the error")

    monkeypatch.setattr(keras.Model, "fit", train)
    with pytest.raises(SystemExit) as exit:
        module.main(argv)
    assert exit.value.code == 2
    assert words in capsys.readouterr().err


def test_direct_feedback_quick_run(tmp_path):
    output = tmp_path / "results.md"
    argv = ["--quick", "--rules", "drtp", "--output", str(output)]
    rows = direct_feedback.main(argv)
    assert [(row["model"], row["rule"]) for row in rows] == [
        ("cnn", "drtp"),
        ("functional mlp", "drtp"),
    ]
    text = output.read_text()
    backend = keras.backend.backend()
    assert text.startswith(
        f"# `KERAS_BACKEND={backend} python examples/direct_feedback.py "
        "--quick --rules drtp --output "
    )
    assert f"1 epochs, batch 32, seed 0; keras {keras.__version__}" in text
    assert read_results_table(text) == {
        (row["model"], row["rule"]): round(row["accuracy"], 3) for row in rows
    }
    assert os.listdir(tmp_path) == ["results.md"]


def test_direct_feedback_runs_bp_only_on_the_cnn():
    assert direct_feedback.runs() == [
        ("cnn", "bp"),
        ("cnn", "dfa"),
        ("functional mlp", "dfa"),
        ("cnn", "drtp"),
        ("functional mlp", "drtp"),
        ("cnn", "shallow"),
        ("functional mlp", "shallow"),
    ]


def test_a_failed_run_keeps_the_old_results_file(tmp_path, monkeypatch):
    # The table is written through keras_fa.files.write_atomic (tested in
    # tests/test_files.py): a run that fails before or while writing it
    # leaves the file of an earlier run as it was.
    path = tmp_path / "results.md"
    path.write_text("old")

    def fail(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr(keras_fa.files.os, "replace", fail)
    monkeypatch.setattr(direct_feedback, "train", lambda *args: 0.5)
    argv = ["--quick", "--rules", "shallow", "--output", str(path)]
    with pytest.raises(OSError, match="rename failed"):
        direct_feedback.main(argv)
    assert os.listdir(tmp_path) == ["results.md"]
    assert path.read_text() == "old"


def test_alignment_example_short_run_and_no_overwrite(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = [
        "--rules",
        "fa",
        "--epochs",
        "1",
        "--every",
        "20",
        "--out",
        str(out),
    ]
    histories = alignment_example.main(argv)
    history = histories["fa"]
    hidden = "hidden_1"
    files = sorted(os.listdir(out / "fa"))
    assert "log.csv" in files and "training.png" in files
    assert f"layer_{hidden}.png" in files
    with open(out / "fa" / "log.csv") as file:
        assert f"{hidden}/update_angle" in file.readline()
    # fa's hidden layers are measured, and not as backprop.
    angle = history.history[f"{hidden}/update_angle"][-1]
    assert 5.0 < angle < 180.0
    assert "| fa | " in capsys.readouterr().out

    # A second run into the same --out is refused before training...
    before = {name: os.stat(out / "fa" / name).st_mtime_ns for name in files}
    with pytest.raises(SystemExit):
        alignment_example.main(argv)
    assert "already holds an earlier run" in capsys.readouterr().err
    assert {
        name: os.stat(out / "fa" / name).st_mtime_ns for name in files
    } == before
    # ... unless asked to replace it.
    alignment_example.main([*argv, "--overwrite"])
    assert sorted(os.listdir(out / "fa")) == files


@pytest.mark.parametrize("through", ["out", "rule"])
def test_alignment_example_refuses_an_out_through_a_file(
    tmp_path, capsys, monkeypatch, through
):
    # A path through a file is found before the data is loaded, not when
    # the first rule's log is written after its training: through --out,
    # or through a rule's directory in it.
    def never(*args, **kwargs):
        raise AssertionError("work started before the error")

    monkeypatch.setattr(keras.Model, "fit", never)
    monkeypatch.setitem(alignment_example.LOADERS, "digits", never)
    (tmp_path / "fa").write_text("kept")
    out = tmp_path / "fa" / "runs" if through == "out" else tmp_path
    with pytest.raises(SystemExit) as exit:
        alignment_example.main(["--rules", "fa", "--out", str(out)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: cannot write {str(out / 'fa')!r}: " in err
    blocked = "it" if through == "rule" else str(tmp_path / "fa")
    assert f"{blocked} is a file, not a directory" in err
    assert (tmp_path / "fa").read_text() == "kept"


def read_results_table(text):
    """{(model, rule): accuracy} of a direct_feedback results table."""
    table = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in direct_feedback.MODELS:
            table[(cells[0], cells[1])] = float(cells[2])
    return table


def test_read_results_table_reads_what_is_written():
    rows = [
        {"model": "cnn", "rule": "bp", "accuracy": 0.97777},
        {"model": "functional mlp", "rule": "dfa", "accuracy": 0.5},
    ]
    text = "\n".join(
        [direct_feedback.TABLE_HEADER]
        + [direct_feedback.row_line(row) for row in rows]
    )
    assert read_results_table(text) == {
        ("cnn", "bp"): 0.978,
        ("functional mlp", "dfa"): 0.5,
    }
