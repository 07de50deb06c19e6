"""`l2i-tf export` and `l2i-tf explain` end to end on a tiny run: files written, sources agree, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from click.testing import CliRunner
from run_fixture import CLASS_NAMES, SAMPLE_RATE, K, chirp, write_wav

from cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_export_loaded_once):
    """A run, its export through the CLI (top 3, at most 1 s; conftest's ``tiny_export``, loaded once for the module's
    commands: ``tiny_export_loaded_once``) and a few input files."""
    tiny_export = tiny_export_loaded_once
    root = tmp_path_factory.mktemp("cli")
    inputs = root / "inputs"
    files = {
        "mono": write_wav(inputs / "mono.wav", chirp(0.6)),
        # 22.05 kHz stereo float: resampled to 16 kHz and downmixed.
        "stereo": write_wav(
            inputs / "stereo.wav", np.stack([chirp(0.5, 22050), chirp(0.5, 22050, seed=1)], 1), 22050, "FLOAT"
        ),
        "silence": write_wav(inputs / "silence.wav", np.zeros(8000, "float32")),
        "nan": write_wav(inputs / "nan.wav", np.array([0.1, np.nan] * 4000, "float32"), subtype="FLOAT"),
        "long": write_wav(inputs / "long.wav", chirp(1.5)),
        "empty": write_wav(inputs / "empty.wav", np.zeros(0, "float32")),
    }
    return {
        "root": root,
        "run": tiny_export["run"],
        "savedmodels": tiny_export["root"] / "savedmodels",
        "export": tiny_export["path"],
        "files": files,
        "out": tiny_export["output"],
    }


def test_export_command_writes_the_next_version_and_refuses_to_overwrite_it(setup):
    assert f"exported {setup['export']}" in setup["out"] and setup["export"].name == "2"  # version 1 existed
    assert (setup["export"] / "saved_model.pb").is_file()
    again = invoke("export", setup["run"], "--out", setup["savedmodels"], "--version", 2)
    assert again.exit_code == 2 and "version 2 of model 'l2i' already exists" in again.output


def test_export_command_names_an_unwritable_folder(setup, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    result = invoke("export", setup["run"], "--out", blocker / "models")
    assert result.exit_code == 2 and "cannot create the export folder" in result.output and "file.txt" in result.output


def test_explain_from_a_run_folder_writes_interpretation_components_and_json(setup, tmp_path):
    files = setup["files"]
    result = invoke(
        "explain", setup["run"], files["mono"], files["stereo"], "--threshold", 0, "--top", 3, "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    for stem, seconds in (("mono", 0.6), ("stereo", 0.5)):
        folder = tmp_path / stem
        report = json.loads((folder / "explanation.json").read_text())
        audio, rate = soundfile.read(folder / "interpretation.wav")
        assert rate == SAMPLE_RATE and len(audio) == round(seconds * SAMPLE_RATE) == report["samples"]
        assert set(report["classifier"]["probabilities"]) == set(CLASS_NAMES)
        assert set(report["interpreter"]["probabilities"]) == set(CLASS_NAMES)
        assert len(report["relevance"]) == K and 1 <= len(report["selected"]) <= 3
        for chosen in report["selected"]:
            assert chosen["relevance"] > 0 and (folder / chosen["file"]).is_file()
        assert sorted(p.name for p in folder.glob("component_*.wav")) == sorted(s["file"] for s in report["selected"])


def test_explain_from_the_savedmodel_matches_the_run_folder(setup, tmp_path):
    stereo = setup["files"]["stereo"]
    a = invoke(
        "explain", setup["run"], stereo, "--class", "rain", "--threshold", 0, "--top", 3, "--out", tmp_path / "a"
    )
    b = invoke("explain", setup["export"].parent, stereo, "--class", "rain", "--out", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ra = json.loads((tmp_path / "a" / "explanation.json").read_text())
    rb = json.loads((tmp_path / "b" / "explanation.json").read_text())
    assert rb["source_kind"] == "savedmodel" and ra["target_class"] == rb["target_class"] == "rain"
    np.testing.assert_allclose(ra["relevance"], rb["relevance"], atol=1e-4)
    assert [s["component"] for s in ra["selected"]] == [s["component"] for s in rb["selected"]]
    wa, _ = soundfile.read(tmp_path / "a" / "interpretation.wav")
    wb, _ = soundfile.read(tmp_path / "b" / "interpretation.wav")
    np.testing.assert_allclose(wa, wb, atol=1e-4)


def test_explain_silence_gives_zero_relevance_and_silent_audio(setup, tmp_path):
    result = invoke("explain", setup["run"], setup["files"]["silence"], "--threshold", -0.5, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "explanation.json").read_text())
    assert report["relevance"] == [0.0] * K and report["selected"] == []
    assert np.all(soundfile.read(tmp_path / "interpretation.wav")[0] == 0)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("--class", "cat"), 2, "unknown class 'cat'; the classes are: dog, rain, siren"),
        (("--top", 7), 2, "--top 7 differs from this SavedModel's 3"),
    ],
)
def test_explain_rejects_bad_options_naming_the_value(setup, tmp_path, args, code, message):
    result = invoke("explain", setup["export"], setup["files"]["mono"], *args, "--out", tmp_path)
    assert result.exit_code == code and message in result.output, result.output


@pytest.mark.parametrize(
    "name, code, message",
    [
        ("empty", 2, "holds no audio samples"),
        ("nan", 1, "waveform holds NaN or Inf samples"),
        ("long", 1, "24000 samples, more than the maximum of this export, 16000 samples"),
    ],
)
def test_explain_rejects_bad_audio_with_a_clear_error(setup, tmp_path, name, code, message):
    result = invoke("explain", setup["export"], setup["files"][name], "--out", tmp_path)
    assert result.exit_code == code and message in result.output, result.output


def test_an_explanation_already_in_out_is_kept_unless_overwrite_which_replaces_it_whole(setup, tmp_path):
    files = setup["files"]
    first = invoke("explain", setup["export"], files["mono"], "--threshold", -1, "--out", tmp_path)
    assert first.exit_code == 0, first.output
    assert any(p.name.startswith("component_") for p in tmp_path.iterdir())  # τ = -1: components selected
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "notes.txt").write_text("mine")

    refused = invoke("explain", setup["export"], files["silence"], "--out", tmp_path)
    assert refused.exit_code == 2 and "already holds an explanation" in refused.output
    assert "--overwrite" in refused.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "notes.txt"} == before

    replaced = invoke("explain", setup["export"], files["silence"], "--overwrite", "--out", tmp_path)
    assert replaced.exit_code == 0, replaced.output
    report = json.loads((tmp_path / "explanation.json").read_text())
    assert report["selected"] == [] and report["input"] == str(files["silence"])
    # the first explanation's component files are gone with it; the user's own file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanation.json", "interpretation.wav", "notes.txt"]


def test_an_out_that_cannot_be_written_is_a_one_line_error_naming_it(setup, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    out = tmp_path / "a_file" / "sub"
    result = invoke("explain", setup["export"], setup["files"]["mono"], "--out", out)
    assert result.exit_code == 1 and f"Error: {out}" in result.output, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_a_graph_error_reads_as_its_assertion_or_as_the_failed_op_of_any_other_kind():
    """An op that fails on an input (a classifier's pooling on a clip shorter than it can take) is an error naming
    the file, not a traceback: every TensorFlow op error reads as a message."""
    from l2i_tf.explain_files import graph_error_message

    asserted = tf.errors.InvalidArgumentError(None, None, "assertion failed: [waveform holds NaN or Inf samples]")
    assert graph_error_message(asserted) == "waveform holds NaN or Inf samples"
    aborted = tf.errors.AbortedError(None, None, "Compute received an exception: could not create a descriptor\nmore")
    assert graph_error_message(aborted) == (
        "the explanation graph failed on it (AbortedError: Compute received an exception: could not create a "
        "descriptor)"
    )


def test_a_run_whose_interpreter_does_not_fit_this_version_is_named_with_what_to_do(tiny_run, tmp_path):
    """An interpreter.keras whose weights do not fit the graph (as one written before the functional Interpreter)."""
    import zipfile

    import h5py

    from l2i_tf import runs

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))  # a copy: the session's run stays whole
    original = run / "interpreter.keras"
    with zipfile.ZipFile(original) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    weights = tmp_path / "model.weights.h5"
    weights.write_bytes(files["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        heads = []
        h5.visititems(lambda name, obj: heads.append(name) if name.endswith("/psi") else None)
        assert heads, "the test expects Ψ's weights in the file"
        for name in heads:
            del h5[name]
    files["model.weights.h5"] = weights.read_bytes()
    with zipfile.ZipFile(original, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)

    with pytest.raises(runs.RunFolderError, match="earlier l2i_tf") as refused:
        runs.load_run(run)
    assert refused.value.reason == "incompatible"
    clip = write_wav(tmp_path / "clip.wav", chirp(0.3))
    result = invoke("explain", run, clip, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "retrain it with `l2i-tf train --overwrite`" in result.output, result.output
