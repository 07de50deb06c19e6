"""Explaining audio files (what ``l2i-tf explain`` runs): a run folder or an export as the source, decoding, and the
files written (``interpretation.wav``, ``component_<k>.wav``, ``explanation.json``)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import data, export, files, runs
from l2i_tf.explainer import ExplainConfig, Explainer, check_threshold


class FixedByExportError(ValueError):
    """An option (``option``: ``"top_n"``, ``"domain"``, ``"window_seconds"`` or ``"aggregate"``) asked for a value
    (``value``) that differs from the one
    an export fixed (``fixed``)."""

    def __init__(self, option: str, value, fixed):
        super().__init__(
            f"{option} {value!r} differs from this SavedModel's {fixed!r}, fixed at export; re-export with "
            f"{option}={value!r} or explain from the run folder"
        )
        self.option, self.value, self.fixed = option, value, fixed


class UnknownClassError(ValueError):
    """A class name (``name``) that is not one of the model's (``class_names``)."""

    def __init__(self, name: str, class_names):
        super().__init__(f"unknown class {name!r}; the classes are: {', '.join(class_names)}")
        self.name, self.class_names = name, tuple(class_names)


class ExplainSource:
    """A run folder or an exported SavedModel, behind one ``explain(waveform [1, S], target_class)``.

    Args:
        path: a run folder (``config.json`` + ``interpreter.keras``), a SavedModel folder, or a model folder of
            integer versions (the newest is used).
        threshold, top_n, domain, window_seconds, aggregate: run folder: override the
            :class:`~l2i_tf.explainer.ExplainConfig` defaults; SavedModel: all but ``threshold`` are fixed by the
            export and must match if given, ``threshold`` overrides its default.
        safe_mode: load a run folder's ``.keras`` file with Keras' safe mode (refuses ``Lambda`` layers' code).
    """

    def __init__(
        self,
        path,
        threshold: float | None = None,
        top_n: int | None = None,
        domain=None,
        safe_mode=True,
        window_seconds: float | None = None,
        aggregate: str | None = None,
    ):
        path = Path(path)
        fixed = {"top_n": top_n, "domain": domain, "window_seconds": window_seconds, "aggregate": aggregate}
        self.path = path
        self.explainer: Explainer | None = None
        if runs.is_run(path):
            run = runs.load_run(path, safe_mode=safe_mode)
            given = {key: value for key, value in fixed.items() if value is not None}
            config = ExplainConfig(**given, max_seconds=0)
            if threshold is not None:
                config = dataclasses.replace(config, threshold=threshold)
            self.kind = "run"
            self.explainer = Explainer(run.interpreter, run.class_names, config)
            self.metadata = self.explainer.metadata()
        else:
            saved = export.resolve_saved_model(path)
            self.metadata = export.load_metadata(saved)
            for option, value in fixed.items():
                if value is not None and value != self.metadata.get(option):
                    raise FixedByExportError(option, value, self.metadata.get(option))
            self.kind = "savedmodel"
            self.path = saved
            self._signature = tf.saved_model.load(str(saved)).signatures["explain"]
        self.threshold = self.metadata["threshold"] if threshold is None else check_threshold(threshold)
        self.class_names = tuple(self.metadata["class_names"])
        self.sample_rate = int(self.metadata["sample_rate"])

    def class_index(self, name: str | None) -> int:
        """Index of a class name (-1 for None: the classifier's prediction); ``ValueError`` listing the classes."""
        if name is None:
            return -1
        if name not in self.class_names:
            raise UnknownClassError(name, self.class_names)
        return self.class_names.index(name)

    def explain(self, waveform, target_class: int = -1) -> dict:
        """float32 [B, S] -> the outputs of the ``explain`` signature (components included) as numpy."""
        if self.explainer is not None:
            out = self.explainer.explain(waveform, target_class, self.threshold, components=True)
        else:
            out = self._signature(
                waveform=tf.constant(waveform, tf.float32),
                target_class=tf.fill([len(waveform)], target_class),
                threshold=tf.constant(self.threshold, tf.float32),
            )
        return {key: np.asarray(value) for key, value in out.items()}  # the tensors' memory, not a copy (.numpy())


def load_audio(path: str | Path, sample_rate: int, contents: bytes | None = None) -> np.ndarray:
    """Any supported file -> mono float32 numpy [S] at ``sample_rate`` (:func:`l2i_tf.data.decode`: downmix,
    resample); :class:`~l2i_tf.data.AudioDataError` naming the file if it cannot be read or decoded.

    ``contents``: the file's bytes when they were already read (e.g. from a remote file system); ``path`` then only
    names the file in errors.
    """
    if contents is None:
        try:
            contents = Path(path).read_bytes()
        except OSError as e:
            raise data.AudioDataError(f"{path}: cannot read audio ({e.strerror or e})") from None
    return data.decode(contents, sample_rate, str(path))


def explain_waveform(source: ExplainSource, waveform: np.ndarray, class_name: str | None = None) -> dict:
    """Explain one decoded clip [S]: the JSON-ready summary plus ``audio`` (``interpretation`` [S] and
    ``components`` {index: [S]} of the selected components, numpy)."""
    result = source.explain(waveform[None], source.class_index(class_name))
    one = {key: value[0] for key, value in result.items()}
    return summarize(one, source.metadata, source.threshold, str(source.path), source.kind)


def summarize(result: dict, metadata: dict, threshold: float, source: str, kind: str) -> dict:
    """One clip's outputs of the ``explain`` signature (numpy, without the batch dimension) -> the summary of
    :func:`explain_waveform`. ``metadata``: the export's (class names, sample rate, top_n, domain)."""
    names, rate = tuple(metadata["class_names"]), int(metadata["sample_rate"])
    selected, components = [], {}
    for index, relevance, chosen, wave in zip(
        result["component_indices"],
        result["component_relevance"],
        result["component_selected"],
        result["component_audio"],
        strict=True,
    ):
        if chosen:
            selected.append({"component": int(index), "relevance": float(relevance)})
            components[int(index)] = wave
    for index in np.flatnonzero(result["selected"]):  # selected in some window, past the top N: no audio of its own
        if int(index) not in components:
            selected.append({"component": int(index), "relevance": float(result["relevance"][index])})

    def probabilities(key):
        p = result[key]
        return {
            "predicted": names[int(p.argmax())],
            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
        }

    samples = int(result["interpretation"].shape[0])
    return {
        "source": source,
        "source_kind": kind,
        "sample_rate": rate,
        "samples": samples,
        "seconds": samples / rate,
        "target_class": names[int(result["target_class"])],
        "threshold": float(threshold),
        "top_n": metadata["top_n"],
        "domain": metadata["domain"],
        "aggregate": metadata.get("aggregate", "mean"),
        "window_seconds": metadata["window_samples"] / rate if "window_samples" in metadata else None,
        "classifier": probabilities("class_probabilities"),
        "interpreter": probabilities("interpreter_probabilities"),
        "relevance": [float(v) for v in result["relevance"]],
        "selected": selected,
        "timeline": timeline(result, names, rate),
        "audio": {"interpretation": result["interpretation"], "components": components},
    }


def timeline(result: dict, names, rate: int) -> list[dict]:
    """Per window of one recording's outputs: start and end (seconds), the classifier's prediction and its
    probability, the selected components. Windows padded past a recording's end (``explain_wav``) are left out."""
    if "window_start" not in result:  # an export made before timelines
        return []
    windows = []
    for start, end, predicted, probabilities, selected in zip(
        result["window_start"],
        result["window_end"],
        result["window_predicted_class"],
        result["window_class_probabilities"],
        result["window_selected"],
        strict=True,
    ):
        if predicted < 0:
            continue
        windows.append(
            {
                "start": int(start) / rate,
                "end": int(end) / rate,
                "predicted": names[int(predicted)],
                "probability": float(probabilities[int(predicted)]),
                "selected": [int(k) for k in selected.nonzero()[0]],
            }
        )
    return windows


EXPLANATION_JSON = "explanation.json"


def explanation_files(folder: Path) -> list[Path]:
    """The files an explanation written into ``folder`` consists of (:func:`write_explanation`), if any."""
    named = [folder / EXPLANATION_JSON, folder / "interpretation.wav"]
    return [p for p in named if p.is_file()] + sorted(folder.glob("component_[0-9][0-9][0-9].wav"))


def write_explanation(result: dict, out: str | Path, **fields) -> dict:
    """Write ``interpretation.wav``, ``component_<k>.wav`` per selected component among the top N (one selected past
    them, in some windows of a long recording, is listed with ``"file": null``) and ``explanation.json`` (the summary
    of :func:`explain_waveform` with ``fields`` added) into ``out``; returns the JSON's content. An explanation
    already in ``out`` is replaced whole (none of its component files is left behind)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in explanation_files(out):
        old.unlink()
    rate = result["sample_rate"]
    sound = result["audio"]
    soundfile.write(out / "interpretation.wav", sound["interpretation"], rate, subtype="FLOAT")
    report = {**fields, **{key: value for key, value in result.items() if key != "audio"}}
    report["selected"] = []
    for entry in result["selected"]:
        file = None  # a component selected past the top N has no audio of its own
        if entry["component"] in sound["components"]:
            file = f"component_{entry['component']:03d}.wav"
            soundfile.write(out / file, sound["components"][entry["component"]], rate, subtype="FLOAT")
        report["selected"].append({**entry, "file": file})
    report["interpretation"] = "interpretation.wav"
    files.write_json(out / EXPLANATION_JSON, report)
    return report


def explain_file(source: ExplainSource, path: str | Path, out: str | Path, class_name: str | None = None) -> dict:
    """Explain one audio file into ``out`` (see :func:`write_explanation`); returns the JSON's content.

    Raises:
        l2i_tf.data.AudioDataError: unreadable or empty file. ValueError: unknown class name.
        tf.errors.OpError: rejected by the graph (NaN/Inf samples, too long for the export), or an op failed on it
            (e.g. shorter than the classifier can take).
    """
    waveform = load_audio(path, source.sample_rate)
    return write_explanation(explain_waveform(source, waveform, class_name), out, input=str(path))


def graph_error_message(error: Exception) -> str:
    """The readable part of a TensorFlow runtime error: a failed assertion's text (without node names), or for
    any other op error (e.g. a classifier that cannot take an input this short) the error's kind and first line."""
    text = getattr(error, "message", str(error))
    text = re.sub(r"\{\{[^}]*\}\}", "", text).split("\n")[0].strip()
    if isinstance(error, tf.errors.OpError) and "assertion failed: " not in text:
        return f"the explanation graph failed on it ({type(error).__name__}: {text})"
    text = text.replace("assertion failed: ", "")
    return re.sub(r"\] \[", " ", text).strip("[] ").replace("\\'", "'")
