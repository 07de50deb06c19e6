"""`l2i-tf report`: a static, offline HTML page of explanations (players, spectrograms, H, relevance, predictions)."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2i_tf import audio, data, explain_files, export, files, report_mixtures, runs, tables
from l2i_tf.explain_files import ExplainSource
from l2i_tf.report_inputs import Analysis, ReportInput, explain_input
from l2i_tf.report_page import markdown_to_html, render

log = logging.getLogger(__name__)

__all__ = ["ReportError", "ReportInput", "build_report", "describe", "example_inputs", "markdown_to_html"]


class ReportError(ValueError):
    """A report that cannot be written as asked; ``reason``: ``"exists"`` (the folder holds files),
    ``"not_folder"``, ``"unwritable"`` or ``"nothing"`` (nothing to explain)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# -------------------------------------------------------------------- inputs


def example_inputs(n: int, folds=(5,)) -> list[ReportInput]:
    """``n`` clips of the bundled ESC-10's ``folds``, one class after another (first clip of each class, then the
    second, ...), so a few examples cover different classes."""
    if n < 1:
        raise ValueError(f"the number of examples must be >= 1, got {n!r}")
    table = tables.esc10_table().with_folds(folds)
    by_class = [np.flatnonzero(table.labels == c) for c in range(len(table.class_names))]
    picked: list[ReportInput] = []
    for rank in range(max(len(c) for c in by_class)):
        for c, indices in enumerate(by_class):
            if rank < len(indices) and len(picked) < n:
                picked.append(ReportInput(table.paths[indices[rank]], table.class_names[c]))
    if len(picked) < n:
        log.warning("asked for %d examples, fold(s) %s hold only %d clips", n, list(folds), len(picked))
    return picked


def _test_folds(run_folder: Path | None) -> tuple[int, ...]:
    """The run's test folds if it trained on the bundled ESC-10, else fold 5."""
    try:
        train = json.loads((run_folder / runs.CONFIG).read_text())["train"]
    except (TypeError, OSError, ValueError, KeyError):
        return (5,)
    if train.get("data") is None and train.get("layout", "esc10") == "esc10":
        return tuple(train.get("test_folds") or (5,))
    return (5,)


def _slug(index: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("_.")[:40] or "input"
    return f"{index:02d}-{stem}"


# -------------------------------------------------------------------- model description


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_folder(source: ExplainSource) -> tuple[Path | None, str | None]:
    """The run folder behind a source: the source itself, or the run an export was made from while its folder still
    holds that run (:func:`~l2i_tf.export.recorded_run`); and, when the folder holds another run, why (warned)."""
    if source.kind == "run":
        return Path(source.path), None
    folder, changed = export.recorded_run(source.metadata)
    if changed:
        log.warning(
            "%s: %s; the report leaves that run out (its settings, metrics, evaluation and H), as for an export "
            "whose run is gone",
            source.path,
            changed,
        )
    return folder, changed


def describe(source: ExplainSource, run_folder: Path | None, run_changed: str | None = None) -> dict:
    """Model, dictionary and STFT configuration, training metrics and evaluation files, for the page header
    (``run_changed``: an export's run folder holds another run, :func:`_run_folder`)."""
    meta = source.metadata
    train = (_read_json(run_folder / runs.CONFIG) or {}).get("train", {}) if run_folder else {}
    model = {
        "source": str(source.path),
        "kind": "run folder" if source.kind == "run" else "SavedModel export",
        "classifier": train.get("classifier"),
        "tapped layers": ", ".join(train.get("layers") or []) or None,
        "pooling": train.get("pooling"),
        "classes": f"{len(source.class_names)}: {', '.join(source.class_names)}",
        "multi-label": meta.get("multilabel"),
        "threshold τ": source.threshold,
        "top N": meta.get("top_n"),
        "mask domain": meta.get("domain"),
    }
    if source.kind == "savedmodel":
        run = meta.get("run")
        if run and run_changed:
            run = f"{run} (changed since the export: not used)"
        model.update(version=meta.get("version"), exported=meta.get("created"), run=run)
    dictionary = {"K (components)": meta.get("k")}
    saved = _read_json(run_folder / runs.DICTIONARY / "dictionary.json") if run_folder else None
    if saved is None and train.get("dictionary"):
        saved = _read_json(Path(train["dictionary"]) / "dictionary.json")
    if saved:
        dictionary["bins F"] = saved.get("num_bins")
        dictionary.update({f"NMF {key}": value for key, value in (saved.get("nmf") or {}).items()})
        provenance = saved.get("provenance") or {}
        if provenance.get("folds"):
            dictionary["learnt on folds"] = ", ".join(str(f) for f in provenance["folds"])
    stft = audio.STFTConfig.from_dict(meta["stft"])
    stft_rows = {
        "sample rate (Hz)": stft.sample_rate,
        "frame length (samples)": stft.frame_length,
        "hop (samples)": stft.frame_step,
        "FFT length": stft.fft_length,
        "window": stft.window,
        "bins F": stft.num_bins,
    }
    metrics = (_read_json(run_folder / runs.METRICS) or {}) if run_folder else {}
    fidelity = {}
    for split in ("validation", "test"):
        for key, value in (metrics.get(split) or {}).items():
            if isinstance(value, int | float):
                fidelity[f"{split} {key}"] = value
        counts = (metrics.get("windows") or {}).get(split)
        if counts:  # a fixed-length classifier: fidelity was measured on windows of the clips
            fidelity[f"{split} windows (of {counts['clips']} clips)"] = counts["windows"]
    if metrics.get("windows"):
        fidelity["window seconds"] = metrics["windows"]["seconds"]
    return {
        "model": _drop_none(model),
        "dictionary": _drop_none(dictionary),
        "stft": stft_rows,
        "fidelity": fidelity,
        "evaluation": find_evaluation(run_folder) if run_folder else [],
    }


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _source_name(src) -> str:
    """A run folder's name, or an export's model name and version (its folder is only the version number)."""
    meta = src.metadata if src.kind != "run" else {}
    if meta.get("name") and meta.get("version") is not None:
        return f"{meta['name']} v{meta['version']}"
    return Path(src.path).name


def find_evaluation(run_folder: Path) -> list[dict]:
    """``l2i-tf evaluate``'s output under a run folder: Markdown files (``*.md``), ``evaluation/*.json`` and
    ``evaluation*.json``.

    Returns ``[{"file": relative path, "markdown": text}]`` or ``{"file", "json": content}``; a JSON file with a
    Markdown file of the same stem is left out (the Markdown holds its tables).
    """
    found, stems = [], set()
    for path in sorted(run_folder.rglob("*.md")):
        if runs.CHECKPOINTS in path.parts or runs.LOGS in path.parts:
            continue
        found.append({"file": str(path.relative_to(run_folder)), "markdown": path.read_text(errors="replace")})
        stems.add((path.parent, path.stem))
    for path in sorted({*run_folder.rglob("evaluation*.json"), *run_folder.glob("evaluation/*.json")}):
        if (path.parent, path.stem) in stems:
            continue
        content = _read_json(path)
        if content is not None:
            found.append({"file": str(path.relative_to(run_folder)), "json": content})
    return found


# -------------------------------------------------------------------- the page


def build_report(
    source: str | Path,
    inputs=(),
    out: str | Path = "report",
    examples: int = 0,
    overwrite: bool = False,
    threshold: float | None = None,
    top_n: int | None = None,
    domain: str | None = None,
    class_name: str | None = None,
    safe_mode: bool = True,
    mixtures: int = 0,
    snr_db: float = 0.0,
) -> dict:
    """Explain ``inputs`` (and ``examples`` bundled test clips, and ``mixtures`` mixture examples) and write
    ``out/index.html`` with its audio and images.

    The page is built in a hidden temporary folder next to ``out`` and renamed into place once complete; an
    existing ``out`` is refused unless ``overwrite`` (then replaced only after the new report is complete). An
    input that cannot be explained (undecodable, empty, rejected by the model) is listed on the page with its
    error. Returns the page's content (also written as ``out/report.json``).

    Args:
        source: a run folder or an exported SavedModel (see :class:`~l2i_tf.ExplainSource`).
        inputs: audio file paths (or :class:`ReportInput`).
        out: the report folder.
        examples: also explain this many test clips of the bundled ESC-10 (the run's test folds).
        threshold, top_n, domain: as ``l2i-tf explain``.
        class_name: class to explain (default: each clip's prediction).
        safe_mode: False loads ``.keras`` files holding Python code (Lambda layers); only for trusted files.
        mixtures: also this many mixture examples, one class after another: a test clip of the class mixed at
            ``snr_db`` with a test clip of another class (the run's data set, else the bundled ESC-10), the first of
            a few such pairs whose mixture the classifier assigns to the class; the page plays the mixture, the
            true source, the interpretation of the classifier's decision and the other source, with the SI-SDRi.

    Raises:
        ReportError: ``out`` exists (without ``overwrite``) or is not writable, or there is nothing to explain.
        ValueError: bad options for this source (see :class:`~l2i_tf.ExplainSource`), unknown class, no labelled
            clips to mix (:class:`~l2i_tf.report_mixtures.MixtureExamplesError`).
    """
    out = Path(out)
    _check_out(out, overwrite)
    items = [i if isinstance(i, ReportInput) else ReportInput(str(i)) for i in inputs]
    if not items and not examples and not mixtures:
        raise ReportError("nothing to explain: no input files and no bundled examples asked for", "nothing")
    if mixtures < 0 or not np.isfinite(snr_db):
        raise ValueError(f"mixture examples need a count >= 0 and a finite SNR, got {mixtures!r} and {snr_db!r}")
    src = ExplainSource(source, threshold=threshold, top_n=top_n, domain=domain, safe_mode=safe_mode)
    src.class_index(class_name)
    run_folder, run_changed = _run_folder(src)
    if examples:
        items += example_inputs(examples, _test_folds(run_folder))
    pairs = []
    if mixtures:
        paths, labels = report_mixtures.labelled_clips(run_folder, src.class_names)
        pairs = report_mixtures.candidate_pairs(paths, labels, src.class_names, mixtures)
    interpreter, h_note = _interpreter(src, run_folder, safe_mode, run_changed)
    analysis = Analysis(audio.STFTConfig.from_dict(src.metadata["stft"]), interpreter)
    try:
        with files.atomic_folder(out, overwrite=True) as tmp:
            page = _write_page(tmp, src, analysis, items, class_name)
            page["inputs"] += _write_mixtures(tmp, src, analysis, pairs, snr_db, first=len(items) + 1)
            page.update(header=describe(src, run_folder, run_changed), activations_note=h_note)
            (tmp / "index.html").write_text(render(page), encoding="utf-8")
            (tmp / "report.json").write_text(json.dumps(page, indent=2, default=str))
            _check_out(out, overwrite)
    except OSError as e:
        raise ReportError(f"cannot write the report folder {str(out)!r}: {e.strerror or e}", "unwritable") from None
    return page


def _write_page(folder: Path, src, analysis, items, class_name) -> dict:
    """Explain every input into ``folder``; an input that cannot be explained is listed with its error."""
    (folder / "img").mkdir()
    entries = []
    for index, item in enumerate(items, 1):
        slug = _slug(index, item.path)
        explain = functools.partial(explain_input, src, analysis, item, slug, folder, class_name)
        entries.append(_entry(explain, folder, slug, item.path, Path(item.path).name))
    return {
        "title": f"L2I report: {_source_name(src)}",
        "created": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "inputs": entries,
    }


def _write_mixtures(folder: Path, src, analysis, pairs, snr_db: float, first: int) -> list[dict]:
    """The mixture examples' entries (numbered from ``first``); one that cannot be explained is listed with its
    error."""
    entries = []
    for index, candidates in enumerate(pairs, first):
        slug = _slug(index, f"mixture-{candidates[0].target_class}")
        explain = functools.partial(report_mixtures.mixture_entry, src, analysis, candidates, slug, folder, snr_db)
        entries.append(_entry(explain, folder, slug, candidates[0].target, f"Mixture: {candidates[0].target_class}"))
    return entries


def _entry(explain, folder: Path, slug: str, input_path: str, name: str) -> dict:
    """``explain()``'s page entry, or the error entry of an input that cannot be explained (its files removed)."""
    try:
        entry = explain()
    except (data.AudioDataError, tf.errors.OpError, ValueError, RuntimeError) as e:
        message = explain_files.graph_error_message(e) if isinstance(e, tf.errors.OpError) else str(e)
        message = message.removeprefix(f"{input_path}: ")  # the path is said once, beside the message
        log.warning("%s: %s", input_path, message)
        shutil.rmtree(folder / "audio" / slug, ignore_errors=True)
        return {"slug": slug, "input": input_path, "name": name, "error": message}
    log.info("%s: explained %s", entry["name"], entry["target_class"])
    return entry


def _interpreter(source: ExplainSource, run_folder: Path | None, safe_mode: bool = True, changed: str | None = None):
    """The Keras interpreter that gives H, and a note when there is none (``changed``: why the export's run folder
    is not used)."""
    if source.explainer is not None:
        return source.explainer.interpreter, None
    if run_folder is not None:
        try:
            run = runs.load_run(run_folder, safe_mode=safe_mode)
        except (ValueError, OSError) as e:
            log.warning("cannot load the export's run %s for H: %s", run_folder, e)
        else:
            if run.class_names == source.class_names and run.interpreter.k == source.metadata["k"]:
                return run.interpreter, f"H computed by the run this export was made from ({run_folder})."
    if changed:
        return None, f"H not available from a SavedModel export: {changed}."
    return None, "H not available from a SavedModel export (its run folder is not there to compute it)."


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"the report folder {str(out)!r} exists and is not a folder", "not_folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ReportError(f"the report folder {str(out)!r} already exists and is not empty", "exists")
