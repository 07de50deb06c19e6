"""Evaluation metrics: fidelity of the interpreter to the classifier (top-k, AUPRC, max-F1)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve


def top_k_fidelity(classifier_logits, interpreter_logits, k: int) -> float:
    """Share of clips whose classifier-predicted class is among the interpreter's top ``k``.

    Ties count in the class's favour: a class is in the top k when fewer than k classes
    score strictly higher.
    """
    classifier_logits = np.asarray(classifier_logits)
    interpreter_logits = np.asarray(interpreter_logits)
    if classifier_logits.shape != interpreter_logits.shape or classifier_logits.ndim != 2:
        raise ValueError(
            f"expected two [clips, classes] arrays of one shape, got {classifier_logits.shape} "
            f"and {interpreter_logits.shape}"
        )
    if len(classifier_logits) == 0:
        raise ValueError("no clips to compute fidelity on")
    predicted = classifier_logits.argmax(axis=1)
    score = interpreter_logits[np.arange(len(predicted)), predicted]
    higher = (interpreter_logits > score[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def multilabel_fidelity(classifier_logits, interpreter_logits, threshold: float = 0.5) -> dict:
    """Θ's sigmoid outputs against f's thresholded outputs: macro/micro AUPRC and max-F1 (micro)."""
    target = (1 / (1 + np.exp(-np.asarray(classifier_logits))) > threshold).astype(int)
    scores = 1 / (1 + np.exp(-np.asarray(interpreter_logits)))
    present = target.sum(axis=0) > 0
    precision, recall, _ = precision_recall_curve(target.ravel(), scores.ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return {
        "macro_auprc": float(average_precision_score(target[:, present], scores[:, present], average="macro")),
        "micro_auprc": float(average_precision_score(target.ravel(), scores.ravel())),
        "max_f1": float(f1.max()),
        "classes_present": int(present.sum()),
    }


def fidelity(classifier_logits, interpreter_logits, multilabel: bool = False, ks=(1, 3, 5)) -> dict:
    """Fidelity as in the paper: top-k (multi-class) or AUPRC / max-F1 (multi-label)."""
    if multilabel:
        return multilabel_fidelity(classifier_logits, interpreter_logits)
    num_classes = np.asarray(classifier_logits).shape[1]
    return {f"top{k}": top_k_fidelity(classifier_logits, interpreter_logits, k) for k in ks if k <= num_classes}
