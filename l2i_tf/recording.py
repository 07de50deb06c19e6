"""The Explainer's graph over a whole recording: windows (:mod:`l2i_tf.timeline`) through the Explainer's own
layers, in two passes of bounded batches.

1. Every window: the frozen classifier, Ψ/Θ -> window logits, H, Θ's contributions (no STFT: Ψ reads only the
   frame count, which the window's length gives).
2. The recording's decision aggregates the window logits; its class (or the asked one) is the target in every
   window: relevance and selection per window, the recording's relevance is their mean, its N components (with
   component audio) those selected in some window first, then the most relevant others of that mean.
3. Every window again: its one STFT, the selected components' soft mask and the N components' masks (each where
   its window selects it, or everywhere if no window does) -> ISTFT; each batch of windows is put on the hop grid
   and overlap-added into the recording's output as it comes (memory: the outputs and one batch). The classifier
   does not run again.

Outputs: those of :mod:`l2i_tf.explainer` for the whole recording, plus the timeline (W windows):
``window_start`` / ``window_end`` int32 [B, W] (samples), ``window_predicted_class`` int32 [B, W],
``window_class_probabilities`` [B, W, C] (the classifier's) and ``window_selected`` bool [B, W, K].
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from l2i_tf import timeline

TIMELINE_OUTPUTS = (
    "window_start",
    "window_end",
    "window_predicted_class",
    "window_class_probabilities",
    "window_selected",
)


@dataclasses.dataclass(frozen=True)
class Parts:
    """The layers and settings the recording graph runs (the Explainer's own layer objects, shared weights)."""

    stages: object  # the interpreter's stages (see l2i_tf.interpreter)
    decoder: keras.layers.Layer
    layers: dict  # guard, target, active, relevance, selection, synthesis, fit, probabilities, predicted, names
    window: int
    hop: int
    top_n: int
    aggregate: str
    chunk_samples: int

    def __getattr__(self, name):
        if name == "layers":
            raise AttributeError(name)
        try:
            return self.layers[name]
        except KeyError:
            raise AttributeError(name) from None


def _first_pass(parts: Parts, windows) -> dict:
    """The classifier and Ψ/Θ; no STFT (Ψ needs only the frame count, silence is read on the waveform)."""
    out = parts.stages.without_spectrogram(windows)
    out["active"] = parts.active(out.pop("waveform"))
    return out


def _second_pass(parts: Parts, windows, h, window_top, chosen, indices=None, gate=None) -> dict:
    """The window's one STFT, masked by its selected components (``chosen`` among its N most relevant,
    ``window_top``), and, given ``indices``, by each of the recording's top N (silenced where ``gate`` [N] is
    False) -> ISTFT."""
    prepared = parts.stages.prepare(windows)
    spectrum = parts.synthesis.spectrum(prepared)
    mask = parts.decoder(h, indices=window_top, selected=chosen)
    out = {"interpretation": parts.fit(parts.synthesis.from_spectrum(spectrum, mask, prepared), windows)}
    if indices is not None:
        masks = parts.decoder(h, indices=indices)
        audio = parts.fit(parts.synthesis.from_spectrum(spectrum, masks, prepared), windows)
        out["component_audio"] = audio * tf.cast(gate, audio.dtype)[:, :, None]
    return out


def _recording_components(relevance, selected, n) -> tuple[tf.Tensor, tf.Tensor]:
    """The recording's N components (int32 [B, N]) and their relevance: those selected in some window first, by
    decreasing mean relevance, then the most relevant others (one window: its top N, as
    :func:`l2i_tf.explain.top_components`)."""
    order = tf.argsort(relevance, axis=1, direction="DESCENDING", stable=True)  # ties: lower index first
    first = tf.argsort(tf.cast(tf.gather(selected, order, batch_dims=1), tf.int32), 1, "DESCENDING", stable=True)
    indices = tf.gather(order, first, batch_dims=1)[:, :n]
    return indices, tf.gather(relevance, indices, batch_dims=1)


def _windows(parts: Parts, waveform):
    """(S, window length L, windows per recording W, windows [B·W, L], audio per batch of windows): recordings
    of one window are one batch, as the caller batched them; longer ones go :attr:`Parts.chunk_samples` at a time."""
    samples = tf.shape(waveform)[1]
    length, count = timeline.plan(samples, parts.window, parts.hop)
    frames = timeline.frame(waveform, length, parts.hop, count)
    chunk = tf.where(count > 1, parts.chunk_samples, tf.shape(waveform)[0] * length)
    return samples, length, count, tf.reshape(frames, [-1, length]), chunk


def _per_recording(x, batch, count):
    return tf.reshape(x, tf.concat([[batch, count], tf.shape(x)[1:]], 0))


def classify(parts: Parts, waveform) -> dict:
    """Waveform [B, S] -> the classifier's decision on the whole recording: ``class_probabilities`` [B, C],
    ``predicted_class`` [B], its name and ``class_names`` [B, C] (window logits aggregated)."""
    waveform = parts.guard(waveform)
    _, length, count, flat, chunk = _windows(parts, waveform)
    first = timeline.map_chunks(
        lambda w: {"logits": parts.stages.features(w)["classifier_logits"]},
        (flat,),
        chunk,
        length,
        {"logits": tf.float32},
    )
    logits = timeline.aggregate_logits(_per_recording(first["logits"], tf.shape(waveform)[0], count), parts.aggregate)
    predicted = parts.predicted(logits)
    return {
        "class_probabilities": parts.classifier_probabilities(logits),
        "predicted_class": predicted,
        "predicted_class_name": parts.class_name(predicted),
        "class_names": parts.class_names(predicted),
    }


def explain_recording(parts: Parts, waveform, target_class, threshold, components: bool) -> dict:
    """Waveform [B, S], target class int32 [B] (-1: the recording's decision), τ [B] -> the outputs of the module
    docstring (``components``: also ``target_class``, ``component_*``)."""
    waveform = parts.guard(waveform)
    batch = tf.shape(waveform)[0]
    samples, length, count, flat, chunk = _windows(parts, waveform)
    signature = {"classifier_logits": tf.float32, "logits": tf.float32, "contributions": tf.float32}
    signature.update(activations=tf.float32, active=tf.bool)
    first = timeline.map_chunks(lambda w: _first_pass(parts, w), (flat,), chunk, length, signature)

    def recording(x):
        return _per_recording(x, batch, count)

    window_logits = recording(first["classifier_logits"])
    logits = timeline.aggregate_logits(window_logits, parts.aggregate)
    target = parts.target(target_class, logits)
    active = first["active"]
    relevance = parts.relevance(first["contributions"], tf.repeat(target, count), active)
    window_top, _, chosen, selected = parts.selection(relevance, tf.repeat(threshold, count), active)
    mean_relevance = tf.reduce_mean(recording(relevance), axis=1)
    any_selected = tf.reduce_any(recording(selected), axis=1)
    last = tf.tile(tf.range(count) == count - 1, [batch])  # the window that ends at the recording's end
    shift = timeline.last_shift(length, parts.hop, count, samples)
    elems = (last, flat, first["activations"], window_top, chosen)
    signature = {"interpretation": (tf.float32, [])}
    if components:
        indices, values = _recording_components(mean_relevance, any_selected, parts.top_n)
        # a component selected in some windows is heard in those only, so the selected ones' audio adds up to the
        # interpretation; one selected nowhere is heard in every window (one window: every top-N component whole)
        window_indices = tf.repeat(indices, count, axis=0)
        gate = tf.gather(selected, window_indices, batch_dims=1) | ~tf.repeat(
            tf.gather(any_selected, indices, batch_dims=1), count, axis=0
        )
        elems += (window_indices, gate)
        signature["component_audio"] = (tf.float32, [parts.top_n])

    def second_pass(is_last, *window):
        return {key: timeline.on_grid(x, is_last, shift) for key, x in _second_pass(parts, *window).items()}

    second = timeline.overlap_add_chunks(
        second_pass,
        elems,
        chunk,
        length,
        parts.hop,
        count,
        batch,
        samples,
        signature,
    )
    predicted = parts.predicted(logits)
    start, end = timeline.window_bounds(batch, length, parts.hop, count, samples)
    out = {
        "interpretation": second["interpretation"],
        "predicted_class": predicted,
        "predicted_class_name": parts.class_name(predicted),
        "class_probabilities": parts.classifier_probabilities(logits),
        "interpreter_probabilities": parts.interpreter_probabilities(
            timeline.aggregate_logits(recording(first["logits"]), parts.aggregate)
        ),
        "relevance": mean_relevance,
        "selected": any_selected,
        "window_start": start,
        "window_end": end,
        "window_predicted_class": parts.predicted(window_logits),
        "window_class_probabilities": parts.classifier_probabilities(window_logits),
        "window_selected": recording(selected),
    }
    if components:
        out.update(
            target_class=target,
            component_indices=indices,
            component_relevance=values,
            component_selected=tf.gather(any_selected, indices, batch_dims=1),
            component_audio=second["component_audio"],
        )
    return out
