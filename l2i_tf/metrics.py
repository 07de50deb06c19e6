"""Evaluation metrics: fidelity of the interpreter to the classifier (top-k, AUPRC, max-F1)."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve


def top_k_fidelity(classifier_logits, interpreter_logits, k: int) -> float:
    """Share of clips whose classifier-predicted class is among the interpreter's top ``k``.

    Ties are broken by the lower class index, as ``argmax`` and ``top_k`` break them (so top-1 is the training's
    own ``fidelity_top1``, and an interpreter that scores every class alike is not credited with every class). A
    NaN score never ranks: the predicted class's makes the clip a miss, another class's counts as lowest.
    """
    classifier_logits = np.asarray(classifier_logits)
    interpreter_logits = np.asarray(interpreter_logits)
    if classifier_logits.shape != interpreter_logits.shape or classifier_logits.ndim != 2:
        raise ValueError(
            f"expected two [clips, classes] arrays of one shape, got {classifier_logits.shape} "
            f"and {interpreter_logits.shape}"
        )
    if len(classifier_logits) == 0:
        raise ValueError("no clips to compute fidelity on")
    predicted = classifier_logits.argmax(axis=1)
    scores = np.where(np.isnan(interpreter_logits), -np.inf, interpreter_logits)
    score = scores[np.arange(len(predicted)), predicted]
    before = np.arange(scores.shape[1])[None] < predicted[:, None]  # lower indices win ties
    rank = (scores > score[:, None]).sum(axis=1) + ((scores == score[:, None]) & before).sum(axis=1)
    ranked = ~np.isnan(interpreter_logits[np.arange(len(predicted)), predicted])
    return float(np.mean((rank < k) & ranked))


def macro_auprc(targets, scores) -> float:
    """Mean over classes of the area under the precision-recall curve (average precision, scikit-learn).

    Args:
        targets: 0/1 ``[clips, classes]``.
        scores: ``[clips, classes]``, any monotone score (logits or probabilities give the same value).

    Classes with no positive clip are left out: their AUPRC is undefined. None with a positive is an error.
    """
    targets, scores = np.asarray(targets), np.asarray(scores)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(
            f"expected targets and scores [clips, classes] of one shape, got {targets.shape} and {scores.shape}"
        )
    present = targets.sum(axis=0) > 0
    if not present.any():
        raise ValueError(f"macro-AUPRC is undefined: none of the {targets.shape[1]} classes has a positive clip")
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


def multilabel_fidelity(classifier_logits, interpreter_logits, threshold: float = 0.5) -> dict:
    """Θ's sigmoid outputs against f's thresholded outputs: macro/micro AUPRC and max-F1 (micro). When the classifier
    predicts none of its classes on any clip they are undefined: None each, with a warning (not an error, which
    would throw a finished training away)."""
    target = (1 / (1 + np.exp(-np.asarray(classifier_logits))) > threshold).astype(int)
    scores = 1 / (1 + np.exp(-np.asarray(interpreter_logits)))
    present = target.sum(axis=0) > 0
    if not present.any():
        logging.getLogger(__name__).warning(
            "fidelity is undefined on these %d clips: the classifier predicts none of its %d classes on any "
            "(sigmoid > %g)",
            len(target),
            target.shape[1],
            threshold,
        )
        return {"macro_auprc": None, "micro_auprc": None, "max_f1": None, "classes_present": 0}
    precision, recall, _ = precision_recall_curve(target.ravel(), scores.ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {
        "macro_auprc": macro_auprc(target, scores),
        "micro_auprc": float(average_precision_score(target.ravel(), scores.ravel())),
        "max_f1": float(f1.max()),
        "classes_present": int(present.sum()),
    }


def fidelity(classifier_logits, interpreter_logits, multilabel: bool = False, ks=(1, 3, 5)) -> dict:
    """Fidelity as in the paper: top-k (multi-class) or AUPRC / max-F1 (multi-label)."""
    if multilabel:
        return multilabel_fidelity(classifier_logits, interpreter_logits)
    num_classes = np.asarray(classifier_logits).shape[1]
    return {f"top{k}": top_k_fidelity(classifier_logits, interpreter_logits, k) for k in ks if k <= num_classes}


# --------------------------------------------------------------------------------------------------------------------
# Faithfulness and source separation

SILENCE_DB = -100.0
"""SI-SDR given to an all-zero estimate (an empty interpretation), where the ratio is 0/0."""


def si_sdr(estimate, reference, zero_mean: bool = False) -> np.ndarray:
    """Scale-invariant SDR (Le Roux et al. 2019), dB: ``10·log10(‖αs‖² / ‖ŝ − αs‖²)``, ``α = ⟨ŝ, s⟩ / ‖s‖²``.

    Computed in float64. A scaled copy of the reference gives a very large value (> 100 dB); noise orthogonal to
    it gives a very negative one; an all-zero estimate gives :data:`SILENCE_DB`.

    Args:
        estimate: ``[..., samples]``.
        reference: ``[..., samples]`` (same shape).
        zero_mean: subtract each signal's mean first.

    Returns:
        float64 ``[...]``.
    """
    estimate = np.asarray(estimate, dtype="float64")
    reference = np.asarray(reference, dtype="float64")
    if estimate.shape != reference.shape or estimate.ndim == 0:
        raise ValueError(
            f"estimate and reference must be [..., samples] of one shape, got {estimate.shape} and {reference.shape}"
        )
    if zero_mean:
        estimate = estimate - estimate.mean(axis=-1, keepdims=True)
        reference = reference - reference.mean(axis=-1, keepdims=True)
    ref_energy = np.sum(reference**2, axis=-1)
    if np.any(ref_energy == 0):
        raise ValueError("SI-SDR is undefined for an all-zero reference")
    alpha = np.sum(estimate * reference, axis=-1) / ref_energy
    target = alpha[..., None] * reference
    noise = estimate - target
    tiny = np.finfo("float64").tiny
    value = 10 * (
        np.log10(np.maximum(np.sum(target**2, axis=-1), tiny)) - np.log10(np.maximum(np.sum(noise**2, axis=-1), tiny))
    )
    silent = np.sum(estimate**2, axis=-1) == 0
    return np.where(silent, SILENCE_DB, value)


def target_energy_share(gain, target_power, distractor_power) -> np.ndarray:
    """Share of a masked mixture's energy that comes from the target: ``Σ G²|S_t|² / Σ G²(|S_t|² + |S_d|²)``.

    ``G`` is the effective linear gain the interpretation applies to the mixture's STFT (``|Ŝ| / |S_mix|``), so the
    interpretation is ``ISTFT(G ⊙ S_t) + ISTFT(G ⊙ S_d)``; the share counts each part's time-frequency energy.

    Args:
        gain: ``[B, T, F]`` (or broadcastable), >= 0.
        target_power, distractor_power: ``[B, T, F]`` ``|S_t|²`` and ``|S_d|²``.

    Returns:
        float64 ``[B]`` in [0, 1] (0.0 for a silent interpretation).
    """
    g2 = np.square(np.asarray(gain, dtype="float64"))
    t = np.sum(g2 * target_power, axis=(-2, -1))
    d = np.sum(g2 * distractor_power, axis=(-2, -1))
    return np.where(t + d > 0, t / np.maximum(t + d, np.finfo("float64").tiny), 0.0)


def probabilities(logits, multilabel: bool) -> np.ndarray:
    """Softmax (multi-class) or sigmoid (multi-label) of ``[..., C]`` logits, float64."""
    logits = np.asarray(logits, dtype="float64")
    if multilabel:
        return 1 / (1 + np.exp(-logits))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def faithfulness_drops(logits, logits_removed, target_class, multilabel: bool = False) -> dict[str, np.ndarray]:
    """``FF = f(x)_c − f(x₂)_c`` per clip, as a logit drop and as a probability drop.

    Args:
        logits: ``[B, C]`` classifier logits on the input x.
        logits_removed: ``[B, C]`` classifier logits on x₂ (x with the selected components removed).
        target_class: int ``[B]`` the explained class c per row.
        multilabel: sigmoid (True) or softmax (False) probabilities.

    Returns:
        ``{"logit": float64 [B], "probability": float64 [B]}``.
    """
    logits = np.asarray(logits, dtype="float64")
    logits_removed = np.asarray(logits_removed, dtype="float64")
    if logits.shape != logits_removed.shape or logits.ndim != 2:
        raise ValueError(f"expected two [B, C] arrays of one shape, got {logits.shape} and {logits_removed.shape}")
    rows = np.arange(len(logits))
    c = np.broadcast_to(np.asarray(target_class, dtype=int), rows.shape)
    p, p2 = probabilities(logits, multilabel), probabilities(logits_removed, multilabel)
    return {"logit": logits[rows, c] - logits_removed[rows, c], "probability": p[rows, c] - p2[rows, c]}


def summarize(values) -> dict:
    """Median, mean, std and count of a 1-D sample (NaN-free); empty -> count 0 and NaNs."""
    values = np.asarray(values, dtype="float64").ravel()
    if values.size == 0:
        return {"median": float("nan"), "mean": float("nan"), "std": float("nan"), "count": 0}
    return {
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "count": int(values.size),
    }


def mean_std(values) -> dict:
    """Mean ± (population) std across folds: ``{"mean", "std", "values"}``."""
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
