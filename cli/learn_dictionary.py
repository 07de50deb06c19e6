"""`l2i-tf learn-dictionary`: learn the sparse NMF dictionary W on the training folds."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import click

from cli import options
from l2i_tf import data, nmf
from l2i_tf.dictionary import learn_from_table

_DEFAULTS = nmf.NMFConfig()


@click.command(
    "learn-dictionary",
    epilog="""\b
Examples:
  l2i-tf learn-dictionary --out runs/esc10_dictionary
  l2i-tf learn-dictionary --k 64 --sparsity 1.0 --iterations 100 --out runs/dict_k64
  l2i-tf learn-dictionary --beta 1 --out runs/dict_kl --overwrite
  l2i-tf learn-dictionary --data ESC-50-master --layout esc50 --streaming --out runs/esc50_dictionary
  l2i-tf learn-dictionary --data my_clips --layout folders --sample-rate 44100 --out runs/dict_44k
""",
)
@options.data_options
@options.split_options
@options.sample_rate_option("Default: 16000.")
@options.stft_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write the dictionary to.")
@click.option(
    "-k", "--k", "k", type=click.IntRange(min=1), default=_DEFAULTS.k, show_default=True, help="Number of components K."
)
@click.option(
    "--sparsity", type=click.FloatRange(min=0), default=_DEFAULTS.sparsity, show_default=True, help="L1 weight on H."
)
@click.option(
    "--iterations",
    "--nmf-iterations",
    "iterations",
    type=click.IntRange(min=1),
    default=_DEFAULTS.iterations,
    show_default=True,
    help="Passes over the data.",
)
@click.option(
    "--beta", type=click.FloatRange(1, 2), default=_DEFAULTS.beta, show_default=True, help="2 = Euclidean, 1 = KL."
)
@click.option("--seed", type=click.IntRange(min=0), default=_DEFAULTS.seed, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(nmf.PRECISIONS),
    default=_DEFAULTS.precision,
    show_default=True,
    help="dtype of the two frames-sized products (bfloat16: ~2x faster on CPUs with AMX/AVX512-BF16).",
)
@click.option(
    "--streaming",
    is_flag=True,
    help="Re-read the frames every pass in blocks (bounded memory). Default: streaming above 512 MB of frames.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress.")
def command(
    data_path,
    layout,
    on_error,
    splits,
    out,
    k,
    sparsity,
    iterations,
    beta,
    seed,
    precision,
    streaming,
    overwrite,
    verbose,
    **stft_settings,
):
    """Learn a sparse NMF dictionary (Le Roux et al. 2015) on the log1p-magnitude STFT frames of the
    training folds, and write OUT/dictionary.npz + OUT/dictionary.json (STFT and NMF settings,
    provenance, objective history). The STFT sizes scale with --sample-rate unless given; use the
    classifier's rate for a dictionary that `l2i-tf train --dictionary` will take.
    """
    options.setup(verbose)
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise click.BadParameter(f"{out!r} exists; pass --overwrite to replace it", param_hint="--out")
    try:
        config = nmf.NMFConfig(k=k, sparsity=sparsity, beta=beta, iterations=iterations, seed=seed, precision=precision)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    stft = options.stft_config(**stft_settings)
    table = options.load_table(data_path, layout)
    try:
        train = table.with_folds(splits.train)
    except data.AudioDataError as e:
        raise click.BadParameter(str(e), param_hint="--train-folds") from None
    start = time.perf_counter()
    latest = {"objective": float("nan")}
    with click.progressbar(
        length=iterations,
        label=f"sparse NMF K={k} on {len(train)} clips at {stft.sample_rate} Hz",
        item_show_func=lambda _: f"objective {latest['objective']:.6g}",
        file=click.get_text_stream("stderr"),
    ) as bar:

        def progress(iteration, objective):
            latest["objective"] = objective
            bar.update(1, iteration)

        try:
            dictionary = learn_from_table(
                train, stft, config, streaming=streaming or None, callback=progress, on_error=on_error
            )
        except data.AudioDataError as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    dictionary.save(out_path, overwrite=overwrite)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    provenance = dictionary.provenance
    click.echo(
        f"K={dictionary.k} F={dictionary.num_bins} at {stft.sample_rate} Hz from {provenance['clips']} clips / "
        f"{provenance['frames']} frames  "
        f"objective {dictionary.history[-1]:.6g}  time: {seconds:.1f} s  peak memory: {peak_gb:.2f} GB  -> {out_path}"
    )
