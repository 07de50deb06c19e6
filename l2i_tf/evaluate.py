"""The `l2i-tf evaluate` job: fidelity, faithfulness, mixture ground truth, cross-validation and baselines."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2i_tf import audio, data, explain, metrics, mixtures, tables, training
from l2i_tf import slime as slime_lib

log = logging.getLogger(__name__)


def fold_config(config: training.TrainConfig, fold: int, num_folds: int = 5, quick: bool = False):
    """The run's training config with ``fold`` held out for test (validation on the next fold, its own dictionary)."""
    splits = tables.Splits.holding_out(fold, num_folds)
    changes = dict(train_folds=splits.train, val_folds=splits.validation, test_folds=splits.test, dictionary=None)
    if quick:
        changes.update(epochs=min(config.epochs, 2), nmf_iterations=5, mixtures=min(config.mixtures, 64))
    return dataclasses.replace(config, **changes)


def train_fold(
    run_dir: str | Path, config: training.TrainConfig, fold: int, num_folds: int = 5, quick=False, safe_mode=True
) -> Path:
    """Train (once) the interpreter holding out ``fold`` into ``run_dir/cv/fold{fold}``; a finished fold is reused."""
    out = Path(run_dir) / "cv" / f"fold{fold}"
    if (out / "interpreter.keras").is_file() and (out / "metrics.json").is_file():
        log.info("fold %d: reusing %s", fold, out)
        return out
    log.info("fold %d: training into %s", fold, out)
    training.train(out, fold_config(config, fold, num_folds, quick), overwrite=True, safe_mode=safe_mode)
    return out


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `l2i-tf evaluate` measures and how; saved in ``report.json``.

    Attributes:
        thresholds: τ values for faithfulness (multi-class).
        multilabel_thresholds: τ values for faithfulness of multi-label runs (per class).
        domain: mask domain for removal (faithfulness), see :data:`l2i_tf.explain.DOMAINS`.
        mixtures: number of target + distractor mixtures built from the test clips (0: skip).
        mixture_snr_db: target-to-distractor ratio, dB.
        mixture_thresholds: τ values for the mixture table (0.0 = every component with positive relevance).
        mixture_domains: mask domains compared on mixtures.
        baselines: extra methods, e.g. ``("slime",)``.
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
    domain: str = "log1p"
    mixtures: int = 200
    mixture_snr_db: float = 0.0
    mixture_thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.0)
    mixture_domains: tuple[str, ...] = ("log1p", "linear")
    baselines: tuple[str, ...] = ()
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
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
        for d in (self.domain, *self.mixture_domains):
            if d not in explain.DOMAINS:
                raise ValueError(f"mask domain must be one of {explain.DOMAINS}, got {d!r}")

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


BASELINES = ("slime",)


class _Model:
    """A loaded run's pieces as numpy/tf callables: interpreter pass, classifier on waveforms, W and θ."""

    def __init__(self, run: training.Run, batch_size: int):
        self.interpreter = interp = run.interpreter
        self.stft = interp.stft_config
        self.multilabel = bool(interp.multilabel)
        self.W = np.asarray(interp.decoder.weights[0])
        self.theta = np.asarray(interp.theta.kernel)
        self.batch_size = batch_size
        rank3 = interp.classifier_rank == 3

        @tf.function(reduce_retracing=True)
        def classify(w):
            return interp.classifier(w[:, :, None] if rank3 else w, training=False)

        @tf.function(reduce_retracing=True)
        def forward(w):
            w = interp.prepare(w)
            feats, clf = interp.features(w)
            h, logits, z = interp.heads(feats, interp.num_frames(w), training=False)
            X, phase = audio.analyze(w, self.stft)
            return {"classifier_logits": clf, "logits": logits, "H": h, "z": z, "X": X, "phase": phase, "wave": w}

        self._classify, self.forward = classify, forward

    def classify(self, waves) -> np.ndarray:
        """Classifier logits ``[n, C]`` for waveforms ``[n, samples]``, in chunks of ``2 * batch_size``."""
        waves = tf.convert_to_tensor(waves, tf.float32)
        step = 2 * self.batch_size
        return np.concatenate([np.asarray(self._classify(waves[i : i + step])) for i in range(0, len(waves), step)])


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield i // size, slice(i, min(i + size, n))


# ------------------------------------------------------------------------------------------------ data


def test_data(config: training.TrainConfig, sample_rate: int, num_classes: int) -> dict:
    """The run's test split: ``clips`` (waveforms, labels) and ``evaluation`` (what the classifier is scored on:
    the clips, or for a multi-label run on single-label data the same test mixtures training scored)."""
    table = tables.esc10_table() if config.data is None else tables.load_table(config.data, config.layout)
    if len(table.class_names) != num_classes:
        raise ValueError(
            f"the data set has {len(table.class_names)} classes but the classifier outputs {num_classes} "
            f"(data {config.data or 'bundled ESC-10'!r}, layout {config.layout!r})"
        )
    test = table.with_folds(config.test_folds)
    waves, labels = data.load_waveforms(test, sample_rate, int(config.clip_seconds * sample_rate))
    out = {"clips": (waves, labels), "evaluation": (waves, labels), "single_label": not table.multilabel}
    if config.multilabel and not table.multilabel:
        # As training.train builds its test split: count mixtures // 4, seed + 2.
        mix = mixtures.make_mixtures(
            waves,
            labels,
            num_classes,
            config.mixtures // 4,
            snr_db=config.mixture_snr_db,
            seed=config.seed + 2,
            keep_sources=False,
        )
        out["evaluation"] = (mix["mixture"], mix["labels"])
    return out


# ------------------------------------------------------------------------------------------------ faithfulness


def removal_drops(
    classify,
    X,
    phase,
    W,
    H,
    relevance,
    logits,
    target_class,
    thresholds,
    num_samples,
    stft,
    domain,
    seed,
    multilabel=False,
) -> dict:
    """Faithfulness of one batch: remove the components with relevance > τ (and as many random others), re-forward.

    All removals of the batch (``2 · len(thresholds) · B`` clips) go through the classifier in one call.

    Args:
        classify: waveforms [n, N] -> logits [n, C].
        X, phase: [B, T, F] ``log1p|S|`` and phase of the inputs.
        W: [F, K]; H: [B, T, K]; relevance: [B, K] for ``target_class``.
        logits: [B, C] the classifier's logits on the inputs.
        target_class: int [B].
        thresholds: τ values.
        num_samples: clip length N.
        stft: STFT configuration.
        domain: mask domain.
        seed: int [2] stateless seed of the random baseline (vary it per batch).
        multilabel: probability semantics.

    Returns:
        ``{τ: {"l2i": {"logit", "probability", "selected"}, "random": {...}}}``, arrays [B].
    """
    removed, counts = [], []
    for i, tau in enumerate(thresholds):
        chosen = explain.select(relevance, tau)
        rand = explain.random_selection(chosen, tf.constant([seed[0], seed[1] * 131 + i], tf.int64))
        for sel in (chosen, rand):
            removed.append(explain.remove(X, phase, W, H, sel, num_samples, stft, domain))
            counts.append(np.asarray(tf.reduce_sum(tf.cast(sel, tf.int32), axis=1)))
    after = classify(tf.concat(removed, axis=0))
    B = len(logits)
    out = {}
    for i, tau in enumerate(thresholds):
        out[tau] = {}
        for j, name in enumerate(("l2i", "random")):
            n = 2 * i + j
            drops = metrics.faithfulness_drops(logits, after[n * B : (n + 1) * B], target_class, multilabel)
            out[tau][name] = {**drops, "selected": counts[n]}
    return out


def _explained_rows(classifier_logits: np.ndarray, multilabel: bool):
    """(row index, class) pairs to explain: the predicted class per clip, or every predicted-present class."""
    if not multilabel:
        return np.arange(len(classifier_logits)), classifier_logits.argmax(axis=1)
    rows, classes = np.nonzero(classifier_logits > 0.0)  # sigmoid > 0.5
    return rows, classes


def faithfulness(model: _Model, waves: np.ndarray, thresholds, domain: str, seed: int) -> dict:
    """Median logit and probability drops over the clips (multi-label: over clip-class pairs, and per class)."""
    acc: dict = {
        t: {m: {"logit": [], "probability": [], "selected": [], "class": []} for m in ("l2i", "random")}
        for t in thresholds
    }
    for b, part in _batches(len(waves), model.batch_size):
        f = model.forward(tf.constant(waves[part]))
        clf = np.asarray(f["classifier_logits"])
        rows, classes = _explained_rows(clf, model.multilabel)
        if len(rows) == 0:
            continue
        X, phase, H, z = (tf.gather(f[key], rows) for key in ("X", "phase", "H", "z"))
        r = explain.relevance(z, model.theta, classes)
        res = removal_drops(
            model.classify,
            X,
            phase,
            model.W,
            H,
            r,
            clf[rows],
            classes,
            thresholds,
            waves.shape[1],
            model.stft,
            domain,
            (seed, b),
            model.multilabel,
        )
        for t in thresholds:
            for m in ("l2i", "random"):
                for key in ("logit", "probability", "selected"):
                    acc[t][m][key].append(res[t][m][key])
                acc[t][m]["class"].append(classes)
    out = {}
    for t in thresholds:
        out[str(t)] = {}
        for m in ("l2i", "random"):
            v = {k: np.concatenate(x) if x else np.zeros(0) for k, x in acc[t][m].items()}
            entry = {
                "logit_drop": metrics.summarize(v["logit"]),
                "probability_drop": metrics.summarize(v["probability"]),
                "selected_mean": float(v["selected"].mean()) if v["selected"].size else float("nan"),
                "empty_share": float((v["selected"] == 0).mean()) if v["selected"].size else float("nan"),
            }
            if model.multilabel:
                entry["per_class_median_logit_drop"] = {
                    int(c): float(np.median(v["logit"][v["class"] == c])) for c in np.unique(v["class"])
                }
            out[str(t)][m] = entry
    return out


# ------------------------------------------------------------------------------------------------ mixtures


class _Pooled:
    """Per-method rows of the mixture table, pooled over batches."""

    def __init__(self):
        self.rows: dict[tuple, dict[str, list]] = {}

    def add(self, method: str, domain: str, tau, sdri, share, count):
        row = self.rows.setdefault((method, domain, tau), {"si_sdri": [], "share": [], "selected": []})
        row["si_sdri"].append(np.asarray(sdri, dtype="float64"))
        row["share"].append(np.asarray(share, dtype="float64"))
        row["selected"].append(np.asarray(count, dtype="float64"))

    def table(self) -> list[dict]:
        out = []
        for (method, domain, tau), row in self.rows.items():
            sdri, share, count = (np.concatenate(row[k]) for k in ("si_sdri", "share", "selected"))
            out.append(
                {
                    "method": method,
                    "domain": domain,
                    "threshold": tau,
                    "si_sdri_db": metrics.summarize(sdri),
                    "target_energy_share": metrics.summarize(share),
                    "selected_mean": float(np.mean(count)) if np.isfinite(count).all() and count.size else None,
                    "empty_share": float(np.mean(count == 0)) if np.isfinite(count).all() and count.size else None,
                }
            )
        return out


def _gain(mask, X, domain: str):
    """Effective linear gain on the mixture's STFT of a mask applied in ``domain``: ``|Ŝ| / |S|``."""
    if domain == "linear":
        return np.asarray(mask)
    magnitude = np.expm1(np.asarray(X, dtype="float64"))
    masked = np.expm1(np.asarray(mask, dtype="float64") * np.asarray(X, dtype="float64"))
    return np.where(magnitude > 0, masked / np.maximum(magnitude, 1e-30), 0.0)


def build_mixtures(clips, labels, num_classes: int, config: EvalConfig) -> dict:
    """Target + one distractor of another class at ``mixture_snr_db``, with sources (``mixtures.make_mixtures``)."""
    return mixtures.make_mixtures(
        clips, labels, num_classes, config.mixtures, num_sources=2, snr_db=config.mixture_snr_db, seed=config.seed
    )


def mixture_separation(model: _Model, mix: dict, config: EvalConfig) -> dict:
    """SI-SDRi and target-energy share of interpretations of mixtures the classifier gets right.

    The selection is the interpreter's: relevance for the classifier's predicted class (= the target on the counted
    mixtures). Reference rows: the mixture itself, a random selection of the same size, and two oracles that use
    the sources (component choice by target share, ideal ratio mask) — for scale, never for L2I.
    """
    pooled = _Pooled()
    counted_index = []
    N = mix["mixture"].shape[1]
    for b, part in _batches(len(mix["mixture"]), model.batch_size):
        x = mix["mixture"][part]
        target = mix["classes"][part, 0]
        f = model.forward(tf.constant(x))
        clf = np.asarray(f["classifier_logits"])
        right = clf[np.arange(len(x)), target] > 0 if model.multilabel else clf.argmax(axis=1) == target
        idx = np.flatnonzero(right)
        if len(idx) == 0:
            continue
        counted_index.append(part.start + idx)
        X, phase, H = (tf.gather(f[k], idx) for k in ("X", "phase", "H"))
        r = explain.relevance(tf.gather(f["z"], idx), model.theta, target[idx])
        sources = mix["sources"][part][idx]
        ref = sources[:, 0]
        base = metrics.si_sdr(x[idx], ref)
        S_t, S_d = audio.stft(sources[:, 0], model.stft), audio.stft(sources[:, 1], model.stft)
        P_t, P_d = np.square(np.abs(S_t)).astype("float64"), np.square(np.abs(S_d)).astype("float64")
        X_np = np.asarray(X)
        ones = np.ones_like(X_np[:1])
        pooled.add(
            "mixture",
            "-",
            None,
            np.zeros(len(idx)),
            metrics.target_energy_share(ones, P_t, P_d),
            np.full(len(idx), model.W.shape[1]),
        )
        # Oracle component choice: components whose soft mask gathers more target than distractor energy.
        denominator = np.asarray(explain._reconstruction(model.W, H)) + 1e-8
        num = np.einsum("btk,fk,btf->bk", np.asarray(H), model.W, P_t / denominator)
        den = np.einsum("btk,fk,btf->bk", np.asarray(H), model.W, (P_t + P_d) / denominator)
        oracle_sel = num > 0.5 * den
        for domain in config.mixture_domains:
            choices = []
            for i, tau in enumerate(config.mixture_thresholds):
                chosen = explain.select(r, tau)
                rand = explain.random_selection(chosen, tf.constant([config.seed, b * 131 + i], tf.int64))
                choices += [("L2I", tau, chosen), ("random", tau, rand)]
            # Soft selection from the interpreter: every component weighted by its positive relevance.
            choices.append(("L2I relevance-weighted", 0.0, tf.nn.relu(r)))
            choices.append(("oracle components", None, oracle_sel))
            for method, tau, sel in choices:
                mask = explain.selected_mask(model.W, H, sel)
                est = np.asarray(explain.masked_audio(X, phase, mask, N, model.stft, domain))
                count = np.asarray(tf.reduce_sum(tf.cast(tf.cast(sel, tf.float32) > 0, tf.int32), axis=1))
                share = metrics.target_energy_share(_gain(mask, X_np, domain), P_t, P_d)
                pooled.add(method, domain, tau, metrics.si_sdr(est, ref) - base, share, count)
        irm = np.abs(S_t) / np.maximum(np.abs(S_t) + np.abs(S_d), 1e-12)
        est = np.asarray(audio.istft(tf.cast(irm, tf.complex64) * (S_t + S_d), N, model.stft))
        pooled.add(
            "oracle ratio mask",
            "linear",
            None,
            metrics.si_sdr(est, ref) - base,
            metrics.target_energy_share(irm, P_t, P_d),
            np.full(len(idx), np.nan),
        )
    counted = np.concatenate(counted_index) if counted_index else np.zeros(0, int)
    return {
        "mixtures": int(len(mix["mixture"])),
        "counted": int(len(counted)),
        "classifier_right_share": float(len(counted) / max(len(mix["mixture"]), 1)),
        "snr_db": config.mixture_snr_db,
        "rows": pooled.table(),
        "counted_index": counted,
    }


# ------------------------------------------------------------------------------------------------ SLIME


def slime_evaluation(model: _Model, waves, mix: dict | None, counted, thresholds, config: EvalConfig) -> dict:
    """SLIME on the first ``slime_clips`` explained test clips (faithfulness) and counted mixtures (SI-SDRi)."""
    scfg = slime_lib.SlimeConfig(**config.slime)
    rng = np.random.default_rng(config.seed)
    clf = model.classify(waves[: config.slime_clips * 2])
    rows, classes = _explained_rows(clf, model.multilabel)
    rows, classes = rows[: config.slime_clips], classes[: config.slime_clips]
    seconds, r2 = [], []
    acc = {t: {m: {"logit": [], "probability": [], "selected": []} for m in ("slime", "random")} for t in thresholds}
    N = waves.shape[1]
    for row, c in zip(rows, classes, strict=True):
        res = slime_lib.explain(model.classify, waves[row], int(c), model.stft, scfg, model.multilabel)
        seconds.append(res["seconds"])
        r2.append(res["r2"])
        off, counts = [], []
        for t in thresholds:
            sel = res["relevance"] > t
            others = np.flatnonzero(~sel)
            rand = np.zeros_like(sel)
            rand[rng.choice(others, size=min(int(sel.sum()), len(others)), replace=False)] = True
            for s in (sel, rand):
                off.append(1.0 - s.astype("float32"))
                counts.append(int(s.sum()))
        after = model.classify(slime_lib.masked_audio(res["spectrum"], res["segments"], np.stack(off), N, model.stft))
        before = np.repeat(clf[row : row + 1], len(after), axis=0)
        drops = metrics.faithfulness_drops(before, after, np.full(len(after), c), model.multilabel)
        for i, t in enumerate(thresholds):
            for j, m in enumerate(("slime", "random")):
                n = 2 * i + j
                acc[t][m]["logit"].append(drops["logit"][n])
                acc[t][m]["probability"].append(drops["probability"][n])
                acc[t][m]["selected"].append(counts[n])
    faith = {
        str(t): {
            m: {
                "logit_drop": metrics.summarize(acc[t][m]["logit"]),
                "probability_drop": metrics.summarize(acc[t][m]["probability"]),
                "selected_mean": float(np.mean(acc[t][m]["selected"])) if rows.size else float("nan"),
            }
            for m in ("slime", "random")
        }
        for t in thresholds
    }
    out = {
        "config": scfg.to_dict(),
        "clips": int(len(rows)),
        "faithfulness": faith,
        "seconds_per_clip": metrics.summarize(seconds),
        "ridge_r2": metrics.summarize(r2),
    }
    if mix is not None and len(counted):
        pooled = _Pooled()
        for m in counted[: config.slime_clips]:
            x, target, src = mix["mixture"][m], int(mix["classes"][m, 0]), mix["sources"][m]
            res = slime_lib.explain(model.classify, x, target, model.stft, scfg, model.multilabel)
            seconds.append(res["seconds"])
            base = metrics.si_sdr(x, src[0])
            P_t = np.square(np.abs(np.asarray(audio.stft(src[0], model.stft)))).astype("float64")
            P_d = np.square(np.abs(np.asarray(audio.stft(src[1], model.stft)))).astype("float64")
            for t in config.mixture_thresholds:
                on = (res["relevance"] > t).astype("float32")
                gain = np.einsum("s,stf->tf", on, res["segments"])
                est = slime_lib.interpretation(res, t, len(x), model.stft)
                pooled.add(
                    "SLIME",
                    "binary",
                    t,
                    [metrics.si_sdr(est, src[0]) - base],
                    metrics.target_energy_share(gain[None], P_t[None], P_d[None]),
                    [on.sum()],
                )
        out["mixtures"] = {"counted_used": int(min(len(counted), config.slime_clips)), "rows": pooled.table()}
        out["seconds_per_clip"] = metrics.summarize(seconds)
    return out


# ------------------------------------------------------------------------------------------------ fidelity, timing


def fidelity_on(model: _Model, waves) -> dict:
    """Fidelity of Θ to the classifier on ``waves`` (top-k, or AUPRC / max-F1 for multi-label)."""
    clf, logits = [], []
    for _, part in _batches(len(waves), model.batch_size):
        f = model.forward(tf.constant(waves[part]))
        clf.append(np.asarray(f["classifier_logits"]))
        logits.append(np.asarray(f["logits"]))
    return metrics.fidelity(np.concatenate(clf), np.concatenate(logits), model.multilabel)


def l2i_seconds_per_clip(model: _Model, waves, threshold: float, domain: str) -> float:
    """Wall time of the whole L2I explanation (interpreter pass, relevance, mask, ISTFT) per clip, after a warm-up."""

    def run(batch):
        f = model.forward(tf.constant(batch))
        clf = np.asarray(f["classifier_logits"])
        r = explain.relevance(f["z"], model.theta, clf.argmax(axis=1))
        sel = explain.select(r, threshold)
        return np.asarray(
            explain.interpret(f["X"], f["phase"], model.W, f["H"], sel, batch.shape[1], model.stft, domain)
        )

    run(waves[: model.batch_size])
    start = time.perf_counter()
    for _, part in _batches(len(waves), model.batch_size):
        run(waves[part])
    return (time.perf_counter() - start) / len(waves)


# ------------------------------------------------------------------------------------------------ cross-validation


def cross_validate(run: training.Run, config: EvalConfig, safe_mode: bool = True) -> dict:
    """One interpreter per held-out fold (``run/cv/fold{n}``), each evaluated on its own test fold: mean ± std."""
    per_fold = {}
    for fold in config.folds:
        folder = train_fold(
            run.folder, run.config, fold, num_folds=max(config.folds), quick=config.quick, safe_mode=safe_mode
        )
        fold_run = training.load_run(folder, safe_mode=safe_mode)
        model = _Model(fold_run, config.batch_size)
        td = test_data(fold_run.config, model.stft.sample_rate, model.theta.shape[1])
        waves = td["evaluation"][0]
        thresholds = config.multilabel_thresholds if model.multilabel else config.thresholds
        per_fold[fold] = {
            "fidelity": fidelity_on(model, waves),
            "faithfulness": faithfulness(model, waves, thresholds, config.domain, config.seed),
            "epochs_run": fold_run.metrics.get("epochs_run"),
        }
        log.info("fold %d: fidelity %s", fold, per_fold[fold]["fidelity"])
    folds = list(per_fold.values())
    keys = [k for k in folds[0]["fidelity"] if k != "classes_present"]
    taus = list(folds[0]["faithfulness"])
    summary = {
        "fidelity": {k: metrics.mean_std([f["fidelity"][k] for f in folds]) for k in keys},
        "faithfulness_median_logit_drop": {
            t: {
                m: metrics.mean_std([f["faithfulness"][t][m]["logit_drop"]["median"] for f in folds])
                for m in ("l2i", "random")
            }
            for t in taus
        },
        "faithfulness_median_probability_drop": {
            t: {
                m: metrics.mean_std([f["faithfulness"][t][m]["probability_drop"]["median"] for f in folds])
                for m in ("l2i", "random")
            }
            for t in taus
        },
    }
    return {"folds": per_fold, "summary": summary}


# ------------------------------------------------------------------------------------------------ the job


def evaluate(
    run_dir: str | Path, config: EvalConfig = EvalConfig(), out: str | Path | None = None, safe_mode: bool = True
) -> dict:
    """Evaluate a run folder; write ``report.json`` and ``report.md`` into ``out`` (default ``run_dir/evaluation``).

    ``safe_mode=False`` loads ``.keras`` files that hold Python code (Lambda layers): only for files you trust.
    """
    start = time.perf_counter()
    run = training.load_run(run_dir, safe_mode=safe_mode)
    model = _Model(run, config.batch_size)
    num_classes = model.theta.shape[1]
    td = test_data(run.config, model.stft.sample_rate, num_classes)
    waves = td["evaluation"][0]
    thresholds = config.multilabel_thresholds if model.multilabel else config.thresholds
    report = {
        "run": str(Path(run_dir).resolve()),
        "class_names": list(run.class_names),
        "multilabel": model.multilabel,
        "k": int(model.W.shape[1]),
        "test_clips": int(len(waves)),
        "config": config.to_dict(),
        "train_config": run.config.to_dict(),
        "environment": training.environment(),
    }
    t0 = time.perf_counter()
    report["fidelity"] = fidelity_on(model, waves)
    log.info("fidelity %s (%.1f s)", report["fidelity"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    report["faithfulness"] = faithfulness(model, waves, thresholds, config.domain, config.seed)
    log.info("faithfulness done (%.1f s)", time.perf_counter() - t0)
    report["wall_time"] = {"l2i_seconds_per_clip": l2i_seconds_per_clip(model, waves, 0.5, config.domain)}
    mix, counted = None, np.zeros(0, int)
    if config.mixtures and td["single_label"]:
        t0 = time.perf_counter()
        clips, labels = td["clips"]
        mix = build_mixtures(clips, labels, num_classes, config)
        report["mixtures"] = mixture_separation(model, mix, config)
        counted = report["mixtures"].pop("counted_index")
        log.info("mixtures done (%.1f s)", time.perf_counter() - t0)
    if "slime" in config.baselines:
        t0 = time.perf_counter()
        report["slime"] = slime_evaluation(model, waves, mix, counted, thresholds, config)
        report["wall_time"]["slime_seconds_per_clip"] = report["slime"]["seconds_per_clip"]["mean"]
        log.info("SLIME done (%.1f s)", time.perf_counter() - t0)
    if config.cv:
        report["cv"] = cross_validate(run, config, safe_mode)
    report["seconds"] = time.perf_counter() - start
    out = Path(out) if out is not None else Path(run_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    training._write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))
    return report


# ------------------------------------------------------------------------------------------------ Markdown


def _f(value, digits=2, pct=False):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{100 * value:.{digits - 1}f} %" if pct else f"{value:.{digits}f}"


def _pm(d, pct=False):
    if pct:
        return f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f} %"
    return f"{d['mean']:.2f} ± {d['std']:.2f}"


def markdown(report: dict) -> str:
    """The report as Markdown tables shaped like the paper's."""
    lines = [f"# L2I evaluation of `{report['run']}`", ""]
    lines += [f"K = {report['k']}, {report['test_clips']} test clips, multi-label: {report['multilabel']}.", ""]
    fid = report["fidelity"]
    lines += ["## Fidelity (test split)", ""]
    if report["multilabel"]:
        lines += [
            "| macro-AUPRC | micro-AUPRC | max-F1 |",
            "|---|---|---|",
            f"| {_f(fid['macro_auprc'], 3)} | {_f(fid['micro_auprc'], 3)} | {_f(fid['max_f1'], 3)} |",
            "",
        ]
    else:
        keys = list(fid)
        lines += [
            "| " + " | ".join(f"top-{k[3:]}" for k in keys) + " |",
            "|" + "---|" * len(keys),
            "| " + " | ".join(_f(fid[k], 2, pct=True) for k in keys) + " |",
            "",
        ]
    if "cv" in report:
        s = report["cv"]["summary"]
        n = len(report["cv"]["folds"])
        lines += [f"### {n}-fold cross-validation (mean ± std over folds)", ""]
        keys = list(s["fidelity"])
        lines += [
            "| " + " | ".join(keys) + " |",
            "|" + "---|" * len(keys),
            "| " + " | ".join(_pm(s["fidelity"][k], pct=not report["multilabel"]) for k in keys) + " |",
            "",
        ]
        lines += ["| τ | L2I median logit drop | random | L2I median prob. drop | random |", "|---|---|---|---|---|"]
        for t, v in s["faithfulness_median_logit_drop"].items():
            p = s["faithfulness_median_probability_drop"][t]
            lines.append(f"| {t} | {_pm(v['l2i'])} | {_pm(v['random'])} | {_pm(p['l2i'])} | {_pm(p['random'])} |")
        lines.append("")
    lines += ["## Faithfulness: median drop of the explained class after removing the selected components", ""]
    slime = report.get("slime")
    head = "| τ | L2I logit | random logit | L2I prob. | random prob. | L2I #comp. |"
    rule = "|---|---|---|---|---|---|"
    if slime:
        head += f" SLIME logit ({slime['clips']} clips) | SLIME random | SLIME prob. | SLIME #seg. |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    for t, v in report["faithfulness"].items():
        row = (
            f"| {t} | {_f(v['l2i']['logit_drop']['median'])} | {_f(v['random']['logit_drop']['median'])} | "
            f"{_f(v['l2i']['probability_drop']['median'], 3)} | {_f(v['random']['probability_drop']['median'], 3)} "
            f"| {_f(v['l2i']['selected_mean'], 1)} |"
        )
        if slime:
            s = slime["faithfulness"][t]
            row += (
                f" {_f(s['slime']['logit_drop']['median'])} | {_f(s['random']['logit_drop']['median'])} | "
                f"{_f(s['slime']['probability_drop']['median'], 3)} | {_f(s['slime']['selected_mean'], 1)} |"
            )
        lines.append(row)
    lines.append("")
    if "mixtures" in report:
        m = report["mixtures"]
        lines += [
            f"## Mixtures: target + distractor at {m['snr_db']} dB ({m['counted']} of {m['mixtures']} "
            f"mixtures the classifier gets right)",
            "",
        ]
        lines += [
            "| method | mask domain | τ | median SI-SDRi (dB) | mean SI-SDRi (dB) | median target energy share "
            "| mean #comp. | empty |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = list(m["rows"])
        if slime and "mixtures" in slime:
            rows += slime["mixtures"]["rows"]
        for r in rows:
            tau = "–" if r["threshold"] is None else r["threshold"]
            name = r["method"] + (" (oracle)" if r["method"].startswith("oracle") else "")
            if r["method"] == "SLIME":
                name += f" ({slime['mixtures']['counted_used']} mixtures)"
            lines.append(
                f"| {name} | {r['domain']} | {tau} | {_f(r['si_sdri_db']['median'])} | {_f(r['si_sdri_db']['mean'])} "
                f"| {_f(r['target_energy_share']['median'], 3)} | {_f(r['selected_mean'], 1)} "
                f"| {_f(r['empty_share'], 2, pct=True)} |"
            )
        lines += [
            "",
            "Oracle rows use the true sources and are references only; L2I and random rows select from the "
            "interpreter's relevance for the predicted class.",
            "",
        ]
    wt = report["wall_time"]
    lines += [
        "## Wall time per clip",
        "",
        "| method | seconds per clip |",
        "|---|---|",
        f"| L2I (interpreter pass + mask + ISTFT, batched) | {wt['l2i_seconds_per_clip']:.4f} |",
    ]
    if "slime_seconds_per_clip" in wt:
        n = report["slime"]["config"]["num_samples"]
        ratio = wt["slime_seconds_per_clip"] / max(wt["l2i_seconds_per_clip"], 1e-12)
        lines.append(f"| SLIME ({n} masks) | {wt['slime_seconds_per_clip']:.3f} ({ratio:.0f}× L2I) |")
    lines += [
        "",
        f"Total evaluation time: {report['seconds']:.0f} s. Every figure and the exact configuration: `report.json`.",
        "",
    ]
    return "\n".join(lines)
