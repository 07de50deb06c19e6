"""SpeechBrain's interpretation metrics (AI, AD, AG, FF, Fid-In, SPS, COMP) on hand-built cases with known answers:
masks that keep everything, nothing, or exactly the class evidence of a planted band-energy classifier; the
active-random faithfulness baseline on that classifier."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from l2i_tf import audio, explain, faithfulness, mask_metrics, metrics

SR = 16000
STFT = audio.STFTConfig()
HZ_PER_BIN = SR / STFT.fft_length
BAND = 8  # bins either side of a tone that count as its evidence


def _softmax(v):
    return metrics.probabilities(np.asarray(v, "float64")[None], False)[0]


# ------------------------------------------------------------------------------------------------ formulas


def test_output_scores_follow_the_recipe_formulas_on_hand_built_logits():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits_in = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # clip 0: class 0 rises; clip 1: class 1 falls, 2 wins
    logits_out = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # clip 0: evidence gone; clip 1: nothing removed
    s = mask_metrics.output_scores(logits, logits_in, logits_out, [0, 1])
    p0, p0_in = _softmax(logits[0])[0], _softmax(logits_in[0])[0]
    p1, p1_in = _softmax(logits[1])[1], _softmax(logits_in[1])[1]
    np.testing.assert_array_equal(s["AI"], [100.0, 0.0])
    np.testing.assert_allclose(s["AG"], [100 * (p0_in - p0) / (1 - p0), 0.0])
    np.testing.assert_allclose(s["AD_one_softmax"], [0.0, 100 * (p1 - p1_in) / p1])
    # compute_AD's second softmax: over the probabilities
    q, q_in = _softmax(_softmax(logits[1])), _softmax(_softmax(logits_in[1]))
    np.testing.assert_allclose(s["AD"], [0.0, 100 * (q[1] - q_in[1]) / q[1]])
    assert 0 < s["AD"][1] < s["AD_one_softmax"][1]  # the second softmax flattens the drop
    np.testing.assert_allclose(s["FF"], [p0 - 1 / 3, 0.0], atol=1e-12)
    np.testing.assert_array_equal(s["Fid-In"], [1.0, 0.0])


def test_output_scores_multilabel_use_sigmoids_and_the_explained_class():
    logits = np.array([[2.0, 1.0]])
    s = mask_metrics.output_scores(logits, [[-1.0, 1.0]], [[2.0, 1.0]], [0], multilabel=True)
    p, p_in = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    np.testing.assert_allclose(s["AD"], [100 * (p - p_in) / p])
    np.testing.assert_array_equal(s["AD"], s["AD_one_softmax"])
    np.testing.assert_array_equal(s["Fid-In"], [0.0])  # class 0 no longer present on the mask-in
    np.testing.assert_array_equal(s["FF"], [0.0])
    with pytest.raises(ValueError, match=r"three \[B, C\] logit arrays"):
        mask_metrics.output_scores(logits, [[1.0, 2.0, 3.0]], logits, [0])


def test_sparseness_and_complexity_of_full_empty_and_partial_masks():
    n = 20 * 30
    full, empty, part = np.ones((20, 30)), np.zeros((20, 30)), np.zeros((20, 30))
    part[:, 3:6] = 1.0  # m = 60 of n = 600 bins kept
    m = 60
    sps = mask_metrics.sparseness([full, empty, part])
    comp = mask_metrics.complexity([full, empty, part])
    assert sps[0] == pytest.approx(0.0, abs=1e-12) and np.isnan(sps[1])
    f = mask_metrics.SPARSENESS_FLOOR
    assert sps[2] == pytest.approx(m * (n - m) / (n * (n * f + m)), rel=1e-9)  # Gini of a binary mask ≈ 1 − m/n
    assert comp[0] == pytest.approx(math.log(n)) and np.isnan(comp[1]) and comp[2] == pytest.approx(math.log(m))
    assert mask_metrics.complexity([np.eye(1, 50)])[0] == pytest.approx(0.0)  # one bin: no uncertainty


def test_sparseness_and_complexity_match_the_quantus_formulas_on_random_masks():
    masks = np.random.default_rng(0).random((3, 12, 7)) ** 3
    for mask, sps, comp in zip(masks, mask_metrics.sparseness(masks), mask_metrics.complexity(masks), strict=True):
        a = np.sort(np.abs(mask).ravel() / np.abs(mask).max() + 1e-7)
        gini = np.sum((2 * np.arange(1, a.size + 1) - a.size - 1) * a) / (a.size * a.sum())
        assert sps == pytest.approx(gini, rel=1e-12)
        assert comp == pytest.approx(scipy.stats.entropy(np.abs(mask).ravel()), rel=1e-12)


def test_summarize_means_over_clips_and_skips_empty_masks_for_sps_and_comp():
    logits = np.array([[2.0, 0.0], [2.0, 0.0]])
    masks = np.stack([np.ones((4, 5)), np.zeros((4, 5))])
    per_clip = [mask_metrics.clip_scores(logits, logits, logits * 0, [0, 0], masks)]
    out = mask_metrics.summarize(per_clip)
    assert (out["clips"], out["empty_masks"]) == (2, 1)
    assert out["COMP"] == pytest.approx(math.log(20)) and out["SPS"] == pytest.approx(0.0, abs=1e-12)
    assert out["AI"] == 0.0 and out["Fid-In"] == 1.0
    assert mask_metrics.summarize([])["clips"] == 0


# ------------------------------------------------------------------------------------------------ a known classifier


def _band_energy(waves, hz):
    S = np.abs(np.asarray(audio.stft(tf.convert_to_tensor(waves, tf.float32), STFT))) ** 2  # [B, T, F]
    k = int(round(hz / HZ_PER_BIN))
    return S[..., k - BAND : k + BAND + 1].sum(axis=-1).mean(axis=-1)


def band_classifier(waves):
    """Class 0: the 1 kHz band's energy, class 1: the 3 kHz band's, class 2 ("quiet"): a constant. Silence -> 2."""
    waves = np.asarray(waves, "float32")
    e0, e1 = _band_energy(waves, 1000.0), _band_energy(waves, 3000.0)
    return np.stack([np.log1p(e0), np.log1p(e1), np.full(len(waves), 1.0)], axis=1)


def _tones(a0, a1, seconds=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (a0 * np.sin(2 * np.pi * 1000 * t) + a1 * np.sin(2 * np.pi * 3000 * t)).astype("float32")[None]


def _planted_explainer(waves):
    """A stand-in Explainer: W has three disjoint indicator columns (the 1 kHz band, the 3 kHz band, every other bin),
    H = 1, and Θ's contributions make component 0 the only positive one for class 0 (relevance [1, −1, 0])."""
    F = STFT.num_bins
    W = np.zeros((F, 3), "float32")
    for col, hz in enumerate((1000.0, 3000.0)):
        k = int(round(hz / HZ_PER_BIN))
        W[k - BAND : k + BAND + 1, col] = 1.0
    W[W[:, :2].sum(axis=1) == 0, 2] = 1.0
    contributions = np.zeros((1, 3, 3), "float32")
    contributions[0, :, 0] = [1.0, -1.0, 0.0]

    def analyze(w):
        X, phase = audio.analyze(tf.convert_to_tensor(w), STFT)
        n = len(w)
        return {
            "classifier_logits": band_classifier(w),
            "spectrogram": X,
            "phase": phase,
            "activations": tf.ones((n, X.shape[1], 3)),
            "contributions": tf.repeat(tf.constant(contributions), n, axis=0),
        }

    return types.SimpleNamespace(
        analyze=analyze,
        dictionary=tf.constant(W),
        stft_config=STFT,
        multilabel=False,
        classifier_logits=band_classifier,
    ), W


def test_l2i_mask_metrics_on_masks_that_keep_everything_nothing_and_exactly_the_class_evidence():
    x = _tones(0.5, 0.3)  # predicted class 0 (the louder 1 kHz tone)
    explainer, W = _planted_explainer(x)
    everything, nothing, evidence = -2.0, 1.0, 0.5  # τ selecting all components, none, component 0 only
    out = mask_metrics.l2i_mask_metrics(explainer, x, (everything, nothing, evidence), "linear", batch_size=4)
    p = metrics.probabilities(band_classifier(x), False)[0, 0]
    p_quiet = metrics.probabilities(band_classifier(np.zeros_like(x)), False)[0, 0]
    p_alone = metrics.probabilities(band_classifier(_tones(0.5, 0.0)), False)[0, 0]  # class 0's evidence alone
    p_other = metrics.probabilities(band_classifier(_tones(0.0, 0.3)), False)[0, 0]  # everything but it
    n = STFT.num_frames(x.shape[1]) * STFT.num_bins

    keep = out[str(everything)]  # mask-in = the input (up to ISTFT round-off), mask-out = silence
    assert keep["Fid-In"] == 1.0 and keep["AI"] in (0.0, 100.0)  # AI: a strict < between two equal numbers
    for key in ("AD", "AD_one_softmax", "AG"):
        assert keep[key] == pytest.approx(0.0, abs=1e-3)
    assert keep["FF"] == pytest.approx(p - p_quiet, abs=1e-3)
    assert keep["SPS"] == pytest.approx(0.0, abs=1e-6) and keep["COMP"] == pytest.approx(math.log(n), abs=1e-6)

    none = out[str(nothing)]  # mask-in = silence ("quiet" wins), mask-out = the input
    assert (none["AI"], none["AG"], none["Fid-In"]) == (0.0, 0.0, 0.0)
    assert none["AD_one_softmax"] == pytest.approx(100 * (p - p_quiet) / p, rel=1e-4)
    assert none["FF"] == pytest.approx(0.0, abs=1e-4)
    assert np.isnan(none["SPS"]) and np.isnan(none["COMP"]) and none["empty_masks"] == 1

    ev = out[str(evidence)]  # mask-in = the 1 kHz tone alone, mask-out = the 3 kHz tone alone
    assert (ev["AI"], ev["AD"], ev["Fid-In"]) == (100.0, 0.0, 1.0)
    assert ev["AG"] == pytest.approx(100 * (p_alone - p) / (1 - p), rel=1e-3)
    assert ev["FF"] == pytest.approx(p - p_other, rel=1e-3)
    kept_bins = STFT.num_frames(x.shape[1]) * int(W[:, 0].sum())
    assert ev["COMP"] == pytest.approx(math.log(kept_bins), abs=1e-5)
    assert ev["SPS"] == pytest.approx(1 - kept_bins / n, abs=0.02)


def test_removal_drops_report_the_active_baseline_next_to_the_paper_one():
    x = _tones(0.5, 0.3)
    explainer, W = _planted_explainer(x)
    f = explainer.analyze(x)
    H = np.ones((1, f["spectrogram"].shape[1], 3), "float32")
    H[..., 2] = 0.0  # the "every other bin" component is inactive on this clip
    relevance = explain.class_relevance(f["contributions"], [0])
    res = faithfulness.removal_drops(
        band_classifier, f["spectrogram"], f["phase"], W, H, relevance, band_classifier(x), np.array([0]),
        (0.5,), x.shape[1], STFT, "linear", (0, 0),
    )  # fmt: skip
    assert set(res[0.5]) == set(faithfulness.METHODS)
    np.testing.assert_array_equal(res[0.5]["random_active"]["selected"], [1])
    # the only active unselected component is the 3 kHz one: removing it leaves class 0's logit and raises its
    # probability (a negative drop); L2I's removes the 1 kHz evidence
    assert res[0.5]["random_active"]["logit"][0] == pytest.approx(0.0, abs=1e-3)
    assert res[0.5]["random_active"]["probability"][0] < 0 < res[0.5]["l2i"]["logit"][0]
