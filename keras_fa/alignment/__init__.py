"""Alignment measures: how far a rule's learning is from backprop's, per kernel.

For each kernel the measures are (angles in degrees; 90 means no alignment,
below 90 means the rule still descends the loss):

- `weight_angle`: angle between the forward kernel W and the feedback kernel
  B the rule uses in its place (flattened);
- `norm_ratio`: |B| / |W| (Frobenius norms);
- `signal_angle`: angle between the error signal delta the kernel's product
  receives under its rule and the one backprop gives, on the same batch (the
  gradient at the output of the kernel's product, before bias; for a
  direct-feedback tap, at the tapped activation);
- `update_angle`: angle between the kernel gradient the rule gives (what the
  optimizer receives) and the true gradient dL/dW, on the same batch;
- `conservation`: the quantity of Robertson & Koyejo's conservation law,
  summed over the hidden neurons whose incoming weights (and bias) are in
  this kernel and outgoing weights in the next kernel,
  `Q_i = |w_in|^2 + b_i^2 - 2 sum(phi(w_out))`; `phi` is the next kernel's
  rule's `conservation_potential` (`W * B` for fa, usf and frsf;
  `W * B - W^2 / 2` for bp and kp, which gives `|w_in|^2 - |w_out|^2` under
  backprop);
- `conservation_drift`: sum of `Q_i(t) - Q_i(0)` since the reference;
- `conservation_drift_max`: the largest `|Q_i(t) - Q_i(0)|` of the kernel.

A kernel with LoRA enabled (`layer.enable_lora(rank)`) is measured too: W
is the kernel the forward pass uses, `W0 + A B * alpha / rank`, and its
`update_angle` is that of the gradients the optimizer receives, those of
the factors A and B (one vector); it has no conservation law.

Measures are keyed `"<kernel>/<measure>"`. A layer of the model with one
kernel is named by its layer name (`"dense/update_angle"`); a kernel inside
another layer by the path of layer names down to it, models left out
(`"fa_multi_head_attention/query/update_angle"`), and a layer with two
kernels by the kernel's name (`"fa_separable_conv2d/depthwise_kernel/..."`,
`".../pointwise_kernel/..."`).

The conservation law is derived for a hidden neuron whose pre-activation is
linear in its incoming weights and bias, and whose output reaches the next
kernel's input axis only through positively homogeneous, channel-wise
operations (ReLU, leaky ReLU, linear, pooling, dropout, flatten): under
gradient flow, with a fixed feedback B, `d(|w_in|^2 + b^2)/dt =
2 sum(B * dW_out/dt)`. It holds between the kernels of Dense, EinsumDense
acting as a Dense on the last axis (`"...b,bc->...c"`), Conv, DepthwiseConv
(neuron `c * depth_multiplier + m`), ConvTranspose (kernel `(..., filters,
in)`: a neuron's incoming weights are `[..., j, :]`, its outgoing ones
`[..., :, j]`) and FASeparableConv (also between its depthwise and pointwise
kernels, which nothing separates), the next kernel's rule being bp, fa,
usf, frsf or kp. `Alignment.conservation_status` says, for every kernel,
`"holds"` or why not (`"not applicable: <reason>"`): attention projections,
other einsum equations, kernels inside other layers or nested models,
grouped convolutions as the next kernel, non-homogeneous activations or
layers in between, subclassed models, the output layer, kernels with LoRA
(either of the two). Such kernels get no conservation measures.

A batch to measure is checked first (`Alignment.check_batch`), with errors
naming what is wrong: arrays with the same, non-zero number of examples,
numeric and finite, that the model takes; with a sparse categorical loss,
labels that are classes of the model's output; targets the loss takes.

The true gradient comes from the same model traced inside
`keras_fa.tracing.exact_backprop()`, on every backend, with the same
variables, dropout masks and random draws as the rule's pass.

`meter(model)` is the `Alignment` keras_fa keeps for a model, which
`measure`, `gradients`, `true_gradients` and `keras_fa.train` use.

The package: `measures` (the measures' names, angles and sums),
`discovery` (the kernels, their variables and signal probes, the graph),
`conservation` (where the law holds, and Q per neuron), `plan` (what a
meter found in a model, and the computations it traces on it), `meters`
(`Alignment` and the meter of each model).
"""

from keras_fa.alignment.conservation import HOLDS
from keras_fa.alignment.conservation import OUTPUT_KERNEL
from keras_fa.alignment.measures import ANGLE_MEASURES
from keras_fa.alignment.measures import MEASURES
from keras_fa.alignment.measures import angle
from keras_fa.alignment.meters import Alignment
from keras_fa.alignment.meters import gradients
from keras_fa.alignment.meters import measure
from keras_fa.alignment.meters import meter
from keras_fa.alignment.meters import true_gradients

__all__ = [
    "ANGLE_MEASURES",
    "Alignment",
    "HOLDS",
    "MEASURES",
    "OUTPUT_KERNEL",
    "angle",
    "gradients",
    "measure",
    "meter",
    "true_gradients",
]
