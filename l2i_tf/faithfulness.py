"""Faithfulness: remove the selected components, re-run the classifier, and measure the drop of the explained class
(median over clips), against two random baselines that remove as many other components: drawn among all of them (the
paper's), or among the clip's active ones only (energy above a share of the clip's activation energy)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from l2i_tf import batches, explain, metrics

METHODS = ("l2i", "random", "random_active")
PAPER_METHODS = ("l2i", "random")
"""The methods of the paper's table (what ``report["faithfulness"]`` holds); ``random_active`` is reported apart."""


def removal_drops(
    classify,
    X,
    phase,
    W,
    H,
    relevance,
    logits,
    target_class,
    thresholds,
    num_samples,
    stft,
    domain,
    seed,
    multilabel=False,
    active_share=explain.ACTIVE_SHARE,
) -> dict:
    """Faithfulness of one batch: remove the components with relevance > τ (and as many random others), re-forward.

    All removals of the batch (``3 · len(thresholds) · B`` clips) go through the classifier in one call.

    Args:
        classify: waveforms [n, N] -> logits [n, C].
        X, phase: [B, T, F] ``log1p|S|`` and phase of the inputs.
        W: [F, K]; H: [B, T, K]; relevance: [B, K] for ``target_class``.
        logits: [B, C] the classifier's logits on the inputs.
        target_class: int [B].
        thresholds: τ values.
        num_samples: clip length N.
        stft: STFT configuration.
        domain: mask domain.
        seed: int [2] stateless seed of the random baseline (vary it per batch).
        multilabel: probability semantics.
        active_share: share of a clip's activation energy above which a component is active (``random_active``).

    Returns:
        ``{τ: {"l2i": {"logit", "probability", "selected", "logits"}, "random": {...}, "random_active": {...}}}``:
        drops and counts [B], and ``logits`` [B, C] the classifier's on the removal audio.
    """
    removed, counts = [], []
    for i, tau in enumerate(thresholds):
        chosen = explain.select(relevance, tau)
        rand = explain.random_selection(chosen, tf.constant([seed[0], seed[1] * 131 + i], tf.int64))
        active_seed = tf.constant([seed[0] + 1_000_003, seed[1] * 131 + i], tf.int64)
        rand_active = explain.active_random_selection(chosen, H, active_seed, active_share)
        for sel in (chosen, rand, rand_active):
            removed.append(explain.remove(X, phase, W, H, sel, num_samples, stft, domain))
            counts.append(np.asarray(tf.reduce_sum(tf.cast(sel, tf.int32), axis=1)))
    after = classify(tf.concat(removed, axis=0))
    B = len(logits)
    out = {}
    for i, tau in enumerate(thresholds):
        out[tau] = {}
        for j, name in enumerate(METHODS):
            n = len(METHODS) * i + j
            removed = after[n * B : (n + 1) * B]
            drops = metrics.faithfulness_drops(logits, removed, target_class, multilabel)
            out[tau][name] = {**drops, "selected": counts[n], "logits": removed}
    return out


def explained_rows(classifier_logits: np.ndarray, multilabel: bool):
    """(row index, class) pairs to explain: the predicted class per clip, or every predicted-present class."""
    if not multilabel:
        return np.arange(len(classifier_logits)), classifier_logits.argmax(axis=1)
    return np.nonzero(classifier_logits > 0.0)  # sigmoid > 0.5


def analysed_batch(explainer, waves) -> dict:
    """One batch through the interpreter, as faithfulness and the mask metrics read it: ``analysis`` (what
    :meth:`~l2i_tf.explainer.Explainer.analyze` gives), ``clf`` (the classifier's logits [B, C]), the explained
    ``rows`` and ``classes`` (:func:`explained_rows`), ``num_samples``, and when a row is explained their ``X``,
    ``phase``, ``H`` and ``relevance`` for their class."""
    f = explainer.analyze(waves)
    clf = np.asarray(f["classifier_logits"])
    rows, classes = explained_rows(clf, explainer.multilabel)
    out = {"analysis": f, "clf": clf, "rows": rows, "classes": classes, "num_samples": int(np.shape(waves)[1])}
    if len(rows):
        X, phase, H, contributions = (
            tf.gather(f[k], rows) for k in ("spectrogram", "phase", "activations", "contributions")
        )
        out.update(X=X, phase=phase, H=H, relevance=explain.class_relevance(contributions, classes))
    return out


class Removals:
    """Faithfulness accumulated a batch at a time: :meth:`add` an :func:`analysed_batch`, then :meth:`result`."""

    KEYS = ("logit", "probability", "selected", "class", "wanted", "active")

    def __init__(self, explainer, thresholds, domain: str, seed: int, active_share: float = explain.ACTIVE_SHARE):
        self.explainer, self.thresholds, self.domain = explainer, tuple(thresholds), domain
        self.seed, self.active_share = seed, active_share
        self.acc = {t: {m: {k: [] for k in self.KEYS} for m in METHODS} for t in self.thresholds}

    def add(self, batch: dict, index: int) -> dict:
        """Removals of batch ``index`` (seeds its random baselines); returns :func:`removal_drops`'s output."""
        e = self.explainer
        rows, classes, H = batch["rows"], batch["classes"], batch["H"]
        active = np.sum(explain.active_components(H, self.active_share), axis=1)
        res = removal_drops(
            e.classifier_logits,
            batch["X"],
            batch["phase"],
            e.dictionary,
            H,
            batch["relevance"],
            batch["clf"][rows],
            classes,
            self.thresholds,
            batch["num_samples"],
            e.stft_config,
            self.domain,
            (self.seed, index),
            e.multilabel,
            self.active_share,
        )
        for t in self.thresholds:
            for m in METHODS:
                for key in ("logit", "probability", "selected"):
                    self.acc[t][m][key].append(res[t][m][key])
                self.acc[t][m]["class"].append(classes)
                self.acc[t][m]["wanted"].append(res[t]["l2i"]["selected"])
            self.acc[t]["random_active"]["active"].append(active)
        return res

    def result(self) -> dict:
        """``{str(τ): {method: summary}}``, see :func:`faithfulness`."""
        multilabel = self.explainer.multilabel
        return {str(t): {m: _summary(self.acc[t][m], multilabel) for m in METHODS} for t in self.thresholds}


def faithfulness(
    explainer,
    waves: np.ndarray,
    thresholds,
    domain: str,
    seed: int,
    batch_size: int = 16,
    active_share: float = explain.ACTIVE_SHARE,
) -> dict:
    """Median logit and probability drops over the clips (multi-label: over clip-class pairs, and per class).

    Args:
        explainer: an :class:`~l2i_tf.explainer.Explainer` (its interpreter's pass and dictionary are used).
        waves: float32 [n, S].
        thresholds: τ values.
        domain: mask domain of the removal.
        seed: seeds the random baselines.
        batch_size: clips per interpreter pass.
        active_share: activity threshold of the ``random_active`` baseline
            (see :func:`~l2i_tf.explain.active_components`).

    Returns:
        ``{str(τ): {method: summary}}`` for every method of :data:`METHODS`. ``short_share``: the share of clips whose
        baseline found fewer components to draw from than L2I selected; ``random_active`` also gives the mean number
        of active components per clip (``active_mean``).
    """
    removals = Removals(explainer, thresholds, domain, seed, active_share)
    for b, part in batches.spans(len(waves), batch_size):
        batch = analysed_batch(explainer, waves[part])
        if len(batch["rows"]):
            removals.add(batch, b)
    return removals.result()


def _summary(acc: dict, multilabel: bool) -> dict:
    v = {k: np.concatenate(x) if x else np.zeros(0) for k, x in acc.items()}
    entry = {
        "logit_drop": metrics.summarize(v["logit"]),
        "probability_drop": metrics.summarize(v["probability"]),
        "selected_mean": float(v["selected"].mean()) if v["selected"].size else float("nan"),
        "empty_share": float((v["selected"] == 0).mean()) if v["selected"].size else float("nan"),
        "short_share": float((v["selected"] < v["wanted"]).mean()) if v["selected"].size else float("nan"),
    }
    if v["active"].size:
        entry["active_mean"] = float(v["active"].mean())
    if multilabel:
        entry["per_class_median_logit_drop"] = {
            int(c): float(np.median(v["logit"][v["class"] == c])) for c in np.unique(v["class"])
        }
    return entry


def paper_and_active(result: dict, active_share: float) -> tuple[dict, dict]:
    """Split :func:`faithfulness`'s output into the paper's table (``l2i``, ``random``) and the active-random baseline
    (``{"active_share", "thresholds": {τ: summary}}``)."""
    paper = {t: {m: v[m] for m in PAPER_METHODS} for t, v in result.items()}
    active = {"active_share": active_share, "thresholds": {t: v["random_active"] for t, v in result.items()}}
    return paper, active
