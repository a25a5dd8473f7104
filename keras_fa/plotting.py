"""PNG figures of alignment and accuracy over training.

`plot_alignment` reads the records of a training run: a
`keras.callbacks.History`, anything with the same `.history` attribute (and
optionally `.steps`, per-step records), or a plain dict. It draws them on
matplotlib's Agg canvas without `pyplot`, so it needs no display and leaves no
global state behind. matplotlib is imported only when a figure is drawn
(`pip install matplotlib`), and nothing here imports a Keras backend.
"""

import collections
import numbers
import os
import re
import reprlib
from collections.abc import Mapping

import numpy as np

from keras_fa.files import atomic_open

# measure -> (what it is, y axis label). Unknown measures are still plotted,
# labelled by their own name.
_MEASURES = {
    "weight_angle": ("angle between W and B", "degrees"),
    "signal_angle": ("angle between feedback and backprop signals", "degrees"),
    "update_angle": ("angle between feedback and backprop updates", "degrees"),
    "norm_ratio": ("|B| / |W|", "|B| / |W|"),
    "conservation": ("Q summed over the layer", "Q"),
    "conservation_drift": (
        "Q(t) - Q(0) summed over the layer",
        "Q(t) - Q(0)",
    ),
    "conservation_drift_max": (
        "largest |Q_i(t) - Q_i(0)| over neurons",
        "max |Q_i(t) - Q_i(0)|",
    ),
}
_ANGLE_ORDER = ("weight_angle", "signal_angle", "update_angle")
# Panels of a layer's figure after its angles, when the layer has them.
_LAYER_PANELS = ("norm_ratio", "conservation_drift")
_STEP_KEY = "step"
_STEP_LABEL = "training step"
_EPOCH_LABEL = "epoch"
# One panel's size in inches: a figure with n panels is n of them side by side.
_PANEL_INCHES = (5.0, 3.5)
# Longer series are drawn as bare lines, markers would blur into one; only
# a value between two gaps, which no line segment shows, keeps its marker.
_MAX_MARKED_POINTS = 50

_Panel = collections.namedtuple(
    "_Panel", ["title", "xlabel", "ylabel", "angle", "lines"]
)


def plot_alignment(
    history, directory, *, layers=None, measures=None, dpi=100, overwrite=False
):
    """Writes PNG figures of alignment and accuracy over training, per layer.

    Alignment records are keyed `"<layer name>/<measure>"`, split at the last
    `/` (so nested layer names keep theirs); everything else is a training
    metric. Each file is written only when it has something to show:

    - `training.png`: the losses in one panel and the metrics whose name
      contains `"acc"` in another, against the epoch (from 1).
    - `<measure>.png`, e.g. `weight_angle.png`: one line per layer, from the
      per-step records (`history.steps`) where they hold the measure, else
      from the per-epoch ones. Angles get a dashed line at 90 degrees.
    - `layer_<layer name>.png`: that layer's angles in one panel, then its
      `norm_ratio` and its `conservation_drift`. Characters outside
      `[A-Za-z0-9_.-]` in file names become `_`.

    Missing values (`None`, NaN) are never drawn, never as 0: a step or epoch
    where no layer has a value of a measure (between the `every` steps of
    `keras_fa.train`) is left out; one where only other layers have one is
    a gap in this layer's line; a layer with no value at all (`shallow`'s
    hidden layers) gets no line, legend entry or figure for that measure.

    Figures of different runs are not mixed: unless `overwrite=True`,
    `directory` must hold no PNG file yet (a `CSVLogger` log may be there),
    else a `FileExistsError` naming the files is raised before anything is
    drawn. With `overwrite=True` a figure replaces the file of the same name
    and the other PNG files stay. Each file is written whole or not at all
    (`keras_fa.files.atomic_open`); its mode follows the umask.

    Args:
        history: a `keras.callbacks.History`, an object with a `.history`
            dict of per-epoch lists and optionally a `.steps` dict of
            per-step lists (the global step numbers under `"step"`), or a
            dict of per-epoch lists.
        directory: where to write the figures; created if needed.
        layers: names of the layers to plot, or `None` for all of them.
        measures: names of the measures to plot (e.g. `["weight_angle"]`),
            or `None` for all of them. `training.png` is written either way.
        dpi: dots per inch: n panels are `500 * n` by `350` pixels at 100.
        overwrite: whether to write into a `directory` that holds PNG files,
            replacing those of the same name (default `False`: refuse).

    Returns:
        The sorted list of the paths of the files written.

    Example:

    >>> history = {"loss": [0.9, 0.4], "dense/weight_angle": [85.0, 40.0]}
    >>> keras_fa.plot_alignment(history, "figures")
    ['figures/layer_dense.png', 'figures/training.png',
     'figures/weight_angle.png']
    """
    _import_matplotlib()
    _check_options(dpi, overwrite)
    records = _records(history)
    catalog = _chosen(_catalog(records), layers, measures)
    directory = _prepare(directory, overwrite)
    return _write(_figures(records, catalog, dpi), directory)


def _check_options(dpi, overwrite):
    if (
        not isinstance(dpi, numbers.Real)
        or isinstance(dpi, bool)
        or not dpi > 0
    ):
        raise ValueError(f"`dpi` must be a positive number. Received: {dpi!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(
            f"`overwrite` must be True or False. Received: {overwrite!r}"
        )


def _chosen(catalog, layers, measures):
    """Returns the catalog (layer -> its measures) of the `layers` and
    `measures` asked for, or raises naming those the records lack."""
    layers = _select("layers", layers, list(catalog))
    available = list(dict.fromkeys(m for ms in catalog.values() for m in ms))
    measures = _select("measures", measures, available)
    return {
        layer: [m for m in catalog[layer] if m in measures] for layer in layers
    }


def _write(figures, directory):
    """Saves each `(file name, figure)` of `figures` in `directory`;
    returns the sorted paths."""
    used, paths = set(), []
    for name, figure in figures:
        path = os.path.join(directory, _unique(name, used))
        _save(figure, path)
        paths.append(path)
    return sorted(paths)


def _prepare(directory, overwrite):
    """Checks `directory` and creates it if needed; returns it as a str.

    Raises before any figure is drawn: if it is not a directory, cannot be
    written, or (without `overwrite`) already holds PNG files.
    """
    try:
        directory = os.fspath(directory)
    except TypeError:
        raise TypeError(
            "`directory` must be a path (a str or os.PathLike). Received: "
            f"{directory!r}"
        ) from None
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(
            f"`directory` must be a directory, but {directory!r} is a file."
        )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise type(error)(
            f"`directory` {directory!r} could not be created: {error}"
        ) from error
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            f"`directory` {directory!r} is not writable: the figures could "
            "not be written there. Choose another directory."
        )
    figures = sorted(
        name
        for name in os.listdir(directory)
        if name.lower().endswith(".png")
        and os.path.isfile(os.path.join(directory, name))
    )
    if figures and not overwrite:
        raise FileExistsError(
            f"`directory` {directory!r} already holds figures "
            f"({reprlib.repr(figures)}): `plot_alignment` does not write over "
            "them or mix them with the figures of another run. Choose a new "
            "directory, or pass `overwrite=True` to replace the figures of "
            "the same name (the others stay)."
        )
    return directory


def _import_matplotlib():
    try:
        from matplotlib.backends import backend_agg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "`plot_alignment` needs matplotlib: `pip install matplotlib`."
        ) from error
    return Figure, backend_agg.FigureCanvasAgg


def _records(history):
    """Returns `(epochs, steps)`: dicts of key -> 1-D float array."""
    if isinstance(history, Mapping):
        epochs, steps = history, None
    elif isinstance(getattr(history, "history", None), Mapping):
        epochs, steps = history.history, getattr(history, "steps", None)
    else:
        raise TypeError(
            "`history` must be a `keras.callbacks.History`, an object with a "
            "`.history` dict (and optionally a `.steps` dict), or a dict of "
            f"lists. Received: {type(history).__name__}"
        )
    if steps is not None and not isinstance(steps, Mapping):
        raise TypeError(
            "`history.steps` must be a dict of per-step lists or None. "
            f"Received: {type(steps).__name__}"
        )
    epochs = {key: _values(key, values) for key, values in epochs.items()}
    steps = {key: _values(key, values) for key, values in (steps or {}).items()}
    measured = [key for key in steps if key != _STEP_KEY]
    if measured:
        if _STEP_KEY not in steps:
            raise ValueError(
                "`history.steps` must hold the global step numbers under "
                f"'{_STEP_KEY}'. Received keys: {sorted(steps)}"
            )
        for key in measured:
            if steps[key].size != steps[_STEP_KEY].size:
                raise ValueError(
                    f"`history.steps[{key!r}]` has {steps[key].size} values "
                    f"but `history.steps['{_STEP_KEY}']` has "
                    f"{steps[_STEP_KEY].size}: they must match."
                )
    if not any(epochs[key].size for key in epochs) and not any(
        steps[key].size for key in measured
    ):
        raise ValueError(
            "`history` is empty: it must hold per-epoch lists such as "
            "'loss' or 'dense/weight_angle'. Train the model first. "
            f"Received keys: {sorted(epochs)}"
        )
    return epochs, steps


def _values(key, values):
    if not isinstance(key, str):
        raise TypeError(f"History keys must be strings. Received: {key!r}")
    try:
        if isinstance(values, (str, bytes)):
            raise TypeError("a string is not a list of numbers")
        array = np.array(
            [np.nan if value is None else value for value in values],
            dtype="float64",
        )
        if array.ndim != 1:
            raise TypeError("the values are not scalars")
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"History entry {key!r} must be a list of numbers (None or NaN "
            f"where there is no value). Received: {reprlib.repr(values)}"
        ) from error
    return array


def _catalog(records):
    """Returns layer -> its measures, both in order of first appearance."""
    epochs, steps = records
    catalog = {}
    for key in list(epochs) + [key for key in steps if key != _STEP_KEY]:
        if "/" in key:
            layer, _, measure = key.rpartition("/")
            measures = catalog.setdefault(layer, [])
            if measure not in measures:
                measures.append(measure)
    return catalog


def _select(argument, names, available):
    if names is None:
        return list(available)
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"Unknown {argument} {unknown}: `history` has alignment records "
            f"for {argument} {available}."
        )
    return names


def _series(records, key, use_steps=True, siblings=None):
    """Returns `(x, y, x label)` of `key`; `y` is NaN where `key` has a gap.

    The per-step records are used when `use_steps` and they hold a value of
    `key`, the per-epoch ones (epochs counted from 1) otherwise. A row
    (step or epoch) is kept if `key` or one of its `siblings` has a value
    there: it was measured, and where `key` has none it is a gap in its
    line. `siblings` defaults to the same measure of the other layers
    (`"<any layer>/<measure>"`).
    """
    epochs, steps = records
    if use_steps and key in steps and np.isfinite(steps[key]).any():
        source, x = steps, steps[_STEP_KEY]
        xlabel = _STEP_LABEL
    else:
        source, xlabel = epochs, _EPOCH_LABEL
        x = np.arange(1, epochs.get(key, np.empty(0)).size + 1, dtype=float)
    y = source.get(key, np.empty(0))
    if siblings is None:
        measure = "/" + key.rpartition("/")[2] if "/" in key else None
        siblings = [k for k in source if measure and k.endswith(measure)]
    measured = np.isfinite(y)
    for sibling in siblings:
        values = source.get(sibling)
        if (
            sibling != _STEP_KEY
            and values is not None
            and values.size == y.size
        ):
            measured |= np.isfinite(values)
    kept = np.isfinite(x) & measured
    return x[kept], y[kept], xlabel


def _panels(title, ylabel, angle, lines):
    """Panels of `(label, x, y, x label)` lines, one per x axis in use."""
    by_xlabel = {}
    for label, x, y, xlabel in lines:
        # A line without a single value is not drawn (nor in the legend).
        if np.isfinite(y).any():
            by_xlabel.setdefault(xlabel, []).append((label, x, y))
    return [
        _Panel(title, xlabel, ylabel, angle, by_xlabel[xlabel])
        for xlabel in (_STEP_LABEL, _EPOCH_LABEL)
        if xlabel in by_xlabel
    ]


def _is_angle(measure):
    return measure.endswith("angle")


def _describe(measure):
    default = "degrees" if _is_angle(measure) else measure
    return _MEASURES.get(measure, (measure, default))


def _figures(records, catalog, dpi):
    """Yields `(file name, figure)` for each figure that has something."""
    epochs, _ = records
    metrics = [key for key in epochs if "/" not in key]
    panels = []
    for title, part in (("loss", "loss"), ("accuracy", "acc")):
        keys = [key for key in metrics if part in key]
        # Training metrics first, then their validation counterparts.
        keys.sort(key=lambda key: key.startswith("val_"))
        lines = [(key, *_series(records, key, False, keys)) for key in keys]
        panels += _panels(title, title, False, lines)
    if panels:
        yield "training.png", _draw(panels, "training", dpi)

    all_measures = dict.fromkeys(m for ms in catalog.values() for m in ms)
    for measure in all_measures:
        description, ylabel = _describe(measure)
        lines = [
            (layer, *_series(records, f"{layer}/{measure}"))
            for layer, measures in catalog.items()
            if measure in measures
        ]
        panels = _panels(description, ylabel, _is_angle(measure), lines)
        if panels:
            figure = _draw(panels, f"{measure} per layer", dpi)
            yield f"{_safe(measure)}.png", figure

    for layer, measures in catalog.items():
        # The known angles in their order, then the others as recorded.
        angles = sorted(
            filter(_is_angle, measures),
            key=lambda m: (
                _ANGLE_ORDER.index(m)
                if m in _ANGLE_ORDER
                else len(_ANGLE_ORDER)
            ),
        )
        lines = [(m, *_series(records, f"{layer}/{m}")) for m in angles]
        panels = _panels("angles", "degrees", True, lines)
        for measure in _LAYER_PANELS:
            if measure in measures:
                description, ylabel = _describe(measure)
                series = _series(records, f"{layer}/{measure}")
                panels += _panels(
                    description, ylabel, False, [(measure, *series)]
                )
        if panels:
            figure = _draw(panels, f"layer {layer}", dpi)
            yield f"layer_{_safe(layer)}.png", figure


def _draw(panels, title, dpi):
    """Returns a figure with `panels` side by side."""
    from matplotlib.ticker import MaxNLocator

    Figure, _ = _import_matplotlib()
    width, height = _PANEL_INCHES
    figure = Figure(
        figsize=(width * len(panels), height), dpi=dpi, layout="constrained"
    )
    figure.suptitle(title)
    grid = figure.subplots(1, len(panels), squeeze=False)
    for axes, panel in zip(grid[0], panels):
        for label, x, y in panel.lines:
            axes.plot(
                x,
                y,
                label=label,
                marker="o",
                markevery=_marked(y),
                markersize=3,
            )
        if panel.angle:
            axes.axhline(
                90.0,
                color="gray",
                linestyle="--",
                linewidth=1,
                label="no alignment",
            )
        axes.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        # Epochs and steps are counts: no tick at epoch 1.5.
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


def _marked(y):
    """Returns which points of `y` get a marker: all of a short series, and
    in a longer one those with a gap on both sides."""
    finite = np.isfinite(y)
    if y.size <= _MAX_MARKED_POINTS:
        return finite
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return finite & ~before & ~after


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _unique(name, used):
    """Returns `name`, or `name` numbered if an earlier figure took it."""
    stem, extension = os.path.splitext(name)
    candidate, number = name, 1
    while candidate in used:
        number += 1
        candidate = f"{stem}_{number}{extension}"
    used.add(candidate)
    return candidate


def _save(figure, path):
    """Writes `figure` to `path` as a PNG file, whole or not at all."""
    _, FigureCanvasAgg = _import_matplotlib()
    canvas = FigureCanvasAgg(figure)
    with atomic_open(path, "wb") as file:
        # `print_png`, not `savefig`: the user's savefig rcParams (a tight
        # bounding box, another dpi) would change the size of the image.
        canvas.print_png(file)
