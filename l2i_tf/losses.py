"""The interpreter's loss terms as plain functions: fidelity to the classifier, reconstruction, sparsity."""

from __future__ import annotations

import tensorflow as tf


def fidelity_loss(classifier_logits, interpreter_logits, multilabel: bool = False, temperature: float = 1.0):
    """Cross-entropy of Θ's output against f's output distribution (softmax), or BCE against f's sigmoids.

    Both ``[batch, C]`` logits; returns the batch mean. f's distribution is a soft target
    (no argmax), so Θ learns f's whole output, not only its decision. ``temperature`` > 1
    divides both logits first and multiplies the loss by T² (Hinton et al.'s distillation),
    which weighs the ordering of f's smaller logits more.
    """
    classifier_logits = tf.stop_gradient(tf.cast(classifier_logits, tf.float32)) / temperature
    interpreter_logits = interpreter_logits / temperature
    if multilabel:
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(classifier_logits), logits=interpreter_logits)
        return tf.reduce_mean(per) * temperature**2
    targets = tf.nn.softmax(classifier_logits)
    ce = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=interpreter_logits)
    return tf.reduce_mean(ce) * temperature**2


def reconstruction_loss(x, x_hat, mask=None):
    """Mean squared error ``mean((X - X̂)²)`` over batch, frames and bins (``mask [batch, T]``: valid frames)."""
    err = tf.square(x - x_hat)
    if mask is None:
        return tf.reduce_mean(err)
    mask = tf.cast(mask, err.dtype)[:, :, None]
    return tf.reduce_sum(err * mask) / (tf.reduce_sum(mask) * tf.cast(tf.shape(err)[-1], err.dtype) + 1e-9)


def sparsity_loss(h, mask=None):
    """Mean absolute activation ``mean(|H|)`` (the L1 penalty, as a mean so β does not depend on T or K)."""
    a = tf.abs(h)
    if mask is None:
        return tf.reduce_mean(a)
    mask = tf.cast(mask, a.dtype)[:, :, None]
    return tf.reduce_sum(a * mask) / (tf.reduce_sum(mask) * tf.cast(tf.shape(a)[-1], a.dtype) + 1e-9)


def l2i_loss(
    classifier_logits, interpreter_logits, x, x_hat, h, alpha, beta, multilabel=False, mask=None, temperature=1.0
):
    """``L = L_FID + α·mean((X − W·Hᵀ)²) + β·mean(|H|)``; returns a dict of the total and each term."""
    fid = fidelity_loss(classifier_logits, interpreter_logits, multilabel, temperature)
    rec = reconstruction_loss(x, x_hat, mask)
    spa = sparsity_loss(h, mask)
    return {"loss": fid + alpha * rec + beta * spa, "fidelity_loss": fid, "reconstruction": rec, "sparsity": spa}
