"""The one Explainer: a functional Keras graph from a waveform batch to its interpretation, predictions and relevance.

Everything that explains — ``l2i-tf explain``, the SavedModel signatures, ``l2i-tf evaluate`` and ``l2i-tf report``
— runs this graph. The classifier and Ψ/Θ run once, the NMF STFT once, the selected components' soft masks are
fused into one mask, and the synthesis is one batched ISTFT per output::

    waveform ─ guard ─ prepare ─┬─ classifier f (tapped layers, logits) ─ feature sequences ─┐
                                └─ STFT: X, phase ────────────────────────────────────────── heads: Ψ -> H -> Θ
    Θ contributions, target class ─ relevance ─ selection (top-N, τ) ─ NMF soft masks ─ ISTFT ─ interpretation

A recording longer than one window (the classifier's fixed input, or ``ExplainConfig.window_seconds``) is
explained as a timeline of windows by :mod:`l2i_tf.recording` on the same layers; the functional graph here is
the graph of one window.

Outputs (B clips, S samples, K components, C classes, N top components): ``interpretation`` float32 [B, S],
``predicted_class`` int32 [B], ``predicted_class_name`` string [B], ``class_probabilities`` [B, C] (the
classifier's), ``interpreter_probabilities`` [B, C], ``relevance`` [B, K], ``selected`` bool [B, K], and with
components ``target_class`` [B], ``component_indices`` int32 [B, N], ``component_relevance`` [B, N],
``component_selected`` bool [B, N], ``component_audio`` [B, N, S] (the N most relevant components' audio).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import numbers

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, batches, recording, timeline
from l2i_tf.explain_layers import (
    Active,
    ClassNames,
    FitLength,
    PredictedClass,
    Probabilities,
    Relevance,
    Selection,
    TargetClass,
    WaveformGuard,
)
from l2i_tf.settings import Settings

CLIP_OUTPUTS = (
    "interpretation",
    "predicted_class",
    "predicted_class_name",
    "class_probabilities",
    "interpreter_probabilities",
    "relevance",
    "selected",
)
SERVING_OUTPUTS = (*CLIP_OUTPUTS, *recording.TIMELINE_OUTPUTS)
COMPONENT_OUTPUTS = (
    "target_class",
    "component_indices",
    "component_relevance",
    "component_selected",
    "component_audio",
)
CLASSIFY_OUTPUTS = ("class_probabilities", "predicted_class", "predicted_class_name", "class_names")
THRESHOLD_RANGE = (-1.0, 1.0)  # relevance's range (l2i_tf.explain.relevance)


def threshold_problem(tau) -> str | None:
    """Why ``tau`` cannot be a threshold τ, naming it (None: it can): not a number, or outside relevance's range.

    Components with relevance > τ are selected: above 1 none ever would be, below -1 all would be. The edges are
    kept: τ = 1 selects none, τ = -1 all but a component of relevance exactly -1. The one rule of the settings
    (:class:`ExplainConfig`, an export's τ, an evaluation's τ values) and of the CLI's ``--threshold``; a τ fed to
    the explanation graph itself (:meth:`Explainer.explain`, the SavedModel's ``explain`` signature) is not
    checked (see :func:`l2i_tf.explain.select`)."""
    low, high = THRESHOLD_RANGE
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or tau != tau:
        return f"{tau!r} is not a number"
    if not low <= tau <= high:
        effect = "no component would ever be selected" if tau > high else "every component would be selected"
        return (
            f"{tau:g} is outside [{low:g}, {high:g}], the range of relevance (components with relevance > τ are "
            f"selected): {effect}"
        )
    return None


def check_threshold(tau) -> float:
    """τ as a float; a ``ValueError`` naming it if :func:`threshold_problem` finds one."""
    problem = threshold_problem(tau)
    if problem:
        raise ValueError(f"threshold {problem}")
    return float(tau)


@dataclasses.dataclass(frozen=True)
class ExplainConfig(Settings):
    """What an Explainer (and an export of it) fixes.

    Attributes:
        threshold: default τ: components with relevance > τ are selected; in relevance's range [-1, 1]
            (:func:`threshold_problem`).
        top_n: N, at most this many components are selected, and the N most relevant ones get their own audio.
            0: no limit (N = K).
        domain: mask domain, one of :data:`l2i_tf.audio.DOMAINS`.
        max_seconds: longest accepted recording, seconds (0: no limit).
        window_seconds: window of a recording's timeline, seconds. 0: the classifier's fixed input length, or for
            a variable-length classifier the whole recording up to 10 s (longer ones in 10 s windows).
        aggregate: the recording's decision from its windows' logits, ``"mean"`` or ``"max"``.
    """

    threshold: float = 0.3
    top_n: int = 10
    domain: str = "linear"
    max_seconds: float = 600.0
    window_seconds: float = 0.0
    aggregate: str = "mean"

    def __post_init__(self):
        if not isinstance(self.top_n, int) or isinstance(self.top_n, bool) or self.top_n < 0:
            raise ValueError(f"top_n must be a non-negative integer, got {self.top_n!r}")
        audio.check_domain(self.domain)
        if not self.max_seconds >= 0:
            raise ValueError(f"max_seconds must be >= 0 (0: no limit), got {self.max_seconds!r}")
        check_threshold(self.threshold)
        if not self.window_seconds >= 0:
            raise ValueError(f"window_seconds must be >= 0 (0: the classifier's input), got {self.window_seconds!r}")
        if self.max_seconds and self.window_seconds > self.max_seconds:
            raise ValueError(
                f"window_seconds {self.window_seconds:g} is longer than max_seconds {self.max_seconds:g}: no accepted "
                "recording fills one window"
            )
        timeline.check_aggregate(self.aggregate)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _layers(interpreter, class_names, config: ExplainConfig, top_n: int, max_samples: int) -> dict:
    """The Explainer's own layers (the interpreter's are shared), by role."""
    stft = interpreter.stft_config
    return {
        "guard": WaveformGuard(max_samples, stft.sample_rate, name="guard"),
        "predicted": PredictedClass(name="predicted_class"),
        "target": TargetClass(len(class_names), name="target"),
        "active": Active(name="active"),
        "relevance": Relevance(name="relevance"),
        "selection": Selection(top_n, name="selection"),
        "synthesis": audio.MaskedSynthesis(stft.to_dict(), config.domain, name="synthesis"),
        "fit": FitLength(name="fit_length"),
        "classifier_probabilities": Probabilities(interpreter.multilabel, name="class_probabilities"),
        "interpreter_probabilities": Probabilities(interpreter.multilabel, name="interpreter_probabilities"),
        "class_name": ClassNames(class_names, name="class_name"),
        "class_names": ClassNames(class_names, table=True, name="class_names"),
    }


def _graph(interpreter, layers: dict):
    """The explanation graph of one clip (one window) on the layers: (inputs, every output)."""
    inputs = {
        "waveform": keras.Input((None,), name="waveform"),
        "target_class": keras.Input((), dtype="int32", name="target_class"),
        "threshold": keras.Input((), name="threshold"),
    }
    waveform = layers["guard"](inputs["waveform"])
    out = interpreter.stages.flow(waveform)
    x, phase, h = out["spectrogram"], out["phase"], out["activations"]
    predicted = layers["predicted"](out["classifier_logits"])
    target = layers["target"](inputs["target_class"], out["classifier_logits"])
    active = layers["active"](x)
    relevance = layers["relevance"](out["contributions"], target, active)
    indices, values, chosen, selected = layers["selection"](relevance, inputs["threshold"], active)
    synthesis, fit = layers["synthesis"], layers["fit"]
    mask = interpreter.decoder(h, indices=indices, selected=chosen)  # the selection is among the top N
    parts = interpreter.decoder(h, indices=indices)
    outputs = {
        "interpretation": fit(synthesis(x, phase, mask, out["waveform"]), waveform),
        "predicted_class": predicted,
        "predicted_class_name": layers["class_name"](predicted),
        "class_probabilities": layers["classifier_probabilities"](out["classifier_logits"]),
        "interpreter_probabilities": layers["interpreter_probabilities"](out["logits"]),
        "relevance": relevance,
        "selected": selected,
        "target_class": target,
        "component_indices": indices,
        "component_relevance": values,
        "component_selected": chosen,
        "component_audio": fit(synthesis(x, phase, parts, out["waveform"]), waveform),
    }
    return inputs, outputs


@keras.saving.register_keras_serializable(package="l2i_tf")
class Explainer(keras.Model):
    """The explanation pipeline of one interpreter, as one functional Keras graph (core TensorFlow ops only).

    Called on ``{"waveform" [B, S], "target_class" int32 [B] (-1: the classifier's prediction), "threshold" [B]}``
    it returns every output of the module docstring. :meth:`explain` and :meth:`classify` are the convenient
    entry points; the SavedModel signatures wrap the same graph.

    Args:
        interpreter: a trained :class:`~l2i_tf.interpreter.Interpreter`.
        class_names: C names.
        config: an :class:`ExplainConfig` (or its dict).
    """

    def __init__(self, interpreter, class_names, config=None, **kwargs):
        if isinstance(config, dict):
            config = ExplainConfig(**config)
        config = config or ExplainConfig()
        if len(class_names) != interpreter.num_classes:
            raise ValueError(f"{len(class_names)} class names for a classifier with {interpreter.num_classes} classes")
        top_n = min(config.top_n, interpreter.k) if config.top_n else interpreter.k
        rate = interpreter.stft_config.sample_rate
        max_samples = int(round(config.max_seconds * rate)) if config.max_seconds else 0
        stft = interpreter.stft_config
        window = timeline.check_window(config.window_seconds, rate, interpreter.clip_samples, stft.frame_length)
        layers = _layers(interpreter, tuple(class_names), config, top_n, max_samples)
        inputs, outputs = _graph(interpreter, layers)
        super().__init__(inputs=inputs, outputs=outputs, **{"name": "explainer", **kwargs})
        self.interpreter = interpreter
        self.class_names = tuple(class_names)
        self.config = config
        self.top_n = top_n
        self.max_samples = max_samples
        self.sample_rate = rate
        self.stft_config = interpreter.stft_config
        self.num_components = interpreter.k
        self.multilabel = interpreter.multilabel
        self.window_samples = window
        self.hop_samples = max(window // 2, 1)
        self.parts = recording.Parts(
            interpreter.stages,
            interpreter.decoder,
            layers,
            window,
            self.hop_samples,
            top_n,
            config.aggregate,
            int(timeline.CHUNK_SECONDS * rate),
        )
        self.calls = _Calls(self, interpreter)

    @property
    def dictionary(self) -> tf.Tensor:
        """W [F, K]."""
        return tf.convert_to_tensor(self.interpreter.decoder.weights[0])

    def check_waveform(self, waveform) -> tf.Tensor:
        """float32 [B, S]; a wrong rank or dtype is a ``ValueError`` before anything is traced."""
        waveform = tf.convert_to_tensor(waveform)
        if waveform.shape.rank != 2:
            raise ValueError(f"waveform must be [batch, samples] (rank 2), got shape {waveform.shape}")
        if not waveform.dtype.is_floating:
            raise ValueError(f"waveform must be floating point, got dtype {waveform.dtype.name}")
        return tf.cast(waveform, tf.float32)

    def explain(self, waveform, target_class=None, threshold=None, components: bool = False) -> dict:
        """Explain a batch of recordings: predictions, relevance, selection, interpretation and timeline (and the
        top-N components' audio); windowed as in :mod:`l2i_tf.recording`.

        Args:
            waveform: float32 [B, S] at the model's sample rate.
            target_class: int [B] or scalar class to explain; -1 or None: the classifier's prediction.
            threshold: τ, a scalar or [B]; None: the config's. A graph input like the SavedModel's, not range-checked:
                τ >= 1 selects none, τ < -1 every component (:func:`threshold_problem` checks settings).
            components: also return the audio of the N most relevant components.

        Returns:
            dict of tensors (see the module docstring).
        """
        waveform = self.check_waveform(waveform)
        batch = tf.shape(waveform)[:1]
        target = tf.broadcast_to(tf.cast(-1 if target_class is None else target_class, tf.int32), batch)
        tau = self.config.threshold if threshold is None else threshold
        tau = tf.broadcast_to(tf.cast(tau, tf.float32), batch)
        return (self.calls.explain if components else self.calls.serve)(waveform, target, tau)

    def classify(self, waveform) -> dict:
        """Waveform [B, S] -> the classifier's ``class_probabilities`` [B, C], ``predicted_class`` [B], its name and
        ``class_names`` [B, C] (of the whole recording: window logits aggregated)."""
        return self.calls.classify(self.check_waveform(waveform))

    def analyze(self, waveform) -> dict:
        """Waveform [B, S] -> every output of the interpreter (H, z, X, phase, logits, ...; see
        :class:`~l2i_tf.interpreter.Interpreter`)."""
        return self.calls.analyze(self.check_waveform(waveform))

    def classifier_logits(self, waveforms: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The classifier's logits [n, C] for waveforms [n, S] (numpy), in batches."""
        return batches.map_batches(self.calls.logits, np.asarray(waveforms, "float32"), batch_size)

    def explain_arrays(self, waveforms: np.ndarray, batch_size: int = 16, **kwargs) -> dict:
        """:meth:`explain` over many equal-length clips in batches; numpy outputs."""
        return batches.map_batches(lambda w: self.explain(w, **kwargs), np.asarray(waveforms, "float32"), batch_size)

    def metadata(self) -> dict:
        """What a consumer of the explanations needs to know (stored with an export)."""
        return {
            "class_names": list(self.class_names),
            "sample_rate": self.sample_rate,
            "stft": self.stft_config.to_dict(),
            "k": self.num_components,
            "top_n": self.top_n,
            "threshold": self.config.threshold,
            "domain": self.config.domain,
            "max_seconds": self.config.max_seconds,
            "max_samples": self.max_samples,
            "window_seconds": self.config.window_seconds,
            "window_samples": self.window_samples,
            "hop_samples": self.hop_samples,
            "aggregate": self.config.aggregate,
            "multilabel": self.multilabel,
        }

    def get_config(self):
        return {
            **keras.layers.Layer.get_config(self),  # name, trainable, dtype (not the functional graph: rebuilt)
            "interpreter": keras.saving.serialize_keras_object(self.interpreter),
            "class_names": list(self.class_names),
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # Keras' deserialisation consumes nested configs
        config["interpreter"] = keras.saving.deserialize_keras_object(config["interpreter"])
        return cls(**config)


class _Calls:
    """The Explainer's graphs as ``tf.function``s with input signatures (traced once per shape class). A plain object,
    so neither Keras nor a SavedModel tracks these functions. No AutoGraph: the graphs' loops and branches are
    ``tf.while_loop`` and ``tf.cond`` already (converting the ~40 functions they call took ~2.5 s of CPU at the start
    of an explanation or an export)."""

    def __init__(self, explainer: Explainer, interpreter):
        waveform = tf.TensorSpec([None, None], tf.float32)
        spec = [waveform, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None])]
        parts = explainer.parts
        graph = functools.partial(tf.function, autograph=False)
        self.serve = graph(
            lambda w, t, th: recording.explain_recording(parts, w, t, th, components=False), input_signature=spec
        )
        self.explain = graph(
            lambda w, t, th: recording.explain_recording(parts, w, t, th, components=True), input_signature=spec
        )
        self.classify = graph(lambda w: recording.classify(parts, w), input_signature=[waveform])
        self.analyze = graph(lambda w: interpreter(w, training=False), input_signature=[waveform])
        self.logits = graph(lambda w: interpreter.stages.features(w)["classifier_logits"], input_signature=[waveform])
