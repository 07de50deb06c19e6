"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import logging
import resource
import warnings
from pathlib import Path

import click
import tensorflow as tf

from cli import errors
from l2i_tf import audio, data, explainer, tables, timeline

# Third-party packages whose Python warnings (Keras' UserWarnings, deprecations) are for developers, not users.
NOISY_PACKAGES = (
    "tensorflow",
    "tensorflow_io",
    "tensorflow_hub",
    "keras",
    "tf_keras",
    "absl",
    "h5py",
    "google.protobuf",
    "apache_beam",
    "pkg_resources",
)
NOISY_MODULES = "(" + "|".join(name.replace(".", r"\.") for name in NOISY_PACKAGES) + r")(\.|$)"


def setup(verbose: bool) -> None:
    """Log the package's progress (INFO with -v); without -v, silence TensorFlow's, Keras' and tensorflow-io's
    Python-side warnings too (their C++ start-up lines are silenced in cli/__init__.py, before TensorFlow loads).

    The library logs through `logging`, the CLI prints.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    tf_logger = tf.get_logger()
    if tf_logger.handlers:  # TensorFlow prints its records itself: the root handler would print them twice
        tf_logger.propagate = False
    # Without -v: no tf.function retracing or AutoGraph warnings, no tensorflow-io "Using a while_loop for converting
    # IO>AudioResample" (all through TensorFlow's logger). NOTSET: the root's level (INFO with -v).
    level = logging.NOTSET if verbose else logging.ERROR
    tf_logger.setLevel(level)
    logging.getLogger("absl").setLevel(level)
    if verbose:
        return
    for category in (UserWarning, DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)


def data_options(func):
    """--data, --layout, --on-error."""

    @click.option(
        "--data",
        "data_path",
        type=click.Path(exists=True),
        default=None,
        help="Data set root (or CSV manifest). Default: the bundled ESC-10.",
    )
    @click.option("--layout", type=click.Choice(tables.LAYOUTS), default="esc10", show_default=True)
    @click.option(
        "--on-error",
        type=click.Choice(["raise", "skip"]),
        default="raise",
        show_default=True,
        help="Clips that cannot be read or decoded (corrupt, truncated, NaN samples): stop with an error naming the "
        "file, or skip them and report the count.",
    )
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def sample_rate_option(default_help: str):
    """--sample-rate (Hz, a positive integer; None when not given): audio is resampled to it on load and the STFT
    runs at it."""
    return click.option(
        "--sample-rate",
        type=click.IntRange(min=1),
        default=None,
        help=f"Hz: audio is resampled to it on load. {default_help}",
    )


def stft_options(func):
    """--frame-length, --frame-step, --fft-length (None when not given: scaled with the rate, see
    l2i_tf.audio.STFTConfig.for_rate)."""
    sizes = {
        "--frame-length": "STFT frame, samples [default: the first power of two of >= 64 ms, 1024 at 16 kHz].",
        "--frame-step": "STFT hop, samples [a quarter frame].",
        "--fft-length": "FFT size, samples, >= the frame [the frame rounded up to a power of two].",
    }
    for name, help_text in reversed(sizes.items()):
        func = click.option(name, type=click.IntRange(min=1), default=None, help=help_text)(func)
    return func


def stft_config(sample_rate, frame_length, frame_step, fft_length) -> audio.STFTConfig:
    """The STFT of the options (16 kHz when no rate is given); a size that does not fit is a click error naming its
    flag."""
    rate = audio.DEFAULT_SAMPLE_RATE if sample_rate is None else sample_rate
    try:
        return audio.STFTConfig.for_rate(rate, frame_length, frame_step, fft_length)
    except audio.AudioSettingError as e:
        raise errors.audio_setting(e) from None


def window_options(defaults: bool):
    """--window-seconds and --aggregate: a recording's timeline. ``defaults``: show and fill the ExplainConfig
    defaults (export); otherwise None when not given (explain: a run folder's default or the export's)."""
    window_help = (
        "Timeline window, seconds (hop: half of it) [0: the classifier's fixed input, else the whole recording up "
        f"to {timeline.WHOLE_CLIP_SECONDS:g} s, longer ones in {timeline.WHOLE_CLIP_SECONDS:g} s windows]."
    )
    aggregate_help = "The recording's decision from its windows' logits [mean]."

    def wrap(func):
        func = click.option(
            "--aggregate",
            type=click.Choice(timeline.AGGREGATES),
            default="mean" if defaults else None,
            help=aggregate_help,
        )(func)
        return click.option(
            "--window-seconds", type=click.FloatRange(min=0), default=0.0 if defaults else None, help=window_help
        )(func)

    return wrap


def check_threshold(value, flag: str = "--threshold"):
    """τ (None: not given) if :func:`l2i_tf.explainer.threshold_problem` takes it, else a click error naming it."""
    problem = None if value is None else explainer.threshold_problem(value)
    if problem:
        raise click.BadParameter(problem, param_hint=flag)
    return value


def threshold_option(default: float | None, default_help: str):
    """--threshold τ in [-1, 1] (``default`` when not given)."""
    return click.option(
        "--threshold",
        type=float,
        default=default,
        callback=lambda ctx, param, value: check_threshold(value),
        help=f"τ in [-1, 1]: select components with relevance > τ [{default_help}].",
    )


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, Linux: kB), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mixed_precision_option(absent: str | None, absent_help: str):
    """``--mixed-precision float16|bfloat16`` -> the keyword ``precision`` (``"mixed_float16"``, ...; ``absent``
    without the flag)."""
    return click.option(
        "--mixed-precision",
        "precision",
        type=click.Choice(["float16", "bfloat16"]),
        default=None,
        callback=lambda ctx, param, value: f"mixed_{value}" if value else absent,
        help="The classifier computes in float16/bfloat16 (float32 weights; Ψ, Θ, the loss and the outputs stay "
        f"float32): for GPUs. Default: {absent_help}.",
    )


def unsafe_load_option(func):
    """--unsafe-load: load .keras files with Keras' safe mode off (they may run stored Python code)."""
    return click.option(
        "--unsafe-load",
        is_flag=True,
        help="Load .keras files that hold Python code (Lambda layers); only for files you trust. Default: safe mode.",
    )(func)


def load_table(data_path, layout):
    """Read the data set, turning data errors into click errors that name the file or value."""
    try:
        if data_path is None:
            return tables.esc10_table()
        return tables.load_table(data_path, layout)
    except data.AudioDataError as e:
        raise click.BadParameter(str(e), param_hint="--data") from None


def parse_folds(value: str, name: str) -> tuple[int, ...]:
    try:
        folds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fold numbers, got {value!r}", param_hint=name) from None
    if not folds:
        raise click.BadParameter("no folds given", param_hint=name)
    return folds


def split_options(func):
    """--train-folds, --val-folds, --test-folds."""

    @click.option("--train-folds", default="1,2,3", show_default=True)
    @click.option("--val-folds", default="4", show_default=True, help="Model selection only ever looks at these.")
    @click.option("--test-folds", default="5", show_default=True)
    @functools.wraps(func)
    def wrapper(*args, train_folds, val_folds, test_folds, **kwargs):
        try:
            splits = tables.Splits(
                parse_folds(train_folds, "--train-folds"),
                parse_folds(val_folds, "--val-folds"),
                parse_folds(test_folds, "--test-folds"),
            )
        except data.AudioDataError as e:
            raise click.BadParameter(str(e)) from None
        return func(*args, splits=splits, **kwargs)

    return wrapper


def output_folders(inputs, out: Path, holds=None, what: str = "", overwrite: bool = False) -> list[Path]:
    """One input: OUT itself; several: OUT/<file stem> (numbered if stems repeat). A folder for which ``holds``
    (if given) is true already holds ``what`` (an earlier result): refused, naming it, unless ``overwrite``."""
    if len(inputs) == 1:
        folders = [out]
    else:
        seen, folders = {}, []
        for path in inputs:
            stem = Path(path).stem
            seen[stem] = seen.get(stem, 0) + 1
            folders.append(out / (stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"))
    taken = [f for f in folders if holds is not None and holds(f)]
    if taken and not overwrite:
        raise click.BadParameter(
            f"{str(taken[0])!r} already holds {what} ({len(taken)} of the {len(folders)} output folder(s)); "
            "pass --overwrite to replace it or choose another --out",
            param_hint="--out",
        )
    return folders
