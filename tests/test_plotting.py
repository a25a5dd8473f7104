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
        plotting.plot_alignment({"loss": [1.0, 0.5]}, tmp_path)
    assert os.listdir(tmp_path) == ["training.png"]
    assert (tmp_path / "training.png").read_bytes() == b"old figure"


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
