"""Tests of keras_fa.plotting: files, sizes, series, content, errors, atomicity.

Nothing here depends on the Keras backend: the records are written by hand.
"""

import ast
import os
import sys
import types

import keras
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from keras_fa import plotting

# Panel size in pixels at 100 dpi; a figure is n panels side by side.
PANEL = (500, 350)

EPOCHS = {
    "loss": [1.0, 0.6, 0.4],
    "val_loss": [1.1, 0.7, 0.5],
    "accuracy": [0.5, 0.7, 0.8],
    "val_accuracy": [0.4, 0.6, 0.75],
    "learning_rate": [0.1, 0.1, 0.1],
    "dense/weight_angle": [80.0, 60.0, 45.0],
    "dense/signal_angle": [70.0, 50.0, 40.0],
    "dense/norm_ratio": [1.0, 1.2, 1.3],
    "dense/conservation_drift": [0.0, 0.1, 0.2],
    "dense_1/weight_angle": [85.0, 70.0, 50.0],
    "dense_1/norm_ratio": [0.9, 1.0, 1.1],
}
# Figure -> number of panels, for EPOCHS.
EXPECTED = {
    "training.png": 2,
    "weight_angle.png": 1,
    "signal_angle.png": 1,
    "norm_ratio.png": 1,
    "conservation_drift.png": 1,
    "layer_dense.png": 3,
    "layer_dense_1.png": 2,
}


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Overrides conftest's: no Keras state here, and clearing it costs
    about 0.3 s a test."""
    yield


def _size(path):
    """(width, height) in pixels of the PNG file at `path`, read back."""
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


def _figures(history, layers=None, measures=None):
    """The figures `plot_alignment` would write, by file name, unsaved."""
    records = plotting._records(history)
    catalog = plotting._catalog(records)
    if layers is not None or measures is not None:
        catalog = {
            layer: [m for m in ms if measures is None or m in measures]
            for layer, ms in catalog.items()
            if layers is None or layer in layers
        }
    return dict(plotting._figures(records, catalog, dpi=10))


def _lines(axes):
    """label -> (x, y) of the lines drawn on `axes`."""
    return {
        line.get_label(): (
            np.asarray(line.get_xdata(), dtype=float),
            np.asarray(line.get_ydata(), dtype=float),
        )
        for line in axes.get_lines()
    }


def _with_steps(history, steps):
    return types.SimpleNamespace(history=history, steps=steps)


def test_writes_each_figure_once_at_the_size_of_its_panels(tmp_path):
    directory = tmp_path / "new" / "figures"
    paths = plotting.plot_alignment(EPOCHS, directory, dpi=40)
    assert paths == sorted(str(directory / name) for name in EXPECTED)
    assert sorted(os.listdir(directory)) == sorted(EXPECTED)
    for name, panels in EXPECTED.items():
        expected = (PANEL[0] * panels * 40 // 100, PANEL[1] * 40 // 100)
        assert _size(directory / name) == expected, name


def test_dpi_scales_the_image(tmp_path):
    history = {"dense/norm_ratio": [1.0, 2.0]}
    small = plotting.plot_alignment(history, tmp_path / "a", dpi=20)
    large = plotting.plot_alignment(history, tmp_path / "b", dpi=60)
    assert [os.path.basename(path) for path in small] == [
        "layer_dense.png",
        "norm_ratio.png",
    ]
    assert [_size(path) for path in small] == [(100, 70)] * 2
    assert [_size(path) for path in large] == [(300, 210)] * 2


def test_figures_of_absent_measures_are_not_written(tmp_path):
    history = {"loss": [1.0, 0.5], "dense/norm_ratio": [1.0, 1.1]}
    paths = plotting.plot_alignment(history, tmp_path, dpi=20)
    # No angle, no accuracy, no conservation: neither their figures nor
    # their panels.
    assert sorted(os.listdir(tmp_path)) == [
        "layer_dense.png",
        "norm_ratio.png",
        "training.png",
    ]
    assert len(paths) == 3
    assert _size(tmp_path / "training.png") == (100, 70)
    assert _size(tmp_path / "layer_dense.png") == (100, 70)


def test_a_keras_history_gives_the_same_figures_as_its_dict(tmp_path):
    history = keras.callbacks.History()
    history.history = {key: list(values) for key, values in EPOCHS.items()}
    plotting.plot_alignment(history, tmp_path, dpi=20)
    assert sorted(os.listdir(tmp_path)) == sorted(EXPECTED)


def test_training_figure_shows_losses_and_accuracies_by_epoch():
    history = dict(EPOCHS, sparse_categorical_accuracy=[0.3, 0.4, 0.5])
    figure = _figures(history)["training.png"]
    loss, accuracy = figure.get_axes()
    assert loss.get_xlabel() == accuracy.get_xlabel() == "epoch"
    assert set(_lines(loss)) == {"loss", "val_loss"}
    assert set(_lines(accuracy)) == {
        "accuracy",
        "val_accuracy",
        "sparse_categorical_accuracy",
    }
    x, y = _lines(loss)["val_loss"]
    np.testing.assert_array_equal(x, [1, 2, 3])
    np.testing.assert_array_equal(y, EPOCHS["val_loss"])


def test_measure_figure_has_a_line_per_layer_and_the_90_degree_line():
    figures = _figures(EPOCHS)
    (axes,) = figures["weight_angle.png"].get_axes()
    lines = _lines(axes)
    assert set(lines) == {"dense", "dense_1", "no alignment"}
    np.testing.assert_array_equal(lines["dense_1"][1], [85.0, 70.0, 50.0])
    np.testing.assert_array_equal(lines["no alignment"][1], [90.0, 90.0])
    assert axes.get_ylabel() == "degrees"
    assert axes.get_xlabel() == "epoch"
    # Not an angle: no 90 degree line.
    (axes,) = figures["norm_ratio.png"].get_axes()
    assert set(_lines(axes)) == {"dense", "dense_1"}


def test_layer_figure_has_angles_then_norm_ratio_then_drift():
    angles, norm, drift = _figures(EPOCHS)["layer_dense.png"].get_axes()
    assert set(_lines(angles)) == {
        "weight_angle",
        "signal_angle",
        "no alignment",
    }
    assert angles.get_ylabel() == "degrees"
    assert set(_lines(norm)) == {"norm_ratio"}
    assert set(_lines(drift)) == {"conservation_drift"}
    np.testing.assert_array_equal(
        _lines(drift)["conservation_drift"][1], [0.0, 0.1, 0.2]
    )


def test_series_uses_steps_when_they_hold_the_measure():
    history = _with_steps(
        {"dense/weight_angle": [60.0, 50.0], "dense/norm_ratio": [1.0, 1.1]},
        {"step": [0, 10, 20, 30], "dense/weight_angle": [89, 70, 55, 48]},
    )
    records = plotting._records(history)
    x, y, xlabel = plotting._series(records, "dense/weight_angle")
    assert xlabel == "training step"
    np.testing.assert_array_equal(x, [0, 10, 20, 30])
    np.testing.assert_array_equal(y, [89, 70, 55, 48])
    # Not recorded per step: per epoch.
    x, y, xlabel = plotting._series(records, "dense/norm_ratio")
    assert xlabel == "epoch"
    np.testing.assert_array_equal(x, [1, 2])

    figures = _figures(history)
    (axes,) = figures["weight_angle.png"].get_axes()
    assert axes.get_xlabel() == "training step"
    np.testing.assert_array_equal(_lines(axes)["dense"][0], [0, 10, 20, 30])
    (axes,) = figures["norm_ratio.png"].get_axes()
    assert axes.get_xlabel() == "epoch"


def test_step_and_epoch_series_never_share_an_x_axis():
    history = _with_steps(
        {"a/weight_angle": [60.0, 50.0], "b/weight_angle": [70.0, 65.0]},
        {"step": [5, 10], "a/weight_angle": [80.0, 75.0]},
    )
    by_step, by_epoch = _figures(history)["weight_angle.png"].get_axes()
    assert by_step.get_xlabel() == "training step"
    assert set(_lines(by_step)) == {"a", "no alignment"}
    assert by_epoch.get_xlabel() == "epoch"
    assert set(_lines(by_epoch)) == {"b", "no alignment"}


def test_missing_values_are_skipped(tmp_path):
    history = _with_steps(
        {
            "loss": [1.0, None, 0.5],
            "dense/weight_angle": [None, 30.0, float("nan")],
            # Never applies to this layer: no line, no figure.
            "dense/signal_angle": [None, None, None],
            "dense_1/update_angle": [float("nan"), float("nan")],
        },
        {
            "step": [1, 2, 3],
            "dense/norm_ratio": [np.nan, 1.5, None],
        },
    )
    records = plotting._records(history)
    x, y, _ = plotting._series(records, "dense/weight_angle")
    np.testing.assert_array_equal(x, [2.0])
    np.testing.assert_array_equal(y, [30.0])
    x, y, xlabel = plotting._series(records, "dense/norm_ratio")
    assert xlabel == "training step"
    np.testing.assert_array_equal(x, [2.0])
    np.testing.assert_array_equal(y, [1.5])

    plotting.plot_alignment(history, tmp_path, dpi=20)
    assert sorted(os.listdir(tmp_path)) == [
        "layer_dense.png",
        "norm_ratio.png",
        "training.png",
        "weight_angle.png",
    ]
    (loss,) = _figures(history)["training.png"].get_axes()
    np.testing.assert_array_equal(_lines(loss)["loss"][0], [1, 3])


def test_a_layer_without_values_is_absent_never_zero(tmp_path):
    # The hidden layers of `shallow`: no signal, so their angles are NaN
    # at every measurement; the output layer's are 0.
    nan = float("nan")
    history = _with_steps(
        {
            "loss": [2.3, 2.2],
            "dense/update_angle": [nan, nan],
            "dense/signal_angle": [nan, nan],
            "dense_2/update_angle": [0.0, 0.0],
        },
        {
            "step": [0, 5, 10],
            "dense/update_angle": [nan, nan, nan],
            "dense_2/update_angle": [0.0, 0.0, 0.0],
        },
    )
    figures = _figures(history)
    assert sorted(figures) == [
        "layer_dense_2.png",
        "training.png",
        "update_angle.png",
    ]
    (axes,) = figures["update_angle.png"].get_axes()
    lines = _lines(axes)
    # No line, no legend entry for `dense`.
    assert set(lines) == {"dense_2", "no alignment"}
    assert [t.get_text() for t in axes.get_legend().get_texts()] == [
        "dense_2",
        "no alignment",
    ]
    np.testing.assert_array_equal(lines["dense_2"][1], [0.0, 0.0, 0.0])
    plotting.plot_alignment(history, tmp_path, dpi=20)
    assert "layer_dense.png" not in os.listdir(tmp_path)


def test_a_missing_value_between_measurements_is_a_gap():
    nan = float("nan")
    history = _with_steps(
        {
            # Epoch 2 was measured (dense_1 has a value), dense has none.
            "dense/weight_angle": [80.0, None, 40.0],
            "dense_1/weight_angle": [70.0, 60.0, 50.0],
        },
        {
            # As keras_fa.train records them: angles every 4 steps, NaN in
            # between for every layer (not measured: left out), and at
            # step 9 a value for dense_1 only (a gap for dense).
            "step": [1, 2, 3, 4, 5, 6, 7, 8, 9],
            "dense/update_angle": [85, nan, nan, nan, 75, nan, nan, nan, nan],
            "dense_1/update_angle": [88, nan, nan, nan, 80, nan, nan, nan, 70],
        },
    )
    figures = _figures(history)
    (axes,) = figures["weight_angle.png"].get_axes()
    x, y = _lines(axes)["dense"]
    np.testing.assert_array_equal(x, [1, 2, 3])
    # NaN stays NaN: matplotlib breaks the line there. Neither 0 nor a
    # segment from 80 to 40 across the missing epoch.
    np.testing.assert_array_equal(y, [80.0, nan, 40.0])
    (axes,) = figures["update_angle.png"].get_axes()
    lines = _lines(axes)
    np.testing.assert_array_equal(lines["dense"][0], [1, 5, 9])
    np.testing.assert_array_equal(lines["dense"][1], [85, 75, nan])
    np.testing.assert_array_equal(lines["dense_1"][1], [88, 80, 70])
    # The layer's own figure shows the same gap.
    by_step, by_epoch = figures["layer_dense.png"].get_axes()
    assert by_epoch.get_xlabel() == "epoch"
    np.testing.assert_array_equal(
        _lines(by_epoch)["weight_angle"][1], [80.0, nan, 40.0]
    )
    np.testing.assert_array_equal(
        _lines(by_step)["update_angle"][1], [85, 75, nan]
    )


def test_a_value_between_gaps_of_a_long_series_keeps_its_marker():
    nan = float("nan")
    values = [50.0] * 60
    values[30], values[31], values[32] = nan, 40.0, nan
    others = [60.0] * 60
    history = {"a/weight_angle": values, "b/weight_angle": others}
    (axes,) = _figures(history)["weight_angle.png"].get_axes()
    line = {line.get_label(): line for line in axes.get_lines()}["a"]
    marked = np.flatnonzero(line.get_markevery())
    # 60 points: a bare line, but the lone value at epoch 32 (index 31)
    # would show nowhere without its marker.
    np.testing.assert_array_equal(marked, [31])
    # A short series: every value marked.
    short = {"a/weight_angle": [1.0, nan, 2.0], "b/weight_angle": [3.0] * 3}
    (axes,) = _figures(short)["weight_angle.png"].get_axes()
    line = {line.get_label(): line for line in axes.get_lines()}["a"]
    np.testing.assert_array_equal(line.get_markevery(), [True, False, True])


def test_a_shallow_model_plots_no_hidden_angle(tmp_path):
    # The real path: keras_fa.alignment on a `shallow` model gives NaN for
    # its hidden layers, which must not be drawn (as 0 or otherwise).
    import keras_fa

    keras.utils.set_random_seed(0)
    model = keras_fa.direct_feedback(
        keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="relu", name="hidden"),
                keras.layers.Dense(3, name="out"),
            ]
        ),
        "shallow",
    )
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.arange(16) % 3
    measures = keras_fa.alignment.measure(model, x, y)
    assert np.isnan(measures["hidden/update_angle"])
    history = {key: [value, value] for key, value in measures.items()}
    figures = _figures(history)
    (axes,) = figures["update_angle.png"].get_axes()
    assert set(_lines(axes)) == {"out", "no alignment"}
    assert "layer_hidden.png" not in figures
    assert "layer_out.png" in figures


def test_layer_names_are_split_at_the_last_slash(tmp_path):
    history = {
        "model/block_1/dense/weight_angle": [80.0, 70.0],
        "model/block_1/dense/my_measure": [1.0, 2.0],
    }
    assert plotting._catalog(plotting._records(history)) == {
        "model/block_1/dense": ["weight_angle", "my_measure"]
    }
    plotting.plot_alignment(history, tmp_path, dpi=20)
    assert sorted(os.listdir(tmp_path)) == [
        "layer_model_block_1_dense.png",
        "my_measure.png",
        "weight_angle.png",
    ]
    (axes,) = _figures(history)["my_measure.png"].get_axes()
    assert set(_lines(axes)) == {"model/block_1/dense"}
    assert axes.get_ylabel() == "my_measure"


def test_layers_whose_safe_names_collide_get_numbered_files(tmp_path):
    history = {"a/b/norm_ratio": [1.0], "a_b/norm_ratio": [2.0]}
    plotting.plot_alignment(history, tmp_path, dpi=20)
    assert sorted(os.listdir(tmp_path)) == [
        "layer_a_b.png",
        "layer_a_b_2.png",
        "norm_ratio.png",
    ]


def test_layers_and_measures_restrict_the_figures(tmp_path):
    paths = plotting.plot_alignment(
        EPOCHS, tmp_path / "layers", layers=["dense_1"], dpi=20
    )
    assert [os.path.basename(path) for path in paths] == [
        "layer_dense_1.png",
        "norm_ratio.png",
        "training.png",
        "weight_angle.png",
    ]
    (axes,) = _figures(EPOCHS, layers=["dense_1"])[
        "weight_angle.png"
    ].get_axes()
    assert set(_lines(axes)) == {"dense_1", "no alignment"}

    paths = plotting.plot_alignment(
        EPOCHS, tmp_path / "measures", measures="norm_ratio", dpi=20
    )
    assert [os.path.basename(path) for path in paths] == [
        "layer_dense.png",
        "layer_dense_1.png",
        "norm_ratio.png",
        "training.png",
    ]
    # Only the norm ratio panel is left in a layer's figure.
    assert _size(tmp_path / "measures" / "layer_dense.png") == (100, 70)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"layers": ["dense", "conv"]}, r"\['conv'\].*'dense', 'dense_1'"),
        ({"measures": ["angle"]}, r"\['angle'\].*'weight_angle'"),
        ({"dpi": 0}, "positive"),
    ],
)
def test_unknown_names_and_bad_dpi_are_rejected(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        plotting.plot_alignment(EPOCHS, tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "history, error, pattern",
    [
        ({}, ValueError, "empty"),
        ({"loss": []}, ValueError, "empty"),
        (keras.callbacks.History(), ValueError, "empty"),
        ([1.0, 2.0], TypeError, "History.*dict"),
        ("loss", TypeError, "History.*dict"),
        ({"loss": 0.5}, TypeError, "'loss' must be a list of numbers"),
        ({"loss": "0.5"}, TypeError, "'loss' must be a list of numbers"),
        ({"loss": [[1.0, 2.0]]}, TypeError, "list of numbers"),
        ({1: [1.0]}, TypeError, "keys must be strings"),
        (_with_steps({}, [1, 2]), TypeError, "steps` must be a dict"),
        (
            _with_steps({}, {"dense/weight_angle": [1.0]}),
            ValueError,
            "'step'",
        ),
        (
            _with_steps({}, {"step": [1, 2], "dense/weight_angle": [1.0]}),
            ValueError,
            "has 1 values .* has 2",
        ),
    ],
)
def test_bad_histories_are_rejected(tmp_path, history, error, pattern):
    with pytest.raises(error, match=pattern):
        plotting.plot_alignment(history, tmp_path / "figures")
    assert not os.path.exists(tmp_path / "figures")


def test_a_failed_save_leaves_no_file_and_keeps_the_old_one(
    tmp_path, monkeypatch
):
    (tmp_path / "training.png").write_bytes(b"old figure")

    def fail(canvas, file, **kwargs):
        file.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", fail)
    with pytest.raises(OSError, match="disk full"):
        plotting.plot_alignment({"loss": [1.0, 0.5]}, tmp_path, overwrite=True)
    assert os.listdir(tmp_path) == ["training.png"]
    assert (tmp_path / "training.png").read_bytes() == b"old figure"


def _no_drawing(monkeypatch):
    """Makes drawing a figure fail the test: errors must come first."""

    def draw(*args, **kwargs):
        raise AssertionError("a figure was drawn before the error")

    monkeypatch.setattr(plotting, "_draw", draw)


def test_existing_figures_are_kept_unless_overwrite(tmp_path, monkeypatch):
    history = {"loss": [1.0, 0.5], "dense/norm_ratio": [1.0, 1.1]}
    (tmp_path / "training.png").write_bytes(b"an earlier run")
    (tmp_path / "layer_old.png").write_bytes(b"an earlier layer")
    (tmp_path / "log.csv").write_text("epoch,loss\n")
    with monkeypatch.context() as patch:
        _no_drawing(patch)
        with pytest.raises(FileExistsError) as error:
            plotting.plot_alignment(history, tmp_path)
    message = str(error.value)
    assert "`directory`" in message and str(tmp_path) in message
    assert "'layer_old.png', 'training.png'" in message
    assert "overwrite=True" in message
    assert (tmp_path / "training.png").read_bytes() == b"an earlier run"
    assert sorted(os.listdir(tmp_path)) == [
        "layer_old.png",
        "log.csv",
        "training.png",
    ]

    # Asked to: the figure of the same name is replaced, the others stay
    # (as the docstring says).
    paths = plotting.plot_alignment(history, tmp_path, dpi=20, overwrite=True)
    assert [os.path.basename(path) for path in paths] == [
        "layer_dense.png",
        "norm_ratio.png",
        "training.png",
    ]
    assert _size(tmp_path / "training.png") == (100, 70)
    assert (tmp_path / "layer_old.png").read_bytes() == b"an earlier layer"
    assert (tmp_path / "log.csv").read_text() == "epoch,loss\n"


def test_a_directory_without_figures_is_written_to(tmp_path):
    # Other files (a CSVLogger's log) are no figures of an earlier run.
    (tmp_path / "log.csv").write_text("epoch,loss\n")
    plotting.plot_alignment({"loss": [1.0]}, tmp_path, dpi=20)
    assert sorted(os.listdir(tmp_path)) == ["log.csv", "training.png"]
    # A second call into the same directory is refused.
    with pytest.raises(FileExistsError, match="'training.png'"):
        plotting.plot_alignment({"loss": [2.0]}, tmp_path, dpi=20)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"overwrite": "yes"}, TypeError, "`overwrite` must be True or False"),
        ({"overwrite": 1}, TypeError, "Received: 1"),
    ],
)
def test_bad_overwrite_is_rejected(
    tmp_path, monkeypatch, kwargs, error, pattern
):
    _no_drawing(monkeypatch)
    with pytest.raises(error, match=pattern):
        plotting.plot_alignment({"loss": [1.0]}, tmp_path / "figures", **kwargs)
    assert not os.path.exists(tmp_path / "figures")


def test_a_directory_that_is_a_file_is_rejected(tmp_path, monkeypatch):
    _no_drawing(monkeypatch)
    path = tmp_path / "figures"
    path.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="`directory` must be a dir"):
        plotting.plot_alignment({"loss": [1.0]}, path)
    with pytest.raises(NotADirectoryError, match="could not be created"):
        plotting.plot_alignment({"loss": [1.0]}, path / "below")
    with pytest.raises(TypeError, match="`directory` must be a path"):
        plotting.plot_alignment({"loss": [1.0]}, 3)
    assert path.read_text() == "not a directory"


def test_an_unwritable_directory_is_rejected(tmp_path, monkeypatch):
    _no_drawing(monkeypatch)
    # As a user without write permission sees it (the tests may run as
    # root, who may write anywhere).
    monkeypatch.setattr(plotting.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="`directory` .* not writable"):
        plotting.plot_alignment({"loss": [1.0]}, tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_follow_the_umask(tmp_path, umask):
    # A temporary file from tempfile.mkstemp would be 0600 whatever the
    # umask: figures in a shared directory must be readable as any file.
    old = os.umask(umask)
    try:
        (path,) = plotting.plot_alignment({"loss": [1.0]}, tmp_path, dpi=20)
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_rename_leaves_no_file(tmp_path, monkeypatch):
    def fail(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr(plotting.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        plotting.plot_alignment({"loss": [1.0, 0.5]}, tmp_path)
    assert os.listdir(tmp_path) == []


def test_missing_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plotting.plot_alignment({"loss": [1.0]}, tmp_path)


def test_module_imports_no_backend_and_matplotlib_only_when_called():
    with open(plotting.__file__) as file:
        tree = ast.parse(file.read())
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        else:
            continue
        for name in names:
            imported[name.split(".")[0]] = node in tree.body
    assert not {"keras", "tensorflow", "jax", "torch"} & set(imported)
    assert imported["matplotlib"] is False
    assert imported["numpy"] is True
