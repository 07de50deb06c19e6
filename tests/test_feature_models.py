"""wrap_feature_model: a feature model wrapped with the front end is one flat classifier whose inner layers can be
tapped, with the feature model's own weights, and the same outputs."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from l2i_tf import audio, classifier, feature_models
from l2i_tf.classifier_contract import ClassifierContractError, check_classifier, layer_output, tap_orders
from l2i_tf.interpreter import Interpreter

MELS = 16


def _front_end(name="front_end"):
    return audio.LogMelSpectrogram(16000, num_mel_bins=MELS, name=name)


def _clips(n=2, samples=4000, seed=0):
    return (0.3 * np.random.default_rng(seed).standard_normal((n, samples))).astype("float32")


def _functional():
    features = keras.Input((None, MELS))
    x = keras.layers.Reshape((-1, MELS, 1), name="reshape")(features)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(features, keras.layers.Dense(3, name="logits")(x), name="body")


def _sequential():
    return keras.Sequential(
        [
            keras.Input((None, MELS)),
            keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.GlobalAveragePooling1D(name="pool"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="body",
    )


def _sequential_without_input():
    """Built by its first call, on a batch of 10 frames: its input keeps that batch's shape."""
    model = keras.Sequential(
        [keras.layers.Conv1D(4, 3, name="conv1"), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]
    )
    model(np.zeros((1, 10, MELS), "float32"))
    return model


def _with_a_channel_axis():
    features = keras.Input((None, MELS, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(features)
    return keras.Model(features, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv1D(4, 3, name="conv1")
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(self.pool(self.conv1(x)))


MODELS = {
    "functional": (_functional, ["waveform", "front_end", "reshape", "conv1", "pool", "logits"], "btfc"),
    "sequential": (_sequential, ["waveform", "front_end", "conv1", "pool", "logits"], "btc"),
    "sequential built by a call": (_sequential_without_input, None, "btc"),
    "channel axis": (_with_a_channel_axis, None, "btfc"),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_wrapped_model_is_flat_with_the_feature_models_layers_and_outputs(kind, tmp_path):
    make, expected_layers, order = MODELS[kind]
    keras.utils.set_random_seed(0)
    body, front_end = make(), _front_end()
    wrapped = classifier.wrap_feature_model(body, front_end)
    if expected_layers:
        assert [layer.name for layer in wrapped.layers] == expected_layers
    assert wrapped.layers[1] is front_end and wrapped.inputs[0].shape[1] is None  # any clip length
    inner = [layer for layer in body.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert all(any(layer is mine for mine in wrapped.layers) for layer in inner)  # the same layer objects
    x = _clips()
    np.testing.assert_allclose(wrapped(x).numpy(), body(front_end(x)).numpy(), atol=1e-6)
    check_classifier(wrapped)
    assert tap_orders(wrapped, ["conv1"]) == (("conv1",), (order,))

    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in wrapped.layers]
    np.testing.assert_allclose(loaded(x).numpy(), wrapped(x).numpy(), atol=1e-6)


def test_the_wrapped_model_shares_the_feature_models_weights():
    body = _functional()
    wrapped = classifier.wrap_feature_model(body, _front_end())
    assert wrapped.get_layer("conv1").kernel is body.get_layer("conv1").kernel
    kernel = body.get_layer("conv1").kernel
    kernel.assign(kernel.numpy() + 1.0)  # a change to the feature model is a change to the wrapped one
    x = _clips()
    np.testing.assert_allclose(wrapped(x).numpy(), body(wrapped.get_layer("front_end")(x)).numpy(), atol=1e-6)
    assert len(wrapped.trainable_weights) == len(body.trainable_weights)


def test_a_tapped_inner_layer_is_read_in_the_wrapped_models_own_graph():
    """The feature model's layers are called twice (in it and in the wrapped model): the interpreter's extractor
    reads the wrapped model's call, not the first one (which would disconnect its graph)."""
    wrapped = classifier.wrap_feature_model(_functional(), _front_end())
    tapped = layer_output(wrapped, "conv1")
    assert tapped is not wrapped.get_layer("conv1").output  # the first call is the feature model's
    extractor = keras.Model(wrapped.inputs[0], tapped)
    assert extractor(_clips(1, 1600)).shape == (1, 12, MELS, 4)  # ceil((1600 + 400 - 160) / 160) frames
    w = np.random.default_rng(0).random((257, 4)).astype("float32")
    stft = audio.STFTConfig(16000, 400, 160, 512, "hann").to_dict()
    interpreter = Interpreter(wrapped, ("conv1",), ("btfc",), 4, 257, stft, dictionary=w)
    assert interpreter(_clips(1, 8000))["logits"].shape == (1, 3)


def test_a_feature_model_with_fixed_frames_gets_a_waveform_of_the_samples_that_make_them():
    features = keras.Input((24, MELS))
    x = keras.layers.Conv1D(4, 3, name="conv1")(features)
    body = keras.Model(features, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    front_end = _front_end()
    wrapped = classifier.wrap_feature_model(body, front_end)
    # ceil((samples + 400 - 160) / 160) = 24 frames for 3441..3600 samples: the longest is taken.
    assert wrapped.inputs[0].shape[1] == 3600
    x = _clips(samples=3600)
    np.testing.assert_allclose(wrapped(x).numpy(), body(front_end(x)).numpy(), atol=1e-6)
    assert classifier.wrap_feature_model(body, _front_end(), samples=3500).inputs[0].shape[1] == 3500
    with pytest.raises(
        ValueError, match="3700 samples make 25 frames with the front end, but the feature model takes 24"
    ):
        classifier.wrap_feature_model(body, _front_end(), samples=3700)


def test_front_end_features_that_do_not_fit_the_feature_model_are_refused():
    features = keras.Input((None, 64, 1))
    body = keras.Model(features, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features)))
    with pytest.raises(
        ValueError, match=r"shape \(None, 16, 1\) .* does not fit the feature model's input \(None, 64, 1\)"
    ):
        classifier.wrap_feature_model(body, _front_end())


@pytest.mark.parametrize("clash", ["front_end", "waveform"])
def test_a_feature_layer_named_like_a_layer_the_wrapper_adds_is_refused(clash):
    features = keras.Input((None, MELS))
    x = keras.layers.Conv1D(4, 3, name=clash)(features)
    body = keras.Model(features, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    with pytest.raises(ValueError, match=f"the feature model has a layer named '{clash}', like a layer the wrapper"):
        classifier.wrap_feature_model(body, _front_end())
    renamed = classifier.wrap_feature_model(body, _front_end("log_mel")) if clash == "front_end" else None
    assert renamed is None or tap_orders(renamed, [clash]) == ((clash,), ("btc",))


def test_a_subclassed_feature_model_is_nested_with_a_warning_and_its_layers_are_named_as_untappable(caplog):
    body = _Subclassed(name="sub")
    body(np.zeros((1, 10, MELS), "float32"))
    with caplog.at_level(logging.WARNING, logger=feature_models.__name__):
        wrapped = classifier.wrap_feature_model(body, _front_end())
    assert "'sub' is a subclassed model: it is nested as one layer, so its inner layers cannot be tapped" in caplog.text
    assert [layer.name for layer in wrapped.layers] == ["waveform", "front_end", "sub"]
    x = _clips()
    np.testing.assert_allclose(wrapped(x).numpy(), body(wrapped.layers[1](x)).numpy(), atol=1e-6)
    with pytest.raises(ClassifierContractError, match="'conv1' is inside the nested model 'sub', whose layers cannot"):
        tap_orders(wrapped, ["conv1"])
