"""Training mixtures whose sources are known: what the source-consistency term learns from (single-label runs).

They are made from the training split's clips only — never validation or test clips — as two clips of different
classes, the second at an SNR drawn from the run's ``mixture_snr_db``, seeded by the run's seed. Once the
classifier has decided a mixture's class c, the example keeps the source of class c (``source_weight`` 1), or none
when the classifier decided a class that is not in the mixture (weight 0: nothing to match). Every other training
example carries a silent source at weight 0, so all training batches have the same keys. The sources are used by
the training loss only: an explanation never sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from l2i_tf import mixtures, windows

SEED_TAG = 104729
"""Separates these mixtures' seed from the multi-label mixtures' (``seed + split``)."""


def plain(examples: Iterable[np.ndarray]) -> Iterator[dict]:
    """Waveforms as examples with no source: a silent source pair and classes -1."""
    for wave in examples:
        yield {"waveform": wave, "sources": np.zeros((2, len(wave)), "float32"), "classes": np.full(2, -1, "int64")}


def with_sources(clips, labels, count: int, seed: int, snr_db, window: int | None) -> Iterator[dict]:
    """``count`` two-source mixtures of ``clips`` (a :class:`~l2i_tf.clip_files.ClipFile`, ``labels`` int
    ``[rows]``) with their scaled sources ``[2, samples]`` and classes ``[2]``, made one at a time; cut into windows
    of ``window`` samples (the mixture and its sources at the same places) for a fixed-length classifier."""
    recipes = mixtures.mixture_recipes(labels, count, num_sources=2, snr_db=snr_db, seed=seed + SEED_TAG)
    for m in range(count):
        scaled = mixtures.scaled_sources(recipes, m, clips)
        mixture, sources = mixtures.mix(scaled, clips.length), np.stack(scaled)
        classes = recipes["classes"][m, :2]
        if window is None:
            yield {"waveform": mixture, "sources": sources, "classes": classes}
            continue
        cut = [windows.cut([wave], np.zeros(1), window).waves for wave in (mixture, *sources)]
        for piece, *parts in zip(*cut, strict=True):
            yield {"waveform": piece, "sources": np.stack(parts), "classes": classes}


def decided_source(features: Callable[[np.ndarray], dict]) -> Callable[[dict], dict]:
    """``features`` (a waveform batch -> a precompute dict) on batches of these examples, plus ``source`` (the
    source of the class the classifier decided, silent if none) and ``source_weight`` (1 if there was one)."""

    def run(batch: dict) -> dict:
        out = dict(features(batch["waveform"]))
        decided = np.asarray(out["classifier_logits"]).argmax(axis=-1)
        match = (np.asarray(batch["classes"]) == decided[:, None]).astype("float32")  # [B, 2]
        out["source"] = np.einsum("bj,bjs->bs", match, np.asarray(batch["sources"], "float32"))
        out["source_weight"] = match.max(axis=1)
        return out

    return run
