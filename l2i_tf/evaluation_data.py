"""The test split `l2i-tf evaluate` scores, streamed to row files: memory holds one clip while it is written and
one batch while it is scored, whatever the number of test clips."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from l2i_tf import data, mixtures, runs, tables, windows
from l2i_tf.row_files import Rows, RowWriter


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for a job's row files, removed when the block ends (also on errors)."""
    with tempfile.TemporaryDirectory(prefix="l2i_tf-evaluate-") as tmp:
        yield Path(tmp)


def _fixed(wave: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, "float32")
    out[: min(len(wave), length)] = wave[:length]
    return out


def _write_windows(source, length: int, path: Path) -> tuple[Rows, np.ndarray, dict]:
    """Every ``(clip, label)`` of ``source`` cut into windows (:func:`l2i_tf.windows.cut`) into a row file."""
    writer, window_labels, clips = RowWriter(path, length), [], 0
    for clip, label in source:
        cut = windows.cut([clip], np.asarray(label)[None], length)
        writer.append(cut.waves)
        window_labels.append(cut.labels)
        clips += 1
    rows = writer.rows()
    return rows, np.concatenate(window_labels), {"clips": clips, "windows": len(rows)}


def test_data(
    config: runs.TrainConfig, sample_rate: int, class_names, window: int | None = None, folder: str | Path | None = None
) -> dict:
    """The run's test split: ``clips`` (waveforms, labels) and ``evaluation`` (what the classifier is scored on:
    the clips, or for a multi-label run on single-label data the same test mixtures training scored).

    Labels are indices into ``class_names`` (the classifier's classes, which may be more than the data holds; a
    data class the classifier does not output is an error naming it). For a fixed-length classifier (``window``
    samples) both are the windows training scored (see :func:`l2i_tf.windows.cut`), and ``windows`` counts them
    (``{"clips", "windows"}``; None otherwise).

    With ``folder``, the waveforms are :class:`~l2i_tf.row_files.Rows` in files there, read a batch at a time (the
    folder must outlive their use); without it, numpy arrays in memory.
    """
    if folder is None:
        with scratch_folder() as tmp:
            out = test_data(config, sample_rate, class_names, window, tmp)
            files = [out[key][0] for key in ("clips", "evaluation") if isinstance(out[key][0], Rows)]
            for key in ("clips", "evaluation"):
                out[key] = (np.asarray(out[key][0]), out[key][1])
            for rows in files:
                rows.close()
            return out
    folder = Path(folder)
    table = tables.esc10_table() if config.data is None else tables.load_table(config.data, config.layout)
    table = table.in_classes(class_names)
    test = table.with_folds(config.test_folds)
    mixing = config.multilabel and not table.multilabel
    source = ((wave, label) for wave, label, _ in data.waveform_dataset(test, sample_rate).as_numpy_iterator())
    out = {"single_label": not table.multilabel, "windows": None}
    if window is not None and not mixing:  # each clip at its own length, cut as it is read
        waves, labels, out["windows"] = _write_windows(source, window, folder / "clips.f32")
        out["clips"] = out["evaluation"] = (waves, labels)
        return out
    clip_samples = int(config.clip_seconds * sample_rate)
    writer, labels = RowWriter(folder / "clips.f32", clip_samples), []
    for wave, label in source:
        writer.append(_fixed(wave, clip_samples))
        labels.append(label)
    waves = writer.rows()
    labels = np.stack(labels) if labels else np.zeros((0,), "int64")
    out["clips"] = out["evaluation"] = (waves, labels)
    if mixing:  # the test mixtures training scored (their number is the run's setting, not the data's size)
        splits = [None, None, (waves, labels)]
        out["evaluation"] = mixtures.split_mixtures(
            splits, len(class_names), config.mixtures, config.seed, config.mixture_snr_db
        )[2]
    if window is not None:
        cut = windows.cut(*out["evaluation"], window)
        out["evaluation"] = (cut.waves, cut.labels)
        out["windows"] = cut.counts()
        clips, clip_labels, _ = _write_windows(zip(waves, labels), window, folder / "clip_windows.f32")
        out["clips"] = (clips, clip_labels)
    return out
