"""Decoding and resampling against soundfile + scipy, the decoded-audio cache, unreadable files."""

from __future__ import annotations

import dataclasses
import os
import shutil
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from run_fixture import noise, write
from scipy.signal import butter, resample_poly, sosfiltfilt

from l2i_tf import data, tables
from l2i_tf.data import AudioDataError

RATE = 16000


def band_limited(n: int, rate: int, seed: int = 0) -> np.ndarray:
    """Sines between 110 Hz and 3.3 kHz: well inside every resampler's pass band at 8-48 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(0.15 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (110, 440, 1000, 2500, 3300))
    return x.astype("float32")


def table_of(*paths, labels=None) -> tables.ClipTable:
    labels = np.zeros(len(paths), "int64") if labels is None else np.asarray(labels)
    return tables.ClipTable(tuple(str(p) for p in paths), labels, ("a", "b"), None, False, str(Path(paths[0]).parent))


def decode_file(path: Path, sample_rate: int = RATE) -> np.ndarray:
    data.probe(str(path))  # the header is checked first, as every caller does
    return data.decode_audio(tf.io.read_file(str(path)), sample_rate).numpy()


def relative_rms_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - reference) ** 2)) / np.sqrt(np.mean(reference**2)))


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("num_frames", [3000, 3001])
@pytest.mark.parametrize(
    ("suffix", "subtype"),
    [
        (".wav", "PCM_16"),
        (".wav", "PCM_24"),
        (".wav", "PCM_U8"),
        (".wav", "FLOAT"),
        (".flac", "PCM_16"),
        (".flac", "PCM_24"),
        (".ogg", "VORBIS"),
    ],
)
def test_decode_matches_soundfile(tmp_path, suffix, subtype, num_frames):
    path = write(tmp_path / f"clip{suffix}", noise(num_frames, seed=7), subtype=subtype)
    expected, _ = soundfile.read(path, dtype="float32")
    decoded = decode_file(path)
    assert decoded.shape == expected.shape
    np.testing.assert_allclose(decoded, expected, atol=1e-5)


@pytest.mark.parametrize("num_frames", [2000, 2001])  # odd: the data chunk ends with a RIFF pad byte
@pytest.mark.parametrize(("subtype", "step"), [("PCM_U8", 2**-7), ("PCM_24", 2**-23)])
def test_8_bit_and_24_bit_wav_decode_to_their_exact_values(tmp_path, num_frames, subtype, step):
    x = noise(num_frames, seed=8)
    path = write(tmp_path / "clip.wav", x, subtype=subtype)
    decoded = decode_file(path)
    np.testing.assert_array_equal(decoded, soundfile.read(path, dtype="float32")[0])
    np.testing.assert_array_equal(decoded, np.round(decoded / step) * step)  # on the format's grid
    np.testing.assert_allclose(decoded, x, atol=step)


@pytest.mark.parametrize(
    ("suffix", "format", "subtype", "step"),
    [  # what libsndfile decodes, which an allow-list of encodings used to refuse
        (".wav", "WAVEX", "PCM_16", 2**-15),  # WAVE_FORMAT_EXTENSIBLE
        (".wav", "WAVEX", "PCM_24", 2**-23),
        (".wav", "WAV", "PCM_32", 2**-31),
        (".wav", "WAV", "DOUBLE", 0.0),
        (".aiff", "AIFF", "PCM_16", 2**-15),
        (".aiff", "AIFF", "PCM_24", 2**-23),
    ],
)
def test_every_encoding_libsndfile_reads_decodes_to_its_samples_in_a_data_set(tmp_path, suffix, format, subtype, step):
    x = noise(2001, seed=10)
    path = write(tmp_path / f"clip{suffix}", x, subtype=subtype, format=format)
    assert (soundfile.info(path).format, soundfile.info(path).subtype) == (format, subtype)
    (wave, _, _), *_ = data.waveform_dataset(table_of(path), RATE, cache=False).as_numpy_iterator()
    np.testing.assert_array_equal(wave, soundfile.read(path, dtype="float32")[0])
    np.testing.assert_allclose(wave, x, atol=max(step, 1e-7))  # x is float32: a double file holds it exactly


@pytest.mark.parametrize(("format", "chunk"), [("WAVEX", "data"), ("AIFF", "SSND")])
def test_truncated_wavex_and_aiff_are_errors_naming_them(tmp_path, format, chunk):
    path = write(tmp_path / "cut.wav", noise(4000), subtype="PCM_16", format=format)
    path.write_bytes(path.read_bytes()[:3000])  # libsndfile alone would read the frames that are left
    with pytest.raises(AudioDataError, match=rf"cut\.wav: cannot decode audio \(its {chunk} chunk ends past"):
        data.decode(path.read_bytes(), RATE, str(path))


def test_a_file_libsndfile_cannot_read_is_still_refused_naming_it(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("RIFF, but only in name: this is text")
    with pytest.raises(AudioDataError, match=r"notes\.wav: cannot read audio"):
        data.waveform_dataset(table_of(path), RATE, cache=False)


def test_stereo_file_is_downmixed_to_the_channel_mean(tmp_path):
    stereo = noise(1500, seed=9, channels=2)
    stereo[:, 1] = 0.25  # channels that differ, so a "first channel only" decode would show
    path = write(tmp_path / "stereo.wav", stereo, subtype="FLOAT")
    (wave, label, index), *_ = data.waveform_dataset(table_of(path), RATE, cache=False).as_numpy_iterator()
    assert wave.shape == (1500,)
    np.testing.assert_allclose(wave, stereo.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("file_rate", [44100, 48000, 8000, 22050])
def test_resampling_matches_scipy_resample_poly_without_delay(tmp_path, file_rate):
    n = file_rate // 2 + 13  # half a second and a few odd samples
    x = band_limited(n, file_rate, seed=file_rate)
    path = write(tmp_path / f"x{file_rate}.wav", x, file_rate, subtype="FLOAT")
    decoded = decode_file(path)
    assert len(decoded) == round(n * RATE / file_rate)
    g = gcd(RATE, file_rate)
    reference = resample_poly(x.astype("float64"), RATE // g, file_rate // g)[: len(decoded)]
    # a delay of even a fraction of a sample shows here: 0.07 samples gives ~3 % at these frequencies
    assert relative_rms_error(decoded[: len(reference)], reference) < 0.01


@pytest.mark.parametrize("file_rate", [44100, 48000, 8000, 22050])
@pytest.mark.parametrize("frequency", [440.0, 1000.0, 3000.0])
def test_resampled_sine_keeps_its_frequency_and_amplitude(tmp_path, file_rate, frequency):
    n = file_rate + 7
    x = (0.5 * np.sin(2 * np.pi * frequency * np.arange(n) / file_rate)).astype("float32")
    decoded = decode_file(write(tmp_path / "sine.wav", x, file_rate, subtype="FLOAT"))
    assert len(decoded) == (n * RATE + file_rate // 2) // file_rate
    ideal = 0.5 * np.sin(2 * np.pi * frequency * np.arange(len(decoded)) / RATE)
    inner = slice(400, -400)  # away from the zero padding at both ends
    snr = 10 * np.log10(np.sum(ideal[inner] ** 2) / np.sum((decoded[inner] - ideal[inner]) ** 2))
    assert snr > 100, snr  # the same frequency, amplitude and phase (measured: 118-146 dB)


def test_truncated_wav_is_an_error_naming_it(tmp_path):
    path = write(tmp_path / "cut.wav", noise(4000), subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:3000])  # libsndfile alone would read the 1478 frames that are left
    with pytest.raises(AudioDataError, match=r"cut\.wav: cannot decode audio .*truncated or corrupt"):
        data.decode(path.read_bytes(), RATE, str(path))


def test_a_clip_with_nan_or_infinite_samples_is_an_error_naming_the_file(tmp_path):
    for value in (np.nan, np.inf):
        samples = noise(400)
        samples[100] = value
        path = write(tmp_path / "bad.wav", samples, subtype="FLOAT")
        decoded = data.decode(path.read_bytes(), RATE, str(path))  # decoded as it is (explaining refuses it)
        with pytest.raises(AudioDataError, match=r"bad\.wav: the audio holds NaN or infinite samples"):
            data.finite(decoded, str(path))
    np.testing.assert_array_equal(data.finite(noise(10), "ok.wav"), noise(10))


def undecodable_files(folder: Path) -> tuple[list[Path], Path, Path]:
    """Three good WAVs, one cut short (its header reads) and one holding a NaN sample."""
    good = [write(folder / f"good{i}.wav", noise(400, seed=i)) for i in range(3)]
    cut = write(folder / "cut.wav", noise(4000), subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:3000])
    nan = noise(400)
    nan[5] = np.nan
    return good, cut, write(folder / "nan.wav", nan, subtype="FLOAT")


def test_files_that_fail_to_decode_stop_the_cache_pass_naming_them_and_leave_no_cache(tmp_path):
    """The header reads, the samples do not: an error inside tf.data's Dataset.save hangs it (TF 2.17), so the pass
    records the failures and raises once it is over."""
    import threading

    good, cut, bad = undecodable_files(tmp_path)
    cache = tmp_path / "cache"
    outcome = []

    def run():
        try:
            data.waveform_dataset(table_of(good[0], cut, good[1], bad, good[2]), RATE, cache_dir=cache)
        except Exception as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the cache pass hung on a file that fails to decode"
    (error,) = outcome
    assert isinstance(error, AudioDataError)
    assert "cut.wav: cannot decode audio" in str(error) and "1 more file(s) that fail to decode" in str(error)
    assert not cache.exists() or not any(cache.iterdir())  # no cache, not even a partial one


def test_on_error_skip_leaves_out_files_that_fail_to_decode_and_remembers_them(tmp_path, monkeypatch):
    good, cut, bad = undecodable_files(tmp_path)
    corrupt = bad_files(tmp_path)["corrupt_wav"]
    table = table_of(good[0], cut, good[1], corrupt, bad, good[2], labels=[0, 1, 2, 3, 4, 5])
    cache = tmp_path / "cache"
    kept, infos, errors = data.usable_table(table, on_error="skip", cache_dir=cache)
    assert kept.paths == tuple(map(str, good)) and kept.labels.tolist() == [0, 2, 5] and len(infos) == 3
    assert f"{corrupt}: cannot read audio" in errors[0] and len(errors) == 3
    assert f"{cut}: cannot decode audio" in errors[1] and f"{bad}: the audio holds NaN" in errors[2]
    waves, labels = data.load_waveforms(kept, RATE, cache_dir=cache)  # the kept clips decode
    assert waves.shape == (3, 400) and labels.tolist() == [0, 2, 5]

    monkeypatch.setattr(data, "decode", lambda *a, **k: pytest.fail("decoded again"))
    again = data.usable_table(table, on_error="skip", cache_dir=cache)  # the same files: the record is read
    assert again[0].paths == kept.paths and again[2] == errors
    assert data.usable_table(table_of(*good), on_error="raise", cache_dir=cache)[0].paths == kept.paths


def test_on_error_skip_with_no_decodable_clip_is_an_error(tmp_path):
    cut = write(tmp_path / "cut.wav", noise(4000), subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:3000])
    with pytest.raises(AudioDataError, match=r"no decodable audio .*1 clip\(s\) fail to decode"):
        data.usable_table(table_of(cut), on_error="skip", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("file_rate", [44100, 48000, 8000, 22050, 11025, 32000])
def test_resampled_impulse_peaks_at_the_same_time(tmp_path, file_rate):
    impulse = np.zeros(file_rate // 2, "float32")
    at = file_rate // 4 + 3
    impulse[at] = 0.9
    decoded = decode_file(write(tmp_path / "impulse.wav", impulse, file_rate, subtype="FLOAT"))
    assert abs(int(np.argmax(np.abs(decoded))) - at * RATE / file_rate) <= 0.5


def test_esc10_fold5_fixture_holds_80_five_second_clips(esc10_fold5):
    waveforms, labels, table = esc10_fold5
    assert waveforms.shape == (80, 80000) and waveforms.dtype == np.float32
    assert np.bincount(labels).tolist() == [8] * 10
    assert set(table.folds) == {5}
    assert np.all(np.abs(waveforms).max(axis=1) > 0)


def test_decoded_esc10_clips_equal_soundfile_plus_resample_poly(esc10_fold5):
    """Compared below 6 kHz: the two resamplers' anti-aliasing filters differ near the 8 kHz Nyquist."""
    waveforms, _, table = esc10_fold5
    low_pass = butter(8, 6000, fs=RATE, output="sos")
    for i in range(0, 80, 8):
        raw, rate = soundfile.read(table.paths[i], dtype="float32")
        assert rate == 44100
        reference = resample_poly(raw.astype("float64"), 160, 441)[:80000]
        reference = np.pad(reference, (0, 80000 - len(reference)))
        error = relative_rms_error(sosfiltfilt(low_pass, waveforms[i]), sosfiltfilt(low_pass, reference))
        assert error < 0.01, (table.paths[i], error)


# ---------------------------------------------------------------- cache


def test_waveform_dataset_caches_decoded_audio_and_reads_it_back(tmp_path, make_folders_dataset, monkeypatch):
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=3, seconds=0.25))
    cache = tmp_path / "cache"
    first = list(data.waveform_dataset(table, RATE, cache_dir=cache).as_numpy_iterator())
    (folder,) = [p for p in cache.iterdir()]
    assert folder.name.startswith("waveforms-") and (folder / "l2i_tf.json").is_file()
    for wave, label, index in first:
        expected, _ = soundfile.read(table.paths[index], dtype="float32")
        np.testing.assert_allclose(wave, expected, atol=1e-7)
        assert label == table.labels[index]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache holds the clips")

    monkeypatch.setattr(data, "decode_audio", no_decoding)
    second = list(data.waveform_dataset(table, RATE, cache_dir=cache).as_numpy_iterator())
    assert len(second) == len(first)
    for (a, la, ia), (b, lb, ib) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert (la, ia) == (lb, ib)
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folders left behind


def test_cached_audio_is_read_back_with_the_tables_current_labels(tmp_path, make_folders_dataset, monkeypatch):
    """The same files labelled otherwise (here in a classifier's wider class list) read the cache's audio with
    the new labels, single- and multi-label."""
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=2, seconds=0.1))
    cache = tmp_path / "cache"
    data.load_clips(table, RATE, cache_dir=cache)
    monkeypatch.setattr(data, "decode_audio", None)  # the second reads come from the cache only
    wider = table.in_classes(("other", *table.class_names))
    _, labels = data.load_clips(wider, RATE, cache_dir=cache)
    np.testing.assert_array_equal(labels, table.labels + 1)
    multi = dataclasses.replace(wider, labels=wider.multi_hot(), multilabel=True)
    _, hot = data.load_clips(multi, RATE, cache_dir=cache)
    np.testing.assert_array_equal(hot, wider.multi_hot())
    assert len(list(cache.iterdir())) == 1


def test_cache_is_keyed_by_sample_rate_and_file_contents(tmp_path, make_folders_dataset):
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=2, seconds=0.1))
    cache = tmp_path / "cache"
    data.waveform_dataset(table, RATE, cache_dir=cache)
    data.waveform_dataset(table, 8000, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    write(Path(table.paths[0]), noise(1600, seed=99))
    os.utime(table.paths[0], ns=(1, 1))  # a different mtime, whatever the clock resolution
    data.waveform_dataset(table, RATE, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3


def test_a_cache_another_process_wrote_first_is_used(tmp_path, make_folders_dataset, monkeypatch):
    """The same cache written by someone else while this process decodes: theirs is kept and read back."""
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=2, seconds=0.1))
    expected = list(data.waveform_dataset(table, RATE, cache_dir=tmp_path / "theirs").as_numpy_iterator())
    (theirs,) = (tmp_path / "theirs").iterdir()
    cache = tmp_path / "cache"
    real_decode = data.decode_audio

    def decode_while_another_process_finishes(*args):
        if not (cache / theirs.name).exists():
            shutil.copytree(theirs, cache / theirs.name)
        return real_decode(*args)

    monkeypatch.setattr(data, "decode_audio", decode_while_another_process_finishes)
    got = list(data.waveform_dataset(table, RATE, cache_dir=cache).as_numpy_iterator())
    assert [p.name for p in cache.iterdir()] == [theirs.name]  # theirs, and no temporary folder left
    assert len(got) == len(expected)
    for (a, la, ia), (b, lb, ib) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
        assert (la, ia) == (lb, ib)


def test_cache_folder_defaults_to_l2i_tf_cache_env(tmp_path, make_folders_dataset, monkeypatch):
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=1, seconds=0.1))
    monkeypatch.setenv("L2I_TF_CACHE", str(tmp_path / "env_cache"))
    assert data.default_cache_dir() == tmp_path / "env_cache"
    data.waveform_dataset(table, RATE)
    assert len(list((tmp_path / "env_cache").glob("waveforms-*"))) == 1


def test_uncached_dataset_writes_nothing(tmp_path, make_folders_dataset):
    table = tables.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=1, seconds=0.1))
    waves, labels = data.load_waveforms(table, RATE, 800, cache=False, cache_dir=tmp_path / "cache")
    assert waves.shape == (2, 800) and labels.tolist() == [0, 1]
    assert not (tmp_path / "cache").exists()


def test_load_waveforms_pads_and_crops_to_num_samples(tmp_path):
    short = write(tmp_path / "short.wav", noise(500, seed=1), subtype="FLOAT")
    long = write(tmp_path / "long.wav", noise(1500, seed=2), subtype="FLOAT")
    waves, _ = data.load_waveforms(table_of(short, long, labels=[0, 1]), RATE, 1000, cache=False)
    np.testing.assert_array_equal(waves[0, 500:], 0)
    np.testing.assert_allclose(waves[0, :500], noise(500, seed=1))
    np.testing.assert_allclose(waves[1], noise(1500, seed=2)[:1000])
    longest, _ = data.load_waveforms(table_of(short, long, labels=[0, 1]), RATE, cache=False)
    assert longest.shape == (2, 1500)


def test_fix_length_pads_crops_and_random_crops_inside_the_clip():
    x = tf.range(10, dtype=tf.float32)
    np.testing.assert_array_equal(data.fix_length(x, 4).numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(data.fix_length(x, 12).numpy(), list(range(10)) + [0, 0])
    for seed in range(5):
        crop = data.fix_length(x, 4, random_crop=True, seed=seed).numpy()
        assert crop[0] <= 6 and np.all(np.diff(crop) == 1)


# ---------------------------------------------------------------- bad files


def bad_files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {
        "corrupt_wav": folder / "corrupt.wav",
        "corrupt_ogg": folder / "corrupt.ogg",
        "empty": folder / "empty.wav",
    }
    files["corrupt_wav"].write_bytes(rng.bytes(2048))
    files["corrupt_ogg"].write_bytes(rng.bytes(2048))
    files["empty"].write_bytes(b"")
    files["no_frames"] = write(folder / "no_frames.wav", np.zeros((0, 1), "float32"), subtype="PCM_16")
    return files


@pytest.mark.parametrize("kind", ["corrupt_wav", "corrupt_ogg", "empty", "no_frames"])
def test_unreadable_file_is_an_error_naming_it(tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    good = write(tmp_path / "good.wav", noise(400))
    with pytest.raises(AudioDataError) as info:
        data.waveform_dataset(table_of(good, path), RATE, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_unreadable_files_are_skipped_and_counted_with_on_error_skip(tmp_path):
    bad = list(bad_files(tmp_path).values())
    good = [write(tmp_path / f"good{i}.wav", noise(400, seed=i)) for i in range(2)]
    table = table_of(good[0], *bad, good[1], labels=[0, 1, 1, 1, 1, 0])
    kept, infos, errors = data.probe_table(table, on_error="skip")
    assert kept.paths == (str(good[0]), str(good[1]))
    assert len(errors) == 4 and len(infos) == 2
    for path, error in zip(bad, errors, strict=True):
        assert str(path) in error
    waves, labels = data.load_waveforms(table, RATE, on_error="skip", cache_dir=tmp_path / "cache")
    assert waves.shape == (2, 400) and labels.tolist() == [0, 0]


def test_a_missing_file_is_named_as_missing(tmp_path):
    with pytest.raises(AudioDataError, match=r"gone\.wav: no such file"):
        data.probe(str(tmp_path / "gone.wav"))


def test_skipping_every_file_is_an_error(tmp_path):
    table = table_of(*bad_files(tmp_path).values())
    with pytest.raises(AudioDataError, match=r"no readable audio .*4 clip\(s\) failed"):
        data.probe_table(table, on_error="skip")


def test_on_error_must_be_raise_or_skip(tmp_path):
    with pytest.raises(ValueError, match="'ignore'"):
        data.probe_table(table_of(write(tmp_path / "a.wav", noise(10))), on_error="ignore")
