"""Loss terms as plain functions: the interpreter's (fidelity, reconstruction, sparsity) and the FLINT and VIBI
baselines'."""

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


SOURCE_THRESHOLD = 0.3
"""τ the source-consistency term's soft selection is centred on (the τ explanations are judged at)."""
SOURCE_SHARPNESS = 0.1
"""Width of that soft selection: ``sigmoid((r − τ) / SOURCE_SHARPNESS)``."""


def soft_selection(contributions, classes, threshold: float = SOURCE_THRESHOLD, sharpness: float = SOURCE_SHARPNESS):
    """A differentiable version of "components with relevance > τ" for class ``classes`` [B]: ``sigmoid((r − τ) /
    sharpness)`` [B, K], with ``r`` Θ's normalised relevance (:func:`l2i_tf.explain.class_relevance`)."""
    contribution = tf.gather(contributions, tf.cast(classes, tf.int32), axis=2, batch_dims=1)  # [B, K]
    scale = tf.reduce_max(tf.abs(contribution), axis=1, keepdims=True)
    return tf.sigmoid((tf.math.divide_no_nan(contribution, scale) - threshold) / sharpness)


def source_consistency_loss(
    h, contributions, classes, x, source_x, weight, W, threshold=SOURCE_THRESHOLD, reconstruction=None
):
    """How far the interpretation of class ``classes`` is from that class's source, on training mixtures whose
    sources are known: ``Σ (M_c ⊙ |S_x| − |S_src|)² / Σ |S_x|²`` per example in the linear-magnitude domain, with
    ``M_c`` the NMF soft mask of :func:`soft_selection` (``W·(H ⊙ s)ᵀ / W·Hᵀ``), as a ``weight``-ed mean.

    Args:
        h: H ``[B, T, K]``; contributions: Θ's ``[B, K, C]``; classes: int ``[B]``, the classifier's decision.
        x, source_x: ``log1p|S|`` of the input and of the decided class's source ``[B, T, F]``.
        weight: ``[B]``: 1 where the decided class is one of the sources, 0 elsewhere (no source to match).
        W: the dictionary ``[F, K]``.
        reconstruction: ``H·Wᵀ`` when the caller has it already (the decoder's output), else computed here.
    """
    magnitude, source_magnitude = (tf.math.expm1(tf.nn.relu(v)) for v in (x, source_x))
    return source_consistency(
        h, contributions, classes, magnitude, source_magnitude, weight, W, threshold, reconstruction
    )


def source_consistency(
    h, contributions, classes, magnitude, source_magnitude, weight, W, threshold=SOURCE_THRESHOLD, reconstruction=None
):
    """:func:`source_consistency_loss` from the linear magnitudes ``|S_x|`` and ``|S_src|`` ``[B, T, F]`` (what the
    training pipeline gives, with no log1p and expm1 between)."""
    # only the examples that weigh: a batch's plain clips (no sources: weight 0) cost nothing here
    rows = tf.reshape(tf.where(tf.not_equal(weight, 0)), [-1])
    h, contributions, classes, magnitude, source_magnitude, weight = (
        tf.gather(v, rows) for v in (h, contributions, classes, magnitude, source_magnitude, weight)
    )
    s = soft_selection(contributions, classes, threshold)
    full = (tf.einsum("btk,fk->btf", h, W) if reconstruction is None else tf.gather(reconstruction, rows)) + 1e-8
    kept = tf.einsum("btk,fk->btf", h * s[:, None, :], W)
    error = tf.square(kept / full * magnitude - source_magnitude)
    per = tf.reduce_sum(error, axis=[1, 2]) / (tf.reduce_sum(tf.square(magnitude), axis=[1, 2]) + 1e-8)
    weight = tf.cast(weight, per.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(weight * per), tf.reduce_sum(weight))


# ------------------------------------------------------------------------------------------------ baselines


def attribute_entropy(attributes, eps: float = 1e-8):
    """FLINT's conciseness/diversity term: the mean per-sample entropy of the attributes normalised to sum to 1,
    minus the entropy of their batch mean (nats). Minimal (−log B for B ≤ J) when every sample uses one attribute
    and the batch uses different ones; 0 when every sample uses them all equally, or all use the same one.

    Args:
        attributes: Φ ``[batch, J] >= 0``.
    """
    p = attributes / (tf.reduce_sum(attributes, axis=-1, keepdims=True) + eps)
    per_sample = -tf.reduce_sum(p * tf.math.log(p + eps), axis=-1)
    q = tf.reduce_mean(p, axis=0)
    return tf.reduce_mean(per_sample) + tf.reduce_sum(q * tf.math.log(q + eps))


def flint_loss(classifier_logits, logits, x, x_hat, attributes, weights, multilabel=False):
    """FLINT's post-hoc loss: ``CE(f, h(Φ)) + λ_rec·mean((d(Φ) − X)²) + λ_spa·mean|Φ| + λ_ent·entropy(Φ)``.

    ``weights`` = (λ_rec, λ_spa, λ_ent); returns a dict of the total and each term.
    """
    fid = fidelity_loss(classifier_logits, logits, multilabel)
    rec = reconstruction_loss(x, x_hat)
    spa = tf.reduce_mean(tf.abs(attributes))
    ent = attribute_entropy(attributes)
    total = fid + weights[0] * rec + weights[1] * spa + weights[2] * ent
    return {"loss": total, "fidelity_loss": fid, "reconstruction": rec, "sparsity": spa, "entropy": ent}


def kl_to_uniform(log_probs):
    """``KL(p ‖ uniform) = log N − H(p)`` per row of log-probabilities ``[batch, N]``, batch mean (nats)."""
    n = tf.cast(tf.shape(log_probs)[-1], log_probs.dtype)
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1) + tf.math.log(n))


def vibi_loss(classifier_logits, logits, log_probs, beta, multilabel=False):
    """VIBI's loss: cross-entropy of the approximator against the classifier's prediction (its argmax, or its
    sigmoids > 0.5 for multi-label) ``+ β·KL(p ‖ uniform)`` of the explainer's chunk distribution."""
    classifier_logits = tf.stop_gradient(tf.cast(classifier_logits, tf.float32))
    if multilabel:
        target = tf.cast(classifier_logits > 0.0, tf.float32)
        ce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))
    else:
        target = tf.one_hot(tf.argmax(classifier_logits, axis=-1), tf.shape(logits)[-1])
        ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits))
    kl = kl_to_uniform(log_probs)
    return {"loss": ce + beta * kl, "fidelity_loss": ce, "kl": kl}
