"""Issue 8: crash-safe resume, killed exports, safe loading, reproducibility and serving from 8 threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
from run_fixture import assert_clean_error, chirp, invoke

from l2i_tf import classifier, export, runs, training

SR = 16000
TINY = classifier.DemoConfig(channels=(4, 8, 8, 8))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TIMING = ("data_seconds", "dictionary_seconds", "features_seconds", "train_seconds", "total_seconds")


@pytest.fixture(scope="module")
def job(tiny_trained):
    """The tiny tone job of tests/run_fixture.py, 4 epochs, no early stop (conftest's ``tiny_trained``)."""
    return tiny_trained["root"], tiny_trained["config"]


def kill_when(command: list[str], ready, what: str, timeout: float = 300) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()``; fails if it ends first or never gets there."""
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{what}: it ended first: {proc.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, what
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


def _assert_same_weights(a: Path, b: Path, atol=1e-5):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(wa, wb, strict=True))
    assert diff <= atol, f"max abs weight difference {diff}"
    return diff


# ---------------------------------------------------------------- 2. crash-safe training

KILLED_RUN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import keras
    from l2i_tf import runs, training

    out, config_file, marker = sys.argv[1:]
    config = runs.TrainConfig.from_dict(json.loads(Path(config_file).read_text()))

    class StallMidEpoch(keras.callbacks.Callback):
        # Signal the test in the middle of the third epoch (two checkpoints exist), then wait to be killed.
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 2 and batch == 1:
                Path(marker).write_text("mid-epoch")
                time.sleep(600)

    training.train(out, config, callbacks=[StallMidEpoch()])
    """
)


def test_training_killed_mid_epoch_resumes_to_the_metrics_and_weights_of_an_uninterrupted_run(tiny_trained, tmp_path):
    config = tiny_trained["config"]
    reference, uninterrupted = tiny_trained["metrics"], tiny_trained["run"]  # the same job, run through once
    assert config.epochs == 4  # killed in the third epoch, resumed for the third and fourth

    killed = tmp_path / "killed"
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "run.py").write_text(KILLED_RUN)
    marker = tmp_path / "mid-epoch"
    argv = [str(tmp_path / "run.py"), str(killed), str(tmp_path / "config.json"), str(marker)]
    kill_when([sys.executable, *argv], marker.exists, "the training process never reached its third epoch")
    assert not (killed / "metrics.json").exists()
    state = json.loads((killed / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 2 and set(state["seconds"]) == set(TIMING)
    # The run folder records the full command line, the seed and the package versions.
    recorded = json.loads((killed / "config.json").read_text())
    assert recorded["environment"]["command"] == argv
    assert recorded["train"]["seed"] == config.seed
    assert {"tensorflow", "keras", "numpy", "l2i_tf"} <= set(recorded["environment"]["versions"])

    result = invoke("train", "--out", killed, "--resume", "--epochs", config.epochs)
    assert result.exit_code == 0, result.output
    resumed = json.loads((killed / "metrics.json").read_text())
    # The run's epochs and time in all: the killed session's, up to its checkpoint, and the resumed one's.
    assert resumed["epochs_run"] == resumed["epochs_done"] == reference["epochs_run"] == config.epochs
    assert resumed["last_session"]["epochs_run"] == 2 and reference["last_session"]["epochs_run"] == config.epochs
    for key in TIMING:
        assert resumed[key] == pytest.approx(state["seconds"][key] + resumed["last_session"][key]), key
    assert resumed["train_seconds"] > resumed["last_session"]["train_seconds"]
    for split in ("validation", "test"):
        for key, value in reference[split].items():
            assert resumed[split][key] == pytest.approx(value, abs=1e-5), (split, key)
    for key, values in reference["history"].items():
        np.testing.assert_allclose(resumed["history"][key], values, atol=1e-5, err_msg=key)
    _assert_same_weights(uninterrupted / "interpreter.keras", killed / "interpreter.keras")
    last = "checkpoints/epoch-0004.npz"  # Ψ/Θ's weights and the optimizer's state after the last epoch
    with np.load(uninterrupted / last) as a, np.load(killed / last) as b:
        assert a.files == b.files
        for name in (name for name in a.files if a[name].dtype.kind != "U"):  # values, not their paths
            np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = training.epoch_order(3, 7, 50)
    np.testing.assert_array_equal(a, training.epoch_order(3, 7, 50))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, training.epoch_order(3, 8, 50))
    assert not np.array_equal(a, training.epoch_order(4, 7, 50))


# ---------------------------------------------------------------- 5. reproducibility


def test_same_seed_and_inputs_give_an_identical_dictionary_and_metrics_json(tiny_trained, tmp_path):
    # "a": the session's run of the tiny job (trained earlier in this process); "b": the same job again.
    runs_ = {"a": tiny_trained["run"], "b": tmp_path / "b"}
    training.train(runs_["b"], tiny_trained["config"])
    np.testing.assert_array_equal(
        np.load(runs_["a"] / "dictionary" / "dictionary.npz")["W"],
        np.load(runs_["b"] / "dictionary" / "dictionary.npz")["W"],
    )

    def without_timings(name):  # the run's and its last session's
        m = json.loads((runs_[name] / "metrics.json").read_text())
        m["last_session"] = {k: v for k, v in m["last_session"].items() if k not in TIMING}
        return {k: v for k, v in m.items() if k not in TIMING}

    assert without_timings("a") == without_timings("b")
    a, b = (json.loads((runs_[n] / "config.json").read_text()) for n in ("a", "b"))
    assert a["train"] == b["train"] and a["environment"]["versions"] == b["environment"]["versions"]


# ---------------------------------------------------------------- 3. nothing lost

KILLED_EXPORT = "import sys; from cli.main import main; main(sys.argv[1:])"


def test_an_export_killed_while_writing_leaves_no_version_and_the_next_export_works(tiny_run, tmp_path):
    run = tiny_run  # read only: the exports go to tmp_path
    base = tmp_path / "savedmodels" / "l2i"
    command = [sys.executable, "-c", KILLED_EXPORT, "export", str(run), "--out", str(tmp_path / "savedmodels")]

    def writing() -> bool:  # the export is writing files into its temporary folder
        return base.is_dir() and any(p.is_file() for t in base.glob(".*.tmp-*") for p in t.rglob("*"))

    kill_when(command, writing, "the export never started writing")
    leftovers = [p.name for p in base.iterdir()]
    assert leftovers and all(name.startswith(".1.tmp-") for name in leftovers), leftovers
    assert export.versions(base) == []  # TF Serving loads integer folders only: it sees nothing
    with pytest.raises(FileNotFoundError, match="holds no SavedModel"):
        export.resolve_saved_model(base)

    result = invoke("export", run, "--out", tmp_path / "savedmodels")
    assert result.exit_code == 0, result.output
    assert export.versions(base) == [1]
    model = tf.saved_model.load(str(base / "1"))
    out = model.signatures["serving_default"](waveform=tf.constant(chirp(0.25)[None]))
    assert np.all(np.isfinite(out["interpretation"].numpy()))


def test_classifier_and_run_files_are_written_through_temporary_files(job, tmp_path):
    model = classifier.build_demo_classifier(3, TINY)
    info = classifier.ClassifierInfo(("a", "b", "c"), SR, False, classifier.DEMO_LAYERS)
    classifier.save_classifier(model, info, tmp_path / "c.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.keras"]  # no temporary file left
    assert classifier.load_info(tmp_path / "c.keras") == info


# ---------------------------------------------------------------- 4. safe loading


def _lambda_classifier(path: Path) -> Path:
    """Waveform -> logits through a Lambda layer holding Python code (a model Keras' safe mode refuses)."""
    wave = keras.Input((None,))
    x = keras.layers.Lambda(lambda w: w[..., None] * 2.0, name="scale")(wave)
    x = keras.layers.Conv1D(4, 64, strides=32, activation="relu", name="conv")(x)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x))
    keras.Model(wave, logits).save(path)
    return path


def test_a_lambda_layer_is_refused_naming_unsafe_load_which_opts_in(job, tmp_path):
    root, config = job
    model = _lambda_classifier(tmp_path / "lambda.keras")
    with pytest.raises(runs.UnsafeModelError, match="holds Python code .* safe mode") as refused:
        runs.load_classifier(str(model))
    assert refused.value.path == model  # the error carries the file; the CLI adds the flag
    assert runs.load_classifier(str(model), safe_mode=False).output.shape[-1] == 3

    args = ["train", "--classifier", model, "--layers", "conv:btc", "--data", config.data, "--layout", "folders"]
    args += ["--k", 8, "--nmf-iterations", 5, "--hidden", 8, "--clip-seconds", 0.5, "--epochs", 1, "--batch-size", 8]
    run = tmp_path / "run"
    assert_clean_error(invoke(*args, "--out", run), 2, "--unsafe-load", "lambda.keras")
    assert not (run / "interpreter.keras").exists()
    trained = invoke(*args, "--out", run, "--unsafe-load")
    assert trained.exit_code == 0, trained.output

    # The run folder holds the Lambda too: explain and export refuse it the same way, and opt in the same way.
    clip = tmp_path / "clip.wav"
    sf.write(clip, chirp(0.5), SR)
    assert_clean_error(invoke("explain", run, clip, "--out", tmp_path / "e"), 2, "--unsafe-load", "interpreter.keras")
    explained = invoke("explain", run, clip, "--out", tmp_path / "e", "--unsafe-load")
    assert explained.exit_code == 0, explained.output
    models = tmp_path / "savedmodels"
    assert_clean_error(invoke("export", run, "--out", models), 2, "--unsafe-load")
    assert export.versions(models / "l2i") == []
    exported = invoke("export", run, "--out", models, "--unsafe-load")
    assert exported.exit_code == 0, exported.output


# ---------------------------------------------------------------- 6. serving under load


def test_the_savedmodel_called_from_8_threads_matches_sequential_calls(tiny_export):
    serve = tf.saved_model.load(str(tiny_export["path"])).signatures["serving_default"]  # τ = 0, N = 3
    # 24 requests: batches of 1-3 clips of three lengths, all different.
    requests = [
        np.stack([chirp(0.2 + 0.1 * (i % 3), seed=10 * i + j) for j in range(1 + i % 3)]) * (0.5 + i / 24)
        for i in range(24)
    ]

    def call(x):
        return {k: v.numpy() for k, v in serve(waveform=tf.constant(x, tf.float32)).items()}

    sequential = [call(x) for x in requests]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(call, requests))
    seconds = time.perf_counter() - start
    for i, (a, b) in enumerate(zip(sequential, concurrent, strict=True)):
        assert set(a) == set(b)
        for key in a:
            if a[key].dtype.kind in "fc":
                np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=f"request {i}: {key}")
            else:
                np.testing.assert_array_equal(b[key], a[key], err_msg=f"request {i}: {key}")
    print(f"24 requests from 8 threads in {seconds:.2f} s, identical to sequential calls")
