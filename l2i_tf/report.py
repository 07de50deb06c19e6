"""`l2i-tf report`: a static, offline HTML page of explanations (players, spectrograms, H, relevance, predictions)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import audio, data, explain_files, files, runs, tables
from l2i_tf.explain_files import ExplainSource
from l2i_tf.report_figures import plot_activations, plot_relevance, plot_spectrograms
from l2i_tf.report_page import markdown_to_html, render

log = logging.getLogger(__name__)

TOP_PREDICTIONS = 3
__all__ = ["ReportError", "ReportInput", "build_report", "describe", "example_inputs", "markdown_to_html"]


class ReportError(ValueError):
    """A report that cannot be written as asked; ``reason``: ``"exists"`` (the folder holds files),
    ``"not_folder"``, ``"unwritable"`` or ``"nothing"`` (nothing to explain)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReportInput:
    """One clip to explain: its file and, for a bundled example, its true class."""

    path: str
    true_class: str | None = None


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


def _run_folder(source: ExplainSource) -> Path | None:
    """The run folder behind a source: the source itself, or the run an export was made from (if still there)."""
    if source.kind == "run":
        return Path(source.path)
    run = source.metadata.get("run")
    if run and runs.is_run(run):
        return Path(run)
    return None


def describe(source: ExplainSource, run_folder: Path | None) -> dict:
    """Model, dictionary and STFT configuration, training metrics and evaluation files, for the page header."""
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
        model.update(version=meta.get("version"), exported=meta.get("created"), run=meta.get("run"))
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


# -------------------------------------------------------------------- one input


class _Analysis:
    """The spectrogram and (when an interpreter is at hand) H of a waveform, as ``tf.function``s traced once."""

    def __init__(self, stft: audio.STFTConfig, interpreter=None):
        spec = [tf.TensorSpec([None, None], tf.float32)]
        self._spectrogram = tf.function(lambda w: audio.analyze(w, stft)[0], input_signature=spec)
        self._activations = None
        if interpreter is not None:
            self._activations = tf.function(
                lambda w: interpreter(w, training=False)["activations"], input_signature=spec
            )

    def spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """[S] -> log1p magnitude [T, F]."""
        return self._spectrogram(tf.constant(waveform[None], tf.float32))[0].numpy()

    def activations(self, waveform: np.ndarray) -> np.ndarray | None:
        """[S] -> H [T, K], or None without an interpreter."""
        if self._activations is None:
            return None
        return self._activations(tf.constant(waveform[None], tf.float32))[0].numpy()


def _top(probabilities: dict, n: int = TOP_PREDICTIONS) -> list[tuple[str, float]]:
    return sorted(probabilities.items(), key=lambda item: -item[1])[:n]


def explain_input(source, analysis: _Analysis, item: ReportInput, slug: str, folder: Path, class_name=None) -> dict:
    """Explain one input into ``folder/audio/<slug>/`` and ``folder/img/<slug>-*.png``; returns its page entry."""
    audio_dir = folder / "audio" / slug
    # Decode once; the model explains (and the page plays) exactly what was decoded, at the model's rate.
    waveform = explain_files.load_audio(item.path, source.sample_rate)
    explained = explain_files.explain_waveform(source, waveform, class_name)
    interpretation = explained["audio"]["interpretation"]
    result = explain_files.write_explanation(explained, audio_dir, input=item.path, decoded="input.wav")
    soundfile.write(audio_dir / "input.wav", waveform, source.sample_rate, subtype="FLOAT")
    stft = audio.STFTConfig.from_dict(source.metadata["stft"])
    selected = [s["component"] for s in result["selected"]]
    relevance = np.asarray(result["relevance"])
    images = {}
    size = plot_spectrograms(
        analysis.spectrogram(waveform),
        analysis.spectrogram(interpretation),
        stft,
        folder / "img" / f"{slug}-spectrograms.png",
    )
    images["spectrograms"] = {
        "src": f"img/{slug}-spectrograms.png",
        "size": size,
        "alt": f"Spectrograms of the input (left) and the interpretation (right), {result['seconds']:.1f} s, "
        f"0 to {stft.sample_rate / 2000:g} kHz, on the same colour scale.",
    }
    h = analysis.activations(waveform)
    if h is not None:
        size = plot_activations(h, selected, stft, folder / "img" / f"{slug}-activations.png")
        strongest = np.argsort(-h.max(axis=0))[:3]
        images["activations"] = {
            "src": f"img/{slug}-activations.png",
            "size": size,
            "alt": f"Heatmap of the activation matrix H, {h.shape[1]} components over {h.shape[0]} frames; most "
            f"active components: {', '.join(str(int(k)) for k in strongest)}.",
        }
    size = plot_relevance(
        relevance, selected, result["threshold"], result["target_class"], folder / "img" / f"{slug}-relevance.png"
    )
    listed = ", ".join(f"{s['component']} ({s['relevance']:.2f})" for s in result["selected"]) or "none"
    images["relevance"] = {
        "src": f"img/{slug}-relevance.png",
        "size": size,
        "alt": f"Bar chart of the relevance of {len(relevance)} components for {result['target_class']}, with the "
        f"threshold τ = {result['threshold']:g}; selected components: {listed}.",
    }
    players = [
        {"label": f"Input: {Path(item.path).name}", "src": f"audio/{slug}/input.wav"},
        {"label": f"Interpretation (explaining {result['target_class']})", "src": f"audio/{slug}/interpretation.wav"},
    ]
    players += [
        {"label": f"Component {s['component']} (relevance {s['relevance']:.2f})", "src": f"audio/{slug}/{s['file']}"}
        for s in result["selected"]
    ]
    return {
        "slug": slug,
        "input": item.path,
        "name": Path(item.path).name,
        "true_class": item.true_class,
        "seconds": result["seconds"],
        "target_class": result["target_class"],
        "threshold": result["threshold"],
        "classifier": _top(result["classifier"]["probabilities"]),
        "interpreter": _top(result["interpreter"]["probabilities"]),
        "selected": result["selected"],
        "players": players,
        "images": images,
    }


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
) -> dict:
    """Explain ``inputs`` (and ``examples`` bundled test clips) and write ``out/index.html`` with its audio and images.

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

    Raises:
        ReportError: ``out`` exists (without ``overwrite``) or is not writable, or there is nothing to explain.
        ValueError: bad options for this source (see :class:`~l2i_tf.ExplainSource`), unknown class.
    """
    out = Path(out)
    _check_out(out, overwrite)
    items = [i if isinstance(i, ReportInput) else ReportInput(str(i)) for i in inputs]
    if not items and not examples:
        raise ReportError("nothing to explain: no input files and no bundled examples asked for", "nothing")
    src = ExplainSource(source, threshold=threshold, top_n=top_n, domain=domain, safe_mode=safe_mode)
    src.class_index(class_name)
    run_folder = _run_folder(src)
    if examples:
        items += example_inputs(examples, _test_folds(run_folder))
    interpreter, h_note = _interpreter(src, run_folder, safe_mode)
    analysis = _Analysis(audio.STFTConfig.from_dict(src.metadata["stft"]), interpreter)
    try:
        with files.atomic_folder(out, overwrite=True) as tmp:
            page = _write_page(tmp, src, analysis, items, class_name)
            page.update(header=describe(src, run_folder), activations_note=h_note)
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
        try:
            entry = explain_input(src, analysis, item, slug, folder, class_name)
        except (data.AudioDataError, tf.errors.OpError, ValueError, RuntimeError) as e:
            message = explain_files.graph_error_message(e) if isinstance(e, tf.errors.OpError) else str(e)
            log.warning("%s: %s", item.path, message)
            shutil.rmtree(folder / "audio" / slug, ignore_errors=True)
            entry = {"slug": slug, "input": item.path, "name": Path(item.path).name, "error": message}
        else:
            log.info("%s: explained %s", item.path, entry["target_class"])
        entries.append(entry)
    return {
        "title": f"L2I report: {Path(src.path).name}",
        "created": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "inputs": entries,
    }


def _interpreter(source: ExplainSource, run_folder: Path | None, safe_mode: bool = True):
    """The Keras interpreter that gives H, and a note when there is none."""
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
    return None, "H not available from a SavedModel export (its run folder is not there to compute it)."


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"the report folder {str(out)!r} exists and is not a folder", "not_folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ReportError(f"the report folder {str(out)!r} already exists and is not empty", "exists")
