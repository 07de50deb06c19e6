"""Fixed-width float32 rows on disk, read on demand: lets a job loop over a split of any size in batches while
holding one batch in memory (``l2i-tf evaluate``'s test split)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DTYPE = np.dtype("float32")


class Rows:
    """``[n, width]`` float32 rows in a raw file, as an array for reading: ``len``, ``shape`` and indexing by an
    int, a slice or an array of ints read only those rows. ``np.asarray(rows)`` reads every row.

    Open while the file exists; :meth:`close` (or a ``with`` block) releases it.
    """

    def __init__(self, path: str | Path, width: int):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        self.width = int(width)
        row_bytes = self.width * DTYPE.itemsize
        if self.width < 1 or size % row_bytes:
            os.close(self._fd)
            raise ValueError(f"{self.path}: {size} bytes is not a whole number of rows of {self.width} float32")
        self._n = size // row_bytes
        self.dtype = DTYPE
        self.ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self.width)

    def __len__(self) -> int:
        return self._n

    def _read(self, start: int, stop: int) -> np.ndarray:
        row_bytes = self.width * DTYPE.itemsize
        count = max(stop - start, 0)
        data = os.pread(self._fd, count * row_bytes, start * row_bytes)
        return np.frombuffer(data, DTYPE).reshape(count, self.width).copy()

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            row = int(key) + self._n if key < 0 else int(key)
            if not 0 <= row < self._n:
                raise IndexError(f"row {key} out of range for {self._n} rows")
            return self._read(row, row + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            if step == 1:
                return self._read(start, stop)
            key = np.arange(start, stop, step)
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        out = np.empty((len(index), self.width), DTYPE)
        for i, row in enumerate(index.reshape(-1)):
            out[i] = self[int(row)]
        return out.reshape(*index.shape, self.width)

    def __iter__(self):
        for row in range(self._n):
            yield self[row]

    def __array__(self, dtype=None, copy=None):
        whole = self._read(0, self._n)
        return whole if dtype is None else whole.astype(dtype)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except OSError:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"Rows({str(self.path)!r}, shape={self.shape})"


class RowWriter:
    """Appends ``[width]`` or ``[m, width]`` float32 rows to a new file; :meth:`rows` opens it for reading."""

    def __init__(self, path: str | Path, width: int):
        self.path = Path(path)
        self.width = int(width)
        self._file = open(self.path, "xb")  # never overwrites
        self.count = 0

    def append(self, rows) -> None:
        rows = np.asarray(rows, DTYPE)
        rows = rows[None] if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, the file holds rows of {self.width}")
        self._file.write(np.ascontiguousarray(rows).tobytes())
        self.count += len(rows)

    def rows(self) -> Rows:
        self._file.close()
        return Rows(self.path, self.width)
