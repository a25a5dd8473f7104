"""Tests of the command lines of benchmarks/step_time.py,
benchmarks/estimator_time.py and benchmarks/alignment_cost.py, and of the
checks in benchmarks/shared.py they use: a bad value is an argparse error
(status 2) naming the flag, the value and what is allowed, and an output
path that cannot be written is refused before any work, not after it."""

import argparse
import os

import keras
import pytest

from benchmarks import alignment_cost
from benchmarks import estimator_time
from benchmarks import shared
from benchmarks import step_time

SCRIPTS = {
    "step_time": step_time,
    "estimator_time": estimator_time,
    "alignment_cost": alignment_cost,
}
# The functions of each script that train or time something.
WORK = {
    "step_time": ("benchmark",),
    "estimator_time": ("benchmark", "load_data"),
    "alignment_cost": ("benchmark_fit", "benchmark_train", "run_backends"),
}
# Set the threads once per process (tensorflow refuses a second time): the
# scripts whose default limits them get 0 (the library's own choice).
QUIET = {
    "step_time": [],
    "estimator_time": ["--threads", "0"],
    "alignment_cost": ["--threads", "0"],
}


def _no_work(monkeypatch, script):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in WORK[script]:
        monkeypatch.setattr(SCRIPTS[script], name, forbidden)


def _usage_error(capsys, parse, argv):
    # Returns argparse's message of `parse(argv)`, which must exit with
    # status 2 (a usage error).
    with pytest.raises(SystemExit) as error:
        parse(argv)
    assert error.value.code == 2
    return capsys.readouterr().err


# -------------------------------------------------------------------------
# benchmarks.shared: the argparse types


@pytest.mark.parametrize(
    "parse, good, bad, allowed",
    [
        (shared.positive_int, {"3": 3}, ["0", "-3", "2.5", "x"], ">= 1"),
        (shared.non_negative_int, {"0": 0}, ["-1", "x"], ">= 0"),
        (shared.int_in(2), {"2": 2}, ["1"], "an integer >= 2"),
        (
            shared.seed,
            {"0": 0, "4294967295": 2**32 - 1},
            ["-1", "4294967296"],
            "between 0 and 4294967295, inclusive",
        ),
        (
            shared.positive_float,
            {"0.01": 0.01},
            ["0", "-1", "nan", "inf"],
            "> 0",
        ),
        (shared.non_negative_float, {"0": 0.0}, ["-0.5", "x"], ">= 0"),
        (
            shared.float_in(0, 1, low_open=True, high_open=True),
            {"0.25": 0.25},
            ["0", "1", "1.5"],
            "between 0 and 1, exclusive",
        ),
        (
            shared.float_in(0, 1, high_open=True),
            {"0": 0.0},
            ["1"],
            "between 0 and 1 (>= 0 and < 1)",
        ),
        (
            shared.positive_ints,
            {"256, 256": (256, 256), "3": (3,)},
            ["-3", "3,0", "", "a"],
            "positive integers",
        ),
        (
            shared.jit_compile,
            {"auto": "auto", "TRUE": True, "false": False},
            ["maybe", "1"],
            "auto, true, false",
        ),
    ],
)
def test_argument_types_name_the_value_and_what_is_allowed(
    parse, good, bad, allowed
):
    for text, value in good.items():
        assert parse(text) == value and type(parse(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError) as error:
            parse(text)
        assert allowed in str(error.value)
        assert str(error.value).endswith(f"got {text!r}")


def test_argument_types_are_usage_errors_naming_the_flag(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=shared.positive_int)
    parser.add_argument("--jit-compile", type=shared.jit_compile)
    for argv, words in (
        (["--steps", "-3"], "argument --steps: must be an integer >= 1, "),
        (["--jit-compile", "maybe"], "argument --jit-compile: must be one of"),
    ):
        err = _usage_error(capsys, parser.parse_args, argv)
        assert words in err and repr(argv[1]) in err


# -------------------------------------------------------------------------
# benchmarks.shared: output paths


def test_output_problem_of_files_and_directories(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    problem = shared.output_problem
    # Creatable or replaceable: nothing is created to find out.
    assert problem(tmp_path / "new" / "deeper" / "out.md") is None
    assert problem(a_file) is None
    assert problem(tmp_path / "new" / "dir", directory=True) is None
    assert problem(tmp_path, directory=True) is None
    assert not (tmp_path / "new").exists()
    # Through a file, or the wrong kind.
    through = f"{a_file} is a file, not a directory"
    assert problem(a_file / "out.md") == through
    assert problem(a_file / "x" / "out.md") == through
    assert problem(a_file / "dir", directory=True) == through
    assert problem(a_file, directory=True) == "it is a file, not a directory"
    assert problem(tmp_path) == "it is a directory, not a file"
    assert (
        problem(a_file, directory=True, name="cells")
        == "cells is a file, not a directory"
    )
    assert a_file.read_text() == "mine"


def test_output_problem_of_paths_that_cannot_be_written(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.md").write_text("old")
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            # Root writes anywhere: deny what the mode denies others.
            access = os.access

            def as_user(path, mode):
                if str(path).startswith(str(locked)) and mode & os.W_OK:
                    return False
                return access(path, mode)

            monkeypatch.setattr(shared.os, "access", as_user)
        problem = shared.output_problem
        assert problem(locked / "new" / "out.md") == (
            f"{locked / 'new' / 'out.md'} cannot be created: {locked} is not "
            "writable"
        )
        assert problem(locked, directory=True) == "it is not writable"
        assert problem(locked / "old.md") == "it is not writable"
    finally:
        locked.chmod(0o700)


def test_check_output_path_is_a_usage_error_naming_flag_and_path(
    tmp_path, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    parser = argparse.ArgumentParser()
    shared.check_output_path(parser, "--out", "")  # no output: nothing to check
    shared.check_output_path(parser, "--out", str(tmp_path / "new" / "t.md"))
    path = str(a_file / "t.md")
    err = _usage_error(
        capsys, lambda p: shared.check_output_path(parser, "--out", p), path
    )
    assert (
        f"argument --out: cannot write {path!r}: {a_file} is a file, not a "
        "directory" in err
    )


# -------------------------------------------------------------------------
# The scripts: every numeric flag, --jit-compile, and the output paths


RANGES = [
    ("step_time", "--repeats", "-3", "an integer >= 1"),
    ("step_time", "--steps", "0", "an integer >= 1"),
    ("step_time", "--batch-size", "-3", "an integer >= 1"),
    ("step_time", "--threads", "-1", "an integer >= 1"),
    ("step_time", "--warmup", "-1", "an integer >= 0"),
    ("step_time", "--steps", "2.5", "an integer >= 1"),
    ("estimator_time", "--repeats", "-3", "an integer >= 1"),
    ("estimator_time", "--max-iter", "0", "an integer >= 1"),
    ("estimator_time", "--threads", "-1", "an integer >= 0"),
    (
        "estimator_time",
        "--random-state",
        "-1",
        "an integer between 0 and 4294967295",
    ),
    (
        "estimator_time",
        "--test-size",
        "1.5",
        "a number between 0 and 1, exclusive",
    ),
    ("estimator_time", "--hidden-layer-sizes", "-3", "positive integers"),
    ("alignment_cost", "--steps", "1", "an integer >= 2"),
    ("alignment_cost", "--repeats", "-3", "an integer >= 1"),
    ("alignment_cost", "--every", "0", "an integer >= 1"),
    ("alignment_cost", "--batch-size", "-3", "an integer >= 1"),
    ("alignment_cost", "--probe", "-3", "an integer >= 1"),
    ("alignment_cost", "--threads", "-1", "an integer >= 0"),
    ("alignment_cost", "--learning-rate", "-1", "a number > 0"),
    ("alignment_cost", "--learning-rate", "0", "a number > 0"),
    ("alignment_cost", "--train-every", "-3", "positive integers"),
]


@pytest.mark.parametrize(
    "script, flag, value, allowed",
    RANGES,
    ids=[f"{s}:{f}={v}" for s, f, v, _ in RANGES],
)
def test_numeric_flags_name_the_flag_the_value_and_the_range(
    script, flag, value, allowed, monkeypatch, capsys
):
    _no_work(monkeypatch, script)
    err = _usage_error(capsys, SCRIPTS[script].main, [flag, value])
    assert f"argument {flag}: must be {allowed}" in err or (
        f"argument {flag}: expected comma-separated {allowed}" in err
    )
    assert f"got {value!r}" in err


@pytest.mark.parametrize("script", ["step_time", "alignment_cost"])
def test_jit_compile_is_a_usage_error_not_a_key_error(
    script, monkeypatch, capsys
):
    _no_work(monkeypatch, script)
    err = _usage_error(capsys, SCRIPTS[script].main, ["--jit-compile", "maybe"])
    assert (
        "argument --jit-compile: must be one of auto, true, false, got " in err
    )
    assert "'maybe'" in err
    args = SCRIPTS[script].parse_args(
        ["--jit-compile", "False", *QUIET[script]]
    )
    assert args.jit_compile is False


OUTPUTS = [
    ("step_time", "--out"),
    ("step_time", "--json"),
    ("estimator_time", "--output"),
    ("alignment_cost", "--output"),
]


@pytest.mark.parametrize(
    "script, flag", OUTPUTS, ids=[f"{s}:{f}" for s, f in OUTPUTS]
)
def test_an_output_through_a_file_is_refused_before_any_work(
    script, flag, tmp_path, monkeypatch, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    _no_work(monkeypatch, script)
    path = str(a_file / "report.md")
    err = _usage_error(capsys, SCRIPTS[script].main, [flag, path])
    assert f"argument {flag}: cannot write {path!r}: {a_file} is a file" in err
    assert a_file.read_text() == "mine"
    # A path to a directory is no file to write either.
    err = _usage_error(capsys, SCRIPTS[script].main, [flag, str(tmp_path)])
    assert f"argument {flag}: cannot write {str(tmp_path)!r}: it is a " in err
    # Missing directories are made when the report is written.
    fresh = tmp_path / "new" / "report.md"
    args = SCRIPTS[script].parse_args([flag, str(fresh), *QUIET[script]])
    assert getattr(args, flag.lstrip("-")) == str(fresh)
    assert not fresh.parent.exists()


def test_step_time_out_and_json_must_be_two_files(
    tmp_path, monkeypatch, capsys
):
    _no_work(monkeypatch, "step_time")
    path = str(tmp_path / "t.md")
    err = _usage_error(capsys, step_time.main, ["--out", path, "--json", path])
    assert f"argument --json: {path!r} is also --out" in err


def test_output_of_each_backend_is_checked(tmp_path, monkeypatch, capsys):
    # '{backend}' gives one file per backend: each is checked up front.
    _no_work(monkeypatch, "alignment_cost")
    (tmp_path / "jax").write_text("a file")
    output = str(tmp_path / "{backend}" / "cost.md")
    argv = ["--threads", "0", "--output", output]
    err = _usage_error(
        capsys, alignment_cost.main, [*argv, "--backends", "torch,jax"]
    )
    assert f"{tmp_path / 'jax'} is a file, not a directory" in err
    alignment_cost.parse_args([*argv, "--backends", "torch,tensorflow"])
    assert alignment_cost.output_paths(output, ["torch"]) == [
        str(tmp_path / "torch" / "cost.md")
    ]
    assert alignment_cost.output_paths("", ["torch"]) == []
    assert alignment_cost.output_paths("a.md", ["torch", "jax"]) == ["a.md"]
    # estimator_time writes only the active backend's file.
    _no_work(monkeypatch, "estimator_time")
    (tmp_path / keras.backend.backend()).unlink(missing_ok=True)
    (tmp_path / keras.backend.backend()).write_text("a file")
    err = _usage_error(
        capsys,
        estimator_time.main,
        ["--threads", "0", "--output", output],
    )
    assert f"{tmp_path / keras.backend.backend()} is a file" in err


def test_default_arguments_still_parse():
    assert step_time.parse_args([]).warmup == 2
    assert step_time.parse_args(["--quick"]).warmup == 1
    args = estimator_time.parse_args([])
    assert (args.repeats, args.random_state, args.threads) == (3, 0, 1)
    assert args.hidden_layer_sizes == (100,)
    args = alignment_cost.parse_args(["--quick"])
    assert (args.steps, args.train_every, args.learning_rate) == (
        60,
        (20, 1),
        0.01,
    )
