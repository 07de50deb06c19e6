"""Audio decoding: probe files, decode and resample them (soundfile + a polyphase resampler), cache decoded clips.

:func:`decode` is the package's one decoder: libsndfile decodes, the channels are averaged and scipy's polyphase
``resample_poly`` resamples (~30 ms for a 5 s 44.1 kHz ogg clip, where tensorflow-io took ~250 ms).
:func:`waveform_dataset` turns a :class:`~l2i_tf.tables.ClipTable` into a ``tf.data.Dataset`` of
``(waveform, label, index)`` that decodes with it (a ``tf.numpy_function``) and caches the decoded audio on disk once
per data set and sample rate.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import files
from l2i_tf.batches import without_autotune

if TYPE_CHECKING:
    from l2i_tf.tables import ClipTable

log = logging.getLogger(__name__)


class AudioDataError(ValueError):
    """A data set, file or manifest that cannot be used as given."""


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int


def _open(path: str, file=None) -> soundfile.SoundFile:
    """``path`` (or ``file``, the bytes of ``path``) opened for reading; :class:`AudioDataError` naming the file."""
    if file is None and not os.path.isfile(path):  # libsndfile says only "System error."
        raise AudioDataError(f"{path}: no such file")
    try:
        return soundfile.SoundFile(path if file is None else file)
    except Exception as e:  # soundfile raises several types for unreadable files
        reason = str(e) if file is None else str(e).replace(repr(file), repr(path))
        raise AudioDataError(f"{path}: cannot read audio ({reason})") from None


def _clip_info(path: str, f: soundfile.SoundFile) -> ClipInfo:
    if f.frames == 0:
        raise AudioDataError(f"{path}: the file holds no audio samples")
    return ClipInfo(path, int(f.samplerate), int(f.channels), int(f.frames))


def probe(path: str, file=None) -> ClipInfo:
    """Read a file's header (soundfile); raise :class:`AudioDataError` naming the file if libsndfile cannot open
    it or it holds no samples. Every format and encoding libsndfile opens is accepted: it decodes them all to float.

    ``file``: an open binary file-like object holding the file's bytes (e.g. read from a remote file system), read
    instead of ``path``; errors still name ``path``.
    """
    with _open(path, file) as f:
        return _clip_info(path, f)


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


def usable_table(
    table: ClipTable, on_error: str = "raise", cache_dir: str | Path | None = None
) -> tuple[ClipTable, list[ClipInfo], list[str]]:
    """:func:`probe_table`; with ``on_error="skip"`` also without the clips whose header reads but whose audio does
    not decode (truncated, corrupt, NaN or infinite samples), with their errors. Those are found by one decode pass
    over the clips at their own rates (no resampling), remembered under ``cache_dir`` (as the decode cache) so that
    every later read of the same files (training, its splits, evaluation) leaves out the same clips."""
    table, infos, errors = probe_table(table, on_error=on_error)
    if on_error != "skip":
        return table, infos, errors
    failed = _undecodable(infos, cache_dir)
    if failed:
        log.warning("skipped %d clip(s) of %d that fail to decode", len(failed), len(table))
        keep = [i for i, info in enumerate(infos) if info.path not in failed]
        if not keep:
            raise AudioDataError(f"no decodable audio in {table.root!r} ({len(infos)} clip(s) fail to decode)")
        table, infos = table.subset(keep), [infos[i] for i in keep]
        errors = errors + list(failed.values())
    return table, infos, errors


def _undecodable(infos: list[ClipInfo], cache_dir) -> dict[str, str]:
    """``{path: error}`` of the clips that fail to decode: read from the record of an earlier pass over the same
    files, or decoded now (in threads: libsndfile and the NaN check release the GIL) and recorded."""
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    record = folder / f"decodable-{_cache_key(infos, 0)}.json"
    if record.is_file():
        return dict(json.loads(record.read_text())["failed"])

    def check(info: ClipInfo) -> str | None:
        try:
            finite(decode(Path(info.path).read_bytes(), info.sample_rate, info.path), info.path)
        except (AudioDataError, OSError) as e:
            return str(e)
        return None

    log.info("decoding %d clips once to find those that fail (--on-error skip)", len(infos))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(check, infos))
    failed = {info.path: error for info, error in zip(infos, results, strict=True) if error is not None}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files.write_json(record, {"clips": len(infos), "failed": sorted(failed.items())})
    except OSError as e:  # a read-only cache: found again next time
        log.warning("cannot record the clips that fail to decode in %s: %s", folder, e)
    return failed


def typical_seconds(infos: list[ClipInfo], percentile: float = 95.0) -> float:
    """The ``percentile``-th percentile of the clips' durations, seconds (from their headers, nothing decoded)."""
    if not infos:
        raise ValueError("no clips to measure")
    return float(np.percentile([info.frames / info.sample_rate for info in infos], percentile))


@functools.lru_cache(maxsize=8)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """A low-pass at the lower rate's Nyquist frequency: Kaiser-windowed sinc (beta 12, 20 zero crossings a side).
    Measured: tones up to 6 kHz at 8-48 kHz resampled to 16 kHz keep an SNR above 115 dB (scipy's default window,
    beta 5 and 10 crossings, gives 56-63 dB), at the same cost (~7 ms for 5 s at 44.1 kHz)."""
    from scipy.signal import firwin  # imported lazily: scipy.signal takes a while to import

    most = max(up, down)
    return firwin(2 * 20 * most + 1, 1.0 / most, window=("kaiser", 12.0))


def resample(x: np.ndarray, file_rate: int, sample_rate: int) -> np.ndarray:
    """float32 ``[samples]`` at ``file_rate`` -> ``round(samples * sample_rate / file_rate)`` samples at
    ``sample_rate``: a polyphase filter (scipy's ``resample_poly``: zero phase, no delay)."""
    if file_rate == sample_rate:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(file_rate), int(sample_rate))
    up, down = sample_rate // g, file_rate // g
    expected = (len(x) * sample_rate + file_rate // 2) // file_rate
    # resample_poly returns ceil(samples * up / down) samples, never fewer than the rounded length
    return resample_poly(x, up, down, window=_resampling_filter(up, down)).astype(np.float32)[:expected]


# The chunked containers whose audio chunk's declared size shows a truncated file: format -> (byte order, chunk id).
# libsndfile reads what is left of such a file without a word. (RF64 declares its sizes in a ds64 chunk instead.)
_AUDIO_CHUNKS = {"WAV": ("little", b"data"), "WAVEX": ("little", b"data"), "AIFF": ("big", b"SSND")}


def _data_missing(contents: bytes, container: str) -> bool:
    """Whether a RIFF (WAV, WAVEX) or IFF (AIFF) file's audio chunk declares more bytes than the file holds: the
    file was truncated. ``False`` for other formats."""
    if container not in _AUDIO_CHUNKS:
        return False
    order, chunk = _AUDIO_CHUNKS[container]
    at = 12
    while at + 8 <= len(contents):
        size = int.from_bytes(contents[at + 4 : at + 8], order)
        if contents[at : at + 4] == chunk:
            return at + 8 + size > len(contents)
        at += 8 + size + (size & 1)
    return False


def read_audio(contents: bytes, path: str = "<audio bytes>") -> tuple[np.ndarray, int]:
    """An audio file's bytes -> ``(samples float32 [frames, channels], sample rate)`` as libsndfile decodes them,
    for every format and encoding it reads. :class:`AudioDataError` naming ``path`` for an unreadable, empty,
    truncated or corrupt file."""
    with _open(path, io.BytesIO(contents)) as f:
        info = _clip_info(path, f)
        try:
            audio = f.read(dtype="float32", always_2d=True)
        except Exception as e:  # libsndfile's decoders raise on a damaged stream
            raise AudioDataError(f"{path}: cannot decode audio ({e}); the file is truncated or corrupt") from None
    if len(audio) < info.frames:
        reason = f"the header promises {info.frames} frames, the file holds {len(audio)}"
    elif _data_missing(contents, f.format):
        reason = f"its {_AUDIO_CHUNKS[f.format][1].decode()} chunk ends past the end of the file"
    else:
        return audio, info.sample_rate
    raise AudioDataError(f"{path}: cannot decode audio ({reason}); the file is truncated or corrupt")


def decode(contents: bytes, sample_rate: int, path: str = "<audio bytes>") -> np.ndarray:
    """An audio file's bytes -> mono float32 ``[samples]`` at ``sample_rate``: :func:`read_audio` (soundfile), the
    channels' mean, :func:`resample`. The package's one decoder (``l2i-tf explain``, the report, Beam, and tf.data
    through :func:`decode_audio`). :class:`AudioDataError` naming ``path`` for an unreadable, empty, truncated or
    corrupt file."""
    audio, file_rate = read_audio(contents, path)
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    return resample(mono, file_rate, sample_rate)


def decode_audio(contents, sample_rate: int, path=None, failed: list | None = None) -> tf.Tensor:
    """Encoded file bytes (a string tensor) -> mono float32 ``[samples]`` at ``sample_rate``: :func:`decode` as a
    TensorFlow op (``tf.numpy_function``), for tf.data graphs. ``path`` (a string tensor) names the file in
    errors. With ``failed`` (a list), a data set's clip: one that cannot be decoded or holds NaN/infinite samples
    (:func:`finite`) gives an empty waveform and ``(path, error)`` in ``failed`` instead of raising (an error
    raised inside tf.data's ``Dataset.save`` hangs it)."""

    def run(raw, name):  # bytes in a graph, 0-d object arrays holding bytes when eager
        raw, name = (np.asarray(v, dtype=object).item() for v in (raw, name))
        name = name.decode() or "<audio bytes>"
        if failed is None:
            return decode(raw, sample_rate, name)
        try:
            return finite(decode(raw, sample_rate, name), name)
        except AudioDataError as e:
            failed.append((name, str(e)))
        except Exception as e:  # anything else too: raised here, it would hang the pass
            failed.append((name, f"{name}: cannot decode audio ({type(e).__name__}: {e})"))
        return np.zeros(0, np.float32)

    name = tf.constant("") if path is None else path
    stateful = failed is not None
    waveform = tf.numpy_function(run, [contents, name], tf.float32, stateful=stateful, name="decode_audio")
    waveform.set_shape([None])
    return waveform


def finite(waveform: np.ndarray, path: str) -> np.ndarray:
    """``waveform`` unless it holds NaN or infinite samples (a float WAV can), which a data set's clips must not: an
    :class:`AudioDataError` naming ``path``. (An explained file's are refused by the explanation graph itself.)"""
    if not np.isfinite(waveform).all():
        raise AudioDataError(f"{path}: the audio holds NaN or infinite samples")
    return waveform


def _decode_failures(failed: list[tuple[str, str]], paths) -> AudioDataError:
    """The first failure in the table's order (the pass decodes in parallel), and how many more."""
    order = {path: i for i, path in enumerate(paths)}
    first = min(failed, key=lambda f: order.get(f[0], len(order)))[1]
    more = f" (and {len(failed) - 1} more file(s) that fail to decode)" if len(failed) > 1 else ""
    return AudioDataError(f"{first}{more}; remove or repair it, or leave such files out with --on-error skip")


def default_cache_dir() -> Path:
    return Path(os.environ.get("L2I_TF_CACHE", Path.home() / ".cache" / "l2i_tf"))


# Bump when decode_audio's output changes, so stale caches are not read back.
_DECODER_VERSION = 4  # 4: a clip with NaN or infinite samples is an error


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
    """``(waveform [samples], label, index)`` for every clip, decoded and resampled by :func:`decode`.

    The decoded audio is saved once under ``cache_dir`` (default ``$L2I_TF_CACHE`` or
    ``~/.cache/l2i_tf``), keyed by the files' paths, sizes, mtimes and the sample rate,
    written to a temporary folder and renamed, so an interrupted run leaves no
    half-written cache. ``index`` is the clip's row in the (probed) table; labels are the table's, not the
    cache's.
    """
    table, infos, _ = probe_table(table, on_error=on_error)
    labels = table.labels.astype("float32" if table.multilabel else "int64")

    def build(failed=None) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((list(table.paths), labels, np.arange(len(table), dtype="int64")))

        @tf.autograph.experimental.do_not_convert  # run as written, not converted as tf.data would: no tensor branches
        def load(path, label, index):
            return decode_audio(tf.io.read_file(path), sample_rate, path, failed), label, index

        return without_autotune(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))

    if not cache:
        return build()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / f"waveforms-{_cache_key(infos, sample_rate)}"
    if not target.exists():
        log.info("decoding and resampling %d clips to %d Hz (once; cached at %s)", len(table), sample_rate, target)
        failed = []  # a clip that fails to decode: raised once the pass is over (an error inside Dataset.save hangs it)
        try:
            with files.atomic_folder(target) as tmp:
                build(failed).save(str(tmp))
                if failed:
                    raise _decode_failures(failed, table.paths)
                files.write_json(tmp / "l2i_tf.json", {"clips": len(table), "sample_rate": sample_rate})
        except OSError:
            if not target.exists():  # another process may have written the same cache first: use theirs
                raise
    # the cache keeps audio; labels are the table's own (the same files may be labelled otherwise, e.g. in the
    # classes of a classifier that knows more classes than the data)
    current = tf.constant(labels)
    relabel = tf.autograph.experimental.do_not_convert(lambda wave, _, index: (wave, tf.gather(current, index), index))
    return tf.data.Dataset.load(str(target)).map(relabel)


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
