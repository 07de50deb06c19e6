"""`l2i-tf report`: a static, offline HTML page of explanations, from a run folder or an exported SavedModel."""

from __future__ import annotations

from pathlib import Path

import click

from cli import errors, options
from l2i_tf import audio, data, report_mixtures
from l2i_tf import report as report_lib


@click.command(
    "report",
    epilog="""\b
Examples:
  l2i-tf report runs/esc10 --examples 3 --out reports/esc10
  l2i-tf report runs/esc10 --mixtures 10 --out reports/mixtures   # one mixture per class
  l2i-tf report runs/esc10 dog.wav rain.ogg --out reports/mine --threshold 0.3
  l2i-tf report savedmodels/l2i clip.flac --examples 2 --out reports/export --overwrite
""",
)
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(), required=True, help="Report folder (index.html, audio/, img/).")
@click.option(
    "--examples", type=click.IntRange(min=0), default=0, show_default=True, help="Also explain N bundled test clips."
)
@click.option(
    "--mixtures",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also N mixture examples, one class after another (10: one per ESC-10 class): a test clip of the class "
    "mixed with one of another class, played as mixture, true source, interpretation.",
)
@click.option("--snr-db", type=float, default=0.0, show_default=True, help="True source to other source, mixtures.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder (once the new one is complete).")
@click.option("--class", "class_name", default=None, help="Class to explain (default: the classifier's prediction).")
@options.threshold_option(None, "0.3/export's")
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=None,
    help="At most N components (run folder; 0: no limit) [10/export's].",
)
@click.option("--domain", type=click.Choice(audio.DOMAINS), default=None, help="Mask domain [linear/export's].")
@options.unsafe_load_option
@click.option("-v", "--verbose", is_flag=True)
def command(
    source, inputs, out, examples, mixtures, snr_db, overwrite, class_name, threshold, top, domain, unsafe_load, verbose
):
    """Write a static HTML page explaining each INPUT (and --examples N bundled test clips) to OUT/index.html.

    SOURCE is a run folder (l2i-tf train) or an exported SavedModel. For each input the page has players for
    the input, the interpretation and each selected component; spectrograms of input and interpretation on one
    colour scale; the activations H (run folder, or the run an export came from); relevances with the threshold;
    both classifiers' top predictions. The header shows the model, dictionary and STFT settings and the tables of
    l2i-tf evaluate when the run has them. The page works offline: audio and images sit next to it. Inputs that
    cannot be explained are listed with their error. --mixtures N adds mixtures of two test clips of different
    classes (the run's data set, else the bundled ESC-10), one class after another, each played as the mixture, the
    true source, the interpretation of the classifier's decision and the other source, with its SI-SDRi.
    """
    options.setup(verbose)
    if not inputs and not examples and not mixtures:
        raise click.UsageError("nothing to explain: give INPUT files, --examples N or --mixtures N")
    if snr_db != snr_db or abs(snr_db) == float("inf"):
        raise click.BadParameter(f"{snr_db!r} is not a finite number", param_hint="--snr-db")
    try:
        page = report_lib.build_report(
            source,
            inputs,
            out,
            examples,
            overwrite,
            threshold=threshold,
            top_n=top,
            domain=domain,
            safe_mode=not unsafe_load,
            class_name=class_name,
            mixtures=mixtures,
            snr_db=snr_db,
        )
    except report_lib.ReportError as e:
        message = f"{e}; pass --overwrite to replace it" if e.reason == "exists" else str(e)
        raise click.BadParameter(message, param_hint="--out") from None
    except errors.SOURCE_ERRORS as e:
        raise errors.source_error(e) from None
    except data.AudioDataError as e:
        raise click.BadParameter(str(e), param_hint="--examples") from None
    except report_mixtures.MixtureExamplesError as e:
        raise click.BadParameter(str(e), param_hint="--mixtures") from None
    for entry in page["inputs"]:
        if "error" in entry:
            click.echo(f"{entry['input']}: not explained: {entry['error']}")
        else:
            separation = f"; SI-SDRi {entry['mixture']['si_sdri_db']:+.1f} dB" if "mixture" in entry else ""
            click.echo(
                f"{entry['input']}: classifier says {entry['classifier'][0][0]}, interpreter says "
                f"{entry['interpreter'][0][0]}; {len(entry['selected'])} component(s) selected{separation}"
            )
    click.echo(f"wrote {Path(out) / 'index.html'}")
