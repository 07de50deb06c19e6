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

from l2i_tf import audio, classifier as classifier_lib, data, metrics, nmf
from l2i_tf.interpreter import Interpreter, frames_for, tap_orders

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "interpreter.keras", "metrics.json")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, or has nothing to resume)."""


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
    alpha: float = 10.0
    beta: float = 0.8
    temperature: float = 1.0
    pooling: str = "attention"
    hidden: int = 128
    dropout: float = 0.1
    freq_reduce: str = "mean"
    augment_copies: int = 2
    mix_inputs: int = 480
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 15
    mixtures: int = 960
    mixture_snr_db: tuple[float, float] = (-5.0, 5.0)
    seed: int = 0
    stft: dict = dataclasses.field(default_factory=lambda: audio.STFTConfig().to_dict())
    class_names: tuple[str, ...] | None = None
    custom_objects: str | None = None

    @property
    def splits(self) -> data.Splits:
        return data.Splits(self.train_folds, self.val_folds, self.test_folds)

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
        if not (out / "checkpoints" / "last.keras").exists():
            raise RunFolderError(f"{str(out)!r} has no checkpoint to resume (checkpoints/last.keras)")
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


def load_classifier(path: str, custom_objects_module: str | None = None, safe_mode: bool = True) -> keras.Model:
    """Load a user's ``.keras`` classifier (importing ``custom_objects_module`` first, which registers their layers)."""
    if custom_objects_module:
        import importlib

        importlib.import_module(custom_objects_module)
    if not Path(path).is_file():
        raise FileNotFoundError(f"classifier file {path!r} does not exist")
    return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)


def resolve_class_names(model: keras.Model, config: TrainConfig, info) -> tuple[str, ...]:
    num = int(model.outputs[0].shape[-1])
    names = config.class_names or (info.class_names if info else None)
    if names is None:
        return tuple(f"class_{i}" for i in range(num))
    if len(names) != num:
        source = "--class-names" if config.class_names else f"the sidecar {classifier_lib.sidecar_path(config.classifier)}"
        raise ValueError(f"{len(names)} class names from {source} but the classifier outputs {num} classes")
    return tuple(names)


def _datasets(config: TrainConfig, sample_rate: int, num_classes: int):
    """(train, val, test) waveforms as numpy (mixtures for multi-label) and the data table."""
    table = data.esc10_table() if config.data is None else data.load_table(config.data, config.layout)
    clip = int(config.clip_seconds * sample_rate)
    parts = [p for p in data.split(table, config.splits)]
    arrays = [data.load_waveforms(p, sample_rate, clip) for p in parts]
    if config.multilabel and not table.multilabel:
        counts = (config.mixtures, config.mixtures // 4, config.mixtures // 4)
        mixed = []
        for i, ((waves, labels), count) in enumerate(zip(arrays, counts)):
            mix = data.make_mixtures(
                waves, labels, num_classes, count, snr_db=config.mixture_snr_db, seed=config.seed + i, keep_sources=False
            )
            mixed.append((mix["mixture"], mix["labels"]))
        arrays = mixed
    return table, arrays


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
        out.append(np.stack([np.roll(w, s) * g for w, s, g in zip(waves, shifts, gains)]).astype("float32"))
    if config.mix_inputs:
        i, j = rng.integers(0, n, config.mix_inputs), rng.integers(0, n, config.mix_inputs)
        lam = rng.uniform(0.5, 1.0, (config.mix_inputs, 1)).astype("float32")
        out.append(lam * waves[i] + (1 - lam) * waves[j])
    return np.concatenate(out) if out else waves[:0]


def _dataset(pre: dict, batch_size: int, shuffle_seed: int | None):
    ds = tf.data.Dataset.from_tensor_slices(pre)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(pre["classifier_logits"]), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


class _TrainState(keras.callbacks.Callback):
    """After every epoch: save ``checkpoints/last.keras`` and ``state.json`` (epoch done, best so far), atomically."""

    def __init__(self, folder: Path, monitor: str):
        super().__init__()
        self.folder = folder
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / ".last.keras.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.folder / "last.keras")
        _write_json(self.folder / "state.json", {"epochs_done": epoch + 1, "logs": {k: float(v) for k, v in logs.items()}})


def train(out: str | Path, config: TrainConfig = TrainConfig(), resume=False, overwrite=False, strategy=None) -> dict:
    """Run the whole job and return the metrics (also in ``out/metrics.json``)."""
    start = time.perf_counter()
    out = Path(out)
    prepare_run_folder(out, resume, overwrite)
    if resume:
        saved = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["train"])
        config = dataclasses.replace(saved, epochs=config.epochs)
    keras.utils.set_random_seed(config.seed)
    stft = audio.STFTConfig.from_dict(config.stft)
    model_f = load_classifier(config.classifier, config.custom_objects)
    info = classifier_lib.load_info(config.classifier)
    class_names = resolve_class_names(model_f, config, info)
    multilabel = config.multilabel or bool(info and info.multilabel)
    config = dataclasses.replace(config, multilabel=multilabel, class_names=class_names)
    if info and info.sample_rate != stft.sample_rate:
        raise ValueError(
            f"the classifier expects {info.sample_rate} Hz (its sidecar) but the STFT config uses {stft.sample_rate} Hz"
        )
    layers = config.layers or (info.layers if info else ())
    names, orders = tap_orders(model_f, layers)
    config = dataclasses.replace(config, layers=tuple(layers))
    _write_json(out / "config.json", {"train": config.to_dict(), "environment": environment()})
    stft.save(out / "stft.json")

    table, (train_xy, val_xy, test_xy) = _datasets(config, stft.sample_rate, len(class_names))
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
            interpreter = keras.saving.load_model(out / "checkpoints" / "last.keras")
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
    train_inputs = np.concatenate([train_xy[0], _extra_inputs(train_xy[0], config)])
    pre = [interpreter.precompute(x) for x in (train_inputs, val_xy[0], test_xy[0])]
    timings["features_seconds"] = time.perf_counter() - t0

    monitor = "val_fidelity_micro_auprc" if multilabel else "val_fidelity_top1"
    initial_epoch = 0
    if resume:
        initial_epoch = json.loads((out / "checkpoints" / "state.json").read_text())["epochs_done"]
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=config.patience, restore_best_weights=True, verbose=0
        ),
        keras.callbacks.TensorBoard(log_dir=str(out / "logs"), write_graph=False),
        _TrainState(out / "checkpoints", monitor),
    ]
    t0 = time.perf_counter()
    history = interpreter.fit(
        _dataset(pre[0], config.batch_size, config.seed),
        validation_data=_dataset(pre[1], 64, None),
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=2 if log.isEnabledFor(logging.INFO) else 0,
    )
    timings["train_seconds"] = time.perf_counter() - t0

    results = {"class_names": list(class_names), "multilabel": multilabel, "k": dictionary.k}
    for split_name, p in zip(("validation", "test"), pre[1:]):
        logits = _interpreter_logits(interpreter, p)
        results[split_name] = metrics.fidelity(p["classifier_logits"], logits, multilabel)
    results["epochs_run"] = len(history.history.get("loss", []))
    results["history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
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
    interpreter = keras.saving.load_model(folder / "interpreter.keras", compile=False, safe_mode=safe_mode)
    metrics_path = folder / "metrics.json"
    results = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Run(folder, interpreter, config, results)
