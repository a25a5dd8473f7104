"""The one place where keras_fa uses a backend's own API.

Everything else in keras_fa is written with `keras.ops`. Two things cannot be:

- `conv_backward`: the vector-Jacobian product of a convolution, with the input
  gradient taken through a kernel of our choosing (the feedback kernel) and the
  kernel gradient taken from the layer input. Backprop computes exactly these
  two products, so a feedback convolution costs what a backprop one costs.
- `depthwise_conv_backward` and `conv_transpose_backward`: the same for
  `keras.ops.depthwise_conv` and `keras.ops.conv_transpose`.
- `after`: orders a gradient after another (graph backends only).
- `value_and_grad` and `compile_function`: differentiate and compile a
  function of tensors (alignment measures compare two gradients of a model).
- `preserve_random_state`: replays the global random state (torch's
  unseeded dropout uses it) so both passes of a measurement see the same
  masks and training does not see the measurement.
- `sync_state`: writes back the values `model.fit` keeps outside the
  variables during an epoch (jax), before they are read.
- `STATELESS_OPTIMIZER`: whether a compiled training loop must apply the
  optimizer to values and write them back (jax) or may update variables in
  place (tensorflow, torch).
- `needs_gradient`: whether the backend will use the gradient of a tensor. Only
  torch can tell (and only torch would otherwise compute unused products);
  tensorflow and jax drop unused products at graph-compile time.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_fa.backend.tensorflow import STATELESS_OPTIMIZER
    from keras_fa.backend.tensorflow import after
    from keras_fa.backend.tensorflow import compile_function
    from keras_fa.backend.tensorflow import conv_backward
    from keras_fa.backend.tensorflow import conv_transpose_backward
    from keras_fa.backend.tensorflow import depthwise_conv_backward
    from keras_fa.backend.tensorflow import needs_gradient
    from keras_fa.backend.tensorflow import preserve_random_state
    from keras_fa.backend.tensorflow import sync_state
    from keras_fa.backend.tensorflow import value_and_grad
elif _BACKEND == "jax":
    from keras_fa.backend.jax import STATELESS_OPTIMIZER
    from keras_fa.backend.jax import after
    from keras_fa.backend.jax import compile_function
    from keras_fa.backend.jax import conv_backward
    from keras_fa.backend.jax import conv_transpose_backward
    from keras_fa.backend.jax import depthwise_conv_backward
    from keras_fa.backend.jax import needs_gradient
    from keras_fa.backend.jax import preserve_random_state
    from keras_fa.backend.jax import sync_state
    from keras_fa.backend.jax import value_and_grad
elif _BACKEND == "torch":
    from keras_fa.backend.torch import STATELESS_OPTIMIZER
    from keras_fa.backend.torch import after
    from keras_fa.backend.torch import compile_function
    from keras_fa.backend.torch import conv_backward
    from keras_fa.backend.torch import conv_transpose_backward
    from keras_fa.backend.torch import depthwise_conv_backward
    from keras_fa.backend.torch import needs_gradient
    from keras_fa.backend.torch import preserve_random_state
    from keras_fa.backend.torch import sync_state
    from keras_fa.backend.torch import value_and_grad
else:
    raise ImportError(
        f"keras_fa supports the Keras backends 'tensorflow', 'jax' and "
        f"'torch'. The active backend is '{_BACKEND}'. Set the environment "
        "variable KERAS_BACKEND to one of the supported backends."
    )

__all__ = [
    "STATELESS_OPTIMIZER",
    "after",
    "compile_function",
    "conv_backward",
    "conv_transpose_backward",
    "depthwise_conv_backward",
    "needs_gradient",
    "preserve_random_state",
    "sync_state",
    "value_and_grad",
]
