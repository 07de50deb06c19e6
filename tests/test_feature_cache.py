"""Issue 14: the classifier's features in disk shards, their (seed, epoch) training order, streamed mixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2i_tf import feature_cache, mixtures, training, training_data
from l2i_tf.feature_cache import Shards


def fake_features(batch: np.ndarray) -> dict:
    """A stand-in classifier: deterministic functions of the batch, two sequences."""
    mean = batch.mean(axis=1, keepdims=True)
    return {
        "waveform": batch,
        "classifier_logits": np.concatenate([mean, -mean, batch[:, :1]], axis=1),
        "sequences": (batch[:, :12].reshape(-1, 4, 3), batch[:, :8].reshape(-1, 2, 4)),
    }


def examples(n: int, length: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, length)).astype("float32")


@pytest.fixture
def small_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "SHARD_EXAMPLES", 64)
    waves = examples(150)
    shards = feature_cache.write_split(tmp_path / "train", feature_cache.rebatch(iter(waves)), fake_features)
    return waves, shards


def test_shards_round_trip_equal_the_in_memory_features(small_shards):
    waves, shards = small_shards
    assert shards.counts == [64, 64, 22] and len(shards) == 150
    reloaded = Shards.load(shards.folder)
    expected = fake_features(waves)
    batches = list(reloaded.dataset(50))
    assert [len(b["waveform"]) for b in batches] == [50, 50, 50]
    got = {key: np.concatenate([b[key].numpy() for b in batches]) for key in ("waveform", "classifier_logits")}
    np.testing.assert_array_equal(got["waveform"], expected["waveform"])
    np.testing.assert_array_equal(got["classifier_logits"], expected["classifier_logits"])
    for i, sequence in enumerate(expected["sequences"]):
        np.testing.assert_array_equal(np.concatenate([b["sequences"][i].numpy() for b in batches]), sequence)
    np.testing.assert_array_equal(reloaded.column("classifier_logits"), expected["classifier_logits"])


def test_a_split_without_its_index_is_not_a_cache(small_shards):
    _, shards = small_shards
    (shards.folder / feature_cache.INDEX).unlink()
    with pytest.raises(FileNotFoundError, match="index.json is missing"):
        Shards.load(shards.folder)


def _epoch_rows(shards, seed, first, epochs, batch_size=10):
    """The examples (identified by their first sample) of every epoch, in the order training reads them."""
    ds, steps = shards.epochs_dataset(batch_size, seed, first, epochs)
    rows = [b["waveform"].numpy()[:, 0] for b in ds]
    assert len(rows) == steps * (epochs - first)
    return [np.concatenate(rows[i : i + steps]) for i in range(0, len(rows), steps)]


def test_training_order_is_a_pure_function_of_seed_and_epoch_and_resumes_exactly(small_shards):
    waves, shards = small_shards
    full = _epoch_rows(shards, 3, 0, 4)
    for epoch in full:  # every example once an epoch
        np.testing.assert_array_equal(np.sort(epoch), np.sort(waves[:, 0]))
    resumed = _epoch_rows(shards, 3, 2, 4)  # a run resumed after two epochs reads the same epochs 2 and 3
    np.testing.assert_array_equal(resumed[0], full[2])
    np.testing.assert_array_equal(resumed[1], full[3])
    assert not np.array_equal(full[0], full[1])
    assert not np.array_equal(_epoch_rows(shards, 4, 0, 1)[0], full[0])


def test_one_shard_is_read_in_the_in_memory_epoch_order(tmp_path):
    waves = examples(40)
    shards = feature_cache.write_split(tmp_path / "one", feature_cache.rebatch(iter(waves)), fake_features)
    assert shards.counts == [40]
    for epoch, rows in enumerate(_epoch_rows(shards, 7, 0, 3, batch_size=16)):
        np.testing.assert_array_equal(rows, waves[training.epoch_order(7, epoch, 40), 0])


def test_a_shard_file_shorter_than_its_index_says_is_named(small_shards):
    _, shards = small_shards
    path = shards.folder / "shard-00001.waveform.npy"
    np.save(path, np.zeros((10, *shards.shapes["waveform"]), "float32"))
    with pytest.raises(ValueError, match=r"shard-00001.waveform.npy: 10 examples, index.json says 64"):
        Shards.load(shards.folder).read(1)


def test_mixtures_streamed_from_clips_on_disk_equal_the_in_memory_mixtures(tmp_path):
    rng = np.random.default_rng(1)
    waves = rng.standard_normal((12, 300)).astype("float32")
    labels = np.arange(12) % 4
    path = tmp_path / "clips.npy"
    store, stored_labels = training_data.ClipFile.write(path, iter(zip(waves, labels, strict=True)), 12, 300)
    try:
        np.testing.assert_array_equal(stored_labels, labels)
        np.testing.assert_array_equal(store(5), waves[5])
        np.testing.assert_array_equal(np.load(path), waves)  # a plain .npy file, written a row at a time
        streamed = np.stack(list(training_data.mixture_examples(store, labels, 9, seed=4, snr_db=(-5.0, 5.0))))
    finally:
        store.close()
    expected = mixtures.make_mixtures(waves, labels, 4, 9, seed=4, keep_sources=False)["mixture"]
    np.testing.assert_array_equal(streamed, expected)
    # mixture m depends on (seed, m) only: the recipes of 5 mixtures are the first 5 of 9
    five = mixtures.mixture_recipes(labels, 5, seed=4)
    nine = mixtures.mixture_recipes(labels, 9, seed=4)
    for key in five:
        np.testing.assert_array_equal(five[key], nine[key][:5])


@pytest.mark.parametrize(("rows", "length"), [(3, 300), (5, 300), (4, 299)])
def test_a_clip_file_given_other_clips_than_announced_is_refused_and_not_left(tmp_path, rows, length):
    waves = np.zeros((4, 300), "float32")
    with pytest.raises(ValueError, match=f"expected {rows} clips"):
        training_data.ClipFile.write(tmp_path / "clips.npy", zip(waves, range(4)), rows, length)
    assert list(tmp_path.iterdir()) == []


def test_extra_examples_stream_equals_the_in_memory_augmentation(small_shards):
    waves, shards = small_shards
    got = np.stack(list(training_data.extra_examples(shards, augment_copies=1, mix_inputs=7, seed=2)))
    rng = np.random.default_rng(2 + 7919)  # the in-memory convention of earlier versions
    n, length = waves.shape
    shifts, gains = rng.integers(0, length, n), 10 ** (rng.uniform(-6, 6, n) / 20)
    copies = np.stack([np.roll(w, s) * g for w, s, g in zip(waves, shifts, gains, strict=True)]).astype("float32")
    i, j = rng.integers(0, n, 7), rng.integers(0, n, 7)
    lam = rng.uniform(0.5, 1.0, (7, 1)).astype("float32")
    np.testing.assert_array_equal(got, np.concatenate([copies, lam * waves[i] + (1 - lam) * waves[j]]))


def test_windows_are_cut_per_clip_and_counted():
    counter = training_data.Counter()
    pieces = [
        p for clip in (np.ones(100, "float32"), np.ones(30, "float32")) for p in training_data.cut(clip, 40, counter)
    ]
    assert counter.counts() == {"clips": 2, "windows": len(pieces)} and all(len(p) == 40 for p in pieces)


def test_multilabel_training_streams_its_mixtures_and_removes_its_cache(tmp_path):
    from run_fixture import make_tone_job

    config = make_tone_job(tmp_path, multilabel=True, mixtures=8, epochs=1)
    result = training.train(tmp_path / "run", config)
    assert result["multilabel"] and {"validation", "test"} <= set(result)
    assert not (tmp_path / "run" / "cache").exists()


def test_a_cache_in_another_format_is_not_reused(small_shards):
    _, shards = small_shards
    index = shards.folder / feature_cache.INDEX
    index.write_text(index.read_text().replace(feature_cache.FORMAT, "npz"))
    with pytest.raises(FileNotFoundError, match="another format"):
        Shards.load(shards.folder)


def test_batches_draw_from_the_whole_split_in_the_epoch_order(small_shards):
    """Epoch e reads the whole split in epoch_order(seed, e), across shard boundaries, as the in-memory trainer
    did: shards written class after class still give batches of every class."""
    waves, shards = small_shards
    ds, _ = shards.epochs_dataset(48, 5, 1, 2)
    batches = [b["waveform"].numpy() for b in ds]
    np.testing.assert_array_equal(np.concatenate(batches), waves[training.epoch_order(5, 1, 150)])
    first = np.searchsorted(shards._starts, training.epoch_order(5, 1, 150)[:48], side="right") - 1
    assert set(first.tolist()) == {0, 1, 2}  # the first batch already holds examples of all three shards


def test_training_shards_hold_x_and_the_source_magnitude_and_analyse_as_the_waveforms(tmp_path):
    """A training split is stored as X = log1p|S| and |S_src| (float16, the waveform's bytes) rather than the
    waveforms: a batch read back analyses (X, |S_x| = expm1(X), |S_src|) as the waveforms do, to float16 rounding."""
    import tensorflow as tf

    from l2i_tf import audio

    stft = audio.STFTConfig(16000, 64, 16, 64)
    waves = (0.3 * np.random.default_rng(3).standard_normal((40, 800))).astype("float32")

    def with_source(batch):  # a source that is a function of the example
        return {**fake_features(batch), "source": 0.5 * np.roll(batch, 7, axis=1)}

    sources = 0.5 * np.roll(waves, 7, axis=1)
    features = feature_cache.spectrogram_features(with_source, stft)
    shards = feature_cache.write_split(tmp_path / "train", feature_cache.rebatch(iter(waves)), features)
    assert set(shards.keys) == {"spectrogram", "source_magnitude", "classifier_logits", "sequence_0", "sequence_1"}
    files = {p.name.split(".")[1]: p.stat().st_size for p in shards.folder.glob("shard-00000.*.npy")}
    assert files["spectrogram"] < 1.2 * waves[0].nbytes * shards.counts[0]  # about the waveforms' bytes
    batch = next(iter(feature_cache.with_spectrograms(shards.dataset(40), stft)))
    expected = feature_cache.analysed(
        {"waveform": tf.constant(waves), "source": tf.constant(sources), "sequences": ()}, stft
    )
    for key in ("spectrogram", "magnitude", "source_magnitude"):
        scale = float(tf.reduce_max(expected[key]))
        np.testing.assert_allclose(batch[key].numpy(), expected[key].numpy(), atol=2e-3 * scale, err_msg=key)
    np.testing.assert_array_equal(batch["classifier_logits"].numpy(), fake_features(waves)["classifier_logits"])


def _array_bytes(folder) -> int:
    """Bytes of the arrays in a folder's ``.npy`` files (their headers left out)."""
    return sum(np.load(path, mmap_mode="r").nbytes for path in Path(folder).rglob("*.npy"))


def test_the_disk_plan_is_the_shards_bytes_and_a_disk_too_small_stops_the_run_before_them(
    tiny_source_trained, tmp_path, monkeypatch
):
    """The free space a run's feature shards need is known from the first training batch: exactly the bytes the
    shards then take (clips of one length), and a disk with less free space stops the run before any shard is
    written, keeping its dictionary; the CLI names --out and the ways out, and the run resumes once there is room.

    The first run is conftest's ``tiny_source_trained`` (6 source mixtures, its shards kept, the free space it
    checked for recorded); this test's runs read its data and classifier and write into ``tmp_path``."""
    import shutil

    import click

    from cli import train as train_cmd

    config, result, planned = (tiny_source_trained[key] for key in ("config", "metrics", "planned"))
    cache = tiny_source_trained["run"] / "cache" / "features"
    assert result["examples"] == {"train": 9 + 6, "validation": 3, "test": 3}  # 9 training clips, 6 mixtures
    assert planned == [_array_bytes(cache)]

    free = int(planned[0]) - 1
    disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free, free))
    with pytest.raises(feature_cache.DiskSpaceError, match="GB free") as caught:
        training.train(tmp_path / "run2", config)
    assert (caught.value.needed, caught.value.free) == (int(planned[0]), free)
    assert str(tmp_path / "run2" / "cache" / "features") in str(caught.value)
    assert not list((tmp_path / "run2" / "cache").rglob("shard-*"))  # nothing written
    assert (tmp_path / "run2" / "dictionary").is_dir()  # the work before is kept
    with pytest.raises(click.BadParameter) as cli_error:
        train_cmd.run(tmp_path / "run3", config, resume=False, overwrite=False, unsafe_load=False)
    assert cli_error.value.param_hint == "--out"
    assert "--source-mixtures" in cli_error.value.message and "--resume" in cli_error.value.message

    # Space freed, the stopped run resumes from the start of training with the dictionary it learnt: the run of
    # the same settings that was never stopped, to float rounding.
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(training, "learn", lambda *a: pytest.fail("a resumed run learnt its dictionary again"))
    resumed = training.train(tmp_path / "run2", config, resume=True)
    assert resumed["epochs_run"] == resumed["epochs_done"] == 1
    for split in ("validation", "test"):
        for key, value in result[split].items():
            assert resumed[split][key] == pytest.approx(value, abs=1e-5), (split, key)
    np.testing.assert_allclose(resumed["history"]["loss"], result["history"]["loss"], rtol=1e-5)
