"""The test split `l2i-tf evaluate` scores, streamed to clip files (:mod:`l2i_tf.clip_files`): memory holds one clip
while it is written and one batch while it is scored, whatever the number of test clips."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from l2i_tf import mixtures, runs, training_tables, windows
from l2i_tf.clip_files import ClipFile
from l2i_tf.training_data import Counter, clip_examples, cut


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for a job's clip files (in ``$TMPDIR``: 4 bytes a sample of the test split), removed when
    the block ends (also on errors)."""
    with tempfile.TemporaryDirectory(prefix="l2i_tf-evaluate-") as tmp:
        yield Path(tmp)


def _windows_of(source, window: int, counter: Counter) -> Iterator[tuple[np.ndarray, object]]:
    """Every ``(clip, label)`` of ``source`` cut into windows (:func:`l2i_tf.training_data.cut`), labelled."""
    for clip, label in source:
        for piece in cut(clip, window, counter):
            yield piece, label


def test_data(
    config: runs.TrainConfig, sample_rate: int, class_names, window: int | None = None, folder: str | Path | None = None
) -> dict:
    """The run's test split: ``clips`` (waveforms, labels) and ``evaluation`` (what the classifier is scored on:
    the clips, or for a multi-label run on single-label data the same test mixtures training scored).

    Labels are indices into ``class_names`` (the classifier's classes, which may be more than the data holds; a
    data class the classifier does not output is an error naming it). For a fixed-length classifier (``window``
    samples) both are the windows training scored (see :func:`l2i_tf.windows.cut`), and ``windows`` counts them
    (``{"clips", "windows"}``; None otherwise).

    With ``folder``, the waveforms are :class:`~l2i_tf.clip_files.ClipFile` s there, read a batch at a time (the
    folder must outlive their use); without it, numpy arrays in memory.
    """
    if folder is None:
        with scratch_folder() as tmp:
            out = test_data(config, sample_rate, class_names, window, tmp)
            in_memory = {key: (np.asarray(out[key][0]), out[key][1]) for key in ("clips", "evaluation")}
            close(out)
            return {**out, **in_memory}
    folder = Path(folder)
    table = training_tables.data_table(config).in_classes(class_names)
    test = table.with_folds(config.test_folds)
    mixing = config.multilabel and not table.multilabel
    out = {"single_label": not table.multilabel, "windows": None}
    if window is not None and not mixing:  # each clip at its own length, cut as it is read
        counter = Counter()
        source = _windows_of(clip_examples(test, sample_rate, None), window, counter)
        out["clips"] = out["evaluation"] = ClipFile.write(folder / "windows.npy", source, None, window)
        out["windows"] = counter.counts()
        return out
    clip_samples = int(config.clip_seconds * sample_rate)
    source = clip_examples(test, sample_rate, clip_samples)
    out["clips"] = out["evaluation"] = ClipFile.write(folder / "clips.npy", source, len(test), clip_samples)
    if mixing:  # the test mixtures training scored (their number is the run's setting, not the data's size)
        splits = [None, None, out["clips"]]
        out["evaluation"] = mixtures.split_mixtures(
            splits, len(class_names), config.mixtures, config.seed, config.mixture_snr_db
        )[2]
    if window is not None:
        cut_mixtures = windows.cut(*out["evaluation"], window)
        out["evaluation"] = (cut_mixtures.waves, cut_mixtures.labels)
        out["windows"] = cut_mixtures.counts()
        source = _windows_of(zip(*out["clips"], strict=True), window, Counter())
        out["clips"] = ClipFile.write(folder / "clip_windows.npy", source, None, window)
    return out


def close(split: dict) -> None:
    """Close the clip files of a :func:`test_data` split (before its folder is removed)."""
    for key in ("clips", "evaluation"):
        if isinstance(split[key][0], ClipFile):
            split[key][0].close()
