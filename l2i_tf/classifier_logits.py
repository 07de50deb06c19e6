"""A classifier that outputs probabilities, read at its logits.

Most Keras classifiers end in a softmax (or, multi-label, a sigmoid): a ``Dense(..., activation="softmax")``, a
``Softmax`` or an ``Activation`` layer. The interpreter needs the logits before it (Θ imitates them, and the
explanation's decision is theirs). :func:`with_logits` gives the same model read one step earlier: the same input and
layers, whose output is what the squashing layer squashes. Softmax probabilities are the softmax of those logits, so
the decisions and probabilities an explanation reports are the classifier's own.
"""

from __future__ import annotations

import keras

from l2i_tf.classifier_contract import output_squashing, pass_through

LOGITS_SUFFIX = "_logits"


def with_logits(model: keras.Model) -> tuple[keras.Model, str | None]:
    """``(model, None)`` if ``model`` outputs logits; else ``(a model of its logits, a note saying so)``.

    The squashing is found as :func:`~l2i_tf.classifier_contract.output_squashing` finds it. A ``Softmax`` layer or
    an ``Activation`` one is skipped: the output is its input. A layer with a softmax or sigmoid ``activation``
    (``Dense``, a convolution...) is replaced at the output by a linear twin, ``<name>_logits`` (or ``..._2``... if
    that name is taken), made from its
    config and holding a copy of its weights. Layers after it that pass values on unchanged (dropout, reshapes...)
    are applied again on the logits.

    Raises:
        ValueError: the squashing is inside a nested model (rebuild the classifier flat, or remove the activation).
    """
    found = output_squashing(model)
    if found is None:
        return model, None
    name, kind = found
    path = _path_to_squashing(model)
    if path is None:
        raise ValueError(
            f"the classifier's output is {kind} probabilities, made inside the nested model that holds layer "
            f"{name!r}: remove the activation (the interpreter needs logits), or build the classifier flat"
        )
    squashing, squashed, after = path
    if _is_squashing_layer(squashing):
        logits = squashed
    else:
        taken = {layer.name for layer in model.layers}
        logits = _linear_twin(squashing, squashed, _free_name(squashing.name + LOGITS_SUFFIX, taken))(squashed)
    for layer in after:  # dropout, reshapes...: as the model applied them
        logits = layer(logits)
    note = (
        f"the classifier outputs {kind} probabilities (its layer {name!r} applies {kind}): the interpreter reads the "
        "logits before it, whose " + ("softmax is" if kind == "softmax" else "sigmoid is") + " the classifier's output"
    )
    return keras.Model(model.inputs, logits, name=model.name + LOGITS_SUFFIX), note


def _path_to_squashing(model: keras.Model):
    """``(squashing layer, its input tensor, the pass-through layers after it in order)``, walking back from the
    output as :func:`output_squashing` does; None if the squashing is in a nested model."""
    tensor, after = model.outputs[0], []
    for _ in range(len(model.layers) + 1):
        history = tensor._keras_history
        layer = history.operation
        inputs = layer._inbound_nodes[history.node_index].input_tensors
        if isinstance(layer, keras.Model):
            return None
        if not pass_through(layer):
            return layer, inputs[0], after[::-1]
        after.append(layer)
        tensor = inputs[0]
    return None


def _is_squashing_layer(layer) -> bool:
    """A ``Softmax`` layer, or an ``Activation`` layer: nothing but the squashing (no weights)."""
    return isinstance(layer, (keras.layers.Softmax, keras.layers.Activation))


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... the first not in ``taken``."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _linear_twin(layer, inputs, name: str) -> keras.layers.Layer:
    """A copy of ``layer`` named ``name`` without its activation: the same class and config (``activation="linear"``),
    built for ``inputs`` (the tensor ``layer`` squashes) and holding a copy of its weights (frozen, as the classifier
    is)."""
    config = {**layer.get_config(), "activation": "linear", "name": name}
    twin = type(layer).from_config(config)
    twin.build(inputs.shape)
    twin.set_weights(layer.get_weights())
    twin.trainable = False
    return twin
