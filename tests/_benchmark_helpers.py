"""What the tests of benchmarks/ share (not a test module): running a
script's `main` into a usage error, keeping work from starting, and the
checks every paper reproduction's command line passes."""

import contextlib
import io
import os

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    """Whether the file at `path` starts as a PNG file does."""
    with open(path, "rb") as file:
        return file.read(8) == PNG


def without_timing(value):
    """Returns `value` (a record: dicts and lists) without its "seconds"
    entries, the one part of a record a seed does not fix."""
    if isinstance(value, dict):
        return {
            k: without_timing(v) for k, v in value.items() if k != "seconds"
        }
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def printed(main, argv):
    """Runs `main(argv)`; returns what it returned and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        returned = main(argv)
    return returned, out.getvalue()


def forbid(monkeypatch, module, *names):
    """Replaces the functions `names` of `module` by one that fails the
    test: the work they start must not start."""

    def never(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for name in names:
        monkeypatch.setattr(module, name, never)


def refused(main, argv, capsys):
    """Runs `main(argv)`, which must exit with a usage error (status 2);
    returns argparse's last line ("...: error: ...")."""
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2, argv
    return capsys.readouterr().err.strip().splitlines()[-1]


def check_refused(main, cases, tmp_path, capsys):
    """Checks that each `(argv, words)` of `cases`, given to a `--quick`
    run of `main` with `--output tmp_path`, is a usage error whose line
    holds each of `words`, and that nothing is written."""
    for argv, words in cases:
        error = refused(
            main, [*argv, "--quick", "--output", str(tmp_path)], capsys
        )
        assert all(word in error for word in words), (argv, error)
    assert not os.listdir(tmp_path)


def check_range_errors(main, rows, tmp_path, capsys):
    """Checks that each `(flag, bad value, what is allowed)` of `rows` is
    a usage error (see `check_refused`) naming the flag, the bad value (of
    a list, its bad item) and what is allowed."""
    cases = [
        ([flag, value], (f"argument {flag}: ", repr(value.split(",")[-1]), ok))
        for flag, value, ok in rows
    ]
    check_refused(main, cases, tmp_path, capsys)


def check_paper_command_line(module, range_errors, tmp_path, capsys):
    """Checks the command line of the reproduction `module` before any
    training: `range_errors` (`check_range_errors`), an `--output` through
    a file (`check_output_through_a_file`), the output of `--quick`
    (`check_quick_output`)."""
    check_range_errors(module.main, range_errors, tmp_path, capsys)
    check_output_through_a_file(module.main, tmp_path, capsys)
    check_quick_output(module)


def check_output_through_a_file(main, tmp_path, capsys):
    """Checks that a `--quick` run of `main` refuses an `--output` under a
    file, naming the flag and the path, and leaves the file as it was."""
    (tmp_path / "file").write_text("kept")
    output = str(tmp_path / "file" / "results")
    error = refused(main, ["--quick", "--output", output], capsys)
    assert "argument --output: " in error and output in error
    assert "is a file, not a directory" in error
    assert (tmp_path / "file").read_text() == "kept"


def check_quick_output(module):
    """Checks that the full run of the reproduction `module` writes to
    `benchmarks/results/paper/<module.NAME>` and a `--quick` one elsewhere
    (`module.QUICK_OUTPUT`) unless `--output` says where."""
    full = module.parse_args([])
    assert full.output.endswith(os.path.join("results", "paper", module.NAME))
    quick = module.parse_args(["--quick"])
    assert quick.output == module.QUICK_OUTPUT != full.output
    assert module.parse_args(["--quick", "--output", "x"]).output == "x"
