"""The interpretation-mask metrics of SpeechBrain's ESC-50 interpretation recipe (the L-MAC paper, Paissan et al.
2024): AI, AD, AG, FF and Fid-In from the classifier's outputs on the mask-in and mask-out audio, SPS and COMP from the
mask itself.

The definitions follow speechbrain/speechbrain ``recipes/ESC50/interpret/interpreter_brain.py`` at commit
5cdfc4972ab21d724e8b69759c8eb180c5cc74c2, the metric functions nested in ``InterpreterBrain.on_stage_start`` and their
aggregation in ``on_stage_end``, fed as ``train_lmac.py`` (``LMAC.compute_objectives``) and ``train_l2i.py``
(``L2I.compute_objectives``) feed them. Written anew in numpy; the choices where the recipe is ambiguous are stated
at each function. For one explained clip x of predicted class c, with p the classifier's probabilities:

- mask-in: the interpretation (mask M ⊙ X, the input's phase) — here L2I's interpretation audio or SLIME's kept
  segments; mask-out: the complement (1 − M) ⊙ X — what faithfulness removes.
- AI = 100·1[p_c(x) < p_c(in)];  AD = 100·max(0, p_c(x) − p_c(in)) / p_c(x);  AG = 100·max(0, p_c(in) − p_c(x)) /
  (1 − p_c(x));  FF = p_c(x) − p_c(out);  Fid-In = 1[argmax p(in) = c]; each averaged over clips.
- SPS: Gini index of |M| (Quantus ``Sparseness``); COMP: entropy (nats) of |M| / Σ|M| (Quantus ``Complexity``);
  averaged over clips whose mask is not all zero (the recipe skips all-zero saliency maps).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from l2i_tf import batches, explain, metrics
from l2i_tf.faithfulness import analysed_batch

METRICS = ("AI", "AD", "AG", "FF", "Fid-In", "SPS", "COMP")
"""The recipe's metric set, in its table's order. Higher is better for AI, AG, FF, Fid-In, SPS; lower for AD, COMP."""

HIGHER_IS_BETTER = {"AI": True, "AD": False, "AG": True, "FF": True, "Fid-In": True, "SPS": True, "COMP": False}

SPEECHBRAIN_L2I = {"AI": 6.75, "AD": 25.93, "AG": 1.25, "FF": 0.26, "Fid-In": 0.01, "SPS": 0.58, "COMP": 11.38}
"""SpeechBrain's published L2I row (L-MAC paper, their out-of-domain setting, ESC-50): theirs, for orientation only."""

SPEECHBRAIN_L2I_SOURCE = (
    "SpeechBrain's published L2I row (L-MAC paper, Paissan et al. 2024, out-of-domain setting, ESC-50, CNN14 "
    "classifier): theirs, not comparable one-to-one"
)

EPS = 1e-10
"""The recipe's ε in AD's and AG's denominators (``eps`` at the top of ``interpreter_brain.py``)."""

SPARSENESS_FLOOR = 1e-7
"""Quantus' ``Sparseness`` adds it to every normalised attribution before the Gini index."""


def output_scores(logits, logits_in, logits_out, target_class, multilabel: bool = False) -> dict[str, np.ndarray]:
    """AI, AD, AG, FF and Fid-In per explained clip (``compute_AI``, ``compute_AD``, ``compute_AG``,
    ``compute_faithfulness``, ``compute_fidelity`` in ``InterpreterBrain.on_stage_start``).

    Interpretation choices:
        - ``AD`` follows ``compute_AD`` literally: the recipe passes it softmax probabilities and it applies a softmax
          again, so AD compares softmax(p); ``AD_one_softmax`` is the L-MAC paper's formula on p itself.
          Multi-label (not in the recipe): sigmoid probabilities, once.
        - ``Fid-In`` compares the mask-in's top class with the classifier's prediction c, as ``train_lmac.py`` calls
          ``compute_fidelity`` (``train_l2i.py`` passes the label tensor [B, 1] there, whose argmax is always 0).
          Multi-label: the explained class is still predicted present (sigmoid > 0.5) on the mask-in.

    Args:
        logits: [B, C] the classifier's logits on the inputs.
        logits_in, logits_out: [B, C] its logits on the mask-in and mask-out audio.
        target_class: int [B], the explained class c (the prediction, for multi-class).
        multilabel: sigmoid (True) or softmax (False) probabilities.

    Returns:
        float64 arrays [B]: ``AI``, ``AD``, ``AD_one_softmax``, ``AG`` (percent), ``FF`` (probability), ``Fid-In``
        (0 or 1).
    """
    shapes = {np.shape(logits), np.shape(logits_in), np.shape(logits_out)}
    if len(shapes) != 1 or np.ndim(logits) != 2:
        raise ValueError(f"expected three [B, C] logit arrays of one shape, got shapes {sorted(shapes)}")
    rows = np.arange(len(logits))
    c = np.broadcast_to(np.asarray(target_class, dtype=int), rows.shape)
    p, p_in, p_out = (metrics.probabilities(v, multilabel) for v in (logits, logits_in, logits_out))
    pc, oc = p[rows, c], p_in[rows, c]
    if multilabel:
        qc, qc_in = pc, oc
        kept = np.asarray(logits_in, dtype="float64")[rows, c] > 0.0
    else:
        qc, qc_in = metrics.probabilities(p, False)[rows, c], metrics.probabilities(p_in, False)[rows, c]
        kept = np.argmax(logits_in, axis=1) == c
    return {
        "AI": 100.0 * (pc < oc),
        "AD": 100.0 * np.maximum(qc - qc_in, 0.0) / (qc + EPS),
        "AD_one_softmax": 100.0 * np.maximum(pc - oc, 0.0) / (pc + EPS),
        "AG": 100.0 * np.maximum(oc - pc, 0.0) / (1.0 - pc + EPS),
        "FF": pc - p_out[rows, c],
        "Fid-In": kept.astype("float64"),
    }


def _flat_abs(masks) -> np.ndarray:
    masks = np.abs(np.asarray(masks, dtype="float64"))
    if masks.ndim < 2:
        raise ValueError(f"masks must be [B, ...] (one mask per clip), got shape {masks.shape}")
    return masks.reshape(len(masks), -1)


def sparseness(masks) -> np.ndarray:
    """SPS: the Gini index of each mask's absolute values (``compute_sparseness`` → Quantus ``Sparseness``, abs and
    normalised by the maximum, plus :data:`SPARSENESS_FLOOR`). 0 for a constant mask, → 1 for a single non-zero bin.

    Args:
        masks: [B, ...] one attribution map (e.g. [T, F]) per clip.

    Returns:
        float64 [B]; NaN for an all-zero mask (the recipe skips those).
    """
    a = _flat_abs(masks)
    top = a.max(axis=1, keepdims=True)
    empty = top[:, 0] == 0
    a = np.sort(a / np.where(top > 0, top, 1.0) + SPARSENESS_FLOOR, axis=1)
    n = a.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    gini = (a @ weights) / (n * a.sum(axis=1))
    return np.where(empty, np.nan, gini)


def complexity(masks) -> np.ndarray:
    """COMP: the entropy (nats) of each mask's fractional contributions ``|M| / Σ|M|`` (``compute_complexity`` →
    Quantus ``Complexity``). ``ln n`` for a mask constant over n bins, 0 for a single non-zero bin.

    Args:
        masks: [B, ...] one attribution map per clip.

    Returns:
        float64 [B]; NaN for an all-zero mask (the recipe drops those NaNs in ``on_stage_end``).
    """
    a = _flat_abs(masks)
    total = a.sum(axis=1, keepdims=True)
    share = a / np.where(total > 0, total, 1.0)
    terms = np.where(share > 0, share * np.log(np.where(share > 0, share, 1.0)), 0.0)
    return np.where(total[:, 0] > 0, -terms.sum(axis=1), np.nan)


def clip_scores(logits, logits_in, logits_out, target_class, masks, multilabel: bool = False) -> dict[str, np.ndarray]:
    """Every metric per explained clip: :func:`output_scores` plus ``SPS`` and ``COMP`` of ``masks`` [B, ...]."""
    if len(masks) != len(logits):
        raise ValueError(f"{len(masks)} masks for {len(logits)} clips")
    scores = output_scores(logits, logits_in, logits_out, target_class, multilabel)
    return {**scores, "SPS": sparseness(masks), "COMP": complexity(masks)}


def summarize(per_clip: list[dict]) -> dict:
    """Means over clips, as the recipe reports them (``on_stage_end``: ``torch.Tensor(scores).mean()``); SPS and
    COMP over the clips with a non-empty mask. ``clips`` counts the clips, ``empty_masks`` those with an all-zero mask.
    """
    keys = (*METRICS, "AD_one_softmax")
    if not per_clip:
        return {**{k: float("nan") for k in keys}, "clips": 0, "empty_masks": 0}
    v = {k: np.concatenate([np.atleast_1d(d[k]) for d in per_clip]) for k in keys}
    out = {k: float(np.mean(v[k])) if k not in ("SPS", "COMP") else _nanmean(v[k]) for k in keys}
    return {**out, "clips": int(len(v["AI"])), "empty_masks": int(np.isnan(v["COMP"]).sum())}


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def l2i_mask_metrics(explainer, waves: np.ndarray, thresholds, domain: str, batch_size: int = 16) -> dict:
    """The metric set for L2I on ``waves`` at each τ: the mask is the selected components' soft mask M_sel
    (:func:`~l2i_tf.explain.selected_mask`), mask-in its interpretation audio, mask-out the removal audio.

    Multi-label runs score every predicted-present (clip, class) pair, as faithfulness does.

    Args:
        explainer: an :class:`~l2i_tf.explainer.Explainer`.
        waves: float32 [n, S].
        thresholds: τ values.
        domain: mask domain of the mask-in and mask-out audio.
        batch_size: clips per interpreter pass.

    Returns:
        ``{str(τ): summary}`` (see :func:`summarize`).
    """
    acc = {t: [] for t in thresholds}
    for _, part in batches.spans(len(waves), batch_size):
        batch = analysed_batch(explainer, waves[part])
        if len(batch["rows"]):
            for t, scores in batch_scores(explainer, batch, thresholds, domain).items():
                acc[t].append(scores)
    return {str(t): summarize(acc[t]) for t in thresholds}


def batch_scores(explainer, batch: dict, thresholds, domain: str, logits_out: dict | None = None) -> dict:
    """:func:`clip_scores` at each τ of an :func:`~l2i_tf.faithfulness.analysed_batch` with explained rows.

    ``logits_out``: ``{τ: logits [B, C]}`` of the mask-out (removal) audio when they are already known (faithfulness
    classified the same removal of the same selection): then only the mask-in audio goes through the classifier.
    """
    W, stft, num_samples = explainer.dictionary, explainer.stft_config, batch["num_samples"]
    X, phase, H = batch["X"], batch["phase"], batch["H"]
    audio, masks = [], []
    for t in thresholds:
        chosen = explain.select(batch["relevance"], t)
        audio.append(explain.interpret(X, phase, W, H, chosen, num_samples, stft, domain))
        if logits_out is None:
            audio.append(explain.remove(X, phase, W, H, chosen, num_samples, stft, domain))
        masks.append(np.asarray(explain.selected_mask(W, H, chosen)))
    after = explainer.classifier_logits(np.asarray(tf.concat(audio, axis=0)))
    B, per_tau = len(batch["rows"]), 1 if logits_out is not None else 2
    clf, out = batch["clf"][batch["rows"]], {}
    for i, t in enumerate(thresholds):
        logits_in = after[per_tau * i * B : (per_tau * i + 1) * B]
        removed = logits_out[t] if logits_out is not None else after[(2 * i + 1) * B : (2 * i + 2) * B]
        out[t] = clip_scores(clf, logits_in, removed, batch["classes"], masks[i], explainer.multilabel)
    return out
