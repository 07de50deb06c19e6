"""The Interpreter model: frozen classifier f + fixed NMF decoder W + trainable Ψ and Θ, with its train/test steps."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, losses
from l2i_tf.dictionary import NMFDecoder
from l2i_tf.layers import Psi, Theta


class ClassifierContractError(ValueError):
    """A classifier that is not waveform -> logits, or a tapped layer that does not exist."""


def check_classifier(classifier: keras.Model) -> None:
    """Raise :class:`ClassifierContractError` unless ``classifier`` maps a mono waveform to logits."""
    if not isinstance(classifier, keras.Model) or len(classifier.inputs) != 1 or len(classifier.outputs) != 1:
        raise ClassifierContractError("the classifier must be a Keras model with one input and one output")
    shape = tuple(classifier.inputs[0].shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1):
        raise ClassifierContractError(
            f"the classifier's input must be a mono waveform [batch, samples] or [batch, samples, 1], got {shape}; "
            "wrap a feature model with l2i_tf.classifier.wrap_feature_model"
        )
    out = tuple(classifier.outputs[0].shape)
    if len(out) != 2 or out[1] is None:
        raise ClassifierContractError(f"the classifier's output must be logits [batch, classes], got shape {out}")
    activation = getattr(classifier.layers[-1], "activation", None)
    name = getattr(activation, "__name__", "")
    if name in ("softmax", "sigmoid"):
        raise ClassifierContractError(
            f"the classifier's last layer applies {name}; the interpreter needs logits (remove the activation)"
        )


def parse_layer_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` or ``"name:order"`` -> (name, order or None)."""
    name, _, order = spec.partition(":")
    return name, order or None


def tap_orders(classifier: keras.Model, layers) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resolve tapped layer names (``name`` or ``name:order``) and their feature orders; errors list what exists."""
    names, orders = [], []
    available = [layer.name for layer in classifier.layers]
    for spec in layers:
        name, order = parse_layer_spec(spec)
        if name not in available:
            raise ClassifierContractError(
                f"the classifier has no layer {name!r}; its layers are: {', '.join(available)}"
            )
        rank = len(classifier.get_layer(name).output.shape)
        if rank not in (3, 4):
            raise ClassifierContractError(
                f"layer {name!r} outputs rank {rank}; Ψ reads [batch, time, channels] or 4-D conv maps"
            )
        order = order or ("btfc" if rank == 4 else "btc")
        if (order == "btc") != (rank == 3):
            raise ClassifierContractError(f"layer {name!r} has rank {rank}, which does not fit order {order!r}")
        names.append(name)
        orders.append(order)
    if not names:
        raise ClassifierContractError("no layers to tap; name at least one (e.g. --layers block3_pool,block4_relu)")
    return tuple(names), tuple(orders)


@keras.saving.register_keras_serializable(package="l2i_tf")
class Interpreter(keras.Model):
    """L2I interpreter of a frozen classifier.

    Inputs: waveform ``[batch, samples]`` at ``stft["sample_rate"]``. ``call`` returns a dict:
    ``logits`` (Θ's, ``[batch, C]``), ``classifier_logits`` (f's), ``activations`` H
    ``[batch, T, K]``, ``pooled`` z ``[batch, K]``.

    Only Ψ and Θ are trained; ``train_step`` also accepts precomputed batches
    (dict with ``features``, ``classifier_logits`` and ``spectrogram``), made by
    :meth:`precompute`, so f runs once per clip rather than once per epoch.

    Args:
        classifier: Keras model, waveform -> logits (frozen here).
        layers: names of the classifier layers Ψ reads.
        orders: one feature order per layer (see :class:`~l2i_tf.layers.Psi`).
        k, num_bins: dictionary size K and bins F.
        stft: the STFT configuration as a dict (see :class:`~l2i_tf.audio.STFTConfig`).
        multilabel: sigmoid (True) or softmax (False) semantics of the logits.
        alpha, beta: weights of reconstruction and sparsity in the loss.
        temperature: distillation temperature of the fidelity term.
        psi, theta: keyword arguments of Ψ and Θ.
        clip_samples: fixed input length of the classifier (clips are padded/cropped), or None.
        dictionary: optional W ``[F, K]`` to initialise the decoder with.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_classifier(classifier)
        self.classifier = classifier
        self.classifier.trainable = False
        self.layer_names = tuple(layers)
        self.orders = tuple(orders)
        self.k = int(k)
        self.num_bins = int(num_bins)
        self.stft = dict(stft)
        self.stft_config = audio.STFTConfig.from_dict(self.stft)
        if self.stft_config.num_bins != self.num_bins:
            raise ValueError(f"num_bins={num_bins} does not match the STFT config ({self.stft_config.num_bins} bins)")
        self.multilabel = bool(multilabel)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.psi_kwargs = dict(psi or {})
        self.theta_kwargs = dict(theta or {})
        self.clip_samples = clip_samples
        self.num_classes = int(classifier.outputs[0].shape[-1])
        self.classifier_rank = len(classifier.inputs[0].shape)
        fixed = classifier.inputs[0].shape[1]
        if fixed is not None and clip_samples is None:
            self.clip_samples = int(fixed)
        self.extractor = keras.Model(
            classifier.inputs,
            [classifier.get_layer(n).output for n in self.layer_names] + [classifier.outputs[0]],
            name="extractor",
        )
        self.psi = Psi(self.k, self.orders, name="psi", **self.psi_kwargs)
        self.theta = Theta(self.num_classes, name="theta", **self.theta_kwargs)
        self.decoder = NMFDecoder(self.num_bins, self.k, name="decoder")
        self._build_heads()
        if dictionary is not None:
            self.decoder.set_weights([np.asarray(dictionary, dtype="float32")])
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", "fidelity_loss", "reconstruction", "sparsity")
        }
        if self.multilabel:
            self.fidelity_metric = keras.metrics.AUC(curve="PR", name="fidelity_micro_auprc")
        else:
            self.fidelity_metric = keras.metrics.Mean(name="fidelity_top1")

    # ------------------------------------------------------------ forward pieces

    def _build_heads(self):
        shapes = [tuple(o.shape) for o in self.extractor.outputs[:-1]]
        self.psi.build(shapes)
        self.theta.build((None, None, self.k))
        self.decoder.build((None, None, self.k))

    def prepare(self, waveform):
        """Waveform as the classifier wants its length: ``[batch, samples]`` float32, padded/cropped if fixed."""
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        if waveform.shape.rank == 3:
            waveform = tf.squeeze(waveform, -1)
        if self.clip_samples is not None:
            n = tf.shape(waveform)[1]
            waveform = tf.pad(waveform[:, : self.clip_samples], [[0, 0], [0, tf.maximum(self.clip_samples - n, 0)]])
            waveform = tf.ensure_shape(waveform, [None, self.clip_samples])
        return waveform

    def features(self, waveform):
        """Prepared waveform -> (tapped feature maps, classifier logits)."""
        x = waveform[:, :, None] if self.classifier_rank == 3 else waveform
        outs = self.extractor(x, training=False)
        return list(outs[:-1]), outs[-1]

    def num_frames(self, waveform):
        return frames_for(tf.shape(waveform)[1], self.stft_config)

    def heads(self, features, num_frames, training=False, reduced=False):
        """Tapped features (or, with ``reduced``, Ψ's cached sequences) -> (H, Θ logits, z)."""
        h = self.psi(features, num_frames=num_frames, training=training, reduced=reduced)
        logits, z = self.theta(h)
        return h, logits, z

    def call(self, waveform, training=False):
        waveform = self.prepare(waveform)
        feats, classifier_logits = self.features(waveform)
        h, logits, z = self.heads(feats, self.num_frames(waveform), training=training)
        return {"logits": logits, "classifier_logits": classifier_logits, "activations": h, "pooled": z}

    # ------------------------------------------------------------ training

    def precompute(self, waveforms: np.ndarray, batch_size: int = 32) -> dict:
        """Run the frozen classifier once per clip.

        Returns numpy ``{"sequences": (...), "classifier_logits", "waveform"}``: Ψ's
        parameter-free first step (see :meth:`~l2i_tf.layers.Psi.sequences`) rather than the
        raw maps, and the prepared waveform rather than X (the STFT is cheap; X is 2x the
        waveform's size). ``fit`` accepts batches of these.
        """

        @tf.function(reduce_retracing=True)
        def run(w):
            w = self.prepare(w)
            feats, logits = self.features(w)
            return self.psi.sequences(feats), logits, w

        parts = [run(tf.constant(waveforms[i : i + batch_size])) for i in range(0, len(waveforms), batch_size)]
        return {
            "sequences": tuple(np.concatenate([p[0][j].numpy() for p in parts]) for j in range(len(self.layer_names))),
            "classifier_logits": np.concatenate([p[1].numpy() for p in parts]),
            # A fixed-length classifier pads/crops; otherwise the prepared waveform is the input itself.
            "waveform": np.concatenate([p[2].numpy() for p in parts])
            if self.clip_samples is not None
            else np.asarray(waveforms, dtype="float32"),
        }

    def _targets(self, data):
        """A batch -> (Ψ inputs, reduced?, classifier logits, X)."""
        if isinstance(data, dict) and "sequences" in data:
            x, _ = audio.analyze(data["waveform"], self.stft_config)
            return list(data["sequences"]), True, data["classifier_logits"], x
        if isinstance(data, (tuple, list)):
            data = data[0]
        waveform = self.prepare(data)
        feats, classifier_logits = self.features(waveform)
        x, _ = audio.analyze(waveform, self.stft_config)
        return feats, False, classifier_logits, x

    def _terms(self, feats, reduced, classifier_logits, x, training):
        h, logits, _ = self.heads(feats, tf.shape(x)[1], training=training, reduced=reduced)
        terms = losses.l2i_loss(
            classifier_logits,
            logits,
            x,
            self.decoder(h),
            h,
            self.alpha,
            self.beta,
            self.multilabel,
            temperature=self.temperature,
        )
        return terms, logits

    def _update_metrics(self, terms, classifier_logits, logits):
        for name, tracker in self.trackers.items():
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
        feats, reduced, classifier_logits, x = self._targets(data)
        with tf.GradientTape() as tape:
            terms, logits = self._terms(feats, reduced, classifier_logits, x, training=True)
            # Gradients are summed over replicas under tf.distribute: scale as Keras' own losses do.
            loss = terms["loss"] / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.head_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_metrics(terms, classifier_logits, logits)

    def test_step(self, data):
        feats, reduced, classifier_logits, x = self._targets(data)
        terms, logits = self._terms(feats, reduced, classifier_logits, x, training=False)
        return self._update_metrics(terms, classifier_logits, logits)

    # ------------------------------------------------------------ serialisation

    def get_config(self):
        config = super().get_config()
        config.update(
            classifier=keras.saving.serialize_keras_object(self.classifier),
            layers=list(self.layer_names),
            orders=list(self.orders),
            k=self.k,
            num_bins=self.num_bins,
            stft=self.stft,
            multilabel=self.multilabel,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            psi=self.psi_kwargs,
            theta=self.theta_kwargs,
            clip_samples=self.clip_samples,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


def frames_for(num_samples, config: audio.STFTConfig):
    """Frame count T of :func:`l2i_tf.audio.stft` for ``num_samples`` (works on tensors)."""
    return (num_samples + config.front_pad + config.frame_step - 1) // config.frame_step
