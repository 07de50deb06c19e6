"""Per-epoch checkpoints: what training changes in one .npz, restored into the interpreter a resumed run builds;
an earlier version's whole-interpreter checkpoint still resumes; one that does not fit the run is refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from run_fixture import assert_clean_error, invoke

from l2i_tf import audio, checkpoints, classifier, runs, training
from l2i_tf.classifier_logits import with_logits
from l2i_tf.dictionary import Dictionary


def _copy(tiny_trained, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_trained["run"], out)  # resuming changes a run: a copy of the session's
    return out


def _new_interpreter(run: Path, **changes):
    """A new interpreter of ``run``'s recorded settings (``changes`` to them), as a resumed run builds it."""
    config = dataclasses.replace(runs.read_config(run), **changes)
    model_f, _ = with_logits(runs.load_classifier(config.classifier, config.custom_objects))
    stft = audio.STFTConfig.from_dict(config.stft)
    return training.new_interpreter(model_f, config, Dictionary.load(run / runs.DICTIONARY), stft)


def _state(interpreter) -> list[np.ndarray]:
    """Every value training changes, and every dropout RNG state (the classifier's too)."""
    parts = checkpoints.checkpoint_variables(interpreter)
    return [v.numpy() for v in (*parts["model"], *parts["optimizer"], *checkpoints.seed_states(interpreter))]


def test_a_checkpoint_holds_the_heads_and_the_optimizer_but_not_the_classifier(tiny_trained):
    folder = tiny_trained["run"] / runs.CHECKPOINTS
    state = json.loads((folder / runs.CHECKPOINT_STATE).read_text())
    assert state["checkpoint"] == "epoch-0004.npz"
    assert {p.name for p in folder.iterdir()} == {"epoch-0004.npz", state["best_weights"], runs.CHECKPOINT_STATE}
    interpreter = _new_interpreter(tiny_trained["run"])
    with np.load(folder / "epoch-0004.npz") as saved:
        paths = [str(p) for p in saved["model_paths"]]
        assert len(saved["optimizer_paths"]) == len(interpreter.optimizer.variables)
        assert int(saved["optimizer_0000"]) > 0  # the iteration count: the optimizer's state after training
    assert paths and all(p.split("/")[0] in ("psi", "theta", "decoder") for p in paths)
    assert {v.path for v in interpreter.classifier.weights}.isdisjoint(paths)


def test_a_checkpoint_of_the_previous_version_resumes_to_the_same_state(tiny_trained, tmp_path):
    """The previous version checkpointed the whole interpreter as ``epoch-NNNN.keras`` (``model.save`` of the compiled
    interpreter): such a folder resumes to the state the .npz holds, and goes on in the new format."""
    job, out = tiny_trained["config"], _copy(tiny_trained, tmp_path)
    folder = out / runs.CHECKPOINTS
    restored = checkpoints.resume(folder, _new_interpreter(out)).interpreter
    # The same checkpoint written the old way.
    restored.save(folder / "epoch-0004.keras")
    (folder / "epoch-0004.npz").unlink()
    state = json.loads((folder / runs.CHECKPOINT_STATE).read_text())
    (folder / runs.CHECKPOINT_STATE).write_text(json.dumps({**state, "checkpoint": "epoch-0004.keras"}))

    old = checkpoints.resume(folder, _new_interpreter(out))
    assert old.epochs_done == job.epochs and old.history == state["history"]
    for a, b in zip(_state(old.interpreter), _state(restored), strict=True):
        np.testing.assert_array_equal(a, b)

    results = training.train(out, dataclasses.replace(job, epochs=job.epochs + 1), resume=True)
    assert results["epochs_done"] == job.epochs + 1 and results["last_session"]["epochs_run"] == 1
    state = json.loads((folder / runs.CHECKPOINT_STATE).read_text())
    assert state["checkpoint"] == "epoch-0005.npz" and not (folder / "epoch-0004.keras").exists()


def test_a_checkpoint_that_does_not_fit_the_interpreter_is_refused_naming_it(tiny_trained, tmp_path):
    out = _copy(tiny_trained, tmp_path)
    folder = out / runs.CHECKPOINTS
    checkpoint = str(folder / "epoch-0004.npz")
    with pytest.raises(checkpoints.CheckpointMismatchError, match="psi/branch0/kernel") as error:
        checkpoints.resume(folder, _new_interpreter(out, hidden=runs.read_config(out).hidden + 1))
    assert checkpoint in str(error.value)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="optimizer variables") as error:
        checkpoints.resume(folder, _new_interpreter(out, ema_epochs=0.0))  # no moving average: fewer slots
    assert checkpoint in str(error.value)


def test_a_resume_whose_classifier_file_changed_is_refused_naming_the_checkpoint(tiny_trained, tmp_path):
    """The checkpoint keeps no copy of the frozen classifier: a classifier file whose weights changed since the run
    started would continue the run on another classifier, and is refused."""
    job, out = tiny_trained["config"], _copy(tiny_trained, tmp_path)
    model = runs.load_classifier(job.classifier)
    model.set_weights([w + 0.01 for w in model.get_weights()])
    changed = tmp_path / "classifier.keras"
    classifier.save_classifier(model, classifier.load_info(job.classifier), changed)
    recorded = json.loads((out / runs.CONFIG).read_text())
    recorded["train"]["classifier"] = str(changed)
    (out / runs.CONFIG).write_text(json.dumps(recorded))
    before = {p.name: p.read_bytes() for p in (out / runs.CHECKPOINTS).iterdir()}

    result = invoke("train", "--out", out, "--resume", "--epochs", job.epochs + 1)
    assert_clean_error(result, 1, "epoch-0004.npz", "the classifier's weights differ")
    assert {p.name: p.read_bytes() for p in (out / runs.CHECKPOINTS).iterdir()} == before


def test_a_mixed_precision_interpreter_restores_the_same_float32_state(tiny_trained):
    """Mixed precision changes the frozen classifier's compute only (its copy in the extractor, float32 weights, is
    not checkpointed): Ψ, Θ and the optimizer are float32, and a checkpoint restores into either interpreter alike."""
    run, checkpoint = tiny_trained["run"], tiny_trained["run"] / runs.CHECKPOINTS / "epoch-0004.npz"
    restored = []
    for precision in ("mixed_bfloat16", "float32"):
        interpreter = _new_interpreter(run, precision=precision)
        checkpoints.restore_variables(checkpoint, interpreter)
        parts = checkpoints.checkpoint_variables(interpreter)
        assert {v.dtype for v in parts["model"] + parts["optimizer"]} <= {"float32", "int64"}, precision
        restored.append([v.numpy() for v in parts["model"] + parts["optimizer"]])
    for a, b in zip(*restored, strict=True):
        np.testing.assert_array_equal(a, b)
