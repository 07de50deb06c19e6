"""Training mixtures with known sources and the source-consistency term (l2i_tf.source_mixtures, losses)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
from run_fixture import make_tone_job

from l2i_tf import losses, runs, source_mixtures, tables, training
from l2i_tf.training_data import ClipFile

T, F, K, C = 6, 5, 3, 2


def _case(seed=0):
    rng = np.random.default_rng(seed)
    h = rng.random((1, T, K)).astype("float32")
    W = rng.random((F, K)).astype("float32")
    x = np.log1p(rng.random((1, T, F)).astype("float32") * 3)
    return h, W, x


def _contributions(relevance_of_class_0):
    """Θ contributions [1, K, C] whose class-0 column is ``relevance_of_class_0`` (class 1: the opposite)."""
    r = np.asarray(relevance_of_class_0, "float32")
    return np.stack([r, -r], axis=-1)[None]


def test_source_term_is_zero_when_everything_is_kept_and_the_source_is_the_input():
    h, W, x = _case()
    loss = losses.source_consistency_loss(h, _contributions([1, 1, 1]), [0], x, x, [1.0], W)
    assert float(loss) == pytest.approx(0.0, abs=1e-4)  # sigmoid((1 - 0.3) / 0.1) = 0.999


def test_source_term_is_one_when_nothing_is_kept_or_the_source_is_silent():
    h, W, x = _case()
    nothing = losses.source_consistency_loss(h, _contributions([-1, -1, -1]), [0], x, x, [1.0], W)
    silent = losses.source_consistency_loss(h, _contributions([1, 1, 1]), [0], x, np.zeros_like(x), [1.0], W)
    assert float(nothing) == pytest.approx(1.0, abs=1e-3)
    assert float(silent) == pytest.approx(1.0, abs=2e-3)


def test_source_term_keeps_the_selected_components_share_and_ignores_weight_zero():
    h, W, x = _case()
    one = np.zeros_like(h)
    one[..., 0] = h[..., 0]  # the source is what component 0 explains of the input
    share = np.einsum("btk,fk->btf", one, W) / np.einsum("btk,fk->btf", h, W)
    source_x = np.log1p(share * np.expm1(x))
    assert float(losses.source_consistency_loss(h, _contributions([1, -1, -1]), [0], x, source_x, [1.0], W)) < 1e-4
    assert float(losses.source_consistency_loss(h, _contributions([1, 1, 1]), [0], x, source_x, [1.0], W)) > 0.01
    batch = [np.concatenate([a, a]) for a in (h, _contributions([1, -1, -1]), x, source_x)]
    mixed = losses.source_consistency_loss(batch[0], batch[1], [0, 0], batch[2], [source_x[0], x[0]], [1.0, 0.0], W)
    assert float(mixed) < 1e-4  # the second example (weight 0) does not count


def _every_row_source_term(h, contributions, classes, magnitude, source_magnitude, weight, W):
    """The term as written (every row computed, weighted), for comparison with the library's."""
    s = losses.soft_selection(contributions, classes)
    full = tf.einsum("btk,fk->btf", h, W) + 1e-8
    kept = tf.einsum("btk,fk->btf", h * s[:, None, :], W)
    per = tf.reduce_sum(tf.square(kept / full * magnitude - source_magnitude), axis=[1, 2])
    per = per / (tf.reduce_sum(tf.square(magnitude), axis=[1, 2]) + 1e-8)
    return tf.math.divide_no_nan(tf.reduce_sum(weight * per), tf.reduce_sum(weight))


@pytest.mark.parametrize("weights", [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
def test_source_term_on_the_weighted_rows_only_has_the_every_row_value_and_gradient(weights):
    rng = np.random.default_rng(3)
    h = tf.constant(rng.random((4, T, K)), tf.float32)
    contributions = tf.constant(rng.standard_normal((4, K, C)), tf.float32)
    magnitude, source = (tf.constant(rng.random((4, T, F)) * 3, tf.float32) for _ in range(2))
    W, classes, weight = tf.constant(rng.random((F, K)), tf.float32), tf.constant([0, 1, 1, 0]), tf.constant(weights)
    values, grads = [], []
    for term in (losses.source_consistency, _every_row_source_term):
        with tf.GradientTape() as tape:
            tape.watch([h, contributions])
            value = term(h, contributions, classes, magnitude, source, weight, W)
        values.append(float(value))
        grads.append([np.asarray(tf.convert_to_tensor(g)) for g in tape.gradient(value, [h, contributions])])
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    for ours, theirs in zip(grads[0], grads[1], strict=True):
        assert np.all(np.isfinite(ours))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    if not any(weights):
        assert values[0] == 0.0 and not any(np.any(g) for g in grads[0])


def test_soft_selection_follows_the_decided_class():
    s = losses.soft_selection(_contributions([1.0, 0.5, 0.1]), [1])  # class 1: relevance (-1, -0.5, -0.1)
    assert np.all(np.asarray(s) < 0.02)
    s = losses.soft_selection(_contributions([1.0, 0.5, 0.1]), [0])
    np.testing.assert_allclose(np.asarray(s)[0], 1 / (1 + np.exp(-np.array([7.0, 2.0, -2.0]))), rtol=1e-5)


def test_mixtures_are_the_sum_of_their_sources_from_training_clips(tmp_path):
    rng = np.random.default_rng(1)
    clips = rng.standard_normal((6, 400)).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2])
    store, _ = ClipFile.write(tmp_path / "c.npy", zip(clips, labels, strict=True), 6, 400)
    items = list(source_mixtures.with_sources(store, labels, 5, seed=0, snr_db=(-5.0, 5.0), window=None))
    assert len(items) == 5
    for item in items:
        np.testing.assert_allclose(item["waveform"], item["sources"].sum(axis=0), atol=1e-6)
        assert item["classes"][0] != item["classes"][1]
        assert any(np.allclose(item["sources"][0], clip) for clip in clips)  # the target as it is
    windowed = list(source_mixtures.with_sources(store, labels, 5, seed=0, snr_db=0.0, window=160))
    assert len(windowed) == 5 * 4  # windows at 0, 80, 160, 240 of 400 samples
    for item in windowed:
        assert item["waveform"].shape == (160,) and item["sources"].shape == (2, 160)
        np.testing.assert_allclose(item["waveform"], item["sources"].sum(axis=0), atol=1e-6)
    store.close()


def test_the_decided_class_picks_its_source():
    def features(waves):
        logits = np.zeros((len(waves), 3), "float32")
        logits[:, 2] = 5.0  # always decides class 2
        return {"waveform": waves, "classifier_logits": logits, "sequences": (waves[:, :2],)}

    sources = np.stack([np.full((2, 4), 1.0), np.full((2, 4), 2.0)]) * np.array([1.0, 10.0])[None, :, None]
    batch = {"waveform": sources.sum(1), "sources": sources, "classes": np.array([[0, 2], [0, 1]])}
    out = source_mixtures.decided_source(features)(batch)
    np.testing.assert_allclose(out["source"], [[10.0] * 4, [0.0] * 4])
    np.testing.assert_allclose(out["source_weight"], [1.0, 0.0])


def test_training_with_source_mixtures_learns_the_term_and_records_it(tiny_source_trained):
    # conftest's tiny_source_trained: make_tone_job with epochs=1, source_mixtures=6, source_weight=1.0, trained
    metrics, run = tiny_source_trained["metrics"], tiny_source_trained["run"]
    assert "source" in metrics["history"] and "val_fidelity_then_source" in metrics["history"]
    assert np.isfinite(metrics["history"]["source"]).all()
    assert sum(metrics["examples"].values()) == 15 + 6  # every clip in one split, and the 6 training mixtures
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert (recorded["source_mixtures"], recorded["source_weight"]) == (6, 1.0)
    assert runs.load_run(run).interpreter.source_weight == 1.0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"source_mixtures": 0, "source_weight": 1.0}, "needs source_mixtures > 0"),
        ({"source_mixtures": -1}, "source_mixtures must be an integer >= 0"),
        ({"source_mixtures": 4, "source_weight": 1.0, "multilabel": True}, "single-label"),
    ],
)
def test_bad_source_settings_are_refused_before_any_work(tmp_path, changes, message):
    config = make_tone_job(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        training.train(tmp_path / "run", config)
    assert not (tmp_path / "run" / "interpreter.keras").exists()


def test_unset_source_settings_take_the_task_default_and_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "DEFAULT_SOURCES", {False: (0.5, 2.0), True: (0.0, 0.0)})
    config = make_tone_job(tmp_path, epochs=1, source_mixtures=None, source_weight=None)
    model = runs.load_classifier(config.classifier)
    resolved, _ = training.resolve(config, model)
    assert (resolved.source_mixtures, resolved.source_weight) == (None, 2.0)  # the count waits for the split
    assert training.with_source_mixtures(resolved, 13).source_mixtures == 6  # 0.5 a training clip, rounded
    assert training.with_source_mixtures(resolved, 240).source_mixtures == 120
    ml, _ = training.resolve(dataclasses.replace(config, multilabel=True), model)
    assert (training.with_source_mixtures(ml, 240).source_mixtures, ml.source_weight) == (0, 0.0)
    given, _ = training.resolve(dataclasses.replace(config, source_mixtures=0, source_weight=0.0), model)
    assert training.with_source_mixtures(given, 240).source_mixtures == 0  # the paper's training, asked for
    no_mixtures, _ = training.resolve(dataclasses.replace(config, source_mixtures=0), model)
    assert no_mixtures.source_weight == 0.0  # no mixtures alone asks for it too (the weight was refused)
    training.check_sources(no_mixtures, multilabel=False)

    metrics = training.train(tmp_path / "run", config)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    train_clips = len(tables.split(tables.load_table(config.data, config.layout), config.splits)[0])
    assert (recorded["source_mixtures"], recorded["source_weight"]) == (round(0.5 * train_clips), 2.0)
    assert metrics["examples"]["train"] == train_clips + round(0.5 * train_clips)


def test_paper_training_has_no_source_term(tiny_trained):
    assert "source" not in tiny_trained["metrics"]["history"]


def test_early_stopping_ranks_by_fidelity_then_source_loss():
    from l2i_tf.checkpoints import FidelityThenSource

    rank = FidelityThenSource("val_fidelity_top1")

    def value(fidelity, source):
        logs = {"val_fidelity_top1": fidelity, "source": source}
        rank.on_epoch_end(0, logs)
        return logs["val_fidelity_then_source"]

    assert value(0.9, 0.1) > value(0.9, 0.2)  # equal fidelity: the better source match wins
    assert value(0.9 + 1 / 80, 0.9) > value(0.9, 0.0)  # one more validation clip right beats any source loss
    assert value(0.9 + 1 / 10_000, 0.3) > value(0.9, 0.0)  # ... up to 10 000 validation examples
    logs = {"val_fidelity_top1": 0.9}
    rank.on_epoch_end(0, logs)
    assert "val_fidelity_then_source" not in logs  # the paper's training: nothing added


def _stopping_run(fidelities, sources, patience=3, restored=None, start=0):
    """Early stopping as `l2i-tf train` sets it up, fed validation fidelities and source losses epoch by epoch from
    epoch ``start``; returns the callback and the epochs it saw (it stops the run after the last)."""
    import keras

    from l2i_tf.checkpoints import FidelityThenSource, ResumableEarlyStopping

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    rank = FidelityThenSource("val_fidelity_top1")
    stopping = ResumableEarlyStopping(
        restored,
        [w * 0 for w in model.get_weights()] if restored else None,
        patience_monitor="val_fidelity_top1",
        monitor="val_fidelity_then_source",
        mode="max",
        patience=patience,
        restore_best_weights=True,
    )
    stopping.set_model(model)
    model.stop_training = False
    stopping.on_train_begin()
    seen = 0
    for epoch, (fidelity, source) in enumerate(zip(fidelities, sources, strict=True), start=start):
        logs = {"val_fidelity_top1": fidelity, "source": source}
        rank.on_epoch_end(epoch, logs)
        stopping.on_epoch_end(epoch, logs)
        seen += 1
        if model.stop_training:
            break
    return stopping, seen


def test_patience_counts_from_the_last_rise_of_the_validation_fidelity_not_from_a_tie_break():
    fidelities = [0.80, 0.90, 0.90, 0.90, 0.90, 0.90, 0.95]
    sources = [0.30, 0.25, 0.20, 0.15, 0.10, 0.05, 0.01]  # every epoch better by the tie-break
    stopping, seen = _stopping_run(fidelities, sources)
    assert seen == 5  # the fidelity last rose at epoch 2: epochs 3, 4, 5 without a rise, then stop
    assert stopping.best_epoch == 4  # the best weights: the lowest source loss among the best fidelities
    assert stopping.state()["wait"] == 3 and stopping.state()["best_rising"] == 0.90
    # killed after epoch 4 (two epochs without a rise) and resumed from its state: it stops after one more
    first, _ = _stopping_run(fidelities[:4], sources[:4])
    resumed, seen = _stopping_run(fidelities[4:], sources[4:], restored=first.state(), start=4)
    assert seen == 1 and resumed.best_epoch == 4 and resumed.state() == stopping.state()
    # a rise restarts the count
    stopping, seen = _stopping_run([0.8, 0.9, 0.9, 0.95, 0.95, 0.95, 0.95], [0.3] * 7)
    assert seen == 7 and stopping.best_epoch == 3


def test_a_run_recorded_before_the_term_reads_as_the_paper_training(tmp_path):
    recorded = runs.TrainConfig(source_mixtures=960, source_weight=5.0).to_dict()
    del recorded["source_mixtures"], recorded["source_weight"]  # as an earlier version wrote config.json
    (tmp_path / runs.CONFIG).write_text(json.dumps({"train": recorded}))
    config = runs.read_config(tmp_path)
    assert (config.source_mixtures, config.source_weight) == (0, 0.0)


def test_quick_cross_validation_folds_use_few_source_mixtures():
    from l2i_tf import evaluate

    config = evaluate.fold_config(runs.TrainConfig(source_mixtures=960, source_weight=5.0), 2, quick=True)
    assert (config.source_mixtures, config.source_weight) == (64, 5.0)
    assert evaluate.fold_config(runs.TrainConfig(source_mixtures=0), 2, quick=True).source_mixtures == 0


def test_unset_epochs_and_loss_weights_take_the_task_defaults_and_a_resume_keeps_the_recorded_epochs(tmp_path):
    config = make_tone_job(tmp_path, epochs=None)
    model = runs.load_classifier(config.classifier)
    single, _ = training.resolve(config, model)
    multi, _ = training.resolve(dataclasses.replace(config, multilabel=True), model)
    assert (single.epochs, single.alpha, single.temperature) == (40, 3.0, 3.0)
    assert (multi.epochs, multi.alpha, multi.temperature) == (20, 3.0, 1.0)
    assert runs.TrainConfig().mixtures == 4800  # multi-label: 20 epochs of 4800 mixtures
    assert training.resume_config(multi, dataclasses.replace(config, epochs=None)).epochs == 20  # `--resume` alone
    assert training.resume_config(multi, dataclasses.replace(config, epochs=30)).epochs == 30  # `--resume --epochs 30`


def test_train_cli_passes_mixtures_and_leaves_unset_epochs_to_the_task(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli import train as train_cli
    from cli.main import main

    seen = []
    monkeypatch.setattr(train_cli, "run", lambda out, config, *args: seen.append(config) or {})
    monkeypatch.setattr(train_cli, "report", lambda *args: None)
    result = CliRunner().invoke(main, ["train", "--multilabel", "--mixtures", "96", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (seen[0].multilabel, seen[0].mixtures, seen[0].epochs) == (True, 96, None)
    result = CliRunner().invoke(main, ["train", "--multilabel", "--mixtures", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--mixtures" in result.output and len(seen) == 1
