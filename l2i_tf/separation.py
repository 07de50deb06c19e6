"""Mixtures with ground truth: how much of the target source an interpretation keeps (SI-SDRi, target energy share),
next to reference rows (the mixture, random selections, oracle components, an ideal ratio mask)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from l2i_tf import audio, batches, explain, metrics, mixtures

DEFAULT_METHOD = "L2I default"
"""The mixture row of the explainer's own selection (its τ, top-N and active components, in its mask domain): what
an export gives a user; ``"default": true`` in ``report.json``."""


class Pooled:
    """Per-method rows of the mixture table, pooled over batches."""

    def __init__(self):
        self.rows: dict[tuple, dict[str, list]] = {}

    def add(self, method: str, domain: str, tau, sdri, share, count):
        row = self.rows.setdefault((method, domain, tau), {"si_sdri": [], "share": [], "selected": []})
        row["si_sdri"].append(np.asarray(sdri, dtype="float64"))
        row["share"].append(np.asarray(share, dtype="float64"))
        row["selected"].append(np.asarray(count, dtype="float64"))

    def table(self) -> list[dict]:
        out = []
        for (method, domain, tau), row in self.rows.items():
            sdri, share, count = (np.concatenate(row[k]) for k in ("si_sdri", "share", "selected"))
            counted = np.isfinite(count).all() and count.size
            out.append(
                {
                    "method": method,
                    "domain": domain,
                    "threshold": tau,
                    "si_sdri_db": metrics.summarize(sdri),
                    "target_energy_share": metrics.summarize(share),
                    "selected_mean": float(np.mean(count)) if counted else None,
                    "empty_share": float(np.mean(count == 0)) if counted else None,
                    "default": method == DEFAULT_METHOD,
                }
            )
        return out


def gain(mask, X, domain: str):
    """Effective linear gain on the mixture's STFT of a mask applied in ``domain``: ``|Ŝ| / |S|``."""
    if domain == "linear":
        return np.asarray(mask)
    magnitude = np.expm1(np.asarray(X, dtype="float64"))
    masked = np.expm1(np.asarray(mask, dtype="float64") * np.asarray(X, dtype="float64"))
    return np.where(magnitude > 0, masked / np.maximum(magnitude, 1e-30), 0.0)


def build_mixtures(clips, labels, num_classes: int, count: int, snr_db: float, seed: int) -> dict:
    """``count`` mixtures of a target and one distractor of another class at ``snr_db``, with their sources."""
    return mixtures.make_mixtures(clips, labels, num_classes, count, num_sources=2, snr_db=snr_db, seed=seed)


def source_powers(sources: np.ndarray, stft: audio.STFTConfig):
    """STFTs of the target and distractor sources [B, 2, N] and their powers (float64)."""
    S_t, S_d = audio.stft(sources[:, 0], stft), audio.stft(sources[:, 1], stft)
    return S_t, S_d, np.square(np.abs(S_t)).astype("float64"), np.square(np.abs(S_d)).astype("float64")


def oracle_components(W, H, P_t, P_d) -> np.ndarray:
    """The components whose soft mask gathers more target than distractor energy (bool [B, K]): a reference that
    knows the sources."""
    W, H = np.asarray(W), np.asarray(H)
    denominator = np.einsum("btk,fk->btf", H, W) + 1e-8
    num = np.einsum("btk,fk,btf->bk", H, W, P_t / denominator)
    den = np.einsum("btk,fk,btf->bk", H, W, (P_t + P_d) / denominator)
    return num > 0.5 * den


def _selections(r, thresholds, seed) -> list:
    """(method, τ, selection) rows for one batch: L2I and random at every τ, relevance-weighted soft selection."""
    choices = []
    for i, tau in enumerate(thresholds):
        chosen = explain.select(r, tau)
        choices += [("L2I", tau, chosen), ("random", tau, explain.random_selection(chosen, seed(i)))]
    choices.append(("L2I relevance-weighted", 0.0, tf.nn.relu(r)))  # every component weighted by r > 0
    return choices


def _batch_rows(pooled: Pooled, explainer, f: dict, idx, mixture, sources, target, config, batch: int) -> None:
    """Add the rows of the counted mixtures ``idx`` of one batch (``f``: the interpreter's outputs; ``mixture`` and
    ``sources``: the counted ones)."""
    stft, W = explainer.stft_config, explainer.dictionary
    N = mixture.shape[1]
    X, phase, H, contributions = (
        tf.gather(f[k], idx) for k in ("spectrogram", "phase", "activations", "contributions")
    )
    r = explain.class_relevance(contributions, target[idx])
    ref = sources[:, 0]
    base = metrics.si_sdr(mixture, ref)
    S_t, S_d, P_t, P_d = source_powers(sources, stft)
    X_np = np.asarray(X)
    share = metrics.target_energy_share(np.ones_like(X_np[:1]), P_t, P_d)
    pooled.add("mixture", "-", None, np.zeros(len(idx)), share, np.full(len(idx), explainer.num_components))
    choices = _selections(r, config.mixture_thresholds, lambda i: tf.constant([config.seed, batch * 131 + i]))
    choices.append(("oracle components", None, oracle_components(W, H, P_t, P_d)))
    selected = explainer.explain(mixture, target_class=target[idx])["selected"]  # as an export selects
    default = (DEFAULT_METHOD, explainer.config.threshold, selected)
    for domain in config.mixture_domains:
        for method, tau, sel in choices + ([default] if domain == explainer.config.domain else []):
            mask = explain.selected_mask(W, H, sel)
            est = np.asarray(audio.masked_waveform(X, phase, mask, N, stft, domain))
            count = np.asarray(tf.reduce_sum(tf.cast(tf.cast(sel, tf.float32) > 0, tf.int32), axis=1))
            share = metrics.target_energy_share(gain(mask, X_np, domain), P_t, P_d)
            pooled.add(method, domain, tau, metrics.si_sdr(est, ref) - base, share, count)
    irm = np.abs(S_t) / np.maximum(np.abs(S_t) + np.abs(S_d), 1e-12)
    est = np.asarray(audio.istft(tf.cast(irm, tf.complex64) * (S_t + S_d), N, stft))
    share = metrics.target_energy_share(irm, P_t, P_d)
    pooled.add("oracle ratio mask", "linear", None, metrics.si_sdr(est, ref) - base, share, np.full(len(idx), np.nan))


def mixture_separation(explainer, mix: dict, config, batch_size: int = 16) -> dict:
    """SI-SDRi and target-energy share of interpretations of mixtures the classifier gets right.

    The selection is the interpreter's: relevance for the classifier's predicted class (= the target on the counted
    mixtures). Reference rows: the mixture itself, a random selection of the same size, and two oracles that use
    the sources (component choice by target share, ideal ratio mask) — for scale, never for L2I.

    Args:
        explainer: an :class:`~l2i_tf.explainer.Explainer`.
        mix: :func:`build_mixtures`'s output.
        config: an :class:`~l2i_tf.evaluate.EvalConfig` (thresholds, domains, seed, SNR).
        batch_size: mixtures per interpreter pass.
    """
    pooled = Pooled()
    counted_index = []
    for b, part in batches.spans(len(mix["mixture"]), batch_size):
        x, target = mix["mixture"][part], mix["classes"][part, 0]
        f = explainer.analyze(x)
        clf = np.asarray(f["classifier_logits"])
        right = clf[np.arange(len(x)), target] > 0 if explainer.multilabel else clf.argmax(axis=1) == target
        idx = np.flatnonzero(right)
        if len(idx):
            counted_index.append(part.start + idx)
            _batch_rows(pooled, explainer, f, idx, x[idx], mix["sources"][part][idx], target, config, b)
    counted = np.concatenate(counted_index) if counted_index else np.zeros(0, int)
    return {
        "mixtures": int(len(mix["mixture"])),
        "counted": int(len(counted)),
        "classifier_right_share": float(len(counted) / max(len(mix["mixture"]), 1)),
        "snr_db": config.mixture_snr_db,
        "rows": pooled.table(),
        "counted_index": counted,
    }
