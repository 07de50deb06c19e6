"""Metrics against hand-computed answers and scikit-learn: top-k, AUPRC, max-F1, SI-SDR, faithfulness, energy share."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from l2i_tf import metrics


def test_top_k_fidelity_breaks_ties_by_the_lower_index_as_argmax():
    classifier = np.array([[5.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
    interpreter = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 3.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    # Clip 0: class 0 tied first -> top-1. Clip 1: class 1 third. Clip 2: class 2 third. Clip 3: all tied, class 0
    # the lowest index -> top-1.
    assert metrics.top_k_fidelity(classifier, interpreter, 1) == 0.5
    assert metrics.top_k_fidelity(classifier, interpreter, 2) == 0.5
    assert metrics.top_k_fidelity(classifier, interpreter, 3) == 1.0
    assert metrics.fidelity(classifier, interpreter) == {"top1": 0.5, "top3": 1.0}
    # class 1 tied with class 0 ranks second, as argmax ranks it
    assert metrics.top_k_fidelity([[0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]], 1) == 0.0
    assert metrics.top_k_fidelity([[0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]], 2) == 1.0


def test_an_interpreter_scoring_every_class_alike_or_nan_is_not_credited():
    rng = np.random.default_rng(0)
    classifier = rng.standard_normal((200, 10))
    predicted = classifier.argmax(axis=1)
    constant = np.zeros((200, 10))
    for k in (1, 3, 5):  # only the clips whose class is among the k lowest indices, as argmax ranks ties
        assert metrics.top_k_fidelity(classifier, constant, k) == pytest.approx(np.mean(predicted < k))
        assert metrics.top_k_fidelity(classifier, np.full((200, 10), np.nan), k) == 0.0
    nan_elsewhere = np.where(np.eye(10, dtype=bool)[predicted], 1.0, np.nan)  # the class scored, the rest NaN
    assert metrics.top_k_fidelity(classifier, nan_elsewhere, 1) == 1.0


def test_top_k_fidelity_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.top_k_fidelity(np.zeros((2, 3)), np.zeros((2, 4)), 1)


def test_multilabel_fidelity_is_undefined_not_an_error_when_the_classifier_predicts_no_class(caplog):
    """A run whose classifier predicts nothing on a split keeps its training: its fidelity there is None each."""
    rng = np.random.default_rng(3)
    got = metrics.multilabel_fidelity(-1 - rng.random((6, 3)), rng.standard_normal((6, 3)))
    assert got == {"macro_auprc": None, "micro_auprc": None, "max_f1": None, "classes_present": 0}
    assert "predicts none of its 3 classes" in caplog.text


def test_multilabel_fidelity_matches_sklearn_and_a_perfect_ranking_scores_one():
    rng = np.random.default_rng(0)
    classifier = rng.normal(size=(40, 4)) * 3
    interpreter = classifier + rng.normal(size=(40, 4)) * 2
    got = metrics.multilabel_fidelity(classifier, interpreter)
    target = (classifier > 0).astype(int)
    scores = 1 / (1 + np.exp(-interpreter))
    assert got["macro_auprc"] == pytest.approx(average_precision_score(target, scores, average="macro"))
    assert got["micro_auprc"] == pytest.approx(average_precision_score(target.ravel(), scores.ravel()))
    perfect = metrics.multilabel_fidelity(classifier, classifier)
    assert perfect["macro_auprc"] == pytest.approx(1.0) and perfect["max_f1"] == pytest.approx(1.0)


def test_macro_auprc_of_a_hand_computed_ranking_skips_classes_without_a_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.1, 0.6, 0.3]])
    # Class 0: ranked pos, neg, pos -> AP = ½·1 + ½·⅔ = ⅚. Class 1: pos, pos, neg -> 1. Class 2: no positive, left out.
    assert metrics.macro_auprc(targets, scores) == pytest.approx((5 / 6 + 1) / 2)
    logits = np.log(scores / (1 - scores))  # a monotone map of the scores: same ranking, same AUPRC
    assert metrics.macro_auprc(targets, logits) == pytest.approx((5 / 6 + 1) / 2)
    with pytest.raises(ValueError, match="none of the 3 classes has a positive clip"):
        metrics.macro_auprc(np.zeros((3, 3)), scores)
    with pytest.raises(ValueError, match=r"\(3, 3\) and \(3, 2\)"):
        metrics.macro_auprc(targets, scores[:, :2])


def test_max_f1_of_a_hand_computed_ranking():
    # Targets (thresholded f): 1, 0, 1, 0; Θ scores ranked 0 > 1 > 2 > 3. Best cut: top 3 -> P 2/3, R 1 -> F1 0.8.
    classifier = np.array([[4.0], [-4.0], [4.0], [-4.0]])
    interpreter = np.array([[3.0], [2.0], [1.0], [0.0]])
    assert metrics.multilabel_fidelity(classifier, interpreter)["max_f1"] == pytest.approx(0.8)


def _signal(n=4000, seed=0):
    t = np.arange(n) / 16000
    return np.sin(2 * np.pi * 440 * t) + 0.3 * np.random.default_rng(seed).standard_normal(n)


def test_si_sdr_of_a_scaled_copy_is_huge_and_of_orthogonal_noise_very_negative():
    s = _signal()
    assert metrics.si_sdr(0.25 * s, s) > 100
    noise = np.random.default_rng(1).standard_normal(len(s))
    noise -= noise @ s / (s @ s) * s  # orthogonal to s
    assert metrics.si_sdr(noise, s) < -100


def test_si_sdr_of_signal_plus_orthogonal_noise_at_known_ratio():
    s = _signal()
    noise = np.random.default_rng(2).standard_normal(len(s))
    noise -= noise @ s / (s @ s) * s
    noise *= np.sqrt(0.1 * (s @ s) / (noise @ noise))  # 10 dB below s
    np.testing.assert_allclose(metrics.si_sdr(np.stack([2 * (s + noise), s]), np.stack([s, s]))[0], 10.0, atol=1e-9)


def test_si_sdr_gives_silence_the_floor_and_rejects_a_silent_reference():
    s = _signal()
    assert metrics.si_sdr(np.zeros_like(s), s) == metrics.SILENCE_DB
    with pytest.raises(ValueError, match="all-zero reference"):
        metrics.si_sdr(s, np.zeros_like(s))
    with pytest.raises(ValueError, match="one shape"):
        metrics.si_sdr(s[:10], s)


def test_faithfulness_drops_in_logits_and_probabilities():
    before = np.array([[2.0, 0.0], [0.0, 1.0]])
    after = np.array([[0.0, 0.0], [0.0, 3.0]])
    drops = metrics.faithfulness_drops(before, after, [0, 1])
    np.testing.assert_allclose(drops["logit"], [2.0, -2.0])
    p = lambda a, b: np.exp(a) / (np.exp(a) + np.exp(b))  # noqa: E731
    np.testing.assert_allclose(drops["probability"], [p(2, 0) - 0.5, p(1, 0) - p(3, 0)])
    sig = metrics.faithfulness_drops(before, after, [0, 1], multilabel=True)
    np.testing.assert_allclose(sig["probability"][0], 1 / (1 + np.exp(-2)) - 0.5)


def test_target_energy_share_of_hand_made_powers():
    target = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    distractor = np.array([[[0.0, 0.0], [0.0, 3.0]]])
    assert metrics.target_energy_share(np.ones((1, 2, 2)), target, distractor)[0] == pytest.approx(0.25)
    # A gain of 0.5 on the distractor's bin: 1 / (1 + 0.25 * 3).
    gain = np.array([[[1.0, 1.0], [1.0, 0.5]]])
    assert metrics.target_energy_share(gain, target, distractor)[0] == pytest.approx(1 / 1.75)
    assert metrics.target_energy_share(np.zeros((1, 2, 2)), target, distractor)[0] == 0.0


def test_summaries():
    assert metrics.summarize([3.0, 1.0, 2.0, 10.0]) == {
        "median": 2.5,
        "mean": 4.0,
        "std": pytest.approx(3.5355, 1e-4),
        "count": 4,
    }
    assert metrics.summarize([])["count"] == 0
    assert metrics.mean_std([0.9, 0.8]) == {
        "mean": pytest.approx(0.85),
        "std": pytest.approx(0.05),
        "values": [0.9, 0.8],
    }
