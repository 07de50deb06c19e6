"""What a classifier must be for the interpreter: a mono waveform in, logits out (no softmax or sigmoid), a fixed
input no shorter than an STFT frame, and tapped layers that exist with maps or sequences."""

from __future__ import annotations

import keras

from l2i_tf import audio


class ClassifierContractError(ValueError):
    """A classifier that is not waveform -> logits, or a tapped layer that does not exist."""


def check_classifier(classifier: keras.Model) -> None:
    """Raise :class:`ClassifierContractError` unless ``classifier`` maps a mono waveform to logits."""
    if not isinstance(classifier, keras.Model) or len(classifier.inputs) != 1 or len(classifier.outputs) != 1:
        raise ClassifierContractError("the classifier must be a Keras model with one input and one output")
    shape = tuple(classifier.inputs[0].shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1):
        raise ClassifierContractError(
            f"the classifier's input must be a mono waveform [batch, samples] or [batch, samples, 1], got {shape}; "
            "wrap a feature model with l2i_tf.classifier.wrap_feature_model"
        )
    out = tuple(classifier.outputs[0].shape)
    if len(out) != 2 or out[1] is None:
        raise ClassifierContractError(f"the classifier's output must be logits [batch, classes], got shape {out}")
    squashing = output_squashing(classifier)
    if squashing is not None:
        layer, name = squashing
        raise ClassifierContractError(
            f"the classifier's output is {name} probabilities (its layer {layer!r} applies {name}); the interpreter "
            "needs logits (remove the activation, or read the model at its logits with "
            "l2i_tf.classifier_logits.with_logits, as l2i-tf train does)"
        )


_PASS_THROUGH = (
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.ActivityRegularization,
)


def pass_through(layer) -> bool:
    """Whether ``layer`` passes values on unchanged: identity, dropout, reshapes, a linear ``Activation``."""
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return isinstance(layer, _PASS_THROUGH) or (isinstance(layer, keras.layers.Activation) and name == "linear")


def output_squashing(model: keras.Model) -> tuple[str, str] | None:
    """``(layer name, "softmax" | "sigmoid")`` if ``model``'s output is made by a softmax or sigmoid — a layer's
    activation, an ``Activation`` or ``Softmax`` layer, in a nested model too — seen through the layers that pass
    values on unchanged (identity, dropout, reshapes, a linear activation); None otherwise."""
    tensor = model.outputs[0]
    for _ in range(len(model.layers) + 1):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer = history.operation
        if isinstance(layer, keras.Model) and len(layer.outputs) == 1:
            return output_squashing(layer)
        if isinstance(layer, keras.layers.Softmax):
            return layer.name, "softmax"
        name = getattr(getattr(layer, "activation", None), "__name__", "")
        if name in ("softmax", "sigmoid"):
            return layer.name, name
        if not pass_through(layer):
            return None
        inputs = layer._inbound_nodes[history.node_index].input_tensors
        if len(inputs) != 1:
            return None
        tensor = inputs[0]
    return None


def check_input_length(clip_samples: int | None, stft: audio.STFTConfig) -> None:
    """Raise :class:`ClassifierContractError` if a fixed input of ``clip_samples`` is shorter than one STFT frame
    (the interpreter's spectrogram would hold no whole frame); None (any length) passes."""
    if clip_samples is not None and clip_samples < stft.frame_length:
        raise ClassifierContractError(
            f"the classifier's fixed input is {clip_samples} samples, shorter than one STFT frame of "
            f"{stft.frame_length} samples ({stft.frame_length / stft.sample_rate * 1000:g} ms at {stft.sample_rate} "
            "Hz); use a shorter --frame-length or a classifier with a longer input"
        )


def parse_layer_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:order"`` -> (name, order or None)."""
    name, _, order = spec.partition(":")
    return name, order or None


def layer_output(model: keras.Model, name: str):
    """The output of ``model``'s layer ``name`` in ``model``'s own graph. ``layer.output`` is the output of the
    layer's first call, which may be in another model: a flat wrapped feature model shares the feature model's
    layers (see :mod:`l2i_tf.feature_models`)."""
    layer = model.get_layer(name)
    if len(layer._inbound_nodes) <= 1:
        return layer.output
    seen, tensors = set(), list(model.outputs)
    while tensors:  # back from the outputs, to the node of the layer that this graph runs
        history = tensors.pop()._keras_history
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in seen:
            continue
        seen.add(id(node))
        if history.operation is layer:
            outputs = node.output_tensors
            return outputs[0] if len(outputs) == 1 else outputs
        tensors.extend(node.input_tensors)
    return layer.output


def _output_rank(model: keras.Model, layer) -> int | None:
    try:
        return len(layer_output(model, layer.name).shape)
    except (AttributeError, ValueError):  # a layer used several times, or never called
        return None


def _nested_owner(model: keras.Model, name: str) -> str | None:
    """The name of the model nested in ``model`` (at any depth) that holds a layer ``name``; None if none does."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if name in [inner.name for inner in layer.layers] or _nested_owner(layer, name):
                return layer.name
    return None


def tap_orders(classifier: keras.Model, layers) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolve tapped layer names (``name`` or ``name:order``) and their feature orders; errors list what exists."""
    names, orders = [], []
    available = [layer.name for layer in classifier.layers]
    for spec in layers:
        name, order = parse_layer_spec(spec)
        if name not in available:
            owner = _nested_owner(classifier, name)
            nested = (
                f" ({name!r} is inside the nested model {owner!r}, whose layers cannot be tapped: build the "
                "classifier flat, e.g. a functional or Sequential feature model wrapped with "
                "l2i_tf.classifier.wrap_feature_model)"
                if owner
                else ""
            )
            raise ClassifierContractError(
                f"the classifier has no layer {name!r}; its layers are: {', '.join(available)}{nested}"
            )
        rank = len(layer_output(classifier, name).shape)
        if rank not in (3, 4):
            raise ClassifierContractError(
                f"layer {name!r} outputs rank {rank}; Ψ reads [batch, time, channels] or 4-D conv maps"
            )
        order = order or ("btfc" if rank == 4 else "btc")
        if (order == "btc") != (rank == 3):
            raise ClassifierContractError(f"layer {name!r} has rank {rank}, which does not fit order {order!r}")
        names.append(name)
        orders.append(order)
    if not names:
        tappable = [layer.name for layer in classifier.layers if _output_rank(classifier, layer) in (3, 4)]
        example = f" (its layers with maps or sequences: {', '.join(tappable[-6:])})" if tappable else ""
        raise ClassifierContractError(f"no layers to tap: name at least one with --layers{example}")
    return tuple(names), tuple(orders)
