"""A classifier that outputs softmax or sigmoid probabilities is read at its logits (l2i_tf.classifier_logits)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from l2i_tf.classifier_contract import check_classifier, output_squashing
from l2i_tf.classifier_logits import with_logits

X = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")


def _features():
    wave = keras.Input((64,))
    return wave, keras.layers.Dense(6, activation="relu", name="hidden")(wave)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


HEADS = {
    "dense softmax": (lambda x: keras.layers.Dense(3, activation="softmax", name="probs")(x), _softmax),
    "Softmax layer": (lambda x: keras.layers.Softmax(name="probs")(keras.layers.Dense(3, name="z")(x)), _softmax),
    "sigmoid Activation": (
        lambda x: keras.layers.Activation("sigmoid", name="probs")(keras.layers.Dense(3, name="z")(x)),
        _sigmoid,
    ),
    "dense softmax, then dropout and a reshape": (
        lambda x: keras.layers.Reshape((3,), name="flat")(
            keras.layers.Dropout(0.5, name="drop")(keras.layers.Dense(3, activation="softmax", name="probs")(x))
        ),
        _softmax,
    ),
}


@pytest.mark.parametrize("head", HEADS)
def test_the_logits_model_gives_the_classifier_s_probabilities_and_passes_the_contract(head, tmp_path):
    make, squash = HEADS[head]
    wave, x = _features()
    model = keras.Model(wave, make(x))
    logits_model, note = with_logits(model)
    assert note is not None and "layer 'probs' applies" in note
    assert output_squashing(logits_model) is None
    check_classifier(logits_model)
    logits = logits_model.predict(X, verbose=0)
    np.testing.assert_allclose(squash(logits), model.predict(X, verbose=0), atol=1e-6)
    assert not np.allclose(logits, model.predict(X, verbose=0), atol=1e-3)  # logits, not the probabilities
    assert logits_model.get_layer("hidden") is model.get_layer("hidden")  # the classifier's own layers
    logits_model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(X, verbose=0), logits, atol=1e-6)


def test_a_logits_classifier_is_returned_as_it_is():
    wave, x = _features()
    model = keras.Model(wave, keras.layers.Dense(3)(x))
    assert with_logits(model) == (model, None)


def test_the_twin_s_name_is_made_unique():
    wave, x = _features()
    taken = keras.layers.Dense(3, name="probs_logits")(x)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.Concatenate()([x, taken]))
    logits_model, _ = with_logits(keras.Model(wave, probs))
    assert logits_model.layers[-1].name == "probs_logits_2"


def test_a_softmax_inside_a_nested_model_is_refused_naming_it():
    wave, x = _features()
    inner = keras.Model(wave, keras.layers.Dense(3, activation="softmax", name="probs")(x), name="inner")
    outer_input = keras.Input((64,))
    with pytest.raises(ValueError, match="nested model that holds layer 'probs'.*remove the activation"):
        with_logits(keras.Model(outer_input, inner(outer_input)))
