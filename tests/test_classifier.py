"""The demo classifier: architecture contract, .keras round trip, sidecar, and a tiny smoke training."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import soundfile
import tensorflow as tf

from l2i_tf import classifier, tables
from l2i_tf.classifier import ClassifierInfo, DemoConfig

TINY = DemoConfig(num_mel_bins=32, channels=(4, 8, 8, 8))


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return classifier.build_demo_classifier(3, TINY)


def waves(batch: int, samples: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((batch, samples))).astype("float32")


@pytest.mark.parametrize("samples", [8000, 12345, 300], ids=["0.5s", "odd-length", "shorter-than-min-frames"])
def test_demo_classifier_takes_any_clip_length_and_returns_logits(tiny_model, samples):
    x = waves(3, samples)
    x[0] *= 0.01  # a quiet clip: its lowest log-mel value is far below the others'
    logits = tiny_model(x, training=False).numpy()
    assert logits.shape == (3, 3) and np.all(np.isfinite(logits))
    # Logits: the output is the `logits` Dense layer's affine map of the pooled features, with nothing after it.
    dense = tiny_model.get_layer("logits")
    assert tiny_model.layers[-1] is dense and dense.activation is keras.activations.linear
    pooled = keras.Model(tiny_model.input, dense.input)(x, training=False).numpy()
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(logits, pooled @ kernel + bias, rtol=1e-5, atol=1e-7)
    assert np.abs(logits.sum(axis=1) - 1.0).min() > 0.5  # not softmax probabilities
    # A clip's logits do not depend on the batch it is in (inference BatchNorm, per-clip padding).
    for i in range(3):
        np.testing.assert_allclose(tiny_model(x[i : i + 1], training=False).numpy()[0], logits[i], rtol=1e-4, atol=1e-8)


def test_min_frames_pads_each_clip_with_its_own_lowest_value():
    x = np.array([[[1.0], [2.0]], [[-5.0], [3.0]]], "float32")  # [batch 2, time 2, 1]
    padded = classifier.MinFrames(4)(x).numpy()
    np.testing.assert_array_equal(padded[:, :, 0], [[1.0, 2.0, 1.0, 1.0], [-5.0, 3.0, -5.0, -5.0]])
    long_enough = np.arange(10, dtype="float32").reshape(1, 5, 2)
    np.testing.assert_array_equal(classifier.MinFrames(4)(long_enough).numpy(), long_enough)


def test_min_frames_pads_time_only_and_keeps_the_static_shape_in_a_graph():
    """Unknown channels after MinFrames would send the next Conv2D through XLA (Keras' grouped-convolution route)."""
    layer = classifier.MinFrames(4)
    pad = tf.function(layer.call, input_signature=[tf.TensorSpec([None, None, 3, 1])])
    assert pad.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 3, 1]
    x = np.arange(2 * 2 * 3, dtype="float32").reshape(2, 2, 3, 1) - 5
    out = pad(x).numpy()
    assert out.shape == (2, 4, 3, 1)
    np.testing.assert_array_equal(out[:, :2], x)
    # Each clip is padded with its own lowest value (clip 0: -5, clip 1: 1), not the batch's.
    np.testing.assert_array_equal(out[0, 2:], np.full((2, 3, 1), -5.0))
    np.testing.assert_array_equal(out[1, 2:], np.full((2, 3, 1), 1.0))
    assert pad(np.ones((1, 6, 3, 1), "float32")).shape == (1, 6, 3, 1)  # long enough: unchanged


def test_demo_classifier_has_the_named_layers_to_tap(tiny_model):
    names = {layer.name for layer in tiny_model.layers}
    for i in range(1, 5):
        assert {f"block{i}_conv1", f"block{i}_conv2", f"block{i}_relu"} <= names
    assert {"block1_pool", "block2_pool", "block3_pool", "logits"} <= names
    assert "block4_pool" not in names
    for name in classifier.DEMO_LAYERS:
        assert len(tiny_model.get_layer(name).output.shape) == 4  # [batch, time, freq, channels]
    assert tiny_model.get_layer("block4_relu").output.shape[-1] == TINY.channels[-1]


def test_demo_classifier_survives_keras_save_and_load(tiny_model, tmp_path):
    x = waves(2, 9000, seed=1)
    expected = tiny_model(x, training=False).numpy()
    tiny_model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")  # no custom_objects: the layers are registered
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)


def test_classifier_info_sidecar_round_trips(tiny_model, tmp_path):
    info = ClassifierInfo(
        class_names=("dog", "rain", "siren"),
        sample_rate=16000,
        multilabel=True,
        layers=classifier.DEMO_LAYERS,
        clip_samples=80000,
        metrics={"test_accuracy": 0.5},
    )
    assert ClassifierInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    path = tmp_path / "runs" / "clf.keras"
    classifier.save_classifier(tiny_model, info, path)
    assert classifier.sidecar_path(path) == tmp_path / "runs" / "clf.json"
    assert classifier.load_info(path) == info
    assert classifier.load_info(tmp_path / "missing.keras") is None


def test_classifier_info_ignores_unknown_sidecar_fields():
    info = ClassifierInfo.from_dict({"class_names": ["a", "b"], "written_by": "a newer version"})
    assert info == ClassifierInfo(class_names=("a", "b"))


def test_wrap_feature_model_makes_a_waveform_classifier():
    features = keras.Input(shape=(None, 16))
    feature_model = keras.Model(features, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(features)))
    from l2i_tf.audio import LogMelSpectrogram

    wrapped = classifier.wrap_feature_model(feature_model, LogMelSpectrogram(num_mel_bins=16))
    assert wrapped(waves(2, 3000)).shape == (2, 4)


def test_training_folds_smaller_than_one_batch_are_refused_naming_the_count(tmp_path, make_folders_dataset):
    from l2i_tf.data import AudioDataError

    root = make_folders_dataset(tmp_path / "set", classes=("low", "high"), clips_per_class=5, seconds=0.5)
    config = DemoConfig(num_mel_bins=16, channels=(4, 4, 4, 4), clip_seconds=0.5, epochs=1, batch_size=16)
    with pytest.raises(AudioDataError, match=r"the training folds hold 6 clips, fewer than one batch of 16"):
        classifier.train_demo_classifier(tmp_path / "c.keras", config, table=tables.folders_table(root))
    assert not (tmp_path / "c.keras").exists()


@pytest.mark.parametrize("multilabel", [False, True], ids=["multiclass", "multilabel"])
def test_tiny_demo_training_writes_model_sidecar_and_metrics(tmp_path, make_folders_dataset, multilabel):
    classes = ("low", "mid", "high") if multilabel else ("low", "high")
    root = make_folders_dataset(tmp_path / "set", classes=classes, clips_per_class=10, seconds=1.0)
    table = tables.folders_table(root)
    config = DemoConfig(
        num_mel_bins=32,
        channels=(4, 8, 8, 8),
        clip_seconds=1.0,
        crop_seconds=0.5,
        epochs=2,
        batch_size=4,
        multilabel=multilabel,
        mixtures_per_epoch=16,
    )
    out = tmp_path / "runs" / "tiny.keras"
    metrics = classifier.train_demo_classifier(out, config, table=table, cache_dir=tmp_path / "cache")

    metric = "macro_auprc" if multilabel else "accuracy"
    assert {f"validation_{metric}", f"test_{metric}", "train_seconds", "epochs", "seed", "splits"} <= set(metrics)
    assert 0.0 <= metrics[f"test_{metric}"] <= 1.0
    assert metrics["epochs"] == 2
    info = classifier.load_info(out)
    assert info.class_names == tuple(sorted(classes)) and info.multilabel == multilabel
    assert info.layers == classifier.DEMO_LAYERS and info.metrics[f"test_{metric}"] == metrics[f"test_{metric}"]
    model = keras.saving.load_model(out)
    assert model(waves(2, 16000), training=False).shape == (2, len(classes))


def test_typical_seconds_is_the_95th_percentile_of_the_clip_durations(tmp_path):
    from run_fixture import noise, write

    from l2i_tf import data

    seconds = [0.1 * (i + 1) for i in range(20)]  # 0.1 .. 2.0 s, at two rates
    infos = [data.probe(str(write(tmp_path / f"{i}.wav", noise(int(s * 8000)), 8000))) for i, s in enumerate(seconds)]
    infos += [data.probe(str(write(tmp_path / "long.wav", noise(3 * 22050), 22050)))]
    assert data.typical_seconds(infos) == pytest.approx(np.percentile([*seconds, 3.0], 95), abs=1e-4)
    assert data.typical_seconds(infos, 50) == pytest.approx(1.1, abs=1e-4)


def test_train_classifier_on_sub_second_clips_pads_them_to_their_typical_length(tmp_path):
    from run_fixture import invoke, write

    rng = np.random.default_rng(0)
    for c, freq in enumerate((500.0, 1500.0)):
        for i in range(8):
            n = int(8000 * rng.uniform(0.3, 0.9))
            t = np.arange(n) / 8000
            write(
                tmp_path / "data" / f"c{c}" / f"{i}.wav", (0.4 * np.sin(2 * np.pi * freq * t)).astype("float32"), 8000
            )
    out = tmp_path / "clf.keras"
    args = ["train-classifier", "--data", tmp_path / "data", "--layout", "folders", "--sample-rate", 8000]
    result = invoke(*args, "--epochs", 1, "--batch-size", 4, "--out", out)
    assert result.exit_code == 0, result.output
    durations = [len(soundfile.read(p)[0]) / 8000 for p in sorted((tmp_path / "data").rglob("*.wav"))]
    expected = round(float(np.percentile(durations, 95)), 3)
    assert f"clip length: {expected:g} s (95th percentile of the 16 clips' durations)" in result.output
    info = classifier.load_info(out)
    assert info.sample_rate == 8000
    assert info.metrics["clip_seconds"] == expected and info.metrics["crop_seconds"] == expected  # crop <= clip
    explicit = invoke(*args, "--epochs", 1, "--batch-size", 4, "--clip-seconds", 0.5, "--out", tmp_path / "b.keras")
    assert explicit.exit_code == 0 and "clip length" not in explicit.output, explicit.output
    assert classifier.load_info(tmp_path / "b.keras").metrics["clip_seconds"] == 0.5
    bad = invoke(*args, "--clip-seconds", 0, "--out", tmp_path / "c.keras")
    assert bad.exit_code == 2 and "--clip-seconds" in bad.output


def test_train_classifier_caps_its_default_clip_length_at_the_explainers_window(tmp_path, monkeypatch):
    from run_fixture import invoke, noise, write

    from l2i_tf import timeline

    for i in range(41):  # 4 of 41 clips are a minute long: their 95th percentile is 60 s
        seconds = 60.0 if i % 10 == 9 else 0.5
        write(tmp_path / "data" / f"c{i % 2}" / f"{i}.wav", 0.01 * noise(int(seconds * 8000), seed=i), 8000)
    seen = []
    monkeypatch.setattr(
        classifier, "train_demo_classifier", lambda out, config, **kw: seen.append(config) or {"test_accuracy": 0.5}
    )
    args = ["train-classifier", "--data", tmp_path / "data", "--layout", "folders", "--sample-rate", 8000]
    result = invoke(*args, "--out", tmp_path / "clf.keras")
    assert result.exit_code == 0, result.output
    assert classifier.LONGEST_DEFAULT_CLIP_SECONDS == timeline.WHOLE_CLIP_SECONDS == 10
    assert seen[-1].clip_seconds == 10
    assert (
        "clip length: 10 s (the 95th percentile of the 41 clips' durations, 60 s, capped: longer recordings are "
        "explained in 10 s windows)" in result.output
    )
    explicit = invoke(*args, "--clip-seconds", 30, "--out", tmp_path / "clf.keras")
    assert explicit.exit_code == 0 and "clip length" not in explicit.output, explicit.output
    assert seen[-1].clip_seconds == 30  # as given


def test_train_classifier_with_a_fixed_input_scores_windows_of_every_clip(tmp_path):
    from run_fixture import invoke, write

    rng = np.random.default_rng(0)
    for c, freq in enumerate((500.0, 3000.0)):
        for i in range(5):  # one clip per fold and class
            t = np.arange(int(0.5 * 44100)) / 44100
            clip = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
            write(tmp_path / "data" / f"c{c}" / f"{i}.wav", clip.astype("float32"), 44100)
    args = ["train-classifier", "--data", tmp_path / "data", "--layout", "folders", "--sample-rate", 44100]
    out = tmp_path / "fixed.keras"
    result = invoke(*args, "--fixed-seconds", 0.2, "--epochs", 1, "--batch-size", 2, "--out", out)
    assert result.exit_code == 0, result.output
    info = classifier.load_info(out)
    assert info.sample_rate == 44100 and info.clip_samples == 8820
    assert info.metrics["fixed_seconds"] == 0.2
    # 0.5 s clips, 0.2 s windows, hop 0.1 s: starts 0, 0.1, 0.2 and 0.3 s (the last ends at the clip's end)
    assert info.metrics["windows"] == {"validation": {"clips": 2, "windows": 8}, "test": {"clips": 2, "windows": 8}}
    assert 0.0 <= info.metrics["test_clip_accuracy"] <= 1.0
    model = keras.saving.load_model(out)
    assert tuple(model.inputs[0].shape) == (None, 8820)
    assert model(waves(3, 8820), training=False).shape == (3, 2)
    bad = invoke(*args, "--fixed-seconds", 0.00001, "--out", tmp_path / "bad.keras")
    assert_bad = "fixed_seconds=1e-05 is 0 samples at 44100 Hz; a fixed input needs at least 2"
    assert bad.exit_code == 2 and "--fixed-seconds" in bad.output and assert_bad in bad.output, bad.output
