"""Tests of keras_fa/alignment/plan.py: what a meter finds in a model, and
the layout of the one array its compiled functions return."""

import keras
import numpy as np
import pytest

from keras_fa.alignment.plan import Plan
from tests._alignment_models import mlp


def test_plan_of_an_mlp():
    model = mlp("fa")
    plan = Plan(model)
    names = [layer.name for layer in model.layers]
    assert plan.layer_names == names
    assert [key for key, _ in plan.pairs] == names[:2]
    assert plan.conservation_status[names[0]] == "holds"
    # Each kernel's update is its own kernel's gradient.
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    assert plan.kernel_index == {
        layer.name: [index[id(layer.kernel)]] for layer in model.layers
    }
    # The weight measures read the layers' variables, each once.
    read = [id(v) for v in plan.weight_variables]
    assert len(read) == len(set(read))
    assert set(read) == {id(v) for v in model.variables}


def test_weight_measures_come_back_as_one_array():
    model = mlp("fa")
    plan = Plan(model)
    names = plan.layer_names
    values = [v.value for v in plan.weight_variables]
    flat = keras.ops.convert_to_numpy(plan.weights_function()(values))
    # Two scalars per kernel, then Q of each hidden neuron (9, then 8).
    assert flat.shape == (2 * 3 + 9 + 8,)
    out, q = plan.unflatten(flat)
    assert list(out) == [
        f"{name}/{measure}"
        for name in names
        for measure in ("weight_angle", "norm_ratio")
    ]
    assert list(out.values()) == pytest.approx(flat[:6].tolist())
    assert {k: v.shape for k, v in q.items()} == {
        names[0]: (9,),
        names[1]: (8,),
    }
    np.testing.assert_array_equal(q[names[1]], flat[-8:])
    with pytest.raises(AssertionError, match="layout"):
        plan.unflatten(flat[:-1])
