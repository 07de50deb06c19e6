"""The interpreter's heads: Ψ (hidden layers -> NMF activations H) and Θ (H -> pooled z -> logits)."""

from __future__ import annotations

import keras
import tensorflow as tf

FEATURE_ORDERS = ("btfc", "bftc", "btc")
POOLINGS = ("attention", "max")


@keras.saving.register_keras_serializable(package="l2i_tf")
class Psi(keras.layers.Layer):
    """Ψ: tapped classifier layers -> activations ``H [batch, T, K] >= 0``.

    Each tapped output is a 4-D map ``[batch, time, freq, channels]`` (order ``"btfc"``),
    ``[batch, freq, time, channels]`` (``"bftc"``) or a sequence ``[batch, time, channels]``
    (``"btc"``). Per branch: frequency is folded into channels (``freq_reduce="flatten"``,
    needs a static frequency size) or averaged (``"mean"``), a Conv1D maps to ``hidden``
    channels, and the sequence is resampled (bilinear) to T frames — the frame count of X
    for *this* input, so any clip length works. Branches are concatenated, mixed by a
    Conv1D, mapped to K channels and passed through a ReLU.

    Args:
        k: number of dictionary components K.
        orders: one of ``FEATURE_ORDERS`` per tapped layer.
        hidden: channels per branch and after merging.
        kernel_size: temporal kernel of the Conv1D layers.
        freq_reduce: ``"flatten"`` or ``"mean"``.
        dropout: dropout rate after merging (training only).
    """

    def __init__(self, k, orders, hidden=128, kernel_size=3, freq_reduce="flatten", dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        orders = tuple(orders)
        for order in orders:
            if order not in FEATURE_ORDERS:
                raise ValueError(f"feature order must be one of {FEATURE_ORDERS}, got {order!r}")
        if freq_reduce not in ("flatten", "mean"):
            raise ValueError(f"freq_reduce must be 'flatten' or 'mean', got {freq_reduce!r}")
        self.k = k
        self.orders = orders
        self.hidden = hidden
        self.kernel_size = kernel_size
        self.freq_reduce = freq_reduce
        self.dropout = dropout
        self.branches = [
            keras.layers.Conv1D(hidden, kernel_size, padding="same", activation="relu", name=f"branch{i}")
            for i in range(len(orders))
        ]
        self.merge = keras.layers.Conv1D(hidden, kernel_size, padding="same", activation="relu", name="merge")
        self.drop = keras.layers.Dropout(dropout)
        self.to_k = keras.layers.Conv1D(k, 1, name="to_k")

    def _sequence(self, x, order):
        if order == "btc":
            return x
        if order == "bftc":
            x = tf.transpose(x, [0, 2, 1, 3])
        if self.freq_reduce == "mean":
            return tf.reduce_mean(x, axis=2)
        freq, channels = x.shape[2], x.shape[3]
        if freq is None or channels is None:
            raise ValueError(
                f"freq_reduce='flatten' needs static frequency and channel sizes, got shape {x.shape}; "
                "use freq_reduce='mean'"
            )
        return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], freq * channels])

    def build(self, input_shapes):
        if len(input_shapes) != len(self.orders):
            raise ValueError(f"Psi got {len(input_shapes)} feature maps but {len(self.orders)} orders")
        for shape, order, branch in zip(input_shapes, self.orders, self.branches):
            rank = len(shape)
            if (order == "btc") != (rank == 3) or rank not in (3, 4):
                raise ValueError(f"a tapped layer of shape {tuple(shape)} does not fit order {order!r}")
            if rank == 3:
                width = shape[2]
            elif self.freq_reduce == "mean":
                width = shape[3]
            else:
                freq = shape[2] if order == "btfc" else shape[1]
                width = None if freq is None or shape[3] is None else freq * shape[3]
            branch.build((None, None, width))
        self.merge.build((None, None, self.hidden * len(self.orders)))
        self.to_k.build((None, None, self.hidden))

    def sequences(self, features):
        """The parameter-free first step: each tapped map -> ``[batch, t_i, width_i]``.

        With ``freq_reduce="mean"`` these are much smaller than the maps, so training can
        cache them once (``call(..., reduced=True)`` then starts from them).
        """
        return [self._sequence(tf.convert_to_tensor(x), order) for x, order in zip(features, self.orders)]

    def call(self, features, num_frames, training=None, reduced=False):
        outs = []
        seqs = list(features) if reduced else self.sequences(features)
        for x, branch in zip(seqs, self.branches):
            seq = branch(x)
            seq = tf.image.resize(seq[:, :, None, :], tf.stack([num_frames, 1]), method="bilinear")[:, :, 0, :]
            outs.append(seq)
        x = self.merge(tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0])
        x = self.drop(x, training=training)
        return tf.nn.relu(self.to_k(x))

    def get_config(self):
        config = super().get_config()
        config.update(
            k=self.k,
            orders=list(self.orders),
            hidden=self.hidden,
            kernel_size=self.kernel_size,
            freq_reduce=self.freq_reduce,
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package="l2i_tf")
class Theta(keras.layers.Layer):
    """Θ: ``H [batch, T, K]`` -> pooled ``z [batch, K]`` -> logits ``[batch, C]`` by a linear map with no bias.

    Pooling is gated attention over time (Ilse et al. 2018: softmax over time of
    ``w·(tanh(V h_t) ⊙ sigmoid(U h_t))``) or max over time. An optional ``mask
    [batch, T]`` excludes padded frames from the pooling, so clips of any length
    can share a batch. With no bias, ``logits_c = Σ_k z_k θ_{k,c}`` exactly, which is
    what relevance decomposes.

    Args:
        num_classes: C.
        pooling: ``"attention"`` or ``"max"``.
        attention_units: width of the gated attention.
    """

    def __init__(self, num_classes, pooling="attention", attention_units=64, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.num_classes = num_classes
        self.pooling = pooling
        self.attention_units = attention_units

    def build(self, input_shape):
        k = input_shape[-1]
        if k is None:
            raise ValueError(f"Theta needs a static component axis K, got shape {input_shape}")
        if self.pooling == "attention":
            self.att_v = self.add_weight(name="att_v", shape=(k, self.attention_units), initializer="glorot_uniform")
            self.att_u = self.add_weight(name="att_u", shape=(k, self.attention_units), initializer="glorot_uniform")
            self.att_w = self.add_weight(name="att_w", shape=(self.attention_units, 1), initializer="glorot_uniform")
        self.kernel = self.add_weight(name="kernel", shape=(k, self.num_classes), initializer="glorot_uniform")

    def pool(self, h, mask=None):
        """``H [batch, T, K]`` -> ``z [batch, K]``."""
        valid = None if mask is None else tf.cast(mask, tf.bool)
        if self.pooling == "max":
            if valid is not None:
                h = tf.where(valid[:, :, None], h, tf.zeros_like(h))  # H >= 0, so 0 is neutral for max
            return tf.reduce_max(h, axis=1)
        gate = tf.tanh(tf.matmul(h, self.att_v)) * tf.sigmoid(tf.matmul(h, self.att_u))
        scores = tf.matmul(gate, self.att_w)[:, :, 0]
        if valid is not None:
            scores = tf.where(valid, scores, tf.fill(tf.shape(scores), tf.constant(-1e9, scores.dtype)))
        weights = tf.nn.softmax(scores, axis=1)
        return tf.reduce_sum(weights[:, :, None] * h, axis=1)

    def call(self, h, mask=None):
        z = self.pool(h, mask)
        return tf.matmul(z, self.kernel), z

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, pooling=self.pooling, attention_units=self.attention_units)
        return config
