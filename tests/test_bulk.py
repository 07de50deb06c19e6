"""`l2i-tf explain-bulk` on Apache Beam's DirectRunner: 26 files of mixed formats, rates, channels and lengths (2 of
them corrupt) give what `l2i-tf explain` gives, an index, a dead-letter file; reruns and killed runs are resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
from run_fixture import chirp, invoke, noise, saved_model_loaded_once, write

from cli.options import output_folders
from l2i_tf import bulk, bulk_files, export
from l2i_tf.explainer import ExplainConfig

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
# (format, subtype, rate, channels): ogg, flac, 16-bit and float wav, stereo, 8-48 kHz.
FORMATS = [
    ("wav", "PCM_16", 16000, 1),
    ("wav", "FLOAT", 44100, 2),
    ("flac", "PCM_16", 22050, 1),
    ("ogg", "VORBIS", 48000, 1),
    ("wav", "PCM_16", 8000, 2),
    ("flac", "PCM_24", 32000, 2),
    ("ogg", "VORBIS", 44100, 2),
    ("wav", "FLOAT", 11025, 1),
]
SECONDS = [0.5, 0.5, 0.8, 1.0, 1.3, 2.0, 0.5]  # repeats: clips of equal length share a batch
GOOD = 24  # good files: every format three times, every length at least three times


def good_inputs(root: Path) -> list[Path]:
    paths = []
    for i in range(GOOD):
        fmt, subtype, rate, channels = FORMATS[i % len(FORMATS)]
        x = chirp(SECONDS[i % len(SECONDS)], rate, seed=i)
        if channels == 2:
            x = np.stack([x, 0.5 * noise(len(x), seed=i)], axis=1)
        folder = root / f"set{i % 3}" / ("deep" if i % 5 == 0 else "")
        paths.append(write(folder / f"clip{i:02d}.{fmt}", x, rate, subtype=subtype))
    return paths


def bad_inputs(root: Path) -> list[Path]:
    truncated = write(root / "set1" / "truncated.wav", chirp(1.0), 16000)
    truncated.write_bytes(truncated.read_bytes()[:2000])  # the header promises 16000 samples
    not_audio = root / "set2" / "not_audio.ogg"
    not_audio.write_bytes(b"OggS but not really" + bytes(range(200)))
    return [truncated, not_audio]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_run):
    """A tiny export (conftest's ``tiny_run``; max 3 s, τ = 0, N = 3), the archive, one bulk run with components, and
    `l2i-tf explain`'s outputs for the same files. The export is loaded once while the module runs (every bulk run
    and command here loads it: ``run_fixture.saved_model_loaded_once``); the killed run's processes load their own.
    """
    root = tmp_path_factory.mktemp("bulk")
    saved = export.export(tiny_run, root / "savedmodels", "l2i", ExplainConfig(threshold=0.0, top_n=3, max_seconds=3.0))
    good, bad = good_inputs(root / "archive"), bad_inputs(root / "archive")
    with saved_model_loaded_once(saved):
        t0 = time.perf_counter()
        counts = bulk.run(saved, str(root / "archive" / "**"), root / "out", components=True, max_batch_size=4)
        seconds = time.perf_counter() - t0
        result = invoke("explain", saved, *good, "--out", root / "reference")
        assert result.exit_code == 0, result.output
        reference = dict(zip(good, output_folders(good, root / "reference"), strict=True))
        yield {
            **{"root": root, "saved": saved, "good": good, "bad": bad, "counts": counts, "seconds": seconds},
            **{"out": root / "out", "reference": reference},
        }


def read(path: Path) -> np.ndarray:
    samples, _ = soundfile.read(path, dtype="float32")
    return samples


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def summaries(out: Path) -> list[Path]:
    """The inputs' JSON files under ``out`` (not the job's own job.json)."""
    return [p for p in out.rglob("*.json") if p != out / bulk_files.JOB_FILE]


def assert_same_as_explain(archive, out: Path):
    layout = bulk_files.Layout(str(archive["root"] / "archive") + "/", out)
    for path, ref in archive["reference"].items():
        expected = json.loads((ref / "explanation.json").read_text())
        got = json.loads((out / layout.summary(str(path))).read_text())
        assert got["input"] == str(path)
        assert got["samples"] == expected["samples"]
        assert got["target_class"] == expected["target_class"]
        for key in ("classifier", "interpreter"):
            assert got[key]["predicted"] == expected[key]["predicted"], (path, key)
            assert got[key]["probabilities"] == pytest.approx(expected[key]["probabilities"], abs=1e-4), (path, key)
        assert got["relevance"] == pytest.approx(expected["relevance"], abs=1e-4)
        assert [s["component"] for s in got["selected"]] == [s["component"] for s in expected["selected"]]
        interpretation = read(out / layout.interpretation(str(path)))
        assert np.max(np.abs(interpretation - read(ref / "interpretation.wav"))) <= 1e-4, path
        for mine, theirs in zip(got["selected"], expected["selected"], strict=True):
            assert np.max(np.abs(read(out / mine["file"]) - read(ref / theirs["file"]))) <= 1e-4, path


def test_mirror_base_of_globs():
    assert bulk_files.glob_base("/data/archive/**/*.ogg") == "/data/archive/"
    assert bulk_files.glob_base("/data/a*/x.wav") == "/data/"
    assert bulk_files.glob_base("gs://bucket/clips/*.wav") == "gs://bucket/clips/"
    assert bulk_files.glob_base("/data/one.wav") == "/data/"
    layout = bulk_files.Layout("/data/archive/", "/out")
    assert layout.interpretation("/data/archive/a/b.ogg") == "a/b.ogg.wav"
    assert layout.component("/data/archive/a/b.ogg", 7) == "a/b.ogg.components/component_007.wav"
    assert layout.full(layout.summary("/data/archive/b.ogg")) == "/out/b.ogg.json"


def test_outputs_equal_l2i_tf_explain_on_the_same_files(archive):
    assert_same_as_explain(archive, archive["out"])
    print(f"bulk run of {GOOD + 2} files: {archive['seconds']:.1f} s")


def test_index_has_one_line_per_good_file_and_errors_name_the_bad_ones(archive):
    out, good = archive["out"], archive["good"]
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["path"] for r in lines] == sorted(str(p) for p in good)
    by_path = {r["path"]: r for r in lines}
    for path, ref in archive["reference"].items():
        expected = json.loads((ref / "explanation.json").read_text())
        row = by_path[str(path)]
        assert row["seconds"] == pytest.approx(expected["seconds"])
        assert row["classifier_class"] == expected["classifier"]["predicted"]
        assert row["interpreter_class"] == expected["interpreter"]["predicted"]
        assert (out / row["output"]).is_file() and all((out / s["file"]).is_file() for s in row["selected"])
    table = pq.read_table(out / "index.parquet").to_pylist()
    assert table == lines
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == sorted(str(p) for p in archive["bad"])
    assert all(e["path"] in e["reason"] for e in errors)
    counts = archive["counts"]
    assert (counts["files_explained"], counts["files_failed"], counts["files_skipped"]) == (GOOD, 2, 0)
    assert (counts["indexed"], counts["errors"]) == (GOOD, 2)
    assert counts["audio_seconds"] == pytest.approx(sum(r["seconds"] for r in lines), abs=0.05)


def test_a_rerun_writes_nothing_new(archive):
    before = snapshot(archive["out"])
    counts = bulk.run(archive["saved"], str(archive["root"] / "archive" / "**"), archive["out"], components=True)
    assert snapshot(archive["out"]) == before
    assert (counts["files_skipped"], counts["files_explained"], counts["files_failed"]) == (GOOD, 0, 2)


def test_fail_on_error_sets_the_exit_code(archive):
    args = ("explain-bulk", archive["saved"], str(archive["root"] / "archive" / "**"), "--out", archive["out"])
    result = invoke(*args, "--components")
    assert result.exit_code == 0, result.output
    assert f"skipped (already complete) {GOOD}, failed 2" in result.output
    result = invoke(*args, "--components", "--fail-on-error")
    assert result.exit_code == 1
    assert "2 input(s) failed" in result.output and "errors.jsonl" in result.output


def test_other_settings_redo_the_outputs(archive, tmp_path):
    """Outputs made without components (or with another τ) are not complete for a run that asks for them."""
    glob = str(archive["root"] / "archive" / "set0" / "clip0[36].*")
    first = bulk.run(archive["saved"], glob, tmp_path)
    assert (first["files_explained"], first["files_skipped"]) == (2, 0)
    assert not list(tmp_path.rglob("*.components"))
    again = bulk.run(archive["saved"], glob, tmp_path, components=True)
    assert (again["files_explained"], again["files_skipped"]) == (2, 0)
    assert len(list(tmp_path.rglob("*.components"))) == 2


def test_another_glob_into_the_same_out_is_refused_and_the_index_kept(archive, tmp_path):
    """--out belongs to one glob (job.json): a narrower glob would have replaced its index (and mirrored the same
    files to other paths); it is refused, naming both globs, and nothing in --out changes."""
    out, wide = tmp_path / "out", str(archive["root"] / "archive" / "set0" / "**")
    narrow = str(archive["root"] / "archive" / "set0" / "deep" / "*")
    first = bulk.run(archive["saved"], wide, out)
    assert first["indexed"] == 8  # set0 holds clips 0, 3, ..., 21
    assert json.loads((out / "job.json").read_text()) == {"input_glob": wide}
    before = snapshot(out)
    with pytest.raises(bulk_files.OutFolderError) as refused:
        bulk.run(archive["saved"], narrow, out)
    assert (refused.value.recorded, refused.value.input_glob) == (wide, narrow)
    result = invoke("explain-bulk", archive["saved"], narrow, "--out", out)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert repr(wide) in message and repr(narrow) in message and "use another --out" in message, message
    assert snapshot(out) == before and len((out / "index.jsonl").read_text().splitlines()) == 8
    # A folder written before job.json existed: its index says which globs fit.
    (out / "job.json").unlink()
    wider = str(archive["root"] / "archive" / "**")  # matches every indexed input, but mirrors them under set0/
    for other in (narrow, wider):
        with pytest.raises(bulk_files.OutFolderError, match="index.jsonl lists"):
            bulk.run(archive["saved"], other, out)
    again = bulk.run(archive["saved"], wide, out)
    assert (again["files_skipped"], again["files_explained"], again["indexed"]) == (8, 0, 8)
    assert json.loads((out / "job.json").read_text()) == {"input_glob": wide}


def test_an_input_replaced_by_another_recording_is_explained_again(archive, tmp_path):
    """Resume compares the input file (size, modification time), not only its path: clip00 replaced by clip08 (the
    same format, length and size, another chirp) gives clip08's explanation, then is skipped while unchanged."""
    clip00, clip08 = archive["good"][0], archive["good"][8]
    assert clip00.stat().st_size == clip08.stat().st_size and clip00.read_bytes() != clip08.read_bytes()
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copyfile(clip00, inbox / "clip.wav")
    glob = str(inbox / "*")
    assert bulk.run(archive["saved"], glob, out)["files_explained"] == 1
    first = json.loads((out / "clip.wav.json").read_text())
    stat = (inbox / "clip.wav").stat()
    assert first["input_file"] == {"size_bytes": stat.st_size, "modified_seconds": os.path.getmtime(inbox / "clip.wav")}
    shutil.copyfile(clip08, inbox / "clip.wav")
    os.utime(inbox / "clip.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later write
    again = bulk.run(archive["saved"], glob, out)
    assert (again["files_explained"], again["files_skipped"]) == (1, 0)
    got = json.loads((out / "clip.wav.json").read_text())
    for path, summary in ((clip08, got), (clip00, first)):
        expected = json.loads((archive["reference"][path] / "explanation.json").read_text())
        assert summary["relevance"] == pytest.approx(expected["relevance"], abs=1e-4), path
        assert summary["classifier"]["probabilities"] == pytest.approx(
            expected["classifier"]["probabilities"], abs=1e-4
        )
    assert got["relevance"] != pytest.approx(first["relevance"], abs=1e-3)
    (row,) = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    predicted = got["classifier"]["predicted"]
    assert (row["classifier_class"], row["classifier_probability"]) == (
        predicted,
        got["classifier"]["probabilities"][predicted],
    )
    assert row["selected"] == [
        {"component": s["component"], "relevance": s["relevance"], "file": None} for s in got["selected"]
    ]
    before = snapshot(out)
    assert bulk.run(archive["saved"], glob, out)["files_skipped"] == 1 and snapshot(out) == before


def test_outputs_inside_the_glob_are_not_inputs_and_a_glob_of_no_files_is_refused(archive, tmp_path):
    """--out under the glob's folder: a rerun does not explain its own outputs (`x.wav.wav`, the index...)."""
    folder = tmp_path / "inbox"
    shutil.copytree(archive["root"] / "archive" / "set0", folder)
    inputs = [p for p in folder.rglob("*") if p.is_file()]
    for _ in range(2):
        counts = bulk.run(archive["saved"], str(folder / "**"), folder / "out")
        assert counts["files_explained"] + counts["files_skipped"] + counts["files_failed"] == len(inputs)
    assert not list((folder / "out").rglob("*.wav.wav.wav")) and not (folder / "out" / "out").exists()
    result = invoke("explain-bulk", archive["saved"], str(tmp_path / "nothing" / "*.wav"), "--out", tmp_path / "o")
    assert result.exit_code == 2 and "matches no files" in result.output, result.output
    result = invoke("explain-bulk", archive["saved"], str(folder / "out" / "**"), "--out", folder / "out")
    assert result.exit_code == 2 and "matches no files" in result.output, result.output


def test_a_killed_multi_processing_run_prints_nothing_and_restarted_ends_with_the_same_outputs(archive, tmp_path):
    """Without -v the worker processes' start-up and progress lines stay off the terminal (nothing on stderr)."""
    out = tmp_path / "out"
    glob = str(archive["root"] / "archive" / "**")
    command = [sys.executable, "-m", "cli.main", "explain-bulk", str(archive["saved"]), glob, "--out", str(out)]
    command += ["--components", "--direct-workers", "2", "--batch-size", "2", "--direct-mode", "multi_processing"]
    # Its own process group: the DirectRunner's worker processes are killed with it.
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(summaries(out)) < 8:
            assert proc.poll() is None, f"it ended first: {proc.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "the bulk run never wrote 8 outputs"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    stderr = proc.stderr.read().decode()
    assert not stderr, stderr[-3000:]
    done = len(summaries(out))
    assert 8 <= done < GOOD and not (out / "index.jsonl").exists()
    counts = bulk.run(archive["saved"], glob, out, components=True)
    assert counts["files_skipped"] >= 8 and counts["files_skipped"] + counts["files_explained"] == GOOD
    assert sorted(snapshot(out)) == sorted(snapshot(archive["out"]))  # same files, no leftovers
    assert_same_as_explain(archive, out)
    assert (out / "errors.jsonl").read_text() == (archive["out"] / "errors.jsonl").read_text()
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (archive["out"] / "index.jsonl").read_text().splitlines()]
    assert [r["path"] for r in index] == [r["path"] for r in expected]
    for mine, theirs in zip(index, expected, strict=True):
        for key, value in theirs.items():
            if key == "selected":
                assert [(s["component"], s["file"]) for s in mine[key]] == [(s["component"], s["file"]) for s in value]
                assert [s["relevance"] for s in mine[key]] == pytest.approx([s["relevance"] for s in value], abs=1e-4)
            else:
                assert mine[key] == pytest.approx(value, abs=1e-4), key


def test_a_threshold_outside_relevance_range_is_refused_by_the_job_and_the_source_of_an_export(archive):
    from l2i_tf.explain_files import ExplainSource

    for make in (
        lambda tau: bulk.make_job(archive["saved"], "u/*", "u", threshold=tau),
        lambda tau: ExplainSource(archive["saved"], threshold=tau),
    ):
        with pytest.raises(ValueError, match=r"threshold 1\.5 is outside \[-1, 1\].*no component would ever"):
            make(1.5)
        assert make(-1.0).threshold == -1.0


def test_without_component_audio_serving_default_gives_the_same_outputs(archive):
    import tensorflow as tf

    from l2i_tf.bulk_model import explain_batch
    from l2i_tf.explain_files import load_audio

    job = bulk.make_job(archive["saved"], "unused/*", archive["root"] / "unused")
    assert bulk._top_n_without_audio(job) == 3
    assert bulk._top_n_without_audio(bulk.make_job(archive["saved"], "u/*", "u", components=True)) is None
    assert bulk._top_n_without_audio(bulk.make_job(archive["saved"], "u/*", "u", threshold=0.25)) is None
    model = tf.saved_model.load(str(archive["saved"]))
    clips = [load_audio(path, 16000) for path in archive["good"][:8]] + [np.zeros(8000, "float32")]  # + silence
    full = explain_batch(model, clips, {"threshold": job.threshold})
    light = explain_batch(model, clips, {"threshold": job.threshold, "top_n_without_audio": 3})
    for a, b in zip(full, light, strict=True):
        assert b.inference["component_audio"].shape == (3, 0)
        for key, value in a.inference.items():
            if key != "component_audio":
                assert value.dtype == b.inference[key].dtype, key
                np.testing.assert_array_equal(value, b.inference[key], err_msg=key)


def test_worker_threads_give_the_same_outputs_and_counts(archive, tmp_path, monkeypatch):
    """... from one model, loaded while Beam starts (by the preloading thread) and not kept after the run."""
    import threading

    import tensorflow as tf

    from l2i_tf import bulk_model

    loads, load = [], tf.saved_model.load
    monkeypatch.setattr(
        tf.saved_model, "load", lambda *a, **k: loads.append(threading.current_thread().name) or load(*a, **k)
    )
    glob = str(archive["root"] / "archive" / "**")
    counts = bulk.run(
        archive["saved"], glob, tmp_path, components=True, direct_workers=2, direct_mode="multi_threading"
    )
    assert [name.rsplit("_", 1)[0] for name in loads] == ["l2i_tf-preload"] and not bulk_model._preloads
    assert (counts["files_explained"], counts["files_failed"]) == (len(archive["good"]), len(archive["bad"]))
    assert (counts["indexed"], counts["errors"]) == (len(archive["good"]), len(archive["bad"]))
    assert_same_as_explain(archive, tmp_path)
    with pytest.raises(ValueError, match="direct_mode must be one of"):
        bulk.pipeline_options(direct_workers=2, direct_mode="threads")


def test_the_model_handler_leaves_tensorflow_hub_unimported():
    """Beam's TensorFlow module imports tensorflow_hub (and tf_keras, pkg_resources); the handler derives from the
    base ModelHandler, so a bulk job (and every worker process) skips them."""
    code = "import sys, l2i_tf.bulk; print(sorted({'tensorflow_hub', 'tf_keras', 'pkg_resources'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_quiet_worker_processes_log_errors_only_unless_beam_args_set_their_level():
    from apache_beam.options.pipeline_options import WorkerOptions

    def level(**kwargs):
        options = bulk.pipeline_options(direct_workers=2, direct_mode="multi_processing", **kwargs)
        return options.view_as(WorkerOptions).default_sdk_harness_log_level

    assert level(quiet_workers=True) == "ERROR"
    assert level() is None  # -v: Beam's default (INFO)
    assert level(quiet_workers=True, beam_args=["--default_sdk_harness_log_level=DEBUG"]) == "DEBUG"
    assert level(quiet_workers=True, beam_args=["--default_sdk_harness_log_level", "WARNING"]) == "WARNING"
    threads = bulk.pipeline_options(direct_workers=2, quiet_workers=True)  # no worker processes
    assert threads.view_as(WorkerOptions).default_sdk_harness_log_level is None
    flink = bulk.pipeline_options("FlinkRunner", 2, direct_mode="multi_processing", quiet_workers=True)
    assert flink.view_as(WorkerOptions).default_sdk_harness_log_level is None  # its workers log as it says


def test_stderr_to_file_hides_what_child_processes_write_and_logs_it_if_the_block_fails(capfd, caplog):
    def child(text):
        subprocess.run([sys.executable, "-c", f"import sys; sys.stderr.write({text!r})"], check=True)

    with bulk.stderr_to_file():
        child("worker start-up line\n")
    assert "worker start-up line" not in capfd.readouterr().err and not caplog.records
    with pytest.raises(RuntimeError, match="the job failed"), bulk.stderr_to_file():
        child("worker traceback\n")
        raise RuntimeError("the job failed")
    assert "worker traceback" not in capfd.readouterr().err
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "worker traceback" in caplog.text
    child("after the block\n")
    assert "after the block" in capfd.readouterr().err


def test_direct_workers_are_threads_sharing_the_cores():
    from apache_beam.options.pipeline_options import DirectOptions

    options = bulk.pipeline_options(direct_workers=2).view_as(DirectOptions)
    assert (options.direct_num_workers, options.direct_running_mode) == (2, "multi_threading")
    assert bulk.pipeline_options(direct_workers=1).view_as(DirectOptions).direct_running_mode == "in_memory"
    assert bulk.direct_tf_threads("DirectRunner", 2) == max(1, os.cpu_count() // 2)
    assert bulk.direct_tf_threads("DirectRunner", 64 * os.cpu_count()) == 1
    assert bulk.direct_tf_threads("DirectRunner", 1) is None and bulk.direct_tf_threads("FlinkRunner", 4) is None


@pytest.mark.parametrize(("flag", "expected"), [((), None), (("--direct-workers", "3"), 3)])
def test_the_cli_runs_one_worker_per_usable_core_by_default(monkeypatch, tmp_path, flag, expected):
    calls = []
    job = types.SimpleNamespace(input_glob="*.wav", saved_model="saved", threshold=0.5, out=str(tmp_path / "out"))
    monkeypatch.setattr(bulk, "make_job", lambda *args: job)
    monkeypatch.setattr(bulk, "count_inputs", lambda job: 1)

    def run_job(job, runner, direct_workers, beam_args, direct_mode, quiet_workers):
        calls.append(direct_workers)
        raise SystemExit(0)

    monkeypatch.setattr(bulk, "run_job", run_job)
    invoke("explain-bulk", tmp_path / "saved", str(tmp_path / "*.wav"), "--out", tmp_path / "out", *flag)
    assert calls == [expected or len(os.sched_getaffinity(0))]
