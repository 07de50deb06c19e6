"""FLINT and VIBI evaluated on the run's test split as L2I is: fidelity and seconds per explained clip for both;
for VIBI, whose selection is listenable, also faithfulness (its top-k chunks removed), SpeechBrain's mask metrics
and SI-SDRi on the counted mixtures."""

from __future__ import annotations

import logging
import time

import numpy as np
import tensorflow as tf

from l2i_tf import audio, baseline_training, batches, mask_metrics, metrics, separation
from l2i_tf.faithfulness import explained_rows
from l2i_tf.vibi import check_fits, hard_k_hot

log = logging.getLogger(__name__)


def _timed(run, waves, batch_size: int) -> tuple[dict, float]:
    """``run`` over ``waves`` in batches after a warm-up batch: (outputs, seconds per clip)."""
    run(waves[:batch_size])
    start = time.perf_counter()
    out = batches.map_batches(run, waves, batch_size)
    return out, (time.perf_counter() - start) / len(waves)


def flint_evaluation(model, explainer, waves: np.ndarray, batch_size: int = 16) -> dict:
    """FLINT's fidelity (h(Φ) against the classifier) and seconds per clip (classifier features, Φ, h)."""
    stages = explainer.interpreter.stages

    def run(w):
        feats = stages.features_function(tf.constant(w))
        x, _ = stages.analysis(feats["waveform"])
        out = model([*feats["sequences"], x])
        return {"classifier_logits": feats["classifier_logits"], "logits": out["logits"]}

    out, seconds = _timed(run, waves, batch_size)
    return {
        "fidelity": metrics.fidelity(out["classifier_logits"], out["logits"], explainer.multilabel),
        "seconds_per_clip": seconds,
        "listenable": False,
    }


def vibi_pass(model, explainer, w, domain: str) -> dict:
    """One batch through VIBI: X, phase, the hard top-k ``mask`` [B, T, F] and ``chunks`` [B, N], the approximator's
    ``logits`` and the listenable ``interpretation`` (X ⊙ mask with the input's phase, ISTFT)."""
    stages = explainer.interpreter.stages
    prepared = stages.prepare(tf.convert_to_tensor(w, tf.float32))
    x, phase = stages.analysis(prepared)
    out = model(x, training=False)
    audio_in = audio.masked_waveform(x, phase, out["mask"], prepared.shape[1], explainer.stft_config, domain)
    return {**out, "spectrogram": x, "phase": phase, "interpretation": audio_in, "waveform": prepared}


def _random_chunks(chunks, seed) -> tf.Tensor:
    """As many chunks as ``chunks`` [B, N] selects, drawn at random among the others."""
    k = int(round(float(tf.reduce_max(tf.reduce_sum(chunks, axis=1)))))
    noise = tf.random.stateless_uniform(tf.shape(chunks), seed)
    return hard_k_hot(tf.math.log(noise) - 1e9 * chunks, k)


def _vibi_batch(model, explainer, w, b: int, domain: str, seed: int) -> dict | None:
    """Faithfulness drops (VIBI and random chunks) and mask-metric scores of one batch."""
    f = vibi_pass(model, explainer, w, domain)
    clf = explainer.classifier_logits(np.asarray(f["waveform"]))
    rows, classes = explained_rows(clf, explainer.multilabel)
    if len(rows) == 0:
        return None
    x, phase, n = f["spectrogram"], f["phase"], f["waveform"].shape[1]
    rand = model.get_layer("mask")(_random_chunks(f["chunks"], tf.constant([seed, b], tf.int64)), x)
    removed = [audio.masked_waveform(x, phase, 1.0 - m, n, explainer.stft_config, domain) for m in (f["mask"], rand)]
    after = explainer.classifier_logits(np.asarray(tf.concat([f["interpretation"], *removed], axis=0)))
    logits_in, logits_out, logits_rand = np.split(after, 3)
    masks = np.asarray(f["mask"])[rows]
    return {
        "vibi": metrics.faithfulness_drops(clf[rows], logits_out[rows], classes, explainer.multilabel),
        "random": metrics.faithfulness_drops(clf[rows], logits_rand[rows], classes, explainer.multilabel),
        "scores": mask_metrics.clip_scores(
            clf[rows], logits_in[rows], logits_out[rows], classes, masks, explainer.multilabel
        ),
        "logits": (clf, np.asarray(f["logits"])),
    }


def vibi_evaluation(model, explainer, waves, mix, counted, config) -> dict:
    """VIBI's fidelity (approximator on the top-k masked X against the classifier), faithfulness (median drop after
    removing its chunks, and as many random other chunks), mask metrics, mixture rows and seconds per clip."""
    check_fits(explainer.stft_config.num_frames(waves.shape[1]), model.time_chunks, "a test clip")
    per = {"vibi": [], "random": [], "scores": [], "clf": [], "logits": []}
    for b, part in batches.spans(len(waves), config.batch_size):
        res = _vibi_batch(model, explainer, waves[part], b, config.domain, config.seed)
        if res is None:
            continue
        for key in ("vibi", "random", "scores"):
            per[key].append(res[key])
        per["clf"].append(res["logits"][0])
        per["logits"].append(res["logits"][1])
    # the whole explanation (STFT, explainer, mask, approximator, ISTFT) runs eagerly; only the logits are kept
    _, seconds = _timed(lambda w: vibi_pass(model, explainer, w, config.domain)["logits"], waves, config.batch_size)

    def drops(key):
        values = {k: np.concatenate([d[k] for d in per[key]]) for k in ("logit", "probability")}
        return {f"{k}_drop": metrics.summarize(v) for k, v in values.items()} | {"selected_mean": float(model.k)}

    out = {
        "fidelity": metrics.fidelity(np.concatenate(per["clf"]), np.concatenate(per["logits"]), explainer.multilabel),
        "faithfulness": {"vibi": drops("vibi"), "random": drops("random")},
        "mask_metrics": mask_metrics.summarize(per["scores"]),
        "seconds_per_clip": seconds,
        "k": model.k,
        "chunks": model.num_chunks,
        "listenable": True,
    }
    if mix is not None and len(counted):
        out["mixtures"] = vibi_mixtures(model, explainer, mix, counted, config)
    return out


def vibi_mixtures(model, explainer, mix: dict, counted, config) -> dict:
    """SI-SDRi and target-energy share of VIBI's masked mixtures, on the mixtures the classifier gets right."""
    pooled = separation.Pooled()
    for _, part in batches.spans(len(counted), config.batch_size):
        idx = np.asarray(counted)[part]
        x_mix, sources = mix["mixture"][idx], mix["sources"][idx]
        f = vibi_pass(model, explainer, x_mix, "log1p")
        x, phase, n, stft = f["spectrogram"], f["phase"], x_mix.shape[1], explainer.stft_config
        base = metrics.si_sdr(x_mix, sources[:, 0])
        _, _, p_t, p_d = separation.source_powers(sources, explainer.stft_config)
        for domain in config.mixture_domains:
            est = audio.masked_waveform(x, phase, f["mask"], n, stft, domain)
            share = metrics.target_energy_share(separation.gain(f["mask"], x, domain), p_t, p_d)
            sdri = metrics.si_sdr(np.asarray(est), sources[:, 0]) - base
            pooled.add(f"VIBI (top-{model.k} chunks)", domain, None, sdri, share, np.full(len(idx), model.k))
    return {"counted_used": int(len(counted)), "rows": pooled.table()}


def baselines_evaluation(run, explainer, waves, mix, counted, config, safe_mode: bool = True) -> dict:
    """Train (or reuse) and evaluate every trained baseline of ``config.baselines``: ``{name: result}``, or
    ``{name: {"error": message}}`` for one that failed (the others still run)."""
    names = [n for n in config.baselines if n in baseline_training.TRAINED]
    if not names:
        return {}
    settings = {}
    for name in names:
        _, config_cls = baseline_training.TRAINERS[name]
        settings[name] = config_cls.from_dict(getattr(config, name))
        if config.quick:
            settings[name] = baseline_training.quick(settings[name])
    trained = baseline_training.trained_baselines(run, settings, config.retrain_baselines, safe_mode)
    out = {}
    for name in names:
        found = trained[name]
        if isinstance(found, Exception):
            out[name] = {"error": str(found)}
            continue
        model, info = found
        start = time.perf_counter()
        try:
            if name == "flint":
                result = flint_evaluation(model, explainer, waves, config.batch_size)
            else:
                result = vibi_evaluation(model, explainer, waves, mix, counted, config)
        except ValueError as e:
            log.error("%s failed: %s", name, e)
            out[name] = {"error": str(e)}
            continue
        log.info("%s evaluated (%.1f s): fidelity %s", name, time.perf_counter() - start, result["fidelity"])
        out[name] = {**result, "training": {k: v for k, v in info.items() if k not in ("history", "trials")}}
        out[name]["training"]["trials"] = [
            {k: v for k, v in t.items() if k != "history"} for t in info.get("trials", [])
        ]
    return out
