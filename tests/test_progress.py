"""Progress lines: `l2i-tf train` and `train-classifier` print a line per stage and per epoch (a resumed run says
where it goes on); the library's training prints nothing unless given a ``progress`` callable."""

from __future__ import annotations

import logging
import re

import keras
import pytest
from run_fixture import K, invoke, make_tone_job

from l2i_tf import checkpoints, progress, training

SECONDS = r"\d+\.\d s"


def lines_matching(output: str, *patterns: str) -> list[int]:
    """The index in ``output`` of the one line matching each pattern in turn (whole line): fails naming a pattern
    matched by no line or by several."""
    lines = output.splitlines()
    found = []
    for pattern in patterns:
        at = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line)]
        assert len(at) == 1, f"{pattern!r} matches {len(at)} lines of:\n{output}"
        found.append(at[0])
    return found


def train_args(config, out) -> list:
    return [
        "train",
        *("--classifier", config.classifier, "--data", config.data, "--layout", "folders", "--clip-seconds", 0.5),
        *("-k", K, "--nmf-iterations", 5, "--hidden", 8, "--batch-size", 4, "--source-mixtures", 0),
        *("--out", out),
    ]


def test_cli_train_prints_each_stage_and_epoch_and_where_a_resumed_run_goes_on(tmp_path):
    config = make_tone_job(tmp_path)  # 3 classes x 5 clips: folds 1-3 train, 4 validates, 5 tests
    run = tmp_path / "run"
    result = invoke(*train_args(config, run), "--epochs", 2)
    assert result.exit_code == 0, result.output
    at = lines_matching(
        result.output,
        "data: 9 training, 3 validation, 3 test clips at 16000 Hz",
        rf"dictionary: K={K} learnt on 9 training clips in {SECONDS}",
        rf"features: 9 training, 3 validation, 3 test examples in {SECONDS}",
        rf"epoch 1/2: loss \d+\.\d{{3}}  validation fidelity top-1 \d+\.\d%  {SECONDS}  best",
        rf"epoch 2/2: loss \d+\.\d{{3}}  validation fidelity top-1 \d+\.\d%  {SECONDS}  .+",
        r"kept the weights of epoch [12], the best on validation",
        r"test fidelity: top-1 .+",
    )
    assert at == sorted(at), result.output  # in the order they happen

    resumed = invoke("train", "--out", run, "--resume", "--epochs", 3)
    assert resumed.exit_code == 0, resumed.output
    at = lines_matching(
        resumed.output,
        f"dictionary: K={K} from {run / 'dictionary'}",
        re.escape("resuming after epoch 2/3 (its checkpoint): epoch 3/3 next"),
        rf"features: 9 training, 3 validation, 3 test examples in {SECONDS}",
        rf"epoch 3/3: loss .+  {SECONDS}  .+",
        r"test fidelity: top-1 .+",
    )
    assert at == sorted(at) and "epoch 1/" not in resumed.output, resumed.output


def test_library_training_prints_nothing_and_logs_its_lines_at_info(tiny_source_trained, tmp_path, capsys, caplog):
    config = make_tone_job(tmp_path, epochs=1, nmf_iterations=5)
    caplog.set_level(logging.INFO, logger=progress.log.name)
    training.train(tmp_path / "run", config)
    printed = capsys.readouterr()
    assert "epoch" not in printed.out + printed.err and "dictionary:" not in printed.out + printed.err
    logged = [r.getMessage() for r in caplog.records if r.name == progress.log.name]
    assert logged[0] == "data: 9 training, 3 validation, 3 test clips at 16000 Hz"
    assert any(line.startswith("epoch 1/1: loss ") for line in logged), logged

    # Given a progress callable, it is told the lines instead: conftest's tiny_source_trained (the same tiny job,
    # 1 epoch, with 6 source mixtures) was trained with progress=told.append.
    told = tiny_source_trained["told"]
    assert [line.split(":")[0] for line in told[:-1]] == ["data", "dictionary", "features", "epoch 1/1"]
    assert told[-1] == "kept the weights of epoch 1, the best on validation"


def test_epoch_lines_say_what_early_stopping_made_of_each_epoch():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stopping = checkpoints.ResumableEarlyStopping(
        monitor="val_fidelity_top1", mode="max", patience=2, restore_best_weights=True
    )
    model.stop_training = False  # as fit sets it
    told = []
    lines = progress.EpochLines(told.append, False, stopping)
    for callback in (stopping, lines):
        callback.set_model(model)
        callback.set_params({"epochs": 9})
        callback.on_train_begin()
    for epoch, fidelity in enumerate([0.5, 0.75, 0.75, 0.625]):
        logs = {"loss": 1.0 / (epoch + 1), "val_fidelity_top1": fidelity}
        lines.on_epoch_begin(epoch)
        stopping.on_epoch_end(epoch, logs)
        lines.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    stopping.on_train_end()
    lines.on_train_end()
    assert [re.sub(r"\d+\.\d s", "T s", line) for line in told] == [
        "epoch 1/9: loss 1.000  validation fidelity top-1 50.0%  T s  best",
        "epoch 2/9: loss 0.500  validation fidelity top-1 75.0%  T s  best",
        "epoch 3/9: loss 0.333  validation fidelity top-1 75.0%  T s  no rise for 1/2 epochs",
        "epoch 4/9: loss 0.250  validation fidelity top-1 62.5%  T s  no rise for 2/2 epochs, early stopping",
        "kept the weights of epoch 2, the best on validation",
    ]


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        (0, "resuming from the start of training (no epoch was checkpointed): epoch 1/40 next"),
        (12, "resuming after epoch 12/40 (its checkpoint): epoch 13/40 next"),
        (40, "resuming after epoch 40/40: no epoch left to train"),
    ],
)
def test_resume_line_says_where_the_run_goes_on(done, expected):
    assert progress.resume_line(done, 40) == expected


def test_multilabel_fidelity_is_the_micro_auprc():
    assert progress.fidelity({"val_fidelity_micro_auprc": 0.91234}, True) == "fidelity micro-AUPRC 0.912"
    assert progress.fidelity({}, False) == "fidelity top-1 n/a"


def test_cli_train_classifier_prints_the_clips_read_and_each_epoch(tmp_path):
    config = make_tone_job(tmp_path)
    args = ["train-classifier", "--data", config.data, "--layout", "folders", "--epochs", 2, "--batch-size", 4]
    result = invoke(*args, "--out", tmp_path / "c.keras")
    assert result.exit_code == 0, result.output
    at = lines_matching(
        result.output,
        rf"data: 9 training, 3 validation, 3 test clips read in {SECONDS}",
        rf"epoch 1/2: loss \d+\.\d{{3}}  validation accuracy \d\.\d{{3}}  {SECONDS}",
        rf"epoch 2/2: loss \d+\.\d{{3}}  validation accuracy \d\.\d{{3}}  {SECONDS}",
        r"test accuracy: .+",
    )
    assert at == sorted(at), result.output
