"""`l2i-tf request`: send audio files to a TF Serving model over REST and write the interpretations it returns."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli import options
from l2i_tf import data, serving


@click.command(
    "request",
    epilog="""\b
Examples:
  l2i-tf request --url http://localhost:8501/v1/models/l2i dog.wav --out out/served
  l2i-tf request --url http://server:8501/v1/models/l2i/versions/2 a.wav b.flac c.ogg --out out
""",
)
@click.option("--url", required=True, help="TF Serving model URL: http://HOST:8501/v1/models/NAME[/versions/N].")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True, help="Seconds to wait for the reply."
)
@click.option("--overwrite", is_flag=True, help="Replace responses already in the output folders.")
@click.option("-v", "--verbose", is_flag=True)
def command(url, inputs, out, timeout, overwrite, verbose):
    """Ask a TF Serving model (the explain_wav signature) to explain INPUT files; write what it returns.

    INPUTs are audio files libsndfile reads (wav of any encoding, WAVEX, aiff, flac, ogg, mp3...) at the model's
    sample rate (the server names both rates otherwise). explain_wav takes only 16-bit PCM WAV, so each is
    re-encoded to that first, at its own rate and channels: 16-bit files are sent sample for sample, 24-bit,
    32-bit and float ones rounded to 16 bits (float samples beyond ±1 clipped, with a warning). Every file is
    checked before anything is sent; they go in one request (a refused batch is retried file by file to name
    the files the server refuses; nothing is written then). Writes OUT/interpretation.wav and
    OUT/response.json (OUT/<stem>/ per input when there are several, numbered if stems repeat); a folder that
    already holds a response is refused unless --overwrite, before anything is sent.
    """
    options.setup(verbose)
    try:
        serving.predict_url(url)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--url") from None

    def responded(folder):
        return (folder / "response.json").exists()

    folders = options.output_folders(inputs, Path(out), responded, "a response", overwrite)
    try:
        predictions = serving.explain_files(url, list(inputs), timeout)
    except data.AudioDataError as e:
        raise click.BadParameter(str(e), param_hint="INPUTS") from None
    except ConnectionError as e:
        raise click.ClickException(str(e)) from None
    for path, prediction, folder in zip(inputs, predictions, folders, strict=True):
        prediction = serving.without_padding(prediction)  # the batch's longest file set the timeline's length
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "interpretation.wav").write_bytes(prediction.pop("interpretation_wav_bytes"))
        prediction["input"] = str(path)
        (folder / "response.json").write_text(json.dumps(prediction, indent=2))
        chosen = [k for k, s in enumerate(prediction["selected"]) if s]
        click.echo(f"{path}: {prediction['predicted_class_name']}, components {chosen} -> {folder}/interpretation.wav")
