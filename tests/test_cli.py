"""The `l2i-tf` command line: help ends with examples, and train-classifier refuses bad input before any work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def examples_at_the_end(help_text: str) -> list[str]:
    """The lines after the last "Examples:" heading, which must close the help."""
    lines = [line for line in help_text.splitlines() if line.strip()]
    assert "Examples:" in [line.strip() for line in lines], help_text
    last = max(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    examples = lines[last + 1 :]
    assert examples, help_text
    for line in examples:
        assert line.strip().startswith("l2i-tf "), f"not an example command: {line!r}"
    return examples


def test_main_help_ends_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "train-classifier" in result.output
    examples_at_the_end(result.output)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_help_ends_with_examples(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    assert any(f"l2i-tf {name}" in line for line in examples_at_the_end(result.output))


def test_train_classifier_help_documents_its_options():
    output = invoke("train-classifier", "--help").output
    for option in ("--data", "--layout", "--on-error", "--train-folds", "--out", "--overwrite", "--multilabel"):
        assert option in output


def test_train_classifier_refuses_an_existing_out_without_overwrite(tmp_path):
    out = tmp_path / "model.keras"
    out.write_bytes(b"precious")
    result = invoke("train-classifier", "--out", str(out))
    assert result.exit_code == 2
    assert str(out) in result.output and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"


def test_train_classifier_refuses_an_out_that_is_not_keras(tmp_path):
    result = invoke("train-classifier", "--out", str(tmp_path / "model.h5"))
    assert result.exit_code == 2
    assert "model.h5" in result.output and ".keras" in result.output
    assert not (tmp_path / "model.h5").exists()


def test_train_classifier_refuses_a_missing_data_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = invoke("train-classifier", "--data", str(missing), "--out", str(tmp_path / "m.keras"))
    assert result.exit_code == 2
    assert "no_such_folder" in result.output and "does not exist" in result.output


@pytest.mark.parametrize(("option", "value"), [("--train-folds", "x"), ("--val-folds", "4,a"), ("--test-folds", ",")])
def test_train_classifier_bad_folds_are_a_usage_error(tmp_path, option, value):
    result = invoke("train-classifier", option, value, "--out", str(tmp_path / "m.keras"))
    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "m.keras").exists()


def test_train_classifier_overlapping_folds_are_a_usage_error(tmp_path):
    result = invoke("train-classifier", "--train-folds", "1,2,4", "--out", str(tmp_path / "m.keras"))
    assert result.exit_code == 2
    assert "overlap" in result.output


def test_train_classifier_unknown_layout_is_a_usage_error(tmp_path):
    result = invoke("train-classifier", "--layout", "tfrecord", "--out", str(tmp_path / "m.keras"))
    assert result.exit_code == 2
    assert "tfrecord" in result.output


def test_train_classifier_data_without_audio_names_the_folder(tmp_path):
    (tmp_path / "empty" / "dog").mkdir(parents=True)
    result = invoke(
        "train-classifier", "--data", str(tmp_path / "empty"), "--layout", "folders", "--out", str(tmp_path / "m.keras")
    )
    assert result.exit_code == 2
    assert "no audio clips found" in result.output and "empty" in result.output


def test_resume_refuses_options_that_differ_from_the_runs_recorded_settings(tiny_trained, tmp_path):
    """A resumed run keeps the settings it recorded: an option given with another value is refused, naming both
    values, before anything is touched; the same value, --epochs and the run's own settings pass."""
    import dataclasses
    import shutil

    from cli import train as train_cmd
    from l2i_tf import runs

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_trained["run"] / "config.json", out / "config.json")
    recorded = runs.read_config(out)
    result = invoke("train", "--out", out, "--resume", "--hidden", recorded.hidden + 1, "--seed", recorded.seed + 1)
    assert result.exit_code == 2, result.output
    assert f"--hidden {recorded.hidden + 1} (the run's: {recorded.hidden})" in result.output
    assert f"--seed {recorded.seed + 1} (the run's: {recorded.seed})" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]

    params = {p.name: p for p in train_cmd.command.params}
    same = dataclasses.replace(recorded, epochs=recorded.epochs + 5)
    given = [params[name] for name in ("hidden", "seed", "epochs", "layers", "train_folds", "classifier_path")]
    assert train_cmd.changed_on_resume(given, same, recorded) == []
    other = dataclasses.replace(recorded, layers=("another",), train_folds=(9,))
    assert train_cmd.changed_on_resume(given, other, recorded) == [
        f"--layers another (the run's: {','.join(recorded.layers)})",
        f"--train-folds 9 (the run's: {','.join(map(str, recorded.train_folds))})",
    ]


def test_train_records_the_files_it_is_given_as_absolute_paths(tmp_path, monkeypatch):
    """evaluate, report and --resume read them back from any working directory."""
    import shutil

    from cli import train as train_cmd
    from l2i_tf import classifier

    shutil.copy(classifier.DEMO_MULTICLASS, tmp_path / "mine.keras")
    (tmp_path / "clips").mkdir()
    seen = []
    monkeypatch.setattr(train_cmd, "run", lambda out, config, *args: seen.append(config) or {})
    monkeypatch.setattr(train_cmd, "report", lambda *args: None)
    monkeypatch.chdir(tmp_path)
    result = invoke("train", "--classifier", "mine.keras", "--data", "clips", "--layout", "folders", "--out", "r")
    assert result.exit_code == 0, result.output
    assert (seen[0].classifier, seen[0].data) == (str(tmp_path / "mine.keras"), str(tmp_path / "clips"))


THRESHOLD_COMMANDS = {
    "export": lambda run, clip, out: ["export", run, "--out", out],
    "explain": lambda run, clip, out: ["explain", run, clip, "--out", out],
    "explain-bulk": lambda run, clip, out: ["explain-bulk", run, clip, "--out", out],
    "report": lambda run, clip, out: ["report", run, clip, "--out", out],
    "evaluate": lambda run, clip, out: ["evaluate", run, "--out", out],
}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "5",
            "5 is outside [-1, 1], the range of relevance (components with relevance > τ are selected): no component",
        ),
        ("-1.5", "-1.5 is outside [-1, 1], the range of relevance (components with relevance > τ are selected): every"),
        ("nan", "nan is not a number"),
    ],
)
@pytest.mark.parametrize("command", sorted(THRESHOLD_COMMANDS))
def test_a_threshold_outside_relevance_range_is_refused_naming_it_before_any_work(tmp_path, command, value, message):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")  # never read: the option is refused first
    flag = "--thresholds" if command == "evaluate" else "--threshold"
    args = THRESHOLD_COMMANDS[command](str(tmp_path), str(clip), str(tmp_path / "out"))
    if command == "evaluate":
        value = f"0.3,{value}"
        if "nan" in value:  # refused with the other malformed lists
            message = "expected comma-separated numbers, got '0.3,nan'"
    result = invoke(*args, flag, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {flag}: {message}" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [-1.0, -0.5, 0.0, 0.3, 1.0])
def test_thresholds_in_relevance_range_are_taken_as_given(value):
    from cli import options

    assert options.check_threshold(value) == value
    assert options.check_threshold(None) is None
