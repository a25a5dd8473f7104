"""Weight mirror (Akrout, Wilson, Humphreys, Lillicrap & Tweed, 2019)."""

import math

import keras
from keras import ops

from keras_fa._validation import check_integer
from keras_fa._validation import check_real
from keras_fa.feedback.base import FEEDBACK_KERNEL
from keras_fa.feedback.base import SEED_GENERATOR
from keras_fa.feedback.base import FeedbackRule
from keras_fa.feedback.base import add_feedback_kernel
from keras_fa.feedback.base import new_seed_generator
from keras_fa.feedback.base import register


@register("wm")
class WeightMirror(FeedbackRule):
    """Weight mirror: B learns to mirror W from noise, without weight transport.

    The error goes back through a feedback kernel B (`layer.feedback_kernel`),
    as in feedback alignment, but B is trainable and learns in a mirror phase
    run at every training step: the layer feeds a batch of noise
    `x~ ~ N(0, noise_std^2)` of shape `(mirror_batch, fan_in)` through its
    forward kernel, `y~ = x~ W`, and correlates input and output noise. The
    gradient the rule hands the optimizer for B is

        g_B = decay * B - x~^T y~ / mirror_batch

    whose expectation is `decay * B - noise_std^2 * W`: the optimizer pulls B
    towards `(noise_std^2 / decay) * W`, in the same step as it updates W.
    With the defaults `E[g_B] = B - W`, the gradient of `|B - W|^2 / 2`, so B
    tracks W itself, as Kolen-Pollack's B does, and the angle between B and W
    falls from about 90 degrees towards 0 at a rate set by the optimizer's
    learning rate (plain SGD: `|B - W|` shrinks by about `1 - lr` a step).

    No weight is transported: B's update depends on W only through the
    mirror's forward pass `x~ W` (what the layer's synapses do to a signal),
    never on the data, the error, or `dL/dW`. For a convolution, W is read as
    the dense matrix of shape `(prod(kernel_size) * in / groups, filters)`
    that maps one receptive field to one output position; any other kernel
    (einsum, depthwise, transposed convolution, embedding) is read the same
    way, as the matrix `(prod(shape[:-1]), shape[-1])`. The noise is white,
    so the expectation above holds for any such reading of W; only the
    per-step noise depends on it.

    The noise is drawn at every call with a seed generator the layer owns
    (`layer.feedback_seed_generator`, seeded by the layer's `seed`); its
    state is saved with the model. The mirror costs two products of size
    `mirror_batch x fan_in x units` per step; the per-step noise in `g_B` is
    about `sqrt((fan_in + 1) / mirror_batch)` times `noise_std^2 |W|`, which
    averages out over steps (a larger `mirror_batch`, or a smaller learning
    rate, gives a closer final alignment).

    Args:
        noise_std: standard deviation of the mirror noise (positive). Scaling
            `noise_std^2` and `decay` by the same factor speeds the mirror up
            by that factor without moving its target.
        mirror_batch: number of noise samples per step (an integer >= 1).
        decay: weight decay of B (>= 0). B converges to
            `(noise_std^2 / decay) * W`; with `decay=0`, B grows along W
            without bound.

    Example:

    >>> layer = keras_fa.FADense(64, feedback="wm")
    >>> layer = keras_fa.FAConv2D(
    ...     16, 3, feedback=keras_fa.feedback.WeightMirror(mirror_batch=64)
    ... )
    """

    def __init__(self, noise_std=1.0, mirror_batch=32, decay=1.0):
        self.noise_std = check_real(
            "noise_std", noise_std, minimum=0, exclusive=True
        )
        self.mirror_batch = check_integer("mirror_batch", mirror_batch, 1)
        self.decay = check_real("decay", decay, minimum=0)

    def build(self, layer):
        # The kernel first: the layer saves its state in this order.
        return {
            FEEDBACK_KERNEL: add_feedback_kernel(layer, trainable=True),
            SEED_GENERATOR: new_seed_generator(layer),
        }

    def feedback_inputs(self, layer):
        state = layer.feedback_state
        fan_in = math.prod(layer.kernel_shape_for_feedback[:-1])
        noise = keras.random.normal(
            (self.mirror_batch, fan_in),
            stddev=self.noise_std,
            dtype=layer.compute_dtype,
            seed=state[SEED_GENERATOR],
        )
        return (state[FEEDBACK_KERNEL], noise)

    def backward_kernel(self, kernel, *feedback):
        return feedback[0]

    def feedback_gradients(self, d_kernel, feedback, kernel):
        b, noise = feedback
        w = ops.reshape(kernel, (-1, kernel.shape[-1]))
        mirror = ops.matmul(ops.transpose(noise), ops.matmul(noise, w))
        mirror = ops.reshape(mirror, b.shape) / self.mirror_batch
        return (self.decay * b - mirror, None)

    def get_config(self):
        return {
            "noise_std": self.noise_std,
            "mirror_batch": self.mirror_batch,
            "decay": self.decay,
        }
