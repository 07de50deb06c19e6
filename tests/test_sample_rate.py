"""Any classifier, any recording: the sample rate and the STFT of `l2i-tf train`, `learn-dictionary` and
`train-classifier` (taken from the classifier's sidecar, --sample-rate, the STFT flags) and their errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile
from run_fixture import K, assert_clean_error, chirp, invoke, write_wav

from l2i_tf import audio, classifier, runs, training
from l2i_tf.dictionary import Dictionary, DictionaryMismatchError

RATE = 22050  # the classifier's
FILE_RATE = 44100  # the recordings'
STFT_22050 = {"sample_rate": RATE, "frame_length": 2048, "frame_step": 512, "fft_length": 2048, "window": "hann"}
TRAIN = ["--k", K, "--nmf-iterations", 5, "--hidden", 8, "--epochs", 1, "--clip-seconds", 0.5]


def write_tones(root, rate: int, per_class: int = 5, seconds: float = 0.5):
    """A 3-class `folders` data set of tones (440 / 1200 / 3000 Hz) recorded at ``rate``."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for c, freq in enumerate((440, 1200, 3000)):
        for i in range(per_class):
            x = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.01 * rng.standard_normal(len(t))
            write_wav(root / f"tone{c}" / f"{i}.wav", x.astype("float32"), rate, "FLOAT")
    return root


def write_classifier(path, rate: int | None):
    """The tiny demo architecture at ``rate`` (untrained, seed 0) with a sidecar saying so (none if ``rate`` is
    None: then its front end runs at 16 kHz)."""
    import keras

    keras.utils.set_random_seed(0)
    config = classifier.DemoConfig(sample_rate=rate or audio.DEFAULT_SAMPLE_RATE, channels=(4, 8, 8, 8))
    info = classifier.ClassifierInfo(("a", "b", "c"), rate or audio.DEFAULT_SAMPLE_RATE, False, classifier.DEMO_LAYERS)
    classifier.save_classifier(classifier.build_demo_classifier(3, config), info, path)
    if rate is None:
        classifier.sidecar_path(path).unlink()
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A classifier whose sidecar says 22050 Hz, tones recorded at 44.1 kHz, and `l2i-tf train` on them with no
    flag about the rate."""
    root = tmp_path_factory.mktemp("rate")
    model = write_classifier(root / "c22k.keras", RATE)
    data = write_tones(root / "data", FILE_RATE)
    run = root / "run"
    result = invoke("train", "--classifier", model, "--data", data, "--layout", "folders", *TRAIN, "--out", run)
    assert result.exit_code == 0, result.output
    return {"root": root, "classifier": model, "data": data, "run": run}


def test_train_takes_the_rate_from_the_sidecar_and_records_the_scaled_stft(job):
    run = job["run"]
    assert json.loads((run / "stft.json").read_text()) == STFT_22050
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["stft"] == STFT_22050 and config["sample_rate"] is None  # asked for nothing, took the sidecar's
    assert json.loads((run / "dictionary" / "dictionary.json").read_text())["stft"] == STFT_22050
    assert Dictionary.load(run / "dictionary").num_bins == 1025
    assert runs.load_run(run).interpreter.stft_config == audio.STFTConfig(**STFT_22050)


def test_explain_and_export_work_at_the_run_rate(job, tmp_path):
    clip = write_wav(tmp_path / "clip.wav", chirp(0.6, FILE_RATE), FILE_RATE)  # 26460 samples at 44.1 kHz
    result = invoke("explain", job["run"], clip, "--out", tmp_path / "explained")
    assert result.exit_code == 0, result.output
    interpretation, rate = soundfile.read(tmp_path / "explained" / "interpretation.wav")
    assert rate == RATE and len(interpretation) == 13230  # the file resampled to 22050 Hz
    report = json.loads((tmp_path / "explained" / "explanation.json").read_text())
    assert report["sample_rate"] == RATE and report["samples"] == 13230

    result = invoke("export", job["run"], "--out", tmp_path / "savedmodels")
    assert result.exit_code == 0, result.output
    exported = tmp_path / "savedmodels" / "l2i" / "1"
    result = invoke("explain", exported, clip, "--out", tmp_path / "served")
    assert result.exit_code == 0, result.output
    served, rate = soundfile.read(tmp_path / "served" / "interpretation.wav")
    assert rate == RATE and len(served) == 13230


def test_a_sample_rate_contradicting_the_sidecar_is_refused_naming_both(job, tmp_path):
    args = ["train", "--classifier", job["classifier"], "--data", job["data"], "--layout", "folders", *TRAIN]
    result = invoke(*args, "--sample-rate", 16000, "--out", tmp_path / "r")
    assert_clean_error(result, 2, "--sample-rate", "16000 Hz", "expects 22050 Hz", "c22k.json")
    assert not (tmp_path / "r" / "config.json").exists()
    config = runs.TrainConfig(classifier=str(job["classifier"]), sample_rate=16000)
    with pytest.raises(training.SampleRateMismatchError) as refused:
        training.train(tmp_path / "lib", config)
    error = refused.value
    assert (error.given, error.expected, error.source) == (16000, RATE, "sample_rate")
    assert error.sidecar == job["classifier"].with_suffix(".json")
    # the same rate as the sidecar's is fine (resolution only: no data is read)
    agreed = runs.TrainConfig(classifier=str(job["classifier"]), sample_rate=RATE)
    assert training.resolve_stft(agreed, classifier.load_info(job["classifier"])).to_dict() == STFT_22050


def test_a_dictionary_at_another_rate_is_refused_naming_both_configurations(job, tmp_path):
    other = audio.STFTConfig.for_rate(16000)
    rng = np.random.default_rng(0)
    from l2i_tf import nmf

    w = rng.random((other.num_bins, K)).astype("float32")
    folder = Dictionary(w, other, nmf.NMFConfig(k=K)).save(tmp_path / "dict16k")
    config = runs.TrainConfig(classifier=str(job["classifier"]), dictionary=str(folder), k=K)
    with pytest.raises(DictionaryMismatchError) as refused:
        training.train(tmp_path / "lib", config)
    error = refused.value
    assert error.dictionary_stft == other and error.given_stft == audio.STFTConfig(**STFT_22050)
    assert error.differences == {
        "sample_rate": (16000, RATE),
        "frame_length": (1024, 2048),
        "frame_step": (256, 512),
        "fft_length": (1024, 2048),
    }
    assert "sample_rate: dictionary 16000, given 22050" in str(error) and str(other.to_dict()) in str(error)
    assert not (tmp_path / "lib" / "config.json").exists()  # refused before the run is written

    args = ["train", "--classifier", job["classifier"], "--data", job["data"], "--layout", "folders", *TRAIN]
    result = invoke(*args, "--dictionary", folder, "--out", tmp_path / "r")
    assert_clean_error(result, 2, "--dictionary", "sample_rate: dictionary 16000, given 22050", str(folder))


def test_resuming_with_another_stft_is_refused_by_the_runs_own_dictionary(tiny_trained, tmp_path):
    config, out = tiny_trained["config"], tmp_path / "run"
    shutil.copytree(tiny_trained["run"], out)  # a copy of the session's trained run (16 kHz STFT): resuming changes it
    more = config.epochs + 1
    recorded = (out / "config.json").read_text()
    with pytest.raises(DictionaryMismatchError) as refused:
        training.train(out, dataclasses.replace(config, epochs=more, frame_length=2048), resume=True)
    assert refused.value.folder == str(out / "dictionary")
    assert refused.value.differences == {
        "frame_length": (1024, 2048),
        "frame_step": (256, 512),
        "fft_length": (1024, 2048),
    }
    assert (out / "config.json").read_text() == recorded  # the run is left as it was

    args = ["train", "--classifier", config.classifier, "--data", config.data, "--layout", "folders", "--out", out]
    result = invoke(*args, "--resume", "--epochs", more, "--frame-length", 2048)
    assert_clean_error(
        result, 2, "--frame-length/--frame-step/--fft-length", "frame_length: dictionary 1024, given 2048"
    )
    # the same STFT spelt out is no change: the resume goes on
    resumed = training.train(
        out, dataclasses.replace(config, epochs=more, sample_rate=16000, frame_step=256), resume=True
    )
    assert resumed["epochs_done"] == more


BAD_RATES = ["0", "-8000", "16000.5", "abc"]


@pytest.mark.parametrize("rate", BAD_RATES)
@pytest.mark.parametrize("command", ["train", "learn-dictionary", "train-classifier"])
def test_a_sample_rate_that_is_not_a_positive_integer_is_a_usage_error(tmp_path, command, rate):
    out = tmp_path / ("out.keras" if command == "train-classifier" else "out")
    result = invoke(command, f"--sample-rate={rate}", "--out", out)
    assert_clean_error(result, 2, "--sample-rate", rate)
    assert not out.exists()


@pytest.mark.parametrize("rate", [0, -8000, 16000.5, "abc", True])
def test_a_sample_rate_that_is_not_a_positive_integer_is_refused_by_the_library(rate):
    for make in (audio.STFTConfig.for_rate, lambda r: classifier.DemoConfig(sample_rate=r)):
        with pytest.raises(audio.AudioSettingError) as refused:
            make(rate)
        assert (refused.value.field, refused.value.value, refused.value.limit) == ("sample_rate", rate, None)
        assert repr(rate) in str(refused.value)
    config = runs.TrainConfig(classifier="unused.keras", sample_rate=rate)
    with pytest.raises(audio.AudioSettingError):
        training.resolve_stft(config, None)


STFT_FLAGS = {  # flags -> (the flag named, the message)
    ("--frame-step", 2048): ("--frame-step", "2048 must not exceed the frame length 1024 (--frame-length)"),
    ("--frame-length", 512, "--frame-step", 1024): ("--frame-step", "1024 must not exceed the frame length 512"),
    ("--fft-length", 512): ("--fft-length", "512 must be at least the frame length 1024 (--frame-length)"),
    ("--frame-length", 0): ("--frame-length", "0"),
    ("--frame-step", -4): ("--frame-step", "-4"),
    ("--fft-length", "abc"): ("--fft-length", "abc"),
}


@pytest.mark.parametrize("flags", list(STFT_FLAGS), ids=lambda f: " ".join(map(str, f)))
def test_stft_sizes_that_do_not_fit_are_usage_errors_naming_the_flag(tmp_path, flags):
    flag, message = STFT_FLAGS[flags]
    result = invoke("learn-dictionary", *flags, "--out", tmp_path / "d")
    assert_clean_error(result, 2, flag, message)
    assert not (tmp_path / "d").exists()


def test_train_refuses_stft_sizes_that_do_not_fit_before_reading_data(tmp_path):
    model = write_classifier(tmp_path / "c.keras", None)  # no sidecar: 16 kHz
    result = invoke("train", "--classifier", model, "--fft-length", 512, "--out", tmp_path / "r")
    assert_clean_error(result, 2, "--fft-length", "512 must be at least the frame length 1024")
    with pytest.raises(audio.AudioSettingError) as refused:
        training.train(tmp_path / "lib", runs.TrainConfig(classifier=str(model), frame_step=2048))
    assert (refused.value.field, refused.value.value, refused.value.limit) == (
        "frame_step",
        2048,
        ("frame_length", 1024),
    )


def test_learn_dictionary_at_another_rate_records_the_scaled_stft(tmp_path):
    data = write_tones(tmp_path / "data", FILE_RATE, per_class=2, seconds=0.3)
    args = ["learn-dictionary", "--data", data, "--layout", "folders", "--k", 4, "--iterations", 2]
    args += ["--train-folds", "1,2", "--val-folds", "3", "--test-folds", "4"]
    result = invoke(*args, "--sample-rate", 8000, "--out", tmp_path / "d8k")
    assert result.exit_code == 0, result.output
    assert "at 8000 Hz" in result.output
    meta = json.loads((tmp_path / "d8k" / "dictionary.json").read_text())
    assert meta["stft"] == {
        "sample_rate": 8000,
        "frame_length": 512,
        "frame_step": 128,
        "fft_length": 512,
        "window": "hann",
    }
    assert meta["num_bins"] == 257
    result = invoke(*args, "--sample-rate", 8000, "--frame-length", 400, "--out", tmp_path / "d400")
    assert result.exit_code == 0, result.output
    stft = json.loads((tmp_path / "d400" / "dictionary.json").read_text())["stft"]
    assert (stft["frame_length"], stft["frame_step"], stft["fft_length"]) == (400, 100, 512)


def test_train_classifier_trains_the_demo_at_the_given_rate(tmp_path, monkeypatch):
    seen = {}

    def fake_train(out, config, **kwargs):
        seen["config"] = config
        return {"test_accuracy": 0.5}

    monkeypatch.setattr(classifier, "train_demo_classifier", fake_train)
    data = write_tones(tmp_path / "data", FILE_RATE, per_class=3, seconds=0.1)
    args = ["train-classifier", "--data", data, "--layout", "folders", "--train-folds", "1", "--val-folds", "2"]
    result = invoke(*args, "--test-folds", "3", "--sample-rate", 44100, "--out", tmp_path / "c.keras")
    assert result.exit_code == 0, result.output
    assert seen["config"].sample_rate == 44100
    result = invoke(*args, "--test-folds", "3", "--out", tmp_path / "d.keras")
    assert seen["config"].sample_rate == 16000


def test_the_demo_classifier_at_another_rate_keeps_its_front_end_in_milliseconds(tmp_path):
    data = write_tones(tmp_path / "data", FILE_RATE, per_class=4, seconds=0.5)
    from l2i_tf import tables

    config = classifier.DemoConfig(
        sample_rate=RATE,
        num_mel_bins=16,
        channels=(4, 8, 8, 8),
        clip_seconds=0.5,
        crop_seconds=0.25,
        epochs=1,
        batch_size=2,
    )
    out = tmp_path / "c.keras"
    splits = tables.Splits((1, 2), (3,), (4,))
    classifier.train_demo_classifier(out, config, table=tables.folders_table(data), splits=splits)
    assert classifier.load_info(out).sample_rate == RATE
    import keras

    logmel = keras.saving.load_model(out).get_layer("logmel")
    assert (logmel.sample_rate, logmel.frame_length, logmel.frame_step, logmel.fft_length) == (RATE, 551, 220, 1024)
