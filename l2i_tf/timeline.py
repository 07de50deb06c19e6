"""Recordings of any length as a timeline of windows: cut, explained in bounded batches, overlap-added.

A recording of S samples is cut into W windows of L samples (the classifier's fixed input length, or the
explanation's window; a recording no longer than L is one window of its own length), hop = L/2, the last one
zero-padded. The classifier and Ψ/Θ run on batches of windows (:func:`map_chunks`: at most ``chunk_samples`` of
audio at a time, so memory does not grow with the recording). The recording's decision aggregates the window
logits (``mean`` or ``max``); that class is explained in every window, each window's interpretation is weighted
by a Hann window and the overlap-added sum is divided by the overlap-added weights (:func:`overlap_add`): a
constant-gain round trip, so explaining with every component selected gives back the input, and the output is as
long as the input.

Every function here builds TensorFlow ops, so the library (``Explainer.explain``) and the SavedModel signatures
run the same graph.
"""

from __future__ import annotations

import math

import tensorflow as tf

AGGREGATES = ("mean", "max")
WHOLE_CLIP_SECONDS = 10.0  # a variable-length classifier hears recordings up to this long whole
CHUNK_SECONDS = 20.0  # audio per batch of windows of a long recording


class WindowError(ValueError):
    """A timeline window (``seconds``) that the classifier cannot take: longer than its fixed input or shorter
    than one STFT frame."""

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.seconds = seconds


def check_aggregate(aggregate: str) -> str:
    """``aggregate`` if it is one of :data:`AGGREGATES`; ``ValueError`` naming it otherwise."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; use one of: {', '.join(AGGREGATES)}")
    return aggregate


def window_weights(length) -> tf.Tensor:
    """float32 [L]: ``sin²(π (n + ½) / L)``, a Hann window shifted half a sample: positive everywhere (so every
    sample has weight) and, for even L at hop L/2, summing to exactly 1 between two windows."""
    n = tf.range(length, dtype=tf.float32)
    return tf.sin(math.pi * (n + 0.5) / tf.cast(length, tf.float32)) ** 2


def plan(samples, window: int, hop: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(window length L = min(S, window), window count W = 1 + ⌈max(S − window, 0) / hop⌉) for S samples."""
    samples = tf.convert_to_tensor(samples, tf.int32)
    length = tf.minimum(samples, window)
    count = 1 + (tf.maximum(samples - window, 0) + hop - 1) // hop
    return length, count


def frame(waveform, length, hop: int, count) -> tf.Tensor:
    """Waveform [B, S] -> windows [B, W, L] starting at 0, hop, 2·hop, …; the end zero-padded."""
    padded = (count - 1) * hop + length
    waveform = tf.pad(waveform, [[0, 0], [0, tf.maximum(padded - tf.shape(waveform)[1], 0)]])
    return tf.signal.frame(waveform[:, :padded], length, hop, axis=-1)


def overlap_add(frames, hop: int, samples) -> tf.Tensor:
    """Windows [..., W, L] -> [..., S]: Hann-weighted overlap-add divided by the overlap-added weights (one window:
    unchanged), cropped to S samples."""
    length, count = tf.shape(frames)[-1], tf.shape(frames)[-2]
    weights = tf.where(count > 1, window_weights(length), tf.ones([length]))
    total = tf.signal.overlap_and_add(frames * weights, hop)
    norm = tf.signal.overlap_and_add(tf.tile(weights[None], [count, 1]), hop)
    return (total / norm)[..., :samples]


def aggregate_logits(logits, how: str) -> tf.Tensor:
    """Window logits [B, W, C] -> the recording's [B, C]: their mean or maximum over windows."""
    check_aggregate(how)
    return tf.reduce_mean(logits, axis=1) if how == "mean" else tf.reduce_max(logits, axis=1)


def window_bounds(batch, length, hop: int, count, samples) -> tuple[tf.Tensor, tf.Tensor]:
    """int32 [B, W] first and one-past-last input sample of each window (the padded tail excluded)."""
    start = tf.range(count) * hop
    end = tf.minimum(start + length, samples)
    tile = tf.stack([batch, 1])
    return tf.tile(start[None], tile), tf.tile(end[None], tile)


def _batches(n, chunk_samples, length) -> tuple[tf.Tensor, tf.Tensor]:
    """(windows per batch, batches) for n windows of ``length`` samples: at most ``chunk_samples`` of audio a batch
    (at least one window), the batches as even as possible so the last is not mostly padding."""
    chunk = tf.maximum(tf.minimum(chunk_samples // tf.maximum(length, 1), n), 1)
    chunks = (n + chunk - 1) // chunk
    return (n + chunks - 1) // chunks, chunks


def map_chunks(fn, elems, chunk_samples, length, signature) -> dict:
    """``fn`` over the leading axis of ``elems`` (a tuple of tensors [n, ...]) in batches of at most
    ``⌊chunk_samples / length⌋`` windows (at least one; :func:`_batches`), one batch at a time; returns ``fn``'s
    dict of outputs [n, ...]. ``signature``: ``{key: dtype}`` of ``fn``'s outputs."""
    n = tf.shape(elems[0])[0]
    chunk, chunks = _batches(n, chunk_samples, length)

    def split(x):
        pad = [[0, chunks * chunk - n]] + [[0, 0]] * (x.shape.rank - 1)
        return tf.reshape(tf.pad(x, pad), tf.concat([[chunks, chunk], tf.shape(x)[1:]], 0))

    out = tf.map_fn(
        lambda e: fn(*e), tuple(split(x) for x in elems), fn_output_signature=signature, parallel_iterations=1
    )
    return {key: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0))[:n] for key, v in out.items()}


def overlap_add_chunks(fn, elems, chunk_samples, length, hop: int, count, batch, samples, signature) -> dict:
    """Overlap-add as the windows come: ``fn`` over the leading axis of ``elems`` (a tuple of tensors [n = B·W,
    ...]) in batches as :func:`map_chunks` does, each output window ``[..., L]`` weighted (Hann, divided by the
    overlap-added weights at each sample: :func:`overlap_add`'s result) and added into its recording at its start,
    so memory holds the outputs [B, ..., S] and one batch, never every window. ``signature``: ``{key: (dtype, inner
    shape)}`` of ``fn``'s outputs per window without the last axis, e.g. ``(tf.float32, [])`` for [n, L] or
    ``(tf.float32, [N])`` for [n, N, L]. Returns ``{key: [B, ..., S]}``."""
    n = tf.shape(elems[0])[0]
    chunk, chunks = _batches(n, chunk_samples, length)
    elems = tuple(tf.pad(x, [[0, chunks * chunk - n]] + [[0, 0]] * (x.shape.rank - 1)) for x in elems)
    weights = tf.where(count > 1, window_weights(length), tf.ones([length]))
    norm = tf.signal.overlap_and_add(tf.tile(weights[None], [count, 1]), hop)  # [(W - 1)·hop + L]
    # One window per recording, all in one batch: each window is its recording (weights 1), no scatter needed.
    whole = (count == 1) & (chunks == 1) & (length == samples)

    def scatter(ids, x, buffer):
        position = (tf.minimum(ids, n - 1) % count)[:, None] * hop + tf.range(length)[None]  # [c, L]
        # padded windows and samples past the recording's end add zeros (to its first row)
        keep = (ids[:, None] < n) & (position < samples)
        scale = tf.where(keep, weights[None] / tf.gather(norm, position), 0.0)
        rows = (tf.minimum(ids, n - 1) // count)[:, None] * samples + tf.where(keep, position, 0)
        x = x * tf.reshape(scale, tf.concat([[chunk], tf.ones([x.shape.rank - 2], tf.int32), [length]], 0))
        return tf.tensor_scatter_nd_add(buffer, tf.reshape(rows, [-1, 1]), _rows(x))

    def body(i, buffers):
        ids = i * chunk + tf.range(chunk)
        out = fn(*(x[i * chunk : (i + 1) * chunk] for x in elems))
        return i + 1, {
            key: tf.cond(
                whole,
                lambda b=buffer, x=out[key]: tf.reshape(_rows(x), tf.shape(b)),
                lambda b=buffer, x=out[key]: scatter(ids, x, b),
            )
            for key, buffer in buffers.items()
        }

    buffers = {
        key: tf.zeros(tf.concat([[batch * samples], tf.constant(inner, tf.int32)], 0), dtype)
        for key, (dtype, inner) in signature.items()
    }
    _, buffers = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), buffers), parallel_iterations=1)
    result = {}
    for key, buffer in buffers.items():
        inner = len(signature[key][1])
        x = tf.reshape(buffer, tf.concat([[batch, samples], tf.shape(buffer)[1:]], 0))
        result[key] = tf.transpose(x, [0, *range(2, inner + 2), 1]) if inner else x
    return result


def _rows(x) -> tf.Tensor:
    """Windows ``[c, ..., L]`` -> samples as rows ``[c·L, ...]``."""
    rank = x.shape.rank
    x = tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])  # [c, L, ...]
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))


def check_window(window_seconds: float, sample_rate: int, clip_samples: int | None, frame_length: int) -> int:
    """The window length in samples for ``window_seconds`` (0: the classifier's fixed input, or
    :data:`WHOLE_CLIP_SECONDS` for a variable-length classifier); :class:`WindowError` naming the values when it
    is longer than the classifier accepts or shorter than one STFT frame."""
    if not window_seconds >= 0:
        raise ValueError(f"window_seconds must be >= 0 (0: the classifier's input length), got {window_seconds!r}")
    if not window_seconds:
        return int(clip_samples) if clip_samples else int(round(WHOLE_CLIP_SECONDS * sample_rate))
    window = int(round(window_seconds * sample_rate))
    if clip_samples and window > clip_samples:
        raise WindowError(
            f"window of {window_seconds:g} s ({window} samples) is longer than the classifier's fixed input of "
            f"{clip_samples} samples ({clip_samples / sample_rate:g} s at {sample_rate} Hz)",
            window_seconds,
        )
    if window < frame_length:
        raise WindowError(
            f"window of {window_seconds:g} s ({window} samples) is shorter than one STFT frame ({frame_length} "
            f"samples at {sample_rate} Hz)",
            window_seconds,
        )
    return window
