"""Multi-label mixtures of single-label clips: targets and distractors at a chosen SNR, and the splits' mixtures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l2i_tf.data import AudioDataError


def rms(x: np.ndarray, axis=-1) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x, dtype="float64"), axis=axis) + 1e-12)


def make_mixtures(
    waveforms: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    count: int,
    num_sources=(2, 3),
    snr_db=(-5.0, 5.0),
    seed: int = 0,
    keep_sources: bool = True,
) -> dict[str, np.ndarray]:
    """Mix 2-3 clips of different classes; the first source is the target.

    Every other source is scaled so that the target-to-source energy ratio is an
    SNR drawn uniformly from ``snr_db`` (a number: that SNR exactly). The mixture is
    exactly the sum of the (scaled) sources.

    Args:
        waveforms: float ``[n, samples]`` single-label clips.
        labels: int ``[n]`` class indices.

    Returns:
        ``mixture [count, samples]``, ``labels [count, C]`` multi-hot,
        ``classes [count, max_sources]`` (-1 for none), ``snr_db [count, max_sources]``,
        and with ``keep_sources`` ``sources [count, max_sources, samples]``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise AudioDataError(f"mixtures are built from single-label clips; labels have shape {labels.shape}")
    lo, hi = (num_sources, num_sources) if np.isscalar(num_sources) else num_sources
    present = np.unique(labels)
    if len(present) < hi:
        raise AudioDataError(f"mixtures of {hi} classes need {hi} classes; the clips have {len(present)}")
    snr_lo, snr_hi = (snr_db, snr_db) if np.isscalar(snr_db) else snr_db
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in present}
    n_samples = waveforms.shape[1]
    mixture = np.zeros((count, n_samples), dtype="float32")
    sources = np.zeros((count, hi, n_samples), dtype="float32") if keep_sources else None
    classes = -np.ones((count, hi), dtype="int64")
    snrs = np.zeros((count, hi), dtype="float32")
    multi_hot = np.zeros((count, num_classes), dtype="float32")
    for m in range(count):
        k = int(rng.integers(lo, hi + 1))
        chosen = rng.choice(present, size=k, replace=False)
        target_rms = None
        for s, c in enumerate(chosen):
            clip = waveforms[rng.choice(by_class[c])]
            if s == 0:
                scaled, snr = clip, 0.0
                target_rms = rms(clip)
            else:
                snr = float(rng.uniform(snr_lo, snr_hi))
                scaled = (clip * (target_rms / rms(clip) / 10 ** (snr / 20))).astype("float32")
            mixture[m] += scaled
            if keep_sources:
                sources[m, s] = scaled
            classes[m, s] = c
            snrs[m, s] = snr
            multi_hot[m, c] = 1.0
    out = {"mixture": mixture, "labels": multi_hot, "classes": classes, "snr_db": snrs}
    if keep_sources:
        out["sources"] = sources
    return out


SPLIT_NAMES = ("train", "validation", "test")


def split_mixtures(
    splits: Sequence[tuple[np.ndarray, np.ndarray] | None],
    num_classes: int,
    mixtures: int,
    seed: int,
    snr_db=(-5.0, 5.0),
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The multi-label mixtures of the train / validation / test splits: the one place of their seed convention.

    Split ``i`` (0 train, 1 validation, 2 test) gets ``mixtures`` (train) or ``mixtures // 4`` (validation, test)
    mixtures of 2-3 of its clips (:func:`make_mixtures`, no sources kept), drawn with seed ``seed + i``. A split
    given as None is not built, so a job that needs only the test split rebuilds exactly the mixtures that
    training scored.

    Args:
        splits: ``(waveforms [n, samples], labels int [n])`` or None for each of train, validation, test.
        num_classes: C, the width of the multi-hot labels.
        mixtures: the training split's count.
        seed: the run's seed.
        snr_db: range (or value) of the target-to-distractor SNR.

    Returns:
        ``(mixture [count, samples], labels [count, C] multi-hot)`` or None, for each of train, validation, test.
    """
    if len(splits) != len(SPLIT_NAMES):
        raise ValueError(f"expected {len(SPLIT_NAMES)} splits ({', '.join(SPLIT_NAMES)}), got {len(splits)}")
    counts = (mixtures, mixtures // 4, mixtures // 4)
    out = []
    for i, (part, count) in enumerate(zip(splits, counts, strict=True)):
        if part is None:
            out.append(None)
            continue
        waves, labels = part
        mix = make_mixtures(waves, labels, num_classes, count, snr_db=snr_db, seed=seed + i, keep_sources=False)
        out.append((mix["mixture"], mix["labels"]))
    return out
