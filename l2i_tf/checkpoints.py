"""Per-epoch checkpoints of interpreter training, so a killed run resumes to the same weights and metrics.

After every epoch ``checkpoints/`` gets the interpreter (with optimizer state), the best weights so far, the
early-stopping state, the dropout RNG states, the history and the run's timings so far, committed by
``state.json``: every file is written under a new name before ``state.json`` points to it, so a process killed at
any moment leaves the previous epoch's checkpoint complete.
"""

from __future__ import annotations

import dataclasses
import json
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
    """Writes the checkpoint after every epoch and removes the files it no longer references.

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

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self.history.append({k: float(v) for k, v in (logs or {}).items()})
        model_file = f"epoch-{done:04d}.keras"
        with files.atomic_file(self.folder / model_file) as tmp:
            self.model.save(tmp)
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


def resume(folder: Path, optimizer: keras.optimizers.Optimizer, safe_mode: bool = True) -> Resumed:
    """Load the last checkpoint of ``folder`` (a run's ``checkpoints/``).

    The model is loaded without its optimizer, compiled with ``optimizer`` (as the run made it), the optimizer's
    variables are built and the checkpoint's weights read again, optimizer slots included. The ``.keras`` file
    does not restore the dropout layers' ``SeedGenerator`` states: ``state.json`` holds them.
    """
    state = json.loads((folder / STATE).read_text())
    path = folder / state["checkpoint"]
    interpreter = runs.load_keras(path, safe_mode, compile=False)
    interpreter.compile(optimizer=optimizer)
    interpreter.optimizer.build(interpreter.head_variables)
    interpreter.load_weights(path)
    seeds = state.get("seed_states")
    if seeds is not None:
        variables = seed_states(interpreter)
        if len(variables) != len(seeds):
            raise ValueError(f"{str(path)!r}: {len(variables)} dropout RNG states, the checkpoint has {len(seeds)}")
        for variable, value in zip(variables, seeds, strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    best_weights = None
    if state.get("best_weights"):
        with np.load(folder / state["best_weights"]) as saved:
            best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    history = list(state.get("history", []))
    seconds = dict(state.get("seconds", {}))
    return Resumed(interpreter, state["epochs_done"], history, state.get("early_stopping"), best_weights, seconds)


def run_seconds(earlier: dict, session: dict) -> dict:
    """A run's timings over its sessions: this ``session``'s plus the ``earlier`` ones' (a resumed checkpoint's
    :attr:`Resumed.seconds`), key by key; the keys are the session's."""
    return {key: earlier.get(key, 0.0) + value for key, value in session.items()}


def history_table(history: list[dict]) -> dict:
    """Per-epoch logs -> ``{metric: [value per epoch]}`` (NaN where an epoch lacks a metric)."""
    keys = sorted({k for logs in history for k in logs})
    return {k: [logs.get(k, float("nan")) for logs in history] for k in keys}
