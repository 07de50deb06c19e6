"""The data a training reads: its table (the bundled ESC-10 or ``--data``), probed, without the clips
``--on-error skip`` leaves out, split into its folds, and checked before any work (a multi-label table without
``--multilabel``, folds in no split, training folds of one class)."""

from __future__ import annotations

import logging

import numpy as np

from l2i_tf import data
from l2i_tf import tables as clip_tables
from l2i_tf.runs import TrainConfig

log = logging.getLogger(__name__)


def loaded_table(config: TrainConfig):
    """The run's data set as read now: the bundled ESC-10 or ``config.data`` (a manifest's labels among the
    classifier's classes)."""
    if config.data is None:
        return clip_tables.esc10_table()
    names = config.class_names if config.layout == "manifest" else None
    return clip_tables.load_table(config.data, config.layout, class_names=names)


def data_table(config: TrainConfig):
    """:func:`loaded_table` without the clips ``--on-error skip`` left out of the run's training (what evaluation
    and the report read; their clips are read, and the decode check's record found, only when skipping)."""
    table = loaded_table(config)
    return data.usable_table(table, on_error="skip")[0] if config.on_error == "skip" else table


def tables(config: TrainConfig):
    """The (probed) data table, its (train, validation, test) tables and the skipped clips.

    A manifest's labels must be classes of the classifier. With ``config.on_error == "skip"`` unreadable clips
    and clips that fail to decode are left out and listed (``metrics.json`` counts them); otherwise the first one
    stops the job, named.
    """
    table = loaded_table(config)
    if table.multilabel and not config.multilabel:
        counts = np.asarray(table.labels).sum(axis=1)
        first = int(np.flatnonzero(counts != 1)[0])
        raise data.AudioDataError(
            f"{table.paths[first]} has {int(counts[first])} labels in {config.data}: the data set is multi-label "
            f"({int((counts != 1).sum())} clip(s) without exactly one label); train a multi-label classifier's "
            "interpreter with --multilabel, or give every clip one label"
        )
    table, _, skipped = data.usable_table(table, on_error=config.on_error)
    parts = clip_tables.split(table, config.splits)
    check_splits(config, table, parts)
    return table, parts, skipped


def check_splits(config: TrainConfig, table, parts) -> None:
    """Folds in none of the splits are said (their clips are not used); single-label training folds of one class
    cannot make the source term's mixtures of two classes: an error that says what to do."""
    used = {*config.splits.train, *config.splits.validation, *config.splits.test}
    unused = sorted(set(table.folds or ()) - used)
    if unused:
        clips = sum(fold in unused for fold in table.folds)
        log.warning("fold(s) %s of the data are in no split (--train/val/test-folds): %d clip(s) unused", unused, clips)
    train = parts[0]
    one_class = not train.multilabel and len(np.unique(train.labels)) < 2
    if one_class and not config.multilabel and config.source_mixtures != 0:
        raise data.AudioDataError(
            f"the training folds {list(config.splits.train)} hold clips of one class only "
            f"({train.class_names[int(train.labels[0])]!r}): the source term mixes clips of two classes; add folds "
            "with other classes (--train-folds) or train without the term (--source-mixtures 0)"
        )
