"""The learnt NMF dictionary as an artefact: learning it from data, saving/loading it, and its Keras decoder layer."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import explain, files, nmf
from l2i_tf.audio import STFTConfig, analyze

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class DictionaryMismatchError(ValueError):
    """A dictionary used with another spectrogram than the one it was learnt on. ``folder`` is the dictionary's
    folder, ``dictionary_stft`` and ``given_stft`` the two :class:`STFTConfig`, ``differences`` ``{field:
    (dictionary's value, given value)}`` for every STFT field (and ``k``) that differs."""

    def __init__(self, folder: str, dictionary_stft: STFTConfig, given_stft: STFTConfig, differences: dict):
        fields = "; ".join(
            f"{name}: dictionary {ours!r}, given {theirs!r}" for name, (ours, theirs) in differences.items()
        )
        message = f"incompatible with {folder}: {fields}"
        if set(differences) - {"k"}:
            message += f" (dictionary STFT {dictionary_stft.to_dict()}, given {given_stft.to_dict()})"
        super().__init__(message)
        self.folder, self.dictionary_stft, self.given_stft = folder, dictionary_stft, given_stft
        self.differences = differences


@dataclasses.dataclass
class Dictionary:
    """A learnt NMF dictionary and everything needed to check it is used with the right spectrogram.

    Attributes:
        W: float32 ``[F, K]``, W >= 0, unit-L2-norm columns.
        stft: the STFT configuration of the spectrograms it was learnt on.
        config: the NMF settings.
        provenance: where it was learnt (data set root, folds, clip count, frame count, ...).
        history: objective per iteration (see :func:`l2i_tf.nmf.factorize` / :func:`learn_dictionary`).
    """

    W: np.ndarray
    stft: STFTConfig
    config: nmf.NMFConfig
    provenance: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.W = np.asarray(self.W, dtype=np.float32)
        if self.W.ndim != 2:
            raise ValueError(f"Dictionary.W must be [F, K], got shape {self.W.shape}")
        if self.W.shape[0] != self.stft.num_bins:
            raise ValueError(
                f"Dictionary.W has {self.W.shape[0]} rows but the STFT config gives {self.stft.num_bins} bins"
            )
        if self.W.shape[1] != self.config.k:
            raise ValueError(f"Dictionary.W has {self.W.shape[1]} columns but NMFConfig.k is {self.config.k}")
        if not np.all(np.isfinite(self.W)) or self.W.min() < 0:
            raise ValueError(f"Dictionary.W must be finite and >= 0, got min {np.nanmin(self.W)!r}")

    @property
    def k(self) -> int:
        return self.W.shape[1]

    @property
    def num_bins(self) -> int:
        return self.W.shape[0]

    def check_compatible(self, stft: STFTConfig, k: int | None = None) -> None:
        """Raise :class:`DictionaryMismatchError` naming every STFT field (and K) that differs from the
        dictionary's."""
        differences = self.stft.differences(stft)
        if k is not None and k != self.k:
            differences["k"] = (self.k, k)
        if differences:
            raise DictionaryMismatchError(
                self.provenance.get("folder", "this dictionary"), self.stft, stft, differences
            )

    def decoder(self, **kwargs) -> NMFDecoder:
        """An :class:`NMFDecoder` holding this W."""
        return NMFDecoder(self.num_bins, self.k, dictionary_w=self.W, **kwargs)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``folder/dictionary.npz`` (W) and ``folder/dictionary.json`` atomically.

        Both files are written into a temporary sibling folder that is renamed into place
        (:func:`l2i_tf.files.atomic_folder`), so a crash leaves either the old folder or the new one.
        An existing folder is an error unless ``overwrite``.
        """
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise FileExistsError(f"{str(folder)!r} exists; pass overwrite=True to replace it")
        meta = {
            "format_version": FORMAT_VERSION,
            "k": self.k,
            "num_bins": self.num_bins,
            "stft": self.stft.to_dict(),
            "nmf": self.config.to_dict(),
            "provenance": {k: v for k, v in self.provenance.items() if k != "folder"},
            "history": [float(v) for v in self.history],
        }
        with files.atomic_folder(folder, overwrite=overwrite) as tmp:
            np.savez(tmp / "dictionary.npz", W=self.W)
            files.write_json(tmp / "dictionary.json", meta)
        log.info("saved dictionary K=%d F=%d to %s", self.k, self.num_bins, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Dictionary:
        """Read a folder written by :meth:`save`; errors name the folder and what is wrong."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"dictionary folder {str(folder)!r} does not exist")
        for name in ("dictionary.npz", "dictionary.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{str(folder)!r} is not a dictionary folder: {name} is missing")
        try:
            meta = json.loads((folder / "dictionary.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / 'dictionary.json'}: not valid JSON ({e})") from None
        missing = [key for key in ("format_version", "k", "num_bins", "stft", "nmf") if key not in meta]
        if missing:
            raise ValueError(f"{folder / 'dictionary.json'}: missing key(s) {missing}")
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{folder}: dictionary format version {meta['format_version']!r}, this code reads {FORMAT_VERSION}"
            )
        with np.load(folder / "dictionary.npz") as npz:
            if "W" not in npz:
                raise ValueError(f"{folder / 'dictionary.npz'}: no array named 'W' (found {list(npz)})")
            w = npz["W"]
        if w.shape != (meta["num_bins"], meta["k"]):
            raise ValueError(
                f"{folder}: W has shape {w.shape} but dictionary.json says F={meta['num_bins']}, K={meta['k']}"
            )
        provenance = dict(meta.get("provenance", {}), folder=str(folder))
        return cls(
            W=w,
            stft=STFTConfig.from_dict(meta["stft"]),
            config=nmf.NMFConfig.from_dict(meta["nmf"]),
            provenance=provenance,
            history=list(meta.get("history", [])),
        )


# ---------------------------------------------------------------- learning


def learn_dictionary(
    source,
    config: nmf.NMFConfig = nmf.NMFConfig(),
    stft: STFTConfig = STFTConfig(),
    provenance: dict | None = None,
    callback: nmf.Callback | None = None,
) -> Dictionary:
    """Learn a sparse NMF dictionary from ``source``.

    Args:
        source: either a non-negative matrix ``X [frames, F]`` (numpy or tf; factorised in memory
            by :func:`l2i_tf.nmf.factorize`), or a ``tf.data.Dataset`` of blocks ``[frames, F]`` (streamed).
        config: NMF settings.
        stft: the STFT configuration that made X (``F`` must equal ``stft.num_bins``).
        provenance: extra facts to store (data set root, folds, clip count, ...).
        callback: ``callback(iteration, objective)`` after each iteration.

    Streaming (:func:`l2i_tf.nmf.factorize_stream`) keeps memory bounded by one block
    (``config.batch_frames`` frames) plus O(F·K + K²); in memory, :func:`l2i_tf.nmf.factorize`.

    Returns:
        A :class:`Dictionary`.
    """
    provenance = dict(provenance or {})
    if isinstance(source, tf.data.Dataset):
        W, history, frames = nmf.factorize_stream(source, config, stft.num_bins, callback)
        provenance.setdefault("frames", frames)
        provenance["method"] = "streaming"
    else:
        X = nmf.as_matrix(source)
        if X.shape[1] != stft.num_bins:
            raise ValueError(f"X has {X.shape[1]} bins per frame but the STFT config gives {stft.num_bins}")
        W, _, history = nmf.factorize(X, config, callback)
        provenance.setdefault("frames", int(X.shape[0]))
        provenance["method"] = "in-memory"
    return Dictionary(W=W, stft=stft, config=config, provenance=provenance, history=history)


def frames_dataset(table, stft: STFTConfig, batch_frames: int = 8192, **kwargs) -> tf.data.Dataset:
    """log1p-magnitude frames of a ClipTable's clips, in blocks ``[≤ batch_frames, F]`` (tf.data)."""
    from l2i_tf import data

    clips = data.waveform_dataset(table, stft.sample_rate, **kwargs)
    spectrogram = tf.autograph.experimental.do_not_convert(lambda wave, label, index: analyze(wave, stft)[0])
    return clips.map(spectrogram, num_parallel_calls=tf.data.AUTOTUNE).unbatch().batch(batch_frames).prefetch(1)


IN_MEMORY_LIMIT_BYTES = 512 * 2**20
"""Above this size of the training frames (frames × F × 4 bytes, estimated from the files' headers) the dictionary
is learnt streaming: ~262 000 frames at F = 513, ~840 five-second clips at 16 kHz. The bundled ESC-10 training
folds (76 104 frames, 156 MB) stay in memory (faster, and today's dictionary); above the limit the matrix, H and
the products would take GBs while streaming holds one block of ``batch_frames``."""


def estimated_frames(infos, stft: STFTConfig) -> int:
    """STFT frames of the clips ``infos`` (their headers: length and rate) at ``stft``'s rate, nothing decoded."""
    samples = sum(round(info.frames * stft.sample_rate / info.sample_rate) for info in infos)
    return int(samples // stft.frame_step + len(infos))


def use_streaming(infos, stft: STFTConfig) -> bool:
    """Whether the frames of ``infos`` exceed :data:`IN_MEMORY_LIMIT_BYTES` (see :func:`learn_from_table`)."""
    return estimated_frames(infos, stft) * stft.num_bins * 4 > IN_MEMORY_LIMIT_BYTES


def learn_from_table(
    table,
    stft: STFTConfig = STFTConfig(),
    config: nmf.NMFConfig = nmf.NMFConfig(),
    streaming: bool | None = None,
    callback: nmf.Callback | None = None,
    cache_dir=None,
    on_error: str = "raise",
) -> Dictionary:
    """Learn a dictionary on the clips of ``table`` (a ``tables.ClipTable``).

    Frames come through the data pipeline (``waveform_dataset`` → :func:`l2i_tf.audio.analyze`) in
    blocks of ``config.batch_frames``. With ``streaming`` they are re-read every pass (bounded
    memory, see :func:`learn_dictionary`); otherwise they are gathered once into one matrix and
    factorised in memory (faster, persistent H; needs frames × F × 4 bytes, 156 MB for the ESC-10
    training folds). ``streaming=None`` (the default) streams above :data:`IN_MEMORY_LIMIT_BYTES` of frames.
    """
    from l2i_tf import data

    table, infos, errors = data.usable_table(table, on_error=on_error, cache_dir=cache_dir)
    if streaming is None:
        streaming = use_streaming(infos, stft)
        log.info("%s NMF: ~%d frames", "streaming" if streaming else "in-memory", estimated_frames(infos, stft))
    blocks = frames_dataset(table, stft, config.batch_frames, cache_dir=cache_dir)
    provenance = {
        "root": table.root,
        "folds": sorted(set(table.folds)) if table.folds is not None else None,
        "clips": len(table),
        "skipped_clips": len(errors),
    }
    if streaming:
        return learn_dictionary(blocks, config, stft, provenance, callback)
    X = np.concatenate([b for b in blocks.as_numpy_iterator()], axis=0)
    log.info("gathered %d frames × %d bins from %d clips", X.shape[0], X.shape[1], len(table))
    return learn_dictionary(X, config, stft, provenance, callback)


# ---------------------------------------------------------------- Keras layer


@keras.saving.register_keras_serializable(package="l2i_tf")
class NMFDecoder(keras.layers.Layer):
    """Fixed-dictionary decoder: activations ``H [batch, T, K]`` -> ``X̂ = H Wᵀ [batch, T, F]``, and the soft masks
    of the NMF model.

    ``decoder(H)`` is the reconstruction; ``decoder(H, selected=s)`` (bool ``[batch, K]``) the summed soft mask of
    the selected components ``Σ_{k∈s} M_k`` ``[batch, T, F]``; ``decoder(H, indices=i)`` (int ``[batch, N]``) the
    soft masks ``M_{i_n}`` ``[batch, N, T, F]``; ``decoder(H, indices=i, selected=c)`` (bool ``[batch, N]``) the
    summed mask of ``i[c]``, the same as ``selected=`` with N of the K components' work, where
    ``M_k = w_k h_kᵀ / (H Wᵀ + ε)`` (:func:`l2i_tf.explain.selected_mask`, :func:`l2i_tf.explain.component_masks`,
    :func:`l2i_tf.explain.chosen_mask`).

    W is a non-trainable weight made in ``build``; it is saved with the weights, never in the config.

    Args:
        num_bins: F.
        k: K.
        dictionary_w: optional ``[F, K]`` initial W (else set it with ``set_weights``).
        eps: ε of the soft masks.
    """

    def __init__(self, num_bins, k, dictionary_w=None, eps=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = int(num_bins)
        self.k = int(k)
        self.eps = float(eps)
        self._dictionary_w = None
        if dictionary_w is not None:
            w = np.asarray(dictionary_w, dtype=np.float32)
            if w.shape != (self.num_bins, self.k):
                raise ValueError(f"dictionary_w must be [num_bins={self.num_bins}, k={self.k}], got shape {w.shape}")
            self._dictionary_w = w

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] is not None and input_shape[-1] != self.k:
            raise ValueError(f"NMFDecoder expects [batch, T, k={self.k}] activations, got shape {input_shape}")
        self.w = self.add_weight(name="w", shape=(self.num_bins, self.k), initializer="zeros", trainable=False)
        if self._dictionary_w is not None:
            self.w.assign(self._dictionary_w)
        self.built = True

    def call(self, h, selected=None, indices=None):
        if selected is not None and indices is not None:
            return explain.chosen_mask(self.w, h, indices, selected, self.eps)
        if selected is not None:
            return explain.selected_mask(self.w, h, selected, self.eps)
        if indices is not None:
            return explain.component_masks(self.w, h, indices, self.eps)
        return keras.ops.einsum("...k,fk->...f", h, self.w)

    def compute_output_spec(self, h, selected=None, indices=None):
        if indices is not None and selected is None:
            return keras.KerasTensor((h.shape[0], indices.shape[1], h.shape[1], self.num_bins), dtype="float32")
        return keras.KerasTensor((*h.shape[:-1], self.num_bins), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_bins=self.num_bins, k=self.k, eps=self.eps)
        return config
