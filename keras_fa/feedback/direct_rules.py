"""The direct rules: the output error goes straight to every hidden layer.

They are not `FeedbackRule`s (no layer runs them): `keras_fa.direct_feedback`
and the `feedback=` of `keras_fa.models` take them by name, and they live in
the one rule namespace (`keras_fa.feedback.names("direct")`), so no name is
both a layer-wise and a direct rule.
"""

from keras_fa.feedback.base import register_direct

DFA = register_direct(
    "dfa",
    "direct feedback alignment (Nokland, 2016): hidden layer l receives "
    "the output error through a fixed random B_l",
)
DRTP = register_direct(
    "drtp",
    "direct random target projection (Frenkel et al., 2021): hidden layer "
    "l receives the one-hot target through a fixed random B_l",
)
SHALLOW = register_direct(
    "shallow",
    "the control: only the output layer learns; hidden layers receive "
    "nothing",
)
