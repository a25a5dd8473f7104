"""keras_fa.feedback_summary: the rule by which each kernel learns."""

import keras
import numpy as np
import pytest

import keras_fa
from keras_fa.summary import FROZEN
from keras_fa.summary import NO_INPUT_GRADIENT
from keras_fa.summary import KernelFeedback


def rows_of(model):
    return [tuple(row) for row in keras_fa.feedback_summary(model, None)]


def mixed_model():
    """An embedding, feedback attention and separable convolution with
    their own rules, normalization, and a plain Dense head."""
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(10, 4, name="emb")(tokens)
    x = keras_fa.FAMultiHeadAttention(2, 3, feedback="usf", name="mha")(x, x)
    x = keras_fa.FASeparableConv1D(4, 3, feedback="kp", name="sep")(x)
    x = keras.layers.LayerNormalization(axis=[-2, -1])(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="out")(x)
    return keras.Model(tokens, outputs)


MIXED_ROWS = [
    ("emb/embeddings", "Embedding", "bp", NO_INPUT_GRADIENT),
    ("mha/query/kernel", "FAEinsumDense", "usf", ""),
    ("mha/key/kernel", "FAEinsumDense", "usf", ""),
    ("mha/value/kernel", "FAEinsumDense", "usf", ""),
    ("mha/attention_output/kernel", "FAEinsumDense", "usf", ""),
    ("sep/depthwise_kernel", "FASeparableConv1D", "kp", ""),
    ("sep/pointwise_kernel", "FASeparableConv1D", "kp", ""),
    ("out/kernel", "Dense", "bp", ""),
]


def test_rows_name_each_kernel_its_layer_and_rule():
    model = mixed_model()
    rows = keras_fa.feedback_summary(model, print_fn=None)
    assert all(isinstance(row, KernelFeedback) for row in rows)
    # The attention biases are 2-D, the LayerNormalization scales too: not
    # kernels. kp's trainable feedback kernels are not forward kernels.
    assert [tuple(row) for row in rows] == MIXED_ROWS
    assert rows[1].path == "mha/query/kernel" and rows[1].rule == "usf"


def test_rule_is_read_from_the_layers_themselves():
    model = mixed_model()
    model.get_layer("mha")._query_dense.feedback = keras_fa.feedback.get("fa")
    rules = [row[2] for row in rows_of(model)]
    assert rules == ["bp", "fa", "usf", "usf", "usf", "kp", "kp", "bp"]


def test_printed_table_is_aligned_and_ends_with_totals():
    lines = []
    rows = keras_fa.feedback_summary(mixed_model(), print_fn=lines.append)
    header, rule, *body, end_rule, total = lines
    assert header.split() == ["Kernel", "Layer", "Rule"]
    assert set(rule) == {"-"} and end_rule == rule
    assert len(body) == len(rows) == 8
    layer_col, rule_col = header.index("Layer"), header.index("Rule")
    for line, row in zip(body, rows):
        assert line.startswith(row.path + " ")
        assert line[layer_col:].startswith(row.layer + " ")
        assert line[rule_col:].startswith(row.rule)
    assert body[0][rule_col:] == f"bp ({NO_INPUT_GRADIENT})"
    assert total == "8 kernels: 1 bp (no input gradient), 4 usf, 2 kp, 1 bp"


def test_prints_with_print_by_default_and_not_with_none(capsys):
    model = mixed_model()
    keras_fa.feedback_summary(model, print_fn=None)
    assert capsys.readouterr().out == ""
    keras_fa.feedback_summary(model)
    out = capsys.readouterr().out
    assert "mha/query/kernel" in out and out.endswith("4 usf, 2 kp, 1 bp\n")


def test_nested_frozen_shared_and_elementwise():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.PReLU()(inputs)  # a 3-D alpha: elementwise
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    frozen = keras.layers.Dense(5, name="frozen")
    frozen.trainable = False
    shared = keras.layers.Dense(5, name="shared")
    inner = keras.Sequential(
        [keras.Input((5,)), keras_fa.FADense(5, name="fa")], name="inner"
    )
    x = inner(shared(shared(frozen(x))))
    x = keras.layers.EinsumDense("ab,bc->ac", (3,), bias_axes="c")(x)
    model = keras.Model(inputs, x)
    assert rows_of(model) == [
        ("frozen/kernel", "Dense", "bp", FROZEN),
        ("shared/kernel", "Dense", "bp", ""),
        ("inner/fa/kernel", "FADense", "fa", ""),
        ("einsum_dense/kernel", "EinsumDense", "bp", ""),
    ]


def test_recurrent_and_subclassed_models():
    class Block(keras.Model):
        def __init__(self):
            super().__init__(name="block")
            self.hidden = keras_fa.FADense(4, feedback="frsf", name="hidden")
            self.top = keras.layers.Dense(3, name="top")

        def call(self, x):
            return self.top(self.hidden(x))

    model = Block()
    model(np.zeros((1, 5), "float32"))
    assert rows_of(model) == [
        ("hidden/kernel", "FADense", "frsf", ""),
        ("top/kernel", "Dense", "bp", ""),
    ]

    inputs = keras.Input((3, 2))
    x = keras.layers.Bidirectional(keras.layers.SimpleRNN(2), name="bi")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(x))
    rows = rows_of(model)
    assert [row[0] for row in rows] == [
        "bi/forward_simple_rnn/simple_rnn_cell/kernel",
        "bi/forward_simple_rnn/simple_rnn_cell/recurrent_kernel",
        "bi/backward_simple_rnn/simple_rnn_cell/kernel",
        "bi/backward_simple_rnn/simple_rnn_cell/recurrent_kernel",
        "out/kernel",
    ]
    assert {row[1:] for row in rows[:4]} == {("SimpleRNNCell", "bp", "")}


def test_reversible_embedding_lookup_and_projection():
    tokens = keras.Input((3,), dtype="int32")
    tied = keras.layers.ReversibleEmbedding(7, 4, name="tied")
    untied = keras_fa.FAReversibleEmbedding(
        7, 4, tie_weights=False, name="untied"
    )
    x = keras.layers.Add()([tied(tokens), untied(tokens)])
    outputs = keras.layers.Add()(
        [tied(x, reverse=True), untied(x, reverse=True)]
    )
    model = keras.Model(tokens, outputs)
    assert rows_of(model) == [
        # The tied table is also the output projection: an input gradient.
        ("tied/embeddings", "ReversibleEmbedding", "bp", ""),
        ("untied/embeddings", "FAReversibleEmbedding", "bp", NO_INPUT_GRADIENT),
        ("untied/reverse_embeddings", "FAReversibleEmbedding", "fa", ""),
    ]


@pytest.mark.parametrize("rule", ["dfa", "shallow"])
def test_direct_feedback_taps_train_by_the_direct_rule(rule):
    mlp = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="relu", name="h1"),
            keras.layers.BatchNormalization(),
            keras_fa.FADense(5, activation="relu", name="h2"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    assert [row[2] for row in rows_of(mlp)] == ["bp", "fa", "bp"]
    model = keras_fa.direct_feedback(mlp, rule)
    assert rows_of(model) == [
        ("h1/kernel", "Dense", rule, ""),
        ("h2/kernel", "FADense", rule, ""),
        # The output layer's error is the loss gradient itself.
        ("out/kernel", "Dense", "bp", ""),
    ]


def test_every_kernel_of_a_tapped_residual_block_trains_by_the_rule():
    # x + f(x) blocks, tapped at their sums: the kernels inside f (attention
    # and MLP) learn from the tap's signal, not only the last one.
    inputs = keras.Input((3, 4))
    x = inputs
    for i in range(2):
        h = keras.layers.MultiHeadAttention(1, 2, name=f"mha{i}")(x, x)
        h = keras.layers.Dense(4, name=f"mlp{i}")(h)
        x = keras.layers.Add(name=f"block{i}")([x, h])
    skip = keras.layers.Dense(4, name="side")(inputs)  # reaches the head
    x = keras.layers.Concatenate()([x, skip])
    outputs = keras.layers.Dense(2, name="out")(x)
    model = keras_fa.direct_feedback(
        keras.Model(inputs, outputs), "dfa", taps=["block0", "block1"]
    )
    rules = {row[0]: row[2] for row in rows_of(model)}
    for i in range(2):
        for kernel in ("query", "key", "value", "attention_output"):
            assert rules[f"mha{i}/{kernel}/kernel"] == "dfa"
        assert rules[f"mlp{i}/kernel"] == "dfa"
    # Below no tap: they get the output error through backprop.
    assert rules["side/kernel"] == rules["out/kernel"] == "bp"


def test_empty_model_has_no_kernels():
    inputs = keras.Input((3,))
    lines = []
    model = keras.Model(inputs, keras.layers.Activation("relu")(inputs))
    assert keras_fa.feedback_summary(model, print_fn=lines.append) == []
    assert lines[-1] == "0 kernels"


@pytest.mark.parametrize(
    "model, print_fn, error, match",
    [
        (keras.layers.Dense(2), None, TypeError, "takes a keras.Model"),
        ("model", None, TypeError, "Received: str"),
        (
            keras.Sequential([keras.layers.Dense(2)]),
            None,
            ValueError,
            r"build it first \(call it on data or start with keras.Input\)",
        ),
        (
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
            "print",
            ValueError,
            "`print_fn` must be a callable",
        ),
    ],
)
def test_rejects_bad_arguments(model, print_fn, error, match):
    with pytest.raises(error, match=match):
        keras_fa.feedback_summary(model, print_fn=print_fn)
