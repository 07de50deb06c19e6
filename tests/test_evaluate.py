"""The evaluate job: faithfulness known answers, random baseline, SLIME, mixtures, fold configs, report and CLI."""

from __future__ import annotations

import dataclasses
import json
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from run_fixture import make_run, write_wav

from cli.main import main
from l2i_tf import audio, classifier, evaluate, explain, faithfulness, runs, slime
from l2i_tf.explainer import ExplainConfig

SR = 16000
STFT = audio.STFTConfig()


@pytest.fixture(scope="module")
def tiny_eval_run(tmp_path_factory):
    """A tiny untrained run folder pointed at a 3-class folders data set of 0.5 s tones (6 clips a class)."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    t = np.arange(SR // 2) / SR
    for c, name in enumerate(("dog", "rain", "siren")):
        for k in range(10):
            clip = 0.4 * np.sin(2 * np.pi * 300 * (c + 1) * t) + 0.05 * rng.standard_normal(len(t))
            write_wav(root / "data" / name / f"{name}_{k}.wav", clip.astype("float32"))
    run = make_run(root / "run")
    config = json.loads((run / "config.json").read_text())
    config["train"].update(data=str(root / "data"), layout="folders", clip_seconds=0.5)
    (run / "config.json").write_text(json.dumps(config))
    return run


def planted_classifier(freqs, sample_rate=SR) -> keras.Model:
    """Waveform -> log-mel (layer ``logmel``) -> class c's logit = mean log-mel of the band of ``freqs[c]``.

    It names the louder of two tones: the target of a mixture whose distractor is well below it.
    """
    waveform = keras.Input(shape=(None,), name="waveform")
    logmel = audio.LogMelSpectrogram(sample_rate, num_mel_bins=64, name="logmel")
    t = np.arange(sample_rate // 2) / sample_rate
    tones = np.stack([np.sin(2 * np.pi * f * t) for f in freqs]).astype("float32")
    bands = np.asarray(logmel(tones)).mean(axis=1).argmax(axis=1)  # the band each tone falls in
    band_energy = keras.layers.Dense(len(freqs), use_bias=False, name="band_energy")
    per_frame = band_energy(logmel(waveform))
    kernel = np.zeros((64, len(freqs)), "float32")
    kernel[bands, np.arange(len(freqs))] = 1.0
    band_energy.set_weights([kernel])
    return keras.Model(waveform, keras.layers.GlobalAveragePooling1D(name="logits")(per_frame))


@pytest.fixture(scope="module")
def planted_eval_run(tiny_eval_run):
    """The tiny run's data set with :func:`planted_classifier` (tones 300/600/900 Hz = dog/rain/siren); Ψ taps
    ``logmel``. At a 20 dB target-to-distractor ratio it gets every mixture right, so every mixture is counted."""
    model = planted_classifier((300, 600, 900))
    run = make_run(tiny_eval_run.parent / "planted_run", classifier=model, layers=["logmel"])
    config = json.loads((run / "config.json").read_text())
    config["train"].update(data=str(tiny_eval_run.parent / "data"), layout="folders", clip_seconds=0.5)
    (run / "config.json").write_text(json.dumps(config))
    return run


def _tiny_classifier():
    model = classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(4, 8, 8, 8)))
    return lambda w: np.asarray(model(tf.convert_to_tensor(w), training=False))


def test_removing_every_component_drops_the_logit_to_that_of_silence():
    classify = _tiny_classifier()
    x = np.random.default_rng(0).standard_normal((2, SR // 4)).astype("float32") * 0.3
    X, phase = audio.analyze(x, STFT)
    K = 4
    W = np.random.default_rng(1).random((STFT.num_bins, K)).astype("float32") + 0.1
    H = np.ones((2, X.shape[1], K), "float32")  # every bin explained, so removing all leaves silence
    z = np.ones((2, K), "float32")
    theta = np.random.default_rng(2).standard_normal((K, 3)).astype("float32")
    logits = classify(x)
    c = logits.argmax(axis=1)
    r = explain.relevance(z, theta, c)
    res = faithfulness.removal_drops(classify, X, phase, W, H, r, logits, c, (-2.0,), x.shape[1], STFT, "log1p", (0, 0))
    silence = classify(np.zeros_like(x))
    np.testing.assert_allclose(res[-2.0]["l2i"]["logit"], logits[[0, 1], c] - silence[[0, 1], c], atol=1e-4)
    np.testing.assert_array_equal(res[-2.0]["l2i"]["selected"], [K, K])
    np.testing.assert_array_equal(res[-2.0]["random"]["selected"], [0, 0])  # nothing left to draw from


def test_random_baseline_never_picks_selected_components_and_matches_the_count():
    r = tf.random.stateless_uniform([16, 50], seed=[3, 4], minval=-1, maxval=1)
    for seed in range(20):
        for tau in (0.9, 0.5, 0.0, -0.5):
            chosen = explain.select(r, tau)
            rand = explain.random_selection(chosen, tf.constant([seed, 7], tf.int64))
            assert not np.any(np.logical_and(chosen, rand))
            n_chosen = np.sum(chosen, axis=1)
            expected = np.minimum(n_chosen, 50 - n_chosen)
            np.testing.assert_array_equal(np.sum(rand, axis=1), expected)


def test_a_fold_run_is_reused_only_when_made_with_the_same_plan_and_quickness(tmp_path, monkeypatch):
    from l2i_tf import audio, training

    base = runs.TrainConfig(epochs=40, source_mixtures=480)
    trained = []
    monkeypatch.setattr(training, "train", lambda out, config, **kwargs: trained.append(config))
    fold = tmp_path / "run" / "cv" / "fold2"
    fold.mkdir(parents=True)
    runs.write_config(fold, evaluate.fold_config(base, 2), audio.STFTConfig())
    for name in ("interpreter.keras", "metrics.json"):
        (fold / name).write_text("{}")
    assert evaluate.train_fold(tmp_path / "run", base, 2) == fold and trained == []  # the same plan: reused
    evaluate.train_fold(tmp_path / "run", base, 2, quick=True)  # a quick fold is another run
    evaluate.train_fold(tmp_path / "run", base, 2, num_folds=3)  # so is another fold plan
    assert [(c.epochs, c.train_folds) for c in trained] == [(2, (1, 4, 5)), (40, (1,))]


def test_the_report_header_counts_windows_as_windows_and_an_unscored_mixture_table_says_why():
    from l2i_tf import evaluation_report

    lines = evaluation_report._mixtures({"snr_db": 0, "counted": 0, "mixtures": 8, "rows": []}, None)
    assert "0 of 8 mixtures the classifier gets right" in lines[0]
    assert any("gets none of these mixtures right" in line for line in lines)
    report = {"run": "r", "k": 20, "test_clips": 6, "test_windows": {"clips": 3, "windows": 6}, "multilabel": False}
    assert evaluation_report._header(report) == "K = 20, 6 test windows (3 clips), multi-label: False."
    report.update(test_windows=None, multilabel=True, test_clips=10)  # a multi-label run scores mixtures
    assert evaluation_report._header(report) == "K = 20, 10 test examples, multi-label: True."


def test_fold_config_holds_out_one_fold_and_learns_its_own_dictionary():
    base = runs.TrainConfig(dictionary="some/dictionary", epochs=40)
    cfg = evaluate.fold_config(base, 2)
    assert (cfg.test_folds, cfg.val_folds, cfg.train_folds) == ((2,), (3,), (1, 4, 5))
    assert cfg.dictionary is None and cfg.epochs == 40
    assert evaluate.fold_config(base, 5, quick=True).epochs == 2


def test_slime_segments_tile_the_spectrogram_and_bands_are_mel_spaced():
    segs = slime.segments(100, STFT.num_bins, slime.SlimeConfig(time_segments=5, freq_bands=6), SR)
    assert segs.shape == (30, 100, STFT.num_bins)
    np.testing.assert_array_equal(segs.sum(axis=0), 1.0)
    edges = slime.band_edges(STFT.num_bins, 6, SR)
    assert edges[0] == 0 and edges[-1] == STFT.num_bins and np.all(np.diff(edges) > 0)
    assert np.diff(edges)[0] < np.diff(edges)[-1]  # mel: narrow low bands


def test_slime_finds_the_segment_a_planted_classifier_listens_to():
    x = (np.random.default_rng(0).standard_normal(SR // 2) * 0.3).astype("float32")
    half = len(x) // 2

    def classify(w):  # class 0's logit: energy of the second half of the clip
        w = np.asarray(w)
        e = 50 * np.mean(np.square(w[:, half:]), axis=1)
        return np.stack([e, np.zeros_like(e)], axis=1)

    config = slime.SlimeConfig(time_segments=2, freq_bands=1, num_samples=40)
    res = slime.explain(classify, x, 0, STFT, config)
    assert res["relevance"].argmax() == 1 and res["relevance"][1] == pytest.approx(1.0)
    kept = slime.interpretation(res, 0.5, len(x), STFT)
    assert np.abs(kept[: half - 1024]).max() < 1e-3 < np.abs(kept[half + 1024 :]).max()


def test_evaluate_writes_every_table_and_figure(planted_eval_run, tmp_path):
    config = evaluate.EvalConfig.quick_config(baselines=("slime",), mixture_snr_db=20.0)
    report = evaluate.evaluate(planted_eval_run, config, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["config"]["baselines"] == ["slime"] and saved["train_config"]["k"] == 8
    assert set(report["fidelity"]) == {"top1", "top3"}
    assert set(report["faithfulness"]) == {"0.9", "0.7", "0.5", "0.3"}
    assert set(report["faithfulness"]["0.3"]) == {"l2i", "random"}
    mixtures = report["mixtures"]
    assert (mixtures["mixtures"], mixtures["counted"], mixtures["classifier_right_share"]) == (8, 8, 1.0)
    rows = {(r["method"], r["domain"], r["threshold"]): r for r in mixtures["rows"]}
    expected = {("mixture", "-", None), ("oracle ratio mask", "linear", None)}
    for domain in config.mixture_domains:
        expected |= {(method, domain, tau) for method in ("L2I", "random") for tau in config.mixture_thresholds}
        expected |= {("L2I relevance-weighted", domain, 0.0), ("oracle components", domain, None)}
    defaults = ExplainConfig()
    expected.add(("L2I default", defaults.domain, defaults.threshold))  # the export's own selection, marked
    assert set(rows) == expected
    assert [key for key, r in rows.items() if r["default"]] == [("L2I default", defaults.domain, defaults.threshold)]
    assert rows[("L2I default", defaults.domain, defaults.threshold)]["selected_mean"] <= defaults.top_n
    assert {r["si_sdri_db"]["count"] for r in rows.values()} == {8}  # every row pools every counted mixture
    mixture = rows[("mixture", "-", None)]
    assert mixture["si_sdri_db"]["median"] == 0.0
    assert mixture["target_energy_share"]["median"] == pytest.approx(1 / (1 + 10 ** (-20 / 10)), abs=1e-4)
    assert rows[("oracle ratio mask", "linear", None)]["si_sdri_db"]["median"] > 5.0
    assert report["slime"]["clips"] == 2 and report["slime"]["mixtures"]["counted_used"] == 2
    assert report["wall_time"]["slime_seconds_per_clip"] > 0
    active = report["faithfulness_active_random"]
    assert active["active_share"] == config.active_share and set(active["thresholds"]) == set(report["faithfulness"])
    for t, v in active["thresholds"].items():
        assert v["selected_mean"] <= report["faithfulness"][t]["l2i"]["selected_mean"] and v["active_mean"] <= 8
    masks = report["mask_metrics"]
    assert set(masks["l2i"]) == set(report["faithfulness"]) and masks["speechbrain_published_l2i"]["COMP"] == 11.38
    assert {v["clips"] for v in masks["l2i"].values()} == {report["test_clips"]}
    assert {v["clips"] for v in report["slime"]["mask_metrics"].values()} == {2}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## SpeechBrain's interpretation metrics" in text and "| SpeechBrain's published L2I (theirs) |" in text
    assert text.count("| SLIME (segment mask) | ") == len(report["faithfulness"]) and "active random logit" in text
    mixtures_heading = "## Mixtures: target + distractor at 20.0 dB (8 of 8 mixtures"
    for heading in ("## Fidelity", "## Faithfulness", mixtures_heading, "## Wall time", "SLIME"):
        assert heading in text
    mixture_rows = sum(text.count(f"| L2I | {domain} | ") for domain in config.mixture_domains)
    assert mixture_rows == 2 * len(config.mixture_thresholds) and text.count("| L2I | ") == mixture_rows + 1


def test_cli_evaluate_quick_prints_the_tables_and_rejects_a_bad_run(tiny_eval_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["evaluate", str(tiny_eval_run), "--quick", "--mixtures", "0", "--out", str(tmp_path / "cli")]
    )
    assert result.exit_code == 0, result.output
    assert "## Faithfulness" in result.output and "## Mixtures" not in result.output
    assert (tmp_path / "cli" / "report.md").is_file()
    bad = runner.invoke(main, ["evaluate", str(tmp_path), "--quick"])
    assert bad.exit_code != 0 and "not a finished run" in bad.output
    bad = runner.invoke(main, ["evaluate", str(tiny_eval_run), "--thresholds", "a,b"])
    assert bad.exit_code != 0 and "comma-separated numbers" in bad.output
    assert "Examples:" in runner.invoke(main, ["evaluate", "--help"]).output


def test_evaluate_trains_flint_and_vibi_once_and_fills_the_methods_table(planted_eval_run, tmp_path):
    config = evaluate.EvalConfig.quick_config(baselines=("flint", "vibi"), mixture_snr_db=20.0)
    report = evaluate.evaluate(planted_eval_run, config, tmp_path / "out")
    saved = {name: planted_eval_run / "baselines" / f"{name}.keras" for name in ("flint", "vibi")}
    assert all(path.is_file() for path in saved.values()) and not (planted_eval_run / "baselines" / "cache").exists()
    rows = {r["method"]: r for r in report["methods"]["rows"]}
    assert list(rows) == ["l2i", "flint", "vibi"] and report["methods"]["threshold"] == 0.3
    for name in ("flint", "vibi"):
        assert 0.0 <= rows[name]["top1"] <= 1.0 and rows[name]["training_seconds"] > 0
    assert rows["flint"]["faithfulness"] is None and rows["flint"]["si_sdri_db"] is None  # not listenable
    vibi = report["baselines"]["vibi"]
    assert vibi["mask_metrics"]["clips"] == report["test_clips"] and rows["vibi"]["SPS"] is not None
    assert vibi["mixtures"]["counted_used"] == 8 and rows["vibi"]["si_sdri_db"] is not None
    assert vibi["faithfulness"]["vibi"]["logit_drop"]["count"] == report["test_clips"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Methods compared (multi-class)" in text and "| VIBI (top-8 chunks) | log1p |" in text
    assert f"| VIBI (top-8 chunks) | – | {report['test_clips']} |" in text and "VIBI (its top-8 of 80 chunks" in text
    stamps = {name: path.stat().st_mtime_ns for name, path in saved.items()}
    again = evaluate.evaluate(planted_eval_run, config, tmp_path / "again")  # reused, not retrained
    assert {name: path.stat().st_mtime_ns for name, path in saved.items()} == stamps
    assert again["baselines"]["flint"]["fidelity"] == report["baselines"]["flint"]["fidelity"]


def test_a_baseline_that_does_not_fit_is_marked_and_the_others_still_run(planted_eval_run, tmp_path):
    vibi = dict(evaluate.EvalConfig().vibi, time_chunks=64)  # 0.5 s clips have 35 frames
    config = evaluate.EvalConfig.quick_config(
        baselines=("flint", "vibi"), vibi=vibi, mixtures=0, retrain_baselines=True
    )
    report = evaluate.evaluate(planted_eval_run, config, tmp_path / "out")
    message = "vibi: 64 time chunks do not fit the 35 STFT frames of a 8000-sample training clip"
    assert report["baselines"]["vibi"] == {"error": message}
    assert "top1" in report["baselines"]["flint"]["fidelity"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| VIBI | n/a |" in text and "failed: vibi: 64 time chunks" in text
    with pytest.raises(ValueError, match="unknown baselines \\['lime'\\]; known baselines: slime, flint, vibi"):
        evaluate.EvalConfig(baselines=("lime",))
    bad = CliRunner().invoke(main, ["evaluate", str(planted_eval_run), "--baselines", "slime,lime"])
    assert bad.exit_code != 0 and "unknown baseline(s) lime; known baselines: slime, flint, vibi" in bad.output


def test_evaluate_streams_the_test_split_a_batch_at_a_time(tiny_eval_run, tmp_path, monkeypatch):
    """No measure reads the whole test split: its clip file is read in slices of at most one batch, and the
    scratch folder is gone afterwards; fidelity matches the split scored in memory."""
    from l2i_tf.clip_files import ClipFile

    def whole(self, *args, **kwargs):
        raise AssertionError("the whole test split was read into memory")

    reads = []

    def counted(self, start, stop, read=ClipFile._read):
        reads.append(stop - start)
        return read(self, start, stop)

    monkeypatch.setattr(ClipFile, "__array__", whole)
    monkeypatch.setattr(ClipFile, "_read", counted)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = evaluate.EvalConfig.quick_config(batch_size=4)
    report = evaluate.evaluate(tiny_eval_run, config, tmp_path / "out")
    assert report["test_clips"] > config.batch_size and max(reads) == config.batch_size
    assert [p for p in scratch.iterdir() if p.name.startswith("l2i_tf-evaluate-")] == []
    monkeypatch.undo()
    run = runs.load_run(tiny_eval_run)
    explainer = evaluate.explainer_of(run, config.domain)
    waves, _ = evaluate.test_data(run.config, explainer.sample_rate, run.class_names)["evaluation"]
    assert isinstance(waves, np.ndarray) and len(waves) == report["test_clips"]
    assert report["fidelity"] == evaluate.fidelity_on(explainer, waves, 16)


def test_the_one_pass_measures_equal_fidelity_faithfulness_and_mask_metrics_run_apart(planted_eval_run):
    """`evaluate`'s single pass (one interpreter pass a batch, L2I's removal classified once) gives what the three
    measures give on their own, on a classifier that explains every clip."""
    from l2i_tf import mask_metrics

    run = runs.load_run(planted_eval_run)
    explainer = evaluate.explainer_of(run)
    waves, _ = evaluate.test_data(run.config, explainer.sample_rate, run.class_names)["evaluation"]
    config = evaluate.EvalConfig.quick_config(batch_size=4)
    taus = config.thresholds
    fidelity, faith, masks = evaluate.l2i_measures(explainer, waves, taus, config)
    assert fidelity == evaluate.fidelity_on(explainer, waves, 4)
    alone = faithfulness.faithfulness(explainer, waves, taus, config.domain, config.seed, 4, config.active_share)
    assert faith.keys() == alone.keys() and masks.keys() == alone.keys()
    for t in alone:
        for method in faithfulness.METHODS:
            for key in ("logit_drop", "probability_drop"):
                for stat, value in alone[t][method][key].items():
                    assert faith[t][method][key][stat] == pytest.approx(value, abs=1e-5), (t, method, key, stat)
    apart = mask_metrics.l2i_mask_metrics(explainer, waves, taus, config.domain, 4)
    for t in apart:
        assert masks[t]["clips"] == apart[t]["clips"] == len(waves)
        for key in mask_metrics.METRICS:
            assert masks[t][key] == pytest.approx(apart[t][key], abs=1e-4, nan_ok=True), (t, key)


def test_test_folds_the_data_lacks_are_refused_naming_them(tiny_eval_run):
    from l2i_tf.data import AudioDataError

    run = runs.load_run(tiny_eval_run)
    config = dataclasses.replace(run.config, test_folds=(9,))
    missing = r"fold\(s\) \[9\] not in data set at '.*data' \(folds: \[1, 2, 3, 4, 5\]\)"
    with pytest.raises(AudioDataError, match=missing):
        evaluate.test_data(config, SR, run.class_names)
