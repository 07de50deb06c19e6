"""The interpreter's heads: Ψ (hidden layers -> NMF activations H) and Θ (H -> pooled z -> logits, contributions)."""

from __future__ import annotations

import keras
import tensorflow as tf

FEATURE_ORDERS = ("btfc", "bftc", "btc")
RESIZE_MATRIX_LIMIT = 1 << 20  # entries of the [frames_out, frames_in] interpolation matrix of a gradient
FREQ_REDUCTIONS = ("mean", "flatten")
POOLINGS = ("attention", "max")


def interpolation_matrix(size_in, size_out) -> tf.Tensor:
    """float32 ``[size_out, size_in]``: the linear map of ``tf.image.resize(..., method="bilinear")`` along one
    axis (half-pixel centres, no antialiasing, edges clamped), with TensorFlow's float32 arithmetic for the source
    positions, so ``R @ x`` equals the resize of ``x`` to float rounding."""
    scale = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
    source = (tf.cast(tf.range(size_out), tf.float32) + 0.5) * scale - 0.5
    floor = tf.floor(source)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(source), tf.int32), size_in - 1)
    lerp = (source - floor)[:, None]
    return tf.one_hot(lower, size_in) * (1.0 - lerp) + tf.one_hot(upper, size_in) * lerp


@tf.custom_gradient
def resize_time(x, size):
    """Bilinear resize of a sequence ``[batch, t, channels]`` to ``[batch, size, channels]`` along time:
    ``tf.image.resize`` of ``x[:, :, None, :]`` to ``[size, 1]``. Its gradient is the transposed interpolation
    matrix (:func:`interpolation_matrix`) times the incoming gradient, one matmul, while the matrix has at most
    :data:`RESIZE_MATRIX_LIMIT` entries, ResizeBilinearGrad beyond. (On CPU, ResizeBilinearGrad and the gradients of
    the strided slices around a 4-D resize took 23 ms of op time a default training step; the forward resize is
    cheaper than the matmul, so it stays.)"""
    image = tf.expand_dims(x, 2)
    y = tf.squeeze(tf.image.resize(image, tf.stack([size, 1]), method="bilinear"), 2)

    def grad(dy):
        length = tf.shape(x)[1]

        def by_matrix():
            return tf.matmul(interpolation_matrix(length, size)[None], dy, transpose_a=True)

        def by_resize_grad():
            back = tf.raw_ops.ResizeBilinearGrad(
                grads=tf.expand_dims(dy, 2), original_image=image, align_corners=False, half_pixel_centers=True
            )
            return tf.squeeze(back, 2)

        return tf.cond(length * size <= RESIZE_MATRIX_LIMIT, by_matrix, by_resize_grad), None

    return y, grad


@keras.saving.register_keras_serializable(package="l2i_tf")
class FeatureSequences(keras.layers.Layer):
    """Ψ's parameter-free first step: each tapped classifier output -> a sequence ``[batch, t_i, width_i]``.

    A tapped output is a 4-D map ``[batch, time, freq, channels]`` (order ``"btfc"``), ``[batch, freq, time,
    channels]`` (``"bftc"``) or a sequence ``[batch, time, channels]`` (``"btc"``). Frequency is averaged
    (``freq_reduce="mean"``, small enough to cache once per clip for training) or folded into channels
    (``"flatten"``, needs a static frequency size).

    Args:
        orders: one of ``FEATURE_ORDERS`` per tapped layer.
        freq_reduce: ``"mean"`` or ``"flatten"``.
    """

    def __init__(self, orders, freq_reduce="mean", **kwargs):
        super().__init__(**kwargs)
        orders = tuple(orders)
        for order in orders:
            if order not in FEATURE_ORDERS:
                raise ValueError(f"feature order must be one of {FEATURE_ORDERS}, got {order!r}")
        if freq_reduce not in FREQ_REDUCTIONS:
            raise ValueError(f"freq_reduce must be one of {FREQ_REDUCTIONS}, got {freq_reduce!r}")
        self.orders = orders
        self.freq_reduce = freq_reduce

    def _check(self, shapes):
        if len(shapes) != len(self.orders):
            raise ValueError(f"{len(shapes)} feature maps but {len(self.orders)} orders ({self.orders})")
        for shape, order in zip(shapes, self.orders):
            rank = len(shape)
            if (order == "btc") != (rank == 3) or rank not in (3, 4):
                raise ValueError(f"a tapped layer of shape {tuple(shape)} does not fit order {order!r}")
            if rank == 4 and self.freq_reduce == "flatten":
                freq = shape[2] if order == "btfc" else shape[1]
                if freq is None or shape[3] is None:
                    raise ValueError(
                        f"freq_reduce='flatten' needs static frequency and channel sizes, got shape {tuple(shape)}; "
                        "use freq_reduce='mean'"
                    )

    def build(self, input_shapes):
        self._check(input_shapes)

    def _sequence(self, x, order):
        if order == "btc":
            return x
        if order == "bftc":
            x = tf.transpose(x, [0, 2, 1, 3])
        if self.freq_reduce == "mean":
            return tf.reduce_mean(x, axis=2)
        return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], x.shape[2] * x.shape[3]])

    def call(self, features):
        return [self._sequence(tf.convert_to_tensor(x), order) for x, order in zip(features, self.orders)]

    def compute_output_spec(self, features):
        self._check([x.shape for x in features])
        out = []
        for x, order in zip(features, self.orders):
            if order == "btc":
                width = x.shape[2]
            elif self.freq_reduce == "mean":
                width = x.shape[3]
            else:
                width = (x.shape[2] if order == "btfc" else x.shape[1]) * x.shape[3]
            out.append(keras.KerasTensor((x.shape[0], None, width), dtype="float32"))
        return out

    def get_config(self):
        return {**super().get_config(), "orders": list(self.orders), "freq_reduce": self.freq_reduce}


@keras.saving.register_keras_serializable(package="l2i_tf")
class Psi(keras.layers.Layer):
    """Ψ: the sequences of :class:`FeatureSequences` and the spectrogram X -> activations ``H [batch, T, K] >= 0``.

    Inputs: ``[seq_1, ..., seq_n, X]``. Per branch a Conv1D maps a sequence to ``hidden`` channels and it is
    resampled (bilinear) to T frames — the frame count of X for *this* input, so any clip length works (only X's
    shape is read; ``psi(sequences, num_frames=T)`` gives the same H without X). Branches are concatenated, mixed
    by a Conv1D, mapped to K channels and passed through a ReLU.

    Args:
        k: number of dictionary components K.
        hidden: channels per branch and after merging.
        kernel_size: temporal kernel of the Conv1D layers.
        dropout: dropout rate after merging (training only).
    """

    def __init__(self, k, hidden=128, kernel_size=3, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.hidden = hidden
        self.kernel_size = kernel_size
        self.dropout = dropout
        self.branches = []

    def build(self, input_shapes):
        sequences = input_shapes[:-1]
        if not sequences:
            raise ValueError("Psi needs at least one feature sequence before the spectrogram")
        # Sub-layers are made here, in this order (branches, merge, dropout, to_k): initializers draw their seeds
        # when made, so a fixed seed gives the same initial Ψ for the same tapped layers.
        for i, shape in enumerate(sequences):
            if len(shape) != 3:
                raise ValueError(f"Psi's input {i} must be a sequence [batch, time, width], got shape {tuple(shape)}")
            self.branches.append(
                keras.layers.Conv1D(self.hidden, self.kernel_size, padding="same", activation="relu", name=f"branch{i}")
            )
        self.merge = keras.layers.Conv1D(self.hidden, self.kernel_size, padding="same", activation="relu", name="merge")
        self.drop = keras.layers.Dropout(self.dropout)
        self.to_k = keras.layers.Conv1D(self.k, 1, name="to_k")
        for branch, shape in zip(self.branches, sequences):
            branch.build((None, None, shape[2]))
        self.merge.build((None, None, self.hidden * len(sequences)))
        self.to_k.build((None, None, self.hidden))

    def call(self, inputs, training=None, num_frames=None):
        """``num_frames`` (scalar int): T itself, when ``inputs`` are the sequences alone (no X to read it from)."""
        if num_frames is None:
            *sequences, spectrogram = inputs
            num_frames = tf.shape(spectrogram)[1]
        else:
            sequences = list(inputs)
        x = self._merge([branch(x) for x, branch in zip(sequences, self.branches)], num_frames)
        x = self.drop(x, training=training)
        return tf.nn.relu(self.to_k(x))

    def _merge(self, branches, num_frames):
        """``merge(concat(resize(b_i, T)))`` computed as ``Σ_i resize(b_i · K_i)`` shifted tap by tap: the merge
        Conv1D's kernel ``K`` ``[taps, n·hidden, hidden]`` splits into one ``K_i`` per branch, and resizing (a
        linear map along time, the same for every channel) commutes with mixing channels. So each branch's
        product runs at its own frame rate, usually a few times below T (the merge was most of Ψ's work), and is
        then resized; a branch longer than T is resized first. Same weights, same function (float rounding)."""
        kernel = self.merge.kernel
        taps, hidden = kernel.shape[0], self.hidden
        total = 0.0
        for i, b in enumerate(branches):
            k_i = tf.reshape(tf.transpose(kernel[:, i * hidden : (i + 1) * hidden, :], [1, 0, 2]), [hidden, -1])

            def product_then_resize(b=b, k_i=k_i):
                return resize_time(tf.matmul(b, k_i), num_frames)

            def resize_then_product(b=b, k_i=k_i):
                return tf.matmul(resize_time(b, num_frames), k_i)

            total += tf.cond(tf.shape(b)[1] <= num_frames, product_then_resize, resize_then_product)
        # out[t] = Σ_j y_j[t + j − left] with Conv1D's "same" padding (left = (taps − 1) // 2); split, pad and
        # slice rather than strided slices, whose gradients are several times slower on CPU
        left = (taps - 1) // 2
        padded = tf.pad(total, [[0, 0], [left, taps - 1 - left], [0, 0]])
        out = sum(
            tf.slice(y, [0, j, 0], tf.stack([-1, num_frames, -1]))
            for j, y in enumerate(tf.split(padded, taps, axis=-1))
        )
        if self.merge.use_bias:
            out = out + self.merge.bias
        return self.merge.activation(out)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[-1][0], input_shapes[-1][1], self.k)

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, hidden=self.hidden, kernel_size=self.kernel_size, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="l2i_tf")
class Theta(keras.layers.Layer):
    """Θ: ``H [batch, T, K]`` -> ``(logits [batch, C], z [batch, K], contributions [batch, K, C])``.

    z pools H over time; the logits are a linear map of z with no bias; ``contributions[b, k, c] = z_k·θ_{k,c}``
    sum over k to the logits exactly, which is what relevance decomposes.

    Pooling is gated attention over time (Ilse et al. 2018: softmax over time of
    ``w·(tanh(V h_t) ⊙ sigmoid(U h_t))``) or max over time. An optional ``valid_frames
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

    def pool(self, h, valid_frames=None):
        """``H [batch, T, K]`` -> ``z [batch, K]``."""
        valid = None if valid_frames is None else tf.cast(valid_frames, tf.bool)
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

    def call(self, h, valid_frames=None):
        z = self.pool(h, valid_frames)
        return tf.matmul(z, self.kernel), z, z[:, :, None] * self.kernel[None]

    def compute_output_spec(self, h, valid_frames=None):
        batch, k = h.shape[0], h.shape[-1]
        return (
            keras.KerasTensor((batch, self.num_classes), dtype="float32"),
            keras.KerasTensor((batch, k), dtype="float32"),
            keras.KerasTensor((batch, k, self.num_classes), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, pooling=self.pooling, attention_units=self.attention_units)
        return config
