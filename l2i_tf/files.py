"""Atomic writes: files and folders appear complete or not at all, and nothing the user had is lost on failure.

Every writer in the package goes through these helpers: a temporary sibling (hidden, same folder, so the final
rename never crosses file systems) is written completely and then renamed into place. What they make has the
mode ``open`` and ``os.mkdir`` give (files 0o666, folders 0o777, less the umask), never ``tempfile``'s 0o600/0o700:
exports and reports are read by other users (TF Serving in a container, a web server).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success it replaces ``path``, on error it is removed.

    The suffix is kept because some writers pick the format from it (``.keras``, ``.npz``). The temporary path is not
    created here: the writer creates it (``open``), so the file gets the usual mode (0o666 & ~umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically (numpy values and paths allowed)."""
    write_text(path, json.dumps(obj, indent=2, default=json_default))


def make_hidden_folder(parent: str | Path, prefix: str) -> Path:
    """Create and return a new empty folder ``parent/<prefix><random>`` (``parent`` must exist).

    Made with ``os.mkdir``, so it has the mode any new folder gets (0o777 & ~umask): renamed into place, it is as
    readable as the user's other folders (to TF Serving in a container, a web server). ``tempfile.mkdtemp`` would
    make it 0o700 whatever the umask.
    """
    parent = Path(parent)
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary folder name {prefix}* in {str(parent)!r}")


@contextlib.contextmanager
def temporary_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder next to ``folder`` (its parent is created); it is removed on exit unless it was
    renamed (:func:`swap_in`) meanwhile."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_hidden_folder(folder.parent, f".{folder.name}.tmp-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``folder``; on success it becomes ``folder``.

    An existing ``folder`` raises ``FileExistsError`` unless ``overwrite``; then it is moved aside, replaced, and
    removed only after the new one is in place (put back if the rename fails). On error nothing changes. The folder
    gets the mode ``os.mkdir`` gives (0o777 & ~umask).
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{str(folder)!r} exists; it is never overwritten without being asked to")
    with temporary_folder(folder) as tmp:
        yield tmp
        swap_in(tmp, folder, overwrite)


def swap_in(tmp: Path, folder: Path, overwrite: bool = False) -> None:
    """Rename the finished ``tmp`` folder to ``folder``; an old ``folder`` (with ``overwrite``) is removed last.

    Without ``overwrite``, a ``folder`` that exists, or appears just before the rename, raises ``FileExistsError``.
    """
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{str(folder)!r} appeared while it was being written; nothing was replaced")
    old = None
    if folder.exists():
        old = make_hidden_folder(folder.parent, f".{folder.name}.old-")
        os.rename(folder, old / "previous")
    try:
        os.rename(tmp, folder)
    except OSError as e:
        if old is not None:
            os.rename(old / "previous", folder)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(e, FileExistsError):
            raise FileExistsError(e.errno, f"{str(folder)!r} appeared while it was being written") from e
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
