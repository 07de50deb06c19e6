"""Mixtures: exact sums of their sources at the requested SNR, multi-hot labels, seeds, and the splits' mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from l2i_tf import mixtures
from l2i_tf.data import AudioDataError


@pytest.fixture
def clips():
    """20 clips of 5 classes with very different loudness, so SNR scaling has work to do."""
    rng = np.random.default_rng(0)
    waveforms = (rng.standard_normal((20, 2000)) * rng.uniform(0.01, 1.0, (20, 1))).astype("float32")
    return waveforms, np.repeat(np.arange(5), 4)


def energy_db(x: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.sum(x.astype("float64") ** 2, axis=-1))


def test_mixtures_are_exactly_the_sum_of_their_sources(clips):
    mix = mixtures.make_mixtures(*clips, num_classes=5, count=30, seed=1)
    assert mix["mixture"].shape == (30, 2000) and mix["sources"].shape == (30, 3, 2000)
    np.testing.assert_array_equal(mix["mixture"], mix["sources"].sum(axis=1))


def test_mixture_sources_sit_at_the_requested_snr(clips):
    mix = mixtures.make_mixtures(*clips, num_classes=5, count=30, snr_db=(-5.0, 5.0), seed=2)
    for m in range(30):
        used = np.flatnonzero(mix["classes"][m] >= 0)
        target = mix["sources"][m, 0]
        for s in used[1:]:
            measured = energy_db(target) - energy_db(mix["sources"][m, s])
            assert abs(measured - mix["snr_db"][m, s]) < 1e-3
            assert -5.0 <= mix["snr_db"][m, s] <= 5.0
        np.testing.assert_array_equal(mix["sources"][m, len(used) :], 0)


def test_mixtures_at_a_fixed_snr_use_exactly_that_snr(clips):
    mix = mixtures.make_mixtures(*clips, num_classes=5, count=10, num_sources=2, snr_db=3.0, seed=3)
    assert np.all(mix["classes"] >= 0)
    measured = energy_db(mix["sources"][:, 0]) - energy_db(mix["sources"][:, 1])
    np.testing.assert_allclose(measured, 3.0, atol=1e-3)


def test_mixture_labels_are_multi_hot_of_distinct_chosen_classes(clips):
    waveforms, labels = clips
    mix = mixtures.make_mixtures(waveforms, labels, num_classes=6, count=40, num_sources=(2, 3), seed=4)
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
    a = mixtures.make_mixtures(*clips, num_classes=5, count=8, seed=5)
    b = mixtures.make_mixtures(*clips, num_classes=5, count=8, seed=5)
    c = mixtures.make_mixtures(*clips, num_classes=5, count=8, seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["mixture"], c["mixture"])
    without = mixtures.make_mixtures(*clips, num_classes=5, count=8, seed=5, keep_sources=False)
    assert "sources" not in without
    np.testing.assert_array_equal(without["mixture"], a["mixture"])


def test_mixtures_need_single_label_clips_and_enough_classes(clips):
    waveforms, labels = clips
    with pytest.raises(AudioDataError, match="single-label"):
        mixtures.make_mixtures(waveforms, np.eye(5)[labels], num_classes=5, count=2)
    with pytest.raises(AudioDataError, match="need 3 classes"):
        mixtures.make_mixtures(waveforms[:8], labels[:8], num_classes=5, count=2)


def test_mixtures_of_real_esc10_clips_sum_to_their_sources(esc10_fold5):
    waveforms, labels, _ = esc10_fold5
    mix = mixtures.make_mixtures(waveforms, labels, num_classes=10, count=6, snr_db=0.0, seed=0)
    np.testing.assert_array_equal(mix["mixture"], mix["sources"].sum(axis=1))
    assert np.all(mix["labels"].sum(axis=1) >= 2)


def test_split_mixtures_count_a_quarter_for_evaluation_and_seed_each_split_by_its_position(clips):
    waveforms, labels = clips
    parts = [(waveforms, labels), (waveforms[::-1], labels[::-1]), (waveforms, labels)]
    built = mixtures.split_mixtures(parts, num_classes=5, mixtures=8, seed=10, snr_db=2.0)
    assert [m.shape for m, _ in built] == [(8, 2000), (2, 2000), (2, 2000)]
    for i, ((waves, part_labels), (mix, multi_hot)) in enumerate(zip(parts, built, strict=True)):
        expected = mixtures.make_mixtures(waves, part_labels, 5, len(mix), snr_db=2.0, seed=10 + i)
        np.testing.assert_array_equal(mix, expected["mixture"])
        np.testing.assert_array_equal(multi_hot, expected["labels"])
    assert not np.array_equal(built[0][0][:2], built[2][0])  # same clips, seeds 10 and 12


def test_split_mixtures_rebuild_the_test_split_alone_identically(clips):
    parts = [clips, clips, clips]
    full = mixtures.split_mixtures(parts, num_classes=5, mixtures=12, seed=3)
    alone = mixtures.split_mixtures([None, None, clips], num_classes=5, mixtures=12, seed=3)
    assert alone[:2] == [None, None]
    np.testing.assert_array_equal(alone[2][0], full[2][0])
    np.testing.assert_array_equal(alone[2][1], full[2][1])
    with pytest.raises(ValueError, match=r"3 splits \(train, validation, test\), got 2"):
        mixtures.split_mixtures(parts[:2], num_classes=5, mixtures=12, seed=3)
