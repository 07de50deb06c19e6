"""Long recordings as a timeline: the window math, the windowed Explainer, the SavedModel and `l2i-tf explain` on a
60 s recording with an event planted at 40 s."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import soundfile
import tensorflow as tf
from run_fixture import assert_clean_error, invoke

from l2i_tf import audio, classifier, explain_files, export, runs, timeline, training, windows
from l2i_tf.explainer import ExplainConfig, Explainer

RATE = 16000
WINDOW_SECONDS = 2.0
EVENT = (40.0, 40.5)  # seconds
TONE_HZ = 2000.0
CLASSES = ("background", "beep")


# ------------------------------------------------------------------ the window math


@pytest.mark.parametrize(
    ("samples", "expected"),
    [(100, (100, 1)), (1000, (1000, 1)), (1001, (1000, 2)), (1500, (1000, 2)), (1501, (1000, 3)), (10000, (1000, 19))],
)
def test_plan_counts_windows_at_half_window_hops(samples, expected):
    length, count = timeline.plan(samples, 1000, 500)
    assert (int(length), int(count)) == expected


def test_frames_start_every_hop_and_the_last_ends_at_the_end_as_training_cuts_clips():
    x = tf.range(1, 12, dtype=tf.float32)[None]  # 11 samples
    frames = timeline.frame(x, 4, 2, 5)
    expected = [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10], [8, 9, 10, 11]]
    np.testing.assert_array_equal(frames[0], expected)
    np.testing.assert_array_equal(timeline.starts(4, 2, 5, 11), windows.window_starts(11, 4, 2))
    assert int(timeline.last_shift(4, 2, 5, 11)) == 1 and int(timeline.last_shift(4, 2, 5, 12)) == 0


def _on_grid(frames, hop, samples):
    """Windows [B, W, L] from :func:`timeline.frame` -> at their places on the hop grid."""
    batch, count, length = frames.shape
    last = tf.tile(tf.range(count) == count - 1, [batch])
    shift = timeline.last_shift(length, hop, count, samples)
    return tf.reshape(timeline.on_grid(tf.reshape(frames, [-1, length]), last, shift), frames.shape)


def test_weights_are_positive_and_sum_to_one_at_half_window_hops():
    w = timeline.window_weights(8).numpy()
    assert w.min() > 0
    np.testing.assert_allclose(w[:4] + w[4:], 1.0, atol=1e-6)


@pytest.mark.parametrize("samples", [1, 999, 1000, 1001, 4321])
def test_overlap_add_of_the_frames_gives_back_the_signal(samples):
    x = tf.constant(np.random.default_rng(samples).standard_normal((2, samples)), tf.float32)
    length, count = timeline.plan(samples, 1000, 500)
    back = timeline.overlap_add(_on_grid(timeline.frame(x, length, 500, count), 500, samples), 500, samples)
    np.testing.assert_allclose(back, x, atol=1e-5)


@pytest.mark.parametrize("chunk_samples", [1, 2500, 3000, 10**6])  # one window a batch, 2, 3 (the last padded), all
@pytest.mark.parametrize("graph", [False, True])  # eager, and traced as the SavedModel runs it
def test_overlap_add_as_the_windows_come_equals_overlap_add_of_all_windows(chunk_samples, graph):
    _check_overlap_add_chunks(chunk_samples, graph, samples=4321)


def test_outputs_past_the_in_place_limit_are_written_by_copies(monkeypatch):
    monkeypatch.setattr(timeline, "INPLACE_LIMIT", 4321)  # "one" (2 × 4321 samples) and "three" are past it
    _check_overlap_add_chunks(2500, True, samples=4321)


@pytest.mark.parametrize("graph", [False, True])
def test_recordings_of_one_window_are_their_own_output(graph):
    _check_overlap_add_chunks(10**6, graph, samples=1000)


def _check_overlap_add_chunks(chunk_samples, graph, samples):
    rng = np.random.default_rng(0)
    batch, window, hop = 2, 1000, 500
    length, count = timeline.plan(samples, window, hop)
    frames = tf.constant(rng.standard_normal((batch * int(count), 3, int(length))), tf.float32)  # 3 outputs a window

    def fn(x, scale):
        return {"one": x[:, 0] * scale[:, None], "three": x * scale[:, None, None]}

    def run(frames, scale):
        return timeline.overlap_add_chunks(
            fn,
            (frames, scale),
            chunk_samples,
            length,
            hop,
            count,
            batch,
            samples,
            {"one": (tf.float32, []), "three": (tf.float32, [3])},
        )

    scale = tf.range(1, batch * int(count) + 1, dtype=tf.float32)
    got = tf.function(run)(frames, scale) if graph else run(frames, scale)
    scaled = tf.reshape(frames * scale[:, None, None], [batch, int(count), 3, int(length)])
    np.testing.assert_allclose(got["one"], timeline.overlap_add(scaled[:, :, 0], hop, samples), atol=1e-5)
    expected = timeline.overlap_add(tf.transpose(scaled, [0, 2, 1, 3]), hop, samples)
    np.testing.assert_allclose(got["three"], expected, atol=1e-5)
    assert got["three"].shape == (batch, 3, samples)


def test_the_recording_decision_is_the_mean_or_max_of_the_window_logits():
    logits = tf.constant([[[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]]])
    np.testing.assert_allclose(timeline.aggregate_logits(logits, "mean"), [[1.0, 1.0]])
    np.testing.assert_allclose(timeline.aggregate_logits(logits, "max"), [[3.0, 5.0]])
    with pytest.raises(ValueError, match="unknown aggregate 'median'; use one of: mean, max"):
        timeline.aggregate_logits(logits, "median")


def test_bad_windows_are_refused_with_both_lengths():
    with pytest.raises(timeline.WindowError, match=r"window of 3 s \(48000 samples\) is longer than the classifier"):
        timeline.check_window(3.0, RATE, 32000, 1024)
    with pytest.raises(timeline.WindowError, match=r"shorter than one STFT frame \(1024 samples"):
        timeline.check_window(0.01, RATE, None, 1024)
    with pytest.raises(ValueError, match="window_seconds must be >= 0"):
        ExplainConfig(window_seconds=-1.0)
    with pytest.raises(ValueError, match="unknown aggregate 'mode'"):
        ExplainConfig(aggregate="mode")
    with pytest.raises(ValueError, match="window_seconds 3 is longer than max_seconds 2"):
        ExplainConfig(window_seconds=3.0, max_seconds=2.0)
    assert ExplainConfig(window_seconds=3.0, max_seconds=0).window_seconds == 3.0  # 0: no limit
    assert timeline.check_window(0, RATE, 32000, 1024) == 32000
    assert timeline.check_window(0, RATE, None, 1024) == int(timeline.WHOLE_CLIP_SECONDS * RATE)


# ------------------------------------------------------------------ a planted event


def _tone_band_classifier(path):
    """A fixed-input (2 s) classifier whose decision is known: "beep" when some frame's log-mel energy around 2 kHz
    stands out from the frame's mean by more than a margin set between background and beep clips."""
    keras.utils.set_random_seed(0)
    wave = keras.Input((int(WINDOW_SECONDS * RATE),), name="waveform")
    mel = audio.LogMelSpectrogram(RATE, num_mel_bins=32, name="logmel")(wave)
    bands = keras.layers.Dense(4, name="bands")(mel)
    frame_logits = keras.layers.Dense(2, name="frame_logits")(bands)
    model = keras.Model(wave, keras.layers.GlobalMaxPooling1D(name="logits")(frame_logits))
    tone_mel = keras.Model(wave, mel)(_tone(int(WINDOW_SECONDS * RATE))[None].astype("float32"))
    kernel = np.zeros((32, 4), "float32")
    kernel[int(np.argmax(np.mean(tone_mel[0], axis=0))), 0] = 1.0
    kernel[:, 1] = 1.0 / 32
    model.get_layer("bands").set_weights([kernel, np.zeros(4, "float32")])
    stand_out = keras.Model(wave, bands)
    lo = np.max(stand_out(_clip(0, tone=False)[None])[0, :, 0] - stand_out(_clip(0, tone=False)[None])[0, :, 1])
    hi = np.max(stand_out(_clip(0, tone=True)[None])[0, :, 0] - stand_out(_clip(0, tone=True)[None])[0, :, 1])
    out_kernel = np.zeros((4, 2), "float32")
    out_kernel[0, 1], out_kernel[1, 1] = 1.0, -1.0
    model.get_layer("frame_logits").set_weights([out_kernel, np.array([0.0, -(lo + hi) / 2], "float32")])
    info = classifier.ClassifierInfo(CLASSES, RATE, False, ("bands",))
    classifier.save_classifier(model, info, path)
    return path


def _noise(samples, seed):
    return 0.02 * np.random.default_rng(seed).standard_normal(samples)


def _tone(samples):
    return 0.3 * np.sin(2 * np.pi * TONE_HZ * np.arange(samples) / RATE)


def _clip(seed, tone: bool):
    n = int(WINDOW_SECONDS * RATE)
    x = _noise(n, seed)
    if tone:
        start = int(np.random.default_rng(seed).uniform(0.1, 1.3) * RATE)
        x[start : start + RATE // 2] += _tone(RATE // 2)
    return x.astype("float32")


def _recording(seconds=60.0):
    x = _noise(int(seconds * RATE), 99)
    a, b = (int(t * RATE) for t in EVENT)
    x[a:b] += _tone(b - a)
    return x.astype("float32")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A trained run on the tone-band classifier, the 60 s recording, and its export."""
    root = tmp_path_factory.mktemp("timeline")
    model = _tone_band_classifier(root / "band.keras")
    for c, name in enumerate(CLASSES):
        (root / "data" / name).mkdir(parents=True)
        for i in range(12):
            soundfile.write(root / "data" / name / f"{i}.wav", _clip(100 * c + i, tone=bool(c)), RATE, "FLOAT")
    config = runs.TrainConfig(
        classifier=str(model),
        data=str(root / "data"),
        layout="folders",
        clip_seconds=WINDOW_SECONDS,
        k=4,  # tone, noise and two in between; K=8 splits the tone over four components and the top one is faint
        nmf_iterations=30,
        hidden=8,
        epochs=15,
        batch_size=8,
    )
    metrics = training.train(root / "run", config)
    recording = _recording()
    soundfile.write(root / "recording.wav", recording, RATE, "FLOAT")
    saved = export.export(root / "run", root / "savedmodels", "l2i", ExplainConfig(threshold=0.0, max_seconds=120))
    return {"root": root, "run": root / "run", "metrics": metrics, "recording": recording, "saved": saved}


def _explainer(planted, **config):
    run = runs.load_run(planted["run"])
    return Explainer(run.interpreter, run.class_names, ExplainConfig(threshold=0.0, max_seconds=0, **config))


@pytest.fixture(scope="module")
def explainer(planted):
    """``_explainer(planted)``, the default settings, made once for the tests that use them: an Explainer holds no
    state between calls, and its graphs, traced by the first test, serve the others."""
    return _explainer(planted)


def _holds_event(start, end):
    return (start < EVENT[1] * RATE) & (end > EVENT[0] * RATE)


def test_the_timeline_names_the_event_class_where_it_is(planted, explainer):
    out = explainer.explain(planted["recording"][None], target_class=CLASSES.index("beep"))
    start, end = out["window_start"].numpy()[0], out["window_end"].numpy()[0]
    assert len(start) == 59 and start[1] == RATE and end[-1] == len(planted["recording"])
    expected = np.where(_holds_event(start, end), CLASSES.index("beep"), CLASSES.index("background"))
    np.testing.assert_array_equal(out["window_predicted_class"].numpy()[0], expected)
    assert out["predicted_class_name"].numpy()[0] == b"background"  # the mean of 59 windows: mostly background


def test_the_interpretation_of_the_event_class_is_loudest_at_the_event(planted, explainer):
    x = planted["recording"]
    y = explainer.explain(x[None], target_class=CLASSES.index("beep"))["interpretation"].numpy()[0]
    assert y.shape == x.shape
    a, b = (int(t * RATE) for t in EVENT)
    t = np.arange(len(x))
    elsewhere = (t < a - RATE // 2) | (t > b + RATE // 2)
    ratio = np.mean(y[a:b] ** 2) / np.mean(y[elsewhere] ** 2)
    print(f"interpretation energy at the event / elsewhere: {ratio:.1f}x")
    assert ratio >= 10


def test_max_aggregation_decides_for_the_event(planted):
    out = _explainer(planted, aggregate="max").explain(planted["recording"][None])
    assert out["predicted_class_name"].numpy()[0] == b"beep"


def test_every_component_selected_gives_back_the_recording(planted):
    """Constant gain: with every component selected each window's interpretation is its input wherever Ψ's H is
    not all zero (the L2I soft mask H·Wᵀ / (H·Wᵀ + ε) is 0 in a frame with no activation, one window or many), and
    the weighted overlap-add of the windows adds no error of its own (see test_overlap_add_...)."""
    x = planted["recording"][: 7 * RATE + 123]
    y = _explainer(planted, top_n=0).explain(x[None], threshold=-1e9)["interpretation"].numpy()[0]
    assert y.shape == x.shape
    error = np.abs(y - x)
    assert np.median(error) < 1e-5 and np.mean(error < 2e-3) > 0.95, (np.median(error), np.mean(error < 2e-3))


def test_the_last_window_is_a_whole_window_ending_at_the_recording_s_end(planted, explainer):
    """As training cuts clips (``windows.window_starts``): 16 samples past one window make a second window of the
    last L samples, not one at the next hop padded with silence that would weigh fully in the decision."""
    length = int(WINDOW_SECONDS * RATE)
    x = planted["recording"][: length + 16]
    out = explainer.explain(x[None], components=True)
    np.testing.assert_array_equal(out["window_start"], [[0, 16]])
    np.testing.assert_array_equal(out["window_end"], [[length, length + 16]])
    alone = explainer.explain(x[None, 16:])
    np.testing.assert_allclose(out["window_class_probabilities"][0, 1], alone["class_probabilities"][0], atol=1e-5)
    assert out["interpretation"].shape == (1, length + 16) and out["component_audio"].shape[-1] == length + 16


def test_the_selected_components_audio_adds_up_to_the_interpretation_of_a_long_recording(planted, tmp_path):
    """A component is heard in the windows that select it, so the selected components' audio adds up to the
    interpretation; selected components come first among the N, and one selected past them is listed (no file)."""
    x = planted["recording"][: 8 * RATE + 123].copy()
    x[4 * RATE :] += _tone(len(x) - 4 * RATE).astype("float32")  # 4 s of noise, then noise and the tone
    out = _explainer(planted, top_n=4).explain(x[None], threshold=0.2, components=True)  # N = K
    per_window = out["window_selected"].numpy()[0]
    assert (per_window.any(axis=0) & ~per_window.all(axis=0)).any()  # one selected in some windows only
    chosen = out["component_selected"].numpy()[0]
    summed = out["component_audio"].numpy()[0][chosen].sum(axis=0)
    np.testing.assert_allclose(summed, out["interpretation"].numpy()[0], atol=1e-5)
    union = np.flatnonzero(out["selected"].numpy()[0])
    assert sorted(out["component_indices"].numpy()[0][: len(union)]) == union.tolist()  # the selected first

    one = {key: value.numpy()[0] for key, value in out.items()}  # as N = 1 gives it: one of the selected has audio
    one.update({key: one[key][:1] for key in ("component_indices", "component_relevance", "component_selected")})
    one["component_audio"] = one["component_audio"][:1]
    metadata = {"class_names": CLASSES, "sample_rate": RATE, "top_n": 1, "domain": "linear"}
    summary = explain_files.summarize(one, metadata, 0.2, "x.wav", "run")
    report = explain_files.write_explanation(summary, tmp_path / "o")
    assert sorted(entry["component"] for entry in report["selected"]) == union.tolist()
    assert [entry["file"] is None for entry in report["selected"]] == [False] + [True] * (len(union) - 1)
    assert sorted(p.name for p in (tmp_path / "o").glob("component_*.wav")) == [report["selected"][0]["file"]]


def test_a_recording_shorter_than_one_window_is_padded_and_keeps_its_length(planted, explainer):
    x = planted["recording"][: RATE // 4]
    out = explainer.explain(x[None])
    assert out["interpretation"].shape == (1, len(x))
    np.testing.assert_array_equal(out["window_start"], [[0]])
    np.testing.assert_array_equal(out["window_end"], [[len(x)]])


def test_the_savedmodel_gives_the_library_s_timeline(planted, explainer):
    x = planted["recording"][None]
    loaded = tf.saved_model.load(str(planted["saved"]))
    beep = CLASSES.index("beep")
    served = loaded.signatures["explain"](
        waveform=tf.constant(x), target_class=tf.constant([beep]), threshold=tf.constant(0.0)
    )
    library = explainer.explain(x, target_class=beep, components=True)
    for key, value in library.items():
        if value.dtype.is_floating:
            np.testing.assert_allclose(served[key], value, atol=1e-4, err_msg=key)
        else:
            np.testing.assert_array_equal(served[key], value, err_msg=key)
    default = loaded.signatures["serving_default"](waveform=tf.constant(x))
    assert default["window_start"].shape == (1, 59)
    wav = tf.audio.encode_wav(tf.constant(x[0, : 5 * RATE, None]), RATE)
    short = tf.audio.encode_wav(tf.constant(x[0, :RATE, None]), RATE)
    both = loaded.signatures["explain_wav"](audio=tf.stack([wav, short]))
    assert both["window_start"].shape == (2, 4)  # 5 s: 4 windows; 1 s: one, padded
    np.testing.assert_array_equal(both["window_predicted_class"][1, 1:], [-1, -1, -1])


def test_explain_cli_writes_the_timeline(planted, tmp_path):
    out = tmp_path / "out"
    result = invoke("explain", planted["run"], planted["root"] / "recording.wav", "--class", "beep", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "explanation.json").read_text())
    assert len(report["timeline"]) == 59
    assert report["window_seconds"] == WINDOW_SECONDS and report["aggregate"] == "mean"
    assert [w["start"] for w in report["timeline"] if w["predicted"] == "beep"] == [39.0, 40.0]
    assert "peak memory:" in result.output and "39-42 s beep" in result.output
    interpretation, rate = soundfile.read(out / "interpretation.wav")
    assert rate == RATE and len(interpretation) == len(planted["recording"])


def test_explain_cli_refuses_bad_windows(planted, tmp_path):
    wav = planted["root"] / "recording.wav"
    result = invoke("explain", planted["run"], wav, "--window-seconds", 3, "--out", tmp_path / "o")
    assert_clean_error(result, 2, "longer than the classifier's fixed input of 32000 samples")
    result = invoke("explain", planted["run"], wav, "--aggregate", "median", "--out", tmp_path / "o")
    assert_clean_error(result, 2, "--aggregate", "median")
    result = invoke("explain", planted["saved"], wav, "--aggregate", "max", "--out", tmp_path / "o")
    assert_clean_error(result, 2, "--aggregate 'max' differs from this SavedModel's 'mean'")
