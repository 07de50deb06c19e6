"""`l2i-tf evaluate`: fidelity, faithfulness, mixture ground truth, cross-validation and SLIME for a run folder."""

from __future__ import annotations

import dataclasses

import click

from cli import errors, options
from l2i_tf import audio, data, explain, feature_cache, runs
from l2i_tf import evaluate as evaluate_lib
from l2i_tf import slime as slime_lib
from l2i_tf.explainer import ExplainConfig


def _floats(value: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint=name) from None
    if not out or any(v != v for v in out):
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}", param_hint=name)
    return out


def _baselines(ctx, param, values) -> tuple[str, ...]:
    """``--baselines slime,flint --baselines vibi`` -> ("slime", "flint", "vibi"); an unknown name lists the known."""
    names = [n.strip().lower() for value in values for n in value.split(",") if n.strip()]
    unknown = sorted(set(names) - set(evaluate_lib.BASELINES))
    if unknown:
        raise click.BadParameter(
            f"unknown baseline(s) {', '.join(unknown)}; known baselines: {', '.join(evaluate_lib.BASELINES)}"
        )
    return tuple(dict.fromkeys(names))


@click.command(
    "evaluate",
    epilog="""\b
Examples:
  l2i-tf evaluate runs/esc10                      # fidelity, faithfulness, mixtures -> runs/esc10/evaluation
  l2i-tf evaluate runs/esc10 --baselines slime    # + SLIME in the faithfulness, mixture and wall-time tables
  l2i-tf evaluate runs/esc10 --baselines slime,flint,vibi   # + the methods table (FLINT, VIBI trained, saved)
  l2i-tf evaluate runs/esc10 --cv                 # + one interpreter per held-out fold: mean ± std
  l2i-tf evaluate runs/esc10 --quick --out /tmp/smoke
""",
)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Report folder [RUN_DIR/evaluation].")
@click.option("--cv", is_flag=True, help="Train (or reuse) one interpreter per held-out fold in RUN_DIR/cv/fold<n>.")
@click.option("--folds", default="1,2,3,4,5", show_default=True, help="Folds of the cross-validation.")
@click.option(
    "--baselines",
    multiple=True,
    callback=_baselines,
    help=f"Extra methods to compare, comma-separated: {', '.join(evaluate_lib.BASELINES)}. FLINT and VIBI are trained "
    "on the run's classifier, layers and splits and saved in RUN_DIR/baselines (reused).",
)
@click.option("--retrain-baselines", is_flag=True, help="Train FLINT and VIBI again even if RUN_DIR holds them.")
@click.option("--thresholds", default=None, help="τ values for faithfulness [0.9,0.7,0.5,0.3; +0.1 multi-label].")
@click.option("--domain", type=click.Choice(audio.DOMAINS), default=ExplainConfig.domain, show_default=True)
@click.option(
    "--active-share",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=explain.ACTIVE_SHARE,
    show_default=True,
    help="Share of a clip's activation energy a component needs to be drawn by the active-random baseline.",
)
@click.option(
    "--mixtures", type=click.IntRange(min=0), default=None, help="Target + distractor mixtures [200; 0: skip]."
)
@click.option("--snr-db", type=float, default=0.0, show_default=True, help="Target-to-distractor ratio of mixtures.")
@click.option("--slime-clips", type=click.IntRange(min=1), default=None, help="Clips SLIME explains [20].")
@click.option("--slime-samples", type=click.IntRange(min=2), default=None, help="Random masks per clip [300].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Small run: few mixtures, tiny SLIME, 2-epoch folds with --cv.")
@options.unsafe_load_option
@click.option("-v", "--verbose", is_flag=True)
def command(
    run_dir,
    out,
    cv,
    folds,
    baselines,
    retrain_baselines,
    thresholds,
    domain,
    active_share,
    mixtures,
    snr_db,
    slime_clips,
    slime_samples,
    seed,
    quick,
    unsafe_load,
    verbose,
):
    """Evaluate the interpreter in RUN_DIR on its test split and write report.md and report.json.

    Fidelity (top-1/3/5, or macro/micro-AUPRC and max-F1), faithfulness (median logit and probability drop after
    removing the selected components, against two seeded random baselines: among all other components, and among
    the clip's active ones), SpeechBrain's interpretation metrics (AI, AD, AG, FF, Fid-In, SPS, COMP) beside their
    published L2I row, SI-SDRi of interpretations of mixtures with known sources (with the mixture, random and
    oracle reference rows), wall time per clip; optionally 5-fold cross-validation and the baselines (SLIME, FLINT,
    VIBI) with one table comparing every method.
    """
    options.setup(verbose)
    changes = dict(
        cv=cv,
        folds=options.parse_folds(folds, "--folds"),
        baselines=baselines,
        retrain_baselines=retrain_baselines,
        domain=domain,
        active_share=active_share,
        mixture_snr_db=snr_db,
        seed=seed,
    )
    if thresholds is not None:
        taus = tuple(options.check_threshold(tau, "--thresholds") for tau in _floats(thresholds, "--thresholds"))
        changes.update(thresholds=taus, multilabel_thresholds=taus)
    if mixtures is not None:
        changes["mixtures"] = mixtures
    if slime_clips is not None:
        changes["slime_clips"] = slime_clips
    config = evaluate_lib.EvalConfig.quick_config(**changes) if quick else evaluate_lib.EvalConfig(**changes)
    if slime_samples is not None:
        slime = dataclasses.replace(slime_lib.SlimeConfig(**config.slime), num_samples=slime_samples, seed=seed)
        config = dataclasses.replace(config, slime=slime.to_dict())
    try:
        report = evaluate_lib.evaluate(run_dir, config, out, safe_mode=not unsafe_load)
    except runs.UnsafeModelError as e:
        raise errors.unsafe_model(e, "RUN_DIR") from None
    except runs.RunFolderError as e:
        raise errors.run_folder(e, "RUN_DIR") from None
    except feature_cache.DiskSpaceError as e:  # the baselines' feature shards, in the run folder
        raise errors.disk_space(e, "RUN_DIR") from None
    except (data.AudioDataError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(evaluate_lib.markdown(report))
