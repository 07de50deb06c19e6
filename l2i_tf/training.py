"""The `l2i-tf train` job: dictionary -> interpreter -> test-fold fidelity, written to a run folder."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import (
    audio,
    checkpoints,
    feature_cache,
    files,
    metrics,
    mixtures,
    nmf,
    runs,
    training_data,
    training_tables,
)
from l2i_tf import classifier as classifier_lib
from l2i_tf.classifier_contract import check_classifier, check_input_length, tap_orders
from l2i_tf.classifier_logits import with_logits
from l2i_tf.dictionary import Dictionary, learn_from_table
from l2i_tf.interpreter import Interpreter
from l2i_tf.progress import EpochLines, Progress, per_split, resume_line, teller
from l2i_tf.runs import TrainConfig

log = logging.getLogger(__name__)

epoch_order = feature_cache.epoch_order  # the training order of every split, shards or not (see feature_cache)

# (alpha, temperature) by task, chosen on the validation fold (fold 4) of ESC-10, never the test fold.
# Multi-class, validation top-1 fidelity: α=10,T=1: 91.25 %; α=3: 92.5 %; T=3: 92.5 %; α=3,T=3: 95.0 %.
# Multi-label, validation macro-AUPRC: 2400 mixtures, 40 epochs, α=10,T=1: 0.933; 4800 mixtures, 20 epochs (the
# same steps): α=10: 0.941, α=3: 0.949 (test 0.929).
DEFAULT_LOSS_WEIGHTS = {False: (3.0, 3.0), True: (3.0, 1.0)}
# Epochs by task: multi-label epochs hold 4800 mixtures (runs.TrainConfig.mixtures), so 20 of them are as many
# steps as 40 of 2400.
DEFAULT_EPOCHS = {False: 40, True: 20}
# (source mixtures per training clip, source_weight) by task (l2i_tf.source_mixtures), the weight chosen on ESC-10's
# validation fold (fold 4); multi-label: none (its training data are mixtures already). 2 a clip is ESC-10's 480 for
# its 240 training clips (was 960: three seeds each, the validation fidelity averaged over epochs 5-40 is the same,
# 90.7 %, so are fold 5's, 89.4 %, and the mixtures' SI-SDRi, median 2.10 against 1.97 dB, in 0.79x the time). A count
# per clip keeps the term's share of the examples at any data-set size: a fixed 480 at 12 000 training clips is
# 0.04 a clip, and ESC-10 trained at that share (10 mixtures) lost fold-5 fidelity and SI-SDRi (README, "Interpretations
# of mixtures").
DEFAULT_SOURCES = {False: (2.0, 5.0), True: (0.0, 0.0)}
# Horizon, epochs, of the moving average of Ψ/Θ's weights (l2i_tf.checkpoints.AveragedWeights) by task. ESC-10,
# fold 5's fidelity after each of 40 epochs, seeds 0-2, mean over epochs 10-40: 88.5 % without, 89.6 % at ~2.2
# epochs, 90.0 % at ~4.4, its swing from epoch to epoch about halved (benchmarks/RESULTS.md, "Where the time of a
# training step goes"). Multi-label (one run): test macro-/micro-AUPRC 0.937 / 0.944 against 0.929 / 0.925 without.
DEFAULT_EMA_EPOCHS = {False: 2.0, True: 2.0}


class ClassNamesError(ValueError):
    """Class names whose count (``count``) differs from the classifier's outputs (``num_classes``); ``source`` is
    ``"class_names"`` (the setting) or the sidecar file they came from."""

    def __init__(self, count: int, num_classes: int, source: str):
        where = "the class_names setting" if source == "class_names" else f"the sidecar {source}"
        super().__init__(f"{count} class names from {where} but the classifier outputs {num_classes} classes")
        self.count, self.num_classes, self.source = count, num_classes, source


def resolve_class_names(model: keras.Model, config: TrainConfig, info) -> tuple[str, ...]:
    num = int(model.outputs[0].shape[-1])
    names = config.class_names or (info.class_names if info else None)
    if names is None:
        return tuple(f"class_{i}" for i in range(num))
    if len(names) != num:
        source = "class_names" if config.class_names else str(classifier_lib.sidecar_path(config.classifier))
        raise ClassNamesError(len(names), num, source)
    return tuple(names)


class SampleRateMismatchError(ValueError):
    """A sample rate (``given``) that contradicts the classifier's sidecar (``sidecar``, which says ``expected``).
    ``source`` is ``"sample_rate"`` (the setting) or ``"stft"`` (a run's recorded STFT configuration)."""

    def __init__(self, given: int, expected: int, sidecar: Path, source: str):
        where = "the sample_rate setting" if source == "sample_rate" else "the run's STFT configuration"
        super().__init__(
            f"{given} Hz from {where} but the classifier expects {expected} Hz (its sidecar {sidecar}); leave the "
            "rate unset to take the sidecar's"
        )
        self.given, self.expected, self.sidecar, self.source = given, expected, sidecar, source


STFT_REQUEST = ("sample_rate", "frame_length", "frame_step", "fft_length")
"""The TrainConfig fields that ask for an STFT (see :func:`resolve_stft`)."""


def resolve_stft(config: TrainConfig, info) -> audio.STFTConfig:
    """The run's STFT: ``config.stft`` when set (a resumed run), else :meth:`~l2i_tf.audio.STFTConfig.for_rate` at
    ``config.sample_rate``, or the rate of the classifier's sidecar ``info``, or 16 kHz, with the sizes given.

    A rate that contradicts the sidecar is a :class:`SampleRateMismatchError`; a rate or sizes that cannot be used
    an :class:`~l2i_tf.audio.AudioSettingError`.
    """
    sidecar = classifier_lib.sidecar_path(config.classifier)
    rate = config.sample_rate
    if rate is not None and info and audio.check_positive_int(rate) != info.sample_rate:
        raise SampleRateMismatchError(rate, info.sample_rate, sidecar, "sample_rate")
    if config.stft is not None:
        stft = audio.STFTConfig.from_dict(config.stft)
        asked = {name: getattr(config, name) for name in STFT_REQUEST if getattr(config, name) is not None}
        conflicts = {
            name: (value, getattr(stft, name)) for name, value in asked.items() if value != getattr(stft, name)
        }
        if conflicts:
            raise ValueError(f"STFT settings contradict the given stft configuration (setting vs stft): {conflicts}")
    else:
        rate = rate if rate is not None else (info.sample_rate if info else audio.DEFAULT_SAMPLE_RATE)
        stft = audio.STFTConfig.for_rate(rate, config.frame_length, config.frame_step, config.fft_length)
    if info and stft.sample_rate != info.sample_rate:
        raise SampleRateMismatchError(stft.sample_rate, info.sample_rate, sidecar, "stft")
    return stft


def resume_config(recorded: TrainConfig, given: TrainConfig) -> TrainConfig:
    """A resumed run's settings: the recorded ones with the given ``epochs``. STFT settings given that differ from
    the recorded STFT are resolved afresh (and then refused by the run's own dictionary, naming both)."""
    config = dataclasses.replace(recorded, epochs=recorded.epochs if given.epochs is None else given.epochs)
    asked = {name: getattr(given, name) for name in STFT_REQUEST if getattr(given, name) is not None}
    if any(recorded.stft is None or recorded.stft.get(name) != value for name, value in asked.items()):
        config = dataclasses.replace(config, **asked, stft=None)
    return config


def resolve(config: TrainConfig, model_f: keras.Model) -> tuple[TrainConfig, audio.STFTConfig]:
    """The settings the run records and its STFT: class names, task, loss weights, tapped layers and STFT resolved
    from the classifier and its sidecar."""
    info = classifier_lib.load_info(config.classifier)
    stft = resolve_stft(config, info)
    multilabel = config.multilabel or bool(info and info.multilabel)
    alpha, temperature = DEFAULT_LOSS_WEIGHTS[multilabel]
    weight = 0.0 if config.source_mixtures == 0 else DEFAULT_SOURCES[multilabel][1]  # no mixtures: the paper's loss
    config = dataclasses.replace(
        config,
        source_weight=weight if config.source_weight is None else config.source_weight,
        ema_epochs=DEFAULT_EMA_EPOCHS[multilabel] if config.ema_epochs is None else config.ema_epochs,
        multilabel=multilabel,
        class_names=resolve_class_names(model_f, config, info),
        alpha=alpha if config.alpha is None else config.alpha,
        temperature=temperature if config.temperature is None else config.temperature,
        epochs=DEFAULT_EPOCHS[multilabel] if config.epochs is None else config.epochs,
        layers=tuple(config.layers or (info.layers if info else ())),
        stft=stft.to_dict(),
    )
    check_sources(config, multilabel)
    if not config.ema_epochs >= 0:
        raise ValueError(f"ema_epochs must be >= 0 (0: no moving average), got {config.ema_epochs!r}")
    return config, stft


def check_sources(config: TrainConfig, multilabel: bool) -> None:
    """The source-consistency settings must fit: counts and weights >= 0, a weight needs mixtures to learn from,
    and both are for single-label runs (multi-label training data are mixtures already). An unset count is the
    task's default, resolved per training clip once the data are split (:func:`with_source_mixtures`)."""
    count = config.source_mixtures
    if count is not None and not (isinstance(count, int) and count >= 0):
        raise ValueError(f"source_mixtures must be an integer >= 0, got {count!r}")
    if not config.source_weight >= 0:
        raise ValueError(f"source_weight must be >= 0, got {config.source_weight!r}")
    if config.source_weight and count == 0:
        raise ValueError(f"source_weight={config.source_weight} needs source_mixtures > 0 (mixtures with sources)")
    if multilabel and (count or config.source_weight):
        raise ValueError(
            f"source_mixtures={count}, source_weight={config.source_weight}: the source-consistency "
            "term is for single-label classifiers; set both to 0 for a multi-label run"
        )


def with_source_mixtures(config: TrainConfig, train_clips: int) -> TrainConfig:
    """``config`` with its source-mixture count resolved: when unset, the task's count per training clip
    (:data:`DEFAULT_SOURCES`) times the training split's ``train_clips``, so the term keeps its share of the
    examples at any data-set size (ESC-10's 240 training clips: 480)."""
    if config.source_mixtures is not None:
        return config
    return dataclasses.replace(config, source_mixtures=round(DEFAULT_SOURCES[config.multilabel][0] * train_clips))


def fixed_length(model_f: keras.Model) -> int | None:
    """The classifier's fixed input length, samples (``inputs[0].shape[1]``), or None when it takes any length."""
    length = model_f.inputs[0].shape[1]
    return None if length is None else int(length)


def existing_dictionary(out: Path, config: TrainConfig, stft: audio.STFTConfig) -> Dictionary | None:
    """``config.dictionary`` or the run folder's own (resuming), checked against the run's STFT and K (a
    :class:`~l2i_tf.dictionary.DictionaryMismatchError` names both configurations); None if there is neither."""
    if config.dictionary:
        dictionary = Dictionary.load(config.dictionary)
    elif (out / runs.DICTIONARY).exists():
        dictionary = Dictionary.load(out / runs.DICTIONARY)
    else:
        return None
    dictionary.check_compatible(stft, config.k)
    return dictionary


def learn(out: Path, config: TrainConfig, table, stft: audio.STFTConfig) -> Dictionary:
    """The run's dictionary learnt on the training folds, saved in the run folder."""
    nmf_kwargs = {"k": config.k, "seed": config.seed}
    if config.sparsity is not None:
        nmf_kwargs["sparsity"] = config.sparsity
    if config.nmf_iterations is not None:
        nmf_kwargs["iterations"] = config.nmf_iterations
    dictionary = learn_from_table(table.with_folds(config.train_folds), stft, nmf.NMFConfig(**nmf_kwargs))
    dictionary.save(out / runs.DICTIONARY)
    return dictionary


def new_interpreter(model_f, config: TrainConfig, dictionary: Dictionary, stft: audio.STFTConfig):
    """A compiled, untrained interpreter of ``model_f`` as ``config`` describes it."""
    names, orders = tap_orders(model_f, config.layers)
    interpreter = Interpreter(
        model_f,
        names,
        orders,
        dictionary.k,
        dictionary.num_bins,
        stft.to_dict(),
        multilabel=config.multilabel,
        alpha=config.alpha,
        beta=config.beta,
        temperature=config.temperature,
        psi={"hidden": config.hidden, "dropout": config.dropout, "freq_reduce": config.freq_reduce},
        theta={"pooling": config.pooling},
        dictionary=dictionary.W,
        precision=config.precision,
        source_weight=config.source_weight,
    )
    interpreter.compile(optimizer=optimizer(config))
    # its variables now: built in the first training step instead, they make TensorFlow trace that step twice (~2 s)
    interpreter.optimizer.build(interpreter.head_variables)
    return interpreter


def optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam at the run's learning rate; with ``config.ema_epochs`` > 0 it also keeps the moving average of the
    weights it trains (its momentum is set from the epoch's steps by :func:`ema_momentum`)."""
    return keras.optimizers.Adam(config.learning_rate, use_ema=bool(config.ema_epochs))


def ema_momentum(epochs: float, steps_per_epoch: int) -> float:
    """The per-step momentum of a moving average whose horizon (1 / (1 − momentum) steps) is ``epochs`` epochs of
    ``steps_per_epoch`` steps; 0 (the average is the weights) when that is at most one step."""
    return max(0.0, 1.0 - 1.0 / (epochs * steps_per_epoch))


def _fit(interpreter, shards: list, config: TrainConfig, out: Path, resumed, callbacks, seconds, say) -> list[dict]:
    """Fit Ψ/Θ on the training split's feature shards with early stopping on the validation split's, telling
    ``say`` a line per epoch; returns the history of every epoch done (including those before a resume).
    ``seconds``: the run's timings until now, for the checkpoints (:class:`~l2i_tf.checkpoints.Checkpoint`)."""
    monitor = "val_fidelity_micro_auprc" if config.multilabel else "val_fidelity_top1"
    ranking = [checkpoints.FidelityThenSource(monitor)] if config.source_weight else []
    rising = monitor if config.source_weight else None  # patience counts from the fidelity's last rise
    monitor = "val_fidelity_then_source" if config.source_weight else monitor
    # first: every callback after it, and validation, see the averaged weights
    averaged = [checkpoints.AveragedWeights(resumed=resumed is not None)] if config.ema_epochs else []
    first_epoch = resumed.epochs_done if resumed else 0
    history = list(resumed.history) if resumed else []
    early_stopping = checkpoints.ResumableEarlyStopping(
        resumed.early_stopping if resumed else None,
        resumed.best_weights if resumed else None,
        patience_monitor=rising,
        monitor=monitor,
        mode="max",
        patience=config.patience,
        restore_best_weights=True,
        verbose=0,
    )
    all_callbacks = [
        *averaged,
        *ranking,  # before early stopping: it adds the value early stopping monitors
        early_stopping,
        keras.callbacks.TensorBoard(log_dir=str(out / runs.LOGS), write_graph=False),
        checkpoints.Checkpoint(out / runs.CHECKPOINTS, early_stopping, history, seconds),
        EpochLines(say, config.multilabel, early_stopping),  # after the epoch's verdict and checkpoint
        *callbacks,
    ]
    if first_epoch < config.epochs:
        train_ds, steps = shards[0].epochs_dataset(config.batch_size, config.seed, first_epoch, config.epochs)
        if config.ema_epochs:  # read when the training step is traced, below
            interpreter.optimizer.ema_momentum = ema_momentum(config.ema_epochs, steps)
        interpreter.fit(
            feature_cache.with_spectrograms(train_ds, interpreter.stft_config),
            steps_per_epoch=steps,
            validation_data=feature_cache.with_spectrograms(shards[1].dataset(64), interpreter.stft_config),
            epochs=config.epochs,
            initial_epoch=first_epoch,
            shuffle=False,  # the dataset is already in feature_cache's (seed, epoch) order
            callbacks=all_callbacks,
            verbose=2 if log.isEnabledFor(logging.INFO) else 0,
        )
    elif resumed and resumed.best_weights is not None:  # nothing left to train: end on the best weights
        interpreter.set_weights(resumed.best_weights)
    return history


def train(
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    resume=False,
    overwrite=False,
    strategy=None,
    callbacks=(),
    safe_mode: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Run the whole job and return the metrics (also in ``out/metrics.json``).

    A run killed at any point after its first epoch continues with ``resume=True`` and ends with the same weights
    and metrics as an uninterrupted run: each epoch's example order depends on (seed, epoch) only, and the
    optimizer, dropout RNG and early-stopping state are checkpointed after every epoch; one stopped before its first
    (killed, or by the disk check) resumes from the start of training, with its dictionary and complete features.
    The metrics are the run's: ``epochs_run`` and the timings summed over its sessions (an earlier one's up to its
    last checkpoint), this session's own under ``last_session``.

    The run folder is locked for the job (:func:`l2i_tf.runs.locked`): a second job on it is refused.

    Args:
        callbacks: extra Keras callbacks for ``fit``.
        safe_mode: load the classifier (and an earlier version's ``.keras`` checkpoint) with Keras' safe mode.
        progress: called with each progress line (the data, the dictionary, the features, where a resumed run
            goes on, each epoch); None: the lines go to the log at INFO.
    """
    with runs.locked(Path(out), create=not resume):
        return _train(out, config, resume, overwrite, strategy, callbacks, safe_mode, teller(progress))


def _train(out, config: TrainConfig, resume, overwrite, strategy, callbacks, safe_mode: bool, say) -> dict:
    start = time.perf_counter()
    out = runs.prepare(out, resume, overwrite)
    if resume:
        config = resume_config(runs.read_config(out), config)
    keras.utils.set_random_seed(config.seed)
    model_f, note = with_logits(runs.load_classifier(config.classifier, config.custom_objects, safe_mode))
    if note:
        log.warning("%s", note)
    config, stft = resolve(config, model_f)
    check_classifier(model_f)  # a classifier that is not waveform -> logits stops the job before any work
    tap_orders(model_f, config.layers)  # and so does a wrong layer name
    window = fixed_length(model_f)
    check_input_length(window, stft)  # and so does a fixed input shorter than one STFT frame
    dictionary = existing_dictionary(out, config, stft)  # one that does not fit stops it too
    table, parts, skipped = training_tables.tables(config)
    config = with_source_mixtures(config, len(parts[0]))
    runs.write_config(out, config, stft)
    if not (resume and (out / runs.FEATURE_CACHE / training_data.FEATURES).is_file()):
        remove_feature_cache(out)  # a killed run's complete features are reused by a resume; partial ones redone

    if skipped:
        log.warning("skipped %d unreadable clip(s): %s", len(skipped), "; ".join(skipped))
    timings = {"data_seconds": time.perf_counter() - start}
    say(f"data: {per_split(map(len, parts), 'clips')} at {stft.sample_rate} Hz")
    t0 = time.perf_counter()
    if dictionary is None:
        dictionary = learn(out, config, table, stft)
        say(
            f"dictionary: K={dictionary.k} learnt on {len(parts[0])} training clips in {time.perf_counter() - t0:.1f} s"
        )
    else:
        say(f"dictionary: K={dictionary.k} from {dictionary.provenance['folder']}")
    timings["dictionary_seconds"] = time.perf_counter() - t0

    with (strategy or tf.distribute.get_strategy()).scope():
        interpreter, resumed = new_interpreter(model_f, config, dictionary, stft), None
        if resume and runs.has_checkpoint(out):  # the new interpreter, its variables set from the checkpoint
            resumed = checkpoints.resume(out / runs.CHECKPOINTS, interpreter, safe_mode)
            interpreter = resumed.interpreter
    if resume:
        say(resume_line(resumed.epochs_done if resumed else 0, config.epochs))

    t0 = time.perf_counter()
    run = interpreter.stages.features_function
    shards, window_counts = training_data.build_features(
        out / runs.FEATURE_CACHE, config, parts, stft.sample_rate, window, lambda w: run(tf.constant(w)), stft
    )
    timings["features_seconds"] = time.perf_counter() - t0
    say(f"features: {per_split(map(len, shards), 'examples')} in {timings['features_seconds']:.1f} s")

    t0 = time.perf_counter()
    earlier = resumed.seconds if resumed else {}  # the sessions' before this one, up to the last checkpoint

    def seconds() -> dict:
        now = time.perf_counter()
        return checkpoints.run_seconds(earlier, {**timings, "train_seconds": now - t0, "total_seconds": now - start})

    history = _fit(interpreter, shards, config, out, resumed, callbacks, seconds, say)
    timings["train_seconds"] = time.perf_counter() - t0

    results = {"class_names": list(config.class_names), "multilabel": config.multilabel, "k": dictionary.k}
    results["skipped_clips"] = {"count": len(skipped), "errors": skipped}
    results["examples"] = dict(zip(mixtures.SPLIT_NAMES, map(len, shards), strict=True))
    if window_counts:  # a fixed-length classifier: every split was cut into windows
        results["windows"] = window_counts
    results.update(split_fidelity(interpreter, shards, config.multilabel))
    results["epochs_run"] = results["epochs_done"] = len(history)  # the run's, over its sessions
    results["history"] = checkpoints.history_table(history)
    timings["total_seconds"] = time.perf_counter() - start
    results.update(checkpoints.run_seconds(earlier, timings))
    results["last_session"] = {"epochs_run": len(history) - (resumed.epochs_done if resumed else 0), **timings}
    with files.atomic_file(out / runs.INTERPRETER) as tmp:
        interpreter.save(tmp)
    files.write_json(out / runs.METRICS, results)
    remove_feature_cache(out)  # kept only while the run may be resumed
    return results


def remove_feature_cache(out: Path) -> None:
    """Remove the run's feature shards (and ``cache/`` if that leaves it empty)."""
    cache = out / runs.FEATURE_CACHE
    shutil.rmtree(cache, ignore_errors=True)
    if cache.parent.is_dir() and not any(cache.parent.iterdir()):
        cache.parent.rmdir()


def split_fidelity(interpreter: Interpreter, shards: list, multilabel: bool) -> dict:
    """Θ's fidelity to the classifier (:func:`l2i_tf.metrics.fidelity`) on the validation and test splits' shards."""
    logits = heads_logits(interpreter)
    splits = zip(mixtures.SPLIT_NAMES[1:], shards[1:], strict=True)
    return {name: metrics.fidelity(*shard_logits(interpreter, split, 64, logits), multilabel) for name, split in splits}


def shard_logits(interpreter: Interpreter, shards: feature_cache.Shards, batch_size: int = 64, logits=None):
    """(the classifier's logits, Θ's logits) for every example of a split's feature shards, in stored order.
    ``logits``: :func:`heads_logits` of ``interpreter`` (made here if None; pass one to share its tracing)."""
    logits = logits or heads_logits(interpreter)
    batches = shards.dataset(batch_size)
    logits.get_concrete_function(batches.element_spec)  # one trace for every batch size (the last one is short)
    pairs = [(batch["classifier_logits"].numpy(), logits(batch).numpy()) for batch in batches]
    return tuple(np.concatenate(column) for column in zip(*pairs, strict=True))


def heads_logits(interpreter: Interpreter):
    """Θ's logits of a cached batch as one traced function (any batch size): eagerly, a batch costs twice as much."""
    return tf.function(lambda batch: interpreter.forward(batch)[0]["logits"], reduce_retracing=True, autograph=False)
