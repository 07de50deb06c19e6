"""The REST client: files re-encoded into the one WAV explain_wav takes, files checked before sending, timeouts."""

from __future__ import annotations

import io
import logging
import socket
import time

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from click.testing import CliRunner
from run_fixture import assert_clean_error, chirp, write

from cli.main import main
from l2i_tf import serving
from l2i_tf.data import AudioDataError

RATE = 16000


def on_16_bit_grid(x: np.ndarray) -> np.ndarray:
    return (np.round(x * 32768) / 32768).astype("float32")


def decode_wav(wav: bytes) -> tuple[np.ndarray, int]:
    """TensorFlow's decoder, the one explain_wav runs: ``([samples, channels], rate)``."""
    audio, rate = tf.audio.decode_wav(wav)
    return audio.numpy(), int(rate)


@pytest.mark.parametrize(
    ("suffix", "format", "subtype"),
    [  # every one refused by decode_wav as it is ("Expected 1 (PCM)", "Bad format chunk size")
        (".wav", "WAV", "FLOAT"),  # what `l2i-tf explain` writes
        (".wav", "WAV", "PCM_24"),
        (".wav", "WAVEX", "PCM_16"),
        (".wav", "WAV", "DOUBLE"),
        (".aiff", "AIFF", "PCM_16"),
        (".flac", "FLAC", "PCM_16"),
        (".wav", "WAV", "PCM_16"),
    ],
)
def test_any_file_libsndfile_reads_becomes_a_16_bit_wav_decode_wav_reads_with_the_same_samples(
    tmp_path, suffix, format, subtype
):
    x = on_16_bit_grid(np.stack([chirp(0.1), chirp(0.1, seed=1)], 1))  # samples every one of these formats holds
    path = write(tmp_path / f"in{suffix}", x, 22050, subtype=subtype, format=format)
    wav = serving.pcm16_wav(path)
    assert wav[12:16] == b"fmt " and int.from_bytes(wav[16:20], "little") == 16  # the plain PCM header
    audio, rate = decode_wav(wav)
    assert rate == 22050 and audio.shape == (len(x), 2)
    np.testing.assert_array_equal(audio, x)


def test_samples_are_rounded_to_16_bits_and_float_samples_beyond_one_clipped_with_a_warning(tmp_path, caplog):
    x = np.array([0.5 + 2**-17, 0.5 + 3 * 2**-17, -1.0, 1.0, 1.5, -2.0], "float32")
    path = write(tmp_path / "loud.wav", x, RATE, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="l2i_tf.serving"):
        pcm = soundfile.read(io.BytesIO(serving.pcm16_wav(path)), dtype="int16")[0]
    assert pcm.tolist() == [16384, 16385, -32768, 32767, 32767, -32768]
    assert "loud.wav: 3 sample(s) beyond ±1 clipped" in caplog.text


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty.wav", lambda p: (p.write_bytes(b""), p)[1], "cannot read audio"),
        ("text.ogg", lambda p: p.write_text("not audio") and p, "cannot read audio"),
        ("nan.wav", lambda p: write(p, np.array([0.1, np.nan], "float32"), RATE, subtype="FLOAT"), "NaN"),
        ("cut.wav", lambda p: p.write_bytes(write(p, chirp(0.1), RATE).read_bytes()[:1000]) and p, "truncated"),
    ],
)
def test_a_file_that_cannot_be_converted_is_named(tmp_path, name, make, message):
    path = make(tmp_path / name)
    with pytest.raises(AudioDataError, match=rf"{name}: .*{message}"):
        serving.pcm16_wav(path)


def test_request_names_every_file_it_cannot_send_and_sends_nothing(tmp_path):
    good = write(tmp_path / "good.wav", chirp(0.1), RATE)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.ogg").write_text("not audio")
    with socket.create_server(("127.0.0.1", 0)) as server:  # would hang until --timeout if anything were sent
        url = f"http://127.0.0.1:{server.getsockname()[1]}/v1/models/l2i"
        files = [str(good), str(tmp_path / "empty.wav"), str(tmp_path / "text.ogg")]
        result = CliRunner().invoke(main, ["request", "--url", url, *files, "--out", str(tmp_path / "out")])
    assert_clean_error(result, 2, "empty.wav: cannot read audio", "text.ogg: cannot read audio", "16-bit PCM WAV")
    assert "good.wav" not in result.output and not (tmp_path / "out").exists()


def test_a_timeout_names_the_url_and_the_seconds_waited(tmp_path):
    path = write(tmp_path / "a.wav", chirp(0.1), RATE)
    with socket.create_server(("127.0.0.1", 0)) as server:  # takes the connection, never replies
        url = f"http://127.0.0.1:{server.getsockname()[1]}/v1/models/l2i"
        start = time.monotonic()
        result = CliRunner().invoke(
            main, ["request", "--url", url, str(path), "--out", str(tmp_path / "o"), "--timeout", "1.5"]
        )
        waited = time.monotonic() - start
    assert_clean_error(result, 1, f"{url}:predict: timed out after 1.5 s")
    assert 1.4 < waited < 10


def test_a_files_prediction_drops_the_timeline_rows_padded_past_its_windows():
    prediction = {
        "predicted_class": 1,
        "window_start": [0, 8000, 0],
        "window_end": [16000, 24000, 0],
        "window_predicted_class": [1, 2, -1],
        "window_class_probabilities": [[0.1, 0.9], [0.2, 0.8], [0.0, 0.0]],
        "window_selected": [[True], [False], [False]],
    }
    trimmed = serving.without_padding(prediction)
    assert trimmed["window_start"] == [0, 8000] and trimmed["window_end"] == [16000, 24000]
    assert trimmed["window_predicted_class"] == [1, 2] and trimmed["window_selected"] == [[True], [False]]
    assert trimmed["window_class_probabilities"] == [[0.1, 0.9], [0.2, 0.8]] and trimmed["predicted_class"] == 1
    assert serving.without_padding({"predicted_class": 0}) == {"predicted_class": 0}
