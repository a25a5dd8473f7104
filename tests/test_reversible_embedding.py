"""FAReversibleEmbedding: the reverse projection's gradients against numpy.

The lookup sends no gradient to its inputs, so only the reverse call,
`logits = x E^T` (tied) or `x @ reverse_embeddings`, has a rule to prove:
`d x = delta B` (tied; B shaped like E) or `delta B^T`, the matrix's gradient
is the local one, and `d x` is far from backprop's for every rule but bp.
"""

import keras
import numpy as np
import pytest

import keras_fa
from tests.gradients import BACKEND
from tests.gradients import glorot_scale
from tests.gradients import layer_gradients

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp", "wm"]
VOCAB, DIM = 7, 5


class _Reverse(keras.layers.Layer):
    # Makes the reverse call the layer's only call, for layer_gradients.
    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def build(self, input_shape):
        self.embedding.build()

    def call(self, x):
        return self.embedding(x, reverse=True)


def _np(v):
    return keras.ops.convert_to_numpy(v)


def _backward_kernel(unit, rule, w, state_before):
    if rule == "bp":
        return w
    if rule in ("fa", "kp", "wm"):
        return _np(unit.feedback_kernel).astype(np.float64)
    if rule == "usf":
        return np.sign(w) * glorot_scale(w.shape)
    if rule == "frsf":
        return np.sign(w) * np.abs(_np(unit.feedback_kernel))
    unit.feedback_seed_generator.state.assign(state_before)
    m = _np(unit.feedback_state["sampler"](w.shape, dtype="float32"))
    return np.sign(w) * np.abs(m).astype(np.float64)


def _params():
    for tie in (True, False):
        for rule in RULES:
            yield pytest.param(tie, rule, False, id=f"tie{tie}-{rule}")
        for rule in ("fa", "kp") if BACKEND == "torch" else RULES:
            if rule == "brsf" and BACKEND == "tensorflow":
                continue  # XLA's random stream differs from eager TF's
            yield pytest.param(tie, rule, True, id=f"tie{tie}-{rule}-jit")


@pytest.mark.parametrize("tie,rule,compiled", list(_params()))
def test_reverse_gradients_match_closed_form(tie, rule, compiled):
    embedding = keras_fa.FAReversibleEmbedding(
        VOCAB, DIM, tie_weights=tie, feedback=rule, seed=3
    )
    layer = _Reverse(embedding)
    layer.build((2, 3, DIM))
    unit = embedding.reverse_feedback
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, DIM)).astype("float32")
    dy = rng.normal(size=(2, 3, VOCAB)).astype("float32")
    state = _np(unit.feedback_seed_generator.state) if rule == "brsf" else None
    y, dx, grads, _ = layer_gradients(layer, x, dy, compiled=compiled)

    # (vocab, dim) when tied, else (dim, vocab).
    w = _np(unit.kernel).astype(np.float64)
    b = _backward_kernel(unit, rule, w, state)
    x2, dy2 = x.reshape(-1, DIM), dy.reshape(-1, VOCAB)
    if tie:
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-5)
        dx_ref, dx_bp, dw_ref = dy @ b, dy @ w, dy2.T @ x2
    else:
        np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-5)
        dx_ref, dx_bp, dw_ref = dy @ b.T, dy @ w.T, x2.T @ dy2
    np.testing.assert_allclose(dx, dx_ref, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        grads[unit.kernel.path], dw_ref, rtol=2e-4, atol=2e-5
    )
    if rule == "bp":
        np.testing.assert_allclose(dx, dx_bp, rtol=2e-4, atol=2e-5)
    else:
        gap = np.abs(dx - dx_bp).max() / np.abs(dx_bp).max()
        assert gap > 0.05, f"{rule} input gradient equals backprop's"
    if rule in ("fa", "frsf"):
        assert not grads[unit.feedback_kernel.path].any()
    if rule == "kp":
        np.testing.assert_allclose(
            grads[unit.feedback_kernel.path], dw_ref, rtol=2e-4, atol=2e-5
        )
