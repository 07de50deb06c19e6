"""`l2i-tf train`: learn (or reuse) the dictionary, train the interpreter, report test-fold fidelity."""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path

import click

from cli import errors, options
from l2i_tf import audio, data, feature_cache, runs, training
from l2i_tf import classifier as classifier_lib
from l2i_tf import layers as layers_lib
from l2i_tf.classifier_contract import ClassifierContractError
from l2i_tf.dictionary import Dictionary, DictionaryMismatchError

DEFAULTS = runs.TrainConfig()


def _by_task(values: dict, at: int | None = None) -> str:
    """A help text's default from a {multilabel: value} table (item ``at`` of tuple values): ``"a multi-class, b
    multi-label"``, or ``"a"`` when both are the same."""
    single, multi = (f"{v if at is None else v[at]:g}" for v in (values[False], values[True]))
    return single if single == multi else f"{single} multi-class, {multi} multi-label"


@click.command(
    "train",
    epilog="""\b
Examples:
  l2i-tf train                                   # bundled ESC-10 + demo classifier -> runs/esc10
  l2i-tf train --multilabel --out runs/esc10_ml  # ESC-10 mixtures + multi-label demo classifier
  l2i-tf train --classifier my.keras --layers conv3,conv4 --data my_clips --layout folders --out runs/mine
  l2i-tf train --classifier my44k.keras --data my_clips --layout folders --out runs/44k  # rate from my44k.json
  l2i-tf train --classifier plain.keras --sample-rate 22050 --frame-step 256 --data my_clips --layout folders
  l2i-tf train --out runs/esc10 --resume --epochs 60
""",
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder [runs/esc10 or runs/esc10_ml].")
@click.option(
    "--classifier",
    "classifier_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A .keras classifier: waveform [batch, samples] -> logits. Default: the bundled demo.",
)
@click.option("--custom-objects", default=None, help="Python module to import first (registers your custom layers).")
@click.option(
    "--layers",
    default=None,
    help="Comma-separated layers to tap (name or name:bftc), also inside a nested backbone. Default: sidecar.",
)
@click.option("--class-names", default=None, help="Comma-separated class names (default: the classifier's sidecar).")
@click.option("--multilabel", is_flag=True, help="Sigmoid classifier; default data: mixtures of ESC-10 clips.")
@options.data_options
@options.split_options
@options.sample_rate_option("Default: the classifier's sidecar, else 16000.")
@options.stft_options
@click.option("--dictionary", type=click.Path(exists=True, file_okay=False), default=None, help="Reuse a dictionary.")
@click.option(
    "-k", "--k", "k", type=click.IntRange(min=2), default=DEFAULTS.k, show_default=True, help="[--dictionary's K]"
)
@click.option("--nmf-iterations", type=click.IntRange(min=1), default=None, help="Sparse NMF iterations.")
@click.option("--hidden", type=click.IntRange(min=1), default=DEFAULTS.hidden, show_default=True, help="Ψ width.")
@click.option(
    "--clip-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULTS.clip_seconds,
    show_default=True,
    help="Clips are padded/cropped to this length. A fixed-input classifier: every clip is cut into windows of its "
    "input's length instead (this sets only the length of multi-label mixtures).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Reconstruction weight [{_by_task(training.DEFAULT_LOSS_WEIGHTS, 0)}].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Distillation temperature of the fidelity term [{_by_task(training.DEFAULT_LOSS_WEIGHTS, 1)}].",
)
@click.option("--beta", type=click.FloatRange(min=0), default=DEFAULTS.beta, show_default=True)
@click.option(
    "--source-mixtures",
    type=click.IntRange(min=0),
    default=None,
    help="Single-label: training mixtures of two training clips, with their sources "
    "[task default: 2 a training clip; 0: none].",
)
@click.option(
    "--source-weight",
    type=click.FloatRange(min=0),
    default=None,
    help="Weight of the source-consistency term: the interpretation of the decided class should be that class's "
    "source in those mixtures [task default; 0 with --source-mixtures 0: the paper's training].",
)
@click.option(
    "--mixtures",
    type=click.IntRange(min=1),
    default=DEFAULTS.mixtures,
    show_default=True,
    help="Multi-label: training mixtures of 2-3 clips (validation and test: a quarter as many each).",
)
@click.option("--pooling", type=click.Choice(layers_lib.POOLINGS), default=DEFAULTS.pooling, show_default=True)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help=f"Most epochs [{_by_task(training.DEFAULT_EPOCHS)}]."
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=DEFAULTS.patience,
    show_default=True,
    help="Stop after this many epochs without a better validation fidelity; the best epoch's weights are kept.",
)
@click.option(
    "--ema-epochs",
    type=click.FloatRange(min=0),
    default=None,
    help="Horizon, epochs, of the moving average of Ψ/Θ's weights that validation, early stopping and the saved "
    f"interpreter use [{_by_task(training.DEFAULT_EMA_EPOCHS)}; 0: the raw weights].",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@options.mixed_precision_option("float32", "float32")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out with its recorded settings: from its last checkpoint, or from the start of "
    "training if it stopped before one.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run in --out, and what was made from it there (evaluation/, baselines/, cv/, cache/).",
)
@options.unsafe_load_option
@click.option("-v", "--verbose", is_flag=True)
def command(out, classifier_path, multilabel, resume, overwrite, unsafe_load, verbose, **settings):
    """Train an L2I interpreter for a classifier and print its test-fold fidelity.

    Learns the NMF dictionary on the training folds (or reuses --dictionary), trains
    Ψ and Θ on the classifier's hidden layers with early stopping on the validation
    folds, and writes the run folder: interpreter.keras, dictionary/, config.json,
    stft.json, metrics.json, logs/ (TensorBoard), checkpoints/. The sample rate is the
    classifier's (its sidecar) unless --sample-rate says otherwise; the STFT sizes scale
    with it unless given.
    """
    options.setup(verbose)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite exclude each other")
    if out is None:
        out = "runs/esc10_ml" if multilabel else "runs/esc10"
    if classifier_path is None:
        classifier_path = str(classifier_lib.DEMO_MULTILABEL if multilabel else classifier_lib.DEMO_MULTICLASS)
    config = train_config(classifier_path, multilabel, **settings)
    ctx = click.get_current_context()
    if config.dictionary and ctx.get_parameter_source("k") not in _GIVEN:  # K is the dictionary's
        config = dataclasses.replace(config, k=dictionary_k(config.dictionary))
    if resume and (Path(out) / runs.CONFIG).is_file():
        given = [p for p in ctx.command.params if ctx.get_parameter_source(p.name) in _GIVEN]
        changed = changed_on_resume(given, config, runs.read_config(out))
        if changed:
            raise click.UsageError(
                f"--resume continues {out} with the settings it recorded, and these options differ from them: "
                f"{'; '.join(changed)}. Drop them (only --epochs may change), or start a run with them "
                "(another --out, or --overwrite)"
            )
    start = time.perf_counter()
    results = run(out, config, resume, overwrite, unsafe_load)
    report(results, out, time.perf_counter() - start)


_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
RESUME_FREE = {"out", "resume", "overwrite", "unsafe_load", "verbose", "epochs", "on_error"}
"""Options a resumed run may be given with any value (the STFT's are checked against the run's dictionary)."""
_FIELDS = {"classifier_path": "classifier", "data_path": "data"}
_PATHS = ("classifier", "data", "dictionary")


def changed_on_resume(given: list[click.Parameter], config: runs.TrainConfig, recorded: runs.TrainConfig) -> list[str]:
    """``"--flag value (the run's: value)"`` for each of the ``given`` options (other than :data:`RESUME_FREE` and
    the STFT's) whose setting in ``config`` differs from the run's ``recorded`` one."""
    changed = []
    for param in given:
        field = _FIELDS.get(param.name, param.name)
        if param.name in RESUME_FREE or field in training.STFT_REQUEST:
            continue
        value, kept = getattr(config, field), getattr(recorded, field)
        if field in _PATHS and value is not None and kept is not None:
            same = Path(value).resolve() == Path(kept).resolve()
        else:
            same = value == kept or (isinstance(value, tuple | list) and list(value) == list(kept or ()))
        if not same:
            show = ",".join(map(str, value)) if isinstance(value, tuple | list) else value
            shown = ",".join(map(str, kept)) if isinstance(kept, tuple | list) else kept
            changed.append(f"{param.opts[-1]} {show} (the run's: {shown})")
    return changed


def dictionary_k(folder) -> int:
    """K of the dictionary in ``folder`` (a folder that is not one is refused when the run loads it)."""
    try:
        return Dictionary.load(folder).k
    except (OSError, ValueError):
        return DEFAULTS.k


def train_config(classifier_path, multilabel, layers, class_names, data_path, splits, **settings) -> runs.TrainConfig:
    """The options as the run's settings (the rest keep their defaults); file paths made absolute, so the run's
    record (and ``evaluate``, ``report``, ``--resume`` reading it) does not depend on the working directory."""
    if settings.get("dictionary"):
        settings["dictionary"] = _absolute(settings["dictionary"])
    return dataclasses.replace(
        DEFAULTS,
        classifier=_absolute(classifier_path),
        multilabel=multilabel,
        layers=tuple(s.strip() for s in layers.split(",") if s.strip()) if layers else (),
        class_names=tuple(s.strip() for s in class_names.split(",")) if class_names else None,
        data=_absolute(data_path),
        train_folds=splits.train,
        val_folds=splits.validation,
        test_folds=splits.test,
        **settings,
    )


def _absolute(path):
    return None if path is None else str(Path(path).resolve())


def run(out, config: runs.TrainConfig, resume: bool, overwrite: bool, unsafe_load: bool) -> dict:
    """The job, printing its progress lines; library errors become click errors naming the flag that fixes them."""
    try:
        return training.train(
            out, config, resume=resume, overwrite=overwrite, safe_mode=not unsafe_load, progress=click.echo
        )
    except runs.UnsafeModelError as e:
        raise errors.unsafe_model(e, "--classifier" if e.path == Path(config.classifier) else "--out") from None
    except runs.RunFolderError as e:
        raise errors.run_folder(e, "--out") from None
    except runs.CustomObjectsError as e:
        raise click.BadParameter(str(e), param_hint="--custom-objects") from None
    except training.ClassNamesError as e:
        if e.source != "class_names":
            raise click.BadParameter(str(e), param_hint="--classifier") from None
        message = f"{e.count} class names from --class-names but the classifier outputs {e.num_classes} classes"
        raise click.BadParameter(message, param_hint="--class-names") from None
    except ClassifierContractError as e:
        raise click.BadParameter(str(e), param_hint="--classifier/--layers") from None
    except audio.AudioSettingError as e:
        raise errors.audio_setting(e) from None
    except training.SampleRateMismatchError as e:
        raise errors.sample_rate_mismatch(e) from None
    except DictionaryMismatchError as e:
        raise errors.dictionary_mismatch(e, given=bool(config.dictionary)) from None
    except feature_cache.DiskSpaceError as e:
        more = (
            ", then continue the run with --resume (its dictionary is kept); or start it again with --overwrite and "
            "fewer examples (--source-mixtures; --mixtures)"
        )
        raise errors.disk_space(e, "--out", more) from None
    except (data.AudioDataError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


def report(results: dict, out, seconds: float) -> None:
    """Fidelity on both splits, skipped clips, time and peak memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    test = results["test"]
    click.echo(json.dumps({"validation": results["validation"], "test": test}, indent=2))
    if results["multilabel"]:
        figures = "  ".join(
            f"{name} {'n/a' if test[key] is None else format(test[key], '.3f')}"
            for name, key in (("macro-AUPRC", "macro_auprc"), ("micro-AUPRC", "micro_auprc"))
        )
        if test["macro_auprc"] is None:
            figures += " (the classifier predicts none of its classes on the test split)"
    else:
        figures = "  ".join(f"top-{key[3:]} {value:.1%}" for key, value in test.items())
    click.echo(f"test fidelity: {figures}")
    if results["skipped_clips"]["count"]:
        skipped = results["skipped_clips"]
        first = skipped["errors"][0]
        click.echo(f"skipped {skipped['count']} unreadable clip(s), listed in metrics.json; first: {first}")
    click.echo(f"time: {seconds:.0f} s  peak memory: {peak:.2f} GB  run folder: {out}")
