"""One input of `l2i-tf report`: explained, written as audio and figures, and turned into its page entry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import audio, explain_files
from l2i_tf.report_figures import plot_activations, plot_relevance, plot_spectrograms

TOP_PREDICTIONS = 3


@dataclasses.dataclass(frozen=True)
class ReportInput:
    """One clip to explain: its file and, for a bundled example, its true class."""

    path: str
    true_class: str | None = None


class Analysis:
    """The spectrogram and (when an interpreter is at hand) H of a waveform, as ``tf.function``s traced once."""

    def __init__(self, stft: audio.STFTConfig, interpreter=None):
        spec = [tf.TensorSpec([None, None], tf.float32)]  # no AutoGraph: nothing to convert
        self._spectrogram = tf.function(lambda w: audio.analyze(w, stft)[0], input_signature=spec, autograph=False)
        self._activations = None
        if interpreter is not None:
            self._activations = tf.function(
                lambda w: interpreter(w, training=False)["activations"], input_signature=spec, autograph=False
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


def explain_input(source, analysis: Analysis, item: ReportInput, slug: str, folder: Path, class_name=None) -> dict:
    """Explain one input into ``folder/audio/<slug>/`` and ``folder/img/<slug>-*.png``; returns its page entry."""
    # Decode once; the model explains (and the page plays) exactly what was decoded, at the model's rate.
    waveform = explain_files.load_audio(item.path, source.sample_rate)
    explained = explain_files.explain_waveform(source, waveform, class_name)
    players = [{"label": f"Input: {Path(item.path).name}", "src": f"audio/{slug}/input.wav"}]
    return explained_entry(source, analysis, waveform, explained, item, slug, folder, players)


def explained_entry(source, analysis: Analysis, waveform, explained: dict, item: ReportInput, slug, folder, players):
    """Write one explained ``waveform`` (``explained``: :func:`~l2i_tf.explain_files.explain_waveform`'s) as
    ``audio/<slug>/input.wav`` with its interpretation, components and figures; returns its page entry, whose
    players are ``players``, then the interpretation's, then each component's."""
    audio_dir = folder / "audio" / slug
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
        *players,
        {"label": f"Interpretation (explaining {result['target_class']})", "src": f"audio/{slug}/interpretation.wav"},
    ]
    players += [
        {"label": f"Component {s['component']} (relevance {s['relevance']:.2f})", "src": f"audio/{slug}/{s['file']}"}
        for s in result["selected"]
        if s["file"] is not None  # selected past the top N, in some windows: no audio of its own
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
