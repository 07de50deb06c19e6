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
    recipes = mixture_recipes(labels, count, num_sources, snr_db, seed)
    hi = recipes["classes"].shape[1]
    n_samples = waveforms.shape[1]
    mixture = np.zeros((count, n_samples), dtype="float32")
    sources = np.zeros((count, hi, n_samples), dtype="float32") if keep_sources else None
    multi_hot = np.zeros((count, num_classes), dtype="float32")
    for m in range(count):
        scaled = scaled_sources(recipes, m, lambda i: waveforms[i])
        mixture[m] = mix(scaled, n_samples)
        if keep_sources:
            sources[m, : len(scaled)] = scaled
        multi_hot[m, recipes["classes"][m][recipes["classes"][m] >= 0]] = 1.0
    classes, snrs = recipes["classes"], recipes["snr_db"]
    out = {"mixture": mixture, "labels": multi_hot, "classes": classes, "snr_db": snrs}
    if keep_sources:
        out["sources"] = sources
    return out


def mixture_recipes(labels: np.ndarray, count: int, num_sources=(2, 3), snr_db=(-5.0, 5.0), seed: int = 0) -> dict:
    """What :func:`make_mixtures` mixes, without the audio: ``clips`` (row of each source, -1 for none), ``classes``
    (-1 for none) and ``snr_db``, all ``[count, max_sources]``; the draws of :func:`make_mixtures` in its order, so
    mixture ``m`` can be made alone (:func:`scaled_sources`) from clips read on demand (a few numbers a mixture)."""
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
    clips = -np.ones((count, hi), dtype="int64")
    classes = -np.ones((count, hi), dtype="int64")
    snrs = np.zeros((count, hi), dtype="float32")
    for m in range(count):
        k = int(rng.integers(lo, hi + 1))
        for s, c in enumerate(rng.choice(present, size=k, replace=False)):
            clips[m, s], classes[m, s] = rng.choice(by_class[c]), c
            snrs[m, s] = 0.0 if s == 0 else float(rng.uniform(snr_lo, snr_hi))
    return {"clips": clips, "classes": classes, "snr_db": snrs}


def scaled_sources(recipes: dict, m: int, clip) -> list[np.ndarray]:
    """Mixture ``m``'s sources as :func:`make_mixtures` scales them: the target as it is, every other source at
    its SNR below the target; ``clip(row)`` returns a clip's float32 waveform."""
    out, target_rms = [], None
    for row, snr in zip(recipes["clips"][m], recipes["snr_db"][m], strict=True):
        if row < 0:
            break
        wave = clip(int(row))
        if target_rms is None:
            target_rms = rms(wave)
            out.append(wave)
        else:
            out.append(at_snr(wave, target_rms, float(snr)))
    return out


def at_snr(wave: np.ndarray, target_rms: float, snr_db: float) -> np.ndarray:
    """``wave`` scaled so that a target of RMS ``target_rms`` is ``snr_db`` above it (float32; silence stays
    silent)."""
    return (wave * (target_rms / rms(wave) / 10 ** (snr_db / 20))).astype("float32")


def mix(scaled: list[np.ndarray], n_samples: int) -> np.ndarray:
    """The sum of scaled sources, float32 ``[n_samples]`` (accumulated in :func:`make_mixtures`' order)."""
    out = np.zeros(n_samples, dtype="float32")
    for wave in scaled:
        out += wave
    return out


def split_counts(mixtures: int) -> tuple[int, int, int]:
    """Mixtures of the train / validation / test splits: ``mixtures`` and a quarter as many for the other two."""
    return mixtures, mixtures // 4, mixtures // 4


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
    counts = split_counts(mixtures)
    out = []
    for i, (part, count) in enumerate(zip(splits, counts, strict=True)):
        if part is None:
            out.append(None)
            continue
        waves, labels = part
        mix = make_mixtures(waves, labels, num_classes, count, snr_db=snr_db, seed=seed + i, keep_sources=False)
        out.append((mix["mixture"], mix["labels"]))
    return out
