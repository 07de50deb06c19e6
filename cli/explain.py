"""`l2i-tf explain`: listenable interpretations of audio files, from a run folder or an exported SavedModel."""

from __future__ import annotations

import json
from pathlib import Path

import click
import tensorflow as tf

from cli import errors, options
from l2i_tf import audio, data, explain_files


@click.command(
    "explain",
    epilog="""\b
Examples:
  l2i-tf explain runs/esc10 dog.wav --out out/dog
  l2i-tf explain savedmodels/l2i clip1.ogg clip2.flac --class Rain --threshold 0.3 --out out
  l2i-tf explain runs/esc10 stereo_44k.wav --top 10 --domain linear --out out/linear
""",
)
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--class", "class_name", default=None, help="Class to explain (default: the classifier's prediction).")
@options.threshold_option(None, "0.3/export's")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=None,
    help="At most N components (run folder; 0: no limit) [10/export's].",
)
@click.option("--domain", type=click.Choice(audio.DOMAINS), default=None, help="Mask domain [linear/export's].")
@options.window_options(defaults=False)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace explanations already in the output folders.")
@options.unsafe_load_option
@click.option("-v", "--verbose", is_flag=True)
def command(
    source, inputs, class_name, threshold, top, domain, window_seconds, aggregate, out, overwrite, unsafe_load, verbose
):
    """Explain the classifier's decision on each INPUT with audio you can listen to.

    SOURCE is a run folder (l2i-tf train) or an exported SavedModel (a version folder, or the model folder:
    newest version). INPUT files may have any length, sample rate (resampled) and channel count (downmixed).
    A recording longer than one window (the classifier's fixed input, or --window-seconds) is explained as a
    timeline: windows at half-window hops, the recording's decision aggregated from them, the windows'
    interpretations overlap-added into one as long as the input.
    Writes interpretation.wav, component_<k>.wav per selected component and explanation.json (both classifiers'
    probabilities, relevances, selected components, the timeline) into OUT, or OUT/<stem>/ when there are
    several inputs. A folder that already holds an explanation is refused unless --overwrite (which replaces it
    whole), before anything is written.
    """
    options.setup(verbose)
    src = open_source(source, threshold, top, domain, unsafe_load, window_seconds, aggregate)
    try:
        src.class_index(class_name)
    except errors.SOURCE_ERRORS as e:
        raise errors.source_error(e) from None
    folders = options.output_folders(inputs, Path(out), explain_files.explanation_files, "an explanation", overwrite)
    for path, folder in zip(inputs, folders, strict=True):
        try:
            report = explain_files.explain_file(src, path, folder, class_name)
        except data.AudioDataError as e:
            raise click.BadParameter(str(e), param_hint="INPUT") from None
        except tf.errors.OpError as e:
            raise click.ClickException(graph_error(path, e)) from None
        chosen = ", ".join(f"{s['component']} ({s['relevance']:.2f})" for s in report["selected"]) or "none"
        click.echo(
            f"{path}: classifier says {report['classifier']['predicted']}, interpreter says "
            f"{report['interpreter']['predicted']}; explaining {report['target_class']}: "
            f"components {chosen} -> {folder}"
        )
        if len(report["timeline"]) > 1:
            click.echo(f"  timeline: {_timeline(report['timeline'])}")
        if verbose:
            click.echo(json.dumps(report["classifier"], indent=2))
    click.echo(f"peak memory: {options.peak_memory_mb():.0f} MB")


def _timeline(windows: list[dict]) -> str:
    """Consecutive windows with the same prediction as ``start-end s name`` runs."""
    runs = []
    for w in windows:
        if runs and runs[-1][2] == w["predicted"]:
            runs[-1][1] = w["end"]
        else:
            runs.append([w["start"], w["end"], w["predicted"]])
    return "; ".join(f"{a:g}-{b:g} s {name}" for a, b, name in runs)


def open_source(
    source, threshold, top, domain, unsafe_load, window_seconds=None, aggregate=None
) -> explain_files.ExplainSource:
    """The run folder or export to explain with; errors name the flag that fixes them."""
    try:
        return explain_files.ExplainSource(
            source,
            threshold=threshold,
            top_n=top,
            domain=domain,
            safe_mode=not unsafe_load,
            window_seconds=window_seconds,
            aggregate=aggregate,
        )
    except errors.SOURCE_ERRORS as e:
        raise errors.source_error(e) from None


def graph_error(path, error) -> str:
    """A graph assertion on an input, with the flag that lifts a length limit."""
    message = f"{path}: {explain_files.graph_error_message(error)}"
    if "maximum of this export" in message:
        message += " (l2i-tf export --max-seconds)"
    return message
