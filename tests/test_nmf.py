"""Tests for l2i_tf.nmf: sparse NMF against known answers and scikit-learn, in memory and streamed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from l2i_tf import nmf
from l2i_tf.audio import STFTConfig

# A tiny STFT config whose num_bins (33) matches the synthetic data below.
TINY_STFT = STFTConfig(sample_rate=8000, frame_length=64, frame_step=16, fft_length=64)
F = TINY_STFT.num_bins
# The history is read off float32 products whose terms are of size ½‖X‖² and cancel down to the
# objective; an iteration may "increase" it by this much of ½‖X‖² from rounding alone (the float64
# objective computed directly from the factors decreases strictly on the same data).
ROUNDING = 1e-6


def planted(frames=400, k=5, noise=0.0, seed=0):
    """X = H0 W0ᵀ (+ noise) with sparse H0 and W0 columns on mostly different bins; returns (X, W0 [F, k])."""
    rng = np.random.default_rng(seed)
    W0 = rng.random((F, k)) * (rng.random((F, k)) < 0.35)
    W0[rng.integers(0, F, k), np.arange(k)] += 1.0  # no empty column
    H0 = rng.random((frames, k)) * 3 * (rng.random((frames, k)) < 0.3)
    X = H0 @ W0.T + noise * rng.random((frames, F))
    return X.astype(np.float32), W0


def assert_monotone(history, X):
    increases = np.diff(np.asarray(history)) / (0.5 * np.sum(np.square(X, dtype=np.float64)))
    assert increases.max() <= ROUNDING, f"objective increased by {increases.max():.3g} of ½‖X‖²"


def test_objective_never_increases_and_factors_are_nonnegative_with_unit_columns():
    X, _ = planted(noise=0.1)
    config = nmf.NMFConfig(k=5, sparsity=0.2, iterations=150)
    W, H, history = nmf.factorize(X, config)
    assert len(history) == 150
    assert_monotone(history, X)
    assert W.shape == (F, 5) and H.shape == (400, 5)
    assert W.min() >= 0 and H.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, rtol=1e-5)
    # The history (read off the update's products) is the objective computed directly.
    assert nmf.objective(X, W, H, sparsity=0.2) == pytest.approx(history[-1], rel=1e-4)


def test_same_seed_gives_identical_dictionary_and_other_seed_does_not():
    X, _ = planted(noise=0.1)
    a = nmf.factorize(X, nmf.NMFConfig(k=5, iterations=20, seed=3))[0]
    b = nmf.factorize(X, nmf.NMFConfig(k=5, iterations=20, seed=3))[0]
    c = nmf.factorize(X, nmf.NMFConfig(k=5, iterations=20, seed=4))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_recovers_planted_dictionary():
    X, W0 = planted(frames=500, k=5)
    W, _, _ = nmf.factorize(X, nmf.NMFConfig(k=5, sparsity=0.01, iterations=300))
    cosine = (W0 / np.linalg.norm(W0, axis=0)).T @ W  # [planted, learnt]
    assert cosine.max(axis=1).min() >= 0.95, cosine.max(axis=1)


def test_larger_sparsity_gives_sparser_activations():
    X, _ = planted(noise=0.05)

    def near_zero_share(sparsity):
        _, H, _ = nmf.factorize(X, nmf.NMFConfig(k=8, sparsity=sparsity, iterations=150))
        return float(np.mean(H < 1e-3 * H.max()))

    shares = [near_zero_share(s) for s in (0.0, 0.5, 2.0)]
    assert shares[0] < shares[1] < shares[2], shares


def test_without_sparsity_matches_sklearn_objective_within_two_percent():
    X, _ = planted(noise=0.2, seed=1)
    k, n = 6, 200
    rng = np.random.default_rng(0)
    avg = np.sqrt(X.mean() / k)
    W0 = (avg * np.abs(rng.standard_normal((F, k)))).astype(np.float32)
    H0 = (avg * np.abs(rng.standard_normal((X.shape[0], k)))).astype(np.float32)
    sk = NMF(n_components=k, solver="mu", beta_loss="frobenius", init="custom", max_iter=n, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        H_sk = sk.fit_transform(X, W=H0.copy(), H=np.ascontiguousarray(W0.T))
    W, H, _ = nmf.factorize(X, nmf.NMFConfig(k=k, sparsity=0.0, iterations=n), initial=(W0, H0))
    ours, theirs = nmf.objective(X, W, H), nmf.objective(X, sk.components_.T, H_sk)
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)


def test_kl_option_decreases_its_objective():
    X, _ = planted(noise=0.1)
    W, H, history = nmf.factorize(X, nmf.NMFConfig(k=5, beta=1.0, sparsity=0.1, iterations=60))
    assert_monotone(history, X)
    assert history[-1] < 0.5 * history[0]
    assert nmf.objective(X, W, H, sparsity=0.1, beta=1.0) == pytest.approx(history[-1], rel=1e-4)


def test_streaming_dictionary_is_close_to_in_memory_one():
    """Tolerance: the streamed W explains the full matrix within 5 % of the in-memory W's objective."""
    X, _ = planted(frames=600, noise=0.1)
    config = nmf.NMFConfig(k=5, sparsity=0.1, iterations=100, batch_frames=128)
    in_memory, _, _ = nmf.factorize(X, config)
    blocks = tf.data.Dataset.from_tensor_slices(X).batch(config.batch_frames)
    streamed, history, frames = nmf.factorize_stream(blocks, config, F)
    assert frames == 600 and len(history) == 100
    np.testing.assert_allclose(np.linalg.norm(streamed, axis=0), 1.0, rtol=1e-5)

    def fit(W):
        return nmf.objective(X, W, nmf.solve_activations(X, W, 0.1, iterations=300), sparsity=0.1)

    assert fit(streamed) <= 1.05 * fit(in_memory), (fit(streamed), fit(in_memory))


def test_solve_activations_recovers_planted_activations_on_known_dictionary():
    X, W0 = planted(k=5)
    H = nmf.solve_activations(X, W0, sparsity=0.0, iterations=500)
    W_unit = W0 / np.linalg.norm(W0, axis=0)
    assert np.linalg.norm(H @ W_unit.T - X) <= 0.05 * np.linalg.norm(X)


@pytest.mark.parametrize(
    "value, message",
    [(-1.5, "minimum of -1.5"), (np.nan, "1 NaN")],
)
def test_rejects_negative_or_nan_input_naming_the_value(value, message):
    X, _ = planted(frames=50)
    X[3, 4] = value
    with pytest.raises(ValueError, match=message):
        nmf.factorize(X, nmf.NMFConfig(k=3, iterations=2))
    with pytest.raises(ValueError, match=message):
        nmf.factorize_stream(tf.data.Dataset.from_tensor_slices(X).batch(16), nmf.NMFConfig(k=3), F)


def test_rejects_more_components_than_frames():
    X, _ = planted(frames=8, noise=0.1)
    with pytest.raises(ValueError, match="K=10 .* 8"):
        nmf.factorize(X, nmf.NMFConfig(k=10, iterations=2))


def test_rejects_bad_config_values():
    with pytest.raises(ValueError, match="-0.1"):
        nmf.NMFConfig(sparsity=-0.1)
    with pytest.raises(ValueError, match="0.5"):
        nmf.NMFConfig(beta=0.5)
    with pytest.raises(ValueError, match="float16"):
        nmf.NMFConfig(precision="float16")
