"""`l2i-tf train-classifier`: train the VGG-style demo classifier."""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path

import click

from cli import options
from l2i_tf import audio, classifier, data


@click.command(
    "train-classifier",
    epilog="""\b
Examples:
  l2i-tf train-classifier --out runs/esc10_classifier.keras
  l2i-tf train-classifier --multilabel --init-from l2i_tf/demo/esc10_classifier.keras --out runs/ml.keras
  l2i-tf train-classifier --data ESC-50-master --layout esc50 --epochs 60 --out runs/esc50.keras
  l2i-tf train-classifier --data my_clips --layout folders --sample-rate 44100 --out runs/clf_44k.keras
  l2i-tf train-classifier --sample-rate 44100 --fixed-seconds 2 --out runs/esc10_44k_2s.keras
  l2i-tf train-classifier --data digits --layout folders --sample-rate 8000 --clip-seconds 1 --out runs/digits.keras
""",
)
@options.data_options
@options.split_options
@options.sample_rate_option("Default: 16000.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Where to write the .keras file.")
@click.option("--multilabel", is_flag=True, help="Train a sigmoid classifier on mixtures of 2-3 clips.")
@click.option("--epochs", type=click.IntRange(min=1), default=classifier.DemoConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=classifier.DemoConfig.batch_size, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Start from this demo classifier's weights (e.g. the multi-class one, for --multilabel).",
)
@click.option("--mixtures-per-epoch", type=click.IntRange(min=16), default=720, show_default=True)
@click.option(
    "--clip-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Clips are padded/cropped to this length. Default: the 95th percentile of the clips' durations, at most "
    f"{classifier.LONGEST_DEFAULT_CLIP_SECONDS:g} s (the Explainer's window for longer recordings; printed).",
)
@click.option(
    "--fixed-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Fix the model's input to this length (keras.Input((L,))): it trains on random crops of that length and is "
    "scored on windows of it (hop half a window) covering every clip. Default: any length.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also log the package's steps and TensorFlow's and Keras' messages."
)
def command(
    data_path,
    layout,
    on_error,
    splits,
    out,
    multilabel,
    epochs,
    batch_size,
    seed,
    init_from,
    mixtures_per_epoch,
    overwrite,
    verbose,
    sample_rate,
    clip_seconds,
    fixed_seconds,
):
    """Train the demo classifier (waveform -> log-mel -> VGG blocks -> logits).

    Trains on the training folds, reports the validation folds each epoch and the
    test folds once at the end, and writes OUT plus a sidecar OUT.json with class
    names, sample rate (--sample-rate: clips are resampled to it, the log-mel front
    end keeps 25 ms / 10 ms frames), default layers to tap and the metrics.
    """
    options.setup(verbose)
    out_path = Path(out)
    if out_path.suffix != ".keras":
        raise click.BadParameter(f"must end in .keras, got {out!r}", param_hint="--out")
    if out_path.exists() and not overwrite:
        raise click.BadParameter(f"{out!r} exists; pass --overwrite to replace it", param_hint="--out")
    table = options.load_table(data_path, layout)
    try:
        table, infos, errors = data.usable_table(table, on_error=on_error)
    except data.AudioDataError as e:
        raise click.ClickException(str(e)) from None
    if errors:
        click.echo(f"skipped {len(errors)} unreadable clip(s): first: {errors[0]}", err=True)
    if clip_seconds is None:
        clip_seconds, typical = classifier.default_clip_seconds(infos)
        why = f"95th percentile of the {len(infos)} clips' durations"
        if clip_seconds < typical:
            why = f"the {why}, {typical:g} s, capped: longer recordings are explained in {clip_seconds:g} s windows"
        click.echo(f"clip length: {clip_seconds:g} s ({why})")
    try:
        config = dataclasses.replace(
            classifier.DemoConfig(),
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            multilabel=multilabel,
            mixtures_per_epoch=mixtures_per_epoch,
            clip_seconds=clip_seconds,
            fixed_seconds=fixed_seconds,
            sample_rate=audio.DEFAULT_SAMPLE_RATE if sample_rate is None else sample_rate,
        )
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--fixed-seconds") from None
    start = time.perf_counter()
    try:
        metrics = classifier.train_demo_classifier(
            out_path, config, table=table, splits=splits, init_from=init_from, progress=click.echo
        )
    except data.AudioDataError as e:
        raise click.ClickException(str(e)) from None
    metrics["command_seconds"] = time.perf_counter() - start
    metrics["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    click.echo(json.dumps(metrics, indent=2))
    name = "macro_auprc" if multilabel else "accuracy"
    click.echo(
        f"test {name}: {metrics[f'test_{name}']:.3f}  time: {metrics['command_seconds']:.0f} s  "
        f"peak memory: {metrics['peak_memory_gb']:.2f} GB  -> {out_path}"
    )
