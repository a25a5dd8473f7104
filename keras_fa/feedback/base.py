"""The base class of feedback rules and the registry that names them.

One namespace holds every rule name, of two kinds: layer-wise rules
(`"layer"`: a `FeedbackRule` subclass a keras_fa layer runs, given as its
`feedback=`) and direct rules (`"direct"`: dfa, drtp, shallow, which send the
output error straight to every hidden layer and are run by
`keras_fa.direct_feedback`). A name belongs to one kind only.
"""

import math

import keras
from keras import ops

#: Layer-wise rules: name -> FeedbackRule subclass.
_RULES = {}
#: Direct rules: name -> one-line description.
_DIRECT_RULES = {}
#: The kinds of rule `names(kind)` takes.
KINDS = ("layer", "direct")


def register(name):
    """Class decorator that makes a feedback rule available by `name`.

    The class also becomes Keras-serializable under the package `keras_fa`, so
    models that use it save and load like any Keras model.

    Args:
        name: the short name users pass as `feedback=`, e.g. `"fa"`.

    Example:

    >>> @keras_fa.feedback.register("my_rule")
    ... class MyRule(keras_fa.feedback.FeedbackRule):
    ...     def backward_kernel(self, kernel, *feedback):
    ...         return 0.5 * kernel
    """

    if not isinstance(name, str) or not name:
        raise TypeError(
            "`name` must be a non-empty str, the name users pass as "
            f"`feedback=`. Received: name={name!r}"
        )

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, FeedbackRule)):
            raise TypeError(
                f"feedback.register({name!r}) decorates a subclass of "
                "keras_fa.feedback.FeedbackRule. Received: "
                f"{cls!r} of type {type(cls).__name__}"
            )
        key = name.lower()
        if key in _DIRECT_RULES:
            raise ValueError(
                f"'{name}' is the name of a direct feedback rule; choose "
                "another name for a layer-wise rule."
            )
        if key in _RULES and _RULES[key] is not cls:
            raise ValueError(
                f"A feedback rule named '{name}' is already registered "
                f"({_RULES[key].__name__})."
            )
        cls.name = key
        _RULES[key] = cls
        return keras.saving.register_keras_serializable(
            package="keras_fa", name=cls.__name__
        )(cls)

    return decorator


def register_direct(name, description):
    """Declares the direct rule `name`, run by `keras_fa.direct_feedback`,
    and returns its canonical (lower-case) name; `description` says what it
    sends back."""
    key = name.lower()
    # The same declaration again (a reloaded module) is no clash.
    if key in _RULES or _DIRECT_RULES.get(key, description) != description:
        raise ValueError(f"A feedback rule named '{name}' already exists.")
    _DIRECT_RULES[key] = description
    return key


def names(kind=None):
    """Returns the sorted names of the registered rules of one kind.

    Args:
        kind: None (every rule), `"layer"` (the rules a keras_fa layer takes
            as `feedback=`: bp, fa, usf, ...) or `"direct"` (the rules of
            `keras_fa.direct_feedback`: dfa, drtp, shallow).

    Example:

    >>> keras_fa.feedback.names("direct")
    ['dfa', 'drtp', 'shallow']
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(
            "`kind` must be None, 'layer' or 'direct'. Received: "
            f"kind={kind!r}"
        )
    found = []
    if kind in (None, "layer"):
        found.extend(_RULES)
    if kind in (None, "direct"):
        found.extend(_DIRECT_RULES)
    return sorted(found)


def registered_names():
    """Returns the names of the layer-wise feedback rules, sorted (the
    same as `names("layer")`)."""
    return names("layer")


def kernel_fans(shape):
    """Returns `(fan_in, fan_out)` of a Keras kernel shape.

    Keras kernels are `(*receptive_field, in, out)`; fans count the receptive
    field, as Keras's own variance-scaling initializers do.
    """
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_scale(shape):
    """Returns sqrt(2 / (fan_in + fan_out)) for a Keras kernel shape."""
    fan_in, fan_out = kernel_fans(shape)
    return math.sqrt(2.0 / (fan_in + fan_out))


class FeedbackRule:
    """How a layer sends its error backwards: the base of all feedback rules.

    A layer's forward pass is untouched. In the backward pass the gradient
    with respect to the layer input is computed with `backward_kernel(...)`
    in place of the forward kernel W, while the gradient with respect to W stays
    the local one (`x^T delta` for a dense layer). A rule decides:

    - `validate(layer)`: early checks of the layer's arguments;
    - `build(layer)`: the state the rule owns on the layer (usually a
      non-trainable feedback kernel with the kernel's shape), returned as a
      dict the layer keeps as `layer.feedback_state`;
    - `feedback_inputs(layer)`: the tensors the forward pass hands to the
      backward pass;
    - `backward_kernel(kernel, *feedback)`: the matrix B used in place of W;
    - `feedback_gradients(d_kernel, feedback, kernel)`: gradients for the
      feedback tensors (None: they do not learn), from the kernel's local
      gradient (kp) or from the forward kernel itself (wm's mirror).

    Subclass it, override what differs, and register it with
    `keras_fa.feedback.register("name")`.
    """

    name = None
    #: True for exact backprop: the layer then uses the plain Keras op.
    exact = False

    def validate(self, layer):
        """Raises a ValueError if the rule cannot work with `layer`'s
        arguments; called when the layer is constructed."""

    def build(self, layer):
        """Creates the state the rule owns on `layer` and returns it.

        Returns a dict, name -> object, which the layer keeps as
        `layer.feedback_state` and Keras tracks: variables made with
        `layer.add_weight` (`add_feedback_kernel`), seed generators
        (`new_seed_generator`), and any other object the rule needs (brsf's
        sampler). The layer saves the variables and the seed generators'
        states, in the dict's order, after its Keras weights. The rule reads
        them back from `layer.feedback_state` (`feedback_inputs`). Under
        the names `FEEDBACK_KERNEL` and `SEED_GENERATOR` they are also
        `layer.feedback_kernel` and `layer.feedback_seed_generator`.

        The default: no state, `{}`.
        """
        return {}

    def feedback_inputs(self, layer):
        """Returns the tensors the backward pass needs besides the kernel."""
        return ()

    def backward_kernel(self, kernel, *feedback):
        """Returns the matrix used in place of `kernel` in the backward pass."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `backward_kernel`."
        )

    def feedback_gradients(self, d_kernel, feedback, kernel):
        """Returns one gradient (or None) per tensor in `feedback`.

        Args:
            d_kernel: the kernel's local gradient (`x^T delta` for a dense
                layer), shaped like the kernel.
            feedback: the tensors `feedback_inputs` returned.
            kernel: the forward kernel W of this call (a value), for rules
                whose feedback learns from what W does to a signal, as wm's
                mirror phase does.
        """
        return tuple(None for _ in feedback)

    def conservation_potential(self, kernel, backward_kernel):
        """Returns phi(W), elementwise, of the rule's conservation law, or
        None if the rule has none.

        Under gradient flow, a hidden neuron i whose incoming weights are
        `w_in` and whose outgoing kernel row is `w_out` (in the next layer,
        which uses this rule) conserves `|w_in|^2 - 2 sum(phi(w_out))`, where
        the gradient of phi with respect to W is the feedback B the rule uses
        (Robertson & Koyejo 2024). A fixed B gives `phi = W * B`; a B that
        moves with W as in backprop (B = W) or Kolen-Pollack (B - W fixed)
        gives `phi = W * B - W^2 / 2`.
        """
        return None

    def get_config(self):
        """Returns the constructor arguments of the rule."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Creates a rule from its config."""
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


#: The `feedback_state` name of a rule's feedback kernel B.
FEEDBACK_KERNEL = "feedback_kernel"
#: The `feedback_state` name of a rule's seed generator.
SEED_GENERATOR = "feedback_seed_generator"


def add_feedback_kernel(layer, trainable=False, **kwargs):
    """Adds a weight to `layer` shaped like its kernel, drawn from its
    feedback initializer, and returns it (`build` returns it under
    `FEEDBACK_KERNEL`). Its name, `"feedback_kernel"`, is part of its path
    in saved models."""
    return layer.add_weight(
        name=FEEDBACK_KERNEL,
        shape=layer.kernel_shape_for_feedback,
        initializer=layer.feedback_initializer,
        trainable=trainable,
        **kwargs,
    )


def new_seed_generator(layer):
    """Returns a seed generator seeded by `layer`'s feedback seed (`build`
    returns it under `SEED_GENERATOR`, so the layer tracks and saves its
    state)."""
    return keras.random.SeedGenerator(
        layer.feedback_seed, name=SEED_GENERATOR
    )


def fixed_feedback_potential(kernel, backward_kernel):
    """Conservation potential of a feedback B that is fixed, or fixed up to
    the signs of W: `phi = W * B`."""
    return ops.multiply(kernel, backward_kernel)


def tied_feedback_potential(kernel, backward_kernel):
    """Conservation potential of a feedback that moves with W, with B - W
    fixed (backprop, Kolen-Pollack): `phi = W * B - W^2 / 2`."""
    return ops.subtract(
        ops.multiply(kernel, backward_kernel),
        ops.multiply(0.5, ops.square(kernel)),
    )


def sign_times(kernel, magnitude):
    """Returns `sign(kernel) * magnitude`: a sign-concordant feedback."""
    return ops.multiply(ops.sign(kernel), magnitude)
