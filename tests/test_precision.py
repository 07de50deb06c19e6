"""Mixed precision: the classifier in float16/bfloat16 (float32 weights), Ψ, Θ, the loss and the outputs in float32;
on CPU it runs and matches float32 within a stated tolerance, trains, saves and exports."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import main
from l2i_tf import audio, classifier, runs
from l2i_tf.explainer import ExplainConfig, Explainer
from l2i_tf.interpreter import Interpreter, tap_orders, with_precision

K = 8
# Largest difference from float32, as a share of the largest float32 value of each output: float16 keeps 11
# significant bits, bfloat16 8 (relative rounding 2^-11 and 2^-8 per operation, over a few conv layers).
TOLERANCE = {"mixed_float16": 0.01, "mixed_bfloat16": 0.05}


def _interpreter() -> Interpreter:
    keras.utils.set_random_seed(0)
    model = classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(8, 16, 16, 16)))
    names, orders = tap_orders(model, classifier.DEMO_LAYERS)
    w = np.random.default_rng(0).random((513, K)).astype("float32")
    w /= np.linalg.norm(w, axis=0)
    return Interpreter(model, names, orders, K, 513, audio.STFTConfig().to_dict(), psi={"hidden": 8}, dictionary=w)


def _clips(n=4, samples=16000, seed=1):
    return (0.1 * np.random.default_rng(seed).standard_normal((n, samples))).astype("float32")


@pytest.mark.parametrize("precision", sorted(TOLERANCE))
def test_mixed_precision_matches_float32_within_the_stated_tolerance(precision):
    reference = _interpreter()
    mixed = with_precision(reference, precision)
    low = "float16" if precision == "mixed_float16" else "bfloat16"
    assert mixed.extractor.get_layer("block1_conv1").compute_dtype == low
    assert all(v.dtype == "float32" for v in mixed.head_variables + mixed.extractor.weights)
    x = _clips()
    a, b = reference(x), mixed(x)
    for key in ("classifier_logits", "logits", "activations", "contributions"):
        assert b[key].dtype == tf.float32, key
        scale = float(np.max(np.abs(a[key])))
        assert float(np.max(np.abs(a[key] - b[key]))) <= TOLERANCE[precision] * scale, key
    assert float(np.max(np.abs(a[key] - b[key]))) > 0  # the classifier really computed in low precision


def test_a_wrapped_feature_model_computes_in_mixed_precision():
    """The wrapper's call on symbolic features adds a convert_to_tensor operation to the graph: it stays float32
    (its dtype is a type, not a policy), the layers compute in float16."""
    keras.utils.set_random_seed(0)
    features = keras.Input((None, 16))
    x = keras.layers.Conv1D(4, 3, padding="same", name="conv1")(features)
    body = keras.Model(features, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    wrapped = classifier.wrap_feature_model(body, audio.LogMelSpectrogram(16000, num_mel_bins=16))
    w = np.random.default_rng(0).random((513, K)).astype("float32")
    interpreter = Interpreter(wrapped, ("conv1",), ("btc",), K, 513, audio.STFTConfig().to_dict(), dictionary=w)
    mixed = with_precision(interpreter, "mixed_float16")
    assert mixed.extractor.get_layer("conv1").compute_dtype == "float16"
    x = _clips(2)
    reference = wrapped(x).numpy()
    low = mixed(x)["classifier_logits"].numpy()
    assert np.abs(low - reference).max() <= TOLERANCE["mixed_float16"] * np.abs(reference).max()


def test_a_mixed_precision_interpreter_trains_saves_and_loads(tmp_path):
    interpreter = with_precision(_interpreter(), "mixed_bfloat16")
    interpreter.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _clips(8)
    history = interpreter.fit(x, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    interpreter.save(tmp_path / "interpreter.keras")
    loaded = runs.load_keras(tmp_path / "interpreter.keras", True, compile=False)
    assert loaded.precision == "mixed_bfloat16"
    np.testing.assert_allclose(loaded(x)["logits"], interpreter(x)["logits"], atol=1e-6)


def test_export_mixed_precision_flag_writes_a_savedmodel_that_matches_the_library(tiny_run, tmp_path):
    run = tiny_run  # conftest's: run_fixture.make_run's tiny run, read only (the export goes to tmp_path)
    out = tmp_path / "savedmodels"
    flags = ["--out", str(out), "--max-seconds", "0", "--threshold", "0", "--mixed-precision", "bfloat16"]
    result = CliRunner().invoke(main, ["export", str(run), *flags])
    assert result.exit_code == 0, result.output
    path = out / "l2i" / "1"
    assert json.loads((path / "assets.extra" / "l2i_tf.json").read_text())["precision"] == "mixed_bfloat16"
    loaded = runs.load_run(run)
    explainer = Explainer(
        with_precision(loaded.interpreter, "mixed_bfloat16"), loaded.class_names, ExplainConfig(0.0, max_seconds=0)
    )
    x = _clips(2, 8000)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](waveform=tf.constant(x))
    library = explainer.explain(x)
    for key in ("interpretation", "class_probabilities", "relevance"):
        np.testing.assert_allclose(served[key], library[key], atol=1e-4, err_msg=key)
