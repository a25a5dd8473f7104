"""Tests of keras_fa/alignment/discovery.py: the kernels a meter finds in a
model (in layers, their sub-layers and nested models), their names, the
variables that train them, and where their error signals are read."""

import keras
import numpy as np

import keras_fa
from keras_fa import alignment
from keras_fa import tracing
from keras_fa.alignment import discovery
from tests._alignment_models import ANGLES
from tests._alignment_models import KERNELS
from tests._alignment_models import PROJECTIONS
from tests._alignment_models import direct_model
from tests._alignment_models import image_data
from tests._alignment_models import kernel_units
from tests._alignment_models import layers_model
from tests._alignment_models import mlp


def test_every_kernel_is_measured_under_its_own_name():
    model = layers_model("bp")
    x, y = image_data()
    meter = alignment.Alignment(model)
    assert meter.layer_names == list(kernel_units(model)) == KERNELS
    got = meter.measure(x, y)
    assert {key.rsplit("/", 1)[0] for key in got} == set(KERNELS)
    for name in KERNELS:
        # bp: every kernel's B, error signal and update are backprop's.
        for measure in ANGLES:
            assert got[f"{name}/{measure}"] < 0.05, (name, measure)
        assert got[f"{name}/norm_ratio"] == 1.0


def test_every_kernel_has_unique_names_in_plain_keras_models():
    # Plain Keras layers are measured too (bp); nested layers of the same
    # name, in two attention layers or two nested models, get their path.
    def block(name):
        return keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(4, name="hidden")],
            name=name,
        )

    inputs = keras.Input((3, 4))
    h = keras.layers.MultiHeadAttention(2, 2, name="first")(inputs, inputs)
    h = keras.layers.MultiHeadAttention(2, 2, name="second")(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = block("block_a")(h)
    outputs = block("block_b")(h)
    model = keras.Model(inputs, outputs)
    names = alignment.Alignment(model).layer_names
    assert names == [
        *(f"first/{p}" for p in PROJECTIONS),
        *(f"second/{p}" for p in PROJECTIONS),
        "block_a/hidden",
        "block_b/hidden",
    ]


def _units(model):
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return discovery.kernel_units(model, index)


def test_direct_feedback_signals_are_read_at_the_taps():
    # dfa taps each hidden activation: the kernel below it reads its
    # signal there, and the BlockGradient on the tap reads the same one.
    model = direct_model("dfa")
    units = _units(model)
    keys = {id(layer): key for key, layer, _ in units}
    signals, aliases = discovery.find_signals(model, units, keys, [])
    dense = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
    ]
    head = model.layers[-1]
    assert isinstance(head, keras_fa.DirectFeedback)
    assert signals == {
        dense[0].name: tracing.probe_key(head, 0),
        dense[1].name: tracing.probe_key(head, 1),
    }
    blocks = [
        layer
        for layer in model.layers
        if isinstance(layer, keras_fa.BlockGradient)
    ]
    assert aliases == {
        tracing.probe_key(blocks[0]): tracing.probe_key(head, 0),
        tracing.probe_key(blocks[1]): tracing.probe_key(head, 1),
    }


def test_a_layers_own_probe_reads_its_signal():
    model = mlp("fa")
    units = _units(model)
    keys = {id(layer): key for key, layer, _ in units}
    signals, aliases = discovery.find_signals(model, units, keys, model.layers)
    assert signals == {
        layer.name: tracing.probe_key(layer) for layer in model.layers
    }
    assert aliases == {}


def test_the_variables_that_train_a_kernel():
    model = mlp("fa")
    first = model.layers[0]
    assert discovery.trained_by(first) == [first.kernel]
    assert discovery.trained_by(keras.layers.Dropout(0.1)) is None
    first.enable_lora(2)
    assert discovery.is_lora(first)
    assert discovery.trained_by(first) == [
        first.lora_kernel_a,
        first.lora_kernel_b,
    ]
    # An Embedding with LoRA has no kernel to measure.
    embedding = keras.layers.Embedding(5, 3)
    embedding.build((None,))
    embedding.enable_lora(2)
    assert not discovery.is_lora(embedding)
    assert discovery.trained_by(embedding) is None


def test_the_graph_of_a_model():
    model = mlp("fa")
    consumers, producers, outputs = discovery.graph(model)
    # Each layer called once; the last one's output is the model's.
    assert {id(layer) for layer in model.layers} == set(producers)
    last = producers[id(model.layers[-1])][0]
    assert outputs == {id(last.outputs[0])}
    first = producers[id(model.layers[0])][0]
    assert [node.operation for node in consumers[id(first.outputs[0])]] == [
        model.layers[1]
    ]

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras_fa.FADense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.ones((1, 3), "float32"))
    assert discovery.graph(net) is None
