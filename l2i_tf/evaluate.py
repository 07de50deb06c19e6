"""The `l2i-tf evaluate` job: fidelity, faithfulness, SpeechBrain's mask metrics, mixture ground truth,
cross-validation and baselines."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from l2i_tf import audio, batches, files, metrics, runs, tables, training
from l2i_tf import slime as slime_lib
from l2i_tf.baseline_evaluation import baselines_evaluation
from l2i_tf.baseline_training import FlintConfig, VibiConfig
from l2i_tf.evaluation_data import close, scratch_folder, test_data
from l2i_tf.evaluation_report import markdown
from l2i_tf.explain import ACTIVE_SHARE
from l2i_tf.explainer import ExplainConfig, Explainer, check_threshold
from l2i_tf.faithfulness import Removals, analysed_batch, faithfulness, paper_and_active
from l2i_tf.mask_metrics import SPEECHBRAIN_L2I, SPEECHBRAIN_L2I_SOURCE, batch_scores, summarize
from l2i_tf.method_table import method_table
from l2i_tf.separation import build_mixtures, mixture_separation
from l2i_tf.settings import Settings
from l2i_tf.slime_evaluation import slime_evaluation

log = logging.getLogger(__name__)

BASELINES = ("slime", "flint", "vibi")
__all__ = ["EvalConfig", "evaluate", "markdown", "test_data"]

# clips the wall time of an explanation is measured on (a rate: more clips only make the job longer)
TIMED_CLIPS = 256


def fold_config(config: runs.TrainConfig, fold: int, num_folds: int = 5, quick: bool = False):
    """The run's training config with ``fold`` held out for test (validation on the next fold, its own dictionary)."""
    splits = tables.Splits.holding_out(fold, num_folds)
    changes = dict(train_folds=splits.train, val_folds=splits.validation, test_folds=splits.test, dictionary=None)
    if quick:
        changes.update(epochs=min(config.epochs or 2, 2), nmf_iterations=5, mixtures=min(config.mixtures, 64))
        if config.source_mixtures:
            changes["source_mixtures"] = min(config.source_mixtures, 64)
    return dataclasses.replace(config, **changes)


def train_fold(
    run_dir: str | Path, config: runs.TrainConfig, fold: int, num_folds: int = 5, quick=False, safe_mode=True
) -> Path:
    """Train (once) the interpreter holding out ``fold`` into ``run_dir/cv/fold{fold}``; a finished fold made with
    the same settings (fold plan, ``quick``) is reused, one made otherwise is trained again."""
    out = Path(run_dir) / runs.CROSS_VALIDATION / f"fold{fold}"
    wanted = fold_config(config, fold, num_folds, quick)
    if runs.is_run(out) and (out / runs.METRICS).is_file():
        differs = _fold_differences(runs.read_config(out), wanted)
        if not differs:
            log.info("fold %d: reusing %s", fold, out)
            return out
        log.warning("fold %d: %s was trained with other settings (%s): training it again", fold, out, differs)
    log.info("fold %d: training into %s", fold, out)
    training.train(out, wanted, overwrite=True, safe_mode=safe_mode)
    return out


FOLD_SETTINGS = ("train_folds", "val_folds", "test_folds", "epochs", "nmf_iterations", "mixtures", "source_mixtures")
"""What makes a fold run: its split and the settings ``quick`` shortens (the rest are the parent run's)."""


def _fold_differences(recorded: runs.TrainConfig, wanted: runs.TrainConfig) -> str:
    """``"name: recorded != wanted"`` for each of :data:`FOLD_SETTINGS` that differs ("" if none)."""

    def norm(value):
        return list(value) if isinstance(value, tuple | list) else value

    return "; ".join(
        f"{name}: {getattr(recorded, name)} != {getattr(wanted, name)}"
        for name in FOLD_SETTINGS
        if norm(getattr(recorded, name)) != norm(getattr(wanted, name))
    )


@dataclasses.dataclass(frozen=True)
class EvalConfig(Settings):
    """What `l2i-tf evaluate` measures and how; saved in ``report.json``.

    Attributes:
        thresholds: τ values for faithfulness (multi-class).
        multilabel_thresholds: τ values for faithfulness of multi-label runs (per class).
        domain: mask domain for removal (faithfulness) and the mask metrics, see :data:`l2i_tf.audio.DOMAINS`.
        active_share: share of a clip's activation energy above which a component is active, for the active-random
            baseline of faithfulness (see :func:`l2i_tf.explain.active_components`).
        mixtures: number of target + distractor mixtures built from the test clips (0: skip).
        mixture_snr_db: target-to-distractor ratio, dB.
        mixture_thresholds: τ values for the mixture table (0.0 = every component with positive relevance).
        mixture_domains: mask domains compared on mixtures.
        baselines: extra methods, any of :data:`BASELINES` (FLINT and VIBI are trained on the run's classifier,
            layers and splits, and saved in ``<run>/baselines/``).
        retrain_baselines: train FLINT and VIBI again even if the run folder holds them.
        flint, vibi: their settings as dicts of :class:`~l2i_tf.baseline_training.FlintConfig` /
            :class:`~l2i_tf.baseline_training.VibiConfig` fields.
        slime_clips: test clips (and counted mixtures) SLIME is run on (it is slow: one pass per mask).
        slime: SLIME settings as a dict of :class:`~l2i_tf.slime.SlimeConfig` fields.
        cv: also train/evaluate one interpreter per held-out fold.
        folds: the folds of the cross-validation.
        batch_size: clips per interpreter pass.
        seed: seeds mixtures and random baselines.
        quick: shrunk settings for tests and smoke runs.
    """

    thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
    multilabel_thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.1)
    domain: str = ExplainConfig.domain
    active_share: float = ACTIVE_SHARE
    mixtures: int = 200
    mixture_snr_db: float = 0.0
    mixture_thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.0)
    mixture_domains: tuple[str, ...] = ("log1p", "linear")
    baselines: tuple[str, ...] = ()
    retrain_baselines: bool = False
    flint: dict = dataclasses.field(default_factory=lambda: FlintConfig().to_dict())
    vibi: dict = dataclasses.field(default_factory=lambda: VibiConfig().to_dict())
    slime_clips: int = 20
    slime: dict = dataclasses.field(default_factory=lambda: slime_lib.SlimeConfig().to_dict())
    cv: bool = False
    folds: tuple[int, ...] = (1, 2, 3, 4, 5)
    batch_size: int = 16
    seed: int = 0
    quick: bool = False

    def __post_init__(self):
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}; known baselines: {', '.join(BASELINES)}")
        if isinstance(self.active_share, bool) or not 0.0 <= self.active_share < 1.0:
            raise ValueError(f"active_share must be a number in [0, 1), got {self.active_share!r}")
        for d in (self.domain, *self.mixture_domains):
            if d not in audio.DOMAINS:
                raise ValueError(f"mask domain must be one of {audio.DOMAINS}, got {d!r}")
        for tau in (*self.thresholds, *self.multilabel_thresholds, *self.mixture_thresholds):
            check_threshold(tau)

    @classmethod
    def quick_config(cls, **changes) -> EvalConfig:
        """Small settings: 8 mixtures, SLIME on 2 clips with 24 masks of 2 x 3 segments."""
        small = dict(
            mixtures=8,
            slime_clips=2,
            slime=slime_lib.SlimeConfig(time_segments=2, freq_bands=3, num_samples=24).to_dict(),
            quick=True,
        )
        small.update(changes)
        return cls(**small)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ fidelity, timing


def explainer_of(run: runs.Run, domain: str | None = None, threshold: float | None = None) -> Explainer:
    """The run's Explainer as evaluation uses it: an export's default selection (:class:`ExplainConfig`'s τ, top-N
    and mask domain unless given), no length limit."""
    given = {"domain": domain, "threshold": threshold}
    config = ExplainConfig(max_seconds=0, **{k: v for k, v in given.items() if v is not None})
    return Explainer(run.interpreter, run.class_names, config)


def fidelity_on(explainer: Explainer, waves, batch_size: int = 16) -> dict:
    """Fidelity of Θ to the classifier on ``waves`` (top-k, or AUPRC / max-F1 for multi-label)."""
    out = batches.map_batches(
        lambda w: {k: v for k, v in explainer.analyze(w).items() if k in ("classifier_logits", "logits")},
        waves,
        batch_size,
    )
    return metrics.fidelity(out["classifier_logits"], out["logits"], explainer.multilabel)


def l2i_measures(explainer: Explainer, waves, thresholds, config: EvalConfig) -> tuple[dict, dict, dict]:
    """Fidelity, faithfulness and the mask metrics of L2I in one pass over ``waves``: what :func:`fidelity_on`,
    :func:`~l2i_tf.faithfulness.faithfulness` and :func:`~l2i_tf.mask_metrics.l2i_mask_metrics` give, with one
    interpreter pass a batch, and the removal audio of L2I's selection classified once for faithfulness and the
    mask metrics' mask-out."""
    logits = {"classifier_logits": [], "logits": []}
    removals = Removals(explainer, thresholds, config.domain, config.seed, config.active_share)
    masks = {t: [] for t in thresholds}
    for b, part in batches.spans(len(waves), config.batch_size):
        batch = analysed_batch(explainer, waves[part])
        for key, parts in logits.items():
            parts.append(np.asarray(batch["analysis"][key]))
        if len(batch["rows"]) == 0:
            continue
        removed = removals.add(batch, b)
        out = {t: removed[t]["l2i"]["logits"] for t in thresholds}
        for t, scores in batch_scores(explainer, batch, thresholds, config.domain, out).items():
            masks[t].append(scores)
    fidelity = metrics.fidelity(*(np.concatenate(logits[k]) for k in logits), explainer.multilabel)
    return fidelity, removals.result(), {str(t): summarize(masks[t]) for t in thresholds}


def l2i_seconds_per_clip(explainer: Explainer, waves, batch_size: int = 16) -> float:
    """Wall time of the whole L2I explanation (interpreter pass, relevance, mask, ISTFT) per clip, on the first
    :data:`TIMED_CLIPS` clips after a warm-up batch."""
    explainer.explain(waves[:batch_size])
    timed = min(len(waves), TIMED_CLIPS)
    start = time.perf_counter()
    for _, part in batches.spans(timed, batch_size):
        explainer.explain(waves[part])
    return (time.perf_counter() - start) / timed


# ------------------------------------------------------------------------------------------------ cross-validation


def cross_validate(run: runs.Run, config: EvalConfig, safe_mode: bool = True) -> dict:
    """One interpreter per held-out fold (``run/cv/fold{n}``), each evaluated on its own test fold: mean ± std."""
    per_fold = {}
    plan = run.config
    num_folds = max([*plan.train_folds, *plan.val_folds, *plan.test_folds, *config.folds])  # every fold of the data
    for fold in config.folds:
        folder = train_fold(run.folder, run.config, fold, num_folds=num_folds, quick=config.quick, safe_mode=safe_mode)
        fold_run = runs.load_run(folder, safe_mode=safe_mode)
        explainer = explainer_of(fold_run, config.domain)
        thresholds = config.multilabel_thresholds if explainer.multilabel else config.thresholds
        with scratch_folder() as tmp:
            td = test_data(
                fold_run.config, explainer.sample_rate, fold_run.class_names, explainer.interpreter.clip_samples, tmp
            )
            waves = td["evaluation"][0]
            per_fold[fold] = {
                "fidelity": fidelity_on(explainer, waves, config.batch_size),
                "faithfulness": faithfulness(
                    explainer, waves, thresholds, config.domain, config.seed, config.batch_size, config.active_share
                ),
                "epochs_run": fold_run.metrics.get("epochs_run"),
            }
            close(td)
        log.info("fold %d: fidelity %s", fold, per_fold[fold]["fidelity"])
    folds = list(per_fold.values())
    keys = [k for k in folds[0]["fidelity"] if k != "classes_present"]
    taus = list(folds[0]["faithfulness"])
    summary = {
        "fidelity": {k: metrics.mean_std([f["fidelity"][k] for f in folds]) for k in keys},
        "faithfulness_median_logit_drop": {
            t: {
                m: metrics.mean_std([f["faithfulness"][t][m]["logit_drop"]["median"] for f in folds])
                for m in ("l2i", "random", "random_active")
            }
            for t in taus
        },
        "faithfulness_median_probability_drop": {
            t: {
                m: metrics.mean_std([f["faithfulness"][t][m]["probability_drop"]["median"] for f in folds])
                for m in ("l2i", "random", "random_active")
            }
            for t in taus
        },
    }
    return {"folds": per_fold, "summary": summary}


# ------------------------------------------------------------------------------------------------ the job


def _slime(report: dict, explainer, waves, mix, counted, thresholds, config: EvalConfig) -> None:
    """SLIME into ``report["slime"]`` (and its wall time); a failure is recorded in ``report["baseline_errors"]``
    (e.g. more segments than the clip has frames) and the other methods still run."""
    t0 = time.perf_counter()
    try:
        report["slime"] = slime_evaluation(explainer, waves, mix, counted, thresholds, config)
        report["wall_time"]["slime_seconds_per_clip"] = report["slime"]["seconds_per_clip"]["mean"]
    except ValueError as e:
        log.error("SLIME failed: %s", e)
        report["baseline_errors"] = {"slime": str(e)}
    log.info("SLIME done (%.1f s)", time.perf_counter() - t0)


def evaluate(
    run_dir: str | Path, config: EvalConfig = EvalConfig(), out: str | Path | None = None, safe_mode: bool = True
) -> dict:
    """Evaluate a run folder; write ``report.json`` and ``report.md`` into ``out`` (default ``run_dir/evaluation``).

    The test split is streamed from temporary clip files (:mod:`l2i_tf.evaluation_data`), so memory does not grow
    with the number of test clips. ``safe_mode=False`` loads ``.keras`` files that hold Python code (Lambda layers):
    only for files you trust.
    """
    start = time.perf_counter()
    run = runs.load_run(run_dir, safe_mode=safe_mode)
    explainer = explainer_of(run, config.domain)
    with scratch_folder() as tmp:
        td = test_data(run.config, explainer.sample_rate, run.class_names, explainer.interpreter.clip_samples, tmp)
        report = {
            "run": str(Path(run_dir).resolve()),
            "class_names": list(run.class_names),
            "multilabel": explainer.multilabel,
            "k": explainer.num_components,
            "test_clips": int(len(td["evaluation"][0])),
            "test_windows": td["windows"],
            "config": config.to_dict(),
            "train_config": run.config.to_dict(),
            "environment": runs.environment(),
        }
        try:
            _measure(report, run, explainer, td, config, safe_mode)
        finally:
            close(td)
    report["methods"] = method_table(report, run.metrics)
    if config.cv:
        report["cv"] = cross_validate(run, config, safe_mode)
    report["seconds"] = time.perf_counter() - start
    out = Path(out) if out is not None else Path(run_dir) / runs.EVALUATION
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / "report.json", report)
    files.write_text(out / "report.md", markdown(report))
    return report


def _measure(report: dict, run: runs.Run, explainer: Explainer, td: dict, config: EvalConfig, safe_mode: bool) -> None:
    """Every measure on the test split ``td`` (see :func:`test_data`) into ``report``."""
    waves = td["evaluation"][0]
    thresholds = config.multilabel_thresholds if explainer.multilabel else config.thresholds
    t0 = time.perf_counter()
    report["fidelity"], faith, masks = l2i_measures(explainer, waves, thresholds, config)
    report["faithfulness"], report["faithfulness_active_random"] = paper_and_active(faith, config.active_share)
    published = {**SPEECHBRAIN_L2I, "source": SPEECHBRAIN_L2I_SOURCE}
    report["mask_metrics"] = {"l2i": masks, "speechbrain_published_l2i": published}
    log.info("fidelity %s, faithfulness, mask metrics (%.1f s)", report["fidelity"], time.perf_counter() - t0)
    report["wall_time"] = {"l2i_seconds_per_clip": l2i_seconds_per_clip(explainer, waves, config.batch_size)}
    mix, counted = None, np.zeros(0, int)
    if config.mixtures and td["single_label"]:
        t0 = time.perf_counter()
        clips, labels = td["clips"]
        mix = build_mixtures(clips, labels, len(run.class_names), config.mixtures, config.mixture_snr_db, config.seed)
        report["mixtures"] = mixture_separation(explainer, mix, config, config.batch_size)
        counted = report["mixtures"].pop("counted_index")
        log.info("mixtures done (%.1f s)", time.perf_counter() - t0)
    if "slime" in config.baselines:
        _slime(report, explainer, waves, mix, counted, thresholds, config)
    t0 = time.perf_counter()
    report["baselines"] = baselines_evaluation(run, explainer, waves, mix, counted, config, safe_mode)
    if report["baselines"]:
        log.info("FLINT/VIBI done (%.1f s)", time.perf_counter() - t0)
