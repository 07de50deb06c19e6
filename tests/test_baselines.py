"""FLINT and VIBI: known answers for their loss terms and VIBI's k-hot sampling, the chunk grid, the methods table,
and both models through ``.keras`` save and load (their layers' round trips are cases in test_layers_round_trip)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from l2i_tf import audio, baseline_training, losses, method_table, report_page
from l2i_tf.flint import BaselineFitError, Flint, check_sequences
from l2i_tf.vibi import BandPool, ChunkMask, ChunkPool, KHot, Vibi, band_of_bin, hard_k_hot, relaxed_k_hot

STFT = audio.STFTConfig()
F = STFT.num_bins


# ------------------------------------------------------------------------------------------------ VIBI's selection


def test_relaxed_k_hot_sums_to_at_most_k_and_hard_top_k_picks_exactly_the_k_most_probable():
    log_probs = tf.nn.log_softmax(tf.random.stateless_normal([64, 80], seed=[1, 2]) * 3.0)
    for k in (1, 4, 8):
        relaxed = np.asarray(relaxed_k_hot(log_probs, k, 0.5, seed=tf.constant([3, k])))
        assert relaxed.min() >= 0.0 and relaxed.max() <= 1.0 + 1e-6
        assert np.all(relaxed.sum(axis=1) <= k + 1e-5)
        assert np.all(relaxed.sum(axis=1) > 0.99)  # at least one draw's worth
        hard = np.asarray(hard_k_hot(log_probs, k))
        np.testing.assert_array_equal(hard.sum(axis=1), k)
        assert set(np.unique(hard)) <= {0.0, 1.0}
        top = np.argsort(-np.asarray(log_probs), axis=1)[:, :k]
        np.testing.assert_array_equal(np.take_along_axis(hard, top, axis=1), 1.0)


def test_relaxed_k_hot_concentrates_on_a_certain_chunk_at_low_temperature():
    log_probs = tf.math.log(tf.constant([[0.999997] + [1e-7] * 30]))
    relaxed = np.asarray(relaxed_k_hot(log_probs, 3, 0.1, seed=tf.constant([0, 1])))
    assert relaxed[0, 0] == pytest.approx(1.0, abs=1e-3) and relaxed[0, 1:].sum() < 1e-2  # three draws, one chunk


def test_k_hot_layer_is_relaxed_in_training_and_hard_otherwise():
    layer = KHot(2, 0.5)
    log_probs = tf.nn.log_softmax(tf.random.stateless_normal([4, 10], seed=[0, 0]))
    np.testing.assert_array_equal(np.asarray(layer(log_probs)).sum(axis=1), 2.0)
    relaxed = np.asarray(layer(log_probs, training=True))
    assert not set(np.unique(relaxed)) <= {0.0, 1.0}


# ------------------------------------------------------------------------------------------------ loss terms


def test_flint_entropy_term_is_minimal_for_one_hot_attributes_that_differ_across_the_batch():
    B, J = 4, 6
    distinct = np.eye(J, dtype="float32")[:B] * 2.5  # one attribute per sample, a different one each
    same = np.tile(np.eye(J, dtype="float32")[:1], (B, 1))  # one attribute, the same for all
    uniform = np.ones((B, J), "float32")
    rng = np.random.default_rng(0)
    assert float(losses.attribute_entropy(distinct)) == pytest.approx(-math.log(B), abs=1e-5)
    assert float(losses.attribute_entropy(same)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.attribute_entropy(uniform)) == pytest.approx(0.0, abs=1e-5)
    for _ in range(20):
        other = rng.random((B, J)).astype("float32") ** 4
        assert float(losses.attribute_entropy(other)) > -math.log(B) + 1e-3


def test_flint_loss_adds_the_weighted_terms():
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0]])
    x = tf.ones([2, 3, 4])
    phi = tf.constant([[1.0, 0.0], [0.0, 3.0]])
    terms = losses.flint_loss(logits, logits * 0, x, x * 0, phi, (2.0, 0.5, 1.0))
    assert float(terms["fidelity_loss"]) == pytest.approx(math.log(2))  # uniform prediction, any target
    assert float(terms["reconstruction"]) == pytest.approx(1.0) and float(terms["sparsity"]) == pytest.approx(1.0)
    assert float(terms["entropy"]) == pytest.approx(-math.log(2), abs=1e-5)
    expected = math.log(2) + 2.0 + 0.5 - math.log(2)
    assert float(terms["loss"]) == pytest.approx(expected, abs=1e-5)


def test_kl_to_uniform_and_vibi_loss_known_answers():
    n = 16
    assert float(losses.kl_to_uniform(tf.fill([2, n], -math.log(n)))) == pytest.approx(0.0, abs=1e-6)
    certain = tf.math.log(tf.constant([[1.0 - 1e-6 * (n - 1)] + [1e-6] * (n - 1)]))
    assert float(losses.kl_to_uniform(certain)) == pytest.approx(math.log(n), abs=1e-3)
    clf = tf.constant([[0.2, 3.0, 0.0]])  # the classifier predicts class 1: a hard target
    approx = tf.constant([[0.0, 1.0, 0.0]])
    terms = losses.vibi_loss(clf, approx, tf.fill([1, n], -math.log(n)), beta=0.1)
    assert float(terms["fidelity_loss"]) == pytest.approx(-math.log(math.e / (2 + math.e)), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["fidelity_loss"]), abs=1e-6)
    ml = losses.vibi_loss(
        tf.constant([[2.0, -2.0]]), tf.constant([[0.0, 0.0]]), tf.fill([1, n], -math.log(n)), 0.1, True
    )
    assert float(ml["fidelity_loss"]) == pytest.approx(math.log(2), rel=1e-5)


# ------------------------------------------------------------------------------------------------ the chunk grid


def test_chunk_masks_tile_the_spectrogram_and_chunk_pool_averages_each_chunk():
    T, nt, nf, bands = 50, 5, 4, 16
    x = tf.zeros([1, T, F])
    mask_layer = ChunkMask(nt, nf, F, bands, STFT.sample_rate)
    masks = np.stack([np.asarray(mask_layer(tf.one_hot([n], nt * nf), x))[0] for n in range(nt * nf)])
    np.testing.assert_array_equal(masks.sum(axis=0), 1.0)  # every bin in exactly one chunk
    np.testing.assert_array_equal(masks[0][: T // nt].max(), 1.0)
    assert masks[0][T // nt :].max() == 0.0  # chunk 0: the first 10 frames, the lowest bands only
    group = band_of_bin(F, bands, STFT.sample_rate) // (bands // nf)
    np.testing.assert_array_equal(masks[1][0] == 1.0, group == 1)
    values = np.arange(nt * nf, dtype="float32")
    planted = mask_layer(values[None], x)  # each bin holds its chunk's number
    band_means = BandPool(F, bands, STFT.sample_rate)(planted)
    pooled = ChunkPool(nt, nf)(band_means[..., None])
    np.testing.assert_allclose(np.asarray(pooled)[0, :, 0], values, atol=1e-5)


def test_flint_check_names_the_tapped_layer_it_cannot_read():
    check_sequences([(None, None, 8)], ["block3"])
    with pytest.raises(BaselineFitError, match="tapped layer 'block4'.*shape \\(None, None, None\\)"):
        check_sequences([(None, None, 8), (None, None, None)], ["block3", "block4"])


# ------------------------------------------------------------------------------------------------ serialisation


def test_flint_and_vibi_models_survive_keras_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((2, 40, F)), tf.float32)
    seqs = [tf.constant(rng.random((2, 10, 8)), tf.float32)]
    flint = Flint([8], F, 6, 3, STFT.to_dict(), loss_weights=(2.0, 0.1, 0.3), hidden=8)
    vibi = Vibi(F, 3, STFT.to_dict(), k=3, time_chunks=4, freq_chunks=4, bands=16, beta=0.2)
    for model, inputs in ((flint, [*seqs, x]), (vibi, x)):
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
        for key, value in model(inputs).items():
            np.testing.assert_array_equal(np.asarray(loaded(inputs)[key]), np.asarray(value))
    assert keras.saving.load_model(tmp_path / "flint.keras").loss_weights == (2.0, 0.1, 0.3)


def test_flint_and_vibi_fits_trace_the_training_step_once(monkeypatch):
    """The optimizer's variables are built before ``fit``: made inside the first step, they make TensorFlow trace
    the step a second time."""
    rng = np.random.default_rng(2)
    batch = {
        "sequences": (rng.random((8, 10, 8), "float32"),),
        "classifier_logits": rng.standard_normal((8, 3)).astype("float32"),
        "spectrogram": rng.random((8, 40, F)).astype("float32"),
    }
    flint = Flint([8], F, 6, 3, STFT.to_dict(), hidden=8)
    vibi = Vibi(F, 3, STFT.to_dict(), k=3, time_chunks=4, freq_chunks=4, bands=16)
    for model in (flint, vibi):
        traced = []
        step = model.train_step
        monkeypatch.setattr(model, "train_step", lambda b, _step=step, _t=traced: _t.append(1) or _step(b))
        baseline_training.compile_for_fit(model, 1e-3)
        model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=2, verbose=0)
        assert len(traced) == 1, model.name
        assert model.optimizer.iterations.numpy() == 4


# ------------------------------------------------------------------------------------------------ the table


def test_methods_table_marks_what_a_method_cannot_fill_and_a_failed_baseline():
    faith = {"0.3": {"l2i": {"logit_drop": {"median": 1.5}}}}
    report = {
        "multilabel": False,
        "fidelity": {"top1": 0.9, "top3": 1.0, "top5": 1.0},
        "faithfulness": faith,
        "config": {"domain": "log1p"},
        "wall_time": {"l2i_seconds_per_clip": 0.02},
        "baselines": {
            "flint": {
                "fidelity": {"top1": 0.8, "top3": 0.9, "top5": 1.0},
                "seconds_per_clip": 0.01,
                "listenable": False,
                "training": {"fit_seconds": 30.0},
            },  # fmt: skip
            "vibi": {"error": "vibi: 64 time chunks do not fit the 34 STFT frames of a test clip"},
        },
    }
    table = method_table.method_table(report, {"dictionary_seconds": 10.0, "train_seconds": 50.0})
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["l2i"]["training_seconds"] == 60.0 and rows["l2i"]["faithfulness"] == 1.5
    assert rows["flint"]["top1"] == 0.8 and rows["flint"]["faithfulness"] is None and rows["flint"]["AI"] is None
    assert rows["vibi"]["note"].startswith("failed: vibi: 64 time chunks") and rows["vibi"]["top1"] is None
    text = "\n".join(method_table.markdown(table))
    assert "| FLINT | 80.0 | 90.0 | 100.0 | n/a |" in text and "| VIBI | n/a |" in text and "not listenable" in text
    html = report_page.markdown_to_html(text)  # as `l2i-tf report` shows an evaluation's report.md
    assert "<table" in html and "<td>FLINT</td>" in html and html.count("<tr>") >= 4
