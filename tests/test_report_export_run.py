"""`l2i-tf report` on an export uses the run folder it recorded only while that folder still holds the exported run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_fixture import chirp, make_run, write_wav

from cli.main import main
from l2i_tf import export, report, runs

EXPORTED_TOP1 = 0.6375
REPLACED_TOP1 = 0.9375


@pytest.fixture
def exported(tiny_run, tiny_export, tmp_path) -> dict:
    """A copy of the session's tiny run (with a test top-1 in its metrics) and a copy of its export (τ = 0, N = 3)
    that records the run's copy as its run folder; and a clip to explain."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")).resolve()
    metrics = json.loads((run / runs.METRICS).read_text())
    (run / runs.METRICS).write_text(json.dumps({**metrics, "test": {"top1": EXPORTED_TOP1}}))
    saved = Path(shutil.copytree(tiny_export["path"], tmp_path / "models" / "l2i" / "1"))
    meta = _rewrite_metadata(saved, run=str(run))
    clip = write_wav(tmp_path / "inputs" / "tone.wav", chirp(0.6))
    return {"run": run, "saved": saved, "meta": meta, "clip": clip}


def _rewrite_metadata(saved: Path, drop=(), **changes) -> dict:
    path = saved / export.METADATA_FILE
    meta = {key: value for key, value in json.loads(path.read_text()).items() if key not in drop}
    meta.update(changes)
    path.write_text(json.dumps(meta))
    return meta


def _page(out: Path) -> tuple[dict, str]:
    return json.loads((out / "report.json").read_text()), (out / "index.html").read_text(encoding="utf-8")


def test_export_records_the_fingerprint_of_its_run(tiny_run, tiny_export):
    meta = export.load_metadata(tiny_export["path"])
    assert meta["run"] == str(Path(tiny_run).resolve())
    assert meta["run_fingerprint"] == runs.fingerprint(tiny_run)
    assert set(meta["run_fingerprint"]) == {"interpreter_sha256", "train_config_sha256"}
    assert all(len(digest) == 64 for digest in meta["run_fingerprint"].values())


def test_report_uses_the_export_run_folder_while_it_holds_the_exported_run(exported, tmp_path):
    page = report.build_report(exported["saved"], [exported["clip"]], tmp_path / "r")
    header = page["header"]
    assert header["fidelity"] == {"test top1": EXPORTED_TOP1}
    assert header["model"]["run"] == str(exported["run"])
    assert header["model"]["tapped layers"] == "block2_pool, block3_pool, block4_relu"
    assert "activations" in page["inputs"][0]["images"]
    assert (tmp_path / "r" / page["inputs"][0]["images"]["activations"]["src"]).is_file()
    assert page["activations_note"] == f"H computed by the run this export was made from ({exported['run']})."


def test_report_leaves_out_a_run_folder_replaced_since_the_export(exported, tmp_path, caplog):
    run = exported["run"]
    shutil.rmtree(run)  # another run at the same path, as `train --overwrite` leaves it: same classes, K and STFT
    make_run(run, seed=1, layers=("block3_pool", "block4_relu"))
    metrics = json.loads((run / runs.METRICS).read_text())
    (run / runs.METRICS).write_text(json.dumps({**metrics, "test": {"top1": REPLACED_TOP1}}))
    (run / "evaluation").mkdir()
    (run / "evaluation" / "report.md").write_text("# the new run's evaluation\n")

    out = tmp_path / "r"
    with caplog.at_level(logging.WARNING, logger="l2i_tf.report"):
        result = CliRunner().invoke(main, ["report", str(exported["saved"]), str(exported["clip"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page, html = _page(out)
    header = page["header"]
    assert header["fidelity"] == {} and header["evaluation"] == []
    assert "tapped layers" not in header["model"] and "classifier" not in header["model"]
    assert header["model"]["run"] == f"{run} (changed since the export: not used)"
    assert header["dictionary"] == {"K (components)": exported["meta"]["k"]}
    assert "activations" not in page["inputs"][0]["images"] and len(page["inputs"][0]["selected"]) <= 3
    assert str(REPLACED_TOP1) not in html and "the new run" not in html and "block3_pool, block4_relu" not in html
    assert "H not available from a SavedModel export: the run folder" in html and "changed since the export" in html
    assert f"{exported['saved']}: the run folder {str(run)!r} changed since the export" in caplog.text


def test_export_without_a_fingerprint_uses_its_run_folder_only_with_the_export_classes_k_and_stft(
    exported, tmp_path, caplog
):
    run, saved = exported["run"], exported["saved"]
    _rewrite_metadata(saved, drop=("run_fingerprint",))  # as exports written before fingerprints were recorded
    page = report.build_report(saved, [exported["clip"]], tmp_path / "same")
    assert page["header"]["fidelity"] == {"test top1": EXPORTED_TOP1}
    assert "activations" in page["inputs"][0]["images"]

    config = json.loads((run / runs.CONFIG).read_text())
    config["train"]["k"] = 20  # a run with another dictionary size now at the recorded path
    (run / runs.CONFIG).write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="l2i_tf.report"):
        page = report.build_report(saved, [exported["clip"]], tmp_path / "other")
    assert page["header"]["fidelity"] == {} and "activations" not in page["inputs"][0]["images"]
    assert page["header"]["dictionary"] == {"K (components)": exported["meta"]["k"]}
    assert f"the run folder {str(run)!r} changed since the export (its K differs from the export's)" in caplog.text
