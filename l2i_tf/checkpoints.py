"""Per-epoch checkpoints of interpreter training, so a killed run resumes to the same weights and metrics.

After every epoch ``checkpoints/`` gets the values of what training changes (``epoch-NNNN.npz``: Ψ, Θ, the
decoder, their dropout RNG states and the optimizer's variables), the best weights so far, the early-stopping
state, the dropout RNG states, the history and the run's timings so far, committed by ``state.json``: every file is
written under a new name before ``state.json`` points to it, so a process killed at any moment leaves the previous
epoch's checkpoint complete. A resumed run builds its interpreter as a new run does and reads the values back
(:func:`resume`); a checkpoint of an earlier version, the whole interpreter as ``epoch-NNNN.keras``, still resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from l2i_tf import files, runs

STATE = runs.CHECKPOINT_STATE


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping whose state (best value, epochs waited, best weights) survives a restart.

    With ``patience_monitor`` (the validation fidelity, when ``monitor`` adds a tie-break to it:
    :class:`FidelityThenSource`), patience counts the epochs since that metric last rose: an epoch better by the
    tie-break alone takes over the best weights but does not restart the count.
    """

    def __init__(self, restored: dict | None = None, best_weights=None, patience_monitor: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored
        self.restored_weights = best_weights
        self.patience_monitor = patience_monitor
        self.best_rising = -np.inf

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best_rising = -np.inf
        if self.restored:
            self.wait = self.restored["wait"]
            self.best = self.restored["best"]
            self.best_epoch = self.restored["best_epoch"]
            self.best_weights = self.restored_weights
            # a checkpoint from before this value was kept: the best monitored value stands in for it
            rising = self.restored.get("best_rising", self.best)
            self.best_rising = -np.inf if rising is None else rising

    def on_epoch_end(self, epoch, logs=None):
        waited = self.wait
        super().on_epoch_end(epoch, logs)
        value = (logs or {}).get(self.patience_monitor) if self.patience_monitor else None
        if value is None:
            return
        if float(value) > self.best_rising:
            self.best_rising = float(value)
        elif self.wait == 0:  # a better epoch by the tie-break alone: patience goes on counting
            self.wait = waited + 1
            if self.wait >= self.patience and epoch > 0:
                self.stopped_epoch = epoch
                self.model.stop_training = True

    def state(self) -> dict:
        best = self.best if np.isfinite(self.best) else None
        rising = self.best_rising if np.isfinite(self.best_rising) else None
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch), "best_rising": rising}


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' swap of the optimizer's moving average of the weights into the model, at every validation and from
    the end of every epoch to the start of the next, so the callbacks after it (early stopping, its best weights,
    checkpoints) and the saved interpreter see the average; training steps update the raw weights.

    A checkpoint is written while the average is in the model (and the raw weights in the optimizer's average
    slots): a ``resumed`` run starts in that state and swaps back before its first epoch, so it continues exactly.
    """

    def __init__(self, resumed: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


SOURCE_TIE_BREAK = 1e-4
"""Weight of the training source loss in :class:`FidelityThenSource`: far below one validation example's share of
fidelity for validation sets up to ~10 000 examples (the source loss is ~0.1)."""


class FidelityThenSource(keras.callbacks.Callback):
    """Adds ``val_fidelity_then_source`` = validation fidelity − ``SOURCE_TIE_BREAK`` × the epoch's source loss to
    the logs (before early stopping reads them): the best epoch is the one of best validation fidelity, and among
    equal fidelities the one whose interpretations match the training mixtures' sources best."""

    def __init__(self, fidelity: str):
        super().__init__()
        self.fidelity = fidelity

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.fidelity in logs and "source" in logs:
            logs["val_fidelity_then_source"] = float(logs[self.fidelity]) - SOURCE_TIE_BREAK * float(logs["source"])


class Checkpoint(keras.callbacks.Callback):
    """Writes the checkpoint after every epoch (:func:`save_variables`, then ``state.json``) and removes the files it
    no longer references.

    ``seconds``: the run's timings until now (``{"train_seconds": ...}``, over the sessions so far), recorded with
    each epoch so that a resumed run adds its own to them (:func:`run_seconds`).
    """

    def __init__(
        self,
        folder: Path,
        early_stopping: ResumableEarlyStopping,
        history: list[dict],
        seconds: Callable[[], dict] = dict,
    ):
        super().__init__()
        self.folder = folder
        self.early_stopping = early_stopping
        self.history = history
        self.seconds = seconds
        self.digest = None

    def on_train_begin(self, logs=None):
        self.digest = classifier_digest(self.model)  # the classifier is frozen: once a session

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        model_file = f"epoch-{done:04d}.npz"
        with files.atomic_file(self.folder / model_file) as tmp:
            save_variables(tmp, self.model, self.digest)
        stopping = self.early_stopping.state()
        best_file = None
        if self.early_stopping.best_weights is not None:
            best_file = f"best-{stopping['best_epoch'] + 1:04d}.npz"
            if not (self.folder / best_file).exists():
                with files.atomic_file(self.folder / best_file) as tmp:
                    np.savez(tmp, *self.early_stopping.best_weights)
        state = {
            "epochs_done": done,
            "checkpoint": model_file,
            "best_weights": best_file,
            "early_stopping": stopping,
            "seed_states": [v.numpy().tolist() for v in seed_states(self.model)],
            "history": self.history,
            "logs": self.history[-1],
            "seconds": self.seconds(),
        }
        files.write_json(self.folder / STATE, state)
        for path in self.folder.iterdir():
            if path.name not in (model_file, best_file, STATE):
                path.unlink(missing_ok=True)


def seed_states(model: keras.Model) -> list:
    """The states of the model's Keras ``SeedGenerator``s (dropout masks), in the model's variable order."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


@dataclasses.dataclass
class Resumed:
    """What a run continues from: the interpreter, epochs done, history, early-stopping state, best weights and the
    run's timings at the checkpoint (empty for a checkpoint written before they were kept)."""

    interpreter: keras.Model
    epochs_done: int
    history: list[dict]
    early_stopping: dict | None
    best_weights: list | None
    seconds: dict = dataclasses.field(default_factory=dict)


class CheckpointMismatchError(ValueError):
    """A checkpoint (``path``) that does not fit the interpreter the run builds: ``reason`` says what differs (the
    classifier's weights; the count, paths, shapes or dtypes of the :func:`checkpoint_variables`)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"the checkpoint {str(path)!r} does not fit the interpreter this run builds: {reason}")
        self.path, self.reason = path, reason


def checkpoint_variables(interpreter: keras.Model) -> dict[str, list]:
    """What a checkpoint holds, by part: ``"model"``, every variable of the interpreter but its frozen classifier's
    (and their mixed-precision copy's): Ψ, Θ, Ψ's dropout RNG state and the decoder (fixed, 0.2 MB at K = 100, kept
    so that every variable outside the classifier comes back); ``"optimizer"``, the optimizer's (iteration count,
    learning rate, Adam's slots, the moving average of the weights)."""
    frozen = {id(v) for v in (*interpreter.classifier.variables, *interpreter.extractor.variables)}
    model = [v for v in interpreter.variables if id(v) not in frozen]
    return {"model": model, "optimizer": list(interpreter.optimizer.variables)}


def classifier_digest(interpreter: keras.Model) -> str:
    """SHA-256 of the frozen classifier's weights: their dtypes, shapes and values, in order."""
    digest = hashlib.sha256()
    for weight in interpreter.classifier.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.dtype}{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_variables(path: Path, interpreter: keras.Model, digest: str) -> None:
    """Write the values of :func:`checkpoint_variables` to ``path`` (``.npz``: ``model_0000``...,
    ``optimizer_0000``... and each part's variable paths) with ``digest``, the :func:`classifier_digest` they were
    trained on.

    The frozen classifier's weights are not written but checked: a resumed run builds its interpreter from the
    run's classifier file, and :func:`restore_variables` refuses it unless its weights are the very ones the
    checkpoint was trained on, so the resumed run is as exact as one that kept them. Kept and resumed on instead,
    a copy of the classifier would let the run go on explaining a classifier its file no longer holds (while its
    settings, sidecar and ``config.json`` come from the file), and it would be most of every checkpoint's bytes
    (~3/4 of the default interpreter's, all of them for a large classifier). The digest is of the weights: a change
    to the classifier's architecture alone that keeps every weight's shape and value is not detected.
    """
    arrays = {"classifier_sha256": np.array(digest)}
    for part, variables in checkpoint_variables(interpreter).items():
        arrays[f"{part}_paths"] = np.array([v.path for v in variables], dtype=str)
        arrays.update({f"{part}_{i:04d}": v.numpy() for i, v in enumerate(variables)})
    np.savez(path, **arrays)


def stable_path(path: str) -> str:
    """A variable's path without the counters Keras adds to default names, which depend on what the process made
    before (``psi/seed_generator_3/seed_generator_state`` -> ``psi/seed_generator/seed_generator_state``,
    ``adam_1/...`` -> ``adam/...``)."""
    return re.sub(r"_\d+(?=[/_]|$)", "", path)


def restore_variables(path: Path, interpreter: keras.Model) -> None:
    """Assign the values :func:`save_variables` wrote to ``path`` to ``interpreter``'s variables (its optimizer
    built). Everything is checked first, and any difference is a :class:`CheckpointMismatchError` naming ``path``
    (the interpreter is then unchanged): the classifier's weights (:func:`classifier_digest`), then for the
    model's and the optimizer's variables their count, paths (:func:`stable_path`), shapes and dtypes."""
    with np.load(path) as saved:
        if str(saved["classifier_sha256"]) != classifier_digest(interpreter):
            reason = (
                "the classifier's weights differ from those the run was trained on (its file changed since the run "
                "started): put the classifier back, or start the run again with --overwrite"
            )
            raise CheckpointMismatchError(path, reason)
        assignments = []
        for part, variables in checkpoint_variables(interpreter).items():
            paths = [str(p) for p in saved[f"{part}_paths"]]
            values = [saved[f"{part}_{i:04d}"] for i in range(len(paths))]
            _check_part(path, part, variables, paths, values)
            assignments += zip(variables, values, strict=True)
    for variable, value in assignments:
        variable.assign(value)


def _check_part(path: Path, part: str, variables: list, paths: list[str], values: list[np.ndarray]) -> None:
    if len(variables) != len(paths):
        raise CheckpointMismatchError(path, f"{len(paths)} {part} variables, the interpreter has {len(variables)}")
    for variable, saved_path, value in zip(variables, paths, values, strict=True):
        if stable_path(variable.path) != stable_path(saved_path):
            raise CheckpointMismatchError(
                path, f"{part} variable {saved_path!r} where the interpreter has {variable.path!r}"
            )
        if tuple(value.shape) != tuple(variable.shape) or str(value.dtype) != variable.dtype:
            raise CheckpointMismatchError(
                path,
                f"{saved_path!r} is {value.dtype} {tuple(value.shape)}, the interpreter's "
                f"{variable.dtype} {tuple(variable.shape)}",
            )


def resume(folder: Path, interpreter: keras.Model, safe_mode: bool = True) -> Resumed:
    """The last checkpoint of ``folder`` (a run's ``checkpoints/``), continued by ``interpreter``: a new one, compiled
    and its optimizer built, as the run makes it (:func:`l2i_tf.training.new_interpreter`), its variables set from
    the checkpoint (:func:`restore_variables`) and its dropout layers' ``SeedGenerator`` states (the frozen
    classifier's too) from ``state.json``.

    A checkpoint of an earlier version (``epoch-NNNN.keras``, the whole interpreter) is loaded instead (with Keras'
    ``safe_mode``), compiled with a copy of ``interpreter``'s optimizer, whose variables are built and read from the
    file too; the ``.keras`` file does not restore the ``SeedGenerator`` states either: ``state.json`` holds them.
    """
    state = json.loads((folder / STATE).read_text())
    path = folder / state["checkpoint"]
    if path.suffix == ".keras":
        interpreter = _load_keras_checkpoint(path, interpreter.optimizer, safe_mode)
    else:
        restore_variables(path, interpreter)
    seeds = state.get("seed_states")
    if seeds is not None:
        variables = seed_states(interpreter)
        if len(variables) != len(seeds):
            reason = f"{len(seeds)} dropout RNG states in {STATE}, the interpreter has {len(variables)}"
            raise CheckpointMismatchError(path, reason)
        for variable, value in zip(variables, seeds, strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    best_weights = None
    if state.get("best_weights"):
        with np.load(folder / state["best_weights"]) as saved:
            best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    history = list(state.get("history", []))
    seconds = dict(state.get("seconds", {}))
    return Resumed(interpreter, state["epochs_done"], history, state.get("early_stopping"), best_weights, seconds)


def _load_keras_checkpoint(path: Path, optimizer: keras.optimizers.Optimizer, safe_mode: bool) -> keras.Model:
    """The interpreter of an earlier version's checkpoint, compiled with a fresh copy of ``optimizer``."""
    interpreter = runs.load_keras(path, safe_mode, compile=False)
    interpreter.compile(optimizer=type(optimizer).from_config(optimizer.get_config()))
    interpreter.optimizer.build(interpreter.head_variables)
    interpreter.load_weights(path)
    return interpreter


def run_seconds(earlier: dict, session: dict) -> dict:
    """A run's timings over its sessions: this ``session``'s plus the ``earlier`` ones' (a resumed checkpoint's
    :attr:`Resumed.seconds`), key by key; the keys are the session's."""
    return {key: earlier.get(key, 0.0) + value for key, value in session.items()}


def history_table(history: list[dict]) -> dict:
    """Per-epoch logs -> ``{metric: [value per epoch]}`` (NaN where an epoch lacks a metric)."""
    keys = sorted({k for logs in history for k in logs})
    return {k: [logs.get(k, float("nan")) for logs in history] for k in keys}
