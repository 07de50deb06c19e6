"""Training the FLINT and VIBI baselines of a run: the run's classifier, tapped layers, splits and training examples
(the classifier's features cached once, as L2I's training caches them), early stopping on the validation split;
saved as ``.keras`` models under ``<run>/baselines/`` and reused unless retraining is asked for.

``<run>/baselines/``::

    flint.keras, flint.json    the trained model; its settings, validation scores, fit seconds and history
    vibi.keras, vibi.json
    cache/                     the classifier's features while training (removed at the end)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import files, runs, training_data, training_tables
from l2i_tf.flint import Flint, check_sequences
from l2i_tf.settings import Settings
from l2i_tf.vibi import Vibi, check_fits

log = logging.getLogger(__name__)

TRAINED = ("flint", "vibi")
"""The baselines that are trained (SLIME fits per clip, at evaluation)."""
FOLDER = runs.BASELINES


@dataclasses.dataclass(frozen=True)
class FlintConfig(Settings):
    """FLINT's settings. ``weight_grid``: the (λ_rec, λ_spa, λ_ent) candidates, each fitted with early stopping;
    the one with the best validation fidelity is kept. J = the run's K (parity with L2I) unless ``attributes``."""

    attributes: int | None = None
    hidden: int = 128
    weight_grid: tuple[tuple[float, float, float], ...] = ((1.0, 0.05, 0.05), (3.0, 0.05, 0.2))
    epochs: int = 20
    patience: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class VibiConfig(Settings):
    """VIBI's settings (see :class:`~l2i_tf.vibi.Vibi`)."""

    k: int = 8
    time_chunks: int = 10
    freq_chunks: int = 8
    bands: int = 32
    temperature: float = 0.5
    beta: float = 0.1
    epochs: int = 20
    patience: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0


def quick(config):
    """``config`` shrunk for tests and smoke runs: 2 epochs (and one weight candidate for FLINT)."""
    changes = {"epochs": min(config.epochs, 2)}
    if isinstance(config, FlintConfig):
        changes["weight_grid"] = config.weight_grid[:1]
    return dataclasses.replace(config, **changes)


def monitor(multilabel: bool) -> str:
    return "val_fidelity_micro_auprc" if multilabel else "val_fidelity_top1"


def feature_shards(run: runs.Run, cache: Path) -> list:
    """The run's (train, validation, test) examples with the classifier's features, in shards under ``cache``
    (:func:`l2i_tf.training_data.build_features`, the stream L2I trained on)."""
    interpreter = run.interpreter
    _, parts, _ = training_tables.tables(run.config)
    run_features = interpreter.stages.features_function
    shards, _ = training_data.build_features(
        cache,
        run.config,
        parts,
        interpreter.stft_config.sample_rate,
        interpreter.clip_samples,
        lambda w: run_features(tf.constant(w)),
        interpreter.stft_config,
    )
    return shards


def compile_for_fit(model: keras.Model, learning_rate: float) -> None:
    """Compile ``model`` with Adam and build the optimizer's variables now: built inside the first training step
    instead, they make TensorFlow trace that step twice (~0.5 s a fit)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    model.optimizer.build(model.trainable_variables)


def fit(model, shards, config, multilabel: bool) -> dict:
    """Fit ``model`` on the training shards with early stopping on the validation ones (best weights restored)."""
    keras.utils.set_random_seed(config.seed)
    compile_for_fit(model, config.learning_rate)
    train_ds, steps = shards[0].epochs_dataset(config.batch_size, config.seed, 0, config.epochs)
    stop = keras.callbacks.EarlyStopping(
        monitor=monitor(multilabel), mode="max", patience=config.patience, restore_best_weights=True
    )
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        steps_per_epoch=steps,
        validation_data=shards[1].dataset(64),
        epochs=config.epochs,
        shuffle=False,
        callbacks=[stop],
        verbose=2 if log.isEnabledFor(logging.INFO) else 0,
    ).history
    scores = history[monitor(multilabel)]
    return {
        "fit_seconds": time.perf_counter() - start,
        "epochs_run": len(scores),
        "validation_fidelity": float(np.max(scores)),
        "history": {key: [float(v) for v in values] for key, values in history.items()},
    }


def train_flint(run: runs.Run, shards, config: FlintConfig) -> tuple[Flint, dict]:
    """FLINT fitted once per weight candidate; the best on validation kept (its ``fit_seconds`` sum them all)."""
    interpreter = run.interpreter
    widths = [shards[0].shapes[f"sequence_{i}"] for i in range(shards[0].sequences)]
    check_sequences([(None, *w) for w in widths], interpreter.layer_names)
    best, trials = None, []
    for weights in config.weight_grid:
        model = Flint(
            [w[-1] for w in widths],
            interpreter.num_bins,
            config.attributes or interpreter.k,
            interpreter.num_classes,
            interpreter.stft,
            interpreter.multilabel,
            weights,
            config.hidden,
        )
        result = fit(model, shards, config, interpreter.multilabel)
        trials.append({"loss_weights": list(weights), **result})
        log.info("FLINT %s: validation fidelity %.3f", weights, result["validation_fidelity"])
        if best is None or result["validation_fidelity"] > best[1]["validation_fidelity"]:
            best = (model, result)
    info = {
        "config": config.to_dict(),
        "loss_weights": list(best[0].loss_weights),
        "validation_fidelity": best[1]["validation_fidelity"],
        "epochs_run": best[1]["epochs_run"],
        "fit_seconds": float(sum(t["fit_seconds"] for t in trials)),
        "trials": trials,
    }
    return best[0], info


def train_vibi(run: runs.Run, shards, config: VibiConfig) -> tuple[Vibi, dict]:
    interpreter = run.interpreter
    frames = shards[0].shapes["spectrogram"][0]  # the cache holds X [frames, F]; the clips' length for the message
    samples = interpreter.clip_samples or int(run.config.clip_seconds * interpreter.stft_config.sample_rate)
    check_fits(frames, config.time_chunks, f"a {samples}-sample training clip")
    model = Vibi(
        interpreter.num_bins,
        interpreter.num_classes,
        interpreter.stft,
        interpreter.multilabel,
        config.k,
        config.time_chunks,
        config.freq_chunks,
        config.bands,
        config.temperature,
        config.beta,
    )
    result = fit(model, shards, config, interpreter.multilabel)
    return model, {"config": config.to_dict(), **result}


TRAINERS = {"flint": (train_flint, FlintConfig), "vibi": (train_vibi, VibiConfig)}


def saved(run_dir: Path, name: str) -> tuple[Path, Path]:
    folder = Path(run_dir) / FOLDER
    return folder / f"{name}.keras", folder / f"{name}.json"


def load(run_dir: Path, name: str, safe_mode: bool = True):
    """A saved baseline and its info, or None if it was never trained."""
    model_path, info_path = saved(run_dir, name)
    if not (model_path.is_file() and info_path.is_file()):
        return None
    return runs.load_keras(model_path, safe_mode, compile=False), json.loads(info_path.read_text())


def trained_baselines(run: runs.Run, settings: dict, retrain: bool = False, safe_mode: bool = True) -> dict:
    """``{name: (model, info) or BaselineError}`` for every name of ``settings`` (``{name: config}``): loaded from
    ``<run>/baselines/`` or trained (``retrain``: always) and saved. A baseline that fails (e.g. does not fit the
    classifier) is returned as its exception; the others still train. The feature cache is built once, if needed.
    """
    out, todo = {}, []
    for name in settings:
        found = None if retrain else load(run.folder, name, safe_mode)
        if found is not None:
            log.info("%s: reusing %s", name, saved(run.folder, name)[0])
            out[name] = found
        else:
            todo.append(name)
    if not todo:
        return out
    cache = Path(run.folder) / FOLDER / "cache"
    start = time.perf_counter()
    try:
        shards = feature_shards(run, cache)
        features_seconds = time.perf_counter() - start
        for name in todo:
            trainer, _ = TRAINERS[name]
            try:
                model, info = trainer(run, shards, settings[name])
            except ValueError as e:  # e.g. BaselineFitError: the others still run
                log.error("%s failed: %s", name, e)
                out[name] = e
                continue
            info["features_seconds"] = features_seconds
            model_path, info_path = saved(run.folder, name)
            with files.atomic_file(model_path) as tmp:
                model.save(tmp)
            files.write_json(info_path, info)
            out[name] = (model, info)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out
