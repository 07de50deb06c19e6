"""`l2i-tf report --mixtures`: one mixture per class, played as mixture, true source and interpretation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from cli.main import main
from l2i_tf import metrics, report_mixtures, tables


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_mix_sets_the_energy_ratio_and_pads_a_shorter_distractor():
    rng = np.random.default_rng(0)
    target, distractor = rng.standard_normal(1000), 3.0 * rng.standard_normal(600)
    for snr in (0.0, 6.0, -5.0):
        mixture, scaled = report_mixtures.mix(target, distractor, snr)
        assert mixture.shape == scaled.shape == target.shape
        np.testing.assert_allclose(mixture, target + scaled, atol=1e-6)
        assert not scaled[600:].any(), "the distractor is zero-padded to the target's length"
        ratio = 10 * np.log10(np.sum(target**2) / np.sum(scaled.astype("float64") ** 2))
        assert ratio == pytest.approx(snr, abs=1e-3)
    mixture, scaled = report_mixtures.mix(target, np.zeros(1000), 0.0)  # a silent distractor stays silent
    assert not scaled.any() and np.allclose(mixture, target)


def test_candidate_pairs_take_the_classes_in_turn_and_never_mix_a_class_with_itself():
    paths = [f"c{c}_{i}.wav" for c in range(3) for i in range(2)]
    labels = np.repeat(np.arange(3), 2)
    names = ("a", "b", "c", "unseen")
    pairs = report_mixtures.candidate_pairs(paths, labels, names, count=4, tries=5)
    assert [p[0].target_class for p in pairs] == ["a", "b", "c", "a"]  # classes without clips are skipped
    for candidates in pairs:
        assert len(candidates) == 5
        for pair in candidates:
            assert pair.distractor_class != pair.target_class
            assert pair.target.startswith(f"c{names.index(pair.target_class)}_")
            assert pair.distractor.startswith(f"c{names.index(pair.distractor_class)}_")
    assert pairs[3][0].target != pairs[0][0].target, "a class's second mixture starts from its next clip"


def test_labelled_clips_match_the_bundled_esc10_by_class_name_or_say_why_not():
    esc10 = tables.esc10_table()
    paths, labels = report_mixtures.labelled_clips(None, esc10.class_names)
    assert len(paths) == 80 and set(labels) == set(range(10))  # fold 5
    assert all("/5-" in p or "\\5-" in p for p in paths)
    with pytest.raises(report_mixtures.MixtureExamplesError, match="dog, rain, siren"):
        report_mixtures.labelled_clips(None, ("dog", "rain", "siren"))


@pytest.fixture(scope="module")
def mixed(tiny_trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixtures") / "report"
    result = invoke("report", tiny_trained["run"], "--mixtures", 3, "--snr-db", 2, "--threshold", 0, "--out", out)
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "page": json.loads((out / "report.json").read_text())}


def test_each_mixture_plays_mixture_true_source_interpretation_and_other_source(mixed):
    out, entries = mixed["out"], mixed["page"]["inputs"]
    assert [e["true_class"] for e in entries] == ["a", "b", "c"]  # the run's test split, its folders in order
    html = (out / "index.html").read_text()
    assert "Mixture examples" in html and html.count("SI-SDRi") >= 3
    for entry in entries:
        slug, mixture = entry["slug"], entry["mixture"]
        sources = [p["src"] for p in entry["players"]]
        assert sources[:4] == [f"audio/{slug}/{name}.wav" for name in ("input", "source", "interpretation", "other")]
        assert [p["label"].split(":")[0].split(" (")[0] for p in entry["players"][:4]] == [
            "Mixture",
            "True source",
            "Interpretation",
            "Other source",
        ]
        wav = {
            name: soundfile.read(out / "audio" / slug / f"{name}.wav", dtype="float32")
            for name in ("input", "source", "interpretation", "other")
        }
        assert all(rate == 16000 for _, rate in wav.values())
        np.testing.assert_allclose(wav["input"][0], wav["source"][0] + wav["other"][0], atol=1e-5)
        energy = np.sum(wav["source"][0] ** 2) / np.sum(wav["other"][0].astype("float64") ** 2)
        assert 10 * np.log10(energy) == pytest.approx(2.0, abs=1e-3)
        expected = metrics.si_sdr(wav["interpretation"][0], wav["source"][0]) - metrics.si_sdr(
            wav["input"][0], wav["source"][0]
        )
        assert mixture["si_sdri_db"] == pytest.approx(float(expected), abs=1e-3)
        assert mixture["target_class"] == entry["true_class"] != mixture["distractor_class"]
        assert mixture["classifier_right"] == (entry["classifier"][0][0] == entry["true_class"])
        assert entry["target_class"] == entry["classifier"][0][0], "the interpretation explains the decision"
        assert f"SI-SDRi {mixture['si_sdri_db']:+.1f} dB" in mixed["output"]
        for player in entry["players"]:
            assert (out / player["src"]).is_file()


def test_mixtures_without_labelled_clips_of_the_models_classes_are_refused_naming_the_option(tiny_run, tmp_path):
    result = invoke("report", tiny_run, "--mixtures", 2, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "--mixtures" in result.output and "dog, rain, siren" in result.output
    assert not (tmp_path / "r").exists(), "nothing is written"
    result = invoke("report", tiny_run, "--mixtures", 2, "--snr-db", "nan", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--snr-db" in result.output
