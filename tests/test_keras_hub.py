"""keras_fa on models nobody here wrote: KerasHub's GPT-2, BERT and ViT.

Small models built from a config with random weights (no preset, no
network). `keras_fa.convert(..., strict=True)` must put every kernel on the
rule, keep the forward pass exact, save and load exactly, and the converted
GPT-2 must learn a character-level language model; `direct_feedback` with a
tap per transformer block must train it too.
"""

import os
import sys

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa import datasets
from keras_fa.summary import NO_INPUT_GRADIENT

keras_hub = pytest.importorskip("keras_hub")

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
)
import keras_hub_lm  # noqa: E402

STEPS = 60  # the example trains 300; here the fall must show in 60.


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def tokens(n=4, length=keras_hub_lm.SEQUENCE_LENGTH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, datasets.STDLIB_TEXT_VOCABULARY, (n, length))


def bert():
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
        dropout=0.0,
    )


def bert_inputs():
    ids = tokens(3, 16) % 50
    return {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": np.ones_like(ids),
    }


def assert_all_on(model, rule):
    rows = keras_fa.feedback_summary(model, print_fn=None)
    assert len(rows) >= 10
    for row in rows:
        assert row.rule == rule or row.note == NO_INPUT_GRADIENT, row
    return rows


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_convert_strict_puts_every_kernel_on_the_rule(name):
    if name == "gpt2":
        model, x = keras_hub_lm.gpt2_lm(), keras_hub_lm.lm_inputs(tokens())
    else:
        model, x = bert(), bert_inputs()
    expected = model(x)
    converted = keras_fa.convert(model, "fa", seed=0, strict=True)
    rows = assert_all_on(converted, "fa")
    # The attention projections and MLPs inside KerasHub's own layers.
    inner = [row for row in rows if "transformer_layer_0/" in row.path]
    assert {row.layer for row in inner} == {"FAEinsumDense", "FADense"}
    assert len(inner) == 6
    # The forward pass is KerasHub's, exactly (BERT: sequence and pooled).
    for new, old in zip(
        keras.tree.flatten(converted(x)), keras.tree.flatten(expected)
    ):
        np.testing.assert_allclose(numpy(new), numpy(old), rtol=0, atol=1e-6)
    # The original is untouched.
    assert all(
        row.rule == "bp"
        for row in keras_fa.feedback_summary(model, print_fn=None)
    )


def test_vit_is_refused_with_the_layer_keras_hub_cannot_copy():
    # KerasHub 0.32's ViTPatchingAndEmbedding.get_config gives arguments
    # its __init__ refuses, so keras.models.clone_model fails on ViT too.
    keras.utils.set_random_seed(0)
    vit = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3),
        patch_size=(4, 4),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    with pytest.raises((TypeError, ValueError), match="num_patches"):
        keras.models.clone_model(vit)
    with pytest.raises(
        ValueError,
        match="cannot copy the layer 'vit_patching_and_embedding'",
    ):
        keras_fa.convert(vit, "fa")


def test_strict_names_what_stays_on_backprop_inside_a_keras_hub_layer():
    # A KerasHub decoder, then a custom layer with a Dense inside and a
    # kernel of its own: convert replaces every Keras layer inside both and
    # names the one kernel it cannot put on the rule.
    class MatMul(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(8, name="inner")

        def build(self, shape):
            self.inner.build(shape)
            self.kernel = self.add_weight(
                shape=(shape[-1], shape[-1]), name="kernel"
            )

        def call(self, x):
            return keras.ops.matmul(self.inner(x), self.kernel)

    decoder = keras_hub.layers.TransformerDecoder(8, 2, name="decoder")
    inputs = keras.Input((4, 8))
    x = MatMul(name="mine")(decoder(inputs))
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError) as info:
        keras_fa.convert(model, strict=True)
    message = str(info.value)
    assert "mine (MatMul): keras_fa has no version of MatMul: convert puts" in (
        message
    )
    assert "Kernels: mine/kernel." in message
    assert "decoder" not in message
    with pytest.warns(UserWarning, match="mine"):
        converted = keras_fa.convert(model, "fa")
    rules = {
        row.path: row.rule
        for row in keras_fa.feedback_summary(converted, print_fn=None)
    }
    assert rules["mine/kernel"] == "bp"
    assert rules["mine/inner/kernel"] == "fa"
    assert rules["decoder/self_attention/query/kernel"] == "fa"
    assert rules["decoder/feedforward_output_dense/kernel"] == "fa"


def test_converted_gpt2_saves_and_loads_exactly(tmp_path):
    lm = keras_hub_lm.gpt2_lm()
    model = keras_fa.convert(lm, "fa", seed=1, feedback_initializer="kernel")
    keras_hub_lm.compile_lm(model)
    (x, y), _ = datasets.load_stdlib_text(keras_hub_lm.SEQUENCE_LENGTH)
    keras_hub_lm.train(model, x, y, steps=2)
    path = str(tmp_path / "gpt2_fa.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    inputs = keras_hub_lm.lm_inputs(x[:4])
    np.testing.assert_array_equal(numpy(loaded(inputs)), numpy(model(inputs)))
    # The converted KerasHub blocks come back as themselves, and the tied
    # embedding stays one layer (in the input and in the head).
    assert type(loaded.get_layer("transformer_layer_0")) is type(
        model.get_layer("transformer_layer_0")
    )
    assert isinstance(
        loaded.get_layer("transformer_layer_0"),
        keras_hub.layers.TransformerDecoder,
    )
    embeddings = [
        layer
        for layer in loaded._flatten_layers()
        if isinstance(layer, keras_fa.FAReversibleEmbedding)
    ]
    assert len(embeddings) == 1
    old = keras_fa.layers.feedback_variables(model)
    new = keras_fa.layers.feedback_variables(loaded)
    assert len(old) == len(new) == 13
    for a, b in zip(old, new):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    assert_all_on(loaded, "fa")
    # Training goes on identically.
    keras_hub_lm.train(model, x, y, steps=1, seed=5)
    keras_hub_lm.train(loaded, x, y, steps=1, seed=5)
    for a, b in zip(model.trainable_weights, loaded.trainable_weights):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=0, atol=1e-6)


def train_lm(rule):
    (x, y), _ = datasets.load_stdlib_text(keras_hub_lm.SEQUENCE_LENGTH)
    lm = keras_hub_lm.gpt2_lm()
    model = keras_hub_lm.feedback_lm(lm, rule, seed=0)
    keras_hub_lm.compile_lm(model)
    losses = keras_hub_lm.train(model, x, y, STEPS)
    return model, lm, losses, (x, y)


def test_fa_gpt2_learns_and_its_alignment_is_measured():
    model, lm, losses, (x, y) = train_lm("fa")
    assert_all_on(model, "fa")
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first - 0.3, (first, last)
    measures = keras_fa.alignment.measure(
        model, keras_hub_lm.lm_inputs(x[:16]), y[:16]
    )
    angles = []
    for block in keras_hub_lm.block_names(lm):
        for kernel in (
            "self_attention/query",
            "self_attention/key",
            "self_attention/value",
            "self_attention/attention_output",
            "feedforward_intermediate_dense",
            "feedforward_output_dense",
        ):
            angle = measures[f"{block}/{kernel}/update_angle"]
            # Not backprop (0): the rule is at work in every kernel.
            assert 1.0 < angle < 179.0, (block, kernel, angle)
            assert np.isfinite(measures[f"{block}/{kernel}/weight_angle"])
            angles.append(angle)
    # Most kernels aligned (unrelated updates would sit at 90 degrees);
    # after 60 steps single kernels may still point away, by how their B
    # fell: the mean over 12 kernels swings by 20 degrees from seed to seed.
    assert np.median(angles) < 90.0, angles


def test_dfa_gpt2_with_a_tap_per_block_learns():
    model, lm, losses, _ = train_lm("dfa")
    rows = keras_fa.feedback_summary(model, print_fn=None)
    rules = {}
    for row in rows:
        rules.setdefault(row.path.split("/")[0], set()).add(row.rule)
    # Every kernel of every block learns from its tap's direct signal.
    for block in keras_hub_lm.block_names(lm):
        assert rules[block] == {"dfa"}, rules
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first - 0.3, (first, last)


def test_example_command_line(capsys):
    rows = keras_hub_lm.main(["--rules", "bp", "--steps", "10"])
    assert [row["rule"] for row in rows] == ["bp"]
    assert rows[0]["update_angle"] < 1e-3  # backprop against itself
    assert 1.0 < rows[0]["perplexity"] < datasets.STDLIB_TEXT_VOCABULARY * 2
    assert "| bp |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        keras_hub_lm.main(["--rules", "fa,nope"])
    assert "unknown nope" in capsys.readouterr().err
