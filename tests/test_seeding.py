"""The seed scheme of keras_fa.seeding, and the layers and models that use
it."""

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import seeding


def _numpy(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_layer_seed_is_seed_times_1000_plus_index():
    assert seeding.layer_seed(None, 3) is None
    assert seeding.layer_seed(0, 3) == 3
    assert seeding.layer_seed(7, 12) == 7012
    assert seeding.layer_seed(2**31, 1) == 1  # stays a valid seed
    assert 0 <= seeding.layer_seed(-1, 0) < 2**31


def test_seeds_s_and_s_plus_1_give_disjoint_layer_seeds():
    for seed in (0, 1, 41, 10**6):
        ours = {seeding.layer_seed(seed, i) for i in range(1000)}
        next_ = {seeding.layer_seed(seed + 1, i) for i in range(1000)}
        assert len(ours) == 1000 and not ours & next_


def test_feedback_seed_is_not_the_forward_seed():
    assert seeding.feedback_seed(None) is None
    assert seeding.feedback_seed(5) != 5
    streams = {seeding.feedback_seed(5, s) for s in range(10)}
    assert len(streams) == 10


@pytest.mark.parametrize("bad", [1.5, "1", True])
def test_standardize_seed_takes_integers_or_none(bad):
    assert seeding.standardize_seed(None) is None
    assert seeding.standardize_seed(np.int64(3)) == 3
    assert type(seeding.standardize_seed(np.int64(3))) is int
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        seeding.standardize_seed(bad)


def test_reseeded_reseeds_only_random_initializers():
    glorot = keras.initializers.GlorotUniform(seed=1)
    assert seeding.is_random_initializer(glorot)
    assert seeding.reseeded(glorot, 9).get_config()["seed"] == 9
    assert seeding.reseeded(glorot, None) is glorot
    zeros = keras.initializers.Zeros()
    assert not seeding.is_random_initializer(zeros)
    assert seeding.reseeded(zeros, 9) is zeros


def test_model_layers_get_layer_seeds_in_order():
    """models' seeds are layer_seed(seed, 1), layer_seed(seed, 2)...: the
    numbers of the earlier `seed * 1000 + i`, so results stay
    reproducible."""
    model = keras_fa.models.mlp((4,), 3, hidden=(5, 6), seed=3)
    dense = [layer for layer in model.layers if hasattr(layer, "kernel")]
    assert [layer.seed for layer in dense] == [3001, 3002, 3003]
    assert [
        layer.kernel_initializer.get_config()["seed"] for layer in dense
    ] == [3001, 3002, 3003]


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_models_built_twice_with_one_seed_are_equal(rule):
    def build(seed):
        return keras_fa.models.transformer(
            (8, 8, 1), 3, feedback=rule, seed=seed, patch_size=4, num_layers=1
        )

    first, again, other = build(5), build(5), build(6)
    for a, b in zip(_numpy(first.weights), _numpy(again.weights)):
        np.testing.assert_array_equal(a, b)
    differ = [
        not np.array_equal(a, b)
        for a, b in zip(_numpy(first.weights), _numpy(other.weights))
        if a.size > 1 and np.std(a) > 0
    ]
    assert differ and all(differ)


def test_attention_projections_and_separable_halves_use_layer_seed():
    attention = keras_fa.FAMultiHeadAttention(2, 3, seed=4)
    attention.build((2, 5, 6), (2, 5, 6))
    projections = [
        attention.query_dense,
        attention.key_dense,
        attention.value_dense,
        attention.output_dense,
    ]
    assert [p.seed for p in projections] == [
        seeding.layer_seed(4, i) for i in range(4)
    ]
    separable = keras_fa.FASeparableConv1D(2, 3, seed=4)
    halves = [separable.depthwise_feedback, separable.pointwise_feedback]
    assert [h.seed for h in halves] == [4000, 4001]
    # The feedback kernels of the halves are drawn apart.
    separable.build((2, 8, 3))
    depthwise, pointwise = _numpy([h.feedback_kernel for h in halves])
    assert not np.array_equal(depthwise.ravel()[:3], pointwise.ravel()[:3])
