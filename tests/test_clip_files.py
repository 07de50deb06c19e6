"""Clip files: what is written reads back exactly, by any index numpy takes, as a plain .npy file; a failed write
leaves no file and keeps the one it was to replace."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from l2i_tf.clip_files import ClipFile


@pytest.fixture
def clips(tmp_path):
    expected = np.random.default_rng(0).standard_normal((7, 5)).astype("float32")
    store, labels = ClipFile.write(tmp_path / "clips.npy", zip(expected, range(7), strict=True), None, 5)
    with store:
        yield store, expected, labels


def test_clips_read_back_exactly_by_every_kind_of_index(clips):
    store, expected, labels = clips
    assert store.shape == (7, 5) and len(store) == 7 and store.ndim == 2 and labels.tolist() == list(range(7))
    for key in (3, -1, slice(None), slice(2, 5), slice(1, None, 3), slice(5, 2), [4, 0, 4], np.arange(7) % 2 == 0):
        np.testing.assert_array_equal(store[key], expected[key])
    np.testing.assert_array_equal(store[1:4, 2], expected[1:4, 2])
    np.testing.assert_array_equal(store(6), expected[6])
    np.testing.assert_array_equal(np.asarray(store), expected)
    np.testing.assert_array_equal(np.stack(list(store)), expected)
    np.testing.assert_array_equal(np.load(store.path), expected)  # the count written after the rows: a plain .npy
    assert tf.nest.flatten(store) == [store]  # one leaf for batch loops, not a sequence of clips
    with pytest.raises(IndexError, match="clip 7 out of range for 7 clips"):
        store[7]


def test_a_failed_write_keeps_the_file_it_was_to_replace_and_leaves_nothing(tmp_path, clips):
    store, _, _ = clips
    before = store.path.read_bytes()
    with pytest.raises(ValueError, match=r"clips.npy: no clips to write"):
        ClipFile.write(store.path, iter([]), None, 5)
    assert store.path.read_bytes() == before
    with pytest.raises(ValueError, match=r"other.npy: no clips to write"):
        ClipFile.write(tmp_path / "other.npy", iter([]), None, 5)
    with pytest.raises(ValueError, match=r"other.npy: expected clips of 4 samples, got \(5,\) at clip 0"):
        ClipFile.write(tmp_path / "other.npy", iter([(np.zeros(5), 0)]), None, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips.npy"]
