"""Issue 8, bad inputs: what each command and the SavedModel say about bad files, data sets and manifests.

Cases already covered elsewhere are not repeated here: empty / NaN / too-long / silent files through
`l2i-tf explain` (test_explain_cli.py); empty, NaN, Inf, too-long and wrong-rank waveforms and a WAV at another
rate through the SavedModel (test_export.py); corrupt, empty and frame-less files, counted skips, manifests'
missing columns, duplicate rows, unknown classes and escaping paths, and data sets without audio at the
library level (test_data.py, test_tables.py); a data set without audio through `train-classifier` (test_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_fixture import assert_clean_error, chirp, invoke, write, write_wav

from l2i_tf import audio, classifier, data, explain, runs, tables

SR = 16000


# ---------------------------------------------------------------- files through `l2i-tf explain`


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_export_loaded_once):
    """A tiny run folder and its export (at most 1 s): conftest's ``tiny_export``, loaded once for the module's
    commands (``tiny_export_loaded_once``); ``root`` is this module's own."""
    tiny_export = tiny_export_loaded_once
    root = tmp_path_factory.mktemp("bad_inputs")
    return {"root": root, "run": tiny_export["run"], "savedmodel": tiny_export["path"]}


def _truncated(path):
    good = write_wav(path.with_name("whole.wav"), chirp(0.5))
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    return path


ACCEPTED = {  # file -> expected number of samples at 16 kHz in the interpretation
    "stereo": (lambda p: write_wav(p, np.stack([chirp(0.5), chirp(0.5, seed=1)], 1)), 8000),
    "8-bit": (lambda p: write_wav(p, chirp(0.5), subtype="PCM_U8"), 8000),
    "96 kHz": (lambda p: write_wav(p, chirp(0.5, 96000), 96000), 8000),
    "8 kHz": (lambda p: write_wav(p, chirp(0.5, 8000), 8000), 8000),
    "clipped at ±1": (lambda p: write_wav(p, np.clip(10 * chirp(0.5), -1, 1)), 8000),
    "float samples up to ±6": (lambda p: write_wav(p, 10 * chirp(0.5), subtype="FLOAT"), 8000),
    "shorter than one frame (100 samples)": (lambda p: write_wav(p, chirp(100 / SR)), 100),
    "one sample": (lambda p: write_wav(p, np.array([0.5], "float32")), 1),
    "32-bit integer": (lambda p: write_wav(p, chirp(0.5), subtype="PCM_32"), 8000),
    "64-bit float": (lambda p: write_wav(p, chirp(0.5), subtype="DOUBLE"), 8000),
    "WAVEX 16-bit": (lambda p: write(p, chirp(0.5), subtype="PCM_16", format="WAVEX"), 8000),
    "WAVEX 24-bit": (lambda p: write(p, chirp(0.5), subtype="PCM_24", format="WAVEX"), 8000),
    "AIFF": (lambda p: write(p.with_suffix(".aiff"), chirp(0.5), format="AIFF"), 8000),
}


@pytest.fixture(scope="module")
def accepted(sources, tmp_path_factory):
    """Every ACCEPTED file explained by one `l2i-tf explain` per source (it explains its inputs one by one; the source
    is loaded once): ``{source: (result, {kind: output folder})}``."""
    root = tmp_path_factory.mktemp("accepted")
    paths = {kind: make(root / "inputs" / f"accepted{i}.wav") for i, (kind, (make, _)) in enumerate(ACCEPTED.items())}
    outputs = {}
    for source in ("run", "savedmodel"):
        result = invoke("explain", sources[source], *paths.values(), "--out", root / source)
        outputs[source] = (result, {kind: root / source / path.stem for kind, path in paths.items()})
    return outputs


@pytest.mark.parametrize("source", ["run", "savedmodel"])
@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_explain_accepts_unusual_but_valid_files_with_finite_audio_of_the_input_length(accepted, kind, source):
    _, samples = ACCEPTED[kind]
    result, folders = accepted[source]
    assert result.exit_code == 0, result.output
    out = folders[kind]
    audio_out, rate = sf.read(out / "interpretation.wav")
    report = json.loads((out / "explanation.json").read_text())
    assert rate == SR and len(audio_out) == samples == report["samples"]
    assert np.all(np.isfinite(audio_out)) and np.all(np.isfinite(report["relevance"]))


REJECTED = {  # file -> (exit code, what the message must say)
    "corrupt": (lambda p: p.write_bytes(b"RIFF\0\0\0\0WAVEjunk" * 16) and p, 2, "cannot read audio"),
    "random bytes as .ogg": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(999)) and p, 2, "cannot read"),
    "truncated": (_truncated, 2, "truncated or corrupt"),
    "Inf samples": (
        lambda p: write_wav(p, np.array([0.1, np.inf] * 4000, "float32"), subtype="FLOAT"),
        1,
        "NaN or Inf",
    ),
}


@pytest.mark.parametrize("source", ["run", "savedmodel"])
@pytest.mark.parametrize("kind", list(REJECTED))
def test_explain_rejects_broken_files_naming_them_without_a_traceback(sources, tmp_path, kind, source):
    make, code, message = REJECTED[kind]
    suffix = ".ogg" if "ogg" in kind else ".wav"
    path = make(tmp_path / f"input{suffix}")
    result = invoke("explain", sources[source], path, "--out", tmp_path / "out")
    assert_clean_error(result, code, message, str(path))
    assert not (tmp_path / "out" / "interpretation.wav").exists()


def test_savedmodel_takes_clipped_loud_and_sub_frame_waveforms(sources):
    serve = tf.saved_model.load(str(sources["savedmodel"])).signatures["serving_default"]
    for x in (np.full((1, 4000), 10.0, "float32"), 50 * chirp(0.25)[None], np.array([[0.3]], "float32")):
        out = serve(waveform=tf.constant(x))
        assert out["interpretation"].shape == x.shape
        for key in ("interpretation", "relevance", "class_probabilities", "interpreter_probabilities"):
            assert np.all(np.isfinite(out[key].numpy())), key


def test_explain_wav_rejects_a_non_16_bit_file_with_tensorflows_message(sources):
    serve = tf.saved_model.load(str(sources["savedmodel"])).signatures["explain_wav"]
    path = write_wav(sources["root"] / "u8.wav", chirp(0.25), subtype="PCM_U8")
    with pytest.raises(tf.errors.InvalidArgumentError, match="16-bit"):
        serve(audio=tf.constant([path.read_bytes()]))


# ---------------------------------------------------------------- data sets through `l2i-tf train`


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny classifier (3 classes a, b, c) and the train options that go with it."""
    root = tmp_path_factory.mktemp("train_inputs")
    keras.utils.set_random_seed(0)
    path = root / "tiny.keras"
    info = classifier.ClassifierInfo(("a", "b", "c"), SR, False, classifier.DEMO_LAYERS)
    classifier.save_classifier(
        classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(4, 8, 8, 8))), info, path
    )
    options = ["--classifier", path, "--k", 4, "--nmf-iterations", 3, "--hidden", 4, "--clip-seconds", 0.25]
    return root, [*options, "--epochs", 1, "--batch-size", 8]


def _folders(root, per_class=5):
    for c, name in enumerate("abc"):
        for i in range(per_class):
            write_wav(root / name / f"{i}.wav", chirp(0.25, seed=10 * c + i))
    return root


def test_train_names_a_corrupt_clip_and_with_on_error_skip_counts_it(tiny, tmp_path):
    """A clip whose header does not read (in the test fold) and one that is cut short (read, not decoded): named
    without ``--on-error skip``; left out with it, by training and by the evaluation of its run."""
    _, options = tiny
    root = _folders(tmp_path / "data")
    table = tables.load_table(root, "folders")
    folds = dict(zip(table.paths, table.folds, strict=True))
    bad = next(Path(p) for p, fold in folds.items() if fold == 5)
    bad.write_bytes(b"not audio at all" * 10)
    cut = next(Path(p) for p, fold in folds.items() if fold == 1)
    cut.write_bytes(cut.read_bytes()[:-1000])
    args = ["train", *options, "--data", root, "--layout", "folders"]
    assert_clean_error(invoke(*args, "--out", tmp_path / "r1"), 1, str(bad), "cannot read audio")
    result = invoke(*args, "--out", tmp_path / "r2", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable clip(s)" in result.output and str(bad) in result.output
    skipped = json.loads((tmp_path / "r2" / "metrics.json").read_text())["skipped_clips"]
    assert skipped["count"] == 2 and str(bad) in skipped["errors"][0]
    assert f"{cut}: cannot decode" in skipped["errors"][1]
    result = invoke("evaluate", tmp_path / "r2", "--quick")  # fold 5 without the clip training left out
    assert result.exit_code == 0, result.output
    assert f"{sum(fold == 5 for fold in folds.values()) - 1} test clips" in result.output


def test_a_classifier_ending_in_softmax_is_read_at_its_logits(tiny, tmp_path, caplog):
    """Trained at the logits before its softmax, said once; the run explains with the classifier's own decisions."""
    root, options = tiny
    model = keras.models.load_model(root / "tiny.keras")
    probs = keras.Model(model.inputs, keras.layers.Softmax(name="probs")(model.outputs[0]))
    info = classifier.ClassifierInfo(("a", "b", "c"), SR, False, classifier.DEMO_LAYERS)
    classifier.save_classifier(probs, info, tmp_path / "probs.keras")
    args = [*options, "--classifier", tmp_path / "probs.keras", "--data", _folders(tmp_path / "data"), "--layout"]
    result = invoke("train", *args, "folders", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    note = "layer 'probs' applies softmax): the interpreter reads the logits before it"
    said = [r for r in caplog.records if note in r.message]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    logits_model = runs.load_run(tmp_path / "r").interpreter.classifier
    x = 0.1 * np.random.default_rng(0).standard_normal((3, SR)).astype("float32")
    np.testing.assert_allclose(tf.nn.softmax(logits_model(x)), probs(x), atol=1e-6)
    result = invoke("explain", tmp_path / "r", write_wav(tmp_path / "clip.wav", chirp(0.5)), "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    explanation = json.loads((tmp_path / "e" / "explanation.json").read_text())
    np.testing.assert_allclose(
        list(explanation["classifier"]["probabilities"].values()), probs(chirp(0.5)[None]).numpy()[0], atol=1e-5
    )


def test_a_multi_label_manifest_without_multilabel_names_a_clip_without_one_label(tiny, tmp_path):
    _, options = tiny
    for i in range(6):
        write_wav(tmp_path / "data" / f"{i}.wav", chirp(0.25, seed=i))
    rows = [f"{i}.wav,{i % 3 + 1},{'abc'[i % 3]}" for i in range(6)]
    rows[4] = "4.wav,2,"  # no label
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("filename,fold,labels\n" + "\n".join(rows) + "\n")
    args = ["--data", manifest, "--layout", "manifest", "--class-names", "a,b,c", "--out", tmp_path / "r"]
    result = invoke("train", *options, *args)
    assert_clean_error(result, 1, "4.wav has 0 labels", "the data set is multi-label", "--multilabel")


def test_training_folds_of_one_class_say_what_to_do_and_unused_folds_are_said(tiny, tmp_path, caplog):
    _, options = tiny
    rows = []
    for i, (fold, label) in enumerate([(1, "a"), (1, "a"), (2, "b"), (2, "c"), (3, "b"), (3, "c"), (4, "a")]):
        write_wav(tmp_path / "data" / f"{i}.wav", chirp(0.25, seed=i))
        rows.append(f"{i}.wav,{fold},{label}")
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text("filename,fold,labels\n" + "\n".join(rows) + "\n")
    args = ["--data", manifest, "--layout", "manifest", "--class-names", "a,b,c"]
    args += ["--train-folds", "1", "--val-folds", "2", "--test-folds", "3", "--out", tmp_path / "r"]
    result = invoke("train", *options, *args)
    assert_clean_error(result, 1, "training folds [1] hold clips of one class only ('a')", "--source-mixtures 0")
    assert "fold(s) [4] of the data are in no split" in caplog.text and "1 clip(s) unused" in caplog.text


def test_train_on_a_folder_without_audio_names_it(tiny, tmp_path):
    _, options = tiny
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "notes.txt").write_text("no audio here")
    result = invoke("train", *options, "--data", tmp_path / "data", "--layout", "folders", "--out", tmp_path / "r")
    assert_clean_error(result, 1, "no audio clips found", str(tmp_path / "data"))


MANIFESTS = {
    "missing filename column": ("file,labels\n0.wav,a\n", "missing column(s) ['filename']"),
    "duplicate rows": ("filename,fold,labels\n0.wav,1,a\n0.wav,1,a\n", "is listed twice (first on line 2)"),
    "unknown label": ("filename,fold,labels\n0.wav,1,a\n1.wav,2,zebra\n", ":3: unknown class 'zebra'"),
    "path escaping the data root": ("filename,fold,labels\n../outside.wav,1,a\n", "escapes the data root"),
}


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_train_rejects_a_bad_manifest_naming_the_file_and_row(tiny, tmp_path, kind):
    _, options = tiny
    text, message = MANIFESTS[kind]
    for i in range(2):
        write_wav(tmp_path / "data" / f"{i}.wav", chirp(0.25, seed=i))
    write_wav(tmp_path / "outside.wav", chirp(0.25))
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_text(text)
    result = invoke("train", *options, "--data", manifest, "--layout", "manifest", "--out", tmp_path / "r")
    assert_clean_error(result, 1, str(manifest), message)
    assert not (tmp_path / "r" / "interpreter.keras").exists()


def test_learn_dictionary_names_a_corrupt_clip_and_skips_it_when_asked(tmp_path):
    root = _folders(tmp_path / "data", per_class=3)
    bad = root / "a" / "9.wav"
    bad.write_bytes(b"")
    args = ["learn-dictionary", "--data", root, "--layout", "folders", "--k", 2, "--iterations", 2]
    args += ["--train-folds", "1,2,3,4", "--val-folds", "6", "--test-folds", "7"]
    assert_clean_error(invoke(*args, "--out", tmp_path / "d1"), 1, str(bad))
    result = invoke(*args, "--out", tmp_path / "d2", "--on-error", "skip")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- property: load -> STFT -> explain -> ISTFT

RATES = (8000, 11025, 16000, 22050, 44100, 48000, 96000)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(1, 20000),
    amplitude=st.one_of(st.just(0.0), st.floats(1e-6, 10.0)),
    rate=st.sampled_from(RATES),
    seed=st.integers(0, 2**16),
)
def test_any_length_amplitude_and_rate_survive_load_stft_explain_istft(tmp_path_factory, length, amplitude, rate, seed):
    rng = np.random.default_rng(seed)
    x = (amplitude * rng.uniform(-1, 1, length)).astype("float32")
    path = tmp_path_factory.mktemp("prop") / "clip.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    data.probe(str(path))  # the header is checked first, as every caller does
    loaded = data.decode_audio(tf.io.read_file(str(path)), SR).numpy()
    assert loaded.shape == ((length * SR + rate // 2) // rate,)  # the resampled length, rounded
    if loaded.size == 0:  # a clip shorter than one output sample: the SavedModel says "empty waveform"
        return
    assert np.all(np.isfinite(loaded))
    config = audio.STFTConfig()
    X, phase = audio.analyze(loaded[None], config)
    frames = config.num_frames(loaded.size)
    assert X.shape == (1, frames, config.num_bins) and np.all(np.isfinite(X.numpy()))
    back = audio.synthesize(X, phase, loaded.size, config).numpy()[0]
    energy = float(np.sum(np.square(loaded, dtype="float64")))
    if energy > 0:
        snr = 10 * np.log10(energy / max(float(np.sum(np.square(back - loaded, dtype="float64"))), 1e-300))
        assert snr > 100, f"round trip SNR {snr:.1f} dB"
    else:
        assert np.all(back == 0)

    k, classes = 6, 3
    W = rng.random((config.num_bins, k)).astype("float32")
    W /= np.linalg.norm(W, axis=0)
    H = rng.random((1, frames, k)).astype("float32")
    z = H.mean(axis=1)
    theta = rng.standard_normal((k, classes)).astype("float32")
    relevance = explain.relevance(z, theta, [int(seed % classes)])
    selected = explain.select(relevance, 0.3, top_n=3)
    interpretation = explain.interpret(X, phase, W, H, selected, loaded.size, config).numpy()
    assert interpretation.shape == (1, loaded.size) and relevance.shape == (1, k)
    assert np.all(np.isfinite(interpretation)) and np.all(np.isfinite(relevance.numpy()))
    if energy == 0:
        assert np.all(interpretation == 0)


def test_explain_of_a_file_that_resamples_to_no_samples_is_a_clear_error(sources, tmp_path):
    path = write_wav(tmp_path / "tiny96k.wav", np.array([0.5, -0.5], "float32"), 96000, subtype="FLOAT")
    result = invoke("explain", sources["savedmodel"], path, "--out", tmp_path / "out")
    assert_clean_error(result, 1, "empty waveform: 0 samples", str(path))
