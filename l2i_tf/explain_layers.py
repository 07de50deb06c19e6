"""Keras layers of the explanation graph: input guard and length, target class, relevance, selection, predictions.

Each layer wraps one step of :mod:`l2i_tf.explain` (or a bookkeeping step) so the Interpreter and the Explainer
are functional Keras graphs from waveform to interpretation that ``summary()``, ``plot_model`` and ``.keras``
files show whole. Shapes: B batch, S samples, T frames, F bins, K components, C classes, N top components.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from l2i_tf import explain


def _register(cls):
    return keras.saving.register_keras_serializable(package="l2i_tf")(cls)


@_register
class PrepareWaveform(keras.layers.Layer):
    """Waveform ``[B, S]`` (or ``[B, S, 1]``) -> float32 ``[B, S]`` as the classifier takes it: zero-padded or
    cropped to ``clip_samples`` for a fixed-length classifier, unchanged otherwise.

    Args:
        clip_samples: the classifier's fixed input length, samples, or None.
    """

    def __init__(self, clip_samples=None, **kwargs):
        super().__init__(**kwargs)
        if clip_samples is not None and (not isinstance(clip_samples, int) or clip_samples < 1):
            raise ValueError(f"clip_samples must be a positive integer or None, got {clip_samples!r}")
        self.clip_samples = clip_samples

    def call(self, waveform):
        waveform = tf.cast(waveform, tf.float32)
        if waveform.shape.rank == 3:
            waveform = tf.squeeze(waveform, -1)
        if self.clip_samples is None:
            return waveform
        n = tf.shape(waveform)[1]
        waveform = tf.pad(waveform[:, : self.clip_samples], [[0, 0], [0, tf.maximum(self.clip_samples - n, 0)]])
        return tf.ensure_shape(waveform, [None, self.clip_samples])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.clip_samples if self.clip_samples is not None else input_shape[1])

    def get_config(self):
        return {**super().get_config(), "clip_samples": self.clip_samples}


@_register
class WaveformGuard(keras.layers.Layer):
    """Asserts, in the graph, that a waveform batch is ``[B, S]`` with ``0 < S <= max_samples`` finite samples.

    A SavedModel signature does not enforce its input's rank, so the rank is read at run time too.

    Args:
        max_samples: longest accepted clip, samples (0: no limit).
        sample_rate: Hz, quoted in the message of a too-long clip.
    """

    def __init__(self, max_samples=0, sample_rate=16000, **kwargs):
        super().__init__(**kwargs)
        self.max_samples = int(max_samples)
        self.sample_rate = int(sample_rate)

    def call(self, waveform):
        waveform = tf.cast(waveform, tf.float32)
        shape = tf.shape(waveform)
        # Graph optimisation folds tf.rank of a [None, None] input to 2: read it through an op of unknown shape.
        rank = tf.size(tf.io.parse_tensor(tf.io.serialize_tensor(shape), tf.int32))
        rank_check = tf.debugging.Assert(
            tf.equal(rank, 2),
            ["waveform must be [batch, samples] (rank 2), got rank", rank, "with shape", shape],
            name="check_rank",
        )
        with tf.control_dependencies([rank_check]):
            waveform = tf.identity(waveform)
        samples = tf.shape(waveform)[1]
        checks = [
            tf.debugging.Assert(
                samples > 0, ["empty waveform: 0 samples; send at least one sample per clip"], name="check_empty"
            ),
            tf.debugging.Assert(shape[0] > 0, ["empty batch: 0 clips; send at least one clip"], name="check_batch"),
        ]
        if self.max_samples:
            seconds = self.max_samples / self.sample_rate
            checks.append(
                tf.debugging.Assert(
                    samples <= self.max_samples,
                    [
                        "clip too long:",
                        samples,
                        f"samples, more than the maximum of this export, {self.max_samples} samples "
                        f"({seconds:g} s at {self.sample_rate} Hz); split the clip or export with a larger maximum "
                        "length",
                    ],
                    name="check_length",
                )
            )
        with tf.control_dependencies(checks):
            return tf.debugging.assert_all_finite(waveform, "waveform holds NaN or Inf samples")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_samples": self.max_samples, "sample_rate": self.sample_rate}


@_register
class TargetClass(keras.layers.Layer):
    """``[target_class [B], classifier_logits [B, C]]`` -> int32 ``[B]``: -1 becomes the classifier's prediction;
    anything outside ``[-1, C)`` fails an in-graph assertion that quotes it.

    Args:
        num_classes: C.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def call(self, target_class, classifier_logits):
        predicted = tf.cast(tf.argmax(classifier_logits, axis=-1), tf.int32)
        target_class = tf.broadcast_to(tf.cast(target_class, tf.int32), tf.shape(predicted))
        ok = tf.reduce_all((target_class >= -1) & (target_class < self.num_classes))
        message = (
            f"target_class must be -1 (the classifier prediction) or a class index in [0, {self.num_classes}), got"
        )
        check = tf.debugging.Assert(ok, [message, target_class], name="check_target_class")
        with tf.control_dependencies([check]):
            return tf.where(target_class < 0, predicted, target_class)

    def compute_output_spec(self, target_class, classifier_logits):
        return keras.KerasTensor((classifier_logits.shape[0],), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@_register
class Active(keras.layers.Layer):
    """X ``[B, T, F]`` or the waveform ``[B, S]`` -> bool ``[B]``: the clip is not all zero (a silent clip has
    nothing to explain: it gets zero relevance and no selection). A silent waveform has an all-zero STFT and any
    other one a nonzero STFT (unless its only nonzero samples fall where every frame's window is 0), so the
    explanation's first pass reads the waveform and needs no STFT."""

    def call(self, spectrogram):
        return tf.reduce_max(tf.abs(spectrogram), axis=list(range(1, spectrogram.shape.rank))) > 0

    def compute_output_spec(self, spectrogram):
        return keras.KerasTensor(spectrogram.shape[:1], dtype="bool")


@_register
class Relevance(keras.layers.Layer):
    """``[contributions [B, K, C], target [B], active bool [B]]`` -> relevance ``[B, K]`` of each component for the
    target class (:func:`l2i_tf.explain.class_relevance`); an inactive (silent) clip gets zeros."""

    def call(self, contributions, target, active):
        r = explain.class_relevance(contributions, target)
        return tf.where(active[:, None], r, tf.zeros_like(r))

    def compute_output_spec(self, contributions, target, active):
        return keras.KerasTensor(contributions.shape[:2], dtype="float32")


@_register
class Selection(keras.layers.Layer):
    """``[relevance [B, K], threshold [B], active bool [B]]`` -> the selected components.

    Returns ``(indices int32 [B, N], values [B, N], chosen bool [B, N], selected bool [B, K])``: the N most
    relevant components by decreasing relevance (ties: lower index), which of them have relevance > τ, and that
    choice as a [B, K] mask. Nothing is selected in an inactive (silent) clip. A NaN threshold fails an in-graph
    assertion.

    Args:
        top_n: N, ``1 <= N <= K``.
    """

    def __init__(self, top_n, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1:
            raise ValueError(f"top_n must be a positive integer, got {top_n!r}")
        self.top_n = top_n

    def call(self, relevance, threshold, active):
        threshold = tf.cast(threshold, tf.float32)
        check = tf.debugging.Assert(
            ~tf.reduce_any(tf.math.is_nan(threshold)), ["threshold is NaN"], name="check_threshold"
        )
        with tf.control_dependencies([check]):
            indices, values = explain.top_components(relevance, self.top_n)
        chosen = (values > threshold[:, None]) & active[:, None]
        k = tf.shape(relevance)[1]
        selected = tf.reduce_max(tf.one_hot(indices, k) * tf.cast(chosen, tf.float32)[..., None], axis=1) > 0
        return indices, values, chosen, selected

    def compute_output_spec(self, relevance, threshold, active):
        batch, k = relevance.shape
        top = (batch, self.top_n)
        return (
            keras.KerasTensor(top, dtype="int32"),
            keras.KerasTensor(top, dtype="float32"),
            keras.KerasTensor(top, dtype="bool"),
            keras.KerasTensor((batch, k), dtype="bool"),
        )

    def get_config(self):
        return {**super().get_config(), "top_n": self.top_n}


@_register
class Probabilities(keras.layers.Layer):
    """Logits ``[B, C]`` -> probabilities: sigmoid (``multilabel``) or softmax."""

    def __init__(self, multilabel=False, **kwargs):
        super().__init__(**kwargs)
        self.multilabel = bool(multilabel)

    def call(self, logits):
        return tf.sigmoid(logits) if self.multilabel else tf.nn.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "multilabel": self.multilabel}


@_register
class PredictedClass(keras.layers.Layer):
    """Logits ``[B, C]`` -> the index of the largest, int32 ``[B]``."""

    def call(self, logits):
        return tf.cast(tf.argmax(logits, axis=-1), tf.int32)

    def compute_output_spec(self, logits):
        return keras.KerasTensor(logits.shape[:1], dtype="int32")


@_register
class ClassNames(keras.layers.Layer):
    """Class indices (int ``[B]``) -> names (string ``[B]``); with ``table=True``, any ``[B, ...]`` tensor -> every
    class name per clip (string ``[B, C]``).

    Args:
        class_names: C names.
        table: return the whole name list per clip.
    """

    def __init__(self, class_names, table=False, **kwargs):
        super().__init__(**kwargs)
        self.class_names = tuple(str(n) for n in class_names)
        self.table = bool(table)

    def call(self, x):
        names = tf.constant(self.class_names)
        if self.table:
            return tf.tile(names[None], tf.stack([tf.shape(x)[0], 1]))
        return tf.gather(names, x)

    def compute_output_spec(self, x):
        shape = (x.shape[0], len(self.class_names)) if self.table else x.shape
        return keras.KerasTensor(shape, dtype="string")

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names), "table": self.table}


@_register
class FitLength(keras.layers.Layer):
    """``[waves [..., S'], reference [B, S]]`` -> waves cropped or zero-padded to S samples along the last axis
    (undoes a fixed-length classifier's pad/crop, so the output is as long as the input)."""

    def call(self, waves, reference):
        samples = tf.shape(reference)[-1]
        waves = waves[..., :samples]
        pad = tf.maximum(samples - tf.shape(waves)[-1], 0)
        return tf.pad(waves, [[0, 0]] * (waves.shape.rank - 1) + [[0, pad]])

    def compute_output_spec(self, waves, reference):
        return keras.KerasTensor((*waves.shape[:-1], reference.shape[-1]), dtype="float32")
