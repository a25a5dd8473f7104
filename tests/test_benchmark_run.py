"""Tests of benchmarks/run.py: cells, results, resuming, data, devices."""

import csv
import json
import os
import shlex
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest

import keras_fa
from benchmarks import run
from keras_fa import datasets
from tests._benchmark_helpers import forbid
from tests._benchmark_helpers import is_png
from tests.conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "2", "--batch-size", "64", "--quiet"]


def _cells(output):
    directory = os.path.join(output, "cells")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _fake_cell(args, task, model, rule, seed):
    # A record as run.run_cell returns it, made without training.
    layers = ["hidden_0", "hidden_1", "output"]
    history = {"val_accuracy": [0.5] * args.epochs}
    for name in layers:
        history[f"{name}/update_angle"] = [30.0] * args.epochs
    return {
        "format": run.FORMAT_VERSION,
        "config": run.config_of(args),
        "model": model,
        "rule": rule,
        "seed": seed,
        "num_classes": task.num_classes,
        "classes": None,
        "test_accuracy": 0.5 + seed / 100,
        "test_loss": 1.0,
        "history": history,
        "layers": layers,
        "final_alignment": {},
        "hidden_update_angles": [30.0, 40.0],
        "throughput": 100.0,
        "train_seconds": 1.0,
        "wall_seconds": 1.0,
        "parameters": 10,
    }


@pytest.fixture
def fake(monkeypatch):
    """Replaces run.run_cell by `_fake_cell`; returns the list of the cells
    it was asked for, as (model, rule, seed)."""
    calls = []

    def run_cell(args, task, model, rule, seed):
        calls.append((model, rule, seed))
        return _fake_cell(args, task, model, rule, seed)

    monkeypatch.setattr(run, "run_cell", run_cell)
    return calls


def _no_work(monkeypatch):
    # Makes loading data or training fail the test.
    forbid(monkeypatch, run, "run_cell")
    forbid(monkeypatch, datasets, "load")


def _summary_rules(output):
    with open(os.path.join(output, "summary.csv")) as file:
        return [(row["rule"], row["seeds"]) for row in csv.DictReader(file)]


def test_cells_summary_and_figures(tmp_path):
    out = str(tmp_path / "runs")
    rows = run.main(
        ["--rules", "bp,fa,dfa", "--seeds", "2", "--output", out, *QUICK]
    )
    names = _cells(out)
    assert names == sorted(
        f"digits__mlp__{rule}__seed{seed}.json"
        for rule in ("bp", "fa", "dfa")
        for seed in (0, 1)
    )
    for name in names:
        record = json.load(open(os.path.join(out, "cells", name)))
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert len(record["history"]["val_accuracy"]) == 2
        assert record["throughput"] > 0 and record["wall_seconds"] > 0
        angles = record["hidden_update_angles"]
        assert len(angles) == 2  # two hidden layers
        if record["rule"] == "bp":
            assert max(angles) < 1e-2
        else:
            assert min(angles) > 5  # not silently backprop
    # Backprop learns digits in 2 epochs far above chance (10%).
    bp = [r for r in rows if r["rule"] == "bp"][0]
    assert bp["test_accuracy_mean"] > 0.5 and bp["seeds"] == 2
    records = run.finished_records(
        out, json.load(open(os.path.join(out, "cells", names[0])))["config"]
    )
    for row in rows:
        accs = [r["test_accuracy"] for r in records if r["rule"] == row["rule"]]
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert row["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    table = open(os.path.join(out, "summary.md")).read()
    assert table.count("| digits | mlp |") == 3
    with open(os.path.join(out, "summary.csv")) as file:
        lines = list(csv.DictReader(file))
    assert [line["rule"] for line in lines] == ["bp", "fa", "dfa"]
    assert float(lines[0]["update_angle_hidden_1"]) < 1e-2
    for figure in ("accuracy_digits_mlp.png", "alignment_digits_mlp.png"):
        assert is_png(os.path.join(out, figure))


def test_interrupt_keeps_finished_cells_and_says_how_to_resume(
    tmp_path, monkeypatch, fake, capsys
):
    out = str(tmp_path / "runs")
    args = ["--rules", "bp,fa,usf", "--output", out, *QUICK]

    def interrupted(*a, **k):
        if len(fake) == 1:  # the second cell
            raise KeyboardInterrupt
        fake.append(a[2:])
        return _fake_cell(*a, **k)

    monkeypatch.setattr(run, "run_cell", interrupted)
    with pytest.raises(SystemExit) as error:
        run.main(args)
    assert error.value.code == 130
    # One line: what is kept and the command that resumes; no traceback.
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "1 of 3 cells are finished and kept" in err
    assert err.strip().endswith(
        f"KERAS_BACKEND={BACKEND} python -m benchmarks.run " + shlex.join(args)
    )
    # The finished cell is on disk, complete; nothing half-written.
    assert _cells(out) == ["digits__mlp__bp__seed0.json"]
    first = os.path.join(out, "cells", "digits__mlp__bp__seed0.json")
    assert run.read_cell(first) is not None
    stamp = os.stat(first).st_mtime_ns
    fake.clear()
    monkeypatch.setattr(
        run, "run_cell", lambda *a, **k: fake.append(a[2:]) or _fake_cell(*a)
    )
    run.main(args)
    assert fake == [("mlp", "fa", 0), ("mlp", "usf", 0)]
    assert os.stat(first).st_mtime_ns == stamp
    fake.clear()
    run.main(args)
    assert fake == []


def test_one_directory_holds_one_set_of_settings(tmp_path, fake, capsys):
    out = str(tmp_path / "runs")
    run.main(["--rules", "fa", "--output", out, *QUICK])
    manifest = json.load(open(os.path.join(out, run.MANIFEST)))
    assert manifest["config"]["epochs"] == 2
    # Other settings, even for cells of other names, are refused up front
    # (before, their summary dropped the first settings' rows).
    for argv in (["--rules", "fa"], ["--rules", "bp"]):
        with pytest.raises(SystemExit, match="epochs=2, now 3"):
            run.main([*argv, "--output", out, *QUICK, "--epochs", "3"])
    assert fake == [("mlp", "fa", 0)]
    # Rules and seeds may be added: the summary keeps every cell.
    run.main(["--rules", "bp", "--seeds", "2", "--output", out, *QUICK])
    assert _summary_rules(out) == [("bp", "2"), ("fa", "1")]


def test_a_directory_without_cells_takes_new_settings(
    tmp_path, monkeypatch, fake
):
    out = str(tmp_path / "runs")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_cell", interrupted)
    with pytest.raises(SystemExit):
        run.main(["--rules", "fa", "--output", out, *QUICK])
    assert _cells(out) == [] and os.path.exists(os.path.join(out, run.MANIFEST))
    monkeypatch.setattr(run, "run_cell", _fake_cell)
    run.main(["--rules", "fa", "--output", out, *QUICK, "--epochs", "3"])
    manifest = json.load(open(os.path.join(out, run.MANIFEST)))
    assert manifest["config"]["epochs"] == 3


def test_a_directory_of_other_files_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.md").write_text("my own notes")
    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as error:
        run.main(["--rules", "fa", "--output", str(out), *QUICK])
    message = str(error.value.code)
    assert str(out) in message and "did not write" in message
    assert "new or empty --output" in message
    assert sorted(os.listdir(out)) == ["summary.md"]
    assert (out / "summary.md").read_text() == "my own notes"


def test_settings_hold_the_backend_and_versions(tmp_path, fake):
    out = str(tmp_path / "runs")
    argv = ["--rules", "fa", "--output", out, *QUICK]
    run.main(argv)
    config = run.config_of(run.parse_args(argv))
    assert config["backend"] == BACKEND
    assert config["keras_version"] == keras.__version__
    assert config["keras_fa_version"] == keras_fa.__version__
    assert config["backend_version"] == __import__(BACKEND).__version__
    # Made under another backend: the directory's manifest says so...
    manifest_path = os.path.join(out, run.MANIFEST)
    manifest_text = open(manifest_path).read()
    manifest = json.loads(manifest_text)
    manifest["config"]["backend"] = "other"
    run.write_atomic(manifest_path, json.dumps(manifest))
    with pytest.raises(SystemExit, match=f"backend='other', now '{BACKEND}'"):
        run.main(argv)
    run.write_atomic(manifest_path, manifest_text)
    # ... or a cell file does (copied from elsewhere).
    cell = os.path.join(out, "cells", "digits__mlp__fa__seed0.json")
    record = json.load(open(cell))
    record["config"]["backend"] = "other"
    run.write_atomic(cell, json.dumps(record))
    with pytest.raises(SystemExit) as error:
        run.main(argv)
    message = str(error.value.code)
    assert cell in message and f"backend='other', now '{BACKEND}'" in message
    assert fake == [("mlp", "fa", 0)]
    assert json.load(open(cell))["config"]["backend"] == "other"


def _good_record(tmp_path):
    args = run.parse_args(["--output", str(tmp_path), *QUICK])
    return _fake_cell(
        args, types.SimpleNamespace(num_classes=10), "mlp", "fa", 0
    )


def _without(record, key):
    return {k: v for k, v in record.items() if k != key}


MALFORMED = {
    "a list": (lambda r: "[1, 2, 3]", "holds [1, 2, 3], not a cell record"),
    "no config": (
        lambda r: json.dumps(_without(r, "config")),
        "has no config",
    ),
    "truncated": (
        lambda r: json.dumps(r, indent=1)[:200],
        "is not valid JSON",
    ),
    "a key missing": (
        lambda r: json.dumps(_without(r, "hidden_update_angles")),
        "lacks hidden_update_angles",
    ),
    "a key of another type": (
        lambda r: json.dumps({**r, "test_accuracy": "high"}),
        'has test_accuracy "high", not a float',
    ),
    "another cell's record": (
        lambda r: json.dumps({**r, "rule": "bp"}),
        "holds the record of cell digits__mlp__bp__seed0",
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_cells_are_reported_set_aside_and_run_again(
    kind, tmp_path, monkeypatch, fake, capsys
):
    out = str(tmp_path / "runs")
    run.main(["--rules", "fa,usf", "--output", out, *QUICK])
    make, words = MALFORMED[kind]
    bad_text = make(_good_record(tmp_path))
    paths = {}
    for rule in ("fa", "usf"):
        paths[rule] = os.path.join(
            out, "cells", f"digits__mlp__{rule}__seed0.json"
        )
        with open(paths[rule], "w") as file:
            file.write(bad_text.replace('"fa"', f'"{rule}"'))
    fake.clear()
    capsys.readouterr()

    def check_then_run(*args, **kwargs):
        # Reported and moved aside before any training.
        err = capsys.readouterr().err
        assert f"{paths['fa']} {words}" in err and f"{paths['usf']} " in err
        assert os.path.exists(paths["fa"] + ".bad")
        fake.append(args[2:])
        return _fake_cell(*args, **kwargs)

    monkeypatch.setattr(run, "run_cell", check_then_run)
    run.main(["--rules", "fa", "--output", out, *QUICK])
    assert fake == [("mlp", "fa", 0)]
    for rule in ("fa", "usf"):
        # Never deleted: the bad file is kept as it was.
        expected = bad_text.replace('"fa"', f'"{rule}"')
        assert open(paths[rule] + ".bad").read() == expected
    assert run.read_cell(paths["fa"]) is not None
    assert not os.path.exists(paths["usf"])
    assert _summary_rules(out) == [("fa", "1")]
    # A second bad copy does not replace the first.
    with open(paths["fa"], "w") as file:
        file.write("[")
    monkeypatch.setattr(run, "run_cell", _fake_cell)
    run.main(["--rules", "fa", "--output", out, *QUICK])
    assert open(paths["fa"] + ".bad2").read() == "["
    assert run.read_cell(paths["fa"]) is not None


def test_malformed_cell_messages_say_what_happens(tmp_path, fake, capsys):
    out = str(tmp_path / "runs")
    run.main(["--rules", "fa,usf", "--output", out, *QUICK])
    for rule in ("fa", "usf"):
        path = os.path.join(out, "cells", f"digits__mlp__{rule}__seed0.json")
        with open(path, "w") as file:
            file.write("{")
    capsys.readouterr()
    run.main(["--rules", "fa", "--output", out, *QUICK])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("the cell runs again now.")
    assert "__fa__" in lines[0] and "moved aside to" in lines[0]
    assert lines[1].endswith("the cell runs again when a command includes it.")


def test_output_through_a_file_is_refused_up_front(
    tmp_path, monkeypatch, capsys
):
    notes = tmp_path / "notes"
    notes.write_text("mine")
    _no_work(monkeypatch)
    for output, words in (
        (notes / "runs", f"{notes} is a file, not a directory"),
        (notes, "it is a file, not a directory"),
    ):
        with pytest.raises(SystemExit) as error:
            run.main(["--rules", "fa", "--output", str(output), *QUICK])
        assert error.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --output: cannot use {str(output)!r}: {words}" in err
    assert notes.read_text() == "mine"


def test_unwritable_output_is_refused_up_front(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    _no_work(monkeypatch)
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions are bypassed here (root)")
        for output, words in (
            (locked / "runs", f"cannot be created: {locked} is not writable"),
            (locked, "it is not writable"),
        ):
            with pytest.raises(SystemExit) as error:
                run.main(["--rules", "fa", "--output", str(output), *QUICK])
            assert error.value.code == 2
            err = capsys.readouterr().err
            assert f"argument --output: cannot use {str(output)!r}" in err
            assert words in err
    finally:
        locked.chmod(0o700)
    assert os.listdir(locked) == []


INTEGER = "must be an integer >= 1, got"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rules", "fa,sgd"], "--rules: unknown rule(s) sgd; allowed: bp"),
        (["--rules", "fa,FA"], "--rules: rule fa given more than once"),
        (["--model", "resnet21"], "resnet<6n+2>"),
        (["--model", "vit"], "transformer"),
        (["--model", "mlp,MLP"], "--model: model mlp given more than once"),
        (["--patch-size", "0"], f"--patch-size: {INTEGER} '0'"),
        (["--patch-size", "a"], f"--patch-size: {INTEGER} 'a'"),
        (["--dataset", "imagenet"], "invalid choice"),
        (["--classes", "1"], "--classes: must be between 2 and 10, the"),
        (["--classes", "11"], "between 2 and 10, the classes of digits, got"),
        (["--dataset", "mnist1d", "--classes", "11"], "of mnist1d, got 11"),
        (["--epochs", "0"], f"--epochs: {INTEGER} '0'"),
        (["--batch-size", "0"], f"--batch-size: {INTEGER} '0'"),
        (["--probe", "-5"], f"--probe: {INTEGER} '-5'"),
        (["--seeds", "0"], "--seeds: must be a count >= 1"),
        (["--seeds", "1,-1"], "list of seeds >= 0, got '1,-1'"),
        (["--seeds", "0,2,0"], "--seeds: seed 0 given more than once"),
        (["--weight-decay", "-1"], "--weight-decay: must be a number >= 0"),
        (["--learning-rate", "0"], "--learning-rate: must be a number > 0"),
        (["--learning-rate", "-0.001"], "a number > 0, got '-0.001'"),
        (["--learning-rate", "nan"], "a number > 0, got 'nan'"),
        (["--optimizer", "rmsprop"], "invalid choice"),
    ],
)
def test_bad_arguments_name_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        run.parse_args(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_good_arguments_are_taken():
    args = run.parse_args(
        ["--rules", "FA,Dfa", "--model", "MLP,ResNet8", "--seeds", "3,1"]
    )
    # Rule names ignore case, as in the layers.
    assert args.rules == ["fa", "dfa"] and args.model == ["mlp", "resnet8"]
    assert args.seeds == [3, 1]
    args = run.parse_args(["--weight-decay", "0", "--classes", "10"])
    assert args.weight_decay == 0.0 and args.classes == 10


def test_classes_of_a_tfds_set_are_known_without_its_data(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("tensorflow_datasets")
    _no_work(monkeypatch)
    argv = ["--dataset", "cifar100", "--data-dir", str(tmp_path / "tfds")]
    with pytest.raises(SystemExit):
        run.parse_args([*argv, "--classes", "101"])
    assert "between 2 and 100, the classes of cifar100, got 101" in (
        capsys.readouterr().err
    )
    assert run.parse_args([*argv, "--classes", "100"]).classes == 100


def test_patches_that_do_not_tile_are_refused_before_training(
    tmp_path, fake, capsys
):
    out = str(tmp_path / "runs")
    argv = ["--model", "transformer", "--patch-size", "3", "--rules", "fa"]
    with pytest.raises(SystemExit) as error:
        run.main([*argv, "--output", out, *QUICK])
    assert error.value.code == 2
    assert "argument --patch-size: 3 does not tile the digits inputs" in (
        capsys.readouterr().err
    )
    assert fake == [] and _cells(out) == []


def test_class_subsets_and_lenet(tmp_path):
    out = str(tmp_path / "runs")
    run.main(
        [
            "--model",
            "lenet",
            "--rules",
            "fa",
            "--classes",
            "3",
            "--seeds",
            "0,1",
            "--output",
            out,
            *QUICK,
        ]
    )
    first, second = (
        json.load(open(os.path.join(out, "cells", name)))
        for name in _cells(out)
    )
    assert first["num_classes"] == second["num_classes"] == 3
    # Each seed draws its own classes.
    assert first["classes"] != second["classes"]
    assert _cells(out)[0].startswith("digits-c3__lenet__fa")


def _check_transformer_cell(out):
    # The cell of `--model transformer --rules fa` on digits in `out`.
    assert _cells(out) == ["digits__transformer__fa__seed0.json"]
    record = json.load(open(os.path.join(out, "cells", _cells(out)[0])))
    assert 0.0 <= record["test_accuracy"] <= 1.0
    # digits: 8x8 images cut into 16 patches of 2x2.
    built = keras_fa.models.transformer(
        (64,), 10, "fa", image_shape=(8, 8, 1), patch_size=2
    )
    assert record["parameters"] == built.count_params()
    # Every kernel is measured, attention projections too.
    layers = record["layers"]
    assert sum(name.endswith("/query") for name in layers) == 2
    angles = record["hidden_update_angles"]
    assert len(angles) == len(layers) - 1 == 1 + 2 * 6
    assert min(angles) > 5  # not silently backprop
    return record


# fa only: direct rules on the transformer are trained in tests/test_models.py
# and examples/transformer.py's test.
TRANSFORMER = ["--model", "transformer", "--rules", "fa", "--epochs", "1"]
TRANSFORMER += ["--probe", "64", "--quiet"]


@pytest.mark.skipif(
    BACKEND != "torch",
    reason="jax and tensorflow run this cell in the --distribute test",
)
def test_transformer_cells(tmp_path):
    out = str(tmp_path / "runs")
    run.main(TRANSFORMER + ["--output", out])
    _check_transformer_cell(out)


def test_transformer_patches():
    def task(name, input_shape):
        return types.SimpleNamespace(name=name, input_shape=input_shape)

    args = run.parse_args(["--model", "transformer"])
    assert "patch_size" not in run.config_of(args)
    cases = [
        (task("digits", (64,)), {"image_shape": (8, 8, 1), "patch_size": 2}),
        (task("mnist", (28, 28, 1)), {"patch_size": 4}),
        (task("cifar10", (32, 32, 3)), {"patch_size": 4}),
        (task("mnist1d", (40,)), {}),  # a sequence of 40 tokens
    ]
    for each, expected in cases:
        assert run.model_kwargs(args, each, "transformer") == expected
        built = keras_fa.models.get(
            "transformer", each.input_shape, 10, "fa", hidden_dim=4, **expected
        )
        assert built.output_shape == (None, 10)
    assert run.model_kwargs(args, task("digits", (64,)), "mlp") == {}
    args = run.parse_args(["--model", "transformer", "--patch-size", "3"])
    assert run.config_of(args)["patch_size"] == 3
    with pytest.raises(SystemExit) as error:
        run.model_kwargs(args, task("digits", (64,)), "transformer")
    assert error.value.code == 2
    assert run.model_kwargs(args, task("x", (12, 3)), "transformer") == {
        "patch_size": 3
    }


def test_tfds_dataset_through_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = str(tmp_path / "runs")
    with tfds.testing.mock_data(num_examples=64):
        # The mock's builder is never "prepared" (see test_datasets_tfds.py).
        monkeypatch.setattr(
            tfds.core.DatasetBuilder, "is_prepared", lambda self: True
        )
        run.main(
            [
                "--dataset",
                "fashion_mnist",
                "--model",
                "mlp",
                "--rules",
                "fa",
                "--probe",
                "32",
                "--output",
                out,
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--quiet",
            ]
        )
    (name,) = _cells(out)
    record = json.load(open(os.path.join(out, "cells", name)))
    assert name == "fashion_mnist__mlp__fa__seed0.json"
    assert record["num_classes"] == 10
    # 28x28x1 flattened to 784 inputs: the first kernel is 784 x 256.
    assert record["parameters"] > 784 * 256


def test_missing_tfds_data_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(
        datasets.download, "network_available", lambda *a: False
    )
    with pytest.raises(SystemExit, match="tfds build cifar10"):
        run.main(
            [
                "--dataset",
                "cifar10",
                "--data-dir",
                str(tmp_path / "tfds"),
                "--rules",
                "fa",
                "--output",
                str(tmp_path / "runs"),
                "--quiet",
            ]
        )
    assert _cells(str(tmp_path / "runs")) == []


def test_mixed_precision(tmp_path):
    out = str(tmp_path / "runs")
    run.main(
        [
            "--rules",
            "fa,dfa",
            "--precision",
            "mixed_bfloat16",
            "--output",
            out,
            *QUICK,
        ]
    )
    for name in _cells(out):
        record = json.load(open(os.path.join(out, "cells", name)))
        assert np.isfinite(record["test_loss"])
        assert record["test_accuracy"] > 0.2


_DISTRIBUTED = textwrap.dedent(
    """
    import json, os, sys
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from benchmarks import run
    from keras_fa import datasets
    out = sys.argv[1]
    # Keras's tensorflow input path under MirroredStrategy reshuffles a
    # seeded tf.data pipeline in another order than a single device does
    # (measured: identical runs without shuffling, 2% apart with it), so
    # the comparison fixes the order on both sides.
    train = datasets.Task.train
    datasets.Task.train = lambda self, *a, **k: train(
        self, *a, **{**k, "shuffle": False})
    common = ["--rules", "fa,dfa", "--epochs", "2", "--batch-size", "64",
              "--quiet"]
    # Both runs drop the same examples, so that every batch splits evenly
    # over the 2 devices (jax needs it; tensorflow would otherwise weigh
    # the examples of an uneven last batch unequally).
    real = run._distribution
    run._distribution = lambda args: (None, 2)
    run.main(common + ["--output", out + "/single"])
    run._distribution = lambda args: (real(args)[0], 2)
    run.main(common + ["--output", out + "/multi", "--distribute"])
    # The transformer, on one device and on two.
    transformer = json.loads(sys.argv[2])
    run._distribution = lambda args: (None, 2)
    run.main(transformer + ["--output", out + "/transformer_single"])
    run._distribution = lambda args: (real(args)[0], 2)
    run.main(
        transformer + ["--output", out + "/transformer_multi", "--distribute"]
    )
    """
)


def _run_distributed(out):
    # `_DISTRIBUTED` on 2 simulated devices, writing under `out`.
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": ROOT,
    }
    subprocess.run(
        [
            sys.executable,
            "-c",
            _DISTRIBUTED,
            str(out),
            json.dumps(TRANSFORMER + ["--batch-size", "64"]),
        ],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )


@pytest.mark.skipif(BACKEND == "torch", reason="jax and tensorflow only")
def test_distribute_matches_single_device(tmp_path):
    # One subprocess for the MLP and the transformer (its start and the
    # imports cost as much as a cell); xdist would run a shared fixture
    # once per worker.
    _run_distributed(tmp_path)
    for rule in ("fa", "dfa"):
        name = f"digits__mlp__{rule}__seed0.json"
        single = json.load(open(tmp_path / "single" / "cells" / name))
        multi = json.load(open(tmp_path / "multi" / "cells" / name))
        assert len(multi["devices"]) == 2
        # The same steps, the batch mean taken over two shards: equal up to
        # float summation order.
        assert multi["test_loss"] == pytest.approx(
            single["test_loss"], rel=1e-3
        )
        assert abs(multi["test_accuracy"] - single["test_accuracy"]) <= 0.01
        np.testing.assert_allclose(
            multi["hidden_update_angles"],
            single["hidden_update_angles"],
            atol=0.5,
        )
    # The transformer: --distribute accepts it, and its step is the same.
    single = _check_transformer_cell(str(tmp_path / "transformer_single"))
    multi = _check_transformer_cell(str(tmp_path / "transformer_multi"))
    assert len(multi["devices"]) == 2
    # One epoch of the same steps on one device and on two (the batch mean
    # over two shards): equal up to float summation order.
    assert multi["test_loss"] == pytest.approx(single["test_loss"], rel=1e-3)
    np.testing.assert_allclose(
        multi["hidden_update_angles"],
        single["hidden_update_angles"],
        atol=0.5,
    )


@pytest.mark.skipif(BACKEND != "torch", reason="torch refuses --distribute")
def test_distribute_refused_on_torch(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--distribute"])
    assert "jax or tensorflow" in capsys.readouterr().err


def test_curves_leave_out_what_was_not_measured():
    def record(rule, angles):
        return {
            "rule": rule,
            "layers": ["hidden", "output"],
            "history": {"hidden/update_angle": angles},
        }

    nan = float("nan")
    records = [
        record("fa", [50.0, 40.0]),
        record("fa", [nan, 30.0]),  # a seed that missed epoch 1
        record("shallow", [nan, nan]),  # no signal below the head
    ]
    curves = run._curves(records, "update_angle")
    # shallow has no curve (it was drawn at 0 with a legend entry before).
    assert sorted(curves) == ["fa"]
    np.testing.assert_allclose(curves["fa"], [50.0, 35.0])
