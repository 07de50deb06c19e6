"""Data sets: the four layouts, decoding and resampling against soundfile + scipy, the cache, bad inputs, mixtures."""

from __future__ import annotations

import csv
import os
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from scipy.signal import butter, resample_poly, sosfiltfilt

from l2i_tf import data
from l2i_tf.data import AudioDataError

RATE = 16000


def write(path: Path, samples, rate: int = RATE, subtype: str | None = None, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype, format=format)
    return path


def noise(n: int, seed: int = 0, channels: int | None = None) -> np.ndarray:
    shape = (n,) if channels is None else (n, channels)
    return (0.5 * np.random.default_rng(seed).uniform(-1, 1, shape)).astype("float32")


def band_limited(n: int, rate: int, seed: int = 0) -> np.ndarray:
    """Sines between 110 Hz and 3.3 kHz: well inside every resampler's pass band at 8-48 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    x = sum(0.15 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (110, 440, 1000, 2500, 3300))
    return x.astype("float32")


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table_of(*paths, labels=None) -> data.ClipTable:
    labels = np.zeros(len(paths), "int64") if labels is None else np.asarray(labels)
    return data.ClipTable(tuple(str(p) for p in paths), labels, ("a", "b"), None, False, str(Path(paths[0]).parent))


def decode_file(path: Path, sample_rate: int = RATE) -> np.ndarray:
    info = data.probe(str(path))
    return data.decode_audio(tf.io.read_file(str(path)), info.decoder, info.sample_rate, sample_rate).numpy()


def relative_rms_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate - reference) ** 2)) / np.sqrt(np.mean(reference**2)))


# ---------------------------------------------------------------- layouts


def test_esc10_table_reads_the_bundled_400_clips_in_10_classes_and_5_folds():
    table = data.load_table(data.ESC10_ROOT, "esc10")
    assert len(table) == 400
    assert table.class_names[:3] == ("Dog bark", "Rain", "Sea waves")
    assert len(table.class_names) == 10 and not table.multilabel
    assert np.bincount(table.folds).tolist() == [0, 80, 80, 80, 80, 80]
    assert np.bincount(table.labels).tolist() == [40] * 10
    for path, label, fold in zip(table.paths, table.labels, table.folds, strict=True):
        assert Path(path).parent.name.endswith(" - " + table.class_names[label])
        assert Path(path).name.startswith(f"{fold}-")
    assert data.esc10_table().paths == table.paths  # the default root is the bundled copy


def test_esc50_layout_reads_meta_csv_and_audio_folder(tmp_path):
    rows = [
        ("1-1-A-0.wav", 1, 0, "dog"),
        ("1-2-A-1.wav", 1, 1, "rooster"),
        ("2-3-A-2.wav", 2, 2, "pig"),
        ("2-4-A-0.wav", 2, 0, "dog"),
        ("3-5-A-1.wav", 3, 1, "rooster"),
    ]
    for i, (name, *_) in enumerate(rows):
        write(tmp_path / "audio" / name, noise(800, seed=i))
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category", "esc10"],
        [(*r, "False") for r in rows],
    )
    table = data.load_table(tmp_path, "esc50")
    assert table.class_names == ("dog", "rooster", "pig")
    assert table.labels.tolist() == [0, 1, 2, 0, 1]
    assert table.folds == (1, 1, 2, 2, 3)
    assert table.paths == tuple(str((tmp_path / "audio" / r[0]).resolve()) for r in rows)


def test_esc50_layout_rejects_a_target_with_two_category_names(tmp_path):
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category"],
        [("a.wav", 1, 0, "dog"), ("b.wav", 1, 0, "cat")],
    )
    with pytest.raises(AudioDataError, match=r"esc50\.csv:3.*'dog'.*'cat'"):
        data.esc50_table(tmp_path)


def test_esc50_layout_names_missing_columns(tmp_path):
    write_csv(tmp_path / "meta" / "esc50.csv", ["filename", "fold", "category"], [("a.wav", 1, "dog")])
    with pytest.raises(AudioDataError, match=r"missing column\(s\) \['target'\]"):
        data.esc50_table(tmp_path)


def test_folders_layout_takes_class_names_from_folders_and_spreads_folds(tmp_path):
    for name in ("siren", "bird", "engine"):
        for k in range(5):
            write(tmp_path / name / f"{k}.wav", noise(400, seed=k))
    (tmp_path / "bird" / "notes.txt").write_text("not audio")
    write(tmp_path / ".hidden" / "x.wav", noise(400))
    table = data.load_table(tmp_path, "folders")
    assert table.class_names == ("bird", "engine", "siren")
    assert len(table) == 15
    for c in range(3):  # 5 clips, 5 folds: each fold once per class
        assert sorted(f for f, label in zip(table.folds, table.labels, strict=True) if label == c) == [1, 2, 3, 4, 5]

    def fold_of(t):
        return dict(zip(t.paths, t.folds, strict=True))

    assert fold_of(data.folders_table(tmp_path, seed=0)) == fold_of(table)
    assert fold_of(data.folders_table(tmp_path, seed=1)) != fold_of(table)


def test_manifest_with_multi_hot_columns_is_multilabel(tmp_path):
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        write(tmp_path / name, noise(400))
    manifest = write_csv(
        tmp_path / "manifest.csv",
        ["filename", "fold", "dog", "rain", "siren"],
        [("a.wav", 1, 1, 0, 0), ("b.wav", 2, 1, 1, 0), ("sub/c.wav", 2, 0, 0, 1)],
    )
    table = data.load_table(manifest, "manifest")
    assert table.multilabel
    assert table.class_names == ("dog", "rain", "siren")
    np.testing.assert_array_equal(table.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert table.folds == (1, 2, 2)
    assert table.paths[2] == str((tmp_path / "sub" / "c.wav").resolve())


def test_manifest_with_one_hot_columns_is_single_label(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog", "rain"], [("a.wav", 0, 1), ("b.wav", 1, 0)])
    table = data.manifest_table(manifest)
    assert not table.multilabel and table.folds is None
    assert table.labels.tolist() == [1, 0]


def test_manifest_with_labels_column_reads_several_labels_per_row(tmp_path):
    manifest = write_csv(
        tmp_path / "m.csv",
        ["filename", "labels"],
        [("a.wav", "dog"), ("b.wav", "rain; dog"), ("c.wav", "siren")],
    )
    table = data.manifest_table(manifest)
    assert table.multilabel
    assert table.class_names == ("dog", "rain", "siren")
    np.testing.assert_array_equal(table.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    given = data.manifest_table(manifest, class_names=["siren", "rain", "dog", "car"])
    assert given.class_names == ("siren", "rain", "dog", "car")
    np.testing.assert_array_equal(given.labels, [[0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]])


# ---------------------------------------------------------------- bad tables


def test_manifest_naming_an_unknown_class_names_the_class_and_row(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("b.wav", "dog;unicorn")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: unknown class 'unicorn'"):
        data.manifest_table(manifest, class_names=["dog", "rain"])


def test_manifest_with_an_unknown_class_column_names_the_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog", "unicorn"], [("a.wav", 1, 0)])
    with pytest.raises(AudioDataError, match="unicorn"):
        data.manifest_table(manifest, class_names=["dog", "rain"])


def test_manifest_rejects_a_non_binary_label_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog"], [("a.wav", 1), ("b.wav", "yes")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: column 'dog' must be 0 or 1, got 'yes'"):
        data.manifest_table(manifest)


def test_manifest_path_escaping_the_data_root_is_an_error_naming_it(tmp_path):
    manifest = write_csv(tmp_path / "set" / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("../x.wav", "dog")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: path '\.\./x\.wav' escapes the data root"):
        data.manifest_table(manifest)


def test_manifest_absolute_path_outside_the_root_is_an_error(tmp_path):
    outside = write(tmp_path / "outside.wav", noise(100))
    manifest = write_csv(tmp_path / "set" / "m.csv", ["filename", "labels"], [(str(outside), "dog")])
    with pytest.raises(AudioDataError, match="escapes the data root"):
        data.manifest_table(manifest)


def test_manifest_duplicate_rows_are_an_error_naming_both_lines(tmp_path):
    manifest = write_csv(
        tmp_path / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("b.wav", "rain"), ("./a.wav", "rain")]
    )
    with pytest.raises(AudioDataError, match=r"m\.csv:4: '\./a\.wav' is listed twice \(first on line 2\)"):
        data.manifest_table(manifest)


def test_manifest_without_filename_column_names_the_missing_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["file", "labels"], [("a.wav", "dog")])
    with pytest.raises(AudioDataError, match=r"missing column\(s\) \['filename'\]"):
        data.manifest_table(manifest)


def test_manifest_without_label_columns_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "fold"], [("a.wav", 1)])
    with pytest.raises(AudioDataError, match="no label columns"):
        data.manifest_table(manifest)


def test_manifest_with_a_non_integer_fold_names_the_row(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "fold", "labels"], [("a.wav", "one", "dog")])
    with pytest.raises(AudioDataError, match=r"m\.csv:2: fold must be an integer, got 'one'"):
        data.manifest_table(manifest)


def test_missing_manifest_is_an_error_naming_it(tmp_path):
    with pytest.raises(AudioDataError, match="nope.csv"):
        data.load_table(tmp_path / "nope.csv", "manifest")


@pytest.mark.parametrize("layout", ["esc10", "folders"])
def test_data_set_without_audio_is_an_error(tmp_path, layout):
    (tmp_path / "001 - Dog bark").mkdir()
    (tmp_path / "001 - Dog bark" / "readme.txt").write_text("no audio here")
    with pytest.raises(AudioDataError, match="no audio clips found"):
        data.load_table(tmp_path, layout)


def test_manifest_without_rows_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "labels"], [])
    with pytest.raises(AudioDataError, match="no audio clips found"):
        data.manifest_table(manifest)


def test_unknown_layout_is_an_error_listing_the_layouts(tmp_path):
    with pytest.raises(AudioDataError, match=r"'tfrecord'.*esc10"):
        data.load_table(tmp_path, "tfrecord")


def test_splits_reject_overlapping_folds_and_missing_folds():
    with pytest.raises(AudioDataError, match="overlap"):
        data.Splits(train=(1, 2), validation=(2,), test=(5,))
    assert data.Splits.holding_out(5) == data.Splits(train=(2, 3, 4), validation=(1,), test=(5,))
    table = data.esc10_table()
    with pytest.raises(AudioDataError, match=r"fold\(s\) \[7\]"):
        table.with_folds([7])
    train, validation, test = data.split(table, data.Splits())
    assert (len(train), len(validation), len(test)) == (240, 80, 80)
    assert set(test.folds) == {5} and set(validation.folds) == {4}


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


def test_32_bit_integer_wav_is_an_unsupported_encoding_naming_the_file(tmp_path):
    path = write(tmp_path / "int32.wav", noise(100), subtype="PCM_32")
    with pytest.raises(AudioDataError, match=r"int32\.wav: unsupported encoding WAV/PCM_32"):
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
    table = data.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=3, seconds=0.25))
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


def test_cache_is_keyed_by_sample_rate_and_file_contents(tmp_path, make_folders_dataset):
    table = data.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=2, seconds=0.1))
    cache = tmp_path / "cache"
    data.waveform_dataset(table, RATE, cache_dir=cache)
    data.waveform_dataset(table, 8000, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2
    write(Path(table.paths[0]), noise(1600, seed=99))
    os.utime(table.paths[0], ns=(1, 1))  # a different mtime, whatever the clock resolution
    data.waveform_dataset(table, RATE, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3


def test_cache_folder_defaults_to_l2i_tf_cache_env(tmp_path, make_folders_dataset, monkeypatch):
    table = data.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=1, seconds=0.1))
    monkeypatch.setenv("L2I_TF_CACHE", str(tmp_path / "env_cache"))
    assert data.default_cache_dir() == tmp_path / "env_cache"
    data.waveform_dataset(table, RATE)
    assert len(list((tmp_path / "env_cache").glob("waveforms-*"))) == 1


def test_uncached_dataset_writes_nothing(tmp_path, make_folders_dataset):
    table = data.folders_table(make_folders_dataset(tmp_path / "set", clips_per_class=1, seconds=0.1))
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


def test_skipping_every_file_is_an_error(tmp_path):
    table = table_of(*bad_files(tmp_path).values())
    with pytest.raises(AudioDataError, match=r"no readable audio .*4 clip\(s\) failed"):
        data.probe_table(table, on_error="skip")


def test_on_error_must_be_raise_or_skip(tmp_path):
    with pytest.raises(ValueError, match="'ignore'"):
        data.probe_table(table_of(write(tmp_path / "a.wav", noise(10))), on_error="ignore")


# ---------------------------------------------------------------- mixtures


@pytest.fixture
def clips():
    """20 clips of 5 classes with very different loudness, so SNR scaling has work to do."""
    rng = np.random.default_rng(0)
    waveforms = (rng.standard_normal((20, 2000)) * rng.uniform(0.01, 1.0, (20, 1))).astype("float32")
    return waveforms, np.repeat(np.arange(5), 4)


def energy_db(x: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.sum(x.astype("float64") ** 2, axis=-1))


def test_mixtures_are_exactly_the_sum_of_their_sources(clips):
    mix = data.make_mixtures(*clips, num_classes=5, count=30, seed=1)
    assert mix["mixture"].shape == (30, 2000) and mix["sources"].shape == (30, 3, 2000)
    np.testing.assert_array_equal(mix["mixture"], mix["sources"].sum(axis=1))


def test_mixture_sources_sit_at_the_requested_snr(clips):
    mix = data.make_mixtures(*clips, num_classes=5, count=30, snr_db=(-5.0, 5.0), seed=2)
    for m in range(30):
        used = np.flatnonzero(mix["classes"][m] >= 0)
        target = mix["sources"][m, 0]
        for s in used[1:]:
            measured = energy_db(target) - energy_db(mix["sources"][m, s])
            assert abs(measured - mix["snr_db"][m, s]) < 1e-3
            assert -5.0 <= mix["snr_db"][m, s] <= 5.0
        np.testing.assert_array_equal(mix["sources"][m, len(used) :], 0)


def test_mixtures_at_a_fixed_snr_use_exactly_that_snr(clips):
    mix = data.make_mixtures(*clips, num_classes=5, count=10, num_sources=2, snr_db=3.0, seed=3)
    assert np.all(mix["classes"] >= 0)
    measured = energy_db(mix["sources"][:, 0]) - energy_db(mix["sources"][:, 1])
    np.testing.assert_allclose(measured, 3.0, atol=1e-3)


def test_mixture_labels_are_multi_hot_of_distinct_chosen_classes(clips):
    waveforms, labels = clips
    mix = data.make_mixtures(waveforms, labels, num_classes=6, count=40, num_sources=(2, 3), seed=4)
    counts = set()
    for m in range(40):
        chosen = mix["classes"][m][mix["classes"][m] >= 0]
        counts.add(len(chosen))
        assert len(set(chosen)) == len(chosen)
        expected = np.zeros(6, "float32")
        expected[chosen] = 1
        np.testing.assert_array_equal(mix["labels"][m], expected)
        for s, c in enumerate(chosen):  # each source is a scaled clip of its class
            source = mix["sources"][m, s]
            scales = [np.dot(source, clip) / np.dot(clip, clip) for clip in waveforms[labels == c]]
            assert any(
                np.allclose(source, a * clip, atol=1e-6) for a, clip in zip(scales, waveforms[labels == c], strict=True)
            )
    assert counts == {2, 3}


def test_mixtures_are_deterministic_per_seed(clips):
    a = data.make_mixtures(*clips, num_classes=5, count=8, seed=5)
    b = data.make_mixtures(*clips, num_classes=5, count=8, seed=5)
    c = data.make_mixtures(*clips, num_classes=5, count=8, seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["mixture"], c["mixture"])
    without = data.make_mixtures(*clips, num_classes=5, count=8, seed=5, keep_sources=False)
    assert "sources" not in without
    np.testing.assert_array_equal(without["mixture"], a["mixture"])


def test_mixtures_need_single_label_clips_and_enough_classes(clips):
    waveforms, labels = clips
    with pytest.raises(AudioDataError, match="single-label"):
        data.make_mixtures(waveforms, np.eye(5)[labels], num_classes=5, count=2)
    with pytest.raises(AudioDataError, match="need 3 classes"):
        data.make_mixtures(waveforms[:8], labels[:8], num_classes=5, count=2)


def test_mixtures_of_real_esc10_clips_sum_to_their_sources(esc10_fold5):
    waveforms, labels, _ = esc10_fold5
    mix = data.make_mixtures(waveforms, labels, num_classes=10, count=6, snr_db=0.0, seed=0)
    np.testing.assert_array_equal(mix["mixture"], mix["sources"].sum(axis=1))
    assert np.all(mix["labels"].sum(axis=1) >= 2)
