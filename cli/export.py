"""`l2i-tf export`: a trained run folder -> a versioned SavedModel for TF Serving."""

from __future__ import annotations

import click

from cli import errors, options
from l2i_tf import audio, runs
from l2i_tf import export as export_lib
from l2i_tf.explainer import ExplainConfig

DEFAULTS = ExplainConfig()
EXPORT_HINTS = {"version": "--version", "name": "--name", "folder": "--out"}


@click.command(
    "export",
    epilog="""\b
Examples:
  l2i-tf export runs/esc10                        # -> savedmodels/l2i/1 (then 2, 3, ...)
  l2i-tf export runs/esc10 --name esc10 --top 10 --max-seconds 30
  l2i-tf export runs/esc10 --version 7 --domain linear
  l2i-tf export runs/esc10 --mixed-precision float16   # for a GPU server
""",
)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default="l2i", show_default=True, help="Model name: the folder under --out.")
@click.option("--out", default="savedmodels", show_default=True, type=click.Path(), help="Base folder of models.")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Version folder (default: next free).")
@options.threshold_option(DEFAULTS.threshold, f"{DEFAULTS.threshold:g}; the export's default")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=DEFAULTS.top_n,
    show_default=True,
    help="N: most components selected (0: no limit).",
)
@click.option("--domain", type=click.Choice(audio.DOMAINS), default=DEFAULTS.domain, show_default=True)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0),
    default=DEFAULTS.max_seconds,
    show_default=True,
    help="Longer recordings are rejected with an error (0: no limit).",
)
@options.window_options(defaults=True)
@options.mixed_precision_option(None, "the run's (float32 unless trained with the flag)")
@options.unsafe_load_option
@click.option("-v", "--verbose", is_flag=True)
def command(
    run_dir,
    name,
    out,
    version,
    threshold,
    top,
    domain,
    max_seconds,
    window_seconds,
    aggregate,
    precision,
    unsafe_load,
    verbose,
):
    """Export RUN_DIR as one SavedModel under OUT/NAME/VERSION/ (never overwriting; atomic).

    Signatures: serving_default (waveform -> interpretation, predictions, relevance, selected), explain (+
    target_class, threshold -> top-N component audio), classify (classifier only), explain_wav (WAV files in
    and out). Recordings longer than one window are explained as a timeline (window_* outputs). Only core
    TensorFlow ops, so TF Serving loads it.
    """
    options.setup(verbose)
    try:
        config = ExplainConfig(threshold, top, domain, max_seconds, window_seconds, aggregate)
        path = export_lib.export(run_dir, out, name, config, version, safe_mode=not unsafe_load, precision=precision)
    except runs.UnsafeModelError as e:
        raise errors.unsafe_model(e, "RUN_DIR") from None
    except runs.RunFolderError as e:
        raise errors.run_folder(e, "RUN_DIR") from None
    except export_lib.ExportError as e:
        message = f"{e}; exports never overwrite (omit --version for the next free one)" if e.reason == "version" else e
        raise click.BadParameter(str(message), param_hint=EXPORT_HINTS[e.reason]) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"exported {path}")
    click.echo(f"signatures: {', '.join(export_lib.SIGNATURES)}")
    click.echo(f"check it:   saved_model_cli show --all --dir {path}")
