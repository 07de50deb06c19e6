"""SavedModel export: versioned atomic folders, the four signatures' contract, core ops only, bad input, REST."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import tensorflow as tf
from click.testing import CliRunner
from run_fixture import CLASS_NAMES, SAMPLE_RATE, K, chirp, current_umask, umask, unexpected_modes, write_wav
from serving_standin import StandIn
from tensorflow.core.protobuf import saved_model_pb2

from cli.main import main
from l2i_tf import audio, explain, export, runs
from l2i_tf.explainer import ExplainConfig, Explainer

TOP = 3
CONFIG = ExplainConfig(threshold=0.0, top_n=TOP, max_seconds=1.0)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def exported(tiny_export_loaded_once):
    """The session's tiny run and its export with CONFIG (conftest's ``tiny_export``, loaded once for the module:
    ``tiny_export_loaded_once``). Version 1 exists beforehand (with a file in it), so the export is version 2."""
    tiny_export = tiny_export_loaded_once
    path = tiny_export["path"]
    return {**tiny_export, "model": tf.saved_model.load(str(path))}


def clips(n=2, seconds=0.5):
    return np.stack([chirp(seconds, seed=i) for i in range(n)])


def test_export_takes_the_next_free_version_and_keeps_older_ones(exported):
    path = exported["path"]
    assert f"exported {path}" in exported["output"] and path.is_dir()
    assert (path / "saved_model.pb").is_file()
    assert (exported["root"] / "savedmodels" / "l2i" / "1" / "keep.txt").read_text() == "an older version"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp")] == []
    meta = export.load_metadata(path)
    assert meta["class_names"] == list(CLASS_NAMES)
    assert (meta["sample_rate"], meta["k"], meta["top_n"], meta["threshold"]) == (SAMPLE_RATE, K, TOP, 0.0)
    assert meta["max_samples"] == SAMPLE_RATE and meta["version"] == 2 and meta["domain"] == ExplainConfig.domain
    assert export.resolve_saved_model(path.parent) == path


def test_every_folder_and_file_of_an_export_has_the_mode_the_umask_gives(exported):
    """TF Serving in a container runs as another user: the version folder is not tempfile's 0o700."""
    assert unexpected_modes(exported["path"], current_umask()) == {}


def fake_saved_model(explainer, path):
    """``write_saved_model`` without tracing: a SavedModel-shaped folder (a file and a subfolder)."""
    (Path(path) / "variables").mkdir()
    (Path(path) / "saved_model.pb").write_bytes(b"not traced")


def test_an_export_under_umask_022_is_readable_by_everyone(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "write_saved_model", fake_saved_model)
    with umask(0o022):
        path = export.export(tiny_run, tmp_path / "savedmodels", "l2i", CONFIG)
    assert path == tmp_path / "savedmodels" / "l2i" / "1"
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(path / export.METADATA_FILE).st_mode & 0o777) == oct(0o644)
    assert unexpected_modes(tmp_path / "savedmodels", 0o022) == {}


def another_export_finishes_first(monkeypatch, *taken):
    """While this export writes its SavedModel, versions ``taken`` appear (other exports of the same model)."""

    def write_then_lose_the_race(explainer, path):
        fake_saved_model(explainer, path)
        for version in taken:
            (Path(path).parent / str(version)).mkdir()
            (Path(path).parent / str(version) / "saved_model.pb").write_bytes(b"the other export")

    monkeypatch.setattr(export, "write_saved_model", write_then_lose_the_race)


def test_an_export_without_version_that_loses_the_race_takes_the_next_free_version(tiny_run, tmp_path, monkeypatch):
    another_export_finishes_first(monkeypatch, 1, 2)
    path = export.export(tiny_run, tmp_path, "race", CONFIG)
    assert path == tmp_path / "race" / "3" and (path / "saved_model.pb").read_bytes() == b"not traced"
    assert export.load_metadata(path)["version"] == 3
    assert (tmp_path / "race" / "1" / "saved_model.pb").read_bytes() == b"the other export"  # untouched
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == ["1", "2", "3"]  # no temporary folder left


def test_an_export_with_version_that_loses_the_race_is_refused_and_leaves_the_winner(tiny_run, tmp_path, monkeypatch):
    another_export_finishes_first(monkeypatch, 4)
    with pytest.raises(export.ExportError, match="version 4 of model 'race' appeared at .* during the export") as e:
        export.export(tiny_run, tmp_path, "race", CONFIG, version=4)
    assert (e.value.reason, e.value.value) == ("version", 4)
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == ["4"]
    assert (tmp_path / "race" / "4" / "saved_model.pb").read_bytes() == b"the other export"


def test_the_cli_export_without_version_that_loses_the_race_says_which_version_it_took(tiny_run, tmp_path, monkeypatch):
    another_export_finishes_first(monkeypatch, 1)
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path), "--name", "race"])
    assert result.exit_code == 0, result.output
    assert f"exported {tmp_path / 'race' / '2'}" in result.output and "--version" not in result.output


def test_export_refuses_a_version_that_exists(exported):
    with pytest.raises(export.ExportError, match="version 1 of model 'l2i' already exists"):
        export.export(exported["run"], exported["root"] / "savedmodels", "l2i", CONFIG, version=1)


def test_export_into_a_folder_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder")
    with pytest.raises(export.ExportError, match="cannot create the export folder"):
        export.export(tmp_path / "no-run", blocker / "models", "l2i")


@pytest.mark.parametrize("name", ["-", "-x", ".hidden", "_x", "a/b", "a b", ""])
def test_a_model_name_that_is_no_plain_folder_name_is_refused_saying_what_is_allowed(tiny_run, tmp_path, name):
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path), "--name", name])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert (
        f"Invalid value for --name: model name {name!r} must be a plain folder name: a letter or digit first, then "
        "letters, digits, '_', '.' and '-'" in said
    ), said
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["l2i", "a-b", "esc10_v2.1", "9-x"])
def test_a_plain_folder_name_with_dashes_dots_and_underscores_inside_is_taken(tmp_path, name):
    assert export._model_folder(tmp_path, name, None) == tmp_path / name


def test_versions_lists_only_integer_folders(tmp_path):
    for name in ("1", "3", ".tmp-1-x", "notes", "10"):
        (tmp_path / name).mkdir()
    assert export.versions(tmp_path) == [1, 3, 10]
    assert export.versions(tmp_path / "missing") == []


def test_export_config_rejects_bad_values():
    with pytest.raises(ValueError, match="domain"):
        ExplainConfig(domain="db")
    with pytest.raises(ValueError, match="top_n"):
        ExplainConfig(top_n=-1)
    with pytest.raises(ValueError, match="threshold"):
        ExplainConfig(threshold=float("nan"))


FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry
    from tensorflow.core.protobuf import saved_model_pb2

    path, inputs, outputs = sys.argv[1:]
    model = tf.saved_model.load(path)
    x = np.load(inputs)
    served = model.signatures["serving_default"](waveform=tf.constant(x))
    explained = model.signatures["explain"](
        waveform=tf.constant(x), target_class=tf.constant([-1, 2], tf.int32), threshold=tf.constant(0.0)
    )
    def plain(v):
        return v.numpy().astype("U") if v.dtype == tf.string else v.numpy()
    result = {f"serving_default/{k}": plain(v) for k, v in served.items()}
    result.update({f"explain/{k}": plain(v) for k, v in explained.items()})
    np.savez(outputs, **result)

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(open(path + "/saved_model.pb", "rb").read())
    ops = set()
    for graph in (m.graph_def for m in proto.meta_graphs):
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
    modules = sorted(m for m in sys.modules if m.split(".")[0] in ("l2i_tf", "tensorflow_io", "cli"))
    print(json.dumps({"ops": sorted(ops), "unknown": unknown, "modules": modules}))
    """
)


def test_fresh_tensorflow_process_loads_the_export_matches_keras_and_sees_only_core_ops(exported, tmp_path):
    x = clips(2, 0.75)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    done = subprocess.run(
        [sys.executable, str(script), str(exported["path"]), str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["unknown"] == [], f"ops TensorFlow itself does not register: {report['unknown']}"
    assert not [op for op in report["ops"] if ">" in op], "tensorflow-io ops in the graph"
    assert {"RFFT", "IRFFT", "DecodeWav", "EncodeWav"} <= set(report["ops"])
    assert report["modules"] == [], f"the fresh process imported {report['modules']}"
    served = np.load(tmp_path / "y.npz")

    # The reference: the run folder, the interpreter's own forward pass and l2i_tf.explain's math, step by step.
    run = runs.load_run(exported["run"])
    interp = run.interpreter
    out = interp(x)
    predicted = np.argmax(out["classifier_logits"], -1)
    reference = reference_explanation(interp, x, predicted, 0.0, TOP)
    assert reference["selected"].numpy().any()
    np.testing.assert_array_equal(served["serving_default/predicted_class"], predicted)
    np.testing.assert_array_equal(served["serving_default/selected"], reference["selected"].numpy())
    for key, expected in (
        ("interpretation", reference["interpretation"]),
        ("relevance", reference["relevance"]),
        ("class_probabilities", tf.nn.softmax(out["classifier_logits"])),
        ("interpreter_probabilities", tf.nn.softmax(out["logits"])),
    ):
        diff = np.max(np.abs(served[f"serving_default/{key}"] - np.asarray(expected)))
        assert diff <= 1e-4, f"{key}: max abs diff {diff}"
    # explain: the same through the shared Explainer, eagerly, with a chosen class for the second clip.
    eager = Explainer(interp, run.class_names, CONFIG).explain(x, [-1, 2], 0.0, components=True)
    names = eager.pop("predicted_class_name").numpy().astype("U")
    np.testing.assert_array_equal(served["explain/predicted_class_name"], names)
    for key, value in eager.items():
        np.testing.assert_allclose(served[f"explain/{key}"], np.asarray(value), atol=1e-4, err_msg=key)
    assert served["explain/target_class"].tolist() == [predicted[0], 2]
    assert served["explain/component_audio"].shape == (2, TOP, x.shape[1])


def reference_explanation(interp, x, target, threshold, top_n, domain=ExplainConfig.domain) -> dict:
    """Relevance, selection and interpretation from l2i_tf.explain's functions (not the Explainer's layers); the
    interpretation's mask in ``domain`` (an export's default unless given)."""
    out = interp(x)
    X, phase = audio.analyze(x, interp.stft_config)
    relevance = explain.relevance(out["pooled"], interp.theta.kernel, target)
    selected = explain.select(relevance, threshold, top_n)
    W = interp.decoder.weights[0]
    stft = interp.stft_config
    interpretation = explain.interpret(X, phase, W, out["activations"], selected, x.shape[1], stft, domain)
    return {"interpretation": interpretation, "relevance": relevance, "selected": selected}


def _cli(*args, timeout=300):
    return subprocess.run(
        [str(Path(sys.executable).parent / "saved_model_cli"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def test_saved_model_cli_shows_every_signature_and_runs_serving_default(exported, tmp_path):
    shown = _cli("show", "--all", "--dir", str(exported["path"]))
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in shown.stdout
    assert "outputs['interpretation_wav_bytes']" in shown.stdout and "inputs['target_class']" in shown.stdout
    np.save(tmp_path / "x.npy", clips(2, 0.25))
    ran = _cli(
        "run", "--dir", str(exported["path"]), "--tag_set", "serve", "--signature_def", "serving_default",
        "--inputs", f"waveform={tmp_path / 'x.npy'}",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "Result for output key interpretation" in ran.stdout and "Result for output key selected" in ran.stdout


@pytest.mark.parametrize(
    "name, waveform, message",
    [
        ("empty", np.zeros((1, 0), "float32"), "empty waveform: 0 samples"),
        ("nan", np.array([[0.1, np.nan] * 500], "float32"), "NaN or Inf"),
        ("inf", np.array([[0.1, np.inf] * 500], "float32"), "NaN or Inf"),
        (
            "too long",
            np.zeros((1, SAMPLE_RATE + 1), "float32"),
            f"{SAMPLE_RATE + 1}.*maximum of this export, {SAMPLE_RATE} samples",
        ),
        ("wrong rank", np.zeros(4000, "float32"), r"rank 2\), got rank\] \[1\]"),
        ("empty batch", np.zeros((0, 4000), "float32"), "empty batch: 0 clips"),
    ],
)
def test_bad_waveforms_are_rejected_with_a_clear_error(exported, name, waveform, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        exported["model"].signatures["serving_default"](waveform=tf.constant(waveform))
    if name == "empty batch":
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            exported["model"].signatures["classify"](waveform=tf.constant(waveform))


def test_a_target_class_per_clip_or_one_for_all_and_no_other_count(exported):
    explain = exported["model"].signatures["explain"]
    two = tf.constant(clips(2, 0.25))
    for target in ([1], [1, 0]):
        out = explain(waveform=two, target_class=tf.constant(target), threshold=tf.constant(0.0))
        assert out["target_class"].numpy().tolist() == (target * 2)[:2]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"one class for every clip or one for all: got\] \[3"):
        explain(waveform=two, target_class=tf.constant([1, 0, 2]), threshold=tf.constant(0.0))


def test_python_side_rejects_the_wrong_rank_before_tracing(exported):
    run = runs.load_run(exported["run"])
    with pytest.raises(ValueError, match=r"\[batch, samples\] \(rank 2\), got shape \(4000,\)"):
        Explainer(run.interpreter, run.class_names, CONFIG).explain(np.zeros(4000, "float32"))


def test_silence_gives_zero_relevance_and_a_silent_interpretation(exported):
    out = exported["model"].signatures["explain"](
        waveform=tf.zeros([2, 8000]), target_class=tf.constant([-1, 1]), threshold=tf.constant(-0.5)
    )
    for key in ("interpretation", "relevance", "component_audio", "class_probabilities"):
        assert np.all(np.isfinite(out[key].numpy())), key
    assert np.all(out["interpretation"].numpy() == 0) and np.all(out["component_audio"].numpy() == 0)
    assert np.all(out["relevance"].numpy() == 0) and not out["selected"].numpy().any()


def test_explain_threshold_and_target_class_inputs(exported):
    fn = exported["model"].signatures["explain"]
    x = tf.constant(clips(2))
    none = fn(waveform=x, target_class=tf.constant([0, 1]), threshold=tf.constant(1.0))
    assert not none["selected"].numpy().any() and np.all(none["interpretation"].numpy() == 0)
    some = fn(waveform=x, target_class=tf.constant([0, 1]), threshold=tf.constant(-2.0))
    assert some["selected"].numpy().sum(axis=1).tolist() == [TOP, TOP]  # at most N even when τ admits all
    np.testing.assert_array_equal(some["component_selected"].numpy(), np.ones((2, TOP), bool))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class index in \[0, 3\), got\] \[0 5\]"):
        fn(waveform=x, target_class=tf.constant([0, 5]), threshold=tf.constant(0.5))


def test_explain_wav_takes_wav_bytes_of_any_length_and_channels(exported):
    mono = chirp(0.5)
    stereo = np.stack([chirp(0.3, seed=1), chirp(0.3, seed=2)], axis=1)
    files = tf.stack([tf.audio.encode_wav(mono[:, None], SAMPLE_RATE), tf.audio.encode_wav(stereo, SAMPLE_RATE)])
    out = exported["model"].signatures["explain_wav"](audio=files)
    first = tf.audio.decode_wav(out["interpretation_wav_bytes"][0])
    second = tf.audio.decode_wav(out["interpretation_wav_bytes"][1])
    assert first.audio.shape == (8000, 1) and second.audio.shape == (4800, 1)
    assert int(first.sample_rate) == SAMPLE_RATE
    # The same as serving_default on the decoded (16-bit) audio, up to 16-bit quantisation of the output.
    decoded = tf.audio.decode_wav(files[0]).audio[:, 0][None]
    direct = exported["model"].signatures["serving_default"](waveform=decoded)
    np.testing.assert_allclose(first.audio[:, 0], direct["interpretation"][0], atol=2 / 32768)
    np.testing.assert_allclose(out["relevance"][0], direct["relevance"][0], atol=1e-5)


def test_explain_wav_names_both_rates_when_the_file_has_another_rate(exported):
    wav = tf.audio.encode_wav(chirp(0.3, rate=22050)[:, None], 22050)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"22050\] \[Hz differs from the model sample rate 16000 Hz"
    ):
        exported["model"].signatures["explain_wav"](audio=wav[None])


def test_classify_returns_probabilities_and_class_names(exported):
    out = exported["model"].signatures["classify"](waveform=tf.constant(clips(2)))
    assert set(out) == {"class_probabilities", "predicted_class", "predicted_class_name", "class_names"}
    assert out["class_names"].numpy().tolist() == [[n.encode() for n in CLASS_NAMES]] * 2
    np.testing.assert_allclose(out["class_probabilities"].numpy().sum(1), 1, rtol=1e-5)


def _post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_request_client_and_rest_contract_against_the_serving_standin(exported, tmp_path):
    mono = write_wav(tmp_path / "in" / "mono.wav", chirp(0.5))
    other = write_wav(tmp_path / "in" / "other.wav", chirp(0.4, seed=3))
    wrong_rate = write_wav(tmp_path / "in" / "fast.wav", chirp(0.3, rate=22050), rate=22050)
    with StandIn(exported["path"], "l2i") as server:
        model_url = f"{server.url}/v1/models/l2i"
        with urllib.request.urlopen(model_url, timeout=30) as response:
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"

        result = CliRunner().invoke(
            main, ["request", "--url", model_url, str(mono), str(other), "--out", str(tmp_path / "out")]
        )
        assert result.exit_code == 0, result.output
        served = (tmp_path / "out" / "mono" / "interpretation.wav").read_bytes()
        direct = exported["model"].signatures["explain_wav"](audio=tf.constant([mono.read_bytes()]))
        assert served == direct["interpretation_wav_bytes"].numpy()[0]
        response = json.loads((tmp_path / "out" / "other" / "response.json").read_text())
        assert response["predicted_class_name"] in CLASS_NAMES and len(response["relevance"]) == K
        # responses already there are kept unless --overwrite; inputs of one stem get numbered folders
        again = ["request", "--url", model_url, str(mono), str(other), "--out", str(tmp_path / "out")]
        result = CliRunner().invoke(main, again)
        assert result.exit_code == 2 and "already holds a response" in result.output, result.output
        assert (tmp_path / "out" / "mono" / "interpretation.wav").read_bytes() == served
        assert CliRunner().invoke(main, [*again, "--overwrite"]).exit_code == 0
        twin = write_wav(tmp_path / "in2" / "mono.wav", chirp(0.4, seed=5))
        result = CliRunner().invoke(
            main, ["request", "--url", model_url, str(mono), str(twin), "--out", str(tmp_path / "t")]
        )
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["mono", "mono_2"]

        # Columnar format, several inputs, a scalar input: the explain signature.
        status, body = _post(
            model_url + ":predict",
            {
                "signature_name": "explain",
                "inputs": {"waveform": clips(1, 0.25).tolist(), "target_class": [1], "threshold": 0.0},
            },
        )
        assert status == 200 and np.asarray(body["outputs"]["component_audio"]).shape == (1, TOP, 4000)
        # Row format with b64, explicit version.
        status, body = _post(
            f"{model_url}/versions/2:predict",
            {
                "signature_name": "explain_wav",
                "instances": [{"audio": {"b64": base64.b64encode(mono.read_bytes()).decode()}}],
            },
        )
        assert status == 200 and base64.b64decode(body["predictions"][0]["interpretation_wav_bytes"]["b64"]) == served

        result = CliRunner().invoke(
            main, ["request", "--url", model_url, str(wrong_rate), "--out", str(tmp_path / "x")]
        )
        assert result.exit_code == 1 and "22050" in result.output and "16000" in result.output, result.output
        result = CliRunner().invoke(main, ["request", "--url", server.url, str(mono), "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and "not a TF Serving model URL" in result.output


def test_request_sends_float_24_bit_wavex_flac_and_ogg_files_and_names_the_file_the_server_refuses(exported, tmp_path):
    # samples on the 16-bit grid: every lossless format below holds them, and the client sends them unchanged
    x = (np.round(chirp(0.5) * 32768) / 32768).astype("float32")
    reference = write_wav(tmp_path / "in" / "pcm16.wav", x)
    kinds = {
        "float": ("WAV", "FLOAT", ".wav"),
        "pcm24": ("WAV", "PCM_24", ".wav"),
        "wavex": ("WAVEX", "PCM_16", ".wav"),
    }
    kinds |= {"flac": ("FLAC", "PCM_16", ".flac"), "vorbis": ("OGG", "VORBIS", ".ogg")}
    paths = {}
    for name, (fmt, subtype, suffix) in kinds.items():
        paths[name] = tmp_path / "in" / f"{name}{suffix}"
        soundfile.write(paths[name], x, SAMPLE_RATE, format=fmt, subtype=subtype)
    direct = exported["model"].signatures["explain_wav"](audio=tf.constant([reference.read_bytes()]))
    expected = direct["interpretation_wav_bytes"].numpy()[0]
    with StandIn(exported["path"], "l2i") as server:
        model_url = f"{server.url}/v1/models/l2i"
        out = tmp_path / "out"
        result = CliRunner().invoke(main, ["request", "--url", model_url, *map(str, paths.values()), "--out", str(out)])
        assert result.exit_code == 0, result.output
        for name in ("float", "pcm24", "wavex", "flac"):  # lossless: the 16-bit file's explanation, byte for byte
            assert (out / name / "interpretation.wav").read_bytes() == expected, name
        vorbis, _ = soundfile.read(out / "vorbis" / "interpretation.wav")
        assert len(vorbis) == len(x) and np.all(np.isfinite(vorbis))

        # a batch the server refuses names the file it refuses (retried one by one), and writes nothing
        fast = write_wav(tmp_path / "in" / "fast.wav", chirp(0.3, rate=22050), rate=22050)
        batch = [str(paths["float"]), str(fast)]
        result = CliRunner().invoke(main, ["request", "--url", model_url, *batch, "--out", str(tmp_path / "b")])
        assert result.exit_code == 1, result.output
        assert f"{fast}: {model_url}: HTTP 400" in result.output and "22050" in result.output, result.output
        assert f"{paths['float']}:" not in result.output and "1 of 2 files refused" in result.output
        assert not (tmp_path / "b").exists()


def test_the_exported_explanation_makes_one_stft_per_window(exported):
    from test_explainer import graph_ops

    signatures = exported["model"].signatures
    serve = graph_ops(signatures["serving_default"].graph.as_graph_def())
    classify = graph_ops(signatures["classify"].graph.as_graph_def())
    # the explanation's STFTs beyond the classifier's own front end: one, and one ISTFT
    assert serve.get("RFFT", 0) - classify.get("RFFT", 0) == 1
    assert serve.get("IRFFT", 0) == 1


def test_writing_the_savedmodel_traces_each_signature_once(exported):
    """Keras' ExportArchive lists the variables of each endpoint by tracing it, then tf.saved_model.save traced it
    again (another context): the export lists them in the save's context, so each graph is built once, and the
    graph two signatures share once. (The session's export, of CONFIG, recorded the graphs it built: conftest's
    ``tiny_export``.)"""
    traced = exported["traced"]
    # explain has its graph, serving_default and explain_wav share one (explain_wav calls it per file); classify
    assert sorted(traced) == ["classify", "explain_recording", "explain_recording"]
    # and no Keras model's own default signature (a `serving_default` function per model) is traced or saved
    saved = saved_model_pb2.SavedModel.FromString((exported["path"] / "saved_model.pb").read_bytes())
    functions = [f.signature.name for f in saved.meta_graphs[0].graph_def.library.function]
    assert functions and not [name for name in functions if "serving_default" in name], functions
    out = exported["model"].signatures["serving_default"](waveform=tf.constant(clips(1)))
    assert np.all(np.isfinite(out["interpretation"].numpy()))


def test_a_run_folder_given_for_a_savedmodel_says_to_export_it_first(tiny_run):
    with pytest.raises(FileNotFoundError, match="holds no SavedModel .*it is a run folder: export it first"):
        export.resolve_saved_model(tiny_run)
