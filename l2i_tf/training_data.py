"""The examples a training run learns from, streamed: clips padded/cropped or cut into windows, augmented copies and
input mixtures, multi-label mixtures made one at a time, and their classifier features written to disk shards
(:mod:`l2i_tf.feature_cache`). No step holds every waveform: clips come one by one from the decode cache
(:func:`l2i_tf.data.waveform_dataset`), mixtures read their few sources from a per-split file of clips on disk
(:mod:`l2i_tf.clip_files`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from l2i_tf import data, feature_cache, files, mixtures, source_mixtures, windows
from l2i_tf.clip_files import ClipFile
from l2i_tf.feature_cache import Shards

log = logging.getLogger(__name__)

FEATURES = "features.json"
"""In the cache folder, written once every split's shards are complete: ``{"windows": counts}``."""


class Counter:
    """Clips and windows seen by a stream (``metrics.json``'s ``windows`` counts)."""

    def __init__(self):
        self.clips = self.windows = 0

    def counts(self) -> dict:
        return {"clips": self.clips, "windows": self.windows}


def fixed(wave: np.ndarray, length: int) -> np.ndarray:
    """``wave`` zero-padded or cropped to ``length`` samples (as :func:`l2i_tf.data.load_waveforms`)."""
    out = np.zeros(length, dtype="float32")
    out[: min(len(wave), length)] = wave[:length]
    return out


def cut(wave: np.ndarray, window: int | None, counter: Counter) -> Iterator[np.ndarray]:
    """One example (``window`` None) or its windows (:func:`l2i_tf.windows.cut`), counted."""
    counter.clips += 1
    if window is None:
        yield wave
        return
    pieces = windows.cut([wave], np.zeros(1), window).waves
    counter.windows += len(pieces)
    yield from pieces


def clip_examples(table, sample_rate: int, clip_samples: int | None) -> Iterator[tuple[np.ndarray, object]]:
    """``(waveform, label)`` of every clip of ``table`` in order, from the decode cache; padded/cropped to
    ``clip_samples`` unless it is None (clips at their own lengths)."""
    for wave, label, _ in data.waveform_dataset(table, sample_rate).as_numpy_iterator():
        yield (wave if clip_samples is None else fixed(wave, clip_samples)), label


def mixture_examples(clips: ClipFile, labels, count: int, seed: int, snr_db) -> Iterator[np.ndarray]:
    """The ``count`` mixtures of :func:`l2i_tf.mixtures.make_mixtures` (seed ``seed``), made one at a time from
    ``clips`` on disk: identical to the in-memory ones."""
    recipes = mixtures.mixture_recipes(labels, count, snr_db=snr_db, seed=seed)
    for m in range(count):
        yield mixtures.mix(mixtures.scaled_sources(recipes, m, clips), clips.length)


def extra_examples(base: Shards, augment_copies: int, mix_inputs: int, seed: int) -> Iterator[np.ndarray]:
    """More inputs from the training examples alone (the interpreter learns f's outputs, not labels), read back from
    their shards: ``augment_copies`` copies of every example, circularly shifted by a random offset with a random
    gain within ±6 dB, and ``mix_inputs`` mixtures of two random examples (the first at weight 0.5–1), seeded by
    ``seed + 7919``. Holds one shard and the ≤ 2 × ``mix_inputs`` examples mixed."""
    rng = np.random.default_rng(seed + 7919)
    n, length = len(base), base.shapes["waveform"][0]
    for _ in range(augment_copies):
        shifts = rng.integers(0, length, n)
        gains = 10 ** (rng.uniform(-6, 6, n) / 20)
        i = 0
        for shard in range(len(base.counts)):
            for wave in base.read(shard, keys=["waveform"])["waveform"]:
                yield (np.roll(wave, shifts[i]) * gains[i]).astype("float32")
                i += 1
    if mix_inputs:
        first, second = rng.integers(0, n, mix_inputs), rng.integers(0, n, mix_inputs)
        lam = rng.uniform(0.5, 1.0, (mix_inputs, 1)).astype("float32")
        rows = _rows(base, set(first) | set(second))
        for a, b, w in zip(first, second, lam, strict=True):
            yield w * rows[a] + (1 - w) * rows[b]


def _rows(shards: Shards, wanted: set) -> dict[int, np.ndarray]:
    """The waveforms of examples ``wanted`` (global indices), reading each shard once."""
    rows, start = {}, 0
    for shard, count in enumerate(shards.counts):
        inside = [i for i in wanted if start <= i < start + count]
        if inside:
            waves = shards.read(shard, np.array(inside) - start, keys=["waveform"])["waveform"]
            rows.update(zip(inside, waves, strict=True))
        start += count
    return rows


def _split_stream(config, part, index: int, sample_rate: int, window, cache: Path, counter: Counter):
    """One split's examples (before the classifier): clips, or the split's multi-label mixtures, windowed."""
    mixing = config.multilabel and not part.multilabel
    clip = int(config.clip_seconds * sample_rate)
    if not mixing:
        for wave, _ in clip_examples(part, sample_rate, clip if window is None else None):
            yield from cut(wave, window, counter)
        return
    name = mixtures.SPLIT_NAMES[index]
    path = cache / "clips" / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    store, labels = ClipFile.write(path, clip_examples(part, sample_rate, clip), len(part), clip)
    try:
        count = mixtures.split_counts(config.mixtures)[index]
        for mixture in mixture_examples(store, labels, count, config.seed + index, config.mixture_snr_db):
            yield from cut(mixture, window, counter)
    finally:
        store.close()
        path.unlink(missing_ok=True)


SOURCE_KEYS = ("source_magnitude", "source_weight")
"""The keys only a training split with source mixtures holds (:func:`l2i_tf.source_mixtures.decided_source`)."""


def expected_examples(config, parts) -> list[int]:
    """At least how many examples each split will hold: its clips (a clip cut into windows gives one or more) or its
    multi-label mixtures, and for the training split its copies, input mixtures and source mixtures."""
    counts = []
    for index, part in enumerate(parts):
        mixing = config.multilabel and not part.multilabel
        n = mixtures.split_counts(config.mixtures)[index] if mixing else len(part)
        if index == 0:
            n += n * config.augment_copies + config.mix_inputs + int(config.source_mixtures or 0)
        counts.append(n)
    return counts


def disk_plan(cache: Path, counts: list[int]):
    """``on_first`` of :func:`~l2i_tf.feature_cache.write_split` for the training split: its first batch gives the
    bytes an example takes, and the shards of every split's ``counts`` examples must then fit on the disk
    (:class:`~l2i_tf.feature_cache.DiskSpaceError` before the first shard is written, not hours later)."""

    def check(out: dict, examples: int) -> None:
        train = feature_cache.example_bytes(out, examples)
        held_out = feature_cache.example_bytes(out, examples, without=SOURCE_KEYS)
        feature_cache.check_free_space(cache, train * counts[0] + held_out * sum(counts[1:]))

    return check


def build_features(
    cache: Path, config, parts, sample_rate: int, window: int | None, features, stft
) -> tuple[list, dict]:
    """Every split's classifier features (``features``: a waveform batch -> a precompute dict) in shards under
    ``cache/<split>/``; returns (the three :class:`Shards`, the windows' description for ``metrics.json``). The
    splits hold X and |S_src| at ``stft`` (an STFTConfig) in place of the waveforms
    (:func:`~l2i_tf.feature_cache.spectrogram_features`).

    A complete cache (``cache/features.json``, e.g. left by a killed run being resumed) is reused as it is.
    Training examples are the split's clips (or mixtures), then ``augment_copies`` copies and ``mix_inputs`` input
    mixtures of them (:func:`extra_examples`), then ``source_mixtures`` mixtures with their sources
    (:func:`_with_source_mixtures`), in that order.
    """
    if (cache / FEATURES).is_file():
        try:
            shards = [Shards.load(cache / name) for name in mixtures.SPLIT_NAMES]
            log.info("reusing the cached features in %s", cache)
            return shards, json.loads((cache / FEATURES).read_text())["windows"]
        except FileNotFoundError as e:  # another version's cache: compute the features again
            log.info("not reusing the cached features: %s", e)
            (cache / FEATURES).unlink()
    counters = [Counter() for _ in parts]
    shards = []
    for index, (part, counter) in enumerate(zip(parts, counters, strict=True)):
        name = mixtures.SPLIT_NAMES[index]
        stream = _split_stream(config, part, index, sample_rate, window, cache, counter)
        if index == 0 and (config.augment_copies or config.mix_inputs):
            base = feature_cache.write_split(cache / "base", feature_cache.rebatch(stream), features)
            extra = extra_examples(base, config.augment_copies, config.mix_inputs, config.seed)
            stream = _chain_shards(base, extra)
        split_features = features
        if index == 0 and config.source_mixtures:
            stream = _with_source_mixtures(stream, config, part, sample_rate, window, cache)
            split_features = source_mixtures.decided_source(features)
        split_features = feature_cache.spectrogram_features(split_features, stft)
        plan = disk_plan(cache, expected_examples(config, parts)) if index == 0 else None
        shards.append(feature_cache.write_split(cache / name, feature_cache.rebatch(stream), split_features, plan))
        shutil.rmtree(cache / "base", ignore_errors=True)
    counts = {}
    if window is not None:
        counts = {"samples": window, "seconds": window / sample_rate}
        counts.update({name: c.counts() for name, c in zip(mixtures.SPLIT_NAMES, counters, strict=True)})
        log.info("windows of %d samples: %s", window, counts)
    files.write_json(cache / FEATURES, {"windows": counts})
    return shards, counts


def _with_source_mixtures(stream, config, part, sample_rate: int, window, cache: Path) -> Iterator[dict]:
    """The training examples (with no source), then ``config.source_mixtures`` mixtures of the split's clips with
    their sources (:mod:`l2i_tf.source_mixtures`), read from a file of the clips on disk."""
    clip = int(config.clip_seconds * sample_rate)
    path = cache / "clips" / "train_sources.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    store, labels = ClipFile.write(path, clip_examples(part, sample_rate, clip), len(part), clip)
    try:
        yield from source_mixtures.plain(stream)
        count, seed, snr = config.source_mixtures, config.seed, config.mixture_snr_db
        yield from source_mixtures.with_sources(store, labels, count, seed, snr, window)
    finally:
        store.close()
        path.unlink(missing_ok=True)


def _chain_shards(base: Shards, extra: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The base examples' waveforms (from their shards), then ``extra``."""
    for shard in range(len(base.counts)):
        yield from base.read(shard, keys=["waveform"])["waveform"]
    yield from extra
