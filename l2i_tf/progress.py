"""Progress lines of the training jobs (the data, the dictionary, the features, each epoch), told to a ``progress``
callable (``l2i-tf train`` and ``train-classifier`` print them) or, without one, to the log at INFO."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import keras

from l2i_tf.mixtures import SPLIT_NAMES

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
"""Takes one progress line (no newline)."""

_SPLIT_WORDS = dict(zip(SPLIT_NAMES, ("training", "validation", "test"), strict=True))


def teller(progress: Progress | None) -> Progress:
    """``progress``, or the log at INFO when None: a library caller sees the lines only when logging asks for them."""
    return progress or log.info


def per_split(counts: Iterable[int], noun: str) -> str:
    """``"9 training, 3 validation, 3 test clips"`` from counts in :data:`~l2i_tf.mixtures.SPLIT_NAMES` order."""
    words = [f"{count} {_SPLIT_WORDS[name]}" for name, count in zip(SPLIT_NAMES, counts, strict=True)]
    return f"{', '.join(words)} {noun}"


def epoch_line(epoch: int, epochs: int, loss: float | None, validation: str, seconds: float, note: str = "") -> str:
    """``"epoch 3/40: loss 1.234  validation fidelity top-1 92.5%  4.1 s  best"`` (``epoch`` counts from 1)."""
    shown = "n/a" if loss is None else f"{loss:.3f}"
    line = f"epoch {epoch}/{epochs}: loss {shown}  validation {validation}  {seconds:.1f} s"
    return f"{line}  {note}" if note else line


def resume_line(epochs_done: int, epochs: int) -> str:
    """Where a resumed run goes on, after ``epochs_done`` of at most ``epochs`` epochs (0: none was checkpointed)."""
    if not epochs_done:
        return f"resuming from the start of training (no epoch was checkpointed): epoch 1/{epochs} next"
    if epochs_done >= epochs:
        return f"resuming after epoch {epochs_done}/{epochs}: no epoch left to train"
    return f"resuming after epoch {epochs_done}/{epochs} (its checkpoint): epoch {epochs_done + 1}/{epochs} next"


def fidelity(logs: dict, multilabel: bool) -> str:
    """The epoch's validation fidelity as the final report words it: top-1 in %, or micro-AUPRC (multi-label)."""
    if multilabel:
        value = logs.get("val_fidelity_micro_auprc")
        return f"fidelity micro-AUPRC {'n/a' if value is None else format(float(value), '.3f')}"
    value = logs.get("val_fidelity_top1")
    return f"fidelity top-1 {'n/a' if value is None else format(float(value), '.1%')}"


class EpochLines(keras.callbacks.Callback):
    """One line per epoch of the interpreter's training: the epoch (of at most ``epochs``), the training loss, the
    validation fidelity, the epoch's time (validation and checkpoint included) and what early stopping made of it
    (the best so far; the epochs since the fidelity last rose, of the patience; stopping). At the end, the epoch
    whose weights are kept. Goes after ``early_stopping`` (it reads its verdict on the epoch) and the checkpoint."""

    def __init__(self, say: Progress, multilabel: bool, early_stopping: keras.callbacks.EarlyStopping):
        super().__init__()
        self.say = say
        self.multilabel = multilabel
        self.early_stopping = early_stopping
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        stopping = self.early_stopping
        notes = []
        if stopping.best_epoch == epoch:
            notes.append("best" if not stopping.wait else "best (source tie-break)")
        if stopping.wait:
            notes.append(f"no rise for {stopping.wait}/{stopping.patience} epochs")
        if self.model.stop_training:
            notes.append("early stopping")
        loss = float(logs["loss"]) if "loss" in logs else None
        seconds = time.perf_counter() - self.start
        validation = fidelity(logs, self.multilabel)
        self.say(epoch_line(epoch + 1, self.params["epochs"], loss, validation, seconds, ", ".join(notes)))

    def on_train_end(self, logs=None):
        if self.early_stopping.best_weights is not None:
            self.say(f"kept the weights of epoch {self.early_stopping.best_epoch + 1}, the best on validation")
