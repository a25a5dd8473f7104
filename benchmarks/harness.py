"""What every benchmark script shares: checks of command-line values, the
paper reproductions' common options, clocks, the environment a measurement
ran in, and output written whole or not at all.

The argparse `type=` functions here (`positive_int`, `int_in`, `float_in`,
`comma_list`, `jit_compile`, ...) raise `argparse.ArgumentTypeError`, so a
bad value is a usage error (exit status 2) that names the flag, the value
and what is allowed: `argument --steps: must be an integer >= 1, got '-3'`.
`check_output_path` checks an output path right after parsing, before any
work is done. Every file goes through `keras_fa.files` (a temporary file,
then a rename; its permissions follow the umask).
"""

import argparse
import importlib
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time

import keras
import numpy as np

from keras_fa.files import output_problem
from keras_fa.files import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where the paper reproductions write by default, one directory each.
RESULTS = os.path.join(ROOT, "benchmarks", "results", "paper")
#: Every feedback rule of keras_fa, in the order the tables list them.
RULES = tuple("bp fa usf brsf frsf kp wm dfa drtp shallow".split())

# -------------------------------------------------------------------------
# Command-line values


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


#: argparse `type=`: an integer >= 1 (repeats, steps, seeds, batch sizes...).
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


def comma_list(kind=None, allowed=None, name="value", repeats=False):
    """Returns an argparse `type=` function for comma-separated values,
    returned as a list.

    Args:
        kind: an argparse `type=` function applied to each item (its
            `argparse.ArgumentTypeError` names the bad item), or None to
            keep the names.
        allowed: the names an item may be, matched ignoring case (`FA` is
            `fa`, as the layers match rule names) and returned as spelled
            here; None: any.
        name: what an item is, for the messages ("rule", "model").
        repeats: whether a value may come twice; by default it is refused
            (the same cell or variant would run twice).

    An empty list, an unknown name or a repeated value raises
    `argparse.ArgumentTypeError`: "unknown rule(s) sgd; allowed: bp, fa".
    """

    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {name} list {text!r}")
        if allowed is not None:
            canonical = {str(item).lower(): item for item in allowed}
            unknown = [item for item in items if item.lower() not in canonical]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown {name}(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(map(str, allowed))}"
                )
            items = [canonical[item.lower()] for item in items]
        if kind is not None:
            items = [kind(item) for item in items]
        return items if repeats else unique(items, name)

    parse.__name__ = f"{name} list"
    return parse


def unique(items, name):
    """Returns `items`, or raises `argparse.ArgumentTypeError` naming the
    ones given more than once ("rule fa given more than once")."""
    repeated = [item for i, item in enumerate(items) if item in items[:i]]
    if repeated:
        raise argparse.ArgumentTypeError(
            f"{name} {', '.join(map(str, dict.fromkeys(repeated)))} given "
            "more than once"
        )
    return items


_positive_int_list = comma_list(positive_int, name="integer", repeats=True)


def positive_ints(text):
    """argparse `type=`: comma-separated integers >= 1 (`"256,256"`, layer
    sizes), returned as a tuple; a bad item raises
    `argparse.ArgumentTypeError` naming it."""
    return tuple(_positive_int_list(text))


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
    `flag`, cannot be written (see `keras_fa.files.output_problem`), naming
    the flag, the path and what is wrong; does nothing for an empty `path`
    (no output).

    Call it right after parsing, so that a bad path is found before any
    work, not when the results are written.
    """
    if not path:
        return
    problem = output_problem(path, directory=directory)
    if problem:
        parser.error(f"argument {flag}: cannot write {path!r}: {problem}")


def script_parser(doc):
    """Returns the argument parser of a timing script whose module
    docstring is `doc`: its first paragraph is the description."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_rules_argument(parser, default, allowed=RULES, note=""):
    """Adds `--rules`: comma-separated rules of `allowed` (see
    `comma_list`), `default` (a sequence) if not given; `note` ends the
    help."""
    parser.add_argument(
        "--rules",
        type=comma_list(allowed=allowed, name="rule"),
        default=",".join(default),
        help="comma-separated feedback rules: " + ",".join(allowed) + note,
    )


def add_threads_argument(parser, default, who="the backend computes"):
    """Adds `--threads`: how many threads `who` with, 0 (or None, the
    default where `default` is None) for the library's own choice; see
    `limit_threads`."""
    parser.add_argument(
        "--threads",
        type=non_negative_int,
        default=default,
        help=f"threads {who} with (default {default or 0}; 0: the "
        "libraries' own choice)",
    )


def add_jit_compile_argument(parser):
    """Adds `--jit-compile`, passed to `model.compile` (see
    `jit_compile`)."""
    parser.add_argument(
        "--jit-compile",
        type=jit_compile,
        default="auto",
        help="passed to model.compile: auto (the default users get), "
        "true or false",
    )


def fill_defaults(args, preset):
    """Sets each option of `preset` (a dict) that the command line left
    None: the settings of a full run or of `--quick`."""
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# -------------------------------------------------------------------------
# The paper reproductions' command line: --seeds, --quick, --output


def quick_output(name):
    """Returns where a `--quick` run of `name` writes by default:
    `runs/paper/<name>-quick/` (git-ignored), never the committed results."""
    return os.path.join(ROOT, "runs", "paper", f"{name}-quick")


def paper_parser(name, description, seeds=3):
    """Returns an argument parser with the options every reproduction
    takes: `--seeds`, `--quick` and `--output`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.paper.{name}", description=description
    )
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=seeds,
        help=f"number of seeds, 0..n-1 (default {seeds})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run of a few seconds (what the tests run)",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(RESULTS, name),
        help="directory for the JSON results and PNG figures "
        f"(default benchmarks/results/paper/{name})",
    )
    return parser


def parse_paper_args(parser, argv, name):
    """Parses `argv` with a `paper_parser`; a `--quick` run without
    `--output` goes to `quick_output(name)`. Exits as argparse does (status
    2) if the `--output` directory cannot be created or written: before any
    work, not when the results are written."""
    args = parser.parse_args(argv)
    if args.quick and args.output == parser.get_default("output"):
        args.output = quick_output(name)
    check_output_path(parser, "--output", args.output, directory=True)
    return args


# -------------------------------------------------------------------------
# Clocks


def clock():
    """Returns `(wall-clock, CPU)` seconds now: `time.perf_counter()` and
    the process's CPU time (all threads)."""
    return time.perf_counter(), time.process_time()


def since(start):
    """Returns the `(wall-clock, CPU)` seconds since `start`, a `clock()`."""
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def wait_for(model):
    """Waits for all queued work of `model`: reads a weight back (jax
    dispatches asynchronously; `fit` has put the state back on the model)."""
    keras.ops.convert_to_numpy(model.trainable_weights[-1])


#: What `FitTimer` can time, and the hooks that start and stop its clock.
SPANS = {
    "epoch": "each epoch, from on_epoch_begin to on_epoch_end",
    "steps": "each epoch, from its first batch's start to on_epoch_end",
    "fit": "the whole call, from on_train_begin to on_train_end",
}


class FitTimer(keras.callbacks.Callback):
    """Times `model.fit`: the wall-clock and CPU seconds of each span.

    It implements no `on_*_batch_end`, so Keras keeps dispatching batches
    asynchronously, as it does without callbacks.

    Args:
        span: what one measurement covers (`SPANS`): `"epoch"` each epoch;
            `"steps"` each epoch from the start of its first batch (the
            set-up `fit` does before it is left out); `"fit"` the whole call
            (put the timer first in the callback list to include the other
            callbacks' `on_train_begin` and `on_train_end`).
        wait: whether to wait for the queued work (`wait_for`) before
            stopping the clock.

    Attributes:
        seconds: a list of `(wall-clock, CPU)` seconds, one per span.
    """

    def __init__(self, span="epoch", wait=False):
        if span not in SPANS:
            raise ValueError(
                f"`span` must be one of {', '.join(SPANS)}. Received: {span!r}"
            )
        super().__init__()
        self.span = span
        self.wait = wait
        self.start = None
        self.seconds = []

    def on_train_begin(self, logs=None):
        if self.span == "fit":
            self.start = clock()

    def on_epoch_begin(self, epoch, logs=None):
        if self.span == "epoch":
            self.start = clock()

    def on_train_batch_begin(self, batch, logs=None):
        if self.span == "steps" and batch == 0:
            self.start = clock()

    def on_epoch_end(self, epoch, logs=None):
        if self.span != "fit":
            self._stop()

    def on_train_end(self, logs=None):
        if self.span == "fit":
            self._stop()

    def _stop(self):
        if self.wait:
            wait_for(self.model)
        self.seconds.append(since(self.start))


class Timings:
    """The wall-clock and CPU seconds of one variant's timed repeats."""

    def __init__(self, name):
        self.name = name
        self.wall = []
        self.cpu = []

    def add(self, seconds, steps=1):
        """Records one repeat's `(wall-clock, CPU)` seconds, per step."""
        self.wall.append(seconds[0] / steps)
        self.cpu.append(seconds[1] / steps)

    def clear(self):
        """Forgets the repeats recorded (the warm-up's)."""
        self.wall.clear()
        self.cpu.clear()

    def median(self):
        """Returns the median wall-clock and CPU seconds of the repeats."""
        return statistics.median(self.wall), statistics.median(self.cpu)


def interleave(variants, repeats, run, label, shown, unit=""):
    """Runs `run(variant)` for every variant once per repeat, the order
    rotated by one each repeat, so that drift in the machine's load hits all
    variants alike.

    After each repeat it prints a line on stderr: `label`, the repeat, and
    each variant's name with `shown(variant)` (its last time), then `unit`.
    """
    for r in range(repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            run(variant)
        print(
            f"  {label}repeat {r + 1}/{repeats}: "
            + ", ".join(f"{v.name} {shown(v)}" for v in variants)
            + unit,
            file=sys.stderr,
            flush=True,
        )


# -------------------------------------------------------------------------
# The environment


def backend_version():
    """Returns the version of the active backend's library."""
    backend = keras.backend.backend()
    return str(importlib.import_module(backend).__version__)


def describe(*libraries, cpu_only=False):
    """Returns `(backend, machine)`, the two halves of the line that says
    where a measurement ran: "Backend jax (keras 3.8.0, jax 0.4.38)" with
    `libraries` ("scikit-learn 1.6.1") after the backend's, and "x86_64, 2
    CPUs, Python 3.11.9" (", CPU only" after the CPUs with `cpu_only`).
    The threads and devices are the scripts' own to add
    (`threads_text`, `devices`)."""
    backend = keras.backend.backend()
    versions = [
        f"keras {keras.__version__}",
        f"{backend} {backend_version()}",
        *libraries,
    ]
    cpus = f"{os.cpu_count()} CPUs" + (", CPU only" if cpu_only else "")
    machine = (
        f"{platform.processor() or platform.machine()}, {cpus}, "
        f"Python {platform.python_version()}"
    )
    return f"Backend {backend} ({', '.join(versions)})", machine


def threads_text(threads):
    """Returns "threads=N", or "threads=default" for 0 or None."""
    return f"threads={threads or 'default'}"


def devices():
    """Returns the names of the devices Keras computes on."""
    try:
        return [str(d) for d in keras.distribution.list_devices()]
    except AttributeError:
        # keras.distribution has no torch implementation.
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def load_average():
    """Returns the load average over 1, 5 and 15 minutes, as text: other
    work on the machine shows in wall-clock times."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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


def command_line(program, argv, backend=None):
    """Returns the shell command that runs `program` (its words, e.g.
    "python -m benchmarks.run") with `argv`, quoted, after
    `KERAS_BACKEND=<backend>` if given."""
    words = [program, *map(shlex.quote, argv)]
    if backend is not None:
        words.insert(0, f"KERAS_BACKEND={backend}")
    return " ".join(words)


# -------------------------------------------------------------------------
# Statistics and output


def mean_std(values):
    """Returns `(mean, std)` of the finite values (sample std; 0 for one
    value; NaN for none); None and NaN are left out."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


def column_means(lists):
    """Returns the mean of each position over lists of unequal lengths
    (`mean_std`: NaN and None left out), as long as the longest."""
    depth = max((len(values) for values in lists), default=0)
    return [
        mean_std([values[i] for values in lists if i < len(values)])[0]
        for i in range(depth)
    ]


def table_row(*cells):
    """Returns a Markdown table row of `cells`: "| a | b |"."""
    return "| " + " | ".join(map(str, cells)) + " |"


def _plain(value):
    # numpy scalars and arrays as JSON numbers and lists; NaN as null.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path, data):
    """Writes `data` as JSON (numpy values converted, NaN as null), whole
    or not at all; returns `path`."""
    text = json.dumps(_plain(data), indent=1, sort_keys=True)
    write_atomic(path, text + "\n")
    return path


def figure(width=6.0, height=4.0):
    """Returns a matplotlib Figure drawn by the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def write_png(fig, path):
    """Writes `fig` to `path` as a PNG, whole or not at all; returns
    `path`."""
    buffer = io.BytesIO()
    fig.canvas.print_png(buffer)
    write_atomic(path, buffer.getvalue())
    return path


def write_results(output, results, summary_markdown, plot):
    """Writes `results.json`, `summary.md` (from `summary_markdown(results)`)
    and the figures (`plot(results, output)`) to `output`, prints the
    table; returns `results`."""
    write_json(os.path.join(output, "results.json"), results)
    table = summary_markdown(results)
    write_atomic(os.path.join(output, "summary.md"), table)
    plot(results, output)
    print(table)
    print(f"Results in {os.path.abspath(output)}")
    return results
