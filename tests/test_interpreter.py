"""Ψ, Θ, the Interpreter model and the `l2i-tf train` job on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import main
from l2i_tf import audio, classifier, feature_cache, layers, losses, runs, training
from l2i_tf.dictionary import DictionaryMismatchError
from l2i_tf.interpreter import ClassifierContractError, Interpreter, check_classifier, output_squashing, tap_orders
from l2i_tf.layers import FeatureSequences, Psi, Theta

SR = 16000
K = 8
TINY = classifier.DemoConfig(channels=(4, 8, 8, 8))


def _tiny_interpreter(num_classes=3, multilabel=False, **kwargs):
    model = classifier.build_demo_classifier(num_classes, TINY)
    names, orders = tap_orders(model, classifier.DEMO_LAYERS)
    w = np.random.default_rng(0).random((513, K)).astype("float32")
    w /= np.linalg.norm(w, axis=0)
    return Interpreter(
        model, names, orders, K, 513, audio.STFTConfig().to_dict(), multilabel=multilabel, dictionary=w, **kwargs
    )


def _clips(n=4, seconds=0.5, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, int(SR * seconds))) * 0.1).astype("float32")


# ---------------------------------------------------------------- layers


def test_psi_outputs_nonnegative_activations_with_the_frame_count_of_x():
    sequences = FeatureSequences(("btfc", "bftc", "btc"), freq_reduce="flatten")
    psi = Psi(K, hidden=8)
    feats = [tf.random.normal([2, 25, 16, 4]), tf.random.normal([2, 8, 12, 4]), tf.random.normal([2, 7, 5])]
    for frames in (66, 13):
        h = psi([*sequences(feats), tf.zeros([2, frames, 513])])
        assert h.shape == (2, frames, K)
        assert float(tf.reduce_min(h)) >= 0.0


@pytest.mark.parametrize(
    "lengths, frames, kernel_size",
    [((25, 12, 12), 61, 3), ((400,), 61, 3), ((7, 90), 50, 2), ((1,), 5, 5), ((3,), 2, 5)],
)
def test_psi_merges_at_the_branch_rates_what_the_merge_conv_gives_on_resized_branches(lengths, frames, kernel_size):
    """Ψ computes its merge per branch at the branch's own rate and resizes after (or before, for a branch longer
    than T): the same function as the plain Conv1D merge of the resized, concatenated branches."""
    keras.utils.set_random_seed(1)
    psi = Psi(K, hidden=6, kernel_size=kernel_size)
    sequences = [tf.random.normal([2, t, 3 + i]) for i, t in enumerate(lengths)]
    h = psi([*sequences, tf.zeros([2, frames, 17])])
    resized = [
        tf.image.resize(branch(s)[:, :, None, :], [frames, 1], method="bilinear")[:, :, 0, :]
        for s, branch in zip(sequences, psi.branches)
    ]
    plain = tf.nn.relu(psi.to_k(psi.merge(tf.concat(resized, axis=-1))))
    assert float(tf.reduce_max(plain)) > 0.1  # a non-trivial H
    np.testing.assert_allclose(h.numpy(), plain.numpy(), atol=1e-5)


@pytest.mark.parametrize("by_matrix", [True, False], ids=["matrix-gradient", "resize-gradient"])
@pytest.mark.parametrize("length, size", [(1, 5), (3, 2), (25, 61), (400, 61), (125, 313), (2, 1000), (7, 7), (5, 1)])
def test_resize_time_is_tf_image_resize_bilinear_values_and_gradients(length, size, by_matrix, monkeypatch):
    """Ψ's resize along time is tf.image.resize of [batch, t, 1, c] to [size, 1] (bilinear, half-pixel centres) in
    value and gradient, whether the gradient is the interpolation matrix's matmul or, above its limit, TF's own."""
    if not by_matrix:
        monkeypatch.setattr(layers, "RESIZE_MATRIX_LIMIT", 0)
    x = tf.random.stateless_normal([2, length, 3], seed=[length, size])
    weights = tf.random.stateless_normal([2, size, 3], seed=[size, length])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = layers.resize_time(x, tf.constant(size))
        reference = tf.image.resize(x[:, :, None, :], [size, 1], method="bilinear")[:, :, 0, :]
        loss_ours, loss_reference = tf.reduce_sum(ours * weights), tf.reduce_sum(reference * weights)
    assert ours.shape == (2, size, 3)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss_ours, x), tape.gradient(loss_reference, x), rtol=1e-5, atol=1e-5)
    matrix = layers.interpolation_matrix(length, size).numpy()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)  # every output a convex mix of inputs


def test_feature_sequences_reduce_frequency_by_mean_or_flatten():
    x = tf.random.normal([2, 5, 3, 4])  # [batch, time, freq, channels]
    mean, flat = FeatureSequences(("btfc",), "mean")([x])[0], FeatureSequences(("btfc",), "flatten")([x])[0]
    np.testing.assert_allclose(mean, tf.reduce_mean(x, axis=2), rtol=1e-6)
    np.testing.assert_allclose(flat, tf.reshape(x, [2, 5, 12]), rtol=1e-6)
    swapped = FeatureSequences(("bftc",), "mean")([tf.transpose(x, [0, 2, 1, 3])])[0]
    np.testing.assert_allclose(swapped, mean, rtol=1e-6)


def test_feature_sequences_reject_a_map_that_does_not_fit_its_order():
    with pytest.raises(ValueError, match="does not fit order"):
        FeatureSequences(("btc",)).build([(None, 10, 4, 3)])
    with pytest.raises(ValueError, match="feature order"):
        FeatureSequences(("tbfc",))


def test_theta_max_pooling_and_linear_logits_without_bias():
    theta = Theta(3, pooling="max")
    h = tf.constant(np.random.default_rng(1).random((2, 5, K)), tf.float32)
    logits, z, contributions = theta(h)
    np.testing.assert_allclose(z, tf.reduce_max(h, axis=1), rtol=1e-6)
    np.testing.assert_allclose(logits, z.numpy() @ theta.kernel.numpy(), rtol=1e-5)
    np.testing.assert_allclose(contributions.numpy().sum(axis=1), logits, rtol=1e-5)  # relevance decomposes logits
    assert len(theta.weights) == 1  # the kernel only: no bias


def test_theta_attention_pooling_is_a_convex_combination_and_ignores_masked_frames():
    theta = Theta(3, pooling="attention")
    h = np.random.default_rng(2).random((1, 6, K)).astype("float32")
    _, z, _ = theta(h)
    assert np.all(z.numpy() <= h.max(axis=1) + 1e-6) and np.all(z.numpy() >= h.min(axis=1) - 1e-6)
    # Padding a clip with extra frames and masking them gives the same z as the clip alone.
    padded = np.concatenate([h, 100 * np.ones((1, 4, K), "float32")], axis=1)
    mask = np.array([[True] * 6 + [False] * 4])
    np.testing.assert_allclose(theta.pool(padded, mask), z, rtol=1e-5, atol=1e-6)


def test_fidelity_loss_is_minimal_when_interpreter_matches_classifier():
    f = tf.constant([[2.0, 0.0, -1.0]])
    same = losses.fidelity_loss(f, f)
    other = losses.fidelity_loss(f, tf.constant([[0.0, 2.0, -1.0]]))
    entropy = -np.sum(tf.nn.softmax(f).numpy() * np.log(tf.nn.softmax(f).numpy()))
    np.testing.assert_allclose(same, entropy, rtol=1e-5)  # CE(p, p) = H(p)
    assert float(other) > float(same)


# ---------------------------------------------------------------- model


def test_interpreter_handles_any_clip_length():
    model = _tiny_interpreter()
    for n in (8000, 12345, 513):
        out = model(_clips(2, n / SR))
        assert out["activations"].shape == (2, audio.STFTConfig().num_frames(n), K)
        assert out["logits"].shape == (2, 3)


@pytest.fixture(scope="module")
def fitted():
    """A tiny interpreter trained one epoch on ``_clips()`` (Adam, 1e-2), with its frozen weights (the classifier's,
    the dictionary) and Ψ/Θ's weights from before training and the history. Read-only: the tests that use it look."""
    model = _tiny_interpreter()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    frozen = [w.numpy().copy() for w in model.classifier.weights] + [model.decoder.weights[0].numpy().copy()]
    heads = [w.numpy().copy() for w in model.head_variables]
    logs = model.fit(tf.data.Dataset.from_tensor_slices(_clips()).batch(2), epochs=1, verbose=0).history
    return {"model": model, "frozen": frozen, "heads": heads, "logs": logs}


def test_interpreter_keras_round_trip_gives_identical_outputs(fitted, tmp_path):
    model = fitted["model"]  # trained, so its optimizer and weights are not the initial ones
    x = _clips()
    before = model(x)
    model.save(tmp_path / "i.keras")
    loaded = keras.saving.load_model(tmp_path / "i.keras")
    after = loaded(x)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(loaded.decoder.weights[0].numpy(), model.decoder.weights[0].numpy())


def test_training_updates_only_psi_and_theta(fitted):
    model, frozen, heads, logs = fitted["model"], fitted["frozen"], fitted["heads"], fitted["logs"]
    after = [w.numpy() for w in model.classifier.weights] + [model.decoder.weights[0].numpy()]
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(heads, model.head_variables))
    assert {"loss", "fidelity_loss", "reconstruction", "sparsity", "fidelity_top1"} <= set(logs)


def test_precomputed_batches_give_the_same_loss_as_waveforms():
    model = _tiny_interpreter()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _clips()
    pre = model.precompute(x)
    from_waves = model.evaluate(tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=0, return_dict=True)
    from_pre = model.evaluate(tf.data.Dataset.from_tensor_slices(pre).batch(4), verbose=0, return_dict=True)
    for key in ("loss", "reconstruction", "fidelity_loss"):
        np.testing.assert_allclose(from_pre[key], from_waves[key], rtol=1e-4, err_msg=key)


def test_batches_with_spectrograms_from_the_pipeline_give_the_same_terms_as_waveforms():
    """:func:`feature_cache.with_spectrograms` moves the STFTs (the input's, and a training mixture's source's) into
    tf.data: every loss term equals the one the step computes from the waveforms itself."""
    model = _tiny_interpreter(source_weight=2.0)
    x = _clips()
    pre = model.precompute(x)
    pre["source"] = _clips(seed=1)
    pre["source_weight"] = np.array([1, 0, 1, 1], "float32")
    raw = next(iter(tf.data.Dataset.from_tensor_slices(pre).batch(4)))
    batches = tf.data.Dataset.from_tensor_slices(pre).batch(4)
    analysed = next(iter(feature_cache.with_spectrograms(batches, model.stft_config)))
    assert "waveform" not in analysed and "source" not in analysed
    from_waves, _, _ = model._terms(raw, training=False)
    from_pipeline, _, _ = model._terms(analysed, training=False)
    assert set(from_pipeline) == set(from_waves) >= {"loss", "source", "reconstruction", "fidelity_loss"}
    assert float(from_waves["source"]) > 0.01
    for key, value in from_waves.items():
        np.testing.assert_allclose(float(from_pipeline[key]), float(value), rtol=1e-5, err_msg=key)


def test_multilabel_interpreter_tracks_micro_auprc():
    """The tracked value over two batches is the PR-AUC of Θ's sigmoids against f's thresholded sigmoids."""
    keras.utils.set_random_seed(0)
    model = _tiny_interpreter(multilabel=True)
    # Planted classifier biases: class 0 always on, class 1 always off, so the targets hold both values.
    logits_layer = model.classifier.get_layer("logits")
    logits_layer.bias.assign([20.0, -20.0, 0.0])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _clips(8)
    tracked = model.evaluate(tf.data.Dataset.from_tensor_slices(x).batch(4), verbose=0, return_dict=True)
    out = model(x)
    target = (tf.sigmoid(out["classifier_logits"]).numpy() > 0.5).ravel()
    scores = tf.sigmoid(out["logits"]).numpy().ravel()
    assert 0 < target.mean() < 1
    reference = keras.metrics.AUC(curve="PR")
    reference.update_state(target.astype("float32"), scores)
    assert tracked["fidelity_micro_auprc"] == pytest.approx(float(reference.result()), abs=1e-5)


# ---------------------------------------------------------------- bad classifiers and layers


def test_a_classifier_that_takes_features_is_refused_with_a_hint():
    feats = keras.Input((None, 64))
    model = keras.Model(feats, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(feats)))
    with pytest.raises(ClassifierContractError, match="wrap_feature_model"):
        check_classifier(model)


def _pooled_waveform():
    wave = keras.Input((None,))
    return wave, keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((-1, 1))(wave))


@pytest.mark.parametrize(
    "head, squashing",
    [
        (lambda x: keras.layers.Dense(3, activation="softmax", name="out")(x), ("out", "softmax")),
        (lambda x: keras.layers.Softmax(name="out")(keras.layers.Dense(3)(x)), ("out", "softmax")),
        (lambda x: keras.layers.Activation("sigmoid", name="out")(keras.layers.Dense(3)(x)), ("out", "sigmoid")),
        # seen through layers that pass the values on
        (
            lambda x: keras.layers.Identity()(
                keras.layers.Dropout(0.1)(keras.layers.Dense(3, activation="softmax", name="out")(x))
            ),
            ("out", "softmax"),
        ),
        (lambda x: keras.layers.Activation("linear")(keras.layers.Softmax(name="out")(x)), ("out", "softmax")),
        # logits: a linear head, or log-softmax (logits up to a constant per clip)
        (lambda x: keras.layers.Dense(3)(x), None),
        (lambda x: keras.layers.Activation("log_softmax")(keras.layers.Dense(3)(x)), None),
        (lambda x: keras.layers.Dense(3)(keras.layers.Dense(4, activation="softmax")(x)), None),
    ],
)
def test_a_classifier_that_outputs_probabilities_is_refused_naming_the_layer(head, squashing):
    wave, x = _pooled_waveform()
    model = keras.Model(wave, head(x))
    assert output_squashing(model) == squashing
    if squashing is None:
        check_classifier(model)
        return
    with pytest.raises(ClassifierContractError, match=f"layer 'out' applies {squashing[1]}.*needs logits"):
        check_classifier(model)
    # the same head as the last layer of a nested model, or of a Sequential one
    inner = keras.Model(wave, head(x))
    outer_input = keras.Input((None,))
    assert output_squashing(keras.Model(outer_input, inner(outer_input))) == squashing
    sequential = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3), keras.layers.Softmax(name="probs")])
    assert output_squashing(sequential) == ("probs", "softmax")


CUSTOM_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="l2i_test_custom")
class Doubled(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
"""


def test_custom_objects_load_from_the_working_directory_and_failures_name_the_module_or_the_class(
    tmp_path, monkeypatch
):
    import os

    (tmp_path / "l2i_test_layers.py").write_text(CUSTOM_MODULE)
    monkeypatch.chdir(tmp_path)  # the console script's sys.path holds neither "" nor the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "l2i_test_layers", raising=False)
    runs.import_custom_objects("l2i_test_layers")
    wave, x = _pooled_waveform()
    path = tmp_path / "custom.keras"
    keras.Model(wave, keras.layers.Dense(3)(sys.modules["l2i_test_layers"].Doubled(name="doubled")(x))).save(path)
    assert runs.load_classifier(str(path), "l2i_test_layers").get_layer("doubled").__class__.__name__ == "Doubled"

    with pytest.raises(runs.CustomObjectsError, match="module 'l2i_no_such' .*run.json.*No module named"):
        runs.import_custom_objects("l2i_no_such", tmp_path / "run.json")
    monkeypatch.delitem(keras.saving.get_custom_objects(), "l2i_test_custom>Doubled")  # as if never imported
    with pytest.raises(runs.CustomObjectsError, match="custom.keras' holds the class .*Doubled.*--custom-objects"):
        runs.load_classifier(str(path))


def test_a_missing_layer_is_named_with_the_available_ones():
    model = classifier.build_demo_classifier(3, TINY)
    with pytest.raises(ClassifierContractError, match="no layer 'block9'.*block1_conv1"):
        tap_orders(model, ("block9",))
    with pytest.raises(ClassifierContractError, match=r"no layers to tap: .*--layers \(its layers with maps") as e:
        tap_orders(model, ())
    listed = str(e.value).split(": ")[-1].rstrip(")").split(", ")
    assert listed and set(listed) <= {layer.name for layer in model.layers}


def test_a_feature_model_wrapped_with_the_front_end_is_accepted():
    feats = keras.Input((None, 64))
    x = keras.layers.Conv1D(4, 3, padding="same", name="conv")(feats)
    body = keras.Model(feats, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    wrapped = classifier.wrap_feature_model(body, audio.LogMelSpectrogram(SR))
    check_classifier(wrapped)
    assert wrapped(_clips(1)).shape == (1, 3)


# ---------------------------------------------------------------- the train job on tiny data


@pytest.fixture(scope="module")
def tiny_job(tiny_trained):
    """A 3-class data set of tones in the `folders` layout (5 clips a class) and a tiny classifier: the job of
    conftest's ``tiny_trained`` (whose run is that job trained once)."""
    return tiny_trained["config"]


def test_train_writes_a_complete_run_folder(tiny_trained):
    results, folder = tiny_trained["metrics"], tiny_trained["run"]
    for name in ("config.json", "stft.json", "interpreter.keras", "metrics.json", "dictionary", "logs", "checkpoints"):
        assert (folder / name).exists(), name
    assert set(results["test"]) == {"top1", "top3"}
    saved = json.loads((folder / "config.json").read_text())
    assert saved["train"]["class_names"] == ["a", "b", "c"]
    assert saved["environment"]["versions"]["tensorflow"].startswith("2.17")
    run = runs.load_run(folder)
    assert run.interpreter.k == K


def test_train_refuses_a_folder_that_holds_a_run(tiny_job, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(runs.RunFolderError, match="already holds a run"):
        training.train(out, tiny_job)
    assert (out / "config.json").read_text() == "{}"  # untouched


def test_resume_continues_from_the_last_checkpoint(tiny_trained, tmp_path):
    import dataclasses
    import shutil

    job, out = tiny_trained["config"], tmp_path / "run"
    shutil.copytree(tiny_trained["run"], out)  # a copy of the session's trained run: resuming changes it
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == job.epochs
    training.train(out, dataclasses.replace(job, epochs=job.epochs + 1), resume=True)
    assert json.loads((out / "checkpoints" / "state.json").read_text())["epochs_done"] == job.epochs + 1
    # metrics.json: the run's epochs and time over both sessions (the first's up to its last checkpoint)
    results = json.loads((out / "metrics.json").read_text())
    assert results["epochs_run"] == job.epochs + 1 and results["last_session"]["epochs_run"] == 1
    session = results["last_session"]
    assert results["train_seconds"] == pytest.approx(state["seconds"]["train_seconds"] + session["train_seconds"])
    assert results["total_seconds"] == pytest.approx(state["seconds"]["total_seconds"] + session["total_seconds"])


def test_ema_momentum_gives_the_moving_average_a_horizon_of_the_asked_epochs():
    assert training.ema_momentum(2.0, 45) == pytest.approx(1 - 1 / 90)  # 1 / (1 - momentum) = 90 steps
    assert training.ema_momentum(0.5, 2) == 0.0  # one step or less: the average is the weights


class _WeightsRecorder(keras.callbacks.Callback):
    """Ψ/Θ's weights after every training step (the raw ones) and at every epoch's end (what callbacks see)."""

    def __init__(self):
        super().__init__()
        self.steps, self.epoch_ends = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([v.numpy() for v in self.model.head_variables])

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append([v.numpy() for v in self.model.head_variables])


def test_callbacks_and_the_saved_interpreter_get_the_moving_average_of_the_weights(tiny_job, tmp_path):
    import dataclasses

    config, out = dataclasses.replace(tiny_job, epochs=3, ema_epochs=1.5), tmp_path / "run"
    recorder = _WeightsRecorder()
    training.train(out, config, callbacks=[recorder])
    steps = len(recorder.steps) // 3
    momentum = training.ema_momentum(1.5, steps)
    assert json.loads((out / "config.json").read_text())["train"]["ema_epochs"] == 1.5
    average, expected = recorder.steps[0], []  # the average starts at the first step's weights
    for step, weights in enumerate(recorder.steps[1:], start=2):
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights, strict=True)]
        if step % steps == 0:
            expected.append(average)
    for epoch, (seen, want) in enumerate(zip(recorder.epoch_ends, expected, strict=True)):
        for a, b in zip(seen, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"epoch {epoch + 1}")
    last_raw = recorder.steps[-1]
    assert max(float(np.abs(a - b).max()) for a, b in zip(last_raw, expected[-1], strict=True)) > 1e-3
    best = json.loads((out / "checkpoints" / "state.json").read_text())["early_stopping"]["best_epoch"]
    saved = runs.load_keras(out / "interpreter.keras", compile=False).head_variables
    for a, b in zip(saved, expected[best], strict=True):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6)


def test_a_run_recorded_before_the_moving_average_reads_without_it(tiny_trained, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_trained["run"], out)
    recorded = json.loads((out / "config.json").read_text())
    assert runs.read_config(out).ema_epochs == recorded["train"]["ema_epochs"] > 0  # resolved, recorded
    del recorded["train"]["ema_epochs"]
    (out / "config.json").write_text(json.dumps(recorded))
    assert runs.read_config(out).ema_epochs == 0.0


def test_a_negative_ema_horizon_is_refused_naming_it(tiny_job, tmp_path):
    import dataclasses

    with pytest.raises(ValueError, match=r"ema_epochs must be >= 0 \(0: no moving average\), got -1"):
        training.train(tmp_path / "run", dataclasses.replace(tiny_job, ema_epochs=-1.0))
    assert not (tmp_path / "run").exists()  # refused before anything was written: no folder left behind


def test_overwriting_a_run_removes_it_and_what_was_made_from_it_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    made = ["config.json", "metrics.json", "interpreter.keras", "stft.json", "checkpoints/state.json"]
    made += ["dictionary/dictionary.npz", "logs/train/events", "evaluation/report.json", "baselines/flint.keras"]
    made += ["cv/fold1/metrics.json", "cache/features/features.json"]
    mine = ["notes.txt", "listening/clip.wav"]
    for name in made + mine:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    with pytest.raises(runs.RunFolderError, match="already holds a run"):
        runs.prepare(out)
    assert runs.prepare(out, overwrite=True) == out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(mine)
    assert not (out / "evaluation").exists() and not (out / "cv").exists()


def test_a_folder_holding_the_users_own_folders_of_a_run_s_names_is_refused_and_left_alone(tmp_path):
    """A run into the user's folder that holds an ``evaluation/`` or ``logs/`` of theirs would mix with them, and a
    later ``--overwrite`` would remove them with the run: refused, naming them; other files are no obstacle."""
    out = tmp_path / "mine"
    for name in ("evaluation/mine.txt", "logs/mine.txt", "notes.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    with pytest.raises(runs.RunFolderError, match="holds no run but holds 'logs', 'evaluation'") as caught:
        runs.prepare(out, overwrite=True)
    assert caught.value.reason == "clash"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "evaluation/mine.txt",
        "logs/mine.txt",
        "notes.txt",
    ]
    (out / "evaluation" / "mine.txt").unlink()
    (out / "evaluation").rmdir()
    (out / "logs" / "mine.txt").unlink()
    (out / "logs").rmdir()
    assert runs.prepare(out) == out  # the user's other files are no obstacle


def test_a_run_folder_another_job_trains_into_is_refused_and_left_alone(tiny_job, tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / runs.LOCK, "a") as held:  # as a running `l2i-tf train` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(runs.RunFolderError, match="in use by another training job") as caught:
            training.train(out, tiny_job)
        assert caught.value.reason == "busy"
        assert [p.name for p in out.iterdir()] == [runs.LOCK]  # nothing written
    with runs.locked(out):  # released: the next job takes it
        pass


def test_resume_without_a_checkpoint_is_refused(tiny_job, tmp_path):
    with pytest.raises(runs.RunFolderError, match="no checkpoint"):
        training.train(tmp_path / "empty", tiny_job, resume=True)


def test_class_names_whose_count_differs_are_refused(tiny_job, tmp_path):
    import dataclasses

    with pytest.raises(
        training.ClassNamesError, match="2 class names from the class_names setting but the classifier outputs 3"
    ):
        training.train(tmp_path / "run", dataclasses.replace(tiny_job, class_names=("x", "y")))


def test_a_dictionary_with_another_k_is_refused(tiny_trained, tmp_path):
    import dataclasses

    tiny_job = tiny_trained["config"]
    first = tiny_trained["run"] / "dictionary"  # the dictionary of a run of the same job
    with pytest.raises(ValueError) as refused:
        training.train(tmp_path / "second", dataclasses.replace(tiny_job, dictionary=str(first), k=5))
    assert type(refused.value) is DictionaryMismatchError and refused.value.differences == {"k": (K, 5)}
    assert str(refused.value) == f"incompatible with {first}: k: dictionary {K}, given 5"


def test_cli_train_reports_fidelity_and_refuses_an_existing_run(tiny_job, tmp_path):
    args = [
        "train",
        "--classifier",
        tiny_job.classifier,
        "--data",
        tiny_job.data,
        "--layout",
        "folders",
        "--k",
        str(K),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--clip-seconds",
        "0.5",
        "--nmf-iterations",
        "5",
        "--hidden",
        "8",
        "--patience",
        "3",
        "--ema-epochs",
        "0.5",
        "--out",
        str(tmp_path / "run"),
    ]
    runner = CliRunner()
    env = {}
    result = runner.invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "test fidelity: top-1" in result.output
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (recorded["patience"], recorded["ema_epochs"]) == (3, 0.5)
    again = runner.invoke(main, args, env=env)
    assert again.exit_code != 0 and "already holds a run" in again.output
    bad = runner.invoke(main, [*args[:-2], "--out", str(tmp_path / "x"), "--layers", "nope"], env=env)
    assert bad.exit_code != 0 and "no layer 'nope'" in bad.output
    negative = runner.invoke(main, [*args[:-4], "--ema-epochs", "-1", "--out", str(tmp_path / "y")], env=env)
    assert negative.exit_code == 2 and "--ema-epochs" in negative.output and "-1" in negative.output
    assert not (tmp_path / "y").exists()


def test_mirrored_strategy_on_two_cpus_matches_one_device():
    """One optimizer step under MirroredStrategy (2 logical CPUs) equals the same step on one device."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import sys; sys.path.insert(0, "tests")
        from test_interpreter import _tiny_interpreter, _clips
        x = _clips(4)
        def step(strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                m = _tiny_interpreter(psi={"dropout": 0.0})
                m.compile(optimizer=keras.optimizers.SGD(0.1))
            m.fit(tf.data.Dataset.from_tensor_slices(x).batch(4), epochs=1, verbose=0, shuffle=False)
            return [w.numpy() for w in m.head_variables]
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        a = step(mirrored)
        b = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
        print("maxdiff", max(float(np.abs(u - v).max()) for u, v in zip(a, b)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("maxdiff")[1])
    assert diff < 1e-4
