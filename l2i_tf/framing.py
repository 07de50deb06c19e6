"""The STFT's framing and overlap-add, by whole hops when the hop divides the frame.

``tf.signal.frame`` gathers every frame sample by sample, and ``tf.signal.overlap_and_add`` transposes, pads and
sums. When the frame is ``r`` whole hops, a signal reshaped into rows of one hop gives every frame as ``r``
consecutive rows: framing gathers whole rows (one pad for both ends), and overlap-add is ``r`` shifted sums of
rows. On a batch of 32 five-second clips (1024 / 256 samples) that is 5.0 against 5.7 ms of CPU for the framing
and 15.6 against 22.8 ms for the overlap-add. The results equal ``tf.signal``'s (framing exactly,
overlap-add to float rounding); any other hop falls back to ``tf.signal``.
"""

from __future__ import annotations

import tensorflow as tf


def frames(signal, frame_length: int, frame_step: int, front_pad: int = 0) -> tf.Tensor:
    """``tf.signal.frame(pad(signal, [front_pad, 0]), frame_length, frame_step, pad_end=True)``: ``[..., n]`` ->
    ``[..., T, frame_length]`` with ``T = ⌈(front_pad + n) / frame_step⌉``, the end zero-padded."""
    signal = tf.convert_to_tensor(signal)
    lead = [[0, 0]] * (signal.shape.rank - 1)
    if frame_length % frame_step:
        padded = tf.pad(signal, [*lead, [front_pad, 0]])
        return tf.signal.frame(padded, frame_length, frame_step, pad_end=True)
    hops = frame_length // frame_step
    length = tf.shape(signal)[-1] + front_pad
    count = (length + frame_step - 1) // frame_step
    rows = count + hops - 1
    padded = tf.pad(signal, [*lead, [front_pad, rows * frame_step - length]])
    lead_shape = tf.shape(signal)[:-1]
    rows = tf.reshape(padded, tf.concat([lead_shape, [rows, frame_step]], 0))
    which = tf.range(count)[:, None] + tf.range(hops)[None]  # frame t is rows t .. t + hops - 1
    framed = tf.gather(rows, which, axis=signal.shape.rank - 1)  # [..., T, hops, hop]
    return tf.reshape(framed, tf.concat([lead_shape, [count, frame_length]], 0))


def overlap_add(frames, frame_step: int) -> tf.Tensor:
    """``tf.signal.overlap_and_add(frames, frame_step)``: ``[..., T, L]`` -> ``[..., (T − 1)·frame_step + L]``."""
    frames = tf.convert_to_tensor(frames)
    frame_length = frames.shape[-1]
    if frame_length is None or frame_length % frame_step:
        return tf.signal.overlap_and_add(frames, frame_step)
    hops = frame_length // frame_step
    shape = tf.shape(frames)
    lead = [[0, 0]] * (frames.shape.rank - 2)
    rows = tf.reshape(frames, tf.concat([shape[:-1], [hops, frame_step]], 0))  # [..., T, hops, hop]
    total = 0.0
    for j in range(hops):  # row j of frame t lands on output row t + j
        total += tf.pad(rows[..., j, :], [*lead, [j, hops - 1 - j], [0, 0]])
    return tf.reshape(total, tf.concat([shape[:-2], [-1]], 0))


def overlap_add_crop(frames, frame_step: int, start: int, num_samples) -> tf.Tensor:
    """``overlap_add(frames, frame_step)[..., start : start + num_samples]``.

    The ISTFT crops its front pad (``start = frame_length − frame_step``) and keeps at most ``T·frame_step``
    samples: with whole hops those are the rows every frame overlaps, ``T − r + 1`` of them, each the sum of ``r``
    frame rows, so the sum is taken there alone (no padding, no edge rows). Other crops and hops take
    :func:`overlap_add` and slice."""
    frames = tf.convert_to_tensor(frames)
    frame_length = frames.shape[-1]

    def crop():
        return overlap_add(frames, frame_step)[..., start : start + num_samples]

    if frame_length is None or frame_length % frame_step or start != frame_length - frame_step:
        return crop()
    hops = frame_length // frame_step
    shape = tf.shape(frames)
    inner = shape[-2] - hops + 1  # rows hops − 1 .. T − 1 of the overlap-added signal

    def interior():
        rows = tf.reshape(frames, tf.concat([shape[:-1], [hops, frame_step]], 0))  # [..., T, hops, hop]
        total = rows[..., hops - 1 : hops - 1 + inner, 0, :]
        for j in range(1, hops):
            total += rows[..., hops - 1 - j : hops - 1 - j + inner, j, :]
        return tf.reshape(total, tf.concat([shape[:-2], [-1]], 0))[..., :num_samples]

    return tf.cond(inner * frame_step >= num_samples, interior, crop)
