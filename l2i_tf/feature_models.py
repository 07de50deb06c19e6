"""Wrapping a model that takes features (e.g. log-mel) into the waveform -> logits classifier the interpreter needs.

The wrapped model is flat: its layers are the waveform input, the front end, then the feature model's own layers
(the same layer objects, so the weights are shared), so each of them can be tapped by name with ``--layers``.
"""

from __future__ import annotations

import logging

import keras

from l2i_tf.nested_models import replayable

log = logging.getLogger(__name__)

WAVEFORM = "waveform"
CHANNEL_AXIS = "feature_channel_axis"


def wrap_feature_model(
    feature_model: keras.Model, front_end: keras.layers.Layer, name: str = "wrapped", samples: int | None = None
) -> keras.Model:
    """Make a waveform -> logits classifier from a model that takes features (e.g. log-mel).

    A functional or Sequential ``feature_model`` is re-run on the front end's output, so the result is one flat
    model: ``waveform``, the front end, then the feature model's own layers (not copies: the weights are shared),
    each of which can be tapped with ``--layers``. A feature input with a channel axis ``[time, freq, 1]`` gets a
    reshape layer ``feature_channel_axis`` after the front end. A feature input with a fixed number of frames
    makes a fixed-length waveform input of ``samples``, by default the longest clip that gives that many frames
    with the front end's ``frame_length`` and ``frame_step`` (a front end without them needs ``samples``).

    A model nested in the feature model (a backbone) stays nested here: a tapped layer inside it is reached by
    re-running it flat too (:func:`l2i_tf.classifier_contract.flat_classifier`, when the interpreter is made).

    A subclassed feature model is nested as one layer, with a warning: its ``call`` may branch in Python (on
    ``training``, say), so it cannot be re-run faithfully layer by layer, and its inner layers cannot be tapped.

    Raises:
        ValueError: the feature model has several inputs, a layer of it is named ``waveform``, like the front end or
            ``feature_channel_axis``, or the front end's features do not fit its input.
    """
    feature_shape = _feature_input_shape(feature_model)
    waveform = keras.Input(shape=(_waveform_samples(feature_shape, front_end, samples),), name=WAVEFORM)
    if not replayable(feature_model):
        log.warning(
            "the feature model %r is a subclassed model: it is nested as one layer, so its inner layers cannot be "
            "tapped with --layers (rebuild it as a functional or Sequential model to tap them)",
            feature_model.name,
        )
        _check_names([feature_model.name], front_end)
        return keras.Model(waveform, feature_model(front_end(waveform)), name=name)
    _check_names(
        [layer.name for layer in feature_model.layers if not isinstance(layer, keras.layers.InputLayer)], front_end
    )
    features = _fit_features(front_end(waveform), feature_shape)
    # Functional.call and Sequential.call run the model's layers one by one on the symbolic features: each
    # layer gets a node in the new graph, so the new model lists them as its own layers.
    return keras.Model(waveform, feature_model.call(features), name=name)


def _feature_input_shape(feature_model: keras.Model) -> tuple | None:
    """The feature input's shape without the batch axis; None if unknown (an unbuilt or subclassed model). The time
    axis of a model whose input has a fixed batch size (a Sequential model built by calling it) is free."""
    try:
        inputs = feature_model.inputs
    except AttributeError:  # a Sequential model without an input yet, or a subclassed model
        return None
    if inputs is None:
        return None
    if len(inputs) != 1:
        raise ValueError(f"the feature model must take one input (the features), not {len(inputs)}")
    batch, *shape = inputs[0].shape
    if batch is not None and shape:  # a Sequential model built by a first call: its frames are that batch's
        shape[0] = None
    return tuple(shape)


def _waveform_samples(feature_shape: tuple | None, front_end: keras.layers.Layer, samples: int | None) -> int | None:
    """The waveform input's length: ``samples``, else the one a fixed number of feature frames needs, else None."""
    frames = feature_shape[0] if feature_shape else None
    length, step = getattr(front_end, "frame_length", None), getattr(front_end, "frame_step", None)
    framed = isinstance(length, int) and isinstance(step, int)
    if samples is not None:
        if frames is not None and framed and -(-(samples + length - step) // step) != frames:
            raise ValueError(
                f"{samples} samples make {-(-(samples + length - step) // step)} frames with the front end, but the "
                f"feature model takes {frames}"
            )
        return samples
    if frames is None:
        return None
    if not framed:
        raise ValueError(
            f"the feature model takes a fixed {frames} frames: pass samples= (the waveform length that makes them)"
        )
    longest = frames * step - (length - step)  # frames = ceil((samples + length - step) / step)
    if longest < 1:
        raise ValueError(f"no waveform makes as few as {frames} frames with the front end")
    log.info("the feature model takes %d frames: the waveform input is fixed at %d samples", frames, longest)
    return longest


def _check_names(inner_names: list[str], front_end: keras.layers.Layer) -> None:
    """Raise ValueError if a feature-model layer would share its name with a layer the wrapper adds."""
    for clash in sorted(set(inner_names) & {WAVEFORM, front_end.name, CHANNEL_AXIS}):
        hint = "give the front end another name= " if clash == front_end.name else "rename that layer "
        raise ValueError(
            f"the feature model has a layer named {clash!r}, like a layer the wrapper adds; {hint}(layer names "
            "must be unique to tap them)"
        )


def _fit_features(features, feature_shape: tuple | None):
    """The front end's ``features``, with a channel axis if the feature model's input has one; ValueError if they
    cannot fit that input."""
    if feature_shape is None:
        return features
    got = tuple(features.shape[1:])
    if len(feature_shape) == len(got) + 1 and feature_shape[-1] == 1:
        target = tuple(
            have if have is not None else -1 if want is None else want for want, have in zip(feature_shape, got)
        )
        if target.count(-1) <= 1:
            features = keras.layers.Reshape((*target, 1), name=CHANNEL_AXIS)(features)
            got = tuple(features.shape[1:])
    fits = len(got) == len(feature_shape) and all(
        have is None or want is None or have == want for have, want in zip(got, feature_shape)
    )
    if not fits:
        raise ValueError(
            f"the front end's features have shape {got} (after the batch axis), which does not fit the feature "
            f"model's input {feature_shape}"
        )
    return features
