"""Sharded feedback models under `keras.distribution.ModelParallel` (jax).

jax fixes its device count when it is imported, so the checks run in one
subprocess with 4 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`): this file run as a
script,

    KERAS_BACKEND=jax python tests/test_distribution.py OUT.json

builds the models on a (1, 2) mesh (2 devices) and a (2, 2) mesh (4
devices), axes ("batch", "model"), and writes what the tests below assert:
the sharding of every feedback variable next to its forward kernel's, and
the weights after one SGD step of a small `keras_fa.models.transformer`
(fa and dfa), sharded and not.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

MESHES = {"1x2": (1, 2), "2x2": (2, 2)}
BATCH, SEQ, DIM, HIDDEN, CLASSES = 8, 4, 8, 16, 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The checks, run in the subprocess.


def _mesh(name):
    import keras

    shape = MESHES[name]
    devices = keras.distribution.list_devices()[: shape[0] * shape[1]]
    return keras.distribution.DeviceMesh(shape, ("batch", "model"), devices)


def _distribution(mesh, entries):
    import keras

    layout_map = keras.distribution.LayoutMap(mesh)
    for key, axes in entries.items():
        layout_map[key] = axes
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )


def _spec(variable):
    """The PartitionSpec of a variable's value, as a list ("single" when it
    lives on one device: not laid out at all)."""
    sharding = variable.value.sharding
    if not hasattr(sharding, "spec"):
        return "single"
    spec = list(sharding.spec)
    # jax drops trailing unsharded axes from a spec; compare full lengths.
    return spec + [None] * (len(variable.shape) - len(spec))


def _specs(model):
    return {v.path: _spec(v) for v in model.variables}


# Anchored keys: none of them matches a feedback kernel's path.
LAYERS_LAYOUT = {
    "mha/(query|key|value)/kernel": (None, "model", None),
    "mha/attention_output/kernel": ("model", None, None),
    "(fa|frsf|kp|wm)/kernel": (None, "model"),
    "conv/kernel": (None, None, None, "model"),
    "sep/depthwise_kernel": (None, None, "model", None),
    "sep/pointwise_kernel": (None, None, None, "model"),
    "emb/embeddings": (None, "model"),
}


def _layers_model():
    """Every kind of feedback variable: dense layers with each rule that
    keeps a feedback kernel, attention projections, a convolution, the two
    FeedbackKernels of a separable convolution and an embedding's."""
    import keras

    import keras_fa

    tokens = keras.Input((SEQ, DIM))
    x = keras_fa.FAMultiHeadAttention(2, 4, name="mha")(tokens, tokens)
    outputs = [
        keras_fa.FADense(8, feedback=rule, name=rule)(x)
        for rule in ("fa", "frsf", "kp", "wm")
    ]
    image = keras.Input((6, 6, 4))
    y = keras_fa.FAConv2D(4, 3, name="conv")(image)
    outputs.append(keras_fa.FASeparableConv2D(4, 3, name="sep")(y))
    ids = keras.Input((3,), dtype="int32")
    embedding = keras_fa.FAReversibleEmbedding(10, 8, name="emb")
    outputs.append(embedding(embedding(ids), reverse=True))
    return keras.Model([tokens, image, ids], outputs)


def _ffn_model():
    import keras

    import keras_fa

    inputs = keras.Input((8,))
    x = keras_fa.FADense(8, name="ffn_in")(inputs)
    return keras.Model(inputs, keras_fa.FADense(8, name="ffn_out")(x))


def _transformer(feedback):
    """A pre-norm transformer block on (SEQ, DIM) features and a linear
    classifier, from `keras_fa.models.transformer`."""
    import keras_fa

    return keras_fa.models.transformer(
        (SEQ, DIM),
        CLASSES,
        feedback=feedback,
        seed=0,
        num_layers=1,
        num_heads=2,
        hidden_dim=DIM,
        intermediate_dim=HIDDEN,
    )


def _roles(model):
    """The paths of the kernels the tests name: `{role: path}`."""
    roles = {}
    for variable in model.variables:
        layer, _, name = variable.path.rpartition("/")
        shape = tuple(variable.shape)
        if name != "kernel":
            continue
        for projection in ("query", "key", "value", "attention_output"):
            if layer.endswith(f"/{projection}"):
                roles[projection] = variable.path
        if shape == (DIM, HIDDEN):
            roles["mlp_in"] = variable.path
        elif shape == (HIDDEN, DIM):
            roles["mlp_out"] = variable.path
        elif shape == (DIM, CLASSES):
            roles["head"] = variable.path
    return roles


def _transformer_layout(roles):
    """Keys a user would write from the model's paths (exact, so none
    matches a feedback kernel): the heads and the MLP's hidden units on
    "model"."""
    layout = {
        roles[p]: (None, "model", None) for p in ("query", "key", "value")
    }
    layout[roles["attention_output"]] = ("model", None, None)
    layout[roles["mlp_in"]] = (None, "model")
    layout[roles["mlp_in"].replace("/kernel", "/bias")] = ("model",)
    layout[roles["mlp_out"]] = ("model", None)
    return layout


def _batch():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(BATCH, SEQ, DIM)).astype("float32")
    y = rng.integers(0, CLASSES, size=(BATCH,))
    return x, y


def _step(feedback, initial=None):
    """Returns `(initial, after, specs, roles)`: the variables (by path) of
    a new transformer, set to `initial` if given, and after one SGD step;
    their shardings after it; `_roles` of the model."""
    import keras

    model = _transformer(feedback)
    if initial is not None:
        for variable in model.variables:
            variable.assign(initial[variable.path])
    before = {v.path: np.array(v.value) for v in model.variables}
    model.compile(
        keras.optimizers.SGD(0.5),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(*_batch())
    after = {v.path: np.array(v.value) for v in model.variables}
    return before, after, _specs(model), _roles(model)


def _max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def run_checks():
    """Runs every check in this process (jax, 4 devices); returns a dict."""
    import keras

    import keras_fa

    results = {"devices": len(keras.distribution.list_devices())}
    for name in MESHES:
        mesh = _mesh(name)
        keras.backend.clear_session()
        with _distribution(mesh, LAYERS_LAYOUT).scope():
            results[f"layers_{name}"] = _specs(_layers_model())

    mesh = _mesh("2x2")
    # A loose key matches the feedback kernels too; ffn_in's exact key must
    # still decide its feedback kernel's layout.
    with _distribution(
        mesh,
        {".*ffn.*kernel": (None, "model"), "ffn_in/kernel": ("model", None)},
    ).scope():
        results["loose"] = _specs(_ffn_model())
    # A key that matches only the feedback kernel but does not name
    # feedback (meant for depthwise_kernel) matches it by accident.
    with _distribution(
        mesh, {"ffn_in/kernel": (None, "model"), ".*_kernel": ("model", None)}
    ).scope():
        results["accidental"] = _specs(_ffn_model())
    # Entries of the feedback kernels' own: an exact path and a regex.
    with _distribution(
        mesh,
        {
            "ffn_(in|out)/kernel": (None, "model"),
            "ffn_in/feedback_kernel": ("model", None),
            ".*out/feedback.*": (None, None),
        },
    ).scope():
        results["explicit"] = _specs(_ffn_model())
    with _distribution(
        mesh,
        {
            ".*feedback_kernel": ("model", None),
            "ffn_in/feedback.*": (None, None),
        },
    ).scope():
        try:
            _ffn_model()
            results["ambiguous"] = None
        except ValueError as error:
            results["ambiguous"] = str(error)
    # Variables made in a stateless scope take their layout only when it
    # exits (keras initializes them then).
    with _distribution(mesh, {"ffn_in/kernel": (None, "model")}).scope():
        layer = keras_fa.FADense(8, feedback="wm", name="ffn_in")
        with keras.StatelessScope():
            layer.build((None, 8))
        results["stateless"] = {v.path: _spec(v) for v in layer.variables}

    # One SGD step of each transformer, unsharded, then sharded from the
    # same weights under a map written from the unsharded model's paths.
    steps = {}
    for feedback in ("fa", "dfa"):
        keras.backend.clear_session()
        initial, after, _, roles = steps[feedback] = _step(feedback)
        results[f"{feedback}_roles"] = roles
        results[f"{feedback}_changes"] = {
            path: float(np.max(np.abs(after[path] - initial[path])))
            for path in after
        }
        layout = _transformer_layout(roles)
        if feedback == "dfa":
            # Direct feedback matrices: replicated unless a key maps them.
            keras.backend.clear_session()
            with _distribution(mesh, layout).scope():
                results["direct_default"] = _specs(_transformer("dfa"))
            layout["direct_feedback/feedback_kernel_.*"] = (None, "model")
        for name in MESHES:
            keras.backend.clear_session()
            with _distribution(_mesh(name), layout).scope():
                _, sharded, specs, _ = _step(feedback, initial)
            results[f"{feedback}_{name}_diff"] = _max_diff(after, sharded)
            results[f"{feedback}_{name}_specs"] = specs
    # Backprop's step from fa's weights.
    keras.backend.clear_session()
    fa_initial, fa_after, _, _ = steps["fa"]
    _, bp_after, _, _ = _step("bp", fa_initial)
    results["fa_vs_bp"] = {
        path: float(np.max(np.abs(fa_after[path] - bp_after[path])))
        for path in bp_after
    }
    return results


def _main(out):
    results = run_checks()
    with open(out, "w") as f:
        json.dump(results, f)


# The tests, in pytest's process.


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip(
            "keras.distribution lays variables out only on the jax backend."
        )
    out = tmp_path_factory.mktemp("distribution") / "results.json"
    flags = os.environ.get("XLA_FLAGS", "")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4",
        PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    )
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout.decode()[-4000:]
    with open(out) as f:
        return json.load(f)


def _feedback_pairs(specs):
    """`(feedback path, kernel path)` of every feedback kernel in `specs`."""
    pairs = []
    for path in specs:
        head, _, name = path.rpartition("/")
        if name != "feedback_kernel":
            continue
        owner, _, unit = head.rpartition("/")
        if unit in ("depthwise_feedback", "pointwise_feedback"):
            kernel = f"{owner}/{unit.split('_')[0]}_kernel"
        elif unit == "reverse_feedback":
            kernel = f"{owner}/embeddings"
        else:
            kernel = f"{head}/kernel"
        pairs.append((path, kernel))
    return pairs


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_feedback_kernels_take_the_forward_layout(results, mesh):
    assert results["devices"] == 4
    specs = results[f"layers_{mesh}"]
    pairs = _feedback_pairs(specs)
    # mha: 4 projections; fa, frsf, kp, wm; conv; separable: 2; embedding.
    assert len(pairs) == 12, pairs
    for feedback, kernel in pairs:
        assert specs[kernel] != "single", kernel
        assert specs[feedback] == specs[kernel], (feedback, kernel)
    # The map shards every forward kernel of this model.
    assert all("model" in specs[k] for _, k in pairs), specs
    # Other feedback state is laid out as Keras lays out any variable.
    assert specs["wm/feedback_seed_generator/seed_generator_state"] == [None]


def test_a_loose_key_does_not_override_the_kernel_entry(results):
    specs = results["loose"]
    assert specs["ffn_in/kernel"] == ["model", None]
    assert specs["ffn_in/feedback_kernel"] == ["model", None]
    assert specs["ffn_out/feedback_kernel"] == [None, "model"]


def test_a_key_not_naming_feedback_does_not_override(results):
    specs = results["accidental"]
    assert specs["ffn_in/feedback_kernel"] == [None, "model"]
    assert specs["ffn_out/kernel"] == [None, None]
    assert specs["ffn_out/feedback_kernel"] == [None, None]


def test_an_entry_of_the_feedback_kernel_is_honoured(results):
    specs = results["explicit"]
    assert specs["ffn_in/kernel"] == [None, "model"]
    assert specs["ffn_in/feedback_kernel"] == ["model", None]
    assert specs["ffn_out/kernel"] == [None, "model"]
    assert specs["ffn_out/feedback_kernel"] == [None, None]


def test_two_entries_of_a_feedback_kernel_are_an_error(results):
    message = results["ambiguous"]
    assert message is not None
    assert "ffn_in/feedback_kernel" in message
    assert "'.*feedback_kernel'" in message and "'ffn_in/feedback.*'" in message
    # Which key is the kernel's: one matching 'ffn_in/kernel' too.
    assert "'ffn_in/kernel'" in message


def test_variables_made_in_a_stateless_scope(results):
    specs = results["stateless"]
    assert specs["ffn_in/kernel"] == [None, "model"]
    assert specs["ffn_in/feedback_kernel"] == [None, "model"]


def test_direct_feedback_matrices_are_replicated_by_default(results):
    specs = results["direct_default"]
    assert specs["direct_feedback/feedback_kernel_0"] == [None, None]
    assert specs[results["dfa_roles"]["mlp_in"]] == [None, "model"]


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_fa_step_equals_unsharded(results, mesh):
    specs = results[f"fa_{mesh}_specs"]
    roles = results["fa_roles"]
    pairs = _feedback_pairs(specs)
    assert len(pairs) == 8, pairs  # input projection, 4 in MHA, MLP, head
    for feedback, kernel in pairs:
        assert specs[feedback] == specs[kernel], (feedback, kernel)
    for role in ("query", "attention_output", "mlp_in", "mlp_out"):
        assert "model" in specs[roles[role]], role
    assert results["fa_changes"][roles["query"]] > 1e-3
    assert results[f"fa_{mesh}_diff"] < 1e-5
    # The step is fa's, not backprop's: the layers below the head learn
    # from B (the head's own step is backprop's).
    differences = results["fa_vs_bp"]
    assert differences[roles["head"]] < 1e-6
    assert differences[roles["mlp_in"]] > 1e-3
    assert differences[roles["query"]] > 1e-3


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_dfa_step_equals_unsharded(results, mesh):
    specs = results[f"dfa_{mesh}_specs"]
    roles = results["dfa_roles"]
    assert specs["direct_feedback/feedback_kernel_0"] == [None, "model"]
    assert "model" in specs[roles["query"]]
    # Below the BlockGradient, the attention learns from e B_1 alone.
    assert results["dfa_changes"][roles["query"]] > 1e-3
    assert results[f"dfa_{mesh}_diff"] < 1e-5


if __name__ == "__main__":
    _main(sys.argv[1])
