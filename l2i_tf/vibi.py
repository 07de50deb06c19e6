"""VIBI (Bang et al., "Explaining a Black-box by Using a Deep Variational Information Bottleneck Approach", AAAI
2021) on spectrograms: an explainer picks k time-frequency chunks of X, an approximator predicts the classifier's
output from X masked to them. Its selection is listenable: the masked X with the input's phase, through the ISTFT.

Reference code: SeojinBang/VIBI (``solver.py``, ``mnist/explainer.py``): the explainer outputs log-probabilities
over chunks; training samples a relaxed k-hot subset (k independent Gumbel-softmax draws, element-wise max); test
takes the hard top-k; loss = cross-entropy to the black box's prediction + β·KL(p ‖ uniform).

Chunks: ``time_chunks`` equal spans of frames x ``freq_chunks`` mel-spaced bands (each ``bands / freq_chunks`` of
the ``bands`` mel-spaced bands the networks read, see :func:`l2i_tf.slime.band_edges`).
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, losses, slime
from l2i_tf.flint import BaselineFitError, FidelityTraining, cached_spectrogram, fidelity_metric


def _register(cls):
    return keras.saving.register_keras_serializable(package="l2i_tf")(cls)


def band_of_bin(num_bins: int, bands: int, sample_rate: int) -> np.ndarray:
    """int [F]: the mel-spaced band (0..bands-1) of each STFT bin."""
    edges = slime.band_edges(num_bins, bands, sample_rate)
    return np.searchsorted(edges, np.arange(num_bins), side="right") - 1


def time_chunk_matrix(num_frames, time_chunks: int) -> tf.Tensor:
    """float32 [T, time_chunks]: column n averages the frames of chunk n (frame t is in chunk ⌊t·n/T⌋)."""
    index = (tf.range(num_frames) * time_chunks) // num_frames
    onehot = tf.one_hot(index, time_chunks)
    return onehot / tf.maximum(tf.reduce_sum(onehot, axis=0, keepdims=True), 1.0)


def check_fits(num_frames: int, time_chunks: int, what: str = "a clip") -> None:
    """Raise :class:`BaselineFitError` if ``num_frames`` cannot hold ``time_chunks`` chunks."""
    if num_frames < time_chunks:
        raise BaselineFitError("vibi", f"{time_chunks} time chunks do not fit the {num_frames} STFT frames of {what}")


@_register
class BandPool(keras.layers.Layer):
    """X ``[B, T, F]`` -> the mean of each mel-spaced band ``[B, T, bands]``.

    Args:
        num_bins: F.
        bands: number of bands.
        sample_rate: Hz.
    """

    def __init__(self, num_bins, bands, sample_rate, **kwargs):
        super().__init__(**kwargs)
        self.num_bins, self.bands, self.sample_rate = int(num_bins), int(bands), int(sample_rate)
        onehot = np.eye(self.bands, dtype="float32")[band_of_bin(self.num_bins, self.bands, self.sample_rate)]
        self.matrix = onehot / onehot.sum(axis=0, keepdims=True)

    def call(self, x):
        return tf.matmul(x, tf.constant(self.matrix))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.bands)

    def get_config(self):
        config = super().get_config()
        config.update(num_bins=self.num_bins, bands=self.bands, sample_rate=self.sample_rate)
        return config


@_register
class ChunkPool(keras.layers.Layer):
    """Maps ``[B, T, bands, C]`` -> ``[B, time_chunks * freq_chunks, C]``: the mean over each chunk's frames and
    bands (``bands`` a multiple of ``freq_chunks``), chunk ``n = time_index * freq_chunks + freq_index``.

    Args:
        time_chunks, freq_chunks: the grid.
    """

    def __init__(self, time_chunks, freq_chunks, **kwargs):
        super().__init__(**kwargs)
        self.time_chunks, self.freq_chunks = int(time_chunks), int(freq_chunks)

    def call(self, x):
        pooled = tf.einsum("btfc,tn->bnfc", x, time_chunk_matrix(tf.shape(x)[1], self.time_chunks))
        bands, channels = x.shape[2], x.shape[3]
        pooled = tf.reshape(pooled, [-1, self.time_chunks, self.freq_chunks, bands // self.freq_chunks, channels])
        return tf.reshape(tf.reduce_mean(pooled, axis=3), [-1, self.time_chunks * self.freq_chunks, channels])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.time_chunks * self.freq_chunks, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "time_chunks": self.time_chunks, "freq_chunks": self.freq_chunks}


def relaxed_k_hot(log_probs, k: int, temperature: float, seed=None):
    """k independent Gumbel-softmax draws over the N chunks, element-wise max: ``[B, N]`` in [0, 1], each row
    summing to at most k (each draw sums to 1)."""
    shape = tf.concat([tf.shape(log_probs)[:1], [k], tf.shape(log_probs)[1:]], axis=0)
    if seed is None:
        u = tf.random.uniform(shape, 1e-10, 1.0)
    else:
        u = tf.random.stateless_uniform(shape, seed, 1e-10, 1.0)
    gumbel = -tf.math.log(-tf.math.log(u))
    draws = tf.nn.softmax((log_probs[:, None, :] + gumbel) / temperature, axis=-1)
    return tf.reduce_max(draws, axis=1)


def hard_k_hot(log_probs, k: int):
    """The k most probable chunks as a 0/1 ``[B, N]`` with exactly k ones per row."""
    _, index = tf.math.top_k(log_probs, k)
    return tf.reduce_sum(tf.one_hot(index, tf.shape(log_probs)[-1]), axis=1)


@_register
class KHot(keras.layers.Layer):
    """Chunk log-probabilities ``[B, N]`` -> a k-hot selection: :func:`relaxed_k_hot` in training, :func:`hard_k_hot`
    otherwise.

    Args:
        k: chunks selected.
        temperature: of the Gumbel-softmax draws.
    """

    def __init__(self, k, temperature=0.5, **kwargs):
        super().__init__(**kwargs)
        self.k, self.temperature = int(k), float(temperature)

    def call(self, log_probs, training=None):
        if training:
            return relaxed_k_hot(log_probs, self.k, self.temperature)
        return hard_k_hot(log_probs, self.k)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "k": self.k, "temperature": self.temperature}


@_register
class ChunkMask(keras.layers.Layer):
    """``[chunks [B, N], X [B, T, F]]`` -> the mask ``[B, T, F]`` that gives every bin its chunk's value.

    Args:
        time_chunks, freq_chunks: the grid.
        num_bins: F.
        bands: the networks' mel-spaced bands (``freq_chunks`` groups of them).
        sample_rate: Hz.
    """

    def __init__(self, time_chunks, freq_chunks, num_bins, bands, sample_rate, **kwargs):
        super().__init__(**kwargs)
        self.time_chunks, self.freq_chunks = int(time_chunks), int(freq_chunks)
        self.num_bins, self.bands, self.sample_rate = int(num_bins), int(bands), int(sample_rate)
        per_chunk = self.bands // self.freq_chunks
        self.freq_index = band_of_bin(self.num_bins, self.bands, self.sample_rate) // per_chunk

    def call(self, chunks, spectrogram):
        grid = tf.reshape(chunks, [-1, self.time_chunks, self.freq_chunks])
        frames = tf.shape(spectrogram)[1]
        grid = tf.gather(grid, (tf.range(frames) * self.time_chunks) // frames, axis=1)
        return tf.gather(grid, tf.constant(self.freq_index, tf.int32), axis=2)

    def compute_output_shape(self, chunks_shape, spectrogram_shape):
        return spectrogram_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            time_chunks=self.time_chunks, freq_chunks=self.freq_chunks, num_bins=self.num_bins, bands=self.bands,
            sample_rate=self.sample_rate,
        )  # fmt: skip
        return config


def _convs(x, widths, pool: bool, prefix: str):
    for i, width in enumerate(widths):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"{prefix}_conv{i}")(x)
        if pool:
            x = keras.layers.MaxPooling2D((2, 2), padding="same", name=f"{prefix}_pool{i}")(x)
    return x


@_register
class Vibi(FidelityTraining, keras.Model):
    """VIBI's explainer and approximator: X ``[B, T, F]`` -> ``log_probs`` over the N chunks, ``chunks`` (k-hot;
    relaxed in training), ``mask`` ``[B, T, F]`` and the approximator's ``logits`` on ``X ⊙ mask``.

    Args:
        num_bins: F.
        num_classes: C.
        stft: the STFT configuration (dict) that makes X from a waveform (cached batches may hold X itself).
        multilabel: BCE (True) or cross-entropy (False) to the classifier's prediction.
        k: chunks selected.
        time_chunks, freq_chunks: the chunk grid.
        bands: mel-spaced bands the networks read (a multiple of ``freq_chunks``).
        temperature: of the relaxed k-hot sampling.
        beta: weight of KL(p ‖ uniform).
    """

    def __init__(
        self, num_bins, num_classes, stft, multilabel=False, k=8, time_chunks=10, freq_chunks=8, bands=32,
        temperature=0.5, beta=0.1, **kwargs,
    ):  # fmt: skip
        if bands % freq_chunks:
            raise ValueError(f"bands ({bands}) must be a multiple of freq_chunks ({freq_chunks})")
        if not 1 <= k <= time_chunks * freq_chunks:
            raise ValueError(f"k must be in [1, {time_chunks * freq_chunks}] (the chunks), got {k}")
        rate = int(stft["sample_rate"])
        x = keras.Input((None, int(num_bins)), name="spectrogram")
        bands_in = keras.layers.Reshape((-1, bands, 1), name="explainer_channel")(
            BandPool(num_bins, bands, rate, name="explainer_bands")(x)
        )
        h = ChunkPool(time_chunks, freq_chunks, name="chunk_pool")(_convs(bands_in, (16, 32), False, "explainer"))
        scores = keras.layers.Reshape((-1,), name="scores")(keras.layers.Dense(1, name="chunk_score")(h))
        log_probs = keras.layers.Activation("log_softmax", name="log_probs")(scores)
        chunks = KHot(k, temperature, name="k_hot")(log_probs)
        mask = ChunkMask(time_chunks, freq_chunks, num_bins, bands, rate, name="mask")(chunks, x)
        masked = keras.layers.Multiply(name="masked")([x, mask])
        a = keras.layers.Reshape((-1, bands, 1), name="approximator_channel")(
            BandPool(num_bins, bands, rate, name="approximator_bands")(masked)
        )
        a = keras.layers.GlobalMaxPooling2D(name="approximator_max")(_convs(a, (16, 32, 64), True, "approximator"))
        logits = keras.layers.Dense(int(num_classes), name="approximator_logits")(a)
        outputs = {"log_probs": log_probs, "chunks": chunks, "mask": mask, "logits": logits}
        super().__init__(inputs=x, outputs=outputs, **{"name": "vibi", **kwargs})
        self.num_bins, self.num_classes, self.multilabel = int(num_bins), int(num_classes), bool(multilabel)
        self.stft = audio.STFTConfig.from_dict(dict(stft)).to_dict()
        self.k, self.time_chunks, self.freq_chunks, self.bands = int(k), int(time_chunks), int(freq_chunks), int(bands)
        self.temperature, self.beta = float(temperature), float(beta)
        self.analysis = audio.Analysis(self.stft, name="analysis")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "fidelity_loss", "kl")}
        self.fidelity_metric = fidelity_metric(self.multilabel)

    @property
    def num_chunks(self) -> int:
        return self.time_chunks * self.freq_chunks

    def _step(self, batch, training):
        x = cached_spectrogram(batch, self.analysis)
        out = self(x, training=training)
        logits = batch["classifier_logits"]
        terms = losses.vibi_loss(logits, out["logits"], out["log_probs"], self.beta, self.multilabel)
        return terms, out["logits"]

    def get_config(self):
        return {
            **keras.layers.Layer.get_config(self),
            "num_bins": self.num_bins,
            "num_classes": self.num_classes,
            "stft": self.stft,
            "multilabel": self.multilabel,
            "k": self.k,
            "time_chunks": self.time_chunks,
            "freq_chunks": self.freq_chunks,
            "bands": self.bands,
            "temperature": self.temperature,
            "beta": self.beta,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**copy.deepcopy(config))
