"""The run folder: its file names, its configuration, creating it, loading it (Keras safe mode) and its errors.

A run folder, as ``l2i-tf train`` writes it::

    config.json        {"train": TrainConfig, "environment": versions and command line}
    stft.json          the STFT configuration of the dictionary and the interpreter (checked on load; also
                       config.json's train.stft)
    dictionary/        the NMF dictionary (:class:`~l2i_tf.dictionary.Dictionary`)
    interpreter.keras  the trained :class:`~l2i_tf.interpreter.Interpreter`
    metrics.json       fidelity on the validation and test splits, timings, history
    checkpoints/       per-epoch state for resuming; logs/ TensorBoard
    cache/features/    the classifier's features in shards while training (removed at the end; a killed run's
                       are reused by --resume)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import keras

try:
    import fcntl
except ImportError:  # Windows: no run-folder lock
    fcntl = None

from l2i_tf import audio, files, tables
from l2i_tf import classifier as classifier_lib
from l2i_tf.settings import Settings

CONFIG = "config.json"
STFT = "stft.json"
DICTIONARY = "dictionary"
INTERPRETER = "interpreter.keras"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "state.json"
LOGS = "logs"
FEATURE_CACHE = "cache/features"
"""The classifier's features of every example, in shards (:mod:`l2i_tf.feature_cache`); removed when the run ends."""
EVALUATION = "evaluation"
"""``l2i-tf evaluate``'s default report folder in a run folder."""
BASELINES = "baselines"
"""FLINT and VIBI trained on the run (``l2i-tf evaluate --baselines``), and their feature cache."""
CROSS_VALIDATION = "cv"
"""The fold runs of ``l2i-tf evaluate --cv``."""
DERIVED = (EVALUATION, BASELINES, CROSS_VALIDATION, FEATURE_CACHE.split("/")[0])
"""What is made from a run and kept in its folder: removed with it (``--overwrite``), as it no longer describes it."""
RUN_FILES = (CONFIG, INTERPRETER, METRICS)
"""Files whose presence means a folder holds a run."""


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked. ``folder`` is the folder, ``reason`` one of ``"exists"``
    (it holds a run), ``"no_checkpoint"`` (nothing to resume), ``"busy"`` (another job trains into it),
    ``"incomplete"`` (``missing`` names the file),
    ``"incompatible"`` (its interpreter was written by an earlier version), ``"clash"`` (a folder that holds no run
    holds files or folders of the names a run writes: the user's own, which a later ``--overwrite`` would remove)."""

    def __init__(self, message: str, folder: Path, reason: str, missing: str | None = None):
        super().__init__(message)
        self.folder = folder
        self.reason = reason
        self.missing = missing


class UnsafeModelError(ValueError):
    """A ``.keras`` file (``path``) that Keras' safe mode refuses to load: it holds Python code (a ``Lambda``
    layer). Loading it with ``safe_mode=False`` runs that code: only for files you trust."""

    def __init__(self, path: Path):
        super().__init__(
            f"{str(path)!r} holds Python code (a Lambda layer) that Keras' safe mode refuses to load; "
            "load it with safe mode off only if you trust this file"
        )
        self.path = path


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
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
    # None: the default for the task (training.DEFAULT_LOSS_WEIGHTS), recorded resolved in config.json.
    alpha: float | None = None
    beta: float = 0.8
    temperature: float | None = None
    pooling: str = "attention"
    hidden: int = 128
    dropout: float = 0.1
    freq_reduce: str = "mean"
    augment_copies: int = 0
    mix_inputs: int = 0
    epochs: int | None = None  # None: the task's default (training.DEFAULT_EPOCHS), recorded resolved
    batch_size: int = 16
    learning_rate: float = 1e-3
    # Horizon, in epochs, of the moving average of Ψ/Θ's weights that validation, early stopping, checkpoints and
    # the saved interpreter use (0: the raw weights); None: the task's default (training.DEFAULT_EMA_EPOCHS),
    # recorded resolved.
    ema_epochs: float | None = None
    # Epochs without a better validation fidelity before training stops (the best epoch's weights are kept). Six
    # ESC-10 runs followed for 40 epochs (default and paper's training, three seeds; benchmarks/RESULTS.md, "Where
    # the time of a training step goes") and one multi-label run: 6 keeps the same epoch as 15 in five of seven, in
    # about half the epochs; fold 5's fidelity does not rise after epoch 5-15, so stopping earlier costs nothing on
    # average.
    patience: int = 6
    # Multi-label training mixtures (and a quarter as many for validation and test). Measured on ESC-10's
    # validation fold: 960 -> micro-AUPRC 0.77 (overfits); 2400 -> 0.94; 4800 (20 epochs, α = 3) -> 0.95.
    mixtures: int = 4800
    mixture_snr_db: tuple[float, float] = (-5.0, 5.0)
    # Single-label runs: training mixtures of two training clips with their sources, and λ of the source-consistency
    # term that teaches the interpretation of the decided class to be that class's source (l2i_tf.source_mixtures).
    # 0 and 0: the paper's training; None: the task's default (training.DEFAULT_SOURCES), recorded resolved.
    source_mixtures: int | None = None
    source_weight: float | None = None
    seed: int = 0
    # The classifier's compute (l2i_tf.interpreter.PRECISIONS): "mixed_float16"/"mixed_bfloat16" for GPUs.
    precision: str = "float32"
    # The STFT asked for: None takes the rate from the classifier's sidecar (else 16 kHz) and the sizes from
    # audio.STFTConfig.for_rate. `stft` is the resolved configuration, recorded in config.json; when set (a resumed
    # run, a library caller), it is used as it is.
    sample_rate: int | None = None
    frame_length: int | None = None
    frame_step: int | None = None
    fft_length: int | None = None
    stft: dict | None = None
    class_names: tuple[str, ...] | None = None
    custom_objects: str | None = None
    on_error: str = "raise"

    @property
    def splits(self) -> tables.Splits:
        return tables.Splits(self.train_folds, self.val_folds, self.test_folds)


def environment() -> dict:
    """Package versions and the command line, recorded in every run folder and report."""
    versions = {}
    for name in ("l2i_tf", "tensorflow", "keras", "tensorflow-io", "numpy", "scikit-learn", "soundfile"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "python": platform.python_version(), "command": sys.argv}


# -------------------------------------------------------------------- creating


LOCK = ".l2i_tf.lock"
"""The file a training job holds locked in its run folder."""


@contextlib.contextmanager
def locked(out: Path, create: bool = True):
    """Hold ``out``'s lock for one training job: a second job on the same folder (two ``l2i-tf train`` started at
    once) is refused with a :class:`RunFolderError` instead of writing into it too. ``create``: make the folder if
    it does not exist (else a missing folder is left to :func:`prepare` to refuse); a job that fails before writing
    anything into a folder it made removes it. No lock where the OS has no ``fcntl`` (Windows)."""
    if fcntl is None or (not create and not out.is_dir()):
        yield
        return
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with open(out / LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(f"{str(out)!r} is in use by another training job", out, "busy") from None
            except OSError:  # a file system without locks (some network mounts): the job runs unlocked
                pass
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except BaseException:
        if made and [p.name for p in out.iterdir()] == [LOCK]:  # a job refused before writing: no folder left
            (out / LOCK).unlink()
            out.rmdir()
        raise


def has_checkpoint(folder: Path) -> bool:
    """The run in ``folder`` has finished an epoch (its training resumes from there, not from the start)."""
    return (folder / CHECKPOINTS / CHECKPOINT_STATE).is_file()


def holds_run(folder: Path) -> bool:
    return folder.exists() and any((folder / f).exists() for f in (*RUN_FILES, CHECKPOINTS))


def prepare(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Make ``out`` ready for a run: refuse one that holds a run unless resuming (a run that recorded its settings,
    :data:`CONFIG`: from its last checkpoint, or from its first epoch if it stopped before one) or overwriting (the
    run's own files and what was made from it, :data:`DERIVED`, are removed; nothing else)."""
    out = Path(out)
    if resume:
        if not (out / CONFIG).exists():
            raise RunFolderError(
                f"{str(out)!r} holds no run to resume: no {CONFIG}, no checkpoint ({CHECKPOINTS}/{CHECKPOINT_STATE})",
                out,
                "no_checkpoint",
            )
        return out
    owned = (*RUN_FILES, CHECKPOINTS, LOGS, DICTIONARY, STFT, *DERIVED)
    if holds_run(out) and not overwrite:
        raise RunFolderError(f"{str(out)!r} already holds a run", out, "exists")
    clash = [name for name in owned if (out / name).exists()] if not holds_run(out) else []
    if clash:
        raise RunFolderError(
            f"{str(out)!r} holds no run but holds {', '.join(map(repr, clash))}, which a run writes (and "
            "`--overwrite` would remove with it)",
            out,
            "clash",
        )
    if holds_run(out):
        for name in owned:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_config(out: Path, config: TrainConfig, stft: audio.STFTConfig) -> None:
    """``config.json`` (the settings and the environment) and ``stft.json``."""
    files.write_json(out / CONFIG, {"train": config.to_dict(), "environment": environment()})
    files.write_json(out / STFT, stft.to_dict())


def read_config(folder: str | Path) -> TrainConfig:
    """The run's recorded settings. A run recorded before the source-consistency term had none: it reads as the
    paper's training (``source_mixtures`` 0, ``source_weight`` 0), so resuming or cross-validating it keeps it; one
    recorded before the weights' moving average reads with none (``ema_epochs`` 0)."""
    recorded = json.loads((Path(folder) / CONFIG).read_text())["train"]
    return TrainConfig.from_dict({"source_mixtures": 0, "source_weight": 0.0, "ema_epochs": 0.0, **recorded})


# -------------------------------------------------------------------- loading


def load_keras(path: str | Path, safe_mode: bool = True, custom_objects: str | None = None, **kwargs) -> keras.Model:
    """``keras.saving.load_model`` with Keras' safe mode on by default; its refusal is an
    :class:`UnsafeModelError` naming the file, and a class no imported module registers a
    :class:`CustomObjectsError` naming it (``custom_objects``: the module that should have)."""
    try:
        return keras.saving.load_model(path, safe_mode=safe_mode, **kwargs)
    except (ValueError, TypeError) as e:
        if safe_mode and "safe_mode" in str(e):
            raise UnsafeModelError(Path(path)) from None
        unknown = _unknown_class(e, Path(path), custom_objects) if isinstance(e, TypeError) else None
        if unknown is not None:
            raise unknown from None
        raise


class CustomObjectsError(ValueError):
    """The module that registers a classifier's custom layers (``--custom-objects``) cannot be imported, or a
    ``.keras`` file holds a class that no imported module registered."""


def import_custom_objects(module: str | None, recorded_in: Path | None = None) -> None:
    """Import the user's module that registers their custom layers (``--custom-objects``; a run's, recorded in
    ``recorded_in``): from the Python path, else from the working directory (as ``python -m`` would)."""
    if not module:
        return
    try:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.append(os.getcwd())
            importlib.import_module(module)
    except ImportError as e:
        where = f" (recorded in {str(recorded_in)!r})" if recorded_in else ""
        raise CustomObjectsError(
            f"cannot import the custom-objects module {module!r}{where}: {e}; run from the folder that holds it or "
            "put that folder on PYTHONPATH"
        ) from None


def _unknown_class(error: TypeError, path: Path, module: str | None) -> CustomObjectsError | None:
    """Keras' refusal of a class no module registered, as a :class:`CustomObjectsError` naming the file."""
    found = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
    if found is None:
        return None
    how = f"the module {module!r} does not register it" if module else "pass the module that registers it"
    return CustomObjectsError(
        f"{str(path)!r} holds the class {found.group(1)!r}, unknown to Keras: {how} (--custom-objects MODULE; "
        "decorate the class with @keras.saving.register_keras_serializable())"
    )


def load_classifier(path: str, custom_objects_module: str | None = None, safe_mode: bool = True) -> keras.Model:
    """Load a user's ``.keras`` classifier (importing ``custom_objects_module`` first, which registers their layers)."""
    import_custom_objects(custom_objects_module)
    if not Path(path).is_file():
        raise FileNotFoundError(f"classifier file {path!r} does not exist")
    return load_keras(path, safe_mode, custom_objects_module, compile=False)


@dataclasses.dataclass
class Run:
    """A trained run folder, loaded: the interpreter, its training config and its metrics."""

    folder: Path
    interpreter: keras.Model
    config: TrainConfig
    metrics: dict

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.class_names)


def is_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished run (its config and interpreter)."""
    folder = Path(folder)
    return (folder / CONFIG).is_file() and (folder / INTERPRETER).is_file()


def fingerprint(folder: str | Path) -> dict:
    """What identifies the run in ``folder`` (recorded by an export, checked by ``l2i-tf report``): the SHA-256 of
    its ``interpreter.keras`` and of its training settings (``config.json``'s ``train``, as sorted JSON; not the
    environment). A run trained again into the folder (``--overwrite``, ``--resume``) or copied over it changes it;
    evaluating the run does not. Raises ``OSError`` or ``ValueError`` when either file cannot be read."""
    folder = Path(folder)
    with open(folder / INTERPRETER, "rb") as handle:
        interpreter = hashlib.file_digest(handle, "sha256").hexdigest()
    recorded = json.loads((folder / CONFIG).read_text())
    if not isinstance(recorded, dict) or not isinstance(recorded.get("train"), dict):
        raise ValueError(f'{str(folder / CONFIG)!r} holds no training settings ("train")')
    train = recorded["train"]
    settings = hashlib.sha256(json.dumps(train, sort_keys=True).encode()).hexdigest()
    return {"interpreter_sha256": interpreter, "train_config_sha256": settings}


def load_run(folder: str | Path, safe_mode: bool = True) -> Run:
    """Load a finished run folder; the interpreter's STFT must be the one in ``stft.json``."""
    folder = Path(folder)
    for name in (CONFIG, INTERPRETER):
        if not (folder / name).is_file():
            raise RunFolderError(
                f"{str(folder)!r} is not a finished run: {name} is missing", folder, "incomplete", missing=name
            )
    config = read_config(folder)
    import_custom_objects(config.custom_objects, folder / CONFIG)
    try:
        interpreter = load_keras(folder / INTERPRETER, safe_mode, config.custom_objects, compile=False)
    except ValueError as e:
        if "could not be loaded" not in str(e):  # Keras: the file's weights do not fit the Interpreter's graph
            raise
        raise RunFolderError(
            f"{str(folder / INTERPRETER)!r} does not fit this version's Interpreter (it was written by an earlier "
            "l2i_tf, before the functional graph): retrain the run; exports made from it still work",
            folder,
            "incompatible",
            missing=INTERPRETER,
        ) from None
    if (folder / STFT).is_file():
        audio.STFTConfig.load(folder / STFT).check_same(interpreter.stft_config, f"{folder / INTERPRETER}")
    metrics_path = folder / METRICS
    results = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return Run(folder, interpreter, config, results)
