"""The files of a bulk explanation: where each input's outputs go, writing them atomically, when they are complete,
and the index (JSON Lines + Parquet) and dead-letter file of a run.

Layout under ``out`` for an input ``<base>/a/b.ogg`` (``base``: the input glob's folder before its first wildcard):
``a/b.ogg.wav`` (the interpretation), ``a/b.ogg.components/component_<k>.wav`` (optional) and ``a/b.ogg.json`` (the
summary ``l2i-tf explain`` writes as explanation.json, plus the settings and the input file's size and modification
time that made it). The JSON is written last: an input is complete when its JSON was made with the same settings from
the same input file (same size and modification time) and every file it lists exists.

``out`` belongs to one input glob, recorded in ``job.json`` when a job starts: its index lists that glob's inputs,
mirrored below that glob's folder, so a job with another glob is refused (:func:`check_job`) rather than replacing
the index.

Local paths are written through :mod:`l2i_tf.files` (temporary sibling + rename); other file systems (``gs://``,
``s3://``) through Beam's ``FileSystems``, whose objects appear whole when closed.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import soundfile

from l2i_tf import files

INDEX_FILE = "index.jsonl"
PARQUET_FILE = "index.parquet"
ERRORS_FILE = "errors.jsonl"
JOB_FILE = "job.json"
WILDCARDS = "*?["


def is_local(path: str) -> bool:
    """A path without a scheme (``gs://``, ``s3://``...) is a local one."""
    return "://" not in str(path)


def is_under(folder: str, path: str) -> bool:
    """Whether ``path`` lies inside ``folder`` (absolute local paths or URLs of one file system)."""
    return path.startswith(folder.rstrip("/") + "/")


def join(folder: str, relative: str) -> str:
    """``folder`` / ``relative`` on any file system (``/`` separators)."""
    return f"{str(folder).rstrip('/')}/{relative}"


def glob_base(pattern: str) -> str:
    """The folder that holds every match of ``pattern``: its part before the first wildcard, up to a ``/``."""
    cut = min((pattern.index(c) for c in WILDCARDS if c in pattern), default=len(pattern))
    head = pattern[:cut]
    if cut == len(pattern):  # a single file: its folder
        head = head.rstrip("/")
    return head[: head.rfind("/") + 1] if "/" in head else ""


def absolute_glob(pattern: str) -> str:
    """A local glob made absolute (matches then carry absolute paths); a remote one unchanged."""
    if not is_local(pattern):
        return pattern
    trailing = "/" if pattern.endswith("/") else ""
    return os.path.abspath(os.path.expanduser(pattern)) + trailing


class Layout:
    """Where the outputs of each input go: its path relative to ``base``, mirrored under ``out``."""

    def __init__(self, base: str, out: str):
        self.base, self.out = base, str(out)

    def relative(self, path: str) -> str:
        if not path.startswith(self.base):
            raise ValueError(f"{path!r} is not under {self.base!r}")
        return path[len(self.base) :].lstrip("/")

    def interpretation(self, path: str) -> str:
        return self.relative(path) + ".wav"

    def summary(self, path: str) -> str:
        return self.relative(path) + ".json"

    def component(self, path: str, k: int) -> str:
        return f"{self.relative(path)}.components/component_{k:03d}.wav"

    def full(self, relative: str) -> str:
        return join(self.out, relative)


# -------------------------------------------------------------------- reading and writing any file system


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    if is_local(path):
        with files.atomic_file(path) as tmp:
            tmp.write_bytes(data)
        return
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes | None:
    """The content of ``path``, or None if it does not exist."""
    if is_local(path):
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def exists(path: str) -> bool:
    if is_local(path):
        return Path(path).is_file()
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A float32 WAV file (what ``l2i-tf explain`` writes) as bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, np.float32), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


# -------------------------------------------------------------------- the job an output folder belongs to


class UnreadableRecordError(ValueError):
    """``out``'s ``job.json`` or index is not what a bulk explanation writes (the message names the file)."""


class OutFolderError(ValueError):
    """``out`` holds the outputs of another input glob than ``input_glob``: ``recorded`` (from its ``job.json``), or,
    for a folder written before ``job.json`` existed, unknown (None): ``unmatched``, an input its index lists, is not
    matched by ``input_glob`` or would be mirrored elsewhere."""

    def __init__(self, out: str, input_glob: str, recorded: str | None, unmatched: str | None = None):
        self.out, self.input_glob, self.recorded, self.unmatched = out, input_glob, recorded, unmatched
        if recorded is not None:
            held = f"the explanations of {recorded!r} (its {JOB_FILE})"
        else:
            held = (
                f"the explanations of another glob (its {INDEX_FILE} lists {unmatched}, not matched or mirrored alike)"
            )
        super().__init__(
            f"{out} holds {held}, not of {input_glob!r}: it belongs to one glob, whose inputs its index lists, and "
            "this job would replace that index"
        )


def _index_rows(out: str) -> list[dict]:
    """The rows of ``out``'s index (none without an index)."""
    raw = read_bytes(join(out, INDEX_FILE))
    try:
        rows = [json.loads(line) for line in (raw or b"").decode().splitlines()]
        return [{"path": row["path"], "summary": row["summary"]} for row in rows]
    except (ValueError, KeyError, TypeError):
        raise UnreadableRecordError(f"{join(out, INDEX_FILE)} is not a bulk explanation's index") from None


def check_job(out: str, input_glob: str) -> None:
    """Raise :class:`OutFolderError` if ``out`` belongs to another input glob than ``input_glob`` (reads only): the
    glob of its ``job.json``; for a folder written before ``job.json`` existed, a glob that matches every input its
    index lists and mirrors each to the summary listed."""
    raw = read_bytes(join(out, JOB_FILE))
    if raw is not None:
        try:
            recorded = json.loads(raw)["input_glob"]
        except (ValueError, KeyError, TypeError):
            raise UnreadableRecordError(f"{join(out, JOB_FILE)} is not a bulk job record: {raw[:80]!r}") from None
        if recorded != input_glob:
            raise OutFolderError(out, input_glob, recorded)
        return
    rows = _index_rows(out)
    if not rows:
        return
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([input_glob])
    matched, base = {m.path for m in result.metadata_list}, glob_base(input_glob)
    for row in rows:
        path = row["path"]
        if path not in matched or not path.startswith(base) or Layout(base, out).summary(path) != row["summary"]:
            raise OutFolderError(out, input_glob, None, path)


def claim(out: str, input_glob: str) -> None:
    """Record ``input_glob`` as the glob ``out`` belongs to (after :func:`check_job`); unchanged if it already is."""
    check_job(out, input_glob)
    _write_if_changed(join(out, JOB_FILE), (json.dumps({"input_glob": input_glob}, indent=2) + "\n").encode())


# -------------------------------------------------------------------- one input's outputs


def input_file(metadata) -> dict:
    """What identifies the content of a matched input (Beam's ``FileMetadata``), cheaply: its size and modification
    time (seconds; 0.0 where the file system gives none)."""
    return {"size_bytes": int(metadata.size_in_bytes), "modified_seconds": float(metadata.last_updated_in_seconds)}


def existing(layout: Layout, path: str, settings: dict, source: dict) -> dict | None:
    """The summary of ``path`` if its outputs are complete and were made with ``settings`` from the input file
    ``source`` (:func:`input_file`: same size and modification time), else None."""
    raw = read_bytes(layout.full(layout.summary(path)))
    if raw is None:
        return None
    try:
        summary = json.loads(raw)
    except ValueError:
        return None
    if summary.get("settings") != settings or summary.get("input_file") != source:
        return None
    listed = [summary.get("interpretation")]
    if settings.get("components"):
        listed += [entry.get("file") for entry in summary.get("selected", []) if entry.get("file", "") is not None]
    if not all(isinstance(f, str) and exists(layout.full(f)) for f in listed):
        return None
    return summary


def remove_leftovers(layout: Layout, path: str) -> None:
    """Remove the temporary files that a killed run left for ``path``'s outputs (local outputs only)."""
    target = Path(layout.full(layout.relative(path)))
    if not is_local(layout.out) or not target.parent.is_dir():
        return
    for leftover in [
        *target.parent.glob(f".{target.name}.*.tmp-*"),
        *target.parent.glob(f"{target.name}.components/.*.tmp-*"),
    ]:
        leftover.unlink(missing_ok=True)


def write_outputs(layout: Layout, path: str, summary: dict, settings: dict, source: dict) -> dict:
    """Write the interpretation, the components (if ``settings["components"]``) and, last, the JSON of one input;
    ``summary`` is :func:`l2i_tf.explain_files.summarize`'s, ``source`` the input's :func:`input_file` as read.
    Returns the JSON's content."""
    rate, sound = summary["sample_rate"], summary["audio"]
    report = {"input": path, "input_file": source, **{key: value for key, value in summary.items() if key != "audio"}}
    report["interpretation"] = layout.interpretation(path)
    write_bytes(layout.full(report["interpretation"]), wav_bytes(sound["interpretation"], rate))
    report["selected"] = []
    for entry in summary["selected"]:
        if settings.get("components"):
            file = None  # selected past the top N, in some windows of a long recording: no audio of its own
            if entry["component"] in sound["components"]:
                file = layout.component(path, entry["component"])
                write_bytes(layout.full(file), wav_bytes(sound["components"][entry["component"]], rate))
            entry = {**entry, "file": file}
        report["selected"].append(entry)
    report["settings"] = settings
    write_bytes(layout.full(layout.summary(path)), json.dumps(report, indent=2, default=files.json_default).encode())
    return report


def index_record(report: dict) -> dict:
    """One index line: input, duration, both predictions, the selected components, the output files."""
    classifier, interpreter = report["classifier"], report["interpreter"]
    return {
        "path": report["input"],
        "seconds": report["seconds"],
        "classifier_class": classifier["predicted"],
        "classifier_probability": classifier["probabilities"][classifier["predicted"]],
        "interpreter_class": interpreter["predicted"],
        "interpreter_probability": interpreter["probabilities"][interpreter["predicted"]],
        "target_class": report["target_class"],
        "windows": len(report.get("timeline", [])),
        "selected": [
            {"component": s["component"], "relevance": s["relevance"], "file": s.get("file")}
            for s in report["selected"]
        ],
        "output": report["interpretation"],
        "summary": report["interpretation"][: -len(".wav")] + ".json",
    }


# -------------------------------------------------------------------- the run's index and dead letters


def _parquet_schema():
    import pyarrow as pa

    component = pa.struct([("component", pa.int64()), ("relevance", pa.float64()), ("file", pa.string())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("seconds", pa.float64()),
            ("classifier_class", pa.string()),
            ("classifier_probability", pa.float64()),
            ("interpreter_class", pa.string()),
            ("interpreter_probability", pa.float64()),
            ("target_class", pa.string()),
            ("windows", pa.int64()),
            ("selected", pa.list_(component)),
            ("output", pa.string()),
            ("summary", pa.string()),
        ]
    )


def _write_if_changed(path: str, data: bytes) -> bool:
    if read_bytes(path) == data:
        return False
    write_bytes(path, data)
    return True


def jsonl(records) -> bytes:
    return "".join(json.dumps(r, default=files.json_default) + "\n" for r in records).encode()


def write_index(out: str, records: list[dict]) -> bool:
    """``index.jsonl`` and ``index.parquet`` (sorted by path), each rewritten only if its content changes. Returns
    whether anything was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_local(out):  # a killed run's temporary index, errors and job files
        for name in (INDEX_FILE, PARQUET_FILE, ERRORS_FILE, JOB_FILE):
            for leftover in Path(out).glob(f".{name}.tmp-*"):
                leftover.unlink(missing_ok=True)
    records = sorted(records, key=lambda r: r["path"])
    lines = jsonl(records)
    changed = _write_if_changed(join(out, INDEX_FILE), lines)
    parquet = join(out, PARQUET_FILE)
    if changed or not exists(parquet):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records, schema=_parquet_schema()), buffer)
        write_bytes(parquet, buffer.getvalue())
        changed = True
    return changed


def count_lines(path: str) -> int:
    """Lines of a JSON Lines file (0 if it does not exist)."""
    raw = read_bytes(path)
    return 0 if raw is None else raw.count(b"\n")


def write_errors(out: str, failures: list[dict]) -> bool:
    """``errors.jsonl``: one ``{"path", "reason"}`` line per input that failed in this run (empty if none)."""
    return _write_if_changed(join(out, ERRORS_FILE), jsonl(sorted(failures, key=lambda r: r["path"])))
