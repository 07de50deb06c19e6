"""What the frozen classifier gives for every training example, cached to disk shards once, and the tf.data
pipelines that train and score the interpreter from them, so memory does not grow with the number of clips.

A split's features live in ``<folder>/shard-NNNNN.<key>.npy`` (``SHARD_EXAMPLES`` examples a shard, the last one
shorter; one file per key of :meth:`~l2i_tf.interpreter.Interpreter.precompute` — ``waveform``,
``classifier_logits``, ``sequence_0..n`` — each written under a temporary name and renamed; a training run's
splits hold X in place of the waveform, :func:`spectrogram_features`) and
``<folder>/index.json`` (written last: the split is complete when it exists). :func:`write_split` fills them from a
stream of examples in batches of ``FEATURE_BATCH`` (the classifier sees the same batches as the in-memory trainer),
holding one shard.

Training order (:meth:`Shards.epochs_dataset`): epoch ``e`` reads the split's examples in :func:`epoch_order`
(seed, e), a permutation of the whole split — a pure function of its arguments, so a resumed run sees the batches
of an uninterrupted one, and the in-memory trainer's order, so every batch is a draw from the whole split whatever
the shards hold (shards are written in the data's order: class after class, clips before mixtures). Reading holds
a batch, not a shard: each row is read from its file at its offset (``os.pread``, no memory map), so peak memory
does not grow with the number of shards.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2i_tf import audio, files
from l2i_tf.batches import without_autotune

SHARD_EXAMPLES = 256
"""Examples per shard (a multiple of ``FEATURE_BATCH``): ~87 MB for 5 s clips at 16 kHz, mostly the waveform."""
FEATURE_BATCH = 32
"""Examples per classifier pass while writing (as :meth:`~l2i_tf.interpreter.Interpreter.precompute`)."""
INDEX = "index.json"
FORMAT = "npy-per-key-2"
"""The shards' layout, recorded in ``index.json``: a cache written in another (an older version's) is rebuilt."""
SPECTROGRAM_DTYPE = np.float16
"""How :func:`spectrogram_features` stores X and |S_src|: 2⁻¹¹ relative rounding (X ≤ log1p(frame) ≈ 6), far
below the NMF model's error; the same bytes as the waveform they replace (F·T ≈ 2·samples at a quarter-frame hop)."""


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of ``n`` examples in ``epoch``: a pure function of (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def rebatch(examples: Iterable, batch_size: int = FEATURE_BATCH) -> Iterator:
    """1-D examples of one length -> stacked batches ``[≤ batch_size, samples]`` in order (dict examples: a dict of
    stacked arrays, key by key)."""
    pending = []
    for example in examples:
        pending.append(example)
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
    if pending:
        yield _stack(pending)


def _stack(examples: list):
    if isinstance(examples[0], dict):
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}
    return np.stack(examples)


def _flatten(features: dict) -> dict[str, np.ndarray]:
    """The cached keys: ``waveform``, ``classifier_logits``, ``sequence_<i>``, and any extra key as it is (a
    training split's ``source`` and ``source_weight``), in float32; :data:`SPECTROGRAM_DTYPE` arrays (X, |S_src|)
    stay as they are."""
    out = {key: value for key, value in features.items() if key != "sequences"}
    out.update({f"sequence_{i}": s for i, s in enumerate(features["sequences"])})
    return {key: np.asarray(value, dtype=_stored_dtype(value)) for key, value in out.items()}


def _stored_dtype(value):
    return SPECTROGRAM_DTYPE if getattr(value, "dtype", None) == SPECTROGRAM_DTYPE else np.float32


def spectrogram_features(features: Callable, stft: audio.STFTConfig) -> Callable:
    """``features`` (a batch -> a :meth:`~l2i_tf.interpreter.Interpreter.precompute`-like dict, with ``source``
    for source mixtures) -> the same dict with ``spectrogram`` X = log1p|S| in place of ``waveform`` and
    ``source_magnitude`` |S_src| in place of ``source``, both :data:`SPECTROGRAM_DTYPE`: what a training step reads
    (:func:`analysed`), made once when the split is written rather than in every epoch (the STFTs and magnitudes
    were about a third of the CPU a default training step used, in tf.data beside it)."""

    def run(batch) -> dict:
        out = dict(features(batch))
        out["spectrogram"] = _spectra(stft, True)(tf.convert_to_tensor(out.pop("waveform"), tf.float32)).numpy()
        if "source" in out:
            out["source_magnitude"] = _spectra(stft, False)(tf.convert_to_tensor(out.pop("source"), tf.float32)).numpy()
        return out

    return run


@functools.cache  # caches traced functions only (one trace a process, not one per split and batch shape)
def _spectra(stft: audio.STFTConfig, log: bool):
    """Waveforms ``[batch, samples]`` -> ``log1p|S|`` (``log``) or ``|S|`` ``[batch, frames, bins]``, as
    :data:`SPECTROGRAM_DTYPE`."""

    def spectra(waveform):
        magnitude = audio.magnitude(audio.stft(waveform, stft))
        return tf.cast(tf.math.log1p(magnitude) if log else magnitude, SPECTROGRAM_DTYPE)

    return tf.function(spectra, input_signature=[tf.TensorSpec([None, None], tf.float32)], autograph=False)


class DiskSpaceError(OSError):
    """A feature cache's disk has less free space than its shards will take (raised before they are written)."""

    def __init__(self, folder: Path, needed: int, free: int):
        message = (
            f"{folder}: the feature shards of this run need at least {needed / 1e9:.1f} GB, and its disk has "
            f"{free / 1e9:.1f} GB free"
        )
        super().__init__(errno.ENOSPC, message)
        self.folder, self.needed, self.free = folder, needed, free

    def __str__(self) -> str:
        return self.strerror


def check_free_space(folder: str | Path, needed: float) -> None:
    """:class:`DiskSpaceError` if the disk of ``folder`` (an existing folder) has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DiskSpaceError(Path(folder), int(needed), free)


def example_bytes(out: dict, examples: int, without=()) -> float:
    """Bytes an example of a flattened features batch (:func:`_flatten`) of ``examples`` examples takes in the shards,
    leaving out the keys ``without``."""
    return sum(value.nbytes for key, value in out.items() if key not in without) / examples


def write_split(
    folder: str | Path, batches: Iterable[np.ndarray], features: Callable[[np.ndarray], dict], on_first=None
) -> Shards:
    """Run ``features`` (a waveform batch -> a :meth:`~l2i_tf.interpreter.Interpreter.precompute`-like dict) on
    every batch and write the results to ``folder`` in shards of ``SHARD_EXAMPLES``; returns the :class:`Shards`.

    The batches must hold ``FEATURE_BATCH`` examples (the last may hold fewer). ``folder`` is emptied first.
    ``on_first(out, examples)``, if given, sees the first batch's flattened features before anything is written (to
    plan the disk: :func:`example_bytes`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    pending: list[dict] = []
    counts: list[int] = []
    shapes = None

    def flush():
        for key in pending[0]:  # one key's copy at a time on top of the pending batches
            with files.atomic_file(_key_path(folder, len(counts), key)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate([p[key] for p in pending]))
        counts.append(sum(_examples(p) for p in pending))
        pending.clear()

    for batch in batches:
        out = _flatten(features(batch))
        if shapes is None and on_first is not None:
            on_first(out, _examples(out))
        shapes = shapes or {key: list(value.shape[1:]) for key, value in out.items()}
        pending.append(out)
        if sum(_examples(p) for p in pending) >= SHARD_EXAMPLES:
            flush()
    if pending:
        flush()
    if not counts:
        raise ValueError(f"{folder}: no examples to cache")
    files.write_json(folder / INDEX, {"format": FORMAT, "counts": counts, "shapes": shapes})
    return Shards.load(folder)


def _examples(batch: dict) -> int:
    return len(next(iter(batch.values())))


def _key_path(folder: Path, shard: int, key: str) -> Path:
    return folder / f"shard-{shard:05d}.{key}.npy"


class Shards:
    """A split's feature shards (see the module's docstring): ``counts`` examples per shard, ``shapes`` per key."""

    def __init__(self, folder: Path, counts: list[int], shapes: dict[str, list]):
        self.folder, self.counts, self.shapes = folder, list(counts), shapes
        self.keys = tuple(shapes)
        self.sequences = sum(key.startswith("sequence_") for key in self.keys)
        self._starts = np.concatenate([[0], np.cumsum(self.counts)]).astype("int64")
        self._plan: tuple[tuple, np.ndarray] | None = None
        self._layouts: dict[tuple[int, str], tuple[int, np.dtype, tuple]] = {}

    @classmethod
    def load(cls, folder: str | Path) -> Shards:
        """The complete split in ``folder``; FileNotFoundError naming it when its ``index.json`` is missing or was
        written in another format (an older version's cache: the features are computed again)."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"{folder}: no complete feature cache ({INDEX} is missing)")
        index = json.loads((folder / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise FileNotFoundError(f"{folder}: a feature cache in another format ({index.get('format')!r})")
        return cls(folder, index["counts"], index["shapes"])

    def __len__(self) -> int:
        return int(sum(self.counts))

    def _layout(self, shard: int, key: str) -> tuple[int, np.dtype, tuple]:
        """(data offset, dtype, row shape) of one ``.npy`` file, read from its header once; a file whose row count
        differs from ``index.json`` is a ValueError naming it."""
        if (shard, key) not in self._layouts:
            path = _key_path(self.folder, shard, key)
            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(f)
                offset = f.tell()
            if fortran or shape[0] != self.counts[shard]:
                raise ValueError(f"{path}: {shape[0]} examples, {INDEX} says {self.counts[shard]}")
            self._layouts[shard, key] = (offset, dtype, tuple(shape[1:]))
        return self._layouts[shard, key]

    def dtype(self, key: str) -> np.dtype:
        """The stored dtype of ``key`` (float32, or :data:`SPECTROGRAM_DTYPE`)."""
        return self._layout(0, key)[1]

    def _gather(self, shard: int, rows: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        """Rows ``rows`` of ``shard``, in that order, by key, each read at its offset (a run of consecutive rows in
        one read); nothing stays mapped or open."""
        rows = np.asarray(rows, dtype="int64")
        out = {}
        for key in keys or self.keys:
            offset, dtype, shape = self._layout(shard, key)
            size = int(np.prod(shape, dtype="int64")) * dtype.itemsize
            value = np.empty((len(rows), *shape), dtype)
            flat = value.reshape(len(rows), -1).view(np.uint8)
            fd = os.open(_key_path(self.folder, shard, key), os.O_RDONLY)
            try:
                starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # runs of consecutive rows
                for a, b in zip(starts, [*starts[1:], len(rows)], strict=True):
                    want = size * (b - a)
                    data = os.pread(fd, want, offset + int(rows[a]) * size) if want else b""
                    if len(data) != want:
                        path = _key_path(self.folder, shard, key)
                        raise ValueError(f"{path}: truncated ({len(data)} of {want} bytes at row {rows[a]})")
                    flat[a:b] = np.frombuffer(data, np.uint8).reshape(b - a, size)
            finally:
                os.close(fd)
            out[key] = value
        return out

    def read(self, shard: int, order: np.ndarray | None = None, keys=None) -> dict[str, np.ndarray]:
        """Shard ``shard``'s arrays by key (all keys, or ``keys``), its examples in ``order`` (stored order by
        default)."""
        rows = np.arange(self.counts[shard]) if order is None else np.asarray(order)
        return self._gather(shard, rows, keys)

    def _epoch_plan(self, seed: int | None, epoch: int) -> np.ndarray:
        """The examples (indices into the split) in the order ``epoch`` reads them: :func:`epoch_order` (seed,
        epoch), or stored order when ``seed`` is None."""
        if self._plan is None or self._plan[0] != (seed, epoch):
            order = np.arange(len(self)) if seed is None else epoch_order(seed, epoch, len(self))
            self._plan = ((seed, epoch), order.astype("int64"))
        return self._plan[1]

    def _batch(self, seed: int | None, epoch: int, batch: int, batch_size: int) -> list[np.ndarray]:
        """Batch ``batch`` of ``epoch`` (see :meth:`_epoch_plan`), key by key; the epoch's last may be short."""
        examples = self._epoch_plan(seed, epoch)[batch * batch_size : (batch + 1) * batch_size]
        shard_ids = np.searchsorted(self._starts, examples, side="right") - 1
        rows = examples - self._starts[shard_ids]
        out = {key: np.empty([len(rows), *self.shapes[key]], self.dtype(key)) for key in self.keys}
        for j in np.unique(shard_ids):
            at = np.flatnonzero(shard_ids == j)
            for key, value in self._gather(int(j), rows[at]).items():
                out[key][at] = value
        return [out[key] for key in self.keys]

    def _structure(self, flat) -> dict:
        by_key = dict(zip(self.keys, flat, strict=True))
        sequences = tuple(by_key[f"sequence_{i}"] for i in range(self.sequences))
        out = {key: value for key, value in by_key.items() if not key.startswith("sequence_")}
        return {"sequences": sequences, **out}

    def _batches(self, seed: int | None, epochs: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """Every batch of each epoch in ``epochs`` (a dataset of epoch numbers), read on demand, one at a time."""
        steps = -(-len(self) // batch_size)

        def read(e, b):
            return self._batch(seed, int(e), int(b), batch_size)

        def one_batch(e, b):
            dtypes = [tf.as_dtype(self.dtype(key)) for key in self.keys]  # float16 X goes to tf as it is
            flat = tf.numpy_function(read, [e, b], dtypes, stateful=False)
            for tensor, key in zip(flat, self.keys, strict=True):
                tensor.set_shape([None, *self.shapes[key]])
            return self._structure(flat)

        @tf.autograph.experimental.do_not_convert  # run as written (and the map made inside): no tensor branches
        def one_epoch(e):
            return tf.data.Dataset.range(steps).map(lambda b: one_batch(e, b))

        return without_autotune(epochs.flat_map(one_epoch).prefetch(2))

    def dataset(self, batch_size: int) -> tf.data.Dataset:
        """Every example in stored order, in batches of ``batch_size`` (validation, test)."""
        return self._batches(None, tf.data.Dataset.range(1), batch_size)

    def epochs_dataset(self, batch_size: int, seed: int, first_epoch: int, epochs: int) -> tuple[tf.data.Dataset, int]:
        """Batches of epochs ``first_epoch .. epochs - 1`` (see the module's docstring); returns (dataset, steps per
        epoch). Each epoch ends with its own (possibly short) batch; ``fit`` reads ``steps`` batches per epoch."""
        steps = -(-len(self) // batch_size)
        return self._batches(seed, tf.data.Dataset.range(first_epoch, epochs), batch_size), steps

    def column(self, key: str) -> np.ndarray:
        """One key's values over every example (small keys only, e.g. ``classifier_logits``)."""
        return np.concatenate([self.read(j, keys=[key])[key] for j in range(len(self.counts))])


def analysed(batch: dict, stft: audio.STFTConfig) -> dict:
    """A batch of a split with X (``spectrogram``) in place of the waveform, and for training mixtures the linear
    magnitudes ``|S_x|`` (``magnitude``) and ``|S_src|`` (``source_magnitude``) in place of the source. A batch
    read from :func:`spectrogram_features`' shards has X and |S_src| already: ``|S_x| = expm1(X)`` is added; a
    batch analysed already is returned as it is. Runs in tf.data (:func:`with_spectrograms`) or, for a batch that
    did not go through it, in the step."""
    if "waveform" not in batch:
        stored = {key: tf.cast(batch[key], tf.float32) for key in ("spectrogram", "source_magnitude") if key in batch}
        batch = {**batch, **stored}
        if "source_magnitude" in batch and "magnitude" not in batch:
            batch["magnitude"] = tf.math.expm1(batch["spectrogram"])
        return batch
    batch = dict(batch)
    magnitude = audio.magnitude(audio.stft(batch.pop("waveform"), stft))
    batch["spectrogram"] = tf.math.log1p(magnitude)
    if "source" in batch:
        batch["magnitude"] = magnitude
        batch["source_magnitude"] = audio.magnitude(audio.stft(batch.pop("source"), stft))
    return batch


def with_spectrograms(dataset: tf.data.Dataset, stft: audio.STFTConfig) -> tf.data.Dataset:
    """Batches of a split (:meth:`Shards.dataset`, :meth:`Shards.epochs_dataset`) -> the same batches
    :func:`analysed`, in tf.data's threads beside the training step (for shards of waveforms, the STFTs). Not
    converted by AutoGraph: :func:`analysed` branches on the batch's keys, never on a tensor."""
    run = tf.autograph.experimental.do_not_convert(lambda b: analysed(b, stft))
    return without_autotune(dataset.map(run, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2))
