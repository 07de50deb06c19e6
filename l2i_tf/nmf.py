"""Sparse NMF (Le Roux, Weninger & Hershey 2015) in TensorFlow: settings, in-memory and streamed factorisation.

Model: ``X ≈ H W̄ᵀ`` with ``X [frames, F] >= 0`` (log1p magnitudes), ``H [frames, K] >= 0`` and
``W̄ = W / ||W||`` (every column of ``W [F, K]`` divided by its L2 norm *inside* the objective)::

    C(W, H) = D_β(X | H W̄ᵀ) + sparsity · Σ H

with ``D_2 = ½‖·‖²_F`` (Euclidean, the default) and ``D_1`` the generalised KL divergence. The updates are the
multiplicative ones of "Sparse NMF – half-baked or well done?" (Le Roux et al. 2015, eqs. 20-21): the H update is the
usual one with ``sparsity`` added to its denominator, the W update uses the gradient of C through the normalisation,
``W ← W̄ ⊙ (P + W̄ ⊙ 1ᵀ(Q ⊙ W̄)) / (Q + W̄ ⊙ 1ᵀ(P ⊙ W̄))`` with ``P = (X ⊙ Λ^{β-2})ᵀ H`` and ``Q = (Λ^{β-1})ᵀ H``,
``Λ = H W̄ᵀ``, then ``W`` is renormalised.

For β = 2 nothing of size frames × F is ever formed: ``Q = W̄ (HᵀH)``, the H denominator is ``H (W̄ᵀW̄)``, and the
objective is ``½‖X‖² - Σ W̄ ⊙ XᵀH + ½ Σ (W̄ᵀW̄) ⊙ (HᵀH)``, read off products the updates need anyway. An iteration
therefore costs two frames × F × K products (``X W̄`` and ``Xᵀ H``), which are then reused by ``h_steps`` H updates
and ``w_steps`` W updates (reusing the products is the acceleration of Gillis & Glineur 2012, "Accelerated
multiplicative updates and hierarchical ALS algorithms for NMF"). The H steps provably never increase the objective;
the normalised W step is a heuristic MU step (Le Roux et al.) that has not increased it in any of our runs (the tests
check it). All-zero frames (digital silence) are dropped before factorising: their optimal activations are exactly 0
for any W, and with the H-then-W update order the first H update sets them to 0, so dropping them changes no iterate
on the other frames.

Internally the matrices are held transposed (``V = Xᵀ [F, frames]``, ``H [K, frames]``), the layout whose products
were fastest on the 2-core CPU we measured (TF 2.17, oneDNN). The learnt dictionary as a saved artefact, and its Keras
decoder, live in :mod:`l2i_tf.dictionary`."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from l2i_tf.settings import Settings

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")

Callback = Callable[[int, float], None]


@dataclasses.dataclass(frozen=True)
class NMFConfig(Settings):
    """Sparse NMF settings.

    Attributes:
        k: number of components K.
        sparsity: L1 weight on H (per activation, in X's units). Default 0.3, measured on the
            ESC-10 training folds (513 × 76 104 frames, K=100, 100 iterations): sparsity 0 →
            relative error ‖X − HW̄ᵀ‖/‖X‖ 0.254 with 47 of 100 components above 1 % of the frame's
            largest activation; 0.1 → 0.272 / 33; 0.3 → 0.298 / 24; 1.0 → 0.345 / 15;
            3.0 → 0.428 / 12. 0.3 halves the active components per frame for +17 % error;
            beyond it each halving costs far more.
        beta: β of the β-divergence, in [1, 2]: 2 = Euclidean, 1 = generalised KL.
        iterations: full passes over the data; each takes the two frames-sized products and
            then ``h_steps`` H updates and ``w_steps`` W updates, which reuse them.
        h_steps: H updates per iteration (each costs K² per frame, ~1/5 of a frames-sized product
            at K=100, F=513).
        w_steps: W updates per iteration (each costs F·K², nothing next to the products). The
            normalisation-aware W step is damped; on ESC-10 (K=100, sparsity 0, 50 iterations)
            1/1 steps end 27 % above sklearn's objective, 1/20 10 % below it, 2/10 22 % below.
        seed: seeds the initial W (and in-memory H); same seed and data → same dictionary.
        batch_frames: frames per block when streaming from a ``tf.data.Dataset``.
        stream_h_iterations: MU updates of each block's H per pass when streaming.
        precision: dtype of the two frames-sized products. ``"bfloat16"`` (inputs rounded to
            bfloat16, accumulation in float32) halves their time on CPUs with AMX/AVX512-BF16
            and on GPUs; everything else stays float32. ``"float32"`` is exact and portable.
    """

    k: int = 100
    sparsity: float = 0.3
    beta: float = 2.0
    iterations: int = 200
    seed: int = 0
    h_steps: int = 2
    w_steps: int = 10
    batch_frames: int = 8192
    stream_h_iterations: int = 20
    precision: str = "float32"

    def __post_init__(self):
        for name in ("k", "iterations", "h_steps", "w_steps", "batch_frames", "stream_h_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"NMFConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"NMFConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not (isinstance(self.sparsity, int | float) and math.isfinite(self.sparsity) and self.sparsity >= 0):
            raise ValueError(f"NMFConfig.sparsity must be a finite number >= 0, got {self.sparsity!r}")
        if not (isinstance(self.beta, int | float) and 1.0 <= self.beta <= 2.0):
            raise ValueError(f"NMFConfig.beta must be in [1, 2] (2 = Euclidean, 1 = KL), got {self.beta!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"NMFConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")


# ---------------------------------------------------------------- input checks


def as_matrix(X, name: str = "X") -> tf.Tensor:
    """``[frames, F]`` non-negative finite -> float32 tensor; ValueError quoting what is wrong."""
    X = tf.cast(tf.convert_to_tensor(X), tf.float32)
    if X.shape.rank != 2:
        raise ValueError(f"{name} must be [frames, F], got shape {X.shape}")
    _check_values(X, name)
    return X


def _check_values(X: tf.Tensor, name: str) -> None:
    if not bool(tf.reduce_all(tf.math.is_finite(X))):
        bad = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(X), tf.int64)))
        raise ValueError(f"{name} must be finite; it holds {bad} NaN/inf value(s)")
    low = float(tf.reduce_min(X)) if tf.size(X) > 0 else 0.0
    if low < 0:
        raise ValueError(f"{name} must be non-negative (NMF), got a minimum of {low!r}")


def _check_k(k: int, frames: int, num_bins: int) -> None:
    if k > frames:
        raise ValueError(f"K={k} components need at least K frames; the data has {frames} (non-silent) frame(s)")
    if k > num_bins:
        log.warning("K=%d exceeds the %d frequency bins: the dictionary is overcomplete", k, num_bins)


# ---------------------------------------------------------------- TensorFlow kernels


def _normalize(W: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(W, tf.norm(W, axis=0, keepdims=True))


def _mm(a, b, lowp: bool, transpose_a=False, transpose_b=False):
    """Matrix product, optionally with bfloat16 inputs (float32 result)."""
    if lowp:
        if a.dtype != tf.bfloat16:
            a = tf.cast(a, tf.bfloat16)
        if b.dtype != tf.bfloat16:
            b = tf.cast(b, tf.bfloat16)
        return tf.cast(tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b), tf.float32)
    return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)


def _repeat(count, step, x):
    """``step`` applied ``count`` (a scalar tensor) times to ``x``, in the graph."""
    return tf.while_loop(lambda i, y: i < count, lambda i, y: (i + 1, step(y)), (tf.constant(0), x))[1]


def _h_update_euclid(VW, WtW, H, mu):
    """One sparse MU step of H [K, n] for β=2 given ``VW = W̄ᵀV [K, n]`` and ``W̄ᵀW̄``."""
    return H * tf.math.divide_no_nan(VW, tf.matmul(WtW, H) + mu)


def _w_update(W, P, Q):
    """Normalisation-aware MU step of W̄ [F, K] (Le Roux et al. 2015, eq. 21), renormalised."""
    num = P + W * tf.reduce_sum(Q * W, axis=0, keepdims=True)
    den = Q + W * tf.reduce_sum(P * W, axis=0, keepdims=True)
    return _normalize(W * tf.math.divide_no_nan(num, den))


def _euclid_objective(half_sq_norm_v, W, VHt, WtW, HHt, mu, h_sum):
    """½‖V − W̄H‖² + μ Σ H from the products (float64 sums)."""
    cross = tf.reduce_sum(tf.cast(W * VHt, tf.float64))
    quad = tf.reduce_sum(tf.cast(WtW * HHt, tf.float64))
    return half_sq_norm_v - cross + 0.5 * quad + tf.cast(mu, tf.float64) * tf.cast(h_sum, tf.float64)


def _beta_divergence(V, Lam, beta: float):
    """Σ d_β(V | Λ) in float64 (elementwise; β=2: ½(v−λ)²; β=1: v log(v/λ) − v + λ)."""
    if beta == 2.0:
        d = 0.5 * tf.square(V - Lam)
    elif beta == 1.0:
        d = tf.math.xlogy(V, V) - tf.math.xlogy(V, Lam) - V + Lam
    else:
        d = (tf.pow(V, beta) + (beta - 1) * tf.pow(Lam, beta) - beta * V * tf.pow(Lam, beta - 1)) / (beta * (beta - 1))
    return tf.reduce_sum(tf.cast(d, tf.float64))


_EPS = 1e-9  # added to Λ = W̄H where it is divided by or raised to a negative power


def _beta_terms(V, W, H, beta: float, lowp: bool):
    """``V ⊙ Λ^{β-2}`` and ``Λ^{β-1}`` (None when it is all ones, β = 1), Λ = W̄H + ε."""
    Lam = _mm(W, H, lowp) + _EPS
    if beta == 1.0:
        return V / Lam, None, Lam
    return V * tf.pow(Lam, beta - 2), tf.pow(Lam, beta - 1), Lam


def _h_update_beta(V, W, H, mu, beta: float, lowp: bool):
    R, L1, _ = _beta_terms(V, W, H, beta, lowp)
    num = _mm(W, R, lowp, transpose_a=True)
    den = tf.reduce_sum(W, axis=0)[:, None] if L1 is None else _mm(W, L1, lowp, transpose_a=True)
    return H * tf.math.divide_no_nan(num, den + mu)


def _w_stats_beta(V, W, H, beta: float, lowp: bool):
    """P = (V ⊙ Λ^{β-2}) Hᵀ and Q = Λ^{β-1} Hᵀ, both [F, K]."""
    R, L1, _ = _beta_terms(V, W, H, beta, lowp)
    P = _mm(R, H, lowp, transpose_b=True)
    if L1 is None:
        Q = tf.broadcast_to(tf.reduce_sum(H, axis=1)[None, :], tf.shape(P))
    else:
        Q = _mm(L1, H, lowp, transpose_b=True)
    return P, Q


class _Kernels:
    """tf.functions for one (β, precision): in-memory iterations, per-block statistics, H solves."""

    def __init__(self, beta: float, lowp: bool):
        self.beta = float(beta)
        self.lowp = lowp
        spec = [tf.TensorSpec([None, None], tf.float32)]
        scalar = [tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float64)]
        v_lp = [tf.TensorSpec([None, None], tf.bfloat16 if lowp else tf.float32)]
        steps = [tf.TensorSpec([], tf.int32)] * 2
        mu_steps = [tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)]
        # no AutoGraph: the loops are tf.while_loop already (converting the kernels took ~0.3 s of CPU a process)
        graph = functools.partial(tf.function, autograph=False)
        self.iterate = graph(self._iterate, input_signature=spec + v_lp + spec * 2 + scalar + steps)
        self.block_stats = graph(self._block_stats, input_signature=spec * 2 + mu_steps)
        self.solve = graph(self._solve_h, input_signature=spec * 3 + mu_steps)

    # One in-memory iteration: h_steps H updates, then w_steps W updates; objective at the new (W, H).
    def _iterate(self, V, Vlp, W, H, mu, half_sq_norm_v, h_steps, w_steps):
        if self.beta == 2.0:
            WtW = tf.matmul(W, W, transpose_a=True)
            WtV = _mm(W, Vlp, self.lowp, transpose_a=True)
            H = _repeat(h_steps, lambda h: _h_update_euclid(WtV, WtW, h, mu), H)
            VHt = _mm(Vlp, H, self.lowp, transpose_b=True)
            HHt = tf.matmul(H, H, transpose_b=True)
            W = _repeat(w_steps, lambda w: _w_update(w, VHt, tf.matmul(w, HHt)), W)
            WtW = tf.matmul(W, W, transpose_a=True)
            objective = _euclid_objective(half_sq_norm_v, W, VHt, WtW, HHt, mu, tf.reduce_sum(H))
        else:
            H = _repeat(h_steps, lambda h: _h_update_beta(V, W, h, mu, self.beta, self.lowp), H)
            W = _repeat(w_steps, lambda w: _w_update(w, *_w_stats_beta(V, w, H, self.beta, self.lowp)), W)
            objective = self._beta_objective(V, W, H, mu)
        return W, H, objective

    def _beta_objective(self, V, W, H, mu):
        Lam = tf.matmul(W, H) + _EPS
        return _beta_divergence(V, Lam, self.beta) + tf.cast(mu, tf.float64) * tf.cast(tf.reduce_sum(H), tf.float64)

    # ``iterations`` sparse MU updates of H on a fixed W.
    def _solve_h(self, V, W, H, mu, iterations):
        if self.beta == 2.0:
            WtW = tf.matmul(W, W, transpose_a=True)
            VW = _mm(W, V, self.lowp, transpose_a=True)
            return _repeat(iterations, lambda h: _h_update_euclid(VW, WtW, h, mu), H)
        return _repeat(iterations, lambda h: _h_update_beta(V, W, h, mu, self.beta, self.lowp), H)

    # Streaming: solve one block's H from a fixed start, return the W-update statistics and its objective.
    def _block_stats(self, Xb, W, mu, iterations):
        V = tf.transpose(Xb)  # [F, n]
        H = _initial_h_constant(V, W)
        H = self._solve_h(V, W, H, mu, iterations)
        if self.beta == 2.0:
            VHt = _mm(V, H, self.lowp, transpose_b=True)
            HHt = tf.matmul(H, H, transpose_b=True)
            WtW = tf.matmul(W, W, transpose_a=True)
            half = 0.5 * tf.reduce_sum(tf.square(tf.cast(V, tf.float64)))
            objective = _euclid_objective(half, W, VHt, WtW, HHt, mu, tf.reduce_sum(H))
            return VHt, HHt, objective
        P, Q = _w_stats_beta(V, W, H, self.beta, self.lowp)
        return P, Q, self._beta_objective(V, W, H, mu)


@functools.cache  # caches traced functions only: results never depend on it
def _kernels(beta: float, precision: str) -> _Kernels:
    return _Kernels(float(beta), precision == "bfloat16")


def _initial_w(num_bins: int, k: int, seed: int) -> tf.Tensor:
    """Seeded uniform [F, K] in [0.1, 1), unit-norm columns."""
    W = tf.random.stateless_uniform([num_bins, k], seed=[seed, 1], minval=0.1, maxval=1.0)
    return _normalize(W)


def _initial_h_random(V: tf.Tensor, W: tf.Tensor, seed: int) -> tf.Tensor:
    """Seeded uniform [K, n], scaled so that mean(W̄H) = mean(V)."""
    k, n = W.shape[1], tf.shape(V)[1]
    H = tf.random.stateless_uniform(tf.stack([k, n]), seed=[seed, 2], minval=0.1, maxval=1.0)
    scale = tf.reduce_mean(V) / (0.55 * tf.reduce_mean(tf.reduce_sum(W, axis=1)))
    return H * scale


def _initial_h_constant(V: tf.Tensor, W: tf.Tensor) -> tf.Tensor:
    """Constant [K, n] with mean(W̄H) = mean(V) (deterministic start for per-block solves)."""
    scale = tf.reduce_mean(V) / tf.reduce_mean(tf.reduce_sum(W, axis=1))
    return tf.fill(tf.stack([tf.shape(W)[1], tf.shape(V)[1]]), scale + 1e-6)


# ---------------------------------------------------------------- public functions


def objective(X, W, H, sparsity: float = 0.0, beta: float = 2.0, normalize: bool = False, block: int = 16384) -> float:
    """``D_β(X | H Wᵀ) + sparsity · Σ H`` in float64, computed directly in blocks of frames.

    Args:
        X: ``[frames, F]``.
        W: ``[F, K]`` (used as given unless ``normalize``).
        H: ``[frames, K]``.

    Returns:
        The objective as a Python float (β = 2: ``½‖X − HWᵀ‖² + sparsity·ΣH``).
    """
    X, H = np.asarray(X), np.asarray(H)
    W = np.asarray(W, dtype=np.float64)
    if normalize:
        W = W / np.maximum(np.linalg.norm(W, axis=0, keepdims=True), 1e-30)
    if X.shape[0] != H.shape[0] or X.shape[1] != W.shape[0] or H.shape[1] != W.shape[1]:
        raise ValueError(f"shapes do not agree: X {X.shape}, W {W.shape}, H {H.shape}")
    total = 0.0
    for start in range(0, X.shape[0], block):
        Xb = tf.constant(X[start : start + block], tf.float64)
        Lam = tf.constant(H[start : start + block], tf.float64) @ tf.constant(W.T)
        if beta != 2.0:
            Lam = Lam + _EPS
        total += float(_beta_divergence(Xb, Lam, float(beta)))
    return total + sparsity * float(np.sum(H, dtype=np.float64))


def factorize(X, config: NMFConfig = NMFConfig(), callback: Callback | None = None, initial=None):
    """In-memory sparse NMF of ``X [frames, F]``.

    Args:
        X: non-negative, finite ``[frames, F]`` (numpy or tf).
        config: the settings.
        callback: called as ``callback(iteration, objective)`` after each iteration (1-based).
        initial: optional ``(W [F, K], H [frames, K])`` start (W's columns are normalised here);
            default: seeded uniform matrices (``config.seed``). Column scales of W move into H.

    Returns:
        ``(W [F, K] unit-norm columns, H [frames, K], history)`` as float32 numpy arrays and a
        list of ``config.iterations`` objectives, each at the (W, H) after that iteration.
    """
    X = as_matrix(X)
    frames, num_bins = X.shape
    active_idx = tf.where(tf.reduce_max(X, axis=1) > 0)[:, 0]
    V = tf.gather(X, active_idx)
    del X  # keep one frames-sized copy alive, not three
    V = tf.transpose(V)  # [F, n] non-silent frames
    _check_k(config.k, int(V.shape[1]), num_bins)
    kernels = _kernels(config.beta, config.precision)
    lowp = config.precision == "bfloat16"
    Vlp = tf.cast(V, tf.bfloat16) if lowp else V
    if initial is None:
        W = _initial_w(num_bins, config.k, config.seed)
        H = _initial_h_random(V, W, config.seed)
    else:
        W, H = (tf.constant(np.asarray(a, dtype=np.float32)) for a in initial)
        if W.shape != (num_bins, config.k) or H.shape != (frames, config.k):
            raise ValueError(
                f"initial must be (W [{num_bins}, {config.k}], H [{frames}, {config.k}]), got {W.shape}, {H.shape}"
            )
        _check_values(W, "initial W")
        _check_values(H, "initial H")
        norms = tf.norm(W, axis=0)  # move W's scale into H so that W̄H = WH at the start
        W, H = _normalize(W), tf.transpose(tf.gather(H * norms, active_idx))
    mu = tf.constant(config.sparsity, tf.float32)
    half = 0.5 * tf.reduce_sum(tf.cast(tf.reduce_sum(tf.square(V), axis=1), tf.float64))  # no float64 copy of V
    h_steps, w_steps = tf.constant(config.h_steps), tf.constant(config.w_steps)
    history = []
    for iteration in range(1, config.iterations + 1):
        W, H, value = kernels.iterate(V, Vlp, W, H, mu, half, h_steps, w_steps)
        history.append(float(value))
        if callback is not None:
            callback(iteration, history[-1])
        if iteration == 1 or iteration % 50 == 0 or iteration == config.iterations:
            log.info("NMF iteration %d/%d: objective %.6g", iteration, config.iterations, history[-1])
    full_h = tf.scatter_nd(active_idx[:, None], tf.transpose(H), [frames, config.k])
    return W.numpy(), full_h.numpy(), history


def solve_activations(X, W, sparsity: float = 0.0, iterations: int = 200, beta: float = 2.0, precision="float32"):
    """Activations of ``X [frames, F]`` on a fixed dictionary ``W [F, K]`` (columns normalised here).

    Runs ``iterations`` sparse MU updates of H from a constant start, minimising
    ``D_β(X | H W̄ᵀ) + sparsity · Σ H``. Returns float32 numpy ``H [frames, K]``.
    """
    X = as_matrix(X)
    W = tf.convert_to_tensor(np.asarray(W, dtype=np.float32))
    if W.shape.rank != 2 or W.shape[0] != X.shape[1]:
        raise ValueError(f"W must be [F={X.shape[1]}, K], got shape {W.shape}")
    _check_values(W, "W")
    NMFConfig(k=int(W.shape[1]), sparsity=sparsity, beta=beta, iterations=iterations, precision=precision)
    W = _normalize(W)
    V = tf.transpose(X)
    H = _initial_h_constant(V, W)
    kernels = _kernels(beta, precision)
    H = kernels.solve(V, W, H, tf.constant(sparsity, tf.float32), tf.constant(iterations, tf.int32))
    return tf.transpose(H).numpy()


def factorize_stream(dataset: tf.data.Dataset, config: NMFConfig, num_bins: int, callback: Callback | None = None):
    """Sparse NMF of the frames a ``tf.data.Dataset`` yields in blocks ``[frames, F=num_bins]``, re-read every pass.

    Memory stays bounded by one block plus O(F·K + K²): there is no room for a persistent H, so every
    pass solves each block's H afresh with ``config.stream_h_iterations`` MU updates on the current W,
    accumulates the W update's sufficient statistics over the pass (β=2: ``XᵀH [F, K]`` and ``HᵀH [K, K]``;
    other β: ``P``, ``Q [F, K]``, which depend on W only through the W̄ held fixed during the pass) and
    then takes one normalisation-aware W step. This is exactly the full-batch W step for those H, so the
    method is batch alternating minimisation with inexact H solves; unlike per-block (online) W updates
    it needs no learning-rate or forgetting schedule and is deterministic. Returns ``(W [F, K] unit-norm
    columns, history, frames)``: per pass, the objective at (the W before the step, the pass's H); frames per pass.
    """
    kernels = _kernels(config.beta, config.precision)
    W = _initial_w(num_bins, config.k, config.seed)
    mu = tf.constant(config.sparsity, tf.float32)
    inner = tf.constant(config.stream_h_iterations, tf.int32)
    history, frames = [], 0
    for iteration in range(1, config.iterations + 1):
        P = Q = None
        value = 0.0
        for block in dataset:
            if not isinstance(block, tf.Tensor):
                raise ValueError(f"the dataset must yield X blocks [frames, F], got a {type(block).__name__}")
            block = tf.cast(block, tf.float32)
            if iteration == 1:
                if block.shape.rank != 2 or block.shape[1] != num_bins:
                    raise ValueError(f"dataset blocks must be [frames, F={num_bins}], got shape {block.shape}")
                _check_values(block, "dataset block")
                frames += int(block.shape[0])
            if block.shape[0] == 0:
                continue
            p, q, v = kernels.block_stats(block, W, mu, inner)
            P, Q = (p, q) if P is None else (P + p, Q + q)
            value += float(v)
        if iteration == 1:
            if P is None:
                raise ValueError("the dataset yielded no frames")
            _check_k(config.k, frames, num_bins)
        if config.beta == 2.0:
            Q = tf.matmul(W, Q)  # HHᵀ accumulated -> Q = W̄ (HHᵀ)
        W = _w_update(W, P, Q)
        history.append(value)
        if callback is not None:
            callback(iteration, value)
        if iteration == 1 or iteration % 10 == 0 or iteration == config.iterations:
            log.info("streaming NMF pass %d/%d: objective %.6g", iteration, config.iterations, value)
    return W.numpy(), history, frames
