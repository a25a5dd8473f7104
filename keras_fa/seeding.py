"""Where every seed keras_fa derives comes from.

A user gives one integer `seed`; keras_fa derives the others from it in two
documented ways, and nowhere else:

- `layer_seed(seed, i)`: the seed of the i-th layer of a model that
  `keras_fa.models`, `keras_fa.convert` or `keras_fa.direct_feedback`
  builds, and of the i-th sub-layer of a layer that holds several
  (attention projections, the two halves of a separable convolution):
  `(seed * 1000 + i) mod 2**31`. Seeds `s` and `s + 1` thus give disjoint
  layer seeds for models of up to 1,000 layers.
- `feedback_seed(seed, stream)`: the seed of feedback weights drawn for a
  layer whose forward weights use `seed` (stream 0), or of the l-th of
  several feedback matrices of one layer (direct feedback's B_l). It is
  mixed with a constant, so a layer given `seed=s` and a kernel initializer
  seeded with `s` do not draw B == W, which would silently turn feedback
  alignment into backprop.

None stays None everywhere: unseeded layers draw from Keras's global seed.
"""

import numbers

# See `feedback_seed`.
_FEEDBACK_SEED_OFFSET = 0x5F3759DF
# See `layer_seed`.
_LAYERS_PER_SEED = 1000


def standardize_seed(seed):
    """Returns `seed` as a Python int (or None), or raises a clear error."""
    if seed is None:
        return None
    # bool is an int in Python, but `seed=True` is a mistake.
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"`seed` must be an integer or None. Received: seed={seed!r}"
        )
    return int(seed)  # numpy integers too; the config stays JSON


def layer_seed(seed, index):
    """Returns the seed of layer or sub-layer `index` derived from `seed`
    (None stays None)."""
    if seed is None:
        return None
    return (seed * _LAYERS_PER_SEED + index) % 2**31


def feedback_seed(seed, stream=0):
    """Returns the seed of feedback stream `stream` derived from a forward
    seed (None stays None)."""
    if seed is None:
        return None
    return (seed + _FEEDBACK_SEED_OFFSET + 7919 * stream) % 2**31


def is_random_initializer(initializer):
    """Returns whether a Keras initializer draws random values from a seed."""
    return "seed" in initializer.get_config()


def reseeded(initializer, seed):
    """Returns a copy of a random initializer drawing from `seed`; returns
    other initializers, or any initializer when `seed` is None, as they are."""
    if seed is None or not is_random_initializer(initializer):
        return initializer
    return type(initializer)(**dict(initializer.get_config(), seed=seed))
