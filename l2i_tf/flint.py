"""FLINT, post-hoc (Parekh et al., "A Framework to Learn with Interpretation", NeurIPS 2021): attributes Φ read from
the classifier's tapped layers, a linear head h on Φ, a decoder d that reconstructs X from Φ (no NMF). Its
attributes are not listenable: the evaluation gives it fidelity and timing only.

Reference code: jayneelparekh/FLINT (``flint.py``, ``networks.py``: ``attr_RN18_multi`` — conv per tapped layer,
concatenation, conv, adaptive average pooling, linear layer to the attributes with ReLU; ``explainer`` — one linear
layer). Here the classifier stays frozen (post-hoc) and Φ reads the same sequences as L2I's Ψ
(:class:`~l2i_tf.layers.FeatureSequences`).
"""

from __future__ import annotations

import copy

import keras
import tensorflow as tf

from l2i_tf import audio, losses
from l2i_tf.layers import resize_time


def _register(cls):
    return keras.saving.register_keras_serializable(package="l2i_tf")(cls)


class BaselineFitError(ValueError):
    """A baseline that cannot be built for this classifier or input (``baseline`` names it)."""

    def __init__(self, baseline: str, message: str):
        super().__init__(f"{baseline}: {message}")
        self.baseline = baseline


def check_sequences(shapes, names) -> None:
    """Raise :class:`BaselineFitError` unless every tapped sequence is ``[batch, time, width]`` with a static width
    (what FLINT's per-layer convolutions read)."""
    for shape, name in zip(shapes, names, strict=True):
        if len(shape) != 3 or shape[-1] is None:
            raise BaselineFitError(
                "flint",
                f"tapped layer {name!r} gives a sequence of shape {tuple(shape)}; FLINT reads [batch, time, "
                "width] with a static width",
            )


@_register
class FlintAttributes(keras.layers.Layer):
    """Ψ_FLINT: the tapped sequences ``[batch, t_i, width_i]`` -> attributes Φ ``[batch, J] >= 0``.

    A Conv1D (ReLU) per sequence, each resampled (bilinear) to the longest one's frames, concatenated, a Conv1D with
    ReLU, the average over time (adaptive average pooling to one step), a dense layer to J with ReLU.

    Args:
        attributes: J.
        hidden: channels per branch and after merging.
        kernel_size: temporal kernel of the Conv1D layers.
    """

    def __init__(self, attributes, hidden=128, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.attributes = int(attributes)
        self.hidden = int(hidden)
        self.kernel_size = int(kernel_size)
        self.branches = []

    def build(self, input_shapes):
        for i, shape in enumerate(input_shapes):
            conv = keras.layers.Conv1D(self.hidden, self.kernel_size, padding="same", activation="relu", name=f"b{i}")
            conv.build((None, None, shape[-1]))
            self.branches.append(conv)
        self.merge = keras.layers.Conv1D(self.hidden, self.kernel_size, padding="same", activation="relu", name="m")
        self.merge.build((None, None, self.hidden * len(input_shapes)))
        self.to_attributes = keras.layers.Dense(self.attributes, activation="relu", name="to_attributes")
        self.to_attributes.build((None, self.hidden))

    def call(self, sequences):
        outs = [branch(x) for x, branch in zip(sequences, self.branches)]
        frames = tf.reduce_max(tf.stack([tf.shape(o)[1] for o in outs]))
        outs = [resize_time(o, frames) for o in outs]
        x = self.merge(tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0])
        return self.to_attributes(tf.reduce_mean(x, axis=1))

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], self.attributes)

    def get_config(self):
        config = super().get_config()
        config.update(attributes=self.attributes, hidden=self.hidden, kernel_size=self.kernel_size)
        return config


@_register
class FlintDecoder(keras.layers.Layer):
    """d: ``[Φ [batch, J], X [batch, T, F]]`` -> X̂ ``[batch, T, F]`` (X gives only the frame count T).

    A dense layer to ``steps`` coarse frames of ``hidden`` channels, resampled (bilinear) to T, a Conv1D (ReLU)
    and a 1x1 Conv1D to F bins.

    Args:
        num_bins: F.
        hidden: channels of the coarse frames.
        steps: coarse frames before resampling.
    """

    def __init__(self, num_bins, hidden=64, steps=16, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = int(num_bins)
        self.hidden = int(hidden)
        self.steps = int(steps)

    def build(self, input_shapes):
        self.expand = keras.layers.Dense(self.steps * self.hidden, activation="relu", name="expand")
        self.expand.build(input_shapes[0])
        self.smooth = keras.layers.Conv1D(self.hidden, 3, padding="same", activation="relu", name="smooth")
        self.smooth.build((None, None, self.hidden))
        self.to_bins = keras.layers.Conv1D(self.num_bins, 1, name="to_bins")
        self.to_bins.build((None, None, self.hidden))

    def call(self, inputs):
        attributes, spectrogram = inputs
        coarse = tf.reshape(self.expand(attributes), [-1, self.steps, self.hidden])
        x = resize_time(coarse, tf.shape(spectrogram)[1])
        return self.to_bins(self.smooth(x))

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins, "hidden": self.hidden, "steps": self.steps}


def cached_spectrogram(batch: dict, analysis) -> tf.Tensor:
    """X of a batch: read from the feature cache (``spectrogram``) or made from its waveform by ``analysis``."""
    if "spectrogram" in batch:
        return tf.cast(batch["spectrogram"], tf.float32)
    return analysis(batch["waveform"])[0]


def fidelity_metric(multilabel: bool):
    """Θ-style fidelity tracked during fit: micro-AUPRC (multi-label) or top-1 agreement with the classifier."""
    if multilabel:
        return keras.metrics.AUC(curve="PR", name="fidelity_micro_auprc")
    return keras.metrics.Mean(name="fidelity_top1")


def update_fidelity(metric, classifier_logits, logits, multilabel: bool) -> None:
    if multilabel:
        target = tf.cast(tf.sigmoid(classifier_logits) > 0.5, tf.float32)
        metric.update_state(tf.reshape(target, [-1]), tf.reshape(tf.sigmoid(logits), [-1]))
    else:
        same = tf.equal(tf.argmax(logits, -1), tf.argmax(classifier_logits, -1))
        metric.update_state(tf.cast(same, tf.float32))


class FidelityTraining:
    """The train/test steps FLINT and VIBI share: a subclass's ``_step(batch, training)`` returns (loss terms with
    ``"loss"``, its logits); ``trackers`` (one Mean per term) and ``fidelity_metric`` record them. In training steps
    the relaxed forms run (VIBI's relaxed top-k), in test steps the hard ones."""

    def _record(self, terms, batch, logits):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        update_fidelity(self.fidelity_metric, batch["classifier_logits"], logits, self.multilabel)
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [*self.trackers.values(), self.fidelity_metric]

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            terms, logits = self._step(batch, training=True)
        grads = tape.gradient(terms["loss"], self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._record(terms, batch, logits)

    def test_step(self, batch):
        terms, logits = self._step(batch, training=False)
        return self._record(terms, batch, logits)


@_register
class Flint(FidelityTraining, keras.Model):
    """FLINT's interpreter of a frozen classifier: ``[seq_1..seq_n, X]`` -> ``attributes`` Φ ``[batch, J]``,
    ``logits`` h(Φ) ``[batch, C]``, ``reconstruction`` d(Φ) ``[batch, T, F]``.

    ``train_step`` reads cached batches (``sequences``, ``classifier_logits``, ``spectrogram`` or ``waveform``; see
    :mod:`l2i_tf.feature_cache`) and minimises :func:`~l2i_tf.losses.flint_loss`.

    Args:
        widths: the width of each tapped sequence.
        num_bins: F.
        attributes: J.
        num_classes: C.
        stft: the STFT configuration (dict) that makes X from a waveform (cached batches may hold X itself).
        multilabel: BCE (True) or cross-entropy (False) fidelity.
        loss_weights: (λ_rec, λ_spa, λ_ent).
        hidden: width of Ψ_FLINT.
    """

    def __init__(
        self, widths, num_bins, attributes, num_classes, stft, multilabel=False, loss_weights=(1.0, 0.05, 0.05),
        hidden=128, **kwargs,
    ):  # fmt: skip
        sequences = [keras.Input((None, int(w)), name=f"sequence_{i}") for i, w in enumerate(widths)]
        spectrogram = keras.Input((None, int(num_bins)), name="spectrogram")
        phi = FlintAttributes(attributes, hidden, name="psi_flint")(sequences)
        outputs = {
            "attributes": phi,
            "logits": keras.layers.Dense(int(num_classes), name="h")(phi),
            "reconstruction": FlintDecoder(num_bins, name="decoder")([phi, spectrogram]),
        }
        super().__init__(inputs=[*sequences, spectrogram], outputs=outputs, **{"name": "flint", **kwargs})
        self.widths = [int(w) for w in widths]
        self.num_bins = int(num_bins)
        self.attributes = int(attributes)
        self.num_classes = int(num_classes)
        self.stft = audio.STFTConfig.from_dict(dict(stft)).to_dict()
        self.multilabel = bool(multilabel)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.hidden = int(hidden)
        self.analysis = audio.Analysis(self.stft, name="analysis")
        names = ("loss", "fidelity_loss", "reconstruction", "sparsity", "entropy")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.fidelity_metric = fidelity_metric(self.multilabel)

    def forward(self, batch, training=False):
        """A cached batch -> (outputs, X)."""
        spectrogram = cached_spectrogram(batch, self.analysis)
        return self([*batch["sequences"], spectrogram], training=training), spectrogram

    def _step(self, batch, training):
        out, x = self.forward(batch, training)
        terms = losses.flint_loss(
            batch["classifier_logits"], out["logits"], x, out["reconstruction"], out["attributes"],
            self.loss_weights, self.multilabel,
        )  # fmt: skip
        return terms, out["logits"]

    def get_config(self):
        return {
            **keras.layers.Layer.get_config(self),
            "widths": self.widths,
            "num_bins": self.num_bins,
            "attributes": self.attributes,
            "num_classes": self.num_classes,
            "stft": self.stft,
            "multilabel": self.multilabel,
            "loss_weights": list(self.loss_weights),
            "hidden": self.hidden,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))
