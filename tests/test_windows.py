"""Fixed-length windows: exact starts and contents on known arrays, the short and exact-length clips, bad lengths."""

from __future__ import annotations

import numpy as np
import pytest

from l2i_tf import windows


def test_window_starts_hop_half_a_window_and_end_at_the_clip_end():
    assert windows.window_starts(10, 4).tolist() == [0, 2, 4, 6]  # 6 + 4 = 10: the last one ends at the end
    assert windows.window_starts(11, 4).tolist() == [0, 2, 4, 6, 7]  # aligned to the end, not padded
    assert windows.window_starts(5, 4).tolist() == [0, 1]
    assert windows.window_starts(4, 4).tolist() == [0]  # exactly one window
    assert windows.window_starts(3, 4).tolist() == [0]  # shorter: one (padded) window
    assert windows.window_starts(220500, 88200).tolist() == [0, 44100, 88200, 132300]  # 5 s at 44.1 kHz, 2 s
    assert windows.window_starts(10, 4, hop=3).tolist() == [0, 3, 6]
    assert windows.window_starts(7, 5).tolist() == [0, 2]  # odd length: hop 5 // 2 = 2


def test_cut_gives_exact_windows_repeated_labels_and_counts():
    long_clip = np.arange(1, 11, dtype="float32")  # 10 samples
    exact = np.arange(101, 105, dtype="float32")  # 4 samples: exactly one window
    short = np.array([7.0, 8.0, 9.0], dtype="float32")  # 3 samples: one zero-padded window
    cut = windows.cut([long_clip, exact, short], np.array([2, 0, 1]), 4)
    expected = [
        [1, 2, 3, 4],
        [3, 4, 5, 6],
        [5, 6, 7, 8],
        [7, 8, 9, 10],
        [101, 102, 103, 104],
        [7, 8, 9, 0],
    ]
    np.testing.assert_array_equal(cut.waves, np.array(expected, dtype="float32"))
    assert cut.waves.dtype == np.float32
    assert cut.labels.tolist() == [2, 2, 2, 2, 0, 1]
    assert cut.clip.tolist() == [0, 0, 0, 0, 1, 2]
    assert cut.counts() == {"clips": 3, "windows": 6}


def test_every_sample_of_every_clip_is_in_a_window():
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype("float32") for n in (1, 99, 100, 101, 257, 1000)]
    cut = windows.cut(clips, np.arange(len(clips)), 100)
    for i, clip in enumerate(clips):
        seen = np.zeros(len(clip), bool)
        for start, window in zip(windows.window_starts(len(clip), 100), cut.waves[cut.clip == i], strict=True):
            piece = clip[start : start + 100]
            np.testing.assert_array_equal(window[: len(piece)], piece)
            seen[start : start + 100] = True
        assert seen.all()


def test_multi_hot_label_rows_and_a_2d_array_of_clips():
    labels = np.array([[1, 0, 1], [0, 1, 0]], dtype="float32")
    cut = windows.cut(np.arange(12, dtype="float32").reshape(2, 6), labels, 4)  # starts 0, 2 in each row
    np.testing.assert_array_equal(cut.waves, [[0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8, 9], [8, 9, 10, 11]])
    np.testing.assert_array_equal(cut.labels, labels[[0, 0, 1, 1]])


@pytest.mark.parametrize("length", [0, -4, 2.5])
def test_a_window_length_that_is_not_a_positive_integer_is_refused_naming_it(length):
    with pytest.raises(ValueError, match=f"window length must be a positive number of samples, got {length!r}"):
        windows.window_starts(10, length)


def test_clips_and_labels_of_different_counts_are_refused():
    with pytest.raises(ValueError, match="2 clips but 3 label rows"):
        windows.cut([np.zeros(4), np.zeros(4)], [0, 1, 2], 4)
    with pytest.raises(ValueError, match=r"clip 0 must be 1-D \[samples\], got shape \(2, 2\)"):
        windows.cut([np.zeros((2, 2))], [0], 4)
