"""`l2i-tf explain-bulk`: explain every file of an archive with an exported SavedModel on Apache Beam."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import click

from cli import errors, options
from l2i_tf import bulk_files


class _QuietBeam(logging.Filter):
    """Drops Beam's start-up warnings (apitools, resource module...), which it logs through the root logger, and the
    worker processes' log lines it relays (multi-processing workers are quietened by ``bulk.run_job``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "apache_beam" not in record.pathname


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@click.command(
    "explain-bulk",
    epilog="""\b
Examples:
  l2i-tf explain-bulk savedmodels/l2i 'archive/**/*.ogg' --out out/archive
  l2i-tf explain-bulk savedmodels/l2i 'archive/**' --out out/archive --direct-workers 2 --components
  l2i-tf explain-bulk savedmodels/l2i 'data/*.wav' --out out/data --runner FlinkRunner -- --flink_master=host:8081
""",
)
@click.argument("saved_model")
@click.argument("input_glob")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--out", required=True, help="Output folder (local, or any Beam file system).")
@click.option("--runner", default="DirectRunner", show_default=True, help="Beam runner.")
@click.option(
    "--direct-workers",
    type=click.IntRange(min=1),
    default=None,
    help="DirectRunner: workers (more than one: processes or threads, see --direct-mode) [default: one per core "
    "this process may use].",
)
@click.option(
    "--direct-mode",
    type=click.Choice(["multi_threading", "multi_processing"]),
    default="multi_threading",
    show_default=True,
    help="DirectRunner with several workers: threads of this process (one model, no start-up per worker), or "
    "processes.",
)
@click.option("--components", is_flag=True, help="Also write one wav per selected component.")
@options.threshold_option(None, "export's")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Clips per model call.")
@click.option("--fail-on-error", is_flag=True, help="Exit non-zero when any input failed (they are always listed).")
@click.option("-v", "--verbose", is_flag=True)
def command(
    saved_model,
    input_glob,
    beam_args,
    out,
    runner,
    direct_workers,
    direct_mode,
    components,
    threshold,
    batch_size,
    fail_on_error,
    verbose,
):
    """Explain every file matching INPUT_GLOB with the export SAVED_MODEL, on Apache Beam.

    Writes, mirrored under OUT: <name>.wav (the interpretation) and <name>.json (what l2i-tf explain writes as
    explanation.json) per input, <name>.components/ with --components; then index.jsonl and index.parquet (one line
    per explained input) and errors.jsonl (inputs that failed, with the reason). Each file is explained whole. A
    rerun skips inputs whose outputs are complete (same settings, input file of the same size and modification
    time). OUT belongs to one INPUT_GLOB (job.json): another glob is refused, so the index never loses the earlier
    job's rows. Quote the glob; BEAM_ARGS after `--` go to Beam (runner options).
    Needs the beam extra: pip install "l2i_tf[beam]".
    """
    options.setup(verbose)
    if direct_workers is None:
        direct_workers = usable_cores()
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietBeam())
    try:
        from l2i_tf import bulk
    except ImportError as e:
        raise click.ClickException(f'{e}: install the beam extra (pip install "l2i_tf[beam]")') from None
    try:
        job = bulk.make_job(saved_model, input_glob, out, threshold, components, batch_size)
    except errors.SOURCE_ERRORS as e:
        raise errors.source_error(e, "SAVED_MODEL") from None
    inputs = bulk.count_inputs(job)
    if not inputs:
        message = f"{job.input_glob!r} matches no files (files under --out, the job's outputs, are not inputs)"
        raise click.BadParameter(message, param_hint="INPUT_GLOB")
    try:  # before anything is written: --out may belong to another glob
        bulk_files.check_job(job.out, job.input_glob)
    except bulk_files.OutFolderError as e:
        hint = "use another --out for this glob" + ("" if e.recorded is None else f", or rerun with {e.recorded!r}")
        raise click.BadParameter(f"{e}; {hint}", param_hint="--out") from None
    except bulk_files.UnreadableRecordError as e:
        raise click.BadParameter(f"{e}; use another --out", param_hint="--out") from None
    if bulk_files.is_local(job.out):  # an --out that cannot be written fails now, not after the whole job
        Path(job.out).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=job.out).close()
    click.echo(
        f"explaining {inputs} file(s) of {job.input_glob} with {job.saved_model} (τ = {job.threshold:g}) -> {job.out}"
    )
    counts = bulk.run_job(job, runner, direct_workers, beam_args, direct_mode, quiet_workers=not verbose)
    wall = counts["wall_seconds"]
    click.echo(
        f"files decoded {counts['files_read']}, explained {counts['files_explained']}, "
        f"skipped (already complete) {counts['files_skipped']}, failed {counts['files_failed']}; "
        f"{counts['audio_seconds']:.1f} s of audio in {wall:.1f} s "
        f"({counts['files_explained'] / wall:.2f} files/s, {counts['audio_seconds'] / wall:.2f} audio s/s)"
    )
    click.echo(
        f"index: {job.out}/index.jsonl, {job.out}/index.parquet ({counts['indexed']} inputs); "
        f"errors: {job.out}/errors.jsonl ({counts['errors']} inputs)"
    )
    if fail_on_error and counts["errors"]:
        raise click.ClickException(f"{counts['errors']} input(s) failed; see {job.out}/errors.jsonl")
