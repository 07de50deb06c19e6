"""The Explainer graph against l2i_tf.explain's math: batches vs clips, lengths, components, silence, tracing, plots."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2i_tf import audio, classifier, explain, timeline
from l2i_tf.explainer import ExplainConfig, Explainer
from l2i_tf.interpreter import Interpreter, tap_orders

K = 8
CLASSES = ("a", "b", "c")


def _interpreter(seed=0, **kwargs) -> Interpreter:
    keras.utils.set_random_seed(seed)
    model = classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(4, 8, 8, 8)))
    names, orders = tap_orders(model, classifier.DEMO_LAYERS)
    w = np.random.default_rng(seed).random((513, K)).astype("float32")
    w /= np.linalg.norm(w, axis=0)
    stft = audio.STFTConfig().to_dict()
    return Interpreter(model, names, orders, K, 513, stft, psi={"hidden": 8}, dictionary=w, **kwargs)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(_interpreter(), CLASSES, ExplainConfig(threshold=0.0, top_n=3, max_seconds=0))


def _clips(n, samples, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal((n, samples))).astype("float32")


def test_outputs_match_the_math_of_explain_step_by_step(explainer):
    x = _clips(2, 6000)
    out = explainer.explain(x, [-1, 2], 0.0, components=True)
    f = explainer.interpreter(x)
    target = [int(np.argmax(f["classifier_logits"][0])), 2]
    relevance = explain.relevance(f["pooled"], explainer.interpreter.theta.kernel, target)
    selected = explain.select(relevance, 0.0, top_n=3)
    X, phase = audio.analyze(x, explainer.stft_config)
    W, H = explainer.dictionary, f["activations"]
    expected = explain.interpret(X, phase, W, H, selected, 6000, explainer.stft_config, explainer.config.domain)
    assert out["target_class"].numpy().tolist() == target
    np.testing.assert_allclose(out["relevance"], relevance, atol=1e-6)
    np.testing.assert_array_equal(out["selected"], selected)
    np.testing.assert_allclose(out["interpretation"], expected, atol=1e-5)


@pytest.mark.parametrize("domain", ["linear", "log1p"])
def test_component_audio_equals_one_component_interpretations(domain):
    explainer = Explainer(_interpreter(), CLASSES, ExplainConfig(threshold=0.0, top_n=3, domain=domain))
    x = _clips(2, 4000, seed=1)
    out = explainer.explain(x, components=True)
    f = explainer.interpreter(x)
    X, phase = audio.analyze(x, explainer.stft_config)
    indices = out["component_indices"].numpy()
    assert out["component_audio"].shape == (2, 3, 4000)
    for n in range(3):
        one = np.eye(K, dtype=bool)[indices[:, n]]
        expected = explain.interpret(
            X, phase, explainer.dictionary, f["activations"], one, 4000, explainer.stft_config, domain
        )
        np.testing.assert_allclose(out["component_audio"][:, n], expected, atol=1e-5)


def test_a_batch_equals_its_clips_one_by_one_for_several_lengths(explainer):
    for samples in (3000, 3333):
        x = _clips(3, samples, seed=samples)
        batch = explainer.explain(x, components=True)
        assert batch["interpretation"].shape == (3, samples)
        assert np.all(batch["selected"].numpy().sum(1) <= 3)
        for b in range(3):
            alone = explainer.explain(x[b : b + 1], components=True)
            for key, value in batch.items():
                if value.dtype == tf.string:
                    assert value[b] == alone[key][0]
                else:
                    np.testing.assert_allclose(
                        np.asarray(value[b], "float32"), np.asarray(alone[key][0], "float32"), atol=1e-5, err_msg=key
                    )


@pytest.mark.parametrize(
    ("tau", "message"),
    [
        (
            1.5,
            "threshold 1.5 is outside [-1, 1], the range of relevance (components with relevance > τ are selected): "
            "no component would ever be selected",
        ),
        (
            -2.0,
            "threshold -2 is outside [-1, 1], the range of relevance (components with relevance > τ are selected): "
            "every component would be selected",
        ),
        (float("nan"), "threshold nan is not a number"),
        ("0.3", "threshold '0.3' is not a number"),
    ],
)
def test_explain_config_refuses_a_threshold_outside_relevance_range_naming_it(tau, message):
    with pytest.raises(ValueError) as error:
        ExplainConfig(threshold=tau)
    assert str(error.value) == message


@pytest.mark.parametrize("tau", [-1.0, -1, 0, 0.3, np.float32(0.5), 1.0])
def test_explain_config_takes_thresholds_in_relevance_range_up_to_its_edges(tau):
    assert ExplainConfig(threshold=tau).threshold == tau


def test_evaluation_settings_refuse_a_threshold_outside_relevance_range():
    from l2i_tf.evaluate import EvalConfig

    for field in ("thresholds", "multilabel_thresholds", "mixture_thresholds"):
        with pytest.raises(ValueError, match=r"threshold 1\.2 is outside \[-1, 1\]"):
            EvalConfig(**{field: (0.3, 1.2)})
    assert EvalConfig(thresholds=(-1.0, 1.0)).thresholds == (-1.0, 1.0)


def test_unknown_batch_sizes_and_lengths_trace_once(explainer):
    for batch, samples in ((2, 2500), (3, 4100), (1, 700)):
        out = explainer.explain(_clips(batch, samples))
        assert out["interpretation"].shape == (batch, samples)
    assert explainer.calls.serve.experimental_get_tracing_count() == 1


def test_silence_gives_zero_relevance_no_selection_and_silent_audio(explainer):
    out = explainer.explain(np.zeros((2, 2000), "float32"), threshold=-2.0, components=True)
    np.testing.assert_array_equal(out["relevance"].numpy(), 0)
    assert not out["selected"].numpy().any() and not out["component_selected"].numpy().any()
    assert np.all(out["interpretation"].numpy() == 0) and np.all(out["component_audio"].numpy() == 0)


def test_every_component_selected_gives_back_the_input_in_the_linear_domain():
    interp = _interpreter()
    # H > 0 in every frame (Ψ's last layer outputs a constant 1), so H·Wᵀ >> ε and every soft mask sums to 1.
    interp.psi.to_k.kernel.assign(np.zeros(interp.psi.to_k.kernel.shape, "float32"))
    interp.psi.to_k.bias.assign(np.ones(interp.psi.to_k.bias.shape, "float32"))
    explainer = Explainer(interp, CLASSES, ExplainConfig(top_n=0, domain="linear"))
    x = _clips(2, 5000, seed=3)
    out = explainer.explain(x, threshold=-2.0)  # a graph input: below relevance's range, every component
    assert out["selected"].numpy().all()
    np.testing.assert_allclose(out["interpretation"], x, atol=1e-4)


def test_a_fixed_length_classifier_explains_the_whole_recording_in_windows(tmp_path):
    wave = keras.Input((8000,))
    logits = keras.layers.Dense(3, name="logits")(
        keras.layers.Dense(4, name="hidden")(keras.layers.Reshape((80, 100))(wave))
    )
    model = keras.Model(wave, keras.layers.GlobalAveragePooling1D()(logits))
    names, orders = tap_orders(model, ("hidden",))
    stft = audio.STFTConfig()
    w = np.random.default_rng(0).random((513, K)).astype("float32")
    interp = Interpreter(model, names, orders, K, 513, stft.to_dict(), psi={"hidden": 8}, dictionary=w)
    assert interp.clip_samples == 8000
    explainer = Explainer(interp, CLASSES, ExplainConfig(top_n=0))
    for samples in (5000, 8000, 12000):  # padded, exact, two windows; the output keeps the length
        out = explainer.explain(_clips(1, samples), threshold=-2.0)
        assert out["interpretation"].shape == (1, samples)
    np.testing.assert_array_equal(out["window_start"], [[0, 4000]])
    np.testing.assert_array_equal(out["window_end"], [[8000, 12000]])
    # the recording's class explained in each window by the one-window graph, overlap-added
    x = _clips(1, 12000)
    windows = np.stack([x[0, :8000], x[0, 4000:]])
    logits = explainer.interpreter(windows)["classifier_logits"].numpy()
    target = np.full(2, np.argmax(logits.mean(axis=0)), "int32")
    each = explainer({"waveform": windows, "target_class": target, "threshold": np.full(2, -2.0, "float32")})
    expected = timeline.overlap_add(each["interpretation"][None], 4000, 12000)
    np.testing.assert_allclose(explainer.explain(x, threshold=-2.0)["interpretation"], expected, atol=1e-5)
    assert np.abs(expected.numpy()[0, 8000:]).max() > 0  # past the classifier's input too


def test_the_graph_shows_the_whole_data_flow(explainer):
    names = {layer.name for layer in explainer.layers}
    assert {"guard", "prepare", "extractor", "analysis", "feature_sequences", "heads", "target", "relevance"} <= names
    assert {"selection", "decoder", "synthesis", "fit_length", "class_probabilities"} <= names
    lines = []
    explainer.summary(print_fn=lines.append, expand_nested=True)
    text = "\n".join(lines)
    for layer_type in ("(Psi)", "(Theta)", "(NMFDecoder)", "(MaskedSynthesis)", "(Selection)", "(Relevance)"):
        assert layer_type in text, layer_type


def graph_ops(graph_def) -> dict:
    """``{op type: count}`` over a graph and every function in its library (while bodies, map_fn, nested calls)."""
    counts = {}
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_the_explanation_graph_makes_one_stft_per_window_and_one_classifier_pass(explainer):
    spec = (tf.TensorSpec([None, None]), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None]))
    serve = graph_ops(explainer.calls.serve.get_concrete_function(*spec).graph.as_graph_def())
    explain_ = graph_ops(explainer.calls.explain.get_concrete_function(*spec).graph.as_graph_def())
    classify = graph_ops(explainer.calls.classify.get_concrete_function(spec[0]).graph.as_graph_def())
    assert classify["RFFT"] == 1  # the demo classifier's log-mel front end
    # + the explanation's one STFT: the first pass makes none, the synthesis masks the one it makes
    assert serve["RFFT"] == explain_["RFFT"] == 2
    assert serve["IRFFT"] == 1 and explain_["IRFFT"] == 2  # the interpretation (+ the top-N components at once)
    psi_convs = len(explainer.interpreter.psi.branches) + 1  # branches, to_k (the merge is matrix products)
    assert serve["Conv2D"] == explain_["Conv2D"] == classify["Conv2D"] + psi_convs  # the classifier runs once
