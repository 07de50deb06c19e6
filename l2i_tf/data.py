"""Data sets: clip tables for four layouts, tf.data pipelines (tensorflow-io decode + resample), splits, mixtures.

A :class:`ClipTable` is the cheap, eager description of a data set (paths, labels,
folds, class names). :func:`waveform_dataset` turns it into a ``tf.data.Dataset``
of ``(waveform, label)`` that decodes and resamples inside the graph with
tensorflow-io, and caches the decoded audio on disk once (resampling costs
~0.1 s a clip, so it is paid once per data set and sample rate).

Layouts:
    ``esc10``    ``NNN - Class name/F-ID-T.ogg`` (fold = first character of the file name)
    ``esc50``    ``meta/esc50.csv`` (filename, fold, target, category) + ``audio/``
    ``folders``  one folder per class; folds assigned round-robin per class with a seed
    ``manifest`` a CSV with ``filename``, optional ``fold``, and either a ``labels``
                 column (class names separated by ``;``) or one 0/1 column per class
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

log = logging.getLogger(__name__)

LAYOUTS = ("esc10", "esc50", "folders", "manifest")
AUDIO_EXTENSIONS = (".ogg", ".flac", ".wav", ".mp3")
ESC10_ROOT = Path(__file__).resolve().parent / "esc10"  # bundled ESC-10, package data (README: CC BY 3.0)

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
class ClipTable:
    """The clips of a data set.

    Attributes:
        paths: absolute file paths.
        labels: int ``[n]`` class indices (multi-class) or float32 ``[n, C]`` multi-hot.
        class_names: C names.
        folds: fold number per clip, or None.
        multilabel: whether ``labels`` is multi-hot.
        root: the data root the paths were read from.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    folds: tuple[int, ...] | None = None
    multilabel: bool = False
    root: str = ""

    def __len__(self):
        return len(self.paths)

    def subset(self, indices) -> ClipTable:
        indices = np.asarray(indices, dtype=int)
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in indices),
            labels=self.labels[indices],
            folds=None if self.folds is None else tuple(self.folds[i] for i in indices),
        )

    def with_folds(self, folds) -> ClipTable:
        """The clips whose fold is in ``folds``."""
        if self.folds is None:
            raise AudioDataError(f"data set at {self.root!r} has no folds to select {list(folds)} from")
        wanted = {int(f) for f in folds}
        missing = wanted - set(self.folds)
        if missing:
            raise AudioDataError(
                f"fold(s) {sorted(missing)} not in data set at {self.root!r} (folds: {sorted(set(self.folds))})"
            )
        return self.subset([i for i, f in enumerate(self.folds) if f in wanted])

    def multi_hot(self) -> np.ndarray:
        """Labels as float32 ``[n, C]`` multi-hot."""
        if self.multilabel:
            return self.labels.astype("float32")
        return np.eye(len(self.class_names), dtype="float32")[self.labels]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Fold-based train / validation / test split. The test fold is never used for model selection."""

    train: tuple[int, ...] = (1, 2, 3)
    validation: tuple[int, ...] = (4,)
    test: tuple[int, ...] = (5,)

    def __post_init__(self):
        sets = [set(self.train), set(self.validation), set(self.test)]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise AudioDataError(f"train/validation/test folds overlap: {self}")

    @classmethod
    def holding_out(cls, test_fold: int, num_folds: int = 5) -> Splits:
        """Test on ``test_fold``, validate on the next fold, train on the rest."""
        validation = test_fold % num_folds + 1
        train = tuple(f for f in range(1, num_folds + 1) if f not in (test_fold, validation))
        return cls(train=train, validation=(validation,), test=(test_fold,))


def split(table: ClipTable, splits: Splits) -> tuple[ClipTable, ClipTable, ClipTable]:
    return table.with_folds(splits.train), table.with_folds(splits.validation), table.with_folds(splits.test)


# ---------------------------------------------------------------- layouts


def _inside(root: Path, relative: str, where: str) -> Path:
    path = (root / relative).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        raise AudioDataError(f"{where}: path {relative!r} escapes the data root {str(root)!r}") from None
    return path


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _non_empty(table: ClipTable) -> ClipTable:
    if len(table) == 0:
        raise AudioDataError(f"no audio clips found in {table.root!r} (extensions: {', '.join(AUDIO_EXTENSIONS)})")
    return table


def esc10_table(root: str | Path = ESC10_ROOT) -> ClipTable:
    """ESC-10 folder layout: ``NNN - Class name/F-ID-T.ogg``."""
    root = Path(root)
    if not root.is_dir():
        raise AudioDataError(f"ESC-10 root {str(root)!r} is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and re.match(r"^\d+ - ", d.name))
    paths, labels, folds = [], [], []
    for index, folder in enumerate(class_dirs):
        for path in _audio_files(folder):
            fold = path.name.split("-", 1)[0]
            if not fold.isdigit():
                raise AudioDataError(f"{path}: ESC file names start with the fold number, got {path.name!r}")
            paths.append(str(path))
            labels.append(index)
            folds.append(int(fold))
    names = tuple(d.name.split(" - ", 1)[1] for d in class_dirs)
    return _non_empty(ClipTable(tuple(paths), np.array(labels, dtype="int64"), names, tuple(folds), False, str(root)))


def esc50_table(root: str | Path) -> ClipTable:
    """ESC-50 layout: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise AudioDataError(f"ESC-50 layout needs {str(meta)!r}")
    rows = _read_csv(meta, required=("filename", "fold", "target", "category"))
    names: dict[int, str] = {}
    paths, labels, folds = [], [], []
    for line, row in rows:
        where = f"{meta}:{line}"
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise AudioDataError(
                f"{where}: target and fold must be integers, got {row['target']!r}, {row['fold']!r}"
            ) from None
        if names.setdefault(target, row["category"]) != row["category"]:
            raise AudioDataError(f"{where}: target {target} is {names[target]!r} elsewhere, {row['category']!r} here")
        paths.append(str(_inside(root / "audio", row["filename"], where)))
        labels.append(target)
        folds.append(fold)
    if names and sorted(names) != list(range(len(names))):
        raise AudioDataError(f"{meta}: targets must be 0..C-1, got {sorted(names)}")
    class_names = tuple(names[i] for i in range(len(names)))
    return _non_empty(
        ClipTable(tuple(paths), np.array(labels, dtype="int64"), class_names, tuple(folds), False, str(root))
    )


def folders_table(root: str | Path, num_folds: int = 5, seed: int = 0) -> ClipTable:
    """One folder per class (folder name = class name).

    Folds are assigned per class, round-robin after a seeded shuffle.
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioDataError(f"data root {str(root)!r} is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    rng = np.random.default_rng(seed)
    paths, labels, folds = [], [], []
    for index, folder in enumerate(class_dirs):
        files = _audio_files(folder)
        order = rng.permutation(len(files))
        for rank, i in enumerate(order):
            paths.append(str(files[i]))
            labels.append(index)
            folds.append(rank % num_folds + 1)
    names = tuple(d.name for d in class_dirs)
    return _non_empty(ClipTable(tuple(paths), np.array(labels, dtype="int64"), names, tuple(folds), False, str(root)))


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise AudioDataError(f"{path}: missing column(s) {missing}; columns are {columns}")
        return [(i + 2, row) for i, row in enumerate(reader)]


def manifest_table(path: str | Path, root: str | Path | None = None, class_names=None) -> ClipTable:
    """CSV manifest: ``filename`` (relative to ``root``, default the CSV's folder), optional ``fold``, and labels.

    Labels are either a ``labels`` column of class names separated by ``;`` or one
    0/1 column per class (every column other than filename/fold). With
    ``class_names`` given, a label outside it is an error naming the row. Rows with
    several labels make the table multi-label.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDataError(f"manifest {str(path)!r} does not exist")
    root = Path(root) if root is not None else path.parent
    rows = _read_csv(path, required=("filename",))
    if not rows:
        raise AudioDataError(f"no audio clips found in manifest {str(path)!r}: it has no rows")
    with open(path, newline="") as f:
        columns = next(csv.reader(f), [])
    label_columns = [c for c in columns if c not in ("filename", "fold", "labels")]
    if "labels" in columns:
        names = list(class_names) if class_names is not None else None
        found: list[list[str]] = []
        for _, row in rows:
            found.append([s.strip() for s in (row["labels"] or "").split(";") if s.strip()])
        if names is None:
            names = sorted({n for labels in found for n in labels})
        index = {n: i for i, n in enumerate(names)}
        multi_hot = np.zeros((len(rows), len(names)), dtype="float32")
        for r, ((line, _), labels) in enumerate(zip(rows, found)):
            for n in labels:
                if n not in index:
                    raise AudioDataError(f"{path}:{line}: unknown class {n!r}; known classes: {names}")
                multi_hot[r, index[n]] = 1.0
    else:
        if not label_columns:
            raise AudioDataError(f"{path}: no label columns (need 'labels' or one 0/1 column per class)")
        if class_names is not None:
            unknown = [c for c in label_columns if c not in class_names]
            if unknown:
                raise AudioDataError(f"{path}: unknown class column(s) {unknown}; known classes: {list(class_names)}")
        names = label_columns
        multi_hot = np.zeros((len(rows), len(names)), dtype="float32")
        for r, (line, row) in enumerate(rows):
            for c, name in enumerate(names):
                value = (row[name] or "").strip()
                if value not in ("0", "1", "0.0", "1.0"):
                    raise AudioDataError(f"{path}:{line}: column {name!r} must be 0 or 1, got {value!r}")
                multi_hot[r, c] = float(value)
    paths, folds, seen = [], [], {}
    for line, row in rows:
        where = f"{path}:{line}"
        if not row["filename"]:
            raise AudioDataError(f"{where}: empty filename")
        clip = _inside(root, row["filename"], where)
        if str(clip) in seen:
            raise AudioDataError(f"{where}: {row['filename']!r} is listed twice (first on line {seen[str(clip)]})")
        seen[str(clip)] = line
        paths.append(str(clip))
        if "fold" in columns:
            try:
                folds.append(int(row["fold"]))
            except (TypeError, ValueError):
                raise AudioDataError(f"{where}: fold must be an integer, got {row['fold']!r}") from None
    multilabel = bool((multi_hot.sum(axis=1) != 1).any())
    labels = multi_hot if multilabel else multi_hot.argmax(axis=1).astype("int64")
    table = ClipTable(tuple(paths), labels, tuple(names), tuple(folds) if folds else None, multilabel, str(root))
    return _non_empty(table)


def load_table(path: str | Path, layout: str = "esc10", class_names=None) -> ClipTable:
    """Read a data set in one of ``LAYOUTS``."""
    if layout == "esc10":
        return esc10_table(path)
    if layout == "esc50":
        return esc50_table(path)
    if layout == "folders":
        return folders_table(path)
    if layout == "manifest":
        return manifest_table(path, class_names=class_names)
    raise AudioDataError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


# ---------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    decoder: int


def probe(path: str) -> ClipInfo:
    """Read a file's header (soundfile) and choose its decoder; raise :class:`AudioDataError` naming the file."""
    try:
        info = soundfile.info(path)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise AudioDataError(f"{path}: cannot read audio ({e})") from None
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
        folder.mkdir(parents=True, exist_ok=True)
        log.info("decoding and resampling %d clips to %d Hz (once; cached at %s)", len(table), sample_rate, target)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            build().save(str(tmp / "data"))
            (tmp / "data" / "l2i_tf.json").write_text(json.dumps({"clips": len(table), "sample_rate": sample_rate}))
            try:
                os.rename(tmp / "data", target)
            except OSError:
                if not target.exists():  # another process may have won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tf.data.Dataset.load(str(target))


def load_waveforms(
    table: ClipTable, sample_rate: int, num_samples: int | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """All clips as numpy: ``(waveforms [n, num_samples], labels)``; clips are padded/cropped to ``num_samples``
    (default: the longest clip)."""
    waves, labels = [], []
    for wave, label, _ in waveform_dataset(table, sample_rate, **kwargs).as_numpy_iterator():
        waves.append(wave)
        labels.append(label)
    length = num_samples or max(len(w) for w in waves)
    out = np.zeros((len(waves), length), dtype="float32")
    for i, w in enumerate(waves):
        out[i, : min(len(w), length)] = w[:length]
    return out, np.stack(labels)


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


# ---------------------------------------------------------------- mixtures


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
