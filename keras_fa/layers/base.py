"""What every keras_fa layer adds to the Keras layer it replaces."""

import types
import weakref

import keras
from keras import initializers
from keras import ops

from keras_fa import distribution as distribution_lib
from keras_fa import feedback as feedback_lib
from keras_fa import tracing
from keras_fa.seeding import feedback_seed
from keras_fa.seeding import reseeded
from keras_fa.seeding import standardize_seed


def get_feedback_initializer(identifier):
    """Returns a Keras initializer, with an error that says what is allowed."""
    try:
        init = initializers.get(identifier)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "Invalid `feedback_initializer`: expected the name of a Keras "
            "initializer (e.g. 'glorot_uniform', 'he_normal', 'orthogonal'), "
            "a config dict, or a keras.initializers.Initializer. Received: "
            f"{identifier!r}"
        ) from error
    if init is None or not callable(init):
        raise ValueError(
            "Invalid `feedback_initializer`: expected the name of a Keras "
            "initializer, a config dict, or a keras.initializers.Initializer. "
            f"Received: {identifier!r}"
        )
    return init


def _value(tensor):
    # Custom-gradient ops need tensors, not variables (torch requires it).
    if isinstance(tensor, keras.Variable):
        return tensor.value
    return tensor


class FeedbackMixin:
    """Adds a feedback rule, its weights and their saving to a Keras layer.

    Must come before the Keras layer class in the bases. The subclass calls
    `_init_feedback` in `__init__`, `_build_feedback` at the end of `build`,
    and routes its product through `_apply_feedback`.

    The state the rule owns (what `FeedbackRule.build` returns: B, a seed
    generator, brsf's sampler) is kept in one place, the dict
    `feedback_state` (empty until the layer is built); `feedback_kernel`
    and `feedback_seed_generator` read from it.
    """

    def _init_feedback(self, feedback, feedback_initializer, seed):
        if getattr(self, "quantization_mode", None):
            raise ValueError(
                "keras_fa layers do not support quantization: their feedback "
                "rule's backward pass needs the full-precision kernel. Use a "
                "float dtype policy ('float32', 'mixed_float16', ...). "
                f"Received: dtype={self.dtype_policy.name!r}"
            )
        self.feedback = feedback_lib.get(feedback)
        self.feedback_initializer = get_feedback_initializer(
            feedback_initializer
        )
        self._unseeded_feedback_initializer = self.feedback_initializer
        seed = standardize_seed(seed)
        self.seed = seed
        self.feedback_seed = feedback_seed(seed)
        self.feedback_initializer = reseeded(
            self.feedback_initializer, self.feedback_seed
        )
        self.feedback.validate(self)
        self.feedback_state = {}

    @property
    def feedback_kernel(self):
        """The rule's feedback kernel B (fa, frsf, kp, wm, once built).

        A layer whose rule keeps none has no such attribute (`hasattr` is
        False), as before rules returned their state."""
        return self._feedback_entry(feedback_lib.base.FEEDBACK_KERNEL)

    @property
    def feedback_seed_generator(self):
        """The rule's seed generator (brsf, wm, once built); absent, as
        `feedback_kernel`, for a rule without one."""
        return self._feedback_entry(feedback_lib.base.SEED_GENERATOR)

    def _feedback_entry(self, name):
        try:
            return self.feedback_state[name]
        except KeyError:
            raise AttributeError(
                f"Layer '{self.name}' (feedback={self.feedback.name!r}) has "
                f"no `{name}`: its rule keeps none, or the layer is not built."
            ) from None

    def _forward_kernel(self):
        # Keras's `kernel` is the LoRA sum under `lora_rank`; `_kernel`,
        # the stored variable, is the only way to the forward weights.
        kernel = getattr(self, "_kernel", None)
        return self.kernel if kernel is None else kernel

    @property
    def kernel_shape_for_feedback(self):
        """The shape of the feedback kernel: that of the forward kernel."""
        return tuple(self._forward_kernel().shape)

    @property
    def feedback_fans(self):
        """`(fan_in, fan_out)` of the kernel, as Keras's initializers count
        them (usf's default scale is the Glorot std from these)."""
        return feedback_lib.base.kernel_fans(self.kernel_shape_for_feedback)

    def _build_feedback(self):
        # With `lora_rank`, the Keras `build` ends in `enable_lora`, which
        # locks the layer's variable tracker (Keras has no public unlock);
        # the feedback state comes after.
        locked = self._tracker.locked  # private: see above
        self._tracker.unlock()  # private: see above
        try:
            # Under a keras.distribution, feedback kernels are laid out as
            # the forward kernel (keras_fa.distribution says how).
            with distribution_lib.kernel_layout_scope(
                self, self._forward_kernel()
            ):
                state = self.feedback.build(self)
            self.feedback_state = _check_state(self.feedback, state)
        finally:
            if locked:
                self._tracker.lock()  # private: see above

    def _apply_feedback(self, inputs, forward, feedback_op, **op_kwargs):
        """Runs the forward product with the rule's backward pass."""
        kernel = ops.cast(_value(self.kernel), self.compute_dtype)
        # As Layer.__call__ casts them; a direct `call` (stateless_call of a
        # sub-layer) under a mixed policy would otherwise mix dtypes.
        if keras.backend.standardize_dtype(inputs.dtype) != self.compute_dtype:
            inputs = ops.cast(inputs, self.compute_dtype)
        if self.feedback.exact or tracing.is_exact():
            outputs = forward(inputs, kernel)
        else:
            feedback = tuple(
                ops.cast(_value(t), self.compute_dtype)
                for t in self.feedback.feedback_inputs(self)
            )
            outputs = feedback_op(
                inputs, kernel, self.feedback, feedback, **op_kwargs
            )
        # Where alignment is measured, a zero probe here receives delta.
        return tracing.probe(self, outputs)

    # Saving. The Keras layers store only kernel and bias in
    # `save_own_variables`; the feedback state follows them in the same store.

    def _feedback_variables(self):
        # In the order the rule gave them: the order they are saved in.
        variables = []
        for value in self.feedback_state.values():
            if isinstance(value, keras.random.SeedGenerator):
                variables.append(value.state)
            elif isinstance(value, keras.Variable):
                variables.append(value)
        return variables

    def _num_base_entries(self):
        return 1 + int(self.bias is not None)

    def save_own_variables(self, store):
        """Saves what the Keras layer saves, in its layout, then the feedback
        state."""
        if not self.built:
            return
        # Dense, EinsumDense and the convolutions store kernel and bias;
        # Keras layers that keep Layer's default store every variable of
        # their own, the feedback kernel among them. Either way the Keras
        # entries come first and the feedback state follows, once.
        keras_store = {}
        super().save_own_variables(keras_store)
        feedback = self._feedback_variables()
        ids = {id(v) for v in feedback}
        entries = [
            keras_store[key]
            for key in sorted(keras_store, key=int)
            if id(keras_store[key]) not in ids
        ]
        for i, value in enumerate(entries + feedback):
            store[str(i)] = value

    def _check_load_own_variables(self, store):
        expected = self._num_base_entries() + len(self._feedback_variables())
        received = len(store.keys())
        if received != expected:
            raise ValueError(
                f"Layer '{self.name}' (feedback={self.feedback.name!r}) "
                f"expects {expected} saved variables (kernel"
                f"{', bias' if self.bias is not None else ''} and "
                f"{len(self._feedback_variables())} feedback variable(s)), "
                f"but the file holds {received}. Was it saved with another "
                "feedback rule or layer configuration?"
            )

    def load_own_variables(self, store):
        """Loads kernel and bias as Keras does, then the feedback state."""
        self._check_load_own_variables(store)
        if not self.built:
            return
        start = self._num_base_entries()
        for i, variable in enumerate(self._feedback_variables()):
            value = store[str(start + i)]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Layer '{self.name}' (feedback="
                    f"{self.feedback.name!r}): the saved {variable.name} has "
                    f"shape {tuple(value.shape)}, but this layer needs "
                    f"{tuple(variable.shape)}. Was it saved with another "
                    "feedback rule or layer configuration?"
                )
        super().load_own_variables(store)
        for i, variable in enumerate(self._feedback_variables()):
            variable.assign(store[str(start + i)])

    def quantize(self, *args, **kwargs):
        """Not supported: feedback layers keep full-precision kernels.

        Raises a NotImplementedError, which `keras.Model.quantize` turns
        into a warning naming this layer: the model's other layers are
        quantized, this one keeps its kernel as it is."""
        raise NotImplementedError(_quantize_message(self))

    def _feedback_config(self):
        return {
            "feedback": feedback_lib.serialize(self.feedback),
            "feedback_initializer": initializers.serialize(
                self._unseeded_feedback_initializer
            ),
            "seed": self.seed,
        }


def _check_state(rule, state):
    """Returns what `rule.build` returned as a dict (None: no state)."""
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise TypeError(
            f"{type(rule).__name__}.build(layer) must return a dict of the "
            "state the rule owns (name -> variable, seed generator, ...), "
            f"or None. Received: {state!r} of type {type(state).__name__}"
        )
    return dict(state)


def _quantize_message(layer, kernel=None):
    """Why keras_fa `layer` is not quantized: names it, its rule, and what
    happens to it (the message of Model.quantize's warning too)."""
    path = getattr(layer, "path", None) or layer.name
    what = type(layer).__name__
    if kernel is not None:
        what = f"{what}, its {kernel}"
    return (
        f"Layer '{path}' ({what}, feedback={layer.feedback.name!r}) is left "
        "unquantized: keras_fa layers keep the full-precision kernel, which "
        "their feedback rule's backward pass needs. (model.quantize(...) "
        "quantizes the model's other layers only.)"
    )


def _get_object(name, identifier, module):
    """Returns `module.get(identifier)` (a Keras regularizer or constraint),
    or raises a ValueError naming the argument `name`."""
    try:
        value = module.get(identifier)
    except (ValueError, TypeError) as error:
        value = error
    if identifier is not None and (value is None or not callable(value)):
        kind = module.__name__.rsplit(".", 1)[-1][:-1]
        raise ValueError(
            f"`{name}` must be None, the name of a Keras {kind}, a config "
            f"dict, or a callable. Received: {name}={identifier!r}"
        )
    return value


class FeedbackKernel(FeedbackMixin, keras.layers.Layer):
    """The feedback of one kernel of a layer that has several.

    A layer with two kernels (a separable convolution's depthwise and
    pointwise kernels) owns one `FeedbackKernel` per kernel: it holds that
    kernel's feedback state (B, seed generator), runs the kernel's product
    with the rule's backward pass (`apply`), and is what alignment measures
    and `keras_fa.feedback_summary` see for that kernel. The forward kernel
    stays a variable of the owning layer, as in the Keras layer.

    Args:
        owner: the layer that holds the kernel.
        kernel_name: the attribute of `owner` that is the kernel.
        feedback, feedback_initializer, seed: as for `FADense`.
        regularizer, constraint: those of the kernel (kp's B carries them).
    """

    def __init__(
        self,
        owner,
        kernel_name,
        feedback="fa",
        feedback_initializer="glorot_uniform",
        seed=None,
        regularizer=None,
        constraint=None,
        **kwargs,
    ):
        if not isinstance(owner, keras.layers.Layer):
            raise TypeError(
                "`owner` must be the keras.layers.Layer that holds the "
                f"kernel. Received: owner={owner!r} of type "
                f"{type(owner).__name__}"
            )
        if not isinstance(kernel_name, str):
            raise TypeError(
                "`kernel_name` must be a str: the name of the attribute of "
                f"`owner` that is the kernel. Received: "
                f"kernel_name={kernel_name!r}"
            )
        regularizer = _get_object(
            "regularizer", regularizer, keras.regularizers
        )
        constraint = _get_object("constraint", constraint, keras.constraints)
        super().__init__(**kwargs)
        # A weak reference: the owner tracks this layer, not the reverse.
        self._owner = weakref.ref(owner)
        self.kernel_name = kernel_name
        self.kernel_regularizer = regularizer
        self.kernel_constraint = constraint
        self.bias = None
        self._kernel_shape = None
        self._init_feedback(feedback, feedback_initializer, seed)

    @property
    def kernel(self):
        """The owner's forward kernel this feedback serves."""
        return getattr(self._owner(), self.kernel_name)

    @property
    def kernel_shape_for_feedback(self):
        return self._kernel_shape

    def build(self, kernel_shape):
        """Creates the feedback state for a kernel of shape `kernel_shape`."""
        self._kernel_shape = tuple(kernel_shape)
        self._build_feedback()
        self.built = True

    def apply(self, inputs, forward, feedback_op, **op_kwargs):
        """Returns `forward(inputs, kernel)` with the rule's backward pass."""
        return self._apply_feedback(inputs, forward, feedback_op, **op_kwargs)

    def _num_base_entries(self):
        return 0

    def quantize(self, *args, **kwargs):
        """Not supported: raises a NotImplementedError that names the layer
        that owns the kernel (`keras.Model.quantize` warns with it)."""
        raise NotImplementedError(
            _quantize_message(self._owner(), kernel=self.kernel_name)
        )

    def get_config(self):
        raise NotImplementedError(
            "FeedbackKernel is created by the layer that owns the kernel and "
            "is saved with it; it has no config of its own."
        )


class CompositeFeedbackMixin:
    """The rule, feedback initializer and config of a keras_fa layer whose
    feedback lives in sub-layers (`FeedbackKernel`s or `FAEinsumDense`
    projections). Comes before the Keras layer class in the bases."""

    def _init_composite_feedback(self, feedback, feedback_initializer):
        self.feedback = feedback_lib.get(feedback)
        self._unseeded_feedback_initializer = get_feedback_initializer(
            feedback_initializer
        )
        # Sub-layers may be made only at build time: check the rule's
        # arguments now, as every other keras_fa layer does.
        self.feedback.validate(
            types.SimpleNamespace(
                feedback_initializer=self._unseeded_feedback_initializer
            )
        )

    def _feedback_config(self):
        return {
            "feedback": feedback_lib.serialize(self.feedback),
            "feedback_initializer": initializers.serialize(
                self._unseeded_feedback_initializer
            ),
        }

    def quantize(self, *args, **kwargs):
        """Not supported: feedback layers keep full-precision kernels."""
        raise NotImplementedError(_quantize_message(self))
