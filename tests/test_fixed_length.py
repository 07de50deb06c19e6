"""A third-party fixed-length classifier: 44.1 kHz, a 2 s input, its own front-end layer (--custom-objects), 50
classes while the data holds 3, conv maps [batch, time, mel, channels], a sidecar. `l2i-tf train` cuts every clip
into windows of the input's length; `l2i-tf evaluate` scores the same windows; a too-short input is refused."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from run_fixture import K, assert_clean_error, invoke, write_wav

from l2i_tf import data, evaluate, mixtures, runs, tables, training, windows
from l2i_tf.interpreter import ClassifierContractError

RATE = 44100
WINDOW = 2 * RATE  # the classifier's fixed input: 88200 samples
CLIP_SECONDS = 5.0  # the recordings: windows start at 0, 1, 2 and 3 s
CLASSES = tuple(f"sound_{i:02d}" for i in range(50))
DATA_CLASSES = ("sound_03", "sound_17", "sound_42")  # the data holds 3 of the 50
MODULE = "l2i_thirdparty_frontend"  # the user's module, written into tmp_path
TRAIN = ["--k", K, "--nmf-iterations", 3, "--hidden", 8, "--epochs", 1, "--batch-size", 8]

FRONT_END = '''
"""A third party's log-mel front end (not l2i_tf's)."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="l2i_thirdparty")
class FrontEnd(keras.layers.Layer):
    """Waveform [batch, samples] -> log-mel [batch, frames, mel_bins]."""

    def __init__(self, sample_rate=44100, frame_length=2048, frame_step=1024, mel_bins=16, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate, self.frame_length = sample_rate, frame_length
        self.frame_step, self.mel_bins = frame_step, mel_bins

    def call(self, waveform):
        spectrum = tf.abs(tf.signal.stft(waveform, self.frame_length, self.frame_step))
        mel = tf.signal.linear_to_mel_weight_matrix(
            self.mel_bins, self.frame_length // 2 + 1, self.sample_rate, 50.0, self.sample_rate / 2
        )
        return tf.math.log(tf.tensordot(spectrum, mel, 1) + 1e-6)

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else 1 + (input_shape[1] - self.frame_length) // self.frame_step
        return (input_shape[0], frames, self.mel_bins)

    def get_config(self):
        return {
            **super().get_config(),
            "sample_rate": self.sample_rate,
            "frame_length": self.frame_length,
            "frame_step": self.frame_step,
            "mel_bins": self.mel_bins,
        }
'''


def import_front_end(folder):
    """Write the user's module into ``folder``, put it on the import path (as PYTHONPATH would) and import it."""
    import importlib

    (folder / f"{MODULE}.py").write_text(textwrap.dedent(FRONT_END))
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(MODULE)


def write_classifier(path, samples: int, front_end_module):
    """The third party's model: fixed input of ``samples`` at 44.1 kHz, 50 logits, conv maps [b, time, mel, ch];
    untrained (seed 0), saved with a sidecar (class names, 44100 Hz, the tapped layers with their order)."""
    import keras

    from l2i_tf import classifier

    keras.utils.set_random_seed(0)
    waveform = keras.Input((samples,), name="audio")
    x = front_end_module.FrontEnd(name="front_end")(waveform)
    x = keras.layers.Reshape((-1, 16, 1), name="to_maps")(x)  # [batch, time, mel, 1]
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(waveform, keras.layers.Dense(len(CLASSES), name="logits")(x), name="third_party")
    info = classifier.ClassifierInfo(CLASSES, RATE, False, ("conv1:btfc", "conv2:btfc"), clip_samples=samples)
    classifier.save_classifier(model, info, path)
    return path


def write_data(root, per_class: int = 5, seconds: float = CLIP_SECONDS):
    """A `folders` data set of 3 classes (5 clips each: one per fold) of tones recorded at 44.1 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    for name, freq in zip(DATA_CLASSES, (440, 1200, 3000), strict=True):
        for i in range(per_class):
            x = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.01 * rng.standard_normal(len(t))
            write_wav(root / name / f"{i}.wav", x.astype("float32"), RATE, "FLOAT")
    return root


@pytest.fixture(scope="module")
def fixed_job(tmp_path_factory):
    """The third party's classifier, its data, and `l2i-tf train` on them with only the user's own flags.

    Returns ``{"root", "classifier", "data", "run", "module", "result"}``; reusable (explain/export on the run).
    """
    root = tmp_path_factory.mktemp("fixed")
    module = import_front_end(root)
    model = write_classifier(root / "third_party.keras", WINDOW, module)
    data = write_data(root / "data")
    run = root / "run"
    args = ["--classifier", model, "--custom-objects", MODULE, "--data", data, "--layout", "folders"]
    result = invoke("train", *args, *TRAIN, "--out", run)
    assert result.exit_code == 0, result.output
    return {"root": root, "classifier": model, "data": data, "run": run, "module": MODULE, "result": result}


def test_train_cuts_every_clip_into_windows_of_the_fixed_input(fixed_job):
    metrics = json.loads((fixed_job["run"] / "metrics.json").read_text())
    # 5 s clips, 2 s windows, hop 1 s: 4 windows a clip; folds 1-3 train (9 clips), 4 validates, 5 tests (3 each)
    assert metrics["windows"] == {
        "samples": WINDOW,
        "seconds": 2.0,
        "train": {"clips": 9, "windows": 36},
        "validation": {"clips": 3, "windows": 12},
        "test": {"clips": 3, "windows": 12},
    }
    assert metrics["epochs_done"] == 1 and set(metrics["test"]) >= {"top1", "top3", "top5"}
    assert 0.0 <= metrics["test"]["top1"] <= 1.0
    assert "test fidelity: top-1" in fixed_job["result"].output


def test_train_takes_rate_classes_and_layers_from_the_sidecar(fixed_job):
    run = fixed_job["run"]
    assert json.loads((run / "stft.json").read_text())["sample_rate"] == RATE
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["sample_rate"] is None and config["custom_objects"] == MODULE
    assert config["layers"] == ["conv1:btfc", "conv2:btfc"]
    assert tuple(config["class_names"]) == CLASSES  # 50, from the sidecar, though the data holds 3
    loaded = runs.load_run(run)
    assert loaded.interpreter.clip_samples == WINDOW and loaded.interpreter.orders == ("btfc", "btfc")


def test_evaluation_scores_the_same_windows(fixed_job):
    config = runs.TrainConfig(data=str(fixed_job["data"]), layout="folders", clip_seconds=1.0)
    td = evaluate.test_data(config, RATE, CLASSES, window=WINDOW)
    assert td["windows"] == {"clips": 3, "windows": 12}
    waves, labels = td["evaluation"]
    assert waves.shape == (12, WINDOW) and labels.tolist() == [3] * 4 + [17] * 4 + [42] * 4  # the classifier's indices
    whole, _ = evaluate.test_data(config, RATE, CLASSES)["clips"]
    assert whole.shape == (3, RATE)  # without a fixed input: padded/cropped to clip_seconds
    np.testing.assert_array_equal(waves[3, :RATE], waves[2, RATE:])  # hop 1 s: the windows overlap by half
    np.testing.assert_array_equal(waves[0, :RATE], whole[0])  # the first window starts at the clip's start


def test_a_multilabel_runs_test_mixtures_streamed_equal_the_in_memory_ones(fixed_job):
    """A multi-label run on single-label data scores the test mixtures training scored: streamed from a clip file,
    they equal the ones made from the split in memory, and so do their windows for a fixed-length classifier."""
    config = runs.TrainConfig(
        data=str(fixed_job["data"]), layout="folders", clip_seconds=3.0, multilabel=True, mixtures=24
    )
    table = tables.load_table(config.data, config.layout).in_classes(CLASSES).with_folds(config.test_folds)
    clips, labels = data.load_waveforms(table, RATE, 3 * RATE)
    split = mixtures.split_mixtures([None, None, (clips, labels)], len(CLASSES), 24, config.seed, config.mixture_snr_db)
    expected = split[2]
    td = evaluate.test_data(config, RATE, CLASSES)
    assert td["windows"] is None and len(td["evaluation"][0]) == 6  # a quarter of 24
    for got, want in zip((*td["clips"], *td["evaluation"]), (clips, labels, *expected), strict=True):
        np.testing.assert_array_equal(got, want)
    windowed = evaluate.test_data(config, RATE, CLASSES, window=WINDOW)
    mixture_windows, clip_windows = windows.cut(*expected, WINDOW), windows.cut(clips, labels, WINDOW)
    assert windowed["windows"] == mixture_windows.counts() == {"clips": 6, "windows": 12}  # 3 s: windows at 0, 1 s
    np.testing.assert_array_equal(windowed["evaluation"][0], mixture_windows.waves)
    np.testing.assert_array_equal(windowed["evaluation"][1], mixture_windows.labels)
    np.testing.assert_array_equal(windowed["clips"][0], clip_windows.waves)
    np.testing.assert_array_equal(windowed["clips"][1], clip_windows.labels)


def test_evaluate_scores_a_classifier_of_50_classes_on_data_of_3(fixed_job, tmp_path):
    """`l2i-tf evaluate` reads the data's 3 classes as the classifier's indices 3, 17 and 42 (mixtures of two of
    them), and scores the windows training scored."""
    result = invoke("evaluate", fixed_job["run"], "--quick", "--mixtures", 2, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["test_windows"] == {"clips": 3, "windows": 12} and len(report["class_names"]) == 50
    assert "## Mixtures" in result.output


def test_report_mixes_the_data_classes_under_the_classifiers_names(fixed_job):
    from l2i_tf import report_mixtures

    paths, labels = report_mixtures.labelled_clips(fixed_job["run"], CLASSES)
    assert sorted(set(labels.tolist())) == [3, 17, 42] and len(paths) == 3
    assert all(Path(p).parent.name == CLASSES[c] for p, c in zip(paths, labels, strict=True))


def test_a_fixed_input_shorter_than_one_stft_frame_is_refused_naming_both(fixed_job, tmp_path):
    import importlib

    model = write_classifier(tmp_path / "short.keras", 2048, importlib.import_module(MODULE))  # 4096-sample frames
    args = ["--classifier", model, "--custom-objects", MODULE, "--data", fixed_job["data"], "--layout", "folders"]
    result = invoke("train", *args, *TRAIN, "--out", tmp_path / "run")
    assert_clean_error(result, 2, "fixed input is 2048 samples", "one STFT frame of 4096 samples", "--classifier")
    assert not (tmp_path / "run" / "dictionary").exists()  # refused before any work
    config = runs.TrainConfig(classifier=str(model), custom_objects=MODULE, data=str(fixed_job["data"]))
    with pytest.raises(ClassifierContractError, match="2048 samples, shorter than one STFT frame of 4096"):
        training.train(tmp_path / "lib", config)


def test_explain_and_export_cover_the_whole_clip_in_windows(fixed_job, tmp_path):
    """The 2 s classifier explains a 5 s clip whole: 4 windows (0, 1, 2, 3 s), an interpretation as long as the
    clip with sound after 2 s; the export does the same in-graph."""
    import soundfile

    clip = next((fixed_job["data"] / DATA_CLASSES[1]).glob("*.wav"))
    result = invoke("explain", fixed_job["run"], clip, "--threshold", -1, "--out", tmp_path / "run_out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run_out" / "explanation.json").read_text())
    assert [w["start"] for w in report["timeline"]] == [0.0, 1.0, 2.0, 3.0]
    audio, rate = soundfile.read(tmp_path / "run_out" / "interpretation.wav")
    assert rate == RATE and len(audio) == int(CLIP_SECONDS * RATE)
    assert np.abs(audio[3 * RATE :]).max() > 0  # explained past the classifier's 2 s
    result = invoke("export", fixed_job["run"], "--out", tmp_path / "saved", "--name", "third_party")
    assert result.exit_code == 0, result.output
    result = invoke("explain", tmp_path / "saved" / "third_party", clip, "--threshold", -1, "--out", tmp_path / "sm")
    assert result.exit_code == 0, result.output
    served, _ = soundfile.read(tmp_path / "sm" / "interpretation.wav")
    np.testing.assert_allclose(served, audio, atol=1e-4)
