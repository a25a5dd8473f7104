"""What the paper reproductions share: command-line options, statistics,
atomic output."""

import argparse
import io
import json
import math
import os
import statistics

import numpy as np

from benchmarks.shared import check_output_path
from benchmarks.shared import write_atomic

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
RESULTS = os.path.join(ROOT, "benchmarks", "results", "paper")


def quick_output(name):
    """Returns where a `--quick` run of `name` writes by default:
    `runs/paper/<name>-quick/` (git-ignored), never the committed results."""
    return os.path.join(ROOT, "runs", "paper", f"{name}-quick")


def parse_args(parser, argv, name):
    """Parses `argv` with a `parser()`; a `--quick` run without `--output`
    goes to `quick_output(name)`. Exits as argparse does (status 2) if the
    `--output` directory cannot be created or written: before any work, not
    when the results are written."""
    args = parser.parse_args(argv)
    if args.quick and args.output == parser.get_default("output"):
        args.output = quick_output(name)
    check_output_path(parser, "--output", args.output, directory=True)
    return args


def parser(name, description, seeds=3):
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


def positive_int(text):
    """argparse type: a positive integer, or a clear error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text!r}"
        )
    return value


def list_of(kind, allowed=None):
    """argparse type: a comma-separated list of `kind` values, each one of
    `allowed` if given; an empty list or an unknown value is an error."""

    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        try:
            values = tuple(kind(item) for item in items)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
        unknown = [
            v for v in values if allowed is not None and v not in allowed
        ]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(str, unknown))}; allowed: "
                f"{', '.join(allowed)}"
            )
        return values

    parse.__name__ = "list"
    return parse


def repeated(values):
    """Returns the values that occur more than once in `values`, joined by
    commas as given on a command line ("" if none)."""
    seen, twice = set(), []
    for value in values:
        if value in seen and value not in twice:
            twice.append(value)
        seen.add(value)
    return ",".join(map(str, twice))


def mean_std(values):
    """Returns `(mean, std)` of the finite values (sample std; 0 for one
    value; NaN for none)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], 0.0
    return statistics.mean(values), statistics.stdev(values)


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
    """Writes `data` as JSON (numpy values converted, NaN as null),
    whole or not at all."""
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
    """Writes `fig` to `path` as a PNG, whole or not at all."""
    buffer = io.BytesIO()
    fig.canvas.print_png(buffer)
    write_atomic(path, buffer.getvalue())
    return path


def write_results(output, results, summary_markdown, plot):
    """Writes `results.json`, `summary.md` (from `summary_markdown(results)`)
    and the figures (`plot(results, output)`) to `output`, and prints the
    table."""
    write_json(os.path.join(output, "results.json"), results)
    table = summary_markdown(results)
    write_atomic(os.path.join(output, "summary.md"), table)
    plot(results, output)
    print(table)
    print(f"Results in {os.path.abspath(output)}")
