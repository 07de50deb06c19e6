"""Explaining whole archives on Apache Beam (``l2i-tf explain-bulk``): match, decode, RunInference on an export's
``explain`` signature, one interpretation per input, an index and the dead letters; resumable.

``pipeline(...)`` is the composable transform (apply it to a pipeline's root); ``run(...)`` builds a pipeline around
it for a runner, runs it and returns its counters. Needs the ``beam`` extra (``pip install "l2i_tf[beam]"``).
Each input is explained as the export explains a recording: a timeline of windows when it is longer than one
(see :mod:`l2i_tf.recording`), up to the export's maximum length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time

import apache_beam as beam
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from l2i_tf import bulk_files, bulk_model, data, explain_files, export
from l2i_tf.explainer import check_threshold

log = logging.getLogger(__name__)

NAMESPACE = "l2i_tf.bulk"
COUNTERS = ("files_skipped", "files_read", "files_explained", "files_failed", "audio_milliseconds")
"""Beam metrics counters of a bulk explanation (namespace :data:`NAMESPACE`)."""


@dataclasses.dataclass(frozen=True)
class BulkJob:
    """What a bulk explanation reads, with what, and where it writes (see :func:`pipeline`)."""

    saved_model: str
    input_glob: str
    out: str
    threshold: float
    components: bool
    metadata: dict
    max_batch_size: int = 8
    tf_threads: int | None = None
    """TensorFlow's intra-op threads where the model loads (:func:`l2i_tf.bulk_model.set_tf_threads`); None: one per
    core. :func:`run_job` sets it for the DirectRunner's workers."""

    @property
    def settings(self) -> dict:
        """What an input's outputs depend on, besides the input file: a rerun redoes the inputs whose JSON holds other
        settings (or another input file, :func:`l2i_tf.bulk_files.input_file`)."""
        return {"saved_model": self.saved_model, "threshold": self.threshold, "components": self.components}

    @property
    def layout(self) -> bulk_files.Layout:
        return bulk_files.Layout(bulk_files.glob_base(self.input_glob), self.out)


def make_job(saved_model, input_glob: str, out, threshold=None, components=False, max_batch_size=8) -> BulkJob:
    """Resolve the export (a version folder, or a model folder: its newest version) and read its metadata."""
    saved = str(saved_model)
    if bulk_files.is_local(saved):
        path = export.resolve_saved_model(saved)
        saved, metadata = str(path.resolve()), export.load_metadata(path)
    else:
        with tf.io.gfile.GFile(bulk_files.join(saved, export.METADATA_FILE.as_posix())) as f:
            metadata = json.load(f)
    out = str(out)
    if bulk_files.is_local(out):
        out = bulk_files.absolute_glob(out)
    return BulkJob(
        saved_model=saved,
        input_glob=bulk_files.absolute_glob(str(input_glob)),
        out=out,
        threshold=float(metadata["threshold"]) if threshold is None else check_threshold(threshold),
        components=bool(components),
        metadata=metadata,
        max_batch_size=int(max_batch_size),
    )


def count_inputs(job: BulkJob) -> int:
    """The files ``job.input_glob`` matches, outside ``job.out`` (the job's own outputs are never inputs)."""
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([job.input_glob])
    return sum(not bulk_files.is_under(job.out, m.path) for m in result.metadata_list)


def _top_n_without_audio(job: BulkJob) -> int | None:
    """The export's N when no component audio is written and τ is the export's (``serving_default`` then gives every
    output needed, ~30 % cheaper than ``explain``), else None."""
    if job.components or job.threshold != float(job.metadata["threshold"]) or "top_n" not in job.metadata:
        return None
    return int(job.metadata["top_n"])


def _counter(name: str):
    return Metrics.counter(NAMESPACE, name)


@beam.typehints.with_output_types(FileMetadata)
class _SkipComplete(beam.DoFn):
    """Matched file -> itself (to explain), or its index record on ``done`` (its outputs are complete)."""

    def __init__(self, job: BulkJob):
        self.job = job
        self.skipped = _counter("files_skipped")

    def process(self, metadata):
        if bulk_files.is_under(self.job.out, metadata.path):  # the job's own outputs, when --out is in the glob
            return
        source = bulk_files.input_file(metadata)
        summary = bulk_files.existing(self.job.layout, metadata.path, self.job.settings, source)
        if summary is None:
            bulk_files.remove_leftovers(self.job.layout, metadata.path)
            yield metadata
        else:
            self.skipped.inc()
            yield beam.pvalue.TaggedOutput("done", bulk_files.index_record(summary))


class _Decode(beam.DoFn):
    """Readable file -> ``((path, input_file), clip float32 [S])`` at the export's rate (the package's one audio
    loader; ``input_file``: :func:`l2i_tf.bulk_files.input_file` of what was matched and read), or
    ``{"path", "reason"}`` on ``failed``."""

    def __init__(self, job: BulkJob):
        self.rate = int(job.metadata["sample_rate"])
        self.max_samples = job.metadata.get("max_samples")
        self.read, self.failed = _counter("files_read"), _counter("files_failed")

    def process(self, readable):
        path = readable.metadata.path
        try:
            clip = explain_files.load_audio(path, self.rate, readable.read())
            if self.max_samples and len(clip) > self.max_samples:
                raise data.AudioDataError(
                    f"{path}: {len(clip) / self.rate:.2f} s is longer than this export's maximum of "
                    f"{self.max_samples / self.rate:.2f} s"
                )
        except (ValueError, OSError, tf.errors.OpError) as e:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput("failed", {"path": path, "reason": str(e)})
            return
        self.read.inc()
        yield (path, bulk_files.input_file(readable.metadata)), clip


class _Write(beam.DoFn):
    """``((path, input_file), PredictionResult)`` -> the input's files, and its index record; or
    ``{"path", "reason"}`` on ``failed``."""

    def __init__(self, job: BulkJob):
        self.job = job
        self.explained, self.failed = _counter("files_explained"), _counter("files_failed")
        self.audio_ms = _counter("audio_milliseconds")

    def process(self, element):
        (path, source), result = element
        outputs = result.inference
        if "error" in outputs:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput("failed", {"path": path, "reason": f"{path}: {outputs['error']}"})
            return
        job = self.job
        summary = explain_files.summarize(outputs, job.metadata, job.threshold, job.saved_model, "savedmodel")
        try:
            report = bulk_files.write_outputs(job.layout, path, summary, job.settings, source)
        except OSError as e:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput("failed", {"path": path, "reason": f"{path}: cannot write outputs ({e})"})
            return
        self.explained.inc()
        self.audio_ms.inc(int(round(1000 * summary["seconds"])))
        yield bulk_files.index_record(report)


class ExplainFiles(beam.PTransform):
    """Root transform: explain every file matching ``job.input_glob`` into ``job.out``; writes ``job.json`` (the glob
    ``out`` belongs to) when applied, ``index.jsonl``, ``index.parquet`` and ``errors.jsonl`` at the end. Returns
    ``{"records": ..., "failures": ...}`` (index records and dead letters) for further composition.

    Applying it raises :class:`l2i_tf.bulk_files.OutFolderError`, before anything is written, if ``job.out`` belongs
    to another input glob."""

    def __init__(self, job: BulkJob, preload: bool = False):
        """``preload``: start loading the model now, in this process (:func:`l2i_tf.bulk_model.preload`), for a
        runner whose workers are threads of this process."""
        super().__init__()
        self.job = job
        self.handler = bulk_model.ExplainModelHandler(
            job.saved_model,
            job.threshold,
            job.max_batch_size,
            top_n_without_audio=_top_n_without_audio(job),
            tf_threads=job.tf_threads,
        )
        if preload:
            bulk_model.preload(self.handler)

    def expand(self, root):
        job, handler = self.job, self.handler
        bulk_files.claim(job.out, job.input_glob)  # job.json: ``out`` belongs to this glob
        matched = root | "Match" >> fileio.MatchFiles(job.input_glob)
        planned = matched | "SkipComplete" >> beam.ParDo(_SkipComplete(job)).with_outputs("done", main="todo")
        decoded = (
            planned.todo
            | "Spread" >> beam.Reshuffle()  # one glob is one element: without this, one worker does all the files
            | "Read" >> fileio.ReadMatches()
            | "Decode" >> beam.ParDo(_Decode(job)).with_outputs("failed", main="clips")
        )
        written = (
            decoded.clips
            | "Explain" >> RunInference(KeyedModelHandler(handler))
            | "Write" >> beam.ParDo(_Write(job)).with_outputs("failed", main="records")
        )
        records = (planned.done, written.records) | "Records" >> beam.Flatten()
        failures = (decoded.failed, written.failed) | "Failures" >> beam.Flatten()
        _ = (
            records
            | "IndexList" >> beam.combiners.ToList()
            | "WriteIndex" >> beam.Map(lambda rows, out=job.out: bulk_files.write_index(out, rows))
        )
        _ = (
            failures
            | "FailureList" >> beam.combiners.ToList()
            | "WriteErrors" >> beam.Map(lambda rows, out=job.out: bulk_files.write_errors(out, rows))
        )
        return {"records": records, "failures": failures}


def pipeline(
    saved_model, input_glob: str, out, threshold: float | None = None, components: bool = False, max_batch_size=8
) -> ExplainFiles:
    """The bulk explanation as a Beam transform: ``beam.Pipeline() | l2i_tf.bulk.pipeline(...)``.

    Args:
        saved_model: an export (version folder, or model folder: newest version).
        input_glob: files to explain (any Beam file system: local, ``gs://``, ``s3://``...); outputs mirror their
            paths below the glob's folder before its first wildcard.
        out: output folder. threshold: τ (default: the export's). components: also write each selected component.
        max_batch_size: clips per model call at most.
    """
    return ExplainFiles(make_job(saved_model, input_glob, out, threshold, components, max_batch_size))


DIRECT_MODES = ("multi_threading", "multi_processing")
"""The DirectRunner's running modes with several workers, the default first. Measured on 2 cores, 400 ESC-10 clips:
multi-processing costs ~20 s of CPU in start-up (each worker process imports TensorFlow and Beam and loads the
SavedModel), multi-threading none (TensorFlow and the decoder release the GIL; one model is shared)."""


def direct_tf_threads(runner: str, direct_workers: int) -> int | None:
    """TensorFlow's intra-op threads for the DirectRunner's workers: the cores shared among them (None: one worker,
    or another runner, whose workers are sized by their own options)."""
    if runner != "DirectRunner" or direct_workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // direct_workers)


WORKER_LOG_LEVEL_FLAG = "--default_sdk_harness_log_level"
"""Beam's log level of its SDK worker processes (set once they have read the pipeline options)."""


def worker_processes(runner: str, direct_workers: int, direct_mode: str) -> bool:
    """Whether the pipeline runs in worker processes this one starts: the DirectRunner's multi-processing mode."""
    return runner == "DirectRunner" and direct_workers > 1 and direct_mode == "multi_processing"


def pipeline_options(
    runner: str = "DirectRunner",
    direct_workers: int = 1,
    beam_args=(),
    direct_mode: str = "multi_threading",
    quiet_workers: bool = False,
) -> PipelineOptions:
    """Beam options: ``beam_args`` (any Beam flags) plus the runner; the DirectRunner runs ``direct_workers``
    workers in ``direct_mode`` (one of :data:`DIRECT_MODES`) when more than one. ``quiet_workers``: its worker
    processes log errors only (:data:`WORKER_LOG_LEVEL_FLAG` ERROR, unless ``beam_args`` set it)."""
    if direct_mode not in DIRECT_MODES:
        raise ValueError(f"direct_mode must be one of {DIRECT_MODES}, got {direct_mode!r}")
    extra = {}
    if runner == "DirectRunner":
        extra = {
            "direct_num_workers": int(direct_workers),
            "direct_running_mode": direct_mode if direct_workers > 1 else "in_memory",
        }
    given = {str(arg).split("=", 1)[0] for arg in beam_args}
    if quiet_workers and worker_processes(runner, direct_workers, direct_mode) and WORKER_LOG_LEVEL_FLAG not in given:
        extra["default_sdk_harness_log_level"] = "ERROR"
    return PipelineOptions(list(beam_args), runner=runner, **extra)


@contextlib.contextmanager
def stderr_to_file():
    """This process's stderr (file descriptor 2) goes to a temporary file while the block runs; if the block fails,
    the file's last lines are logged at ERROR.

    The DirectRunner's worker processes, started in the block, inherit it: what they write before Beam's log level
    applies (their imports' warnings, "Logging handler created.") goes there, not to the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            tail = captured.read().decode(errors="replace").splitlines()[-40:]
            if failed and tail:
                log.error("the worker processes' last lines on stderr:\n%s", "\n".join(tail))


def run(
    saved_model,
    input_glob: str,
    out,
    runner: str = "DirectRunner",
    direct_workers: int = 1,
    beam_args=(),
    threshold: float | None = None,
    components: bool = False,
    max_batch_size: int = 8,
    direct_mode: str = "multi_threading",
) -> dict:
    """Run :func:`pipeline` to completion (see :func:`run_job`)."""
    job = make_job(saved_model, input_glob, out, threshold, components, max_batch_size)
    return run_job(job, runner, direct_workers, beam_args, direct_mode)


def run_job(
    job: BulkJob,
    runner: str = "DirectRunner",
    direct_workers: int = 1,
    beam_args=(),
    direct_mode="multi_threading",
    quiet_workers: bool = False,
) -> dict:
    """Run a bulk explanation to completion; returns the counters of :data:`COUNTERS` plus ``audio_seconds``,
    ``wall_seconds``, and the lines of the index (``indexed``) and of the errors file (``errors``): these two are
    counted from the files, which stay exact where a runner drops metric updates.

    ``quiet_workers``: the DirectRunner's worker processes (multi-processing mode) log errors only and write their
    stderr to a temporary file while the pipeline runs (:func:`stderr_to_file`): Beam's start-up and progress lines
    do not reach the terminal. Other runners' workers log as their options say."""
    t0 = time.perf_counter()
    bulk_files.check_job(job.out, job.input_glob)  # before the model starts loading
    if job.tf_threads is None:
        job = dataclasses.replace(job, tf_threads=direct_tf_threads(runner, direct_workers))
    p = beam.Pipeline(options=pipeline_options(runner, direct_workers, beam_args, direct_mode, quiet_workers))
    in_process = runner == "DirectRunner" and (direct_workers <= 1 or direct_mode == "multi_threading")
    transform = ExplainFiles(job, preload=in_process)
    _ = p | "ExplainFiles" >> transform
    quiet = quiet_workers and worker_processes(runner, direct_workers, direct_mode)
    try:
        with stderr_to_file() if quiet else contextlib.nullcontext():
            result = p.run()
            result.wait_until_finish()
    finally:
        bulk_model.discard_preload(transform.handler)
    counters = dict.fromkeys(COUNTERS, 0)
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        counters[metric.key.metric.name] += metric.committed or metric.attempted or 0  # one entry per step
    counters["audio_seconds"] = counters["audio_milliseconds"] / 1000
    counters["wall_seconds"] = time.perf_counter() - t0
    counters["indexed"] = bulk_files.count_lines(bulk_files.join(job.out, bulk_files.INDEX_FILE))
    counters["errors"] = bulk_files.count_lines(bulk_files.join(job.out, bulk_files.ERRORS_FILE))
    if (counters["files_explained"] + counters["files_skipped"], counters["files_failed"]) != (
        counters["indexed"],
        counters["errors"],
    ):  # a runner may drop metric updates
        log.warning(
            "Beam's counters (%d explained, %d skipped, %d failed) differ from the files written (%d indexed, %d "
            "errors): the runner lost metric updates; the index and errors files are complete",
            counters["files_explained"],
            counters["files_skipped"],
            counters["files_failed"],
            counters["indexed"],
            counters["errors"],
        )
    log.info("bulk explanation of %s: %s", job.input_glob, counters)
    return counters
