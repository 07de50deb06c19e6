"""Audio decoding: probe files, decode and resample in tf.data (tensorflow-io), cache decoded clips on disk.

:func:`waveform_dataset` turns a :class:`~l2i_tf.tables.ClipTable` into a ``tf.data.Dataset``
of ``(waveform, label, index)`` that decodes and resamples inside the graph with
tensorflow-io, and caches the decoded audio on disk once (resampling costs
~0.1 s a clip, so it is paid once per data set and sample rate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import files

if TYPE_CHECKING:
    from l2i_tf.tables import ClipTable

log = logging.getLogger(__name__)

# Decoder ids used inside the graph, chosen per file from its header.
_VORBIS, _FLAC16, _FLAC32, _WAV16, _WAV32, _WAVF, _WAVU8, _MP3 = range(8)
_SUBTYPES = {
    ("OGG", "VORBIS"): _VORBIS,
    ("FLAC", "PCM_16"): _FLAC16,
    ("FLAC", "PCM_24"): _FLAC32,
    ("WAV", "PCM_16"): _WAV16,
    ("WAV", "PCM_24"): _WAV32,
    ("WAV", "FLOAT"): _WAVF,
    ("WAV", "PCM_U8"): _WAVU8,
    ("MP3", "MPEG_LAYER_III"): _MP3,
}


class AudioDataError(ValueError):
    """A data set, file or manifest that cannot be used as given."""


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    decoder: int


def probe(path: str, file=None) -> ClipInfo:
    """Read a file's header (soundfile) and choose its decoder; raise :class:`AudioDataError` naming the file.

    ``file``: an open binary file-like object holding the file's bytes (e.g. read from a remote file system), read
    instead of ``path``; errors still name ``path``.
    """
    try:
        info = soundfile.info(path if file is None else file)
    except Exception as e:  # soundfile raises several types for unreadable files
        reason = str(e) if file is None else str(e).replace(repr(file), repr(path))
        raise AudioDataError(f"{path}: cannot read audio ({reason})") from None
    if info.frames == 0:
        raise AudioDataError(f"{path}: the file holds no audio samples")
    decoder = _SUBTYPES.get((info.format, info.subtype))
    if decoder is None:
        raise AudioDataError(
            f"{path}: unsupported encoding {info.format}/{info.subtype}; "
            f"supported: {sorted(f'{a}/{b}' for a, b in _SUBTYPES)}"
        )
    return ClipInfo(path, int(info.samplerate), int(info.channels), int(info.frames), decoder)


def probe_table(table: ClipTable, on_error: str = "raise") -> tuple[ClipTable, list[ClipInfo], list[str]]:
    """Probe every clip. ``on_error="skip"`` drops unreadable clips and returns their errors (a counted skip)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    keep, infos, errors = [], [], []
    for i, path in enumerate(table.paths):
        try:
            infos.append(probe(path))
            keep.append(i)
        except AudioDataError as e:
            if on_error == "raise":
                raise
            errors.append(str(e))
    if errors:
        log.warning("skipped %d unreadable clip(s) of %d", len(errors), len(table))
    if not keep:
        raise AudioDataError(f"no readable audio in {table.root!r} ({len(errors)} clip(s) failed)")
    return table.subset(keep), infos, errors


def typical_seconds(infos: list[ClipInfo], percentile: float = 95.0) -> float:
    """The ``percentile``-th percentile of the clips' durations, seconds (from their headers, nothing decoded)."""
    if not infos:
        raise ValueError("no clips to measure")
    return float(np.percentile([info.frames / info.sample_rate for info in infos], percentile))


def decode_audio(contents, decoder, file_rate, sample_rate: int) -> tf.Tensor:
    """Encoded file bytes -> mono float32 ``[samples]`` at ``sample_rate`` (in the graph, tensorflow-io)."""
    import tensorflow_io as tfio  # native ops; imported lazily so SavedModels never depend on it

    def riff_one_byte_short():
        # tfio's WAV reader walks the chunks up to the RIFF size without skipping the pad byte after an odd-sized
        # data chunk (8- or 24-bit mono, odd frame count) and fails with "EOF reached". A RIFF size one byte short
        # stops the walk before that pad byte; nothing else reads the size.
        length = tf.strings.length(contents)
        size = tf.cast(tf.bitcast(length - 9, tf.uint8), tf.int32)  # little-endian, as RIFF
        size = tf.strings.reduce_join(tf.gather(tf.constant([bytes([i]) for i in range(256)]), size))
        return tf.strings.substr(contents, 0, 4) + size + tf.strings.substr(contents, 8, length - 8)

    def wav(dtype, scale, offset=0.0):
        return lambda: (tf.cast(tfio.audio.decode_wav(riff_one_byte_short(), dtype=dtype), tf.float32) - offset) / scale

    branches = {
        _VORBIS: lambda: tfio.audio.decode_vorbis(contents),
        _FLAC16: lambda: tf.cast(tfio.audio.decode_flac(contents, dtype=tf.int16), tf.float32) / 32768.0,
        _FLAC32: lambda: tf.cast(tfio.audio.decode_flac(contents, dtype=tf.int32), tf.float32) / 2147483648.0,
        _WAV16: wav(tf.int16, 32768.0),
        _WAV32: wav(tf.int32, 2147483648.0),
        _WAVF: lambda: tfio.audio.decode_wav(riff_one_byte_short(), dtype=tf.float32),
        _WAVU8: wav(tf.uint8, 128.0, 128.0),
        _MP3: lambda: tfio.audio.decode_mp3(contents),
    }
    audio = tf.switch_case(tf.cast(decoder, tf.int32), [branches[i] for i in range(len(branches))])
    mono = tf.reduce_mean(audio, axis=1, keepdims=True)
    file_rate = tf.cast(file_rate, tf.int64)
    rate = tf.constant(sample_rate, tf.int64)
    expected = (tf.cast(tf.shape(mono)[0], tf.int64) * sample_rate + file_rate // 2) // file_rate
    # tfio's resampler delays its output by round(32 * file_rate / lower rate) *input* samples, a fraction of an
    # output sample unless the rates divide evenly (44.1 -> 16 kHz: 88 in = 31.93 out). Zero-pad the front so the
    # delay is a whole number of output samples, and the back so the tail is flushed out; then crop.
    lower = tf.minimum(file_rate, rate)
    delay_in = (32 * file_rate + lower // 2) // lower
    period = file_rate // tf.while_loop(lambda a, b: b > 0, lambda a, b: (b, a % b), (file_rate, rate))[0]
    front = (period - delay_in % period) % period

    def resample():
        padded = tf.pad(mono, [[front, 2 * delay_in], [0, 0]])
        return tfio.audio.resample(padded, file_rate, rate)[(delay_in + front) * rate // file_rate :]

    resampled = tf.cond(tf.equal(file_rate, rate), lambda: mono, resample)[:expected, 0]
    return tf.pad(resampled, [[0, expected - tf.cast(tf.shape(resampled)[0], tf.int64)]])


def default_cache_dir() -> Path:
    return Path(os.environ.get("L2I_TF_CACHE", Path.home() / ".cache" / "l2i_tf"))


# Bump when decode_audio's output changes, so stale caches are not read back.
_DECODER_VERSION = 2


def _cache_key(infos: list[ClipInfo], sample_rate: int) -> str:
    h = hashlib.sha256(f"v{_DECODER_VERSION}|{sample_rate}".encode())
    for info in infos:
        stat = os.stat(info.path)
        h.update(f"{info.path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def waveform_dataset(
    table: ClipTable,
    sample_rate: int,
    cache_dir: str | Path | None = None,
    on_error: str = "raise",
    cache: bool = True,
) -> tf.data.Dataset:
    """``(waveform [samples], label, index)`` for every clip, decoded and resampled by tensorflow-io.

    The decoded audio is saved once under ``cache_dir`` (default ``$L2I_TF_CACHE`` or
    ``~/.cache/l2i_tf``), keyed by the files' paths, sizes, mtimes and the sample rate,
    written to a temporary folder and renamed, so an interrupted run leaves no
    half-written cache. ``index`` is the clip's row in the (probed) table.
    """
    table, infos, _ = probe_table(table, on_error=on_error)
    labels = table.labels.astype("float32" if table.multilabel else "int64")

    def build() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(
            (
                list(table.paths),
                np.array([i.decoder for i in infos], dtype="int32"),
                np.array([i.sample_rate for i in infos], dtype="int64"),
                labels,
                np.arange(len(table), dtype="int64"),
            )
        )

        def load(path, decoder, rate, label, index):
            return decode_audio(tf.io.read_file(path), decoder, rate, sample_rate), label, index

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if not cache:
        return build()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"waveforms-{_cache_key(infos, sample_rate)}"
    if not target.exists():
        log.info("decoding and resampling %d clips to %d Hz (once; cached at %s)", len(table), sample_rate, target)
        try:
            with files.atomic_folder(target) as tmp:
                build().save(str(tmp))
                files.write_json(tmp / "l2i_tf.json", {"clips": len(table), "sample_rate": sample_rate})
        except OSError:
            if not target.exists():  # another process may have written the same cache first: use theirs
                raise
    return tf.data.Dataset.load(str(target))


def load_clips(table: ClipTable, sample_rate: int, **kwargs) -> tuple[list[np.ndarray], np.ndarray]:
    """All clips as numpy at their own lengths: ``(waveforms, labels)``, a list of ``[samples]`` arrays (see
    :func:`waveform_dataset` for ``kwargs``)."""
    waves, labels = [], []
    for wave, label, _ in waveform_dataset(table, sample_rate, **kwargs).as_numpy_iterator():
        waves.append(wave)
        labels.append(label)
    return waves, np.stack(labels)


def load_waveforms(
    table: ClipTable, sample_rate: int, num_samples: int | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """All clips as numpy: ``(waveforms [n, num_samples], labels)``; clips are padded/cropped to ``num_samples``
    (default: the longest clip)."""
    waves, labels = load_clips(table, sample_rate, **kwargs)
    length = num_samples or max(len(w) for w in waves)
    out = np.zeros((len(waves), length), dtype="float32")
    for i, w in enumerate(waves):
        out[i, : min(len(w), length)] = w[:length]
    return out, labels


def fix_length(waveform, num_samples: int, random_crop: bool = False, seed=None) -> tf.Tensor:
    """Pad with zeros or crop ``[samples]`` to ``num_samples`` (a random window when ``random_crop``)."""
    n = tf.shape(waveform)[0]
    if random_crop:
        offset = tf.random.uniform([], 0, tf.maximum(n - num_samples, 0) + 1, dtype=tf.int32, seed=seed)
    else:
        offset = 0
    cropped = waveform[offset : offset + num_samples]
    padded = tf.pad(cropped, [[0, num_samples - tf.shape(cropped)[0]]])
    return tf.ensure_shape(padded, [num_samples])
