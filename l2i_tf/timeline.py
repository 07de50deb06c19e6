"""Recordings of any length as a timeline of windows: cut, explained in bounded batches, overlap-added.

A recording of S samples is cut into W windows of L samples (the classifier's fixed input length, or the
explanation's window; a recording no longer than L is one window of its own length), hop = L/2, the last one ending
at the recording's end (a whole window of audio, as training cuts clips: :func:`l2i_tf.windows.window_starts`;
zero-padded, a mostly silent last window would weigh fully in the decision). The classifier and Ψ/Θ run on batches
of windows (:func:`map_chunks`: at most ``chunk_samples`` of audio at a time, so memory does not grow with the
recording). The recording's decision aggregates the window logits (``mean`` or ``max``); that class is explained in
every window, each window's interpretation is put at its place on the hop grid (:func:`on_grid`), weighted by a
Hann window and the overlap-added sum is divided by the overlap-added weights (:func:`overlap_add`): a constant-gain
round trip, so explaining with every component selected gives back the input, and the output is as long as the input.

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


def starts(length, hop: int, count, samples) -> tf.Tensor:
    """int32 [W]: the first sample of each window: 0, hop, 2·hop, …, and S − L for the last (it ends at S)."""
    return tf.minimum(tf.range(count) * hop, samples - length)


def last_shift(length, hop: int, count, samples) -> tf.Tensor:
    """How many samples before its place on the hop grid, (W − 1)·hop, the last window starts (0 for one window)."""
    return (count - 1) * hop + length - samples


def frame(waveform, length, hop: int, count) -> tf.Tensor:
    """Waveform [B, S] -> windows [B, W, L] at :func:`starts` (whole windows of audio: nothing padded)."""
    samples = tf.shape(waveform)[1]

    def windows():
        first = starts(length, hop, count, samples)
        return tf.gather(waveform, first[:, None] + tf.range(length)[None], axis=1)

    return tf.cond(count == 1, lambda: waveform[:, None, :length], windows)  # one window: the recording, no copy


def on_grid(windows, last, shift) -> tf.Tensor:
    """Outputs of windows ``[c, ..., L]`` at :func:`starts` -> the same at their places on the hop grid, as
    :func:`overlap_add` adds them: the last windows of their recordings (``last`` bool [c]) shifted ``shift``
    (:func:`last_shift`) samples earlier. What a shift moves past a window's start lands past the recording's end,
    where the overlap-add crops it; the part of the last window before its grid place is dropped (the windows
    before cover it)."""
    shape = tf.concat([[-1], tf.ones([windows.shape.rank - 1], tf.int32)], 0)
    return tf.cond(
        shift != 0,
        lambda: tf.where(tf.reshape(last, shape), tf.roll(windows, -shift, axis=-1), windows),
        lambda: windows,
    )


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
    """int32 [B, W] first and one-past-last input sample of each window (:func:`starts`)."""
    start = starts(length, hop, count, samples)
    end = start + length
    tile = tf.stack([batch, 1])
    return tf.tile(start[None], tile), tf.tile(end[None], tile)


def _batches(n, chunk_samples, length) -> tuple[tf.Tensor, tf.Tensor]:
    """(windows per batch, batches) for n windows of ``length`` samples: at most ``chunk_samples`` of audio a batch
    (at least one window), the batches as even as possible so the last is not mostly padding."""
    chunk = tf.maximum(tf.minimum(chunk_samples // tf.maximum(length, 1), n), 1)
    chunks = (n + chunk - 1) // chunk
    return (n + chunks - 1) // chunks, chunks


def _take(x, start, size, n) -> tf.Tensor:
    """Rows ``start .. start + size`` of ``x [n, ...]``, zero-padded to ``size`` rows past ``n`` (one batch's copy,
    never a padded copy of all of ``x``)."""
    rows = x[start : tf.minimum(start + size, n)]
    return tf.pad(rows, [[0, size - tf.shape(rows)[0]]] + [[0, 0]] * (x.shape.rank - 1))


def map_chunks(fn, elems, chunk_samples, length, signature) -> dict:
    """``fn`` over the leading axis of ``elems`` (a tuple of tensors [n, ...]) in batches of at most
    ``⌊chunk_samples / length⌋`` windows (at least one; :func:`_batches`), one batch at a time; returns ``fn``'s
    dict of outputs [n, ...]. ``signature``: ``{key: dtype}`` of ``fn``'s outputs."""
    n = tf.shape(elems[0])[0]
    chunk, chunks = _batches(n, chunk_samples, length)

    shapes = {}  # each output's static shape past the batch axis, read when the body is traced

    def body(i, outputs):
        out = fn(*(_take(x, i * chunk, chunk, n) for x in elems))
        shapes.update({key: out[key].shape[1:] for key in outputs})
        return i + 1, {key: ta.write(i, out[key]) for key, ta in outputs.items()}

    outputs = {key: tf.TensorArray(dtype, size=chunks, infer_shape=False) for key, dtype in signature.items()}
    _, outputs = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), outputs), parallel_iterations=1)
    return {key: tf.ensure_shape(ta.concat()[:n], [None, *shapes[key]]) for key, ta in outputs.items()}


class _Rows:
    """Where the windows [n = B·W] of :func:`overlap_add_chunks` land: the recordings' samples one after another are
    output rows, and each window's samples are weighted as :func:`overlap_add` weights them."""

    def __init__(self, n, chunk, length, hop: int, count, samples, total_rows):
        self.n, self.chunk, self.length, self.hop, self.count = n, chunk, length, hop, count
        self.samples, self.total_rows = samples, total_rows
        self.weights = tf.where(count > 1, window_weights(length), tf.ones([length]))
        # The overlap-added weights under a window depend only on the windows within `margin` of it: those of a
        # short recording of at most 2·margin + 1 windows stand for every window (its middle one for the middle).
        self.margin = (length + hop - 1) // hop
        self.short = tf.minimum(count, 2 * self.margin + 1)
        self.norm = tf.signal.overlap_and_add(tf.tile(self.weights[None], [self.short, 1]), hop)

    def first(self, ids):
        """The output row of each window's first sample; ``total_rows`` for padded windows (ids >= n)."""
        last = tf.minimum(ids, self.n - 1)
        return tf.where(ids < self.n, last // self.count * self.samples + last % self.count * self.hop, self.total_rows)

    def scale(self, ids):
        """[c, L]: each sample's weight over the overlap-added weights under it; 0 for padded windows and samples
        past the recording's end."""
        w = tf.minimum(ids, self.n - 1) % self.count
        position = w[:, None] * self.hop + tf.range(self.length)[None]  # [c, L] within the recording
        margin, short = self.margin, self.short
        like = tf.where(w < margin, w, tf.where(w >= self.count - margin, w - self.count + short, margin))
        norm = tf.gather(self.norm, like[:, None] * self.hop + tf.range(self.length)[None])
        keep = (ids[:, None] < self.n) & (position < self.samples)
        return tf.where(keep, self.weights[None] / norm, 0.0), keep

    def added(self, ids, x, start):
        """Windows ``x [c, ..., L]`` weighted and added into rows ``start .. start + c·L`` (consecutive windows
        start at most L rows apart: a hop within a recording, the rest of the last window at its end)."""
        scale, keep = self.scale(ids)
        rows = tf.where(keep, self.first(ids)[:, None] + tf.range(self.length)[None] - start, 0)  # else 0: adds 0
        x = x * tf.reshape(scale, tf.concat([[self.chunk], tf.ones([x.shape.rank - 2], tf.int32), [self.length]], 0))
        zeros = tf.zeros(tf.concat([[self.chunk * self.length], tf.shape(x)[1:-1]], 0), x.dtype)
        return tf.tensor_scatter_nd_add(zeros, tf.reshape(rows, [-1, 1]), _rows(x))


def overlap_add_chunks(fn, elems, chunk_samples, length, hop: int, count, batch, samples, signature) -> dict:
    """Overlap-add as the windows come: ``fn`` over the leading axis of ``elems`` (a tuple of tensors [n = B·W,
    ...]) in batches as :func:`map_chunks` does, each output window ``[..., L]`` weighted (Hann, divided by the
    overlap-added weights at each sample: :func:`overlap_add`'s result) and added into its recording at its start.
    ``signature``: ``{key: (dtype, inner shape)}`` of ``fn``'s outputs per window without the last axis, e.g.
    ``(tf.float32, [])`` for [n, L] or ``(tf.float32, [N])`` for [n, N, L]. Returns ``{key: [B, ..., S]}``.

    Windows start at increasing output rows, so once a batch is added every row before the next batch's first
    window is final: it is written into the output at its place (:func:`_write`, in place), and only the rows the
    next batch can still reach are carried. Memory holds one batch, its rows and the output once: never a buffer
    of the whole output that each batch would copy, nor the finished rows collected then copied into the output."""
    n = tf.shape(elems[0])[0]
    chunk, chunks = _batches(n, chunk_samples, length)
    place = _Rows(n, chunk, length, hop, count, samples, batch * samples)
    # one window per recording, all in one batch: each window is its recording (weights 1), nothing to add
    single = (count == 1) & (chunks == 1) & (length == samples)
    width = {key: math.prod(inner) for key, (_, inner) in signature.items()}  # values per output row

    def body(i, carried, outputs):
        ids = i * chunk + tf.range(chunk)
        start, end = place.first(i * chunk), place.first((i + 1) * chunk)  # this batch's first row, the next's
        out = fn(*(_take(x, i * chunk, chunk, n) for x in elems))
        carried_out, outputs_out = {}, {}
        for key, rows in carried.items():

            def add(x=out[key], rows=rows, output=outputs[key], width=width[key]):
                fresh = place.added(ids, x, start)
                size = tf.maximum(tf.maximum(tf.shape(fresh)[0], tf.shape(rows)[0]), end - start)
                rows = _pad_rows(fresh, size) + _pad_rows(rows, size)
                return _write(output, rows[: end - start], start, samples, width), rows[end - start :]

            def whole(x=out[key], rows=rows):  # the windows [B, ..., S] are the output's layout already
                return tf.reshape(x, [-1]), rows[:0]

            outputs_out[key], carried_out[key] = tf.cond(single, whole, add)
        return i + 1, carried_out, outputs_out

    carried = {key: tf.zeros([0, *inner], dtype) for key, (dtype, inner) in signature.items()}
    outputs = {
        key: _output(tf.where(single, 0, batch * samples), width[key], dtype) for key, (dtype, _) in signature.items()
    }
    invariants = {key: tf.TensorShape([None, *inner]) for key, (_, inner) in signature.items()}
    _, _, outputs = tf.while_loop(
        lambda i, *_: i < chunks,
        body,
        (tf.constant(0), carried, outputs),
        shape_invariants=(tf.TensorShape([]), invariants, {key: tf.TensorShape([None]) for key in signature}),
        parallel_iterations=1,
    )
    return {key: tf.reshape(outputs[key], [batch, *inner, samples]) for key, (_, inner) in signature.items()}


INPLACE_LIMIT = 2**31 - 1  # in-place writes index the output with int32: larger outputs are written by copies


def _output(rows, width: int, dtype) -> tf.Tensor:
    """An output of ``rows`` samples × ``width`` values, flat ([B·width·S], the layout of [B, width, S]), left
    uninitialised: :func:`_write` writes every element once."""
    size = tf.cast(rows, tf.int64) * width
    return tf.cond(
        size <= INPLACE_LIMIT,
        lambda: tf.raw_ops.Empty(shape=tf.cast(size, tf.int32)[None], dtype=dtype, init=False),
        lambda: tf.zeros(size[None], dtype),
    )


def _write(output, rows, first, samples, width: int) -> tf.Tensor:
    """``rows [m, ...]`` (output rows ``first .. first + m``: the recordings' samples one after another, ``width``
    values each) written into the flat output [B·width·S] at their places in [B, width, S]: in place
    (``InplaceUpdate`` aliases ``output``, which nothing else reads), or, past :data:`INPLACE_LIMIT` elements, by a
    scatter that copies the output."""
    m = tf.shape(rows)[0]
    row = tf.cast(first + tf.range(m), tf.int64)[None]  # [1, m]
    s = tf.cast(samples, tf.int64)
    index = tf.reshape(row // s * width * s + tf.range(width, dtype=tf.int64)[:, None] * s + row % s, [-1])
    values = tf.reshape(tf.transpose(tf.reshape(rows, [m, width])), [-1])  # [width, m], as the index
    return tf.cond(
        tf.size(output, out_type=tf.int64) <= INPLACE_LIMIT,
        lambda: tf.raw_ops.InplaceUpdate(x=output, i=tf.cast(index, tf.int32), v=values),
        lambda: tf.tensor_scatter_nd_update(output, index[:, None], values),
    )


def _pad_rows(x, rows) -> tf.Tensor:
    """``x [r, ...]`` zero-padded to ``rows`` rows (``rows >= r``)."""
    return tf.pad(x, [[0, rows - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1))


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
