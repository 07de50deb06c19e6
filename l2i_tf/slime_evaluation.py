"""SLIME evaluated the way L2I is: faithfulness and SpeechBrain's mask metrics on explained test clips, SI-SDRi on
counted mixtures."""

from __future__ import annotations

import numpy as np

from l2i_tf import mask_metrics, metrics, separation, slime
from l2i_tf.faithfulness import explained_rows

METHODS = ("slime", "random")


def _faithfulness_of_clip(classify, res, before, c, thresholds, rng, num_samples, stft, multilabel):
    """Drops of one clip when its SLIME-selected segments (and as many random others) are removed, per τ; and the
    mask metrics of the kept segments (mask-in: the interpretation; mask-out: their removal; mask: the binary gain)."""
    off, counts, kept = [], [], []
    for t in thresholds:
        sel = res["relevance"] > t
        others = np.flatnonzero(~sel)
        rand = np.zeros_like(sel)
        rand[rng.choice(others, size=min(int(sel.sum()), len(others)), replace=False)] = True
        for s in (sel, rand):
            off.append(1.0 - s.astype("float32"))
            counts.append(int(s.sum()))
        kept.append(sel.astype("float32"))
    after = classify(slime.masked_audio(res["spectrum"], res["segments"], np.stack(off + kept), num_samples, stft))
    after, after_in = np.asarray(after[: len(off)]), np.asarray(after[len(off) :])
    drops = metrics.faithfulness_drops(
        np.repeat(before[None], len(after), axis=0), after, np.full(len(after), c), multilabel
    )
    out = {
        (t, m): (drops["logit"][2 * i + j], drops["probability"][2 * i + j], counts[2 * i + j])
        for i, t in enumerate(thresholds)
        for j, m in enumerate(METHODS)
    }
    n = len(thresholds)
    masks = np.einsum("ns,stf->ntf", np.stack(kept), res["segments"])
    befores, targets = np.repeat(before[None], n, axis=0), np.full(n, c)
    scores = mask_metrics.clip_scores(befores, after_in, after[0::2], targets, masks, multilabel)
    mask_scores = {t: {k: v[i : i + 1] for k, v in scores.items()} for i, t in enumerate(thresholds)}
    return out, mask_scores


def _mixtures(explainer, mix: dict, counted, config, scfg, seconds: list) -> dict:
    """SI-SDRi and target share of SLIME's interpretation on the first ``config.slime_clips`` counted mixtures."""
    pooled = separation.Pooled()
    stft = explainer.stft_config
    for m in counted[: config.slime_clips]:
        x, target, src = mix["mixture"][m], int(mix["classes"][m, 0]), mix["sources"][m]
        res = slime.explain(explainer.classifier_logits, x, target, stft, scfg, explainer.multilabel)
        seconds.append(res["seconds"])
        base = metrics.si_sdr(x, src[0])
        _, _, P_t, P_d = separation.source_powers(src[None], stft)
        for t in config.mixture_thresholds:
            on = (res["relevance"] > t).astype("float32")
            gain = np.einsum("s,stf->tf", on, res["segments"])
            est = slime.interpretation(res, t, len(x), stft)
            share = metrics.target_energy_share(gain[None], P_t, P_d)
            pooled.add("SLIME", "binary", t, [metrics.si_sdr(est, src[0]) - base], share, [on.sum()])
    return {"counted_used": int(min(len(counted), config.slime_clips)), "rows": pooled.table()}


def slime_evaluation(explainer, waves, mix: dict | None, counted, thresholds, config) -> dict:
    """SLIME on the first ``config.slime_clips`` explained test clips (faithfulness and the mask metrics of
    :mod:`l2i_tf.mask_metrics`, ``mask_metrics``) and counted mixtures (SI-SDRi).

    Args:
        explainer: the :class:`~l2i_tf.explainer.Explainer` whose classifier SLIME explains.
        waves: float32 [n, S] test clips.
        mix: :func:`~l2i_tf.separation.build_mixtures`'s output, or None.
        counted: indices of the mixtures the classifier gets right.
        thresholds: τ values.
        config: an :class:`~l2i_tf.evaluate.EvalConfig`.
    """
    scfg = slime.SlimeConfig(**config.slime)
    rng = np.random.default_rng(config.seed)
    stft = explainer.stft_config
    clf = explainer.classifier_logits(waves[: config.slime_clips * 2])
    rows, classes = explained_rows(clf, explainer.multilabel)
    rows, classes = rows[: config.slime_clips], classes[: config.slime_clips]
    seconds, r2 = [], []
    acc = {(t, m): [] for t in thresholds for m in METHODS}
    masked = {t: [] for t in thresholds}
    for row, c in zip(rows, classes, strict=True):
        res = slime.explain(explainer.classifier_logits, waves[row], int(c), stft, scfg, explainer.multilabel)
        seconds.append(res["seconds"])
        r2.append(res["r2"])
        drops, mask_scores = _faithfulness_of_clip(
            explainer.classifier_logits, res, clf[row], c, thresholds, rng, waves.shape[1], stft, explainer.multilabel
        )
        for key, value in drops.items():
            acc[key].append(value)
        for t in thresholds:
            masked[t].append(mask_scores[t])

    def entry(values):
        logit, probability, selected = (list(v) for v in zip(*values)) if values else ([], [], [])
        return {
            "logit_drop": metrics.summarize(logit),
            "probability_drop": metrics.summarize(probability),
            "selected_mean": float(np.mean(selected)) if rows.size else float("nan"),
        }

    out = {
        "config": scfg.to_dict(),
        "clips": int(len(rows)),
        "faithfulness": {str(t): {m: entry(acc[(t, m)]) for m in METHODS} for t in thresholds},
        "mask_metrics": {str(t): mask_metrics.summarize(masked[t]) for t in thresholds},
        "seconds_per_clip": metrics.summarize(seconds),
        "ridge_r2": metrics.summarize(r2),
    }
    if mix is not None and len(counted):
        out["mixtures"] = _mixtures(explainer, mix, counted, config, scfg, seconds)
        out["seconds_per_clip"] = metrics.summarize(seconds)
    return out
