"""Clip tables: the eager description of a data set (paths, labels, folds, class names), its four layouts, splits.

A :class:`ClipTable` is cheap to build and holds no audio; :mod:`l2i_tf.data` decodes its clips.

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
import logging
import re
from pathlib import Path

import numpy as np

from l2i_tf.data import AudioDataError

log = logging.getLogger(__name__)

LAYOUTS = ("esc10", "esc50", "folders", "manifest")
# The files a folder layout lists: the usual names of the formats libsndfile reads (any it reads is decoded, as
# manifests may name them; these are only what a folder scan picks up).
AUDIO_EXTENSIONS = (".ogg", ".opus", ".flac", ".wav", ".mp3", ".aif", ".aiff")
ESC10_ROOT = Path(__file__).resolve().parent / "esc10"  # bundled ESC-10, package data (README: CC BY 3.0)


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
            raise AudioDataError(
                f"data set at {self.root!r} has no folds to select {list(folds)} from: its manifest has no 'fold' "
                "column; add one (e.g. 1-5) to split the clips into training, validation and test folds"
            )
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

    def in_classes(self, class_names) -> ClipTable:
        """The same clips labelled in ``class_names`` (a classifier's classes, in its output order).

        A classifier may output more classes than the data holds: then every data class must be one of its names.
        With as many classes as the data and none of its names (e.g. ``class_0``...), they are read by position (as
        training reads them); names that match only in part are an error (read by position, some clips would take
        another class's name)."""
        names = tuple(class_names)
        folded = {}
        for name in names:
            folded.setdefault(name.casefold().strip(), name)
        # by name, or by the same name in other case or with other surrounding spaces ("dog bark" is "Dog bark")
        mapped = [c if c in names else folded.get(c.casefold().strip()) for c in self.class_names]
        unknown = [c for c, m in zip(self.class_names, mapped, strict=True) if m is None]
        disjoint = len(unknown) == len(self.class_names)
        if names == self.class_names or (len(names) == len(self.class_names) and disjoint):
            if names != self.class_names:
                log.warning(
                    "data set at %r: none of its classes %s is one of the classifier's %s; read by position (the "
                    "data's i-th class is the classifier's i-th output)",
                    self.root,
                    list(self.class_names[:5]),
                    list(names[:5]),
                )
            return dataclasses.replace(self, class_names=names)
        if unknown and len(names) == len(self.class_names):
            raise AudioDataError(
                f"data set at {self.root!r}: its classes {list(self.class_names[:5])} and the classifier's "
                f"{list(names[:5])} match only in part ({unknown[:5]} are not the classifier's); name the "
                "classifier's classes (--class-names, in its output order) with the data's names"
            )
        if unknown:
            raise AudioDataError(
                f"data set at {self.root!r} has {len(unknown)} class(es) the classifier does not output: {unknown[:5]}"
                f" (it outputs {len(names)}: {list(names[:5])}{' ...' if len(names) > 5 else ''})"
            )
        index = np.array([names.index(m) for m in mapped], dtype="int64")
        if self.multilabel:
            labels = np.zeros((len(self), len(names)), dtype="float32")
            labels[:, index] = self.labels
        else:
            labels = index[self.labels]
        return dataclasses.replace(self, labels=labels, class_names=names)


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


# ------------------------------------------------------------------------------------------------ layouts


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
    """ESC-50 layout: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``. The classes are the
    targets present, in target order: a subset of ESC-50's rows (its ESC-10 classes, targets 0, 1, 10...) is a data
    set of its own classes."""
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
    index = {target: i for i, target in enumerate(sorted(names))}
    class_names = tuple(names[target] for target in sorted(names))
    labels = np.array([index[target] for target in labels], dtype="int64")
    return _non_empty(ClipTable(tuple(paths), labels, class_names, tuple(folds), False, str(root)))


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


def _whole_number(text) -> int:
    """``"3"``, ``" 3 "`` or ``"3.0"`` (as a spreadsheet exports it) -> 3; ``ValueError`` for anything else."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """``(line, row)`` of every row; the header's names without surrounding spaces, a spreadsheet's byte-order mark
    dropped (``utf-8-sig``)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        columns = reader.fieldnames
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
    columns = [c for c in rows[0][1] if c is not None]  # the header's names, as _read_csv cleaned them
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
                    raise AudioDataError(
                        f"{path}:{line}: unknown class {n!r}; known classes: {names} (the classifier's: give its "
                        "class names with --class-names or its sidecar)"
                    )
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
                folds.append(_whole_number(row["fold"]))
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
