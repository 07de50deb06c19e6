"""Mixture examples for `l2i-tf report`: a clip of each class mixed with a clip of another class, so a listener
hears the mixture, the true source and the interpretation side by side (with the interpretation's SI-SDRi)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import soundfile

from l2i_tf import explain_files, metrics, mixtures, runs, tables, training_tables
from l2i_tf.data import AudioDataError
from l2i_tf.report_inputs import ReportInput, explained_entry

log = logging.getLogger(__name__)

TRIES = 8
"""Distractors tried per class until the classifier decides the target's class on the mixture."""


class MixtureExamplesError(ValueError):
    """No labelled clips to mix for this model: not the bundled ESC-10's classes and no run data set at hand."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """A target clip of ``target_class`` and a distractor clip of another class (paths, class names)."""

    target: str
    target_class: str
    distractor: str
    distractor_class: str


def labelled_clips(run_folder: Path | None, class_names) -> tuple[list[str], np.ndarray]:
    """Test clips to mix and their classes as indices into the model's ``class_names``: the test split of the run's
    data set (its classes found among the model's by name, see :meth:`~l2i_tf.tables.ClipTable.in_classes`), else
    of the bundled ESC-10 matched by class name (fold 5 without a run folder). Raises :class:`MixtureExamplesError`
    with fewer than two classes."""
    try:
        config = runs.read_config(run_folder) if run_folder is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        config = None
    if config is None or config.data is None:
        table = tables.esc10_table().with_folds(config.test_folds if config else (5,))
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index.get(table.class_names[label], -1) for label in table.labels], dtype=int)
        where = "the bundled ESC-10's test clips"
    else:
        try:
            table = training_tables.data_table(config)
        except (OSError, ValueError) as e:
            message = f"mixture examples: cannot read the run's data set {config.data!r}: {e}"
            raise MixtureExamplesError(message) from None
        table = table.with_folds(config.test_folds)
        try:  # the data's classes among the classifier's, by name (or by position when as many, none named alike)
            labels = np.asarray(table.in_classes(class_names).labels, dtype=int)
        except AudioDataError as e:  # read by position, a clip would be mixed under another class's name
            raise MixtureExamplesError(f"mixture examples: {e}") from None
        where = f"the test split of {config.data}"
    keep = np.flatnonzero(labels >= 0)
    if len(np.unique(labels[keep])) < 2:
        raise MixtureExamplesError(
            f"mixture examples need test clips of at least two of the model's classes ({', '.join(class_names)}); "
            f"{where} hold{'s' if len(keep) == 1 else ''} {len(np.unique(labels[keep]))}"
        )
    return [table.paths[i] for i in keep], labels[keep]


def candidate_pairs(paths, labels, class_names, count: int, tries: int = TRIES) -> list[list[Pair]]:
    """For each of ``count`` classes in turn (the model's classes that have clips), up to ``tries`` pairs: the
    class's clips in order, each with the first clips of the other classes, taken in turn."""
    labels = np.asarray(labels)
    present = [c for c in range(len(class_names)) if np.any(labels == c)]
    by_class = {c: [paths[i] for i in np.flatnonzero(labels == c)] for c in present}
    out = []
    for n in range(count):
        at = n % len(present)
        c, others = present[at], present[at + 1 :] + present[:at]
        pairs = []
        for j in range(tries):
            other, rank = others[j % len(others)], j // len(others)
            target = by_class[c][(n // len(present) + rank) % len(by_class[c])]
            distractor = by_class[other][rank % len(by_class[other])]
            pairs.append(Pair(target, class_names[c], distractor, class_names[other]))
        out.append(pairs)
    return out


def mix(target: np.ndarray, distractor: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """The mixture of ``target`` and ``distractor`` (cut or zero-padded to the target's length) at ``snr_db``
    (target-to-distractor energy), and the scaled distractor."""
    d = np.zeros_like(target)
    d[: min(len(target), len(distractor))] = distractor[: len(target)]
    d = mixtures.at_snr(d, mixtures.rms(target), snr_db)
    return (target + d).astype("float32"), d


def _decided(source, pairs: list[Pair], snr_db: float):
    """The first pair whose mixture the classifier assigns to the target's class (else the first pair), decoded,
    mixed and explained: ``(pair, target, distractor, mixture, explained, right)``."""
    first, decoded = None, {}

    def load(path):  # a class's few clips recur across its pairs: decode each once
        if path not in decoded:
            decoded[path] = explain_files.load_audio(path, source.sample_rate)
        return decoded[path]

    for pair in pairs:
        target = load(pair.target)
        mixture, distractor = mix(target, load(pair.distractor), snr_db)
        explained = explain_files.explain_waveform(source, mixture)
        right = explained["classifier"]["predicted"] == pair.target_class
        if right:
            return pair, target, distractor, mixture, explained, True
        first = first or (pair, target, distractor, mixture, explained, False)
    return first


def mixture_entry(source, analysis, pairs: list[Pair], slug: str, folder: Path, snr_db: float) -> dict:
    """Explain one class's mixture into ``folder``: the entry has players for the mixture, the true source, the
    interpretation, the other source and the components, and ``mixture``: the pair, the SNR, whether the classifier
    decided the true source's class, and the interpretation's SI-SDRi toward the true source."""
    pair, target, distractor, mixture, explained, right = _decided(source, pairs, snr_db)
    audio_dir = folder / "audio" / slug
    audio_dir.mkdir(parents=True, exist_ok=True)
    soundfile.write(audio_dir / "source.wav", target, source.sample_rate, subtype="FLOAT")
    soundfile.write(audio_dir / "other.wav", distractor, source.sample_rate, subtype="FLOAT")
    a, b = Path(pair.target).name, Path(pair.distractor).name
    players = [
        {"label": f"Mixture ({snr_db:g} dB): {a} + {b}", "src": f"audio/{slug}/input.wav"},
        {"label": f"True source: {a} ({pair.target_class})", "src": f"audio/{slug}/source.wav"},
    ]
    item = ReportInput(pair.target, pair.target_class)
    entry = explained_entry(source, analysis, mixture, explained, item, slug, folder, players)
    other = {"label": f"Other source: {b} ({pair.distractor_class})", "src": f"audio/{slug}/other.wav"}
    entry["players"].insert(3, other)
    improvement = metrics.si_sdr(explained["audio"]["interpretation"], target) - metrics.si_sdr(mixture, target)
    entry.update(
        name=f"Mixture: {pair.target_class} + {pair.distractor_class}", input=f"{pair.target} + {pair.distractor}"
    )
    entry["mixture"] = {
        **dataclasses.asdict(pair),
        "snr_db": snr_db,
        "classifier_right": right,
        "si_sdri_db": float(improvement),
    }
    return entry
