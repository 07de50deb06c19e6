"""Re-running nested functional or Sequential models layer by layer in their parent's graph: the flat equivalent of
a classifier that nests its backbone (``waveform -> backbone -> pooling -> Dense``), so that the backbone's own
layers can be tapped by name. The flat model shares the layer objects, hence the weights, with the classifier.

Which nested models to re-run, and what is refused, is the classifier contract's
(:func:`l2i_tf.classifier_contract.flat_classifier`); this module holds the graph mechanics.
"""

from __future__ import annotations

import keras
from keras.src.models.functional import Functional


def replayable(model: keras.Model) -> bool:
    """True for a functional or Sequential model whose ``call`` is Keras's own (it runs the layers one by one); False
    for a subclassed model, whose ``call`` may branch in Python (on ``training``, say)."""
    call = type(model).call
    return (isinstance(model, Functional) and call is Functional.call) or (
        isinstance(model, keras.Sequential) and call is keras.Sequential.call
    )


def graph(model: keras.Model) -> Functional | None:
    """The functional graph that runs ``model``: the model itself, or a built Sequential model's; None for a
    Sequential model without one (a layer whose output shape Keras could not infer)."""
    return getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model


def calls(parent: keras.Model, nested: keras.Model) -> int:
    """How many times ``parent``'s own graph calls ``nested``."""
    nodes = graph(parent)._nodes_by_depth.values()
    return sum(node.operation is nested for depth in nodes for node in depth)


def flat_layers(model: keras.Model, nested) -> list[tuple[str, keras.layers.Layer]]:
    """``(owner, layer)`` for each layer of the flat equivalent of ``model`` in which the models ``nested`` are
    re-run: ``model``'s own layers, the layers of each nested model in its place (not its input layers), at any
    depth, each layer object once. ``owner`` is the nested model's path (``backbone/block1``), ``""`` for
    ``model``'s own layers."""
    seen, found = set(), []
    for owner, layer in _owned_layers(model, nested, ""):
        if id(layer) not in seen:
            seen.add(id(layer))
            found.append((owner, layer))
    return found


def _owned_layers(model: keras.Model, nested, owner: str):
    for layer in model.layers:
        if any(layer is other for other in nested):
            path = f"{owner}/{layer.name}" if owner else layer.name
            inner = _owned_layers(layer, nested, path)
            yield from (item for item in inner if not isinstance(item[1], keras.layers.InputLayer))
        else:
            yield owner, layer


def flatten(model: keras.Model, nested) -> keras.Model:
    """``model`` with each model in ``nested`` (functional or Sequential, each called once by its parent, at any
    depth) re-run layer by layer on its parent's symbolic tensors: each inner layer gets a node in the new graph, so
    the new model, named like ``model``, lists it as its own layer. ``model`` itself when ``nested`` is empty.

    The flat model computes what ``model`` does in inference mode, as the interpreter runs it: a nested call's own
    ``training=False`` is not kept (nor is the interpreter's classifier ever called in training mode)."""
    if not nested:
        return model
    net = graph(model)
    inputs = [keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name) for x in net.inputs]
    inputs = keras.tree.pack_sequence_as(net._inputs_struct, inputs)
    return keras.Model(inputs, _replay(model, inputs, nested), name=model.name)


def _replay(model: keras.Model, inputs, nested):
    """Run ``model``'s graph on the symbolic ``inputs``, re-running each model in ``nested`` it calls the same way
    (``Functional.call`` does this, but for the nested models, which it calls as one layer each; nor does this
    convert the inputs, which would add ``convert_to_tensor`` operations to the graph)."""
    net = graph(model)

    def operation(op):
        if not any(op is other for other in nested):
            return op
        return lambda inputs, *args, **kwargs: _replay(op, inputs, nested)  # training, mask: the flat model's own

    return net._run_through_graph(inputs, operation_fn=operation)
