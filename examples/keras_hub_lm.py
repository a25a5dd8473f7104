"""A KerasHub GPT-2, built from a config, trained by feedback rules.

keras_fa did not write this model: KerasHub's `GPT2CausalLM` (a small one,
random weights, no preset download) learns a character-level language
model of the docstrings of Python's standard library (no network). Each
rule trains its own copy of the same initial model:

- `bp`: the model as KerasHub builds it (exact backprop, the control);
- layer-wise rules (`fa`, `usf`, `kp`...): `keras_fa.convert(lm, rule,
  strict=True, feedback_initializer="kernel")`, which puts every kernel on
  the rule (the attention projections and MLPs inside KerasHub's
  `TransformerDecoder` layers, and the tied token embedding) or raises, with
  feedback weights drawn like the forward ones;
- direct rules (`dfa`, `drtp`, `shallow`): `keras_fa.direct_feedback(lm,
  rule, taps=[...])` with a tap at the output of every transformer block,
  projected per position.

    python examples/keras_hub_lm.py                      # bp, fa, dfa
    python examples/keras_hub_lm.py --rules fa --steps 100
    KERAS_BACKEND=jax python examples/keras_hub_lm.py

It prints, per rule, the training loss at the start and the end, the test
perplexity, the mean update angle of the blocks' kernels to the true
gradient, and the time. KerasHub must be installed (`requirements.txt` and
`requirements-hub.txt`; see the README).
"""

import argparse
import math
import time

import keras
import numpy as np

import keras_fa
from keras_fa import datasets
from keras_fa.direct import DIRECT_RULES

SEQUENCE_LENGTH = 32


def gpt2_lm(seed=0, num_layers=2, hidden_dim=32, num_heads=2):
    """Returns a small KerasHub `GPT2CausalLM` with random weights.

    The same seed gives the same weights. No dropout, so that rules and
    copies compare exactly.
    """
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=datasets.STDLIB_TEXT_VOCABULARY,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        dropout=0.0,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def block_names(lm):
    """Returns the names of the transformer blocks of a KerasHub LM."""
    return [layer.name for layer in lm.backbone.transformer_layers]


def feedback_lm(lm, rule, seed=0):
    """Returns the model that trains `lm` by `rule` (a copy; `lm` itself
    for "bp")."""
    if rule == "bp":
        return lm
    if rule in DIRECT_RULES:
        return keras_fa.direct_feedback(
            lm, rule, seed=seed, taps=block_names(lm)
        )
    # B drawn like each forward kernel (GPT-2's N(0, 0.02)): with Glorot B
    # the error signals of the blocks dwarf the residual stream's, and fa
    # learns several times slower.
    return keras_fa.convert(
        lm, rule, seed=seed, strict=True, feedback_initializer="kernel"
    )


def lm_inputs(tokens):
    """The inputs of a KerasHub causal LM for a batch of token ids."""
    return {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}


def compile_lm(model, learning_rate=3e-3):
    """Compiles `model` for next-character prediction from logits."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def train(model, x, y, steps, batch_size=32, seed=0):
    """Trains a compiled `model` for `steps` random batches; returns the
    loss of every step."""
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        batch = rng.integers(0, len(x), batch_size)
        loss = model.train_on_batch(lm_inputs(x[batch]), y[batch])
        losses.append(float(np.asarray(loss).reshape(-1)[0]))
    return losses


def update_angle(model, x, y, names):
    """Returns the mean update angle (degrees) of the kernels whose path
    starts with one of `names`, or NaN if none is measured."""
    measures = keras_fa.alignment.measure(model, lm_inputs(x), y)
    angles = [
        value
        for key, value in measures.items()
        if key.endswith("/update_angle")
        and any(f"{name}/" in key for name in names)
        and not math.isnan(value)
    ]
    return float(np.mean(angles)) if angles else float("nan")


def run(rules, steps, seed=0):
    """Trains one copy of the LM per rule; returns a row of results each."""
    (x, y), (x_test, y_test) = datasets.load_stdlib_text(SEQUENCE_LENGTH)
    rows = []
    for rule in rules:
        lm = gpt2_lm(seed)
        model = feedback_lm(lm, rule, seed)
        compile_lm(model)
        start = time.perf_counter()
        losses = train(model, x, y, steps, seed=seed)
        seconds = time.perf_counter() - start
        test_loss = model.evaluate(
            lm_inputs(x_test),
            y_test,
            batch_size=64,
            verbose=0,
            return_dict=True,
        )["loss"]
        angle = update_angle(model, x[:32], y[:32], block_names(lm))
        rows.append(
            {
                "rule": rule,
                "first_loss": float(np.mean(losses[:10])),
                "last_loss": float(np.mean(losses[-10:])),
                "perplexity": math.exp(float(test_loss)),
                "update_angle": angle,
                "seconds": seconds,
            }
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default="bp,fa,dfa")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rules = [rule.strip().lower() for rule in args.rules.split(",")]
    allowed = set(keras_fa.models.rules())
    unknown = [rule for rule in rules if rule not in allowed]
    if unknown:
        parser.error(
            f"--rules: unknown {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )
    if args.steps < 10:
        parser.error(f"--steps must be >= 10. Received: {args.steps}")
    rows = run(rules, args.steps, args.seed)
    print(f"KerasHub GPT2CausalLM, {keras.backend.backend()}, {args.steps}")
    print("| rule | loss first 10 | loss last 10 | test perplexity |", end="")
    print(" update angle (deg) | time (s) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['rule']} | {row['first_loss']:.3f} | "
            f"{row['last_loss']:.3f} | {row['perplexity']:.2f} | "
            f"{row['update_angle']:.1f} | {row['seconds']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
