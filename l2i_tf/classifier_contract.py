"""What a classifier must be for the interpreter: a mono waveform in, logits out (no softmax or sigmoid), a fixed
input no shorter than an STFT frame, and tapped layers that exist with maps or sequences (inside nested functional or
Sequential models too: see :func:`flat_classifier`)."""

from __future__ import annotations

import keras

from l2i_tf import audio, nested_models


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


def flat_classifier(classifier: keras.Model, names) -> keras.Model:
    """``classifier`` with the nested models that hold the layers ``names`` (at any depth, with every model on the
    way down to them) re-run layer by layer, so that those layers are its own (see :mod:`l2i_tf.nested_models`);
    ``classifier`` itself when every name is its own layer (or none at all, which :func:`tap_orders` reports).

    Raises :class:`ClassifierContractError` when a name is inside a subclassed nested model, or a nested model that
    is called more than once; when it is also the name of a layer of the classifier, or re-running the nested models
    would give two layers one name; or when it names a nested model that is re-run (it is no layer any more)."""
    own = {layer.name for layer in classifier.layers}
    chosen = []
    for name in names:
        for chain in _chains(classifier, name):
            if name in own:
                if all(nested_models.replayable(model) for model in chain):
                    raise _clash(name, ["", "/".join(model.name for model in chain)], "the name does not say which")
                continue  # inside a subclassed model: not tappable, so the classifier's own layer is meant
            for parent, nested in zip((classifier, *chain), chain):
                _check_rerunnable(parent, nested, name, "/".join(model.name for model in chain))
                if not any(nested is other for other in chosen):
                    chosen.append(nested)
    owners = {}
    for owner, layer in nested_models.flat_layers(classifier, chosen):
        owners.setdefault(layer.name, []).append(owner)
    for name, found in owners.items():
        if len(found) > 1:
            raise _clash(name, found, "tapping inside a nested model re-runs its layers in one graph with unique names")
    for model in chosen:
        if model.name in names:
            last = model
            while any(last is other for other in chosen):  # the layer that makes its output, at any depth
                last = nested_models.graph(last).outputs[0]._keras_history.operation
            raise ClassifierContractError(
                f"{model.name!r} is a nested model whose layers are re-run in the classifier's graph to tap the "
                f"layers inside it, so it is no layer there: tap its last layer {last.name!r} instead"
            )
    return nested_models.flatten(classifier, chosen)


def _chains(model: keras.Model, name: str, outer: tuple = ()):
    """Each chain of nested models (outermost first) down to one that holds a layer ``name`` (not an input layer)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            chain = (*outer, layer)
            if any(inner.name == name and not isinstance(inner, keras.layers.InputLayer) for inner in layer.layers):
                yield chain
            yield from _chains(layer, name, chain)


def _check_rerunnable(parent: keras.Model, nested: keras.Model, name: str, path: str) -> None:
    """Raise :class:`ClassifierContractError` unless ``nested`` can be re-run layer by layer in ``parent``."""
    if not nested_models.replayable(nested) or nested_models.graph(nested) is None:
        raise ClassifierContractError(
            f"{name!r} is inside the nested model {path!r}, whose layers cannot be tapped: {nested.name!r} is a "
            "subclassed model (its call may branch in Python, so it cannot be re-run layer by layer); build it as a "
            "functional or Sequential model (a feature model can be wrapped flat with "
            "l2i_tf.classifier.wrap_feature_model)"
        )
    count = nested_models.calls(parent, nested)
    if count != 1:
        raise ClassifierContractError(
            f"{name!r} is inside the nested model {path!r}, whose layers cannot be tapped: {parent.name!r} calls "
            f"{nested.name!r} {count} times, so each of its layers would have {count} outputs"
        )


def _clash(name: str, owners: list[str], why: str) -> ClassifierContractError:
    """The error for two layers named ``name``, of the classifier (owner ``""``) or inside its nested models (owner:
    the path of nested model names), with a rename that resolves it."""
    where = [f"inside the nested model {owner!r}" if owner else "of the classifier" for owner in owners]
    path = next(owner for owner in owners if owner).split("/")
    rename = "".join(f".get_layer({part!r})" for part in [*path, name])
    return ClassifierContractError(
        f"two layers are named {name!r}, one {where[0]} and one {where[1]}: {why}; rename one, e.g. "
        f"classifier{rename}.name = {f'{path[-1]}_{name}'!r}, and save the classifier again"
    )


def tap_orders(classifier: keras.Model, layers) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolve tapped layer names (``name`` or ``name:order``) and their feature orders; errors list what exists."""
    specs = [parse_layer_spec(spec) for spec in layers]
    flat = flat_classifier(classifier, [name for name, _ in specs])
    names, orders = [], []
    available = [layer.name for layer in flat.layers]
    for name, order in specs:
        if name not in available:
            nested = [layer.name for layer in classifier.layers if isinstance(layer, keras.Model)]
            inside = (
                f" (nor has any of its nested models {', '.join(map(repr, nested))}: list a nested model's layers "
                f"with classifier.get_layer({nested[0]!r}).summary())"
                if nested
                else ""
            )
            raise ClassifierContractError(
                f"the classifier has no layer {name!r}; its layers are: "
                f"{', '.join(layer.name for layer in classifier.layers)}{inside}"
            )
        rank = len(layer_output(flat, name).shape)
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
