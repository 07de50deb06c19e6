"""STFT configuration, STFT/ISTFT round trip, and the log-mel front-end layer."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from l2i_tf import audio
from l2i_tf.audio import LogMelSpectrogram, STFTConfig

CONFIGS = [
    STFTConfig(),  # the NMF configuration: 1024 / 256, Hann
    STFTConfig(16000, 400, 160, 512, "hann"),  # the classifier front-end's
    STFTConfig(22050, 512, 128, 1024, "hamming"),  # zero-padded FFT, other window
    STFTConfig(8000, 255, 100, 256, "hann"),  # odd frame, hop not dividing the frame
]


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype("float64")
    error = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(error, 1e-30)))


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.frame_length}-{c.frame_step}-{c.window}")
@pytest.mark.parametrize("num_samples", [16000, 16001, 12345, 999])
def test_istft_reconstructs_edges_for_odd_lengths(config, num_samples):
    x = noise(num_samples, seed=num_samples)
    y = audio.istft(audio.stft(x, config), num_samples, config).numpy()
    assert y.shape == (num_samples,)
    assert snr_db(x, y) >= 100
    # the edges, where a missing front pad would show, reconstruct as well as the middle
    edge = config.frame_length
    assert snr_db(x[:edge], y[:edge]) >= 100
    assert snr_db(x[-edge:], y[-edge:]) >= 100


@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: f"{c.frame_length}-{c.frame_step}")
@pytest.mark.parametrize("num_samples", [1, 7, 100])
def test_istft_reconstructs_clips_shorter_than_one_frame(config, num_samples):
    assert num_samples < config.frame_length
    x = noise(num_samples, seed=3)
    spectrum = audio.stft(x, config)
    assert spectrum.shape[-2] == config.num_frames(num_samples)
    y = audio.istft(spectrum, num_samples, config).numpy()
    assert y.shape == (num_samples,)
    assert snr_db(x, y) >= 100


def test_istft_reconstructs_every_item_of_a_batch():
    config = CONFIGS[0]
    x = noise((3, 2, 5001), seed=1)
    x[1, 0] *= 1e-3  # a quiet item must not be swamped by its neighbours
    spectrum = audio.stft(x, config)
    assert spectrum.shape == (3, 2, config.num_frames(5001), config.num_bins)
    y = audio.istft(spectrum, 5001, config).numpy()
    assert y.shape == x.shape
    for i in range(3):
        for j in range(2):
            assert snr_db(x[i, j], y[i, j]) >= 100, (i, j)


def test_synthesize_inverts_analyze():
    config = CONFIGS[1]
    x = noise(4321, seed=2)
    log_magnitude, phase = audio.analyze(x, config)
    assert float(np.min(log_magnitude)) >= 0
    np.testing.assert_allclose(np.abs(phase.numpy()), 1.0, atol=1e-5)
    assert snr_db(x, audio.synthesize(log_magnitude, phase, 4321, config).numpy()) >= 90


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.frame_length}-{c.frame_step}")
@pytest.mark.parametrize("num_samples", [1, 255, 256, 257, 1024, 16000, 80000])
def test_frame_count_equals_config_num_frames(config, num_samples):
    spectrum = audio.stft(np.zeros(num_samples, "float32"), config)
    assert spectrum.shape == (config.num_frames(num_samples), config.num_bins)


def test_stft_rejects_integer_and_scalar_waveforms():
    with pytest.raises(ValueError, match="int32"):
        audio.stft(np.zeros(100, "int32"), STFTConfig())
    with pytest.raises(ValueError, match="scalar"):
        audio.stft(np.float32(0.0), STFTConfig())


def test_istft_rejects_real_input_and_wrong_bin_count():
    config = STFTConfig()
    with pytest.raises(ValueError, match="complex"):
        audio.istft(np.zeros((4, config.num_bins), "float32"), 100, config)
    with pytest.raises(ValueError, match="257 bins.*513"):
        audio.istft(np.zeros((4, 257), "complex64"), 100, config)


# ---------------------------------------------------------------- STFTConfig


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.frame_length}-{c.frame_step}-{c.window}")
def test_stft_config_round_trips_through_json(config, tmp_path):
    path = tmp_path / "stft.json"
    config.save(path)
    assert json.loads(path.read_text()) == config.to_dict()
    assert STFTConfig.load(path) == config
    assert STFTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("kwargs", "quoted"),
    [
        ({"frame_step": 2048}, "2048"),
        ({"fft_length": 512}, "512"),
        ({"window": "kaiser"}, "'kaiser'"),
        ({"frame_length": 0}, "0"),
        ({"frame_step": -4}, "-4"),
        ({"fft_length": 1024.0}, "1024.0"),
        ({"frame_length": True}, "True"),
    ],
)
def test_stft_config_rejects_invalid_values_quoting_them(kwargs, quoted):
    with pytest.raises(ValueError) as info:
        STFTConfig(**kwargs)
    assert quoted in str(info.value)
    assert next(iter(kwargs)) in str(info.value)


@pytest.mark.parametrize("sample_rate", [0, -16000, 16000.0, 22050.5, "16000"])
def test_stft_config_rejects_invalid_sample_rate_quoting_it(sample_rate):
    with pytest.raises(ValueError, match="sample_rate") as info:
        STFTConfig(sample_rate=sample_rate)
    assert repr(sample_rate) in str(info.value)


def test_stft_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="hop"):
        STFTConfig.from_dict({**STFTConfig().to_dict(), "hop": 256})


def test_check_same_names_the_differing_field():
    STFTConfig().check_same(STFTConfig())
    with pytest.raises(ValueError) as info:
        STFTConfig().check_same(STFTConfig(frame_step=512), what="the dictionary")
    message = str(info.value)
    assert "frame_step" in message and "256" in message and "512" in message
    assert "the dictionary" in message
    for same in ("sample_rate", "frame_length", "fft_length", "window"):
        assert same not in message


# ---------------------------------------------------------------- LogMelSpectrogram


def test_log_mel_config_round_trips():
    layer = LogMelSpectrogram(22050, 512, 128, 1024, num_mel_bins=40, fmin=20.0, fmax=8000.0, name="mel")
    clone = LogMelSpectrogram.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = noise((2, 3000))
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_log_mel_survives_keras_save_and_load_inside_a_model(tmp_path):
    waveform = keras.Input(shape=(None,))
    features = LogMelSpectrogram(num_mel_bins=32, name="logmel")(waveform)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(features))
    model = keras.Model(waveform, logits)
    x = noise((2, 4000), seed=5)
    expected = model(x).numpy()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.get_layer("logmel"), LogMelSpectrogram)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)


@pytest.mark.parametrize("num_samples", [400, 16000, 16001])
def test_log_mel_frame_count_matches_stft_config(num_samples):
    layer = LogMelSpectrogram(num_mel_bins=24)
    out = layer(noise((2, num_samples)))
    assert out.shape == (2, STFTConfig(16000, 400, 160, 512).num_frames(num_samples), 24)
    assert layer(noise((2, num_samples, 1))).shape == out.shape  # [batch, samples, 1] is accepted too


@pytest.mark.parametrize("sample_rate", [0, -8000, 16000.5])
def test_log_mel_rejects_invalid_sample_rate_quoting_it(sample_rate):
    with pytest.raises(ValueError, match="sample_rate") as info:
        LogMelSpectrogram(sample_rate=sample_rate)
    assert repr(sample_rate) in str(info.value)


# ---------------------------------------------------------------- the STFT at any rate


@pytest.mark.parametrize(
    ("rate", "frame"), [(8000, 512), (11025, 1024), (16000, 1024), (22050, 2048), (44100, 4096), (48000, 4096)]
)
def test_for_rate_keeps_at_least_the_frame_duration_of_16_khz_in_power_of_two_sizes(rate, frame):
    config = STFTConfig.for_rate(rate)
    assert (config.sample_rate, config.frame_length, config.frame_step, config.fft_length) == (
        rate,
        frame,
        frame // 4,
        frame,
    )
    assert config.frame_length / rate >= 1024 / 16000 > config.frame_length / 2 / rate


def test_for_rate_at_16_khz_is_todays_default_and_given_sizes_lead_the_others():
    assert STFTConfig.for_rate(16000) == STFTConfig() == STFTConfig(16000, 1024, 256, 1024, "hann")
    assert STFTConfig.for_rate(16000, frame_length=400) == STFTConfig(16000, 400, 100, 512)
    assert STFTConfig.for_rate(44100, frame_step=441) == STFTConfig(44100, 4096, 441, 4096)
    assert STFTConfig.for_rate(8000, fft_length=2048) == STFTConfig(8000, 512, 128, 2048)


@pytest.mark.parametrize("rate", [8000, 48000])
@pytest.mark.parametrize("seconds", [1.0, 0.3001])
def test_istft_reconstructs_at_other_rates(rate, seconds):
    config = STFTConfig.for_rate(rate)
    num_samples = int(seconds * rate)
    x = noise(num_samples, seed=rate)
    y = audio.istft(audio.stft(x, config), num_samples, config).numpy()
    assert y.shape == (num_samples,)
    assert snr_db(x, y) > 100
    edge = config.frame_length
    assert snr_db(x[:edge], y[:edge]) > 100 and snr_db(x[-edge:], y[-edge:]) > 100


@pytest.mark.parametrize("rate", [0, -8000, 16000.5, "abc", None])
def test_for_rate_refuses_a_rate_that_is_not_a_positive_integer_with_the_value_as_data(rate):
    with pytest.raises(audio.AudioSettingError) as refused:
        STFTConfig.for_rate(rate)
    assert (refused.value.field, refused.value.value, refused.value.limit) == ("sample_rate", rate, None)
    assert repr(rate) in str(refused.value)


@pytest.mark.parametrize(
    ("sizes", "field", "value", "limit"),
    [
        ({"frame_step": 2048}, "frame_step", 2048, ("frame_length", 1024)),
        ({"frame_length": 256, "frame_step": 512}, "frame_step", 512, ("frame_length", 256)),
        ({"fft_length": 512}, "fft_length", 512, ("frame_length", 1024)),
        ({"frame_length": 0}, "frame_length", 0, None),
        ({"frame_step": -1}, "frame_step", -1, None),
        ({"fft_length": 1024.0}, "fft_length", 1024.0, None),
    ],
)
def test_for_rate_refuses_sizes_that_do_not_fit_with_the_values_as_data(sizes, field, value, limit):
    with pytest.raises(audio.AudioSettingError) as refused:
        STFTConfig.for_rate(16000, **sizes)
    assert (refused.value.field, refused.value.value, refused.value.limit) == (field, value, limit)
    assert str(value) in str(refused.value)


def test_log_mel_front_end_keeps_25_and_10_ms_at_any_rate():
    default = LogMelSpectrogram()
    at16k = LogMelSpectrogram.for_rate(16000)
    assert (at16k.frame_length, at16k.frame_step, at16k.fft_length) == (400, 160, 512)
    assert at16k.get_config() | {"name": None} == default.get_config() | {"name": None}
    at22k = LogMelSpectrogram.for_rate(22050, num_mel_bins=16)
    assert (at22k.sample_rate, at22k.frame_length, at22k.frame_step, at22k.fft_length) == (22050, 551, 220, 1024)
    assert at22k(noise((1, 22050))).shape == (1, STFTConfig(22050, 551, 220, 1024).num_frames(22050), 16)


def test_magnitude_and_power_equal_tf_abs_of_an_stft():
    spectrum = audio.stft(noise((3, 8000), seed=4), STFTConfig())
    reference = np.abs(spectrum.numpy().astype("complex128"))
    np.testing.assert_allclose(audio.magnitude(spectrum).numpy(), reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(audio.power(spectrum).numpy(), reference**2, rtol=1e-5, atol=1e-6)
    assert audio.magnitude(np.zeros((2, 3), "complex64")).numpy().tolist() == [[0.0] * 3] * 2
