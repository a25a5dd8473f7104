"""Tests of benchmarks/harness.py, what every benchmark script shares: the
argparse types (a bad value names itself and what is allowed), output
paths checked up front, the timer, the interleaved repeats, the
environment line and the output helpers."""

import argparse
import json
import math
import os

import keras
import numpy as np
import pytest

from benchmarks import harness
from tests._benchmark_helpers import is_png
from tests.conftest import BACKEND


def _usage_error(capsys, parse, argv):
    # Returns argparse's message of `parse(argv)`, which must exit with
    # status 2 (a usage error).
    with pytest.raises(SystemExit) as error:
        parse(argv)
    assert error.value.code == 2
    return capsys.readouterr().err


# -------------------------------------------------------------------------
# The argparse types


@pytest.mark.parametrize(
    "parse, good, bad, allowed",
    [
        (harness.positive_int, {"3": 3}, ["0", "-3", "2.5", "x"], ">= 1"),
        (harness.non_negative_int, {"0": 0}, ["-1", "x"], ">= 0"),
        (harness.int_in(2), {"2": 2}, ["1"], "an integer >= 2"),
        (
            harness.seed,
            {"0": 0, "4294967295": 2**32 - 1},
            ["-1", "4294967296"],
            "between 0 and 4294967295, inclusive",
        ),
        (
            harness.positive_float,
            {"0.01": 0.01},
            ["0", "-1", "nan", "inf"],
            "> 0",
        ),
        (harness.non_negative_float, {"0": 0.0}, ["-0.5", "x"], ">= 0"),
        (
            harness.float_in(0, 1, low_open=True, high_open=True),
            {"0.25": 0.25},
            ["0", "1", "1.5"],
            "between 0 and 1, exclusive",
        ),
        (
            harness.float_in(0, 1, high_open=True),
            {"0": 0.0},
            ["1"],
            "between 0 and 1 (>= 0 and < 1)",
        ),
        (
            harness.positive_ints,
            {"256, 256": (256, 256), "3": (3,)},
            ["-3", "3,0", "a"],
            "an integer >= 1",
        ),
        (
            harness.jit_compile,
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
        # Of a list, the bad item.
        assert str(error.value).endswith(f"got {text.split(',')[-1]!r}")


def test_argument_types_are_usage_errors_naming_the_flag(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=harness.positive_int)
    parser.add_argument("--jit-compile", type=harness.jit_compile)
    for argv, words in (
        (["--steps", "-3"], "argument --steps: must be an integer >= 1, "),
        (["--jit-compile", "maybe"], "argument --jit-compile: must be one of"),
    ):
        err = _usage_error(capsys, parser.parse_args, argv)
        assert words in err and repr(argv[1]) in err


def test_comma_lists():
    rules = harness.comma_list(allowed=("bp", "fa", "KP"), name="rule")
    # Names ignore case, as the layers' rule names do, and come back as
    # spelled in `allowed`.
    assert rules(" FA, kp ,") == ["fa", "KP"]
    for text, message in (
        ("fa,sgd,x", "unknown rule(s) sgd, x; allowed: bp, fa, KP"),
        (" , ", "empty rule list ' , '"),
        ("fa,bp,FA,bp", "rule fa, bp given more than once"),
    ):
        with pytest.raises(argparse.ArgumentTypeError) as error:
            rules(text)
        assert str(error.value) == message
    scales = harness.comma_list(harness.positive_float, name="scale")
    assert scales("1,0.5") == [1.0, 0.5]
    with pytest.raises(argparse.ArgumentTypeError, match="1.0 given more"):
        scales("1,1.0")
    with pytest.raises(argparse.ArgumentTypeError, match="> 0, got '0'"):
        scales("1,0")
    repeats = harness.comma_list(int, repeats=True)
    assert repeats("2,2") == [2, 2]
    assert harness.positive_ints("2,2") == (2, 2)


def test_check_output_path_is_a_usage_error_naming_flag_and_path(
    tmp_path, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    parser = argparse.ArgumentParser()
    harness.check_output_path(parser, "--out", "")  # no output: no check
    harness.check_output_path(parser, "--out", str(tmp_path / "new" / "t.md"))
    path = str(a_file / "t.md")
    err = _usage_error(
        capsys, lambda p: harness.check_output_path(parser, "--out", p), path
    )
    assert (
        f"argument --out: cannot write {path!r}: {a_file} is a file, not a "
        "directory" in err
    )
    assert a_file.read_text() == "mine"


def test_shared_flags_and_defaults(capsys):
    parser = harness.script_parser("What it does.\n\nDetails.")
    harness.add_rules_argument(parser, ["fa"], ("bp", "fa"), note=" (n)")
    harness.add_threads_argument(parser, 1)
    harness.add_jit_compile_argument(parser)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args([])
    assert (args.rules, args.threads, args.jit_compile) == (["fa"], 1, "auto")
    assert parser.description == "What it does."
    assert "bp,fa (n)" in parser.format_help()
    harness.fill_defaults(args, {"steps": 5, "threads": 3})
    assert (args.steps, args.threads) == (5, 1)  # given values are kept
    err = _usage_error(capsys, parser.parse_args, ["--threads", "-1"])
    assert "argument --threads: must be an integer >= 0, got '-1'" in err


def test_paper_options(tmp_path):
    parser = harness.paper_parser("demo", "A reproduction.", seeds=2)
    args = harness.parse_paper_args(parser, [], "demo")
    assert args.seeds == 2 and not args.quick
    assert args.output == os.path.join(harness.RESULTS, "demo")
    args = harness.parse_paper_args(parser, ["--quick"], "demo")
    assert args.output == harness.quick_output("demo")
    assert args.output.endswith(os.path.join("runs", "paper", "demo-quick"))


# -------------------------------------------------------------------------
# Timing


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize(
    "span, count", [("epoch", 3), ("steps", 3), ("fit", 1)]
)
def test_fit_timer_spans(span, count):
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    timer = harness.FitTimer(span, wait=True)
    _model().fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[timer])
    assert len(timer.seconds) == count
    for wall, cpu in timer.seconds:
        assert wall > 0 and cpu >= 0
    with pytest.raises(ValueError, match="`span` must be one of epoch"):
        harness.FitTimer("batch")


def test_clock_and_timings():
    start = harness.clock()
    wall, cpu = harness.since(start)
    assert wall >= 0 and cpu >= 0
    timings = harness.Timings("fa")
    timings.add((4.0, 2.0), steps=2)
    timings.add((1.0, 3.0))
    timings.add((6.0, 6.0), steps=3)
    assert timings.wall == [2.0, 1.0, 2.0] and timings.cpu == [1.0, 3.0, 2.0]
    assert timings.median() == (2.0, 2.0)
    timings.clear()
    assert timings.wall == timings.cpu == []


def test_interleave_rotates_the_order(capsys):
    ran = []

    class Variant:
        def __init__(self, name):
            self.name = name

    variants = [Variant(name) for name in "abc"]
    harness.interleave(
        variants, 4, lambda v: ran.append(v.name), "m ", lambda v: "1", " ms"
    )
    assert "".join(ran) == "abc" + "bca" + "cab" + "abc"
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "  m repeat 1/4: a 1, b 1, c 1 ms"
    assert len(lines) == 4


# -------------------------------------------------------------------------
# The environment and output


def test_describe_says_the_backend_and_the_machine():
    where, machine = harness.describe("numpy 1", cpu_only=True)
    version = harness.backend_version()
    assert where == (
        f"Backend {BACKEND} (keras {keras.__version__}, {BACKEND} {version}, "
        "numpy 1)"
    )
    assert f"{os.cpu_count()} CPUs, CPU only, Python " in machine
    assert "CPU only" not in harness.describe()[1]
    assert harness.threads_text(0) == "threads=default"
    assert harness.threads_text(2) == "threads=2"
    assert harness.devices()
    assert len(harness.load_average().split()) == 3


def test_command_line_quotes_what_a_shell_would_split():
    assert harness.command_line("python x.py", ["--out", "a b", ""]) == (
        "python x.py --out 'a b' ''"
    )
    assert harness.command_line("python x.py", [], "jax") == (
        "KERAS_BACKEND=jax python x.py"
    )


def test_statistics_and_table_rows():
    assert harness.mean_std([1.0, None, math.nan, 3.0]) == (
        2.0,
        math.sqrt(2.0),
    )
    assert harness.mean_std([5]) == (5.0, 0.0)
    assert all(map(math.isnan, harness.mean_std([None, math.inf])))
    assert harness.column_means([[1, 2], [3], [math.nan, 4]]) == [2.0, 3.0]
    assert harness.column_means([]) == []
    assert harness.table_row("fa", 1, "") == "| fa | 1 |  |"


def test_json_figures_and_results_are_written(tmp_path, capsys):
    data = {
        "a": np.float32(0.5),
        "b": [np.int64(3), math.nan],
        "c": np.arange(2),
        1: (1,),
    }
    path = harness.write_json(str(tmp_path / "sub" / "r.json"), data)
    with open(path) as file:
        assert json.load(file) == {
            "a": 0.5,
            "b": [3, None],
            "c": [0, 1],
            "1": [1],
        }
    fig = harness.figure(2, 2)
    fig.add_subplot().plot([0, 1])
    assert is_png(harness.write_png(fig, str(tmp_path / "f.png")))
    results = {"x": 1}
    written = harness.write_results(
        str(tmp_path / "out"),
        results,
        lambda r: f"| x | {r['x']} |\n",
        lambda r, output: harness.write_png(fig, os.path.join(output, "p.png")),
    )
    assert written is results
    assert sorted(os.listdir(tmp_path / "out")) == [
        "p.png",
        "results.json",
        "summary.md",
    ]
    assert "| x | 1 |" in capsys.readouterr().out
