"""Helpers every benchmark script shares: atomic writes, lists of names
from the command line, checks of command-line values, and thread limits.

The argparse `type=` functions here (`positive_int`, `int_in`, `float_in`,
`jit_compile`, ...) raise `argparse.ArgumentTypeError`, so a bad value is a
usage error (exit status 2) that names the flag, the value and what is
allowed: `argument --steps: must be an integer >= 1, got '-3'`.
`check_output_path` checks an output path before any work is done.
"""

import argparse
import math
import os
import tempfile

import keras

from keras_fa.files import output_problem


def write_atomic(path, text):
    """Writes `text` (str or bytes) to `path` through a temporary file and a
    rename: the file is either absent, the old one, or complete.

    The file's permissions follow the umask, as `open` gives them (0o644
    under the usual umask 0o022), also where it replaces a file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp_", suffix=os.path.basename(path)
    )
    try:
        # mkstemp makes the file 0o600 whatever the umask.
        os.chmod(temporary, 0o666 & ~_umask())
        binary = isinstance(text, bytes)
        mode, encoding = ("wb", None) if binary else ("w", "utf-8")
        with os.fdopen(handle, mode, encoding=encoding) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _umask():
    # Linux shows the umask without changing it; elsewhere it is set and
    # set back.
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def names(text, allowed, flag):
    """Returns the comma-separated names in `text`, or exits with a message
    naming the allowed ones if any is unknown or none is given.

    Names are matched ignoring case, as the layers match rule names (`FA`
    is `fa`), and returned as spelled in `allowed`.
    """
    canonical = {name.lower(): name for name in allowed}
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n.lower() not in canonical]
    if unknown or not chosen:
        raise SystemExit(
            f"{flag}: unknown or empty {unknown or text!r}; "
            f"choose from {','.join(allowed)}"
        )
    return [canonical[n.lower()] for n in chosen]


def limit_threads(threads):
    """Makes the active backend compute with `threads` threads.

    Must run before the backend computes anything (tensorflow's context and
    jax's CPU client read their thread settings once).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "jax":
        flags = f"intra_op_parallelism_threads={threads}"
        if threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false " + flags
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}"
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def int_in(low=None, high=None):
    """Returns an argparse `type=` function for an integer in `[low, high]`
    (`None`: unbounded on that side).

    A value that is not an integer or out of range raises
    `argparse.ArgumentTypeError` ("must be an integer >= 1, got '-3'"), which
    argparse prints after the flag's name.
    """
    allowed = "an integer" + _bounds(low, high, False, False)

    def parse(text):
        try:
            number = int(text)
        except (TypeError, ValueError):
            number = None
        if number is None or not _inside(number, low, high, False, False):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return number

    parse.__name__ = "integer"
    return parse


def float_in(low=None, high=None, low_open=False, high_open=False):
    """Returns an argparse `type=` function for a finite number in the
    interval from `low` to `high` (`None`: unbounded on that side), which
    excludes `low` if `low_open` and `high` if `high_open`.

    A value that is not a finite number or is out of range raises
    `argparse.ArgumentTypeError` ("must be a number > 0, got '-1'").
    """
    allowed = "a number" + _bounds(low, high, low_open, high_open)

    def parse(text):
        try:
            number = float(text)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or not _inside(
            number, low, high, low_open, high_open
        ):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return number

    parse.__name__ = "number"
    return parse


def _bounds(low, high, low_open, high_open):
    # " >= 1", " between 0 and 1, exclusive", or "" where unbounded.
    below = f"{'>' if low_open else '>='} {low}"
    above = f"{'<' if high_open else '<='} {high}"
    if low is None:
        return "" if high is None else f" {above}"
    if high is None:
        return f" {below}"
    if low_open == high_open:
        return f" between {low} and {high}, " + (
            "exclusive" if low_open else "inclusive"
        )
    return f" between {low} and {high} ({below} and {above})"


def _inside(number, low, high, low_open, high_open):
    if low is not None and (number < low or (low_open and number == low)):
        return False
    if high is not None and (number > high or (high_open and number == high)):
        return False
    return True


#: argparse `type=`: an integer >= 1 (repeats, steps, batch sizes...).
positive_int = int_in(1)
#: argparse `type=`: an integer >= 0 (warm-up fits; threads where 0 means
#: the library's own choice).
non_negative_int = int_in(0)
#: argparse `type=`: a finite number > 0 (learning rates...).
positive_float = float_in(0, low_open=True)
#: argparse `type=`: a finite number >= 0 (weight decay...).
non_negative_float = float_in(0)
#: argparse `type=`: a seed NumPy and scikit-learn take, 0 to 2**32 - 1.
seed = int_in(0, 2**32 - 1)


def positive_ints(text):
    """argparse `type=`: comma-separated integers >= 1 (`"256,256"`),
    returned as a tuple; raises `argparse.ArgumentTypeError` naming the
    value otherwise."""
    try:
        values = tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        )
    return values


#: What `jit_compile` accepts (any case), and what it returns.
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def jit_compile(text):
    """argparse `type=` for `model.compile(jit_compile=...)`: `auto`, `true`
    or `false` (any case) give `"auto"`, True or False; anything else raises
    `argparse.ArgumentTypeError` naming the value and these three."""
    try:
        return JIT_COMPILE[text.strip().lower()]
    except (AttributeError, KeyError):
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(JIT_COMPILE)}, got {text!r}"
        ) from None


def check_output_path(parser, flag, path, directory=False):
    """Exits through `parser.error` (usage, status 2) if `path`, given as
    `flag`, cannot be written (see `output_problem`), naming the flag, the
    path and what is wrong; does nothing for an empty `path` (no output).

    Call it right after parsing, so that a bad path is found before any
    work, not when the results are written.
    """
    if not path:
        return
    problem = output_problem(path, directory=directory)
    if problem:
        parser.error(f"argument {flag}: cannot write {path!r}: {problem}")
