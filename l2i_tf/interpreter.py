"""The Interpreter: a functional Keras graph waveform -> frozen classifier f -> Ψ -> Θ (+ the fixed NMF decoder W),
with the train/test steps that fit Ψ and Θ only."""

from __future__ import annotations

import copy
import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, batches, feature_cache, losses
from l2i_tf.classifier_contract import (  # noqa: F401 - their home before this module was split
    ClassifierContractError,
    check_classifier,
    check_input_length,
    flat_classifier,
    layer_output,
    output_squashing,
    parse_layer_spec,
    tap_orders,
)
from l2i_tf.dictionary import NMFDecoder
from l2i_tf.explain_layers import PrepareWaveform
from l2i_tf.layers import FeatureSequences, Psi, Theta

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
"""The frozen classifier's compute: float32, or float16/bfloat16 with float32 weights (Keras mixed precision); Ψ, Θ,
the decoder and the loss are float32 in every case."""


def mixed_copy(classifier: keras.Model, precision: str) -> keras.Model:
    """``classifier`` with every built-in Keras layer (but the inputs) computing in ``precision``'s low float, the
    same weights; the package's and the user's own layers (e.g. a log-mel front end on ``tf.signal``, which has no
    float16 kernels) stay float32, and so do the graph's plain operations (a ``convert_to_tensor`` that a
    functional model's call on symbolic inputs adds: their dtype is a type, not a policy). Keras casts each layer's
    input to its compute dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return classifier

    def clone(layer):
        builtin = (
            type(layer).__module__.startswith("keras.")
            and isinstance(layer, keras.layers.Layer)
            and not isinstance(layer, keras.layers.InputLayer)
        )
        config = {**layer.get_config(), "dtype": precision} if builtin else layer.get_config()
        return type(layer).from_config(config)

    copy_ = keras.models.clone_model(classifier, clone_function=clone)
    copy_.set_weights(classifier.get_weights())
    copy_.trainable = False
    return copy_


@dataclasses.dataclass(frozen=True)
class _Stages:
    """The interpreter's layers in data-flow order (shared by the Interpreter's graph, its training step, its
    feature cache and the Explainer's graph)."""

    prepare: keras.layers.Layer
    add_channel: keras.layers.Layer | None
    extractor: keras.Model
    sequences: keras.layers.Layer
    analysis: keras.layers.Layer
    heads: keras.Model

    @functools.cached_property
    def features_function(self):
        """:meth:`features` as one ``tf.function`` for any batch size and length (traced once; no AutoGraph: the
        graph is Keras layers, nothing to convert)."""
        return tf.function(self.features, input_signature=[tf.TensorSpec([None, None], tf.float32)], autograph=False)

    def features(self, waveform) -> dict:
        """Waveform -> the classifier's part: ``waveform`` (prepared), ``sequences`` (Ψ's cacheable first step),
        ``classifier_logits``. The frozen classifier always runs in inference mode."""
        prepared = self.prepare(waveform)
        x = self.add_channel(prepared) if self.add_channel is not None else prepared
        # float32 from here on, whatever the classifier computes in (see PRECISIONS)
        *maps, classifier_logits = (keras.ops.cast(t, "float32") for t in self.extractor(x, training=False))
        return {"waveform": prepared, "sequences": self.sequences(maps), "classifier_logits": classifier_logits}

    def flow(self, waveform, training=False) -> dict:
        """Waveform -> every output of the interpreter (see :class:`Interpreter`)."""
        return self.finish(self.features(waveform), training)

    def without_spectrogram(self, waveform) -> dict:
        """Waveform -> the classifier's ``classifier_logits`` and ``waveform`` (prepared), Ψ's ``activations`` H and
        Θ's ``logits`` and ``contributions``, with no STFT: Ψ reads only X's frame count, which the waveform's
        length gives (an explanation's first pass; its synthesis makes the one STFT)."""
        feats = self.features(waveform)
        frames = self.analysis.config.num_frames(tf.shape(feats["waveform"])[1])
        h = self.heads.get_layer("psi")(list(feats["sequences"]), num_frames=frames, training=False)
        logits, _, contributions = self.heads.get_layer("theta")(h)
        return {
            "classifier_logits": feats["classifier_logits"],
            "waveform": feats["waveform"],
            "activations": h,
            "logits": logits,
            "contributions": contributions,
        }

    def finish(self, feats: dict, training=False) -> dict:
        """The outputs of :meth:`features` -> every output of the interpreter."""
        spectrogram, phase = self.analysis(feats["waveform"])
        out = dict(self.heads([*feats["sequences"], spectrogram], training=training))
        out.update(
            classifier_logits=feats["classifier_logits"],
            spectrogram=spectrogram,
            phase=phase,
            waveform=feats["waveform"],
        )
        return out


def _heads(sequences, num_bins: int, k: int, num_classes: int, psi: dict, theta: dict) -> keras.Model:
    """Ψ -> Θ and the decoder as one functional model: ``[seq_1..seq_n, X]`` -> H, logits, z, contributions, X̂."""
    inputs = [keras.Input((None, s.shape[-1]), name=f"sequence_{i}") for i, s in enumerate(sequences)]
    spectrogram = keras.Input((None, num_bins), name="spectrogram")
    h = Psi(k, name="psi", **psi)([*inputs, spectrogram])
    logits, z, contributions = Theta(num_classes, name="theta", **theta)(h)
    reconstruction = NMFDecoder(num_bins, k, name="decoder")(h)
    outputs = {
        "activations": h,
        "logits": logits,
        "pooled": z,
        "contributions": contributions,
        "reconstruction": reconstruction,
    }
    return keras.Model([*inputs, spectrogram], outputs, name="heads")


@keras.saving.register_keras_serializable(package="l2i_tf")
class Interpreter(keras.Model):
    """L2I interpreter of a frozen classifier, as a functional Keras graph.

    Input: waveform ``[batch, samples]`` at ``stft["sample_rate"]``. Output, a dict: ``logits`` (Θ's, ``[batch,
    C]``), ``classifier_logits`` (f's), ``activations`` H ``[batch, T, K]``, ``pooled`` z ``[batch, K]``,
    ``contributions`` ``z_k·θ_{k,c}`` ``[batch, K, C]``, ``spectrogram`` X and ``phase`` ``[batch, T, F]``,
    ``reconstruction`` ``H·Wᵀ`` and ``waveform`` (as the classifier saw it: padded/cropped if its input length is
    fixed).

    Only Ψ and Θ are trained; ``train_step`` also accepts cached batches (dict with ``sequences``,
    ``classifier_logits`` and ``waveform``) made by :meth:`precompute`, so f runs once per clip rather than once
    per epoch.

    Args:
        classifier: Keras model, waveform -> logits (frozen here).
        layers: names of the classifier layers Ψ reads (inside its nested functional or Sequential models too:
            the extractor runs the classifier flat, see :func:`~l2i_tf.classifier_contract.flat_classifier`).
        orders: one feature order per layer (see :class:`~l2i_tf.layers.FeatureSequences`).
        k, num_bins: dictionary size K and bins F.
        stft: the STFT configuration as a dict (see :class:`~l2i_tf.audio.STFTConfig`).
        multilabel: sigmoid (True) or softmax (False) semantics of the logits.
        alpha, beta: weights of reconstruction and sparsity in the loss.
        temperature: distillation temperature of the fidelity term.
        psi: keyword arguments of Ψ (and ``freq_reduce`` of :class:`~l2i_tf.layers.FeatureSequences`).
        theta: keyword arguments of Θ.
        clip_samples: fixed input length of the classifier (clips are padded/cropped), or None.
        dictionary: optional W ``[F, K]`` to initialise the decoder with.
        precision: the frozen classifier's compute, one of :data:`PRECISIONS` (mixed: float16/bfloat16 compute,
            float32 weights; Ψ, Θ and the loss stay float32).
        source_weight: λ of the source-consistency term (:func:`~l2i_tf.losses.source_consistency_loss`) on
            cached batches that carry ``source`` and ``source_weight`` (training mixtures); 0: the paper's loss.
    """

    def __init__(
        self,
        classifier,
        layers,
        orders,
        k,
        num_bins,
        stft,
        multilabel=False,
        alpha=10.0,
        beta=0.8,
        psi=None,
        theta=None,
        clip_samples=None,
        dictionary=None,
        temperature=1.0,
        precision="float32",
        source_weight=0.0,
        **kwargs,
    ):
        check_classifier(classifier)
        classifier.trainable = False
        stft_config = audio.STFTConfig.from_dict(dict(stft))
        if stft_config.num_bins != int(num_bins):
            raise ValueError(f"num_bins={num_bins} does not match the STFT config ({stft_config.num_bins} bins)")
        fixed = classifier.inputs[0].shape[1]
        if fixed is not None and clip_samples is None:
            clip_samples = int(fixed)
        check_input_length(clip_samples, stft_config)
        psi_kwargs = dict(psi or {})
        head_psi = {key: value for key, value in psi_kwargs.items() if key != "freq_reduce"}
        classifier_rank = len(classifier.inputs[0].shape)
        num_classes = int(classifier.outputs[0].shape[-1])
        compute = mixed_copy(flat_classifier(classifier, layers), precision)  # nested layers tapped: flat
        extractor = keras.Model(
            compute.inputs,
            [layer_output(compute, n) for n in layers] + [compute.outputs[0]],
            name="extractor",
        )
        waveform = keras.Input((None,), name="waveform")
        prepare = PrepareWaveform(clip_samples, name="prepare")
        add_channel = None
        if classifier_rank == 3:
            add_channel = keras.layers.Reshape((clip_samples or -1, 1), name="add_channel")
        sequences = FeatureSequences(orders, psi_kwargs.get("freq_reduce", "flatten"), name="feature_sequences")
        partial = _Stages(
            prepare, add_channel, extractor, sequences, audio.Analysis(stft_config.to_dict(), name="analysis"), None
        )
        feats = partial.features(waveform)
        heads = _heads(feats["sequences"], int(num_bins), int(k), num_classes, head_psi, dict(theta or {}))
        stages = dataclasses.replace(partial, heads=heads)
        super().__init__(inputs=waveform, outputs=stages.finish(feats), **{"name": "interpreter", **kwargs})

        self.classifier = classifier
        self.extractor = extractor
        self.heads = heads
        self.stages = stages
        self.psi, self.theta, self.decoder = (heads.get_layer(n) for n in ("psi", "theta", "decoder"))
        if dictionary is not None:
            self.decoder.set_weights([np.asarray(dictionary, dtype="float32")])
        self.layer_names = tuple(layers)
        self.orders = tuple(orders)
        self.k = int(k)
        self.num_bins = int(num_bins)
        self.stft = stft_config.to_dict()
        self.stft_config = stft_config
        self.multilabel = bool(multilabel)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.precision = precision
        self.psi_kwargs = psi_kwargs
        self.theta_kwargs = dict(theta or {})
        self.clip_samples = clip_samples
        self.num_classes = num_classes
        self.source_weight = float(source_weight)
        self.trackers, self.fidelity_metric = self._new_metrics()

    def _new_metrics(self):
        names = ("loss", "fidelity_loss", "reconstruction", "sparsity") + (("source",) if self.source_weight else ())
        trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if self.multilabel:
            return trackers, keras.metrics.AUC(curve="PR", name="fidelity_micro_auprc")
        return trackers, keras.metrics.Mean(name="fidelity_top1")

    # ------------------------------------------------------------ training

    def precompute(self, waveforms: np.ndarray, batch_size: int = 32) -> dict:
        """Run the frozen classifier once per clip.

        Returns numpy ``{"sequences": (...), "classifier_logits", "waveform"}``: Ψ's parameter-free first step
        (:class:`~l2i_tf.layers.FeatureSequences`) rather than the raw maps, and the prepared waveform rather than
        X (the STFT is cheap; X is 2x the waveform's size). ``fit`` accepts batches of these.
        """
        run = self.stages.features_function
        out = batches.map_batches(lambda w: run(tf.constant(w)), np.asarray(waveforms, "float32"), batch_size)
        out["sequences"] = tuple(out["sequences"])
        return out

    def forward(self, data, training=False):
        """A batch (waveforms, or a cached dict: :func:`~l2i_tf.feature_cache.analysed` or not) -> (heads' outputs,
        classifier logits, X)."""
        if isinstance(data, dict) and "sequences" in data:
            feats = feature_cache.analysed(tf.nest.map_structure(tf.convert_to_tensor, data), self.stft_config)
            spectrogram = feats["spectrogram"]
        else:
            feats = self.stages.features(data[0] if isinstance(data, (tuple, list)) else data)
            spectrogram, _ = self.stages.analysis(feats["waveform"])
        out = self.heads([*feats["sequences"], spectrogram], training=training)
        return out, feats["classifier_logits"], spectrogram

    def _terms(self, data, training):
        if isinstance(data, dict) and "sequences" in data:
            data = feature_cache.analysed(data, self.stft_config)  # a batch from tf.data passes as it is
        out, classifier_logits, spectrogram = self.forward(data, training)
        terms = losses.l2i_loss(
            classifier_logits,
            out["logits"],
            spectrogram,
            out["reconstruction"],
            out["activations"],
            self.alpha,
            self.beta,
            self.multilabel,
            temperature=self.temperature,
        )
        if self.source_weight and isinstance(data, dict) and "source_magnitude" in data:  # mixtures with sources
            terms["source"] = losses.source_consistency(
                out["activations"],
                out["contributions"],
                tf.argmax(classifier_logits, axis=-1, output_type=tf.int32),
                data["magnitude"],
                data["source_magnitude"],
                data["source_weight"],
                tf.convert_to_tensor(self.decoder.weights[0]),
                reconstruction=out["reconstruction"],
            )
            terms["loss"] = terms["loss"] + self.source_weight * terms["source"]
        return terms, classifier_logits, out["logits"]

    def _update_metrics(self, terms, classifier_logits, logits):
        for name, tracker in self.trackers.items():
            if name in terms:  # "source": on training batches only
                tracker.update_state(terms[name])
        if self.multilabel:
            target = tf.cast(tf.sigmoid(classifier_logits) > 0.5, tf.float32)
            self.fidelity_metric.update_state(tf.reshape(target, [-1]), tf.reshape(tf.sigmoid(logits), [-1]))
        else:
            same = tf.equal(tf.argmax(logits, -1), tf.argmax(classifier_logits, -1))
            self.fidelity_metric.update_state(tf.cast(same, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [*self.trackers.values(), self.fidelity_metric]

    @property
    def head_variables(self):
        return self.psi.trainable_variables + self.theta.trainable_variables

    def train_step(self, data):
        with tf.GradientTape() as tape:
            terms, classifier_logits, logits = self._terms(data, training=True)
            # Gradients are summed over replicas under tf.distribute: scale as Keras' own losses do.
            loss = terms["loss"] / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.head_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(terms, classifier_logits, logits)

    def test_step(self, data):
        terms, classifier_logits, logits = self._terms(data, training=False)
        return self._update_metrics(terms, classifier_logits, logits)

    # ------------------------------------------------------------ serialisation

    def get_config(self):
        return {
            **keras.layers.Layer.get_config(self),  # name, trainable, dtype (not the functional graph: rebuilt)
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "layers": list(self.layer_names),
            "orders": list(self.orders),
            "k": self.k,
            "num_bins": self.num_bins,
            "stft": self.stft,
            "multilabel": self.multilabel,
            "alpha": self.alpha,
            "beta": self.beta,
            "temperature": self.temperature,
            "psi": self.psi_kwargs,
            "theta": self.theta_kwargs,
            "clip_samples": self.clip_samples,
            "precision": self.precision,
            "source_weight": self.source_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # Keras' deserialisation consumes nested configs
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


def with_precision(interpreter: Interpreter, precision: str) -> Interpreter:
    """``interpreter`` with its classifier computing in ``precision`` (:data:`PRECISIONS`), the same weights (the
    classifier's and Ψ/Θ/W's); ``interpreter`` itself when it already does."""
    if precision == interpreter.precision:
        return interpreter
    config = {k: v for k, v in interpreter.get_config().items() if k not in ("classifier", "trainable", "dtype")}
    other = Interpreter(interpreter.classifier, **{**config, "precision": precision})
    other.heads.set_weights(interpreter.heads.get_weights())
    return other
