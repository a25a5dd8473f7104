"""keras_fa.cloning: the graph of a model (its calls, the call that made a
tensor, the layers inside a layer), graph models inlined and replayed, and
copies of layers and operations."""

import keras
import numpy as np
import pytest

from keras_fa import cloning

X = np.random.default_rng(0).random((5, 4)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _sequential():
    return keras.Sequential(
        [
            keras.Input((4,), name="x"),
            keras.layers.Dense(3, name="d1"),
            keras.layers.Dense(2, name="d2"),
        ],
        name="seq",
    )


def _branch():
    """x -> a, x -> b; add(a, b) -> out."""
    inputs = keras.Input((4,), name="x")
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(inputs)
    added = keras.layers.Add(name="add")([a, b])
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(added))


def _inner(units=2, name="inner"):
    inputs = keras.Input((3,), name=f"{name}_x")
    hidden = keras.layers.Dense(units, name=f"{name}_d")(inputs)
    return keras.Model(inputs, hidden, name=name)


def _nested_once():
    """x -> pre -> inner (inner_d) -> post."""
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="pre")(inputs)
    hidden = _inner()(hidden)
    return keras.Model(inputs, keras.layers.Dense(2, name="post")(hidden))


def _nested_twice():
    """x -> pre -> inner -> inner -> post: one model called twice."""
    inner = _inner(units=3)
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="pre")(inputs)
    hidden = inner(inner(hidden))
    return keras.Model(inputs, keras.layers.Dense(2, name="post")(hidden))


def _nested_sequential():
    """x -> a Sequential block (b1, b2) -> post."""
    block = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="b1"),
            keras.layers.Dense(3, name="b2"),
        ],
        name="block",
    )
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(2, name="post")(block(inputs))
    return keras.Model(inputs, outputs)


class _Subclassed(keras.Model):
    """Sub-layers in an attribute, a list and a dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(3, name="first")
        self.blocks = [
            keras.layers.Dense(3, name="block0"),
            keras.layers.Dense(3, name="block1"),
        ]
        self.heads = {"head": keras.layers.Dense(2, name="head")}

    def call(self, x):
        x = self.first(x)
        for block in self.blocks:
            x = block(x)
        return self.heads["head"](x)


def _subclassed():
    model = _Subclassed()
    model(X)
    return model


GRAPH_MODELS = {
    "sequential": _sequential,
    "branch": _branch,
    "nested_once": _nested_once,
    "nested_twice": _nested_twice,
    "nested_sequential": _nested_sequential,
}


def _same(first, second):
    """Whether two lists hold the same objects, in the same order."""
    return len(first) == len(second) and all(
        a is b for a, b in zip(first, second)
    )


def _identity_replay(model):
    """A functional model of `model`'s own layers, replayed inlined."""
    inputs = cloning.fresh_inputs(model)
    outputs = cloning.InlinedGraph(model).replay(
        inputs, lambda node, args, kwargs: node.operation(*args, **kwargs)
    )
    return keras.Model(inputs, outputs)


def _kernels(model, *names):
    return [
        [_numpy(w) for w in model.get_layer(name).weights] for name in names
    ]


# -- is_graph_model, graph_nodes, node_of -------------------------------------


def test_graph_models_are_sequential_and_functional_ones():
    assert cloning.is_graph_model(_sequential())
    assert cloning.is_graph_model(_branch())
    assert cloning.is_graph_model(_inner())
    assert not cloning.is_graph_model(_subclassed())
    assert not cloning.is_graph_model(keras.layers.Dense(2))
    assert not cloning.is_graph_model("a model")


def test_graph_nodes_of_a_sequential_model_are_its_layers_calls():
    model = _sequential()
    nodes = list(cloning.graph_nodes(model))
    assert _same(
        [n.operation for n in nodes], [model.layers[0], model.layers[1]]
    )
    assert [n.operation.name for n in nodes] == ["d1", "d2"]


def test_graph_nodes_run_each_call_after_the_calls_it_reads():
    model = _branch()
    nodes = list(cloning.graph_nodes(model))
    names = [n.operation.name for n in nodes]
    # The input is not a call; a and b may come in either order.
    assert sorted(names) == ["a", "add", "b", "out"]
    assert names.index("add") > max(names.index("a"), names.index("b"))
    assert names.index("out") == 3
    made = {id(model.inputs[0])}
    for node in nodes:
        assert all(id(t) in made for t in node.input_tensors), node
        made.update(id(t) for t in node.outputs)


def test_graph_nodes_list_a_shared_layer_once_per_call():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    model = keras.Model(inputs, shared(shared(inputs)))
    nodes = list(cloning.graph_nodes(model))
    assert len(nodes) == 2
    assert all(n.operation is shared for n in nodes)
    assert nodes[1].input_tensors[0] is nodes[0].outputs[0]


def test_node_of_is_the_call_that_made_a_tensor():
    inputs = keras.Input((3,), name="x")
    shared = keras.layers.Dense(3, name="shared")
    first = shared(inputs)
    second = shared(first)
    node = cloning.node_of(second)
    assert node.operation is shared
    assert node.outputs[0] is second
    assert node.input_tensors[0] is first
    assert cloning.node_of(first).outputs[0] is first
    # An Input is made by its InputLayer's node.
    input_node = cloning.node_of(inputs)
    assert input_node.is_input
    assert isinstance(input_node.operation, keras.layers.InputLayer)
    assert input_node.operation.name == "x"


def test_node_of_a_tensor_no_call_made_is_none():
    assert cloning.node_of(np.zeros(3)) is None
    assert cloning.node_of(keras.KerasTensor((2, 3))) is None


# -- sublayers, all_layers, created_trainable, replace_sublayer ---------------


def test_sublayers_of_a_sequential_model_start_with_its_input_layer():
    model = _sequential()
    layers = cloning.sublayers(model)
    assert [layer.name for layer in layers] == ["x", "d1", "d2"]
    assert isinstance(layers[0], keras.layers.InputLayer)
    assert _same(layers[1:], model.layers)


def test_sublayers_of_a_subclassed_model_in_the_order_it_made_them():
    model = _subclassed()
    expected = [model.first, *model.blocks, model.heads["head"]]
    assert _same(cloning.sublayers(model), expected)
    # Only the layers a layer holds directly.
    assert cloning.sublayers(model.first) == []


def test_all_layers_lists_nested_layers_once():
    model = _nested_twice()
    inner = model.get_layer("inner")
    expected = {
        id(layer)
        for layer in (
            model,
            model.get_layer("x"),
            model.get_layer("pre"),
            inner,
            inner.get_layer("inner_x"),
            inner.get_layer("inner_d"),
            model.get_layer("post"),
        )
    }
    layers = cloning.all_layers(model)
    assert len(layers) == len(expected)
    assert {id(layer) for layer in layers} == expected
    assert layers[0] is model
    below = cloning.all_layers(model, include_self=False)
    assert {id(layer) for layer in below} == expected - {id(model)}


def test_all_layers_of_a_subclassed_model():
    model = _subclassed()
    expected = [model, model.first, *model.blocks, model.heads["head"]]
    assert _same(cloning.all_layers(model), expected)
    assert _same(cloning.all_layers(model.first), [model.first])
    assert cloning.all_layers(model.first, include_self=False) == []


def test_created_trainable_outlives_freezing():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    dense.trainable = False
    assert dense.trainable_variables == []
    assert _same(cloning.created_trainable(dense), [dense.kernel, dense.bias])


def test_created_trainable_leaves_out_non_trainable_and_sublayers():
    norm = keras.layers.BatchNormalization()
    norm.build((None, 3))
    assert _same(cloning.created_trainable(norm), [norm.gamma, norm.beta])
    # The model made no variable itself: its layers did.
    model = _subclassed()
    assert cloning.created_trainable(model) == []
    assert len(model.trainable_variables) == 8


@pytest.mark.parametrize("where", ["attribute", "list", "dict"])
def test_replace_sublayer_swaps_every_reference(where):
    model = _subclassed()
    old = {
        "attribute": model.first,
        "list": model.blocks[1],
        "dict": model.heads["head"],
    }[where]
    new = keras.layers.Dense(old.units, name="new")
    expected = [model.first, *model.blocks, model.heads["head"]]
    expected = [new if layer is old else layer for layer in expected]
    cloning.replace_sublayer(model, old, new)
    assert _same([model.first, *model.blocks, model.heads["head"]], expected)
    assert _same(cloning.sublayers(model), expected)
    # The model's call goes through the new layer: it builds it, and its
    # variables are the model's.
    model(X)
    assert new.built
    assert {id(v) for v in model.trainable_variables} == {
        id(v) for layer in expected for v in layer.trainable_variables
    }
    assert not any(v is w for v in model.weights for w in old.weights)


def test_replace_sublayer_refuses_a_layer_it_does_not_hold():
    model = _subclassed()
    before = [model.first, *model.blocks, model.heads["head"]]
    stranger = keras.layers.Dense(3)
    with pytest.raises(ValueError, match="Unknown value"):
        cloning.replace_sublayer(model, stranger, keras.layers.Dense(3))
    assert _same([model.first, *model.blocks, model.heads["head"]], before)
    assert _same(cloning.sublayers(model), before)


# -- input_structure, fresh_inputs --------------------------------------------


def test_input_structure_of_a_sequential_model_is_its_one_input():
    model = _sequential()
    assert cloning.input_structure(model) is model.inputs[0]


def test_fresh_inputs_are_new_inputs_like_the_models():
    model = _sequential()
    fresh = cloning.fresh_inputs(model)
    assert isinstance(fresh, keras.KerasTensor)
    assert fresh is not model.inputs[0]
    assert tuple(fresh.shape) == (None, 4)
    assert fresh.dtype == "float32"
    assert cloning.node_of(fresh).operation.name == "x"


def test_fresh_inputs_keep_a_dict_of_inputs_names_shapes_and_dtypes():
    tokens = keras.Input((5,), dtype="int32", name="tokens")
    scale = keras.Input(batch_shape=(2, 1), name="scale")
    embedded = keras.layers.Embedding(10, 3)(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(embedded)
    model = keras.Model(
        {"tokens": tokens, "scale": scale},
        keras.layers.Multiply()([pooled, scale]),
    )
    assert cloning.input_structure(model) == {"tokens": tokens, "scale": scale}
    fresh = cloning.fresh_inputs(model)
    assert sorted(fresh) == ["scale", "tokens"]
    assert fresh["tokens"] is not tokens
    assert tuple(fresh["tokens"].shape) == (None, 5)
    assert fresh["tokens"].dtype == "int32"
    assert tuple(fresh["scale"].shape) == (2, 1)
    assert fresh["scale"].dtype == "float32"
    for name, tensor in fresh.items():
        assert cloning.node_of(tensor).operation.name == name


# -- InlinedGraph -------------------------------------------------------------


def test_inlined_graph_of_a_flat_model_is_its_graph():
    model = _branch()
    graph = cloning.InlinedGraph(model)
    nodes = list(cloning.graph_nodes(model))
    assert _same([n for n, _ in graph.nodes], nodes)
    assert all(path == () for _, path in graph.nodes)
    assert all(graph.counts[id(n.operation)] == 1 for n in nodes)
    for node in nodes:
        assert graph.resolve(node.outputs[0]) is node.outputs[0]
        assert graph.producer[id(node.outputs[0])] is node
        assert graph.output(node.operation) is node.outputs[0]
        assert graph.path(node.operation) == node.operation.name


def test_inlined_graph_inlines_a_model_called_once():
    model = _nested_once()
    inner = model.get_layer("inner")
    pre, post = model.get_layer("pre"), model.get_layer("post")
    inner_d = inner.get_layer("inner_d")
    graph = cloning.InlinedGraph(model)
    assert _same([n.operation for n, _ in graph.nodes], [pre, inner_d, post])
    assert [path for _, path in graph.nodes] == [(), ("inner",), ()]
    # The inner model's input stands for pre's output, and the outer
    # tensor inner made stands for inner_d's output.
    assert graph.resolve(inner.inputs[0]) is pre.output
    outer = cloning.node_of(post.output).input_tensors[0]
    assert outer is not inner.outputs[0]
    assert graph.resolve(outer) is inner.outputs[0]
    assert graph.output(inner) is inner.outputs[0]
    assert graph.output(inner_d) is inner.outputs[0]
    assert graph.path(inner_d) == "inner/inner_d"
    assert graph.path(inner) == "inner"
    assert graph.path(pre) == "pre"
    assert _same(graph.named("inner_d"), [inner_d])
    assert _same(graph.named("inner/inner_d"), [inner_d])
    assert _same(graph.named("inner"), [inner])
    assert graph.named("nope") == []
    assert graph.counts[id(inner)] == graph.counts[id(inner_d)] == 1


def test_inlined_graph_ancestors_cross_the_inlined_model():
    model = _nested_once()
    inner = model.get_layer("inner")
    pre, post = model.get_layer("pre"), model.get_layer("post")
    graph = cloning.InlinedGraph(model)
    expected = {
        id(model.inputs[0]),
        id(pre.output),
        id(inner.outputs[0]),
        id(post.output),
    }
    assert graph.ancestors(model.outputs[0]) == expected
    assert graph.ancestors(pre.output) == {id(model.inputs[0]), id(pre.output)}
    # A tensor of the outer graph stands for the inner one.
    outer = cloning.node_of(post.output).input_tensors[0]
    assert graph.ancestors(outer) == expected - {id(post.output)}


def test_inlined_graph_keeps_a_model_called_twice_as_calls():
    model = _nested_twice()
    inner = model.get_layer("inner")
    inner_d = inner.get_layer("inner_d")
    graph = cloning.InlinedGraph(model)
    assert [n.operation.name for n, _ in graph.nodes] == [
        "pre",
        "inner",
        "inner",
        "post",
    ]
    assert all(path == () for _, path in graph.nodes)
    assert graph.counts[id(inner)] == 2
    assert graph.counts[id(inner_d)] == 2
    assert len(graph.outputs_of[id(inner)]) == 2
    assert id(inner_d) not in graph.operations
    first, second = (n for n, _ in graph.nodes[1:3])
    assert graph.resolve(first.outputs[0]) is first.outputs[0]
    assert second.input_tensors[0] is first.outputs[0]


def test_inlined_graph_inlines_at_any_depth():
    middle_in = keras.Input((3,), name="middle_x")
    deepest = _inner(name="deep")
    middle = keras.Model(
        middle_in, keras.layers.Dense(2, name="mid_d")(deepest(middle_in))
    )
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="pre")(inputs)
    model = keras.Model(inputs, middle(hidden))
    graph = cloning.InlinedGraph(model)
    middle_path = (middle.name,)
    assert [(n.operation.name, path) for n, path in graph.nodes] == [
        ("pre", ()),
        ("deep_d", (*middle_path, "deep")),
        ("mid_d", middle_path),
    ]
    deep_d = deepest.get_layer("deep_d")
    assert graph.path(deep_d) == f"{middle.name}/deep/deep_d"
    # The outer model's output stands for the one mid_d made in middle.
    assert graph.resolve(model.outputs[0]) is middle.outputs[0]
    # The deepest input stands for pre's output, through middle's input.
    assert graph.resolve(deepest.inputs[0]) is model.get_layer("pre").output
    replayed = _identity_replay(model)
    np.testing.assert_allclose(
        _numpy(replayed(X)), _numpy(model(X)), rtol=1e-6, atol=1e-6
    )


def test_inlined_graph_inlines_a_sequential_block():
    model = _nested_sequential()
    block = model.get_layer("block")
    graph = cloning.InlinedGraph(model)
    assert [n.operation.name for n, _ in graph.nodes] == ["b1", "b2", "post"]
    assert [path for _, path in graph.nodes] == [("block",), ("block",), ()]
    assert graph.resolve(block.inputs[0]) is model.inputs[0]
    assert graph.path(block.get_layer("b2")) == "block/b2"


def test_inlined_graph_keeps_a_model_called_with_keywords():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dropout(0.5, name="drop")],
        name="inner",
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, inner(inputs, training=False))
    graph = cloning.InlinedGraph(model)
    assert _same([n.operation for n, _ in graph.nodes], [inner])


@pytest.mark.parametrize("build", GRAPH_MODELS.values(), ids=GRAPH_MODELS)
def test_replay_reproduces_the_models_outputs(build):
    model = build()
    replayed = _identity_replay(model)
    np.testing.assert_allclose(
        _numpy(replayed(X)), _numpy(model(X)), rtol=1e-6, atol=1e-6
    )


def test_replay_of_a_nested_model_holds_its_layers_not_the_model():
    model = _nested_once()
    replayed = _identity_replay(model)
    names = [layer.name for layer in replayed.layers]
    assert names == ["x", "pre", "inner_d", "post"]
    inner_d = model.get_layer("inner").get_layer("inner_d")
    assert replayed.get_layer("inner_d") is inner_d


def test_replay_keeps_the_output_structure():
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    model = keras.Model(
        inputs,
        {"p": keras.layers.Dense(2, name="p")(hidden), "q": hidden},
    )
    replayed = _identity_replay(model)
    got, want = replayed(X), model(X)
    assert sorted(got) == ["p", "q"]
    for key in ("p", "q"):
        np.testing.assert_allclose(_numpy(got[key]), _numpy(want[key]))


def test_replay_on_output_stands_in_downstream():
    model = _nested_once()
    pre = model.get_layer("pre")
    seen = []

    def doubled(old, new):
        seen.append(old)
        return new * 2.0 if old is pre.output else new

    inputs = cloning.fresh_inputs(model)
    outputs = cloning.InlinedGraph(model).replay(
        inputs,
        lambda node, args, kwargs: node.operation(*args, **kwargs),
        on_output=doubled,
    )
    replayed = keras.Model(inputs, outputs)
    (w1, b1), (w2, b2), (w3, b3) = _kernels(model, "pre", "inner", "post")
    expected = ((2 * (X @ w1 + b1)) @ w2 + b2) @ w3 + b3
    np.testing.assert_allclose(
        _numpy(replayed(X)), expected, rtol=1e-5, atol=1e-5
    )
    inner = model.get_layer("inner")
    assert _same(seen, [pre.output, inner.outputs[0], model.outputs[0]])


def test_replay_through_copies_reproduces_the_model():
    model = _nested_once()
    copies = {}

    def call(node, args, kwargs):
        copy = cloning.copy_operation(node.operation, "test")
        copies[node.operation.name] = copy
        outputs = copy(*args, **kwargs)
        copy.set_weights(node.operation.get_weights())
        return outputs

    inputs = cloning.fresh_inputs(model)
    outputs = cloning.InlinedGraph(model).replay(inputs, call)
    replayed = keras.Model(inputs, outputs)
    assert sorted(copies) == ["inner_d", "post", "pre"]
    assert not any(
        layer is model.get_layer(name)
        for name, layer in copies.items()
        if name != "inner_d"
    )
    np.testing.assert_allclose(
        _numpy(replayed(X)), _numpy(model(X)), rtol=1e-6, atol=1e-6
    )


# -- copy_operation, from_config ----------------------------------------------


def test_copy_operation_makes_an_unbuilt_layer_of_the_same_config():
    dense = keras.layers.Dense(3, activation="relu", use_bias=False, name="d")
    dense.build((None, 4))
    copy = cloning.copy_operation(dense, "test")
    assert copy is not dense
    assert type(copy) is keras.layers.Dense
    assert not copy.built
    assert copy.get_config() == dense.get_config()
    renamed = cloning.copy_operation(dense, "test", name="e")
    assert renamed.name == "e"
    assert {**renamed.get_config(), "name": "d"} == dense.get_config()


def test_copy_operation_copies_an_operation_of_a_graph():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.ops.concatenate([inputs + 1.0, inputs]))
    operations = [n.operation for n in cloning.graph_nodes(model)]
    assert not any(isinstance(op, keras.layers.Layer) for op in operations)
    for op in operations:
        copy = cloning.copy_operation(op, "test")
        assert type(copy) is type(op) and copy is not op
        assert copy.get_config() == op.get_config()


class _Scale(keras.Operation):
    """An operation with an argument Keras cannot put in a config."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def call(self, x):
        return x * self.factor.value

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, x.dtype)


class _Factor:
    value = 3.0


def test_copy_operation_reuses_an_operation_without_config():
    scale = _Scale(_Factor())
    with pytest.raises(NotImplementedError):
        scale.get_config()
    assert cloning.copy_operation(scale, "test") is scale


def test_copy_operation_of_a_lambda_takes_its_function():
    def triple(x):
        return x * 3.0

    layer = keras.layers.Lambda(triple, name="triple")
    copy = cloning.copy_operation(layer, "test")
    assert type(copy) is keras.layers.Lambda and copy is not layer
    assert copy.function is triple
    assert copy.name == "triple"
    assert cloning.copy_operation(layer, "test", name="t").name == "t"
    np.testing.assert_allclose(_numpy(copy(X)), X * 3.0)


class _Holder(keras.layers.Layer):
    """A layer Keras cannot make a config of (no get_config)."""

    def __init__(self, thing, **kwargs):
        super().__init__(**kwargs)
        self.thing = thing

    def call(self, x):
        return x


class _HolderModel(keras.Model):
    def __init__(self, thing, **kwargs):
        super().__init__(**kwargs)
        self.thing = thing

    def call(self, x):
        return x


@pytest.mark.parametrize(
    "layer, kind",
    [
        (lambda: _Holder(_Factor(), name="holder"), "layer"),
        (lambda: _HolderModel(_Factor(), name="holder"), "model"),
    ],
)
def test_copy_operation_without_config_names_the_layer(layer, kind):
    with pytest.raises(ValueError) as error:
        cloning.copy_operation(layer(), "keras_fa.convert")
    message = str(error.value)
    assert f"keras_fa.convert cannot copy the {kind} 'holder'" in message
    assert "get_config" in message
    assert isinstance(error.value.__cause__, NotImplementedError)


def test_from_config_returns_what_make_makes():
    made = keras.layers.Dense(2)
    assert cloning.from_config(made, lambda: made, "test") is made


@pytest.mark.parametrize("error", [TypeError, ValueError])
def test_from_config_names_a_layer_whose_config_does_not_fit(error):
    layer = keras.layers.Dense(2, name="odd")

    def make():
        raise error("unexpected keyword 'x'")

    with pytest.raises(ValueError) as raised:
        cloning.from_config(layer, make, "keras_fa.direct_feedback")
    message = str(raised.value)
    assert "keras_fa.direct_feedback cannot copy the layer 'odd'" in message
    assert "(Dense)" in message
    assert "unexpected keyword 'x'" in message
    assert isinstance(raised.value.__cause__, error)
