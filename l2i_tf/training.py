"""The `l2i-tf train` job: dictionary -> interpreter -> test-fold fidelity, written to a run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, data, metrics, mixtures, nmf, tables
from l2i_tf import classifier as classifier_lib
from l2i_tf.interpreter import Interpreter, frames_for, tap_orders

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "interpreter.keras", "metrics.json")


# (alpha, temperature) by task, chosen on the validation fold (fold 4) of ESC-10, never the test fold.
# Multi-class, validation top-1 fidelity: α=10,T=1: 91.25 %; α=3: 92.5 %; T=3: 92.5 %; α=3,T=3: 95.0 %.
# Multi-label: α=10,T=1 (validation macro-AUPRC 0.925 with 2400 mixtures); the others were not measured.
DEFAULT_LOSS_WEIGHTS = {False: (3.0, 3.0), True: (10.0, 1.0)}


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, or has nothing to resume)."""


class UnsafeModelError(ValueError):
    """A ``.keras`` file that Keras' safe mode refuses to load (it holds Python code, e.g. a ``Lambda`` layer)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything `l2i-tf train` needs; saved as ``config.json`` in the run folder."""

    classifier: str = str(classifier_lib.DEMO_MULTICLASS)
    layers: tuple[str, ...] = ()
    multilabel: bool = False
    data: str | None = None
    layout: str = "esc10"
    train_folds: tuple[int, ...] = (1, 2, 3)
    val_folds: tuple[int, ...] = (4,)
    test_folds: tuple[int, ...] = (5,)
    clip_seconds: float = 5.0
    k: int = 100
    sparsity: float | None = None
    nmf_iterations: int | None = None
    dictionary: str | None = None
    # None: the default for the task (DEFAULT_LOSS_WEIGHTS), recorded resolved in config.json.
    alpha: float | None = None
    beta: float = 0.8
    temperature: float | None = None
    pooling: str = "attention"
    hidden: int = 128
    dropout: float = 0.1
    freq_reduce: str = "mean"
    augment_copies: int = 0
    mix_inputs: int = 0
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 15
    # Multi-label training mixtures (and a quarter as many for validation and test). Measured on
    # ESC-10: 960 -> validation micro-AUPRC 0.77 (overfits); 2400 -> 0.94.
    mixtures: int = 2400
    mixture_snr_db: tuple[float, float] = (-5.0, 5.0)
    seed: int = 0
    stft: dict = dataclasses.field(default_factory=lambda: audio.STFTConfig().to_dict())
    class_names: tuple[str, ...] | None = None
    custom_objects: str | None = None
    on_error: str = "raise"

    @property
    def splits(self) -> tables.Splits:
        return tables.Splits(self.train_folds, self.val_folds, self.test_folds)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        out = {}
        for key, value in d.items():
            out[key] = tuple(value) if isinstance(value, list) else value
        return cls(**out)


def environment() -> dict:
    """Package versions and the command line, recorded in every run folder."""
    versions = {}
    for name in ("l2i_tf", "tensorflow", "keras", "tensorflow-io", "numpy", "scikit-learn", "soundfile"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "python": platform.python_version(), "command": sys.argv}


def _write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that already holds a run unless resuming or overwriting."""
    holds_run = out.exists() and any((out / f).exists() for f in (*RUN_FILES, "checkpoints"))
    if resume:
        if not (out / "checkpoints" / "state.json").exists() or not (out / "config.json").exists():
            raise RunFolderError(f"{str(out)!r} has no checkpoint to resume (checkpoints/state.json)")
        return
    if holds_run and not overwrite:
        raise RunFolderError(f"{str(out)!r} already holds a run; pass --resume to continue it or --overwrite")
    if holds_run and overwrite:
        for name in (*RUN_FILES, "checkpoints", "logs", "dictionary", "stft.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def load_keras(path: str | Path, safe_mode: bool = True, **kwargs) -> keras.Model:
    """``keras.saving.load_model`` with Keras' safe mode on by default.

    Safe mode refuses files that would run stored Python code when loaded (a ``Lambda`` layer holding a
    Python function); that refusal becomes an :class:`UnsafeModelError` naming the file and ``--unsafe-load``.
    """
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode, **kwargs)
    except (ValueError, TypeError) as e:
        if safe_mode and "safe_mode" in str(e):
            raise UnsafeModelError(
                f"{str(path)!r} holds Python code (a Lambda layer) that Keras' safe mode refuses to load; "
                "if you trust this file, pass --unsafe-load (safe_mode=False) to opt in"
            ) from None
        raise


def load_classifier(path: str, custom_objects_module: str | None = None, safe_mode: bool = True) -> keras.Model:
    """Load a user's ``.keras`` classifier (importing ``custom_objects_module`` first, which registers their layers)."""
    if custom_objects_module:
        import importlib

        importlib.import_module(custom_objects_module)
    if not Path(path).is_file():
        raise FileNotFoundError(f"classifier file {path!r} does not exist")
    return load_keras(path, safe_mode, compile=False)


def resolve_class_names(model: keras.Model, config: TrainConfig, info) -> tuple[str, ...]:
    num = int(model.outputs[0].shape[-1])
    names = config.class_names or (info.class_names if info else None)
    if names is None:
        return tuple(f"class_{i}" for i in range(num))
    if len(names) != num:
        sidecar = classifier_lib.sidecar_path(config.classifier)
        source = "--class-names" if config.class_names else f"the sidecar {sidecar}"
        raise ValueError(f"{len(names)} class names from {source} but the classifier outputs {num} classes")
    return tuple(names)


def _datasets(config: TrainConfig, sample_rate: int, num_classes: int):
    """(train, val, test) waveforms as numpy (mixtures for multi-label), the data table and the skipped clips.

    A manifest's labels must be classes of the classifier. With ``config.on_error == "skip"`` unreadable clips
    are left out and listed (``metrics.json`` counts them); otherwise the first one stops the job, named.
    """
    if config.data is None:
        table = tables.esc10_table()
    else:
        names = config.class_names if config.layout == "manifest" else None
        table = tables.load_table(config.data, config.layout, class_names=names)
    table, _, skipped = data.probe_table(table, on_error=config.on_error)
    clip = int(config.clip_seconds * sample_rate)
    parts = [p for p in tables.split(table, config.splits)]
    arrays = [data.load_waveforms(p, sample_rate, clip) for p in parts]
    if config.multilabel and not table.multilabel:
        counts = (config.mixtures, config.mixtures // 4, config.mixtures // 4)
        mixed = []
        for i, ((waves, labels), count) in enumerate(zip(arrays, counts, strict=True)):
            mix = mixtures.make_mixtures(
                waves,
                labels,
                num_classes,
                count,
                snr_db=config.mixture_snr_db,
                seed=config.seed + i,
                keep_sources=False,
            )
            mixed.append((mix["mixture"], mix["labels"]))
        arrays = mixed
    return table, arrays, skipped


def _extra_inputs(waves: np.ndarray, config: TrainConfig) -> np.ndarray:
    """More inputs for the interpreter from the training clips alone (it learns f's outputs, not labels).

    ``augment_copies`` copies of every clip, circularly shifted by a random offset with a
    random gain within ±6 dB, and ``mix_inputs`` mixtures of two random training clips
    (the first at weight 0.5–1). Seeded by ``config.seed``.
    """
    rng = np.random.default_rng(config.seed + 7919)
    n, length = waves.shape
    out = []
    for _ in range(config.augment_copies):
        shifts = rng.integers(0, length, n)
        gains = 10 ** (rng.uniform(-6, 6, n) / 20)
        copies = [np.roll(w, s) * g for w, s, g in zip(waves, shifts, gains, strict=True)]
        out.append(np.stack(copies).astype("float32"))
    if config.mix_inputs:
        i, j = rng.integers(0, n, config.mix_inputs), rng.integers(0, n, config.mix_inputs)
        lam = rng.uniform(0.5, 1.0, (config.mix_inputs, 1)).astype("float32")
        out.append(lam * waves[i] + (1 - lam) * waves[j])
    return np.concatenate(out) if out else waves[:0]


def _dataset(pre: dict, batch_size: int):
    return tf.data.Dataset.from_tensor_slices(pre).batch(batch_size).prefetch(2)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``: a pure function of (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _epochs_dataset(pre: dict, batch_size: int, seed: int, first_epoch: int, epochs: int):
    """Batches of epochs ``first_epoch .. epochs - 1`` in :func:`epoch_order`; returns (dataset, steps per epoch).

    Each epoch ends with its own (possibly short) batch; ``fit`` reads ``steps`` batches per epoch from one
    iterator.
    """
    n = len(pre["classifier_logits"])
    steps = -(-n // batch_size)
    orders = np.stack([epoch_order(seed, e, n) for e in range(first_epoch, epochs)]).astype("int64")
    tensors = tf.nest.map_structure(tf.convert_to_tensor, pre)
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    )
    ds = ds.map(lambda idx: tf.nest.map_structure(lambda t: tf.gather(t, idx), tensors))
    return ds.prefetch(2), steps


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping whose state (best value, epochs waited, best weights) survives a restart."""

    def __init__(self, restored: dict | None = None, best_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored
        self.restored_weights = best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored:
            self.wait = self.restored["wait"]
            self.best = self.restored["best"]
            self.best_epoch = self.restored["best_epoch"]
            self.best_weights = self.restored_weights

    def state(self) -> dict:
        best = self.best if np.isfinite(self.best) else None
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class _TrainState(keras.callbacks.Callback):
    """After every epoch: save the interpreter (with optimizer state), the early-stopping state and best weights,
    and the history so far, then commit them with ``checkpoints/state.json``.

    Every file is written under a new name (temporary file + rename) before ``state.json`` points to it, so a
    process killed at any moment leaves the previous epoch's checkpoint complete; files no longer referenced are
    removed after the commit.
    """

    def __init__(self, folder: Path, early_stopping: _EarlyStopping, history: list[dict]):
        super().__init__()
        self.folder = folder
        self.early_stopping = early_stopping
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        done = epoch + 1
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        model_file = f"epoch-{done:04d}.keras"
        tmp = self.folder / f".{model_file}.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.folder / model_file)
        stopping = self.early_stopping.state()
        best_file = None
        if self.early_stopping.best_weights is not None:
            best_file = f"best-{stopping['best_epoch'] + 1:04d}.npz"
            if not (self.folder / best_file).exists():
                tmp = self.folder / f".{best_file}.tmp.npz"
                np.savez(tmp, *self.early_stopping.best_weights)
                os.replace(tmp, self.folder / best_file)
        state = {
            "epochs_done": done,
            "checkpoint": model_file,
            "best_weights": best_file,
            "early_stopping": stopping,
            "seed_states": [v.numpy().tolist() for v in _seed_states(self.model)],
            "history": self.history,
            "logs": self.history[-1],
        }
        _write_json(self.folder / "state.json", state)
        for path in self.folder.iterdir():
            if path.name not in (model_file, best_file, "state.json"):
                path.unlink(missing_ok=True)


def _seed_states(model: keras.Model) -> list:
    """The states of the model's Keras ``SeedGenerator``s (dropout masks), in the model's variable order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _load_checkpoint(path: Path, state: dict, safe_mode: bool) -> Interpreter:
    """The interpreter of a checkpoint with its optimizer and dropout RNG state.

    ``load_model`` skips the optimizer's slots of a subclassed model whose optimizer is built lazily (Keras warns
    "Skipping variable loading for optimizer"): build the model and the optimizer, then read the weights again.
    The ``.keras`` file does not restore the dropout layers' ``SeedGenerator`` states: ``state.json`` holds them.
    """
    interpreter = load_keras(path, safe_mode)
    interpreter(tf.zeros([1, interpreter.stft_config.sample_rate // 4]))
    interpreter.optimizer.build(interpreter.head_variables)
    interpreter.load_weights(path)
    seeds = state.get("seed_states")
    if seeds is not None:
        variables = _seed_states(interpreter)
        if len(variables) != len(seeds):
            raise RunFolderError(f"{str(path)!r}: {len(variables)} dropout RNG states, the checkpoint has {len(seeds)}")
        for variable, value in zip(variables, seeds, strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    return interpreter


def _read_state(folder: Path) -> dict:
    state = json.loads((folder / "state.json").read_text())
    state.setdefault("checkpoint", "last.keras")
    return state


def _history(previous: list[dict]) -> dict:
    keys = sorted({k for logs in previous for k in logs})
    return {k: [logs.get(k, float("nan")) for logs in previous] for k in keys}


def train(
    out: str | Path,
    config: TrainConfig = TrainConfig(),
    resume=False,
    overwrite=False,
    strategy=None,
    callbacks=(),
    safe_mode: bool = True,
) -> dict:
    """Run the whole job and return the metrics (also in ``out/metrics.json``).

    A run killed at any point after its first epoch continues with ``resume=True`` and ends with the same weights
    and metrics as an uninterrupted run: each epoch's example order depends on (seed, epoch) only, and the
    optimizer, dropout RNG and early-stopping state are checkpointed after every epoch.

    Args:
        callbacks: extra Keras callbacks for ``fit``.
        safe_mode: load the classifier (and checkpoints) with Keras' safe mode (``--unsafe-load`` turns it off).
    """
    start = time.perf_counter()
    out = Path(out)
    prepare_run_folder(out, resume, overwrite)
    if resume:
        saved = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["train"])
        config = dataclasses.replace(saved, epochs=config.epochs)
    keras.utils.set_random_seed(config.seed)
    stft = audio.STFTConfig.from_dict(config.stft)
    model_f = load_classifier(config.classifier, config.custom_objects, safe_mode)
    info = classifier_lib.load_info(config.classifier)
    class_names = resolve_class_names(model_f, config, info)
    multilabel = config.multilabel or bool(info and info.multilabel)
    alpha, temperature = DEFAULT_LOSS_WEIGHTS[multilabel]
    config = dataclasses.replace(
        config,
        multilabel=multilabel,
        class_names=class_names,
        alpha=alpha if config.alpha is None else config.alpha,
        temperature=temperature if config.temperature is None else config.temperature,
    )
    if info and info.sample_rate != stft.sample_rate:
        raise ValueError(
            f"the classifier expects {info.sample_rate} Hz (its sidecar) but the STFT config uses {stft.sample_rate} Hz"
        )
    layers = config.layers or (info.layers if info else ())
    names, orders = tap_orders(model_f, layers)
    config = dataclasses.replace(config, layers=tuple(layers))
    _write_json(out / "config.json", {"train": config.to_dict(), "environment": environment()})
    _write_json(out / "stft.json", stft.to_dict())

    table, (train_xy, val_xy, test_xy), skipped = _datasets(config, stft.sample_rate, len(class_names))
    if skipped:
        log.warning("skipped %d unreadable clip(s): %s", len(skipped), "; ".join(skipped))
    timings = {"data_seconds": time.perf_counter() - start}

    # Dictionary: reuse (--dictionary or the run folder's) or learn on the training split.
    t0 = time.perf_counter()
    if config.dictionary:
        dictionary = nmf.Dictionary.load(config.dictionary)
    elif (out / "dictionary").exists():
        dictionary = nmf.Dictionary.load(out / "dictionary")
    else:
        nmf_kwargs = {"k": config.k, "seed": config.seed}
        if config.sparsity is not None:
            nmf_kwargs["sparsity"] = config.sparsity
        if config.nmf_iterations is not None:
            nmf_kwargs["iterations"] = config.nmf_iterations
        train_table = table.with_folds(config.train_folds)
        dictionary = nmf.learn_from_table(train_table, stft, nmf.NMFConfig(**nmf_kwargs))
        dictionary.save(out / "dictionary")
    dictionary.check_compatible(stft, config.k)
    timings["dictionary_seconds"] = time.perf_counter() - t0

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        if resume:
            state = _read_state(out / "checkpoints")
            interpreter = _load_checkpoint(out / "checkpoints" / state["checkpoint"], state, safe_mode)
        else:
            interpreter = Interpreter(
                model_f,
                names,
                orders,
                dictionary.k,
                dictionary.num_bins,
                stft.to_dict(),
                multilabel=multilabel,
                alpha=config.alpha,
                beta=config.beta,
                temperature=config.temperature,
                psi={"hidden": config.hidden, "dropout": config.dropout, "freq_reduce": config.freq_reduce},
                theta={"pooling": config.pooling},
                dictionary=dictionary.W,
            )
            interpreter.compile(optimizer=keras.optimizers.Adam(config.learning_rate))

    t0 = time.perf_counter()
    extra = _extra_inputs(train_xy[0], config)
    train_inputs = np.concatenate([train_xy[0], extra]) if len(extra) else train_xy[0]
    pre = [interpreter.precompute(x) for x in (train_inputs, val_xy[0], test_xy[0])]
    del train_inputs, train_xy, val_xy, test_xy, extra  # `pre` holds what training needs
    timings["features_seconds"] = time.perf_counter() - t0

    monitor = "val_fidelity_micro_auprc" if multilabel else "val_fidelity_top1"
    initial_epoch, previous, restored, best_weights = 0, [], None, None
    if resume:
        initial_epoch = state["epochs_done"]
        previous = list(state.get("history", []))
        restored = state.get("early_stopping")
        if state.get("best_weights"):
            with np.load(out / "checkpoints" / state["best_weights"]) as saved:
                best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    early_stopping = _EarlyStopping(
        restored,
        best_weights,
        monitor=monitor,
        mode="max",
        patience=config.patience,
        restore_best_weights=True,
        verbose=0,
    )
    history_so_far = list(previous)
    all_callbacks = [
        early_stopping,
        keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False),
        _TrainState(out / "checkpoints", early_stopping, history_so_far),
        *callbacks,
    ]
    t0 = time.perf_counter()
    if initial_epoch < config.epochs:
        train_ds, steps = _epochs_dataset(pre[0], config.batch_size, config.seed, initial_epoch, config.epochs)
        pre[0] = None  # the dataset holds its own copy as tensors
        interpreter.fit(
            train_ds,
            steps_per_epoch=steps,
            validation_data=_dataset(pre[1], 64),
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=all_callbacks,
            verbose=2 if log.isEnabledFor(logging.INFO) else 0,
        )
    elif best_weights is not None:  # nothing left to train: end as a finished run ends, on the best weights
        interpreter.set_weights(best_weights)
    timings["train_seconds"] = time.perf_counter() - t0

    results = {"class_names": list(class_names), "multilabel": multilabel, "k": dictionary.k}
    results["skipped_clips"] = {"count": len(skipped), "errors": skipped}
    for split_name, p in zip(("validation", "test"), pre[1:], strict=True):
        logits = _interpreter_logits(interpreter, p)
        results[split_name] = metrics.fidelity(p["classifier_logits"], logits, multilabel)
    results["epochs_run"] = len(history_so_far) - len(previous)
    results["epochs_done"] = len(history_so_far)
    results["history"] = _history(history_so_far)
    results.update(timings)
    results["total_seconds"] = time.perf_counter() - start
    tmp = out / ".interpreter.tmp.keras"
    interpreter.save(tmp)
    os.replace(tmp, out / "interpreter.keras")
    _write_json(out / "metrics.json", results)
    return results


def _interpreter_logits(interpreter: Interpreter, pre: dict, batch_size: int = 64) -> np.ndarray:
    """Θ's logits for precomputed batches (see :meth:`Interpreter.precompute`)."""
    out = []
    frames = int(frames_for(pre["waveform"].shape[1], interpreter.stft_config))
    for i in range(0, len(pre["classifier_logits"]), batch_size):
        seqs = [f[i : i + batch_size] for f in pre["sequences"]]
        _, logits, _ = interpreter.heads(seqs, frames, training=False, reduced=True)
        out.append(np.asarray(logits))
    return np.concatenate(out)


@dataclasses.dataclass
class Run:
    """A trained run folder, loaded: the interpreter, its training config and its metrics."""

    folder: Path
    interpreter: Interpreter
    config: TrainConfig
    metrics: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)


def load_run(folder: str | Path, safe_mode: bool = True) -> Run:
    """Load a run folder written by :func:`train` (errors name the missing file)."""
    folder = Path(folder)
    for name in ("config.json", "interpreter.keras"):
        if not (folder / name).is_file():
            raise RunFolderError(f"{str(folder)!r} is not a finished run: {name} is missing")
    config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text())["train"])
    if config.custom_objects:
        import importlib

        importlib.import_module(config.custom_objects)
    interpreter = load_keras(folder / "interpreter.keras", safe_mode, compile=False)
    metrics_path = folder / "metrics.json"
    results = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Run(folder, interpreter, config, results)
