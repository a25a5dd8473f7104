"""Tests of the command lines of benchmarks/step_time.py,
benchmarks/estimator_time.py and benchmarks/alignment_cost.py: a bad value
is an argparse error (status 2) naming the flag, the value and what is
allowed, and an output path that cannot be written is refused before any
work, not after it. The checks themselves (benchmarks/harness.py) are
tested in test_benchmark_harness.py."""

import keras
import pytest

from benchmarks import alignment_cost
from benchmarks import estimator_time
from benchmarks import step_time
from tests._benchmark_helpers import forbid

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
    forbid(monkeypatch, SCRIPTS[script], *WORK[script])


def _usage_error(capsys, parse, argv):
    # Returns argparse's message of `parse(argv)`, which must exit with
    # status 2 (a usage error).
    with pytest.raises(SystemExit) as error:
        parse(argv)
    assert error.value.code == 2
    return capsys.readouterr().err


# -------------------------------------------------------------------------
# The scripts: every numeric flag, --jit-compile, and the output paths


RANGES = [
    ("step_time", "--repeats", "-3", "an integer >= 1"),
    ("step_time", "--steps", "0", "an integer >= 1"),
    ("step_time", "--batch-size", "-3", "an integer >= 1"),
    ("step_time", "--threads", "-1", "an integer >= 0"),
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
    ("estimator_time", "--hidden-layer-sizes", "-3", "an integer >= 1"),
    ("alignment_cost", "--steps", "1", "an integer >= 2"),
    ("alignment_cost", "--repeats", "-3", "an integer >= 1"),
    ("alignment_cost", "--every", "0", "an integer >= 1"),
    ("alignment_cost", "--batch-size", "-3", "an integer >= 1"),
    ("alignment_cost", "--probe", "-3", "an integer >= 1"),
    ("alignment_cost", "--threads", "-1", "an integer >= 0"),
    ("alignment_cost", "--learning-rate", "-1", "a number > 0"),
    ("alignment_cost", "--learning-rate", "0", "a number > 0"),
    ("alignment_cost", "--train-every", "1,-3", "an integer >= 1"),
]


LISTS = [
    ("step_time", "--rules", "fa,nope", "unknown rule(s) nope; allowed: bp"),
    ("step_time", "--models", "mlp,MLP", "model mlp given more than once"),
    ("estimator_time", "--rules", ",", "empty rule list ','"),
    ("alignment_cost", "--backends", "jax,tpu", "unknown backend(s) tpu"),
    ("alignment_cost", "--train-models", "mlp,x", "unknown model(s) x"),
]
# (script, flag, value, words of the error): a number out of its range
# names it (of a list, the bad item) and the range.
BAD_VALUES = [
    (s, f, v, (f"must be {allowed}", f"got {v.split(',')[-1]!r}"))
    for s, f, v, allowed in RANGES
] + [(s, f, v, (words,)) for s, f, v, words in LISTS]


@pytest.mark.parametrize(
    "script, flag, value, words",
    BAD_VALUES,
    ids=[f"{s}:{f}={v}" for s, f, v, _ in BAD_VALUES],
)
def test_bad_values_name_the_flag_and_what_is_allowed(
    script, flag, value, words, monkeypatch, capsys
):
    _no_work(monkeypatch, script)
    argv = [flag, value, *QUIET[script]]
    err = _usage_error(capsys, SCRIPTS[script].main, argv)
    assert f"argument {flag}: {words[0]}" in err
    assert all(word in err for word in words)


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
    args = alignment_cost.parse_args(["--train-models", "none"])
    assert args.train_models == []
    assert args.models == list(alignment_cost.MODELS)
    args = alignment_cost.parse_args(["--quick"])
    assert (args.steps, args.train_every, args.learning_rate) == (
        60,
        (20, 1),
        0.01,
    )
