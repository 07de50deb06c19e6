"""What the frozen classifier gives for every training example, cached to disk shards once, and the tf.data
pipelines that train and score the interpreter from them, so memory does not grow with the number of clips.

A split's features live in ``<folder>/shard-NNNNN.npz`` (uncompressed npz, ``SHARD_EXAMPLES`` examples each, the
last one shorter; every file written under a temporary name and renamed) and ``<folder>/index.json`` (written
last: the split is complete when it exists), one array per key of :meth:`~l2i_tf.interpreter.Interpreter.precompute`
(``waveform``, ``classifier_logits``, ``sequence_0..n``). :func:`write_split` fills them from a stream of examples in
batches of ``FEATURE_BATCH`` (the classifier sees the same batches as the in-memory trainer), holding one shard.

Training order (:meth:`Shards.epochs_dataset`): in epoch ``e`` the shards are read in :func:`shard_order` (seed, e)
and the examples of each shard in :func:`example_order` (seed, e, shard), both pure functions of their arguments,
so a resumed run sees the batches of an uninterrupted one. Shard 0's order is :func:`epoch_order` (seed, e), so a
split that fits one shard (the bundled ESC-10: 240 training clips) is trained in exactly the in-memory order.
Peak memory: about two shards per pipeline (one being batched, the next being read when it runs out: shards are
read one at a time, behind the prefetched batches), whatever the number of shards.
Measured on the ESC-10 training folds (240 clips, 5 s at 16 kHz, 87 MB a shard): npz shards read back at ~1 GB/s
(0.08 s a shard), faster than the step that consumes them; TFRecord would add a parse per example for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2i_tf import files

SHARD_EXAMPLES = 256
"""Examples per shard (a multiple of ``FEATURE_BATCH``): ~87 MB for 5 s clips at 16 kHz, mostly the waveform."""
FEATURE_BATCH = 32
"""Examples per classifier pass while writing (as :meth:`~l2i_tf.interpreter.Interpreter.precompute`)."""
INDEX = "index.json"
_SHARD_TAG = 0x5A4D  # separates the shard order's seed from the examples' orders


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of ``n`` examples in ``epoch``: a pure function of (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def shard_order(seed: int, epoch: int, num_shards: int) -> np.ndarray:
    """The order in which ``epoch`` reads ``num_shards`` shards: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, _SHARD_TAG]).permutation(num_shards)


def example_order(seed: int, epoch: int, shard: int, count: int) -> np.ndarray:
    """The order of the ``count`` examples of ``shard`` in ``epoch``: :func:`epoch_order` for shard 0, else seeded
    by (seed, epoch, shard)."""
    if shard == 0:
        return epoch_order(seed, epoch, count)
    return np.random.default_rng([seed, epoch, shard]).permutation(count)


def rebatch(examples: Iterable[np.ndarray], batch_size: int = FEATURE_BATCH) -> Iterator[np.ndarray]:
    """1-D examples of one length -> stacked batches ``[≤ batch_size, samples]`` in order."""
    pending = []
    for example in examples:
        pending.append(example)
        if len(pending) == batch_size:
            yield np.stack(pending)
            pending = []
    if pending:
        yield np.stack(pending)


def _flatten(features: dict) -> dict[str, np.ndarray]:
    out = {"waveform": features["waveform"], "classifier_logits": features["classifier_logits"]}
    out.update({f"sequence_{i}": s for i, s in enumerate(features["sequences"])})
    return {key: np.asarray(value, dtype="float32") for key, value in out.items()}


def write_split(folder: str | Path, batches: Iterable[np.ndarray], features: Callable[[np.ndarray], dict]) -> Shards:
    """Run ``features`` (a waveform batch -> a :meth:`~l2i_tf.interpreter.Interpreter.precompute`-like dict) on
    every batch and write the results to ``folder`` in shards of ``SHARD_EXAMPLES``; returns the :class:`Shards`.

    The batches must hold ``FEATURE_BATCH`` examples (the last may hold fewer). ``folder`` is emptied first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    pending: list[dict] = []
    counts: list[int] = []
    shapes = None

    def flush():
        joined = {key: np.concatenate([p[key] for p in pending]) for key in pending[0]}
        with files.atomic_file(folder / f"shard-{len(counts):05d}.npz") as tmp:
            np.savez(tmp, **joined)
        counts.append(len(joined["waveform"]))
        pending.clear()

    for batch in batches:
        out = _flatten(features(batch))
        shapes = shapes or {key: list(value.shape[1:]) for key, value in out.items()}
        pending.append(out)
        if sum(len(p["waveform"]) for p in pending) >= SHARD_EXAMPLES:
            flush()
    if pending:
        flush()
    if not counts:
        raise ValueError(f"{folder}: no examples to cache")
    files.write_json(folder / INDEX, {"counts": counts, "shapes": shapes})
    return Shards.load(folder)


class Shards:
    """A split's feature shards (see the module's docstring): ``counts`` examples per shard, ``shapes`` per key."""

    def __init__(self, folder: Path, counts: list[int], shapes: dict[str, list]):
        self.folder, self.counts, self.shapes = folder, list(counts), shapes
        self.keys = tuple(shapes)
        self.sequences = sum(key.startswith("sequence_") for key in self.keys)

    @classmethod
    def load(cls, folder: str | Path) -> Shards:
        """The complete split in ``folder``; FileNotFoundError naming it when its ``index.json`` is missing."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"{folder}: no complete feature cache ({INDEX} is missing)")
        index = json.loads((folder / INDEX).read_text())
        return cls(folder, index["counts"], index["shapes"])

    def __len__(self) -> int:
        return int(sum(self.counts))

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.npz"

    def read(self, shard: int, order: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Shard ``shard``'s arrays by key, its examples in ``order`` (stored order by default)."""
        with np.load(self.path(shard)) as npz:
            arrays = {key: npz[key] for key in self.keys}
        if len(arrays["waveform"]) != self.counts[shard]:
            found = len(arrays["waveform"])
            raise ValueError(f"{self.path(shard)}: {found} examples, {INDEX} says {self.counts[shard]}")
        if order is not None:
            for key in self.keys:  # one key at a time: a single array's copy on top of the shard, not a second shard
                arrays[key] = arrays[key][order]
        return arrays

    def _structure(self, flat) -> dict:
        by_key = dict(zip(self.keys, flat, strict=True))
        sequences = tuple(by_key[f"sequence_{i}"] for i in range(self.sequences))
        logits, waveform = by_key["classifier_logits"], by_key["waveform"]
        return {"sequences": sequences, "classifier_logits": logits, "waveform": waveform}

    def _read_op(self, shard, epoch, seed: int | None):
        """A shard as tensors (a tf.numpy_function), shuffled by :func:`example_order` unless ``seed`` is None."""

        def run(j, e):
            j, e = int(j), int(e)
            order = None if seed is None else example_order(seed, e, j, self.counts[j])
            arrays = self.read(j, order)
            return [arrays[key] for key in self.keys]

        flat = tf.numpy_function(run, [shard, epoch], [tf.float32] * len(self.keys), stateful=False)
        for tensor, key in zip(flat, self.keys, strict=True):
            tensor.set_shape([None, *self.shapes[key]])
        return self._structure(flat)

    def dataset(self, batch_size: int) -> tf.data.Dataset:
        """Every example in stored order, in batches of ``batch_size`` (validation, test)."""
        shards = tf.data.Dataset.range(len(self.counts))
        ds = shards.map(lambda j: self._read_op(j, tf.constant(0, tf.int64), None))
        return ds.unbatch().batch(batch_size).prefetch(2)

    def epochs_dataset(self, batch_size: int, seed: int, first_epoch: int, epochs: int) -> tuple[tf.data.Dataset, int]:
        """Batches of epochs ``first_epoch .. epochs - 1`` (see the module's docstring); returns (dataset, steps per
        epoch). Each epoch ends with its own (possibly short) batch; ``fit`` reads ``steps`` batches per epoch."""
        steps = -(-len(self) // batch_size)
        plans = np.stack([shard_order(seed, e, len(self.counts)) for e in range(first_epoch, epochs)]).astype("int64")
        epoch_ids = np.arange(first_epoch, epochs, dtype="int64")

        def one_epoch(epoch, plan):
            shards = tf.data.Dataset.from_tensor_slices(plan)
            ds = shards.map(lambda j: self._read_op(j, epoch, seed))
            return ds.unbatch().batch(batch_size)

        ds = tf.data.Dataset.from_tensor_slices((epoch_ids, plans)).flat_map(one_epoch)
        return ds.prefetch(2), steps

    def column(self, key: str) -> np.ndarray:
        """One key's values over every example (small keys only, e.g. ``classifier_logits``)."""
        parts = []
        for j in range(len(self.counts)):
            with np.load(self.path(j)) as npz:
                parts.append(npz[key])
        return np.concatenate(parts)
