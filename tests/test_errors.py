"""Bad input to every public entry point: a clear error, before any work.

The rule everywhere (issue 14): an argument with a bad value gets an error
that names the argument, the bad value and what is allowed, raised before
any work is done (no training step, no cell, no experiment), and nothing
the user had is lost or overwritten. `tests/_errors_table.py` holds one row
per (entry point, argument, bad value) for every keras_fa function and
class and every flag of the command-line scripts; the test below runs each
row on the active backend.

`test_every_argument_has_a_bad_value` keeps the table complete: it finds
the public callables (`keras_fa.__all__`, the subpackages' `__all__`, the
public names of keras_fa's modules, the public methods of their classes)
and the flags of every script, and fails for an argument that has neither
a row nor a reason in `ALLOWED`. A new argument cannot go untested.
"""

import argparse
import glob
import importlib
import importlib.util
import inspect
import os
import sys

import keras
import pytest

import keras_fa
from keras_fa import feedback
from tests import _errors_table as table

# Where a row's file sits: it must hold this afterwards.
_KEEP = "a file of the user's\n"


class Context:
    """What a row's call gets: a fresh directory, monkeypatch, and ways to
    forbid work and to run a script."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp = tmp_path
        self.monkeypatch = monkeypatch
        self._kept = []  # the user's files: they must be left as they are

    def forbid(self, owner, name):
        """Makes `owner.name` (a step that is work) raise AssertionError."""
        what = f"{getattr(owner, '__name__', owner)}.{name}"

        def work(*args, **kwargs):
            raise AssertionError(
                f"work started ({what}) before the bad input was refused"
            )

        self.monkeypatch.setattr(owner, name, work)

    def keep(self, path):
        """Writes a file of the user's at `path`; it must survive."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as file:
            file.write(_KEEP)
        self._kept.append(path)
        return path

    def a_file(self):
        """Returns the path of a file of the user's."""
        path = os.path.join(str(self.tmp), "a_file")
        return path if path in self._kept else self.keep(path)

    def through_a_file(self):
        """Returns a path below a file: no directory can be made there."""
        return os.path.join(self.a_file(), "sub")

    def dir_with_file(self, directory, name):
        """Returns a directory that holds a file `name` of the user's."""
        directory = os.path.join(str(self.tmp), directory)
        self.keep(os.path.join(directory, name))
        return directory

    def check_kept(self):
        for path in self._kept:
            with open(path) as file:
                assert file.read() == _KEEP, f"{path} was overwritten"

    def run_script(self, script, argv):
        """Runs `script`'s `main` on `argv` with its work forbidden."""
        module = load_script(script)
        forbid_work(self, module, script)
        run_main(self.monkeypatch, module, script, argv)


def load_script(script):
    """Imports a script of `table.SCRIPTS`: a module of benchmarks, or a
    file of examples (under a private name)."""
    target = table.SCRIPTS[script][0]
    if not target.endswith(".py"):
        return importlib.import_module(target)
    name = "_test_errors_" + os.path.basename(target)[:-3]
    if name not in sys.modules:
        path = os.path.join(table.ROOT, target)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def forbid_work(ctx, module, script):
    """Forbids training anywhere, and the script's own work (`SCRIPTS`)."""
    from keras_fa import training

    for owner, name in (
        (keras.Model, "fit"),
        (keras.Model, "train_on_batch"),
        (keras.Model, "evaluate"),
        (keras_fa, "train"),
        (training, "train"),
    ):
        ctx.forbid(owner, name)
    for name in table.SCRIPTS[script][1]:
        if hasattr(module, name):
            ctx.forbid(module, name)


def run_main(monkeypatch, module, script, argv):
    """Calls `module.main(argv)`, or `main()` with `sys.argv` set."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    if inspect.signature(module.main).parameters:
        return module.main(list(argv))
    return module.main()


def exit_message(error, stderr):
    """What a script that exits with `error` says: its exit message, or
    argparse's error line (without the usage, which names every flag)."""
    if not isinstance(error.code, int):
        return str(error.code)
    lines = stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if ": error: " in line]
    return "\n".join(lines[errors[-1] :] if errors else lines)


def _has(message, word):
    words = (word,) if isinstance(word, str) else word
    return any(w.lower() in message.lower() for w in words)


def _params(row):
    marks = ()
    if row.xfail:
        marks = pytest.mark.xfail(strict=True, reason=row.xfail)
    return pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", [_params(row) for row in table.ROWS])
def test_bad_input_is_refused_clearly_before_any_work(
    row, tmp_path, monkeypatch, capsys
):
    ctx = Context(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(row.error) as info:
        row.call(ctx)
    error = info.value
    message = str(error)
    if isinstance(error, SystemExit):
        assert error.code not in (0, None), "exit status 0 on bad input"
        message = exit_message(error, capsys.readouterr().err)
    missing = [word for word in row.words if not _has(message, word)]
    assert not missing, (
        f"{type(error).__name__} without {missing} in its message:\n{message}"
    )
    ctx.check_kept()


# --------------------------------------------------------------------------
# The table covers every argument.

# Modules whose public names are their `__all__`.
_EXPORTING = (
    "keras_fa",
    "keras_fa.layers",
    "keras_fa.feedback",
    "keras_fa.distribution",
    "keras_fa.datasets",
    "keras_fa.alignment",
)
# Modules without `__all__`: the functions and classes they define whose
# names do not start with "_".
_MODULES = (
    "keras_fa.callbacks",
    "keras_fa.convert",
    "keras_fa.direct",
    "keras_fa.estimators",
    "keras_fa.history",
    "keras_fa.models",
    "keras_fa.plotting",
    "keras_fa.summary",
    "keras_fa.tracing",
    "keras_fa.training",
)
# Their methods are Keras's protocol (build, call, on_train_begin...) or
# a rule's (backward_kernel...), exercised by Keras and the layers.
_PROTOCOL = (
    keras.layers.Layer,
    keras_fa.layers.FeedbackMixin,
    keras.callbacks.Callback,
    feedback.FeedbackRule,
)


def _arguments(function):
    names = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == "self":
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            names.append("*args")
        elif parameter.kind is parameter.VAR_KEYWORD:
            names.append("**kwargs")
        else:
            names.append(parameter.name)
    return names


def public_entries():
    """Returns `{entry name: [its arguments]}` for every public callable
    of keras_fa, and the public methods of its classes."""
    entries, seen = {}, set()

    def add(name, obj):
        if id(obj) in seen or inspect.ismodule(obj) or not callable(obj):
            return
        seen.add(id(obj))
        if inspect.isclass(obj):
            if issubclass(obj, BaseException):
                return  # raised by keras_fa, not called by users
            entries[name] = _arguments(obj)
            if issubclass(obj, _PROTOCOL):
                return
            for klass in obj.__mro__:
                if not klass.__module__.startswith("keras_fa"):
                    continue
                for key, value in vars(klass).items():
                    method = f"{name}.{key}"
                    if (
                        not key.startswith("_")
                        and inspect.isfunction(value)
                        and method not in entries
                    ):
                        entries[method] = _arguments(value)
        else:
            entries[name] = _arguments(obj)

    for module_name in _EXPORTING:
        module = importlib.import_module(module_name)
        for key in module.__all__:
            add(f"{module_name}.{key}", getattr(module, key))
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for key, value in sorted(vars(module).items()):
            if (
                not key.startswith("_")
                and (inspect.isfunction(value) or inspect.isclass(value))
                and value.__module__ == module_name
            ):
                add(f"{module_name}.{key}", value)
    return entries


class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__("parsed")
        self.parser = parser


def script_flags(script, monkeypatch, tmp_path):
    """Returns the flags of `script`'s command line (none if it has no
    parser), read from the parser its `main` makes."""

    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)

    ctx = Context(tmp_path, monkeypatch)
    module = load_script(script)
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        patch.chdir(tmp_path)
        forbid_work(ctx, module, script)
        try:
            run_main(patch, module, script, [])
        except _Parsed as parsed:
            parser = parsed.parser
        except AssertionError:
            return []  # it started working without parsing its arguments
        else:
            return []
    return [
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
    ]


def test_every_argument_has_a_bad_value(monkeypatch, tmp_path):
    covered = {(row.entry, row.arg) for row in table.ROWS}
    arguments = {
        (entry, arg)
        for entry, names in public_entries().items()
        for arg in names
    }
    for script in table.SCRIPTS:
        arguments |= {
            (script, flag)
            for flag in script_flags(script, monkeypatch, tmp_path)
        }
    missing = sorted(arguments - covered - set(table.ALLOWED))
    assert not missing, (
        "Arguments without a bad value in tests/_errors_table.py (add a "
        f"row, or a reason in ALLOWED): {missing}"
    )
    stale = sorted(
        (entry, arg)
        for entry, arg in covered | set(table.ALLOWED)
        if (entry, arg) not in arguments and arg != table.UNKNOWN_FLAG
    )
    assert not stale, f"Rows or ALLOWED entries of no argument: {stale}"


def test_every_script_is_in_the_table():
    scripts = set()
    patterns = ("benchmarks/*.py", "benchmarks/*/*.py", "examples/*.py")
    for pattern in patterns:
        for path in glob.glob(os.path.join(table.ROOT, pattern)):
            with open(path) as file:
                if "\ndef main(" in file.read():
                    scripts.add(os.path.relpath(path, table.ROOT))
    known = {
        target if target.endswith(".py") else target.replace(".", "/") + ".py"
        for target, _ in table.SCRIPTS.values()
    }
    assert scripts == known


@pytest.mark.parametrize("script", sorted(table.SCRIPTS))
def test_the_work_of_every_script_is_forbidden(script, tmp_path, monkeypatch):
    # A good command line must stop at the guard: a row whose bad value a
    # script took would then fail at once, not run its experiment.
    ctx = Context(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="work started"):
        ctx.run_script(script, table.GOOD_ARGV.get(script, []))


def test_rows_have_distinct_ids():
    ids = [row.id for row in table.ROWS]
    assert len(ids) == len(set(ids)), sorted(
        i for i in set(ids) if ids.count(i) > 1
    )
