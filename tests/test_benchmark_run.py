"""Tests of benchmarks/run.py: cells, results, resuming, data, devices."""

import csv
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import keras_fa
from benchmarks import run
from keras_fa import datasets
from tests.conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "2", "--batch-size", "64", "--quiet"]


def _cells(output):
    directory = os.path.join(output, "cells")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


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
        with open(os.path.join(out, figure), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_cells_and_interrupt_keeps_them(
    tmp_path, monkeypatch
):
    out = str(tmp_path / "runs")
    args = ["--rules", "bp,fa,usf", "--output", out, *QUICK]
    calls = []
    real = run.run_cell

    def interrupted(*a, **k):
        calls.append(a[2:])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(run, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.main(args)
    # The finished cell is on disk, complete; nothing half-written.
    assert os.listdir(os.path.join(out, "cells")) == [
        "digits__mlp__bp__seed0.json"
    ]
    first = os.path.join(out, "cells", "digits__mlp__bp__seed0.json")
    assert run.read_cell(first) is not None
    stamp = os.stat(first).st_mtime_ns
    calls.clear()
    monkeypatch.setattr(
        run, "run_cell", lambda *a, **k: calls.append(a[2:]) or real(*a, **k)
    )
    run.main(args)
    assert calls == [("mlp", "fa", 0), ("mlp", "usf", 0)]
    assert os.stat(first).st_mtime_ns == stamp
    calls.clear()
    run.main(args)
    assert calls == []


def test_other_settings_are_refused(tmp_path):
    out = str(tmp_path / "runs")
    run.main(["--rules", "fa", "--output", out, *QUICK])
    with pytest.raises(SystemExit, match="epochs=2, now 3"):
        run.main(["--rules", "fa", "--output", out, *QUICK, "--epochs", "3"])


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "result.json")
    run.write_atomic(path, "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        run.write_atomic(path, "new")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rules", "fa,sgd"], "unknown rule"),
        (["--model", "resnet21"], "resnet<6n+2>"),
        (["--model", "vit"], "transformer"),
        (["--patch-size", "0"], "must be > 0"),
        (["--dataset", "imagenet"], "invalid choice"),
        (["--classes", "1"], "--classes must be >= 2"),
        (["--epochs", "0"], "must be > 0"),
        (["--optimizer", "rmsprop"], "invalid choice"),
    ],
)
def test_bad_arguments_name_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        run.parse_args(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


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
    with pytest.raises(SystemExit, match="--patch-size 3 does not tile"):
        run.model_kwargs(args, task("digits", (64,)), "transformer")
    assert run.model_kwargs(args, task("x", (12, 3)), "transformer") == {
        "patch_size": 3
    }


def test_tfds_dataset_through_mock_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = str(tmp_path / "runs")
    with tfds.testing.mock_data(num_examples=64):
        # The mock's builder is never "prepared" (see test_datasets.py).
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
    monkeypatch.setattr(datasets, "_network_available", lambda *a: False)
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
