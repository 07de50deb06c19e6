"""Fixed-length windows of clips, for classifiers whose input length is fixed: every sample of every clip is seen.

A clip of S samples cut for a classifier of L samples gives windows starting at ``0, L/2, L, ...`` (hop ``L // 2``)
while a window still ends before the clip does, then one last window aligned to the clip's end (starting at
``S - L``), so no window holds padding unless the clip itself is shorter than L: then it is one window, zero-padded
at the end. A clip of exactly L samples is one window.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def window_starts(num_samples: int, length: int, hop: int | None = None) -> np.ndarray:
    """Start sample of each window of ``length`` samples over a clip of ``num_samples`` (hop default ``length // 2``;
    the last window ends at the clip's end; one window at 0 when the clip is no longer than ``length``)."""
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"window length must be a positive number of samples, got {length!r}")
    hop = max(length // 2, 1) if hop is None else hop
    if not isinstance(hop, (int, np.integer)) or hop < 1:
        raise ValueError(f"window hop must be a positive number of samples, got {hop!r}")
    if num_samples <= length:
        return np.zeros(1, dtype="int64")
    return np.append(np.arange(0, num_samples - length, hop), num_samples - length).astype("int64")


@dataclasses.dataclass(frozen=True)
class Windows:
    """Windows cut from clips: ``waves [m, length]``, ``labels`` (the clip's row, repeated per window) and ``clip``
    (int ``[m]``, the clip each window comes from); ``clips``: how many clips were cut."""

    waves: np.ndarray
    labels: np.ndarray
    clip: np.ndarray
    clips: int

    def counts(self) -> dict:
        """``{"clips": n, "windows": m}`` as ``metrics.json`` records them."""
        return {"clips": int(self.clips), "windows": int(len(self.waves))}


def cut(clips, labels, length: int, hop: int | None = None) -> Windows:
    """Cut every clip (a sequence of 1-D arrays of any lengths, or ``[n, S]``) into windows of ``length`` samples
    (see :func:`window_starts`); the labels' rows are repeated per window."""
    labels = np.asarray(labels)
    if len(clips) != len(labels):
        raise ValueError(f"{len(clips)} clips but {len(labels)} label rows")
    clips = [np.asarray(clip, dtype="float32") for clip in clips]
    for i, clip in enumerate(clips):
        if clip.ndim != 1:
            raise ValueError(f"clip {i} must be 1-D [samples], got shape {clip.shape}")
    starts = [window_starts(len(clip), length, hop) for clip in clips]
    origin = np.repeat(np.arange(len(clips), dtype="int64"), [len(s) for s in starts])
    waves = np.zeros((len(origin), length), dtype="float32")  # filled in place: one copy of the windows
    row = 0
    for clip, clip_starts in zip(clips, starts, strict=True):
        for start in clip_starts:
            piece = clip[start : start + length]
            waves[row, : len(piece)] = piece
            row += 1
    return Windows(waves, labels[origin], origin, len(clips))
