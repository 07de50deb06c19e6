"""Tests of l2i_tf.explain against hand-computed answers, numpy references and a planted two-source mixture."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import nnls

from l2i_tf import explain
from l2i_tf.audio import STFTConfig, analyze

CONFIG = STFTConfig(sample_rate=16000, frame_length=256, frame_step=64, fft_length=256)
F = CONFIG.num_bins


def snr_db(estimate, reference):
    estimate, reference = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2))


def correlation(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))


def random_problem(batch, num_samples, K=6, C=4, seed=0):
    """Random clips with positive W, H (so H·Wᵀ >> ε everywhere), z and a signed theta."""
    rng = np.random.default_rng(seed)
    T = CONFIG.num_frames(num_samples)
    return dict(
        waveform=rng.normal(scale=0.1, size=(batch, num_samples)).astype(np.float32),
        H=rng.uniform(0.1, 1.0, size=(batch, T, K)).astype(np.float32),
        z=rng.uniform(0.0, 1.0, size=(batch, K)).astype(np.float32),
        W=rng.uniform(0.1, 1.0, size=(F, K)).astype(np.float32),
        theta=rng.normal(size=(K, C)).astype(np.float32),
    )


# --------------------------------------------------------------------------------------------------------------------
# relevance, selection


def test_relevance_matches_hand_computed_normalised_contributions():
    z = [[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]
    theta = [[1.0, -1.0], [0.5, 2.0], [-4.0, 1.0]]  # [K=3, C=2]
    r = explain.relevance(z, theta, [0, 1]).numpy()
    # clip 0, class 0: contributions [1, 1, -2], max |.| = 2; clip 1, class 1: [0, 2, 3], max |.| = 3.
    np.testing.assert_allclose(r, [[0.5, 0.5, -1.0], [0.0, 2 / 3, 1.0]], rtol=1e-6)
    # A scalar class is used for every clip.
    np.testing.assert_allclose(explain.relevance(z, theta, 1).numpy()[0], [-1 / 4, 1.0, 0.125], rtol=1e-6)


def test_relevance_of_zero_activations_is_zero_not_nan():
    r = explain.relevance(np.zeros((2, 3), np.float32), np.ones((3, 2), np.float32), [0, 1]).numpy()
    np.testing.assert_array_equal(r, np.zeros((2, 3)))


def test_relevance_rejects_a_theta_in_class_major_layout():
    with pytest.raises(ValueError, match=r"Keras Dense kernel \[K, C\]"):
        explain.relevance(np.ones((1, 3), np.float32), np.ones((2, 3), np.float32), [0])


def test_select_keeps_relevance_strictly_above_threshold():
    r = [[0.5, 0.2, 1.0, -0.7], [0.0, 0.0, 0.0, 0.0]]
    np.testing.assert_array_equal(explain.select(r, 0.2).numpy(), [[1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(explain.select(r, -1.5).numpy(), np.ones((2, 4)))  # tau < -1: everything
    np.testing.assert_array_equal(explain.select(r, [0.6, -0.1]).numpy(), [[0, 0, 1, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_select_top_n_breaks_ties_by_lower_index(as_tensor):
    r = [[0.5, 0.5, 1.0, 0.5, 0.1]]

    def top(n):
        return explain.select(r, 0.2, tf.constant(n) if as_tensor else n).numpy()[0].astype(int).tolist()

    assert top(1) == [0, 0, 1, 0, 0]
    assert top(2) == [1, 0, 1, 0, 0]
    assert top(3) == [1, 1, 1, 0, 0]
    assert top(5) == top(9) == top(0) == [1, 1, 1, 1, 0]  # the threshold still applies; 0 = no limit


def test_select_rejects_bad_top_n_and_nan_threshold():
    with pytest.raises(ValueError, match="-1"):
        explain.select([[0.1]], 0.0, -1)
    with pytest.raises(ValueError, match="nan"):
        explain.select([[0.1]], float("nan"))


def test_top_components_are_sorted_by_decreasing_relevance_ties_by_index():
    indices, values = explain.top_components([[0.1, 0.9, -1.0, 0.9], [1.0, 0.0, 0.5, 0.2]], 3)
    np.testing.assert_array_equal(indices.numpy(), [[1, 3, 0], [0, 2, 3]])
    np.testing.assert_allclose(values.numpy(), [[0.9, 0.9, 0.1], [1.0, 0.5, 0.2]])
    assert indices.dtype == tf.int32
    with pytest.raises(ValueError, match="K=4"):
        explain.top_components([[0.1, 0.9, -1.0, 0.9]], 5)


def test_random_selection_matches_counts_avoids_selected_and_is_seeded():
    rng = np.random.default_rng(1)
    selected = rng.random((8, 20)) < 0.3
    selected[0] = False  # nothing selected -> nothing drawn
    selected[1] = True  # no other component left -> nothing drawn
    selected[2] = np.arange(20) < 15  # 15 selected, only 5 others -> all 5
    seed = tf.constant([3, 7])
    draw = explain.random_selection(selected, seed).numpy()
    assert not np.any(draw & selected)
    expected = np.minimum(selected.sum(1), 20 - selected.sum(1))
    np.testing.assert_array_equal(draw.sum(1), expected)
    np.testing.assert_array_equal(draw[2], ~selected[2])
    np.testing.assert_array_equal(explain.random_selection(selected, seed).numpy(), draw)
    assert not np.array_equal(explain.random_selection(selected, tf.constant([3, 8])).numpy(), draw)
    generated = explain.random_selection(selected, tf.random.Generator.from_seed(0)).numpy()
    np.testing.assert_array_equal(generated.sum(1), expected)
    assert not np.any(generated & selected)


def test_random_selection_is_uniform_over_unselected_components():
    selected = np.zeros((2000, 5), bool)
    selected[:, 0] = True
    counts = explain.random_selection(selected, 0).numpy().sum(0)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / 2000, 0.25, atol=0.04)


# --------------------------------------------------------------------------------------------------------------------
# masks


def test_component_masks_of_every_component_sum_to_one_where_reconstruction_dominates_eps():
    p = random_problem(2, 1000)
    every = np.tile(np.arange(6), (2, 1))
    masks = explain.component_masks(p["W"], p["H"], every).numpy()  # [B, K, T, F]
    V = np.einsum("btk,fk->btf", p["H"], p["W"])
    assert masks.shape == (2, 6) + V.shape[1:]
    np.testing.assert_allclose(masks.sum(1), V / (V + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(masks.sum(1), 1.0, atol=1e-5)
    # Silent bins (H = 0) get mask 0, not NaN.
    assert np.all(explain.component_masks(p["W"], np.zeros_like(p["H"]), every).numpy() == 0)


def test_selected_mask_equals_numpy_sum_of_component_masks():
    p = random_problem(2, 1000)
    H = p["H"] * (np.random.default_rng(2).random(p["H"].shape) < 0.5)  # sparse, some bins near silent
    selected = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
    V = np.einsum("btk,fk->btf", H, p["W"]) + 1e-8
    expected = sum(H[:, :, k, None] * p["W"][None, None, :, k] * selected[:, k, None, None] for k in range(6)) / V
    got = explain.selected_mask(p["W"], H, selected).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.all(got[1] == 0)


def test_chosen_mask_equals_the_selected_mask_of_the_same_components():
    p = random_problem(2, 1000)
    H = p["H"] * (np.random.default_rng(3).random(p["H"].shape) < 0.5)
    indices = np.array([[4, 0, 2], [1, 5, 3]])
    chosen = np.array([[True, False, True], [False, False, False]])
    selected = np.zeros((2, 6), bool)
    selected[0, [4, 2]] = True
    got = explain.chosen_mask(p["W"], H, indices, chosen).numpy()
    np.testing.assert_allclose(got, explain.selected_mask(p["W"], H, selected).numpy(), rtol=1e-5, atol=1e-7)
    assert np.all(got[1] == 0) and np.any(got[0] > 0)
    with pytest.raises(ValueError, match=r"chosen must be \[batch, N\]"):
        explain.chosen_mask(p["W"], H, indices, chosen[:, :2])


def test_component_masks_gather_the_chosen_components():
    p = random_problem(2, 1000)
    indices = np.array([[4, 0], [1, 1]])
    V = np.einsum("btk,fk->btf", p["H"], p["W"]) + 1e-8
    expected = np.stack(
        [np.stack([p["H"][b, :, k, None] * p["W"][None, :, k] / V[b] for k in indices[b]]) for b in range(2)]
    )
    np.testing.assert_allclose(explain.component_masks(p["W"], p["H"], indices).numpy(), expected, rtol=1e-5)


def test_mask_functions_quote_mismatched_shapes():
    with pytest.raises(ValueError, match=r"K=5.*K=6"):
        explain.selected_mask(np.ones((F, 5), np.float32), np.ones((1, 3, 6), np.float32), np.ones((1, 6), bool))
    with pytest.raises(ValueError, match="domain"):
        explain.interpret(*[None] * 7, domain="mel")


# --------------------------------------------------------------------------------------------------------------------
# audio: planted sources, reconstruction, removal


@pytest.fixture(scope="module")
def planted():
    """Two sinusoids on exact FFT bins (1 kHz = bin 16, 3 kHz = bin 48: disjoint 3-bin Hann supports), W their
    L2-normalised mean log1p spectra, H the per-frame NNLS activations of the mixture's X on W."""
    n = 8000
    t = np.arange(n) / CONFIG.sample_rate
    s1 = (0.5 * np.exp(-t) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    s2 = (0.6 * t / t[-1] * np.sin(2 * np.pi * 3000 * t + 0.3)).astype(np.float32)
    x = s1 + s2
    X, phase = analyze(x[None], CONFIG)
    atoms = [analyze(s[None], CONFIG)[0].numpy()[0].mean(0) for s in (s1, s2)]
    W = np.stack([a / np.linalg.norm(a) for a in atoms], 1).astype(np.float32)  # [F, 2]
    H = np.stack([nnls(W.astype(np.float64), frame.astype(np.float64))[0] for frame in X.numpy()[0]])
    return dict(s1=s1, s2=s2, x=x, X=X, phase=phase, W=W, H=H[None].astype(np.float32), n=n)


@pytest.mark.parametrize("domain", ["linear", "log1p"])
def test_planted_interpretation_recovers_the_selected_sinusoid_and_removal_the_other(planted, domain):
    p = planted
    only_first = np.array([[True, False]])
    args = (p["X"], p["phase"], p["W"], p["H"], only_first, p["n"], CONFIG)
    heard = explain.interpret(*args, domain=domain).numpy()[0]
    rest = explain.remove(*args, domain=domain).numpy()[0]
    # The masks are near-binary here (disjoint supports), so log1p masking barely squashes: both domains give the
    # first sinusoid back (measured: 41.9 dB SNR linear, 39.3 dB log1p; edge frames leak) and its complement the
    # second one (40.7 / 39.5 dB).
    assert snr_db(heard, p["s1"]) > 30
    assert snr_db(rest, p["s2"]) > 30
    # ... and nothing of the other source: almost uncorrelated with it.
    assert abs(correlation(heard, p["s2"])) < 0.02
    assert abs(correlation(rest, p["s1"])) < 0.02


def test_linear_interpretation_plus_removal_is_the_input(planted):
    p = planted
    args = (p["X"], p["phase"], p["W"], p["H"], np.array([[True, False]]), p["n"], CONFIG)
    total = explain.interpret(*args, domain="linear") + explain.remove(*args, domain="linear")
    np.testing.assert_allclose(total.numpy()[0], p["x"], atol=1e-5)


def test_every_component_selected_reconstructs_the_input_in_the_linear_domain():
    p = random_problem(2, 3000)  # positive W, H: mask = H·Wᵀ / (H·Wᵀ + ε) ≈ 1 in every bin
    X, phase = analyze(p["waveform"], CONFIG)
    everything = np.ones((2, 6), bool)
    audio = explain.interpret(X, phase, p["W"], p["H"], everything, 3000, CONFIG, domain="linear").numpy()
    for b in range(2):
        assert snr_db(audio[b], p["waveform"][b]) > 40
    silent = explain.remove(X, phase, p["W"], p["H"], everything, 3000, CONFIG, domain="linear").numpy()
    assert np.max(np.abs(silent)) < 1e-5


def test_log1p_domain_squashes_a_half_mask_while_linear_halves_the_audio():
    p = random_problem(1, 3000, K=2)
    p["waveform"] *= 10  # |S| of order 10-100, where sqrt(1 + |S|) - 1 is far from |S| / 2
    W = np.repeat(p["W"][:, :1], 2, axis=1)  # two identical atoms, equal activations: each mask is 1/2
    H = np.repeat(p["H"][..., :1], 2, axis=2)
    X, phase = analyze(p["waveform"], CONFIG)
    first = np.array([[True, False]])
    linear = explain.interpret(X, phase, W, H, first, 3000, CONFIG, domain="linear").numpy()
    np.testing.assert_allclose(linear, 0.5 * p["waveform"], atol=1e-5)
    # expm1(X / 2) = sqrt(1 + |S|) - 1, not |S| / 2.
    log1p = explain.interpret(X, phase, W, H, first, 3000, CONFIG, domain="log1p").numpy()
    magnitude = np.sqrt(1 + np.abs(np.expm1(X.numpy()))) - 1
    expected = tf.signal.inverse_stft(
        tf.cast(magnitude, tf.complex64) * phase, 256, 64, 256, window_fn=tf.signal.inverse_stft_window_fn(64)
    ).numpy()[:, CONFIG.front_pad : CONFIG.front_pad + 3000]
    np.testing.assert_allclose(log1p, expected, atol=1e-5)
    assert snr_db(log1p, 0.5 * p["waveform"]) < 10
