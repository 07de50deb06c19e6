"""The built wheel: it carries the bundled data, and `l2i-tf train` runs from a fresh venv that cannot see the repo.

The wheel is built offline (no build isolation, no index) from a copy of the repo, so the repo gets no
``build/`` folder. The fresh venv sees the dependencies through a ``.pth`` line naming this interpreter's
site-packages: a plain path line, so an editable install's finder in that folder is never run. The venv is made
without pip of its own (ensurepip takes seconds): the pip it runs is this interpreter's, seen through that line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from l2i_tf import data, tables

REPO = Path(__file__).resolve().parent.parent
# Never copied into the build: version control, environments, build outputs, runs (README, .gitignore).
NOT_SOURCES = (".git", ".venv", "venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", "runs", "out")
TIMEOUT = 1200  # seconds, for any one command
ESC10_CLASSES = (
    "Dog bark",
    "Rain",
    "Sea waves",
    "Baby cry",
    "Clock tick",
    "Person sneeze",
    "Helicopter",
    "Chainsaw",
    "Rooster",
    "Fire crackling",
)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """Run ``args``; on a non-zero exit, fail with its output."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"{[str(a) for a in args]} exited {result.returncode}\n{output}"
    return result


VISIBLE = """
import importlib.util, json, sys
origin = lambda name: getattr(importlib.util.find_spec(name), "origin", None)
print(json.dumps({"tensorflow": origin("tensorflow") is not None, "l2i_tf": origin("l2i_tf"), "cli": origin("cli"),
                  "path": sys.path}))
"""


def clean_env(**extra) -> dict:
    """This process's environment without anything that points Python at the repo or at another environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the repo's sources."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir"]
    run([*args, "-w", root / "dist", source], env=clean_env(), cwd=root)
    (built,) = (root / "dist").glob("l2i_tf-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv holding only the wheel; the dependencies (pip too) come from this interpreter's site-packages."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], env=clean_env())
    python = venv / "bin" / "python"
    probe = "import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))"
    site_packages = Path(json.loads(run([python, "-c", probe], env=clean_env()).stdout))
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "_l2i_tf_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    # The dependencies import; nothing of the repo does (no editable finder, no path into the repo). Where this
    # interpreter has l2i_tf installed as a plain package (tox), that copy is visible, but the wheel shadows it.
    visible = json.loads(run([python, "-c", VISIBLE], env=clean_env(), cwd=venv).stdout)
    assert visible["tensorflow"], visible
    for name in ("l2i_tf", "cli"):
        assert visible[name] is None or not Path(visible[name]).resolve().is_relative_to(REPO / name), visible
    assert REPO not in {(venv / p).resolve() for p in visible["path"]}, visible  # "" is its working folder
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], env=clean_env())
    return venv


def test_wheel_carries_the_400_clips_their_readme_and_the_demo_classifiers(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        readme = archive.read("l2i_tf/esc10/README.md").decode()
    clips = {n for n in names if n.startswith("l2i_tf/esc10/") and n.endswith(".ogg")}
    assert len(clips) == 400
    assert {n.split("/")[2] for n in clips} == {f"{i:03d} - {c}" for i, c in enumerate(ESC10_CLASSES, 1)}
    assert "creativecommons.org/licenses/by/3.0" in readme
    unattributed = [n for n in clips if f"[{n.rsplit('/', 1)[1]}]" not in readme]  # one attribution line per clip
    assert not unattributed, unattributed[:5]
    for name in ("esc10_classifier", "esc10_multilabel_classifier"):
        assert {f"l2i_tf/demo/{name}.keras", f"l2i_tf/demo/{name}.json"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "data/")) for n in names)


def test_installed_l2i_tf_train_runs_on_the_bundled_data(fresh_venv, tmp_path, monkeypatch):
    """`l2i-tf train` from an unrelated folder: the package and the clips it decodes are the installed ones."""
    python = fresh_venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    env = clean_env(L2I_TF_CACHE=str(cache))
    where = "import l2i_tf, cli, l2i_tf.tables as t; print(l2i_tf.__file__); print(cli.__file__); print(t.ESC10_ROOT)"
    package, cli_package, root = run([python, "-c", where], env=env, cwd=elsewhere).stdout.split("\n")[:3]
    installed = Path(package).parent
    assert installed.is_relative_to(fresh_venv) and Path(cli_package).is_relative_to(fresh_venv)
    assert Path(root) == (installed / "esc10").resolve()

    quick = ["--epochs", "1", "--nmf-iterations", "2", "-k", "8", "--hidden", "8", "--clip-seconds", "1"]
    quick += ["--train-folds", "1", "--val-folds", "2", "--test-folds", "3"]  # 240 of the 400 clips: less decoding
    quick += ["--source-mixtures", "16"]  # the default source term on 16 mixtures, not 480
    result = run([fresh_venv / "bin" / "l2i-tf", "train", *quick, "--out", tmp_path / "run"], env=env, cwd=elsewhere)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["class_names"] == list(ESC10_CLASSES) and metrics["epochs_done"] == 1
    assert metrics["skipped_clips"]["count"] == 0 and 0.0 <= metrics["test"]["top1"] <= 1.0
    assert "test fidelity" in result.stdout, result.stdout

    # The decode cache is keyed by the clips' paths (and sizes, mtimes): the run's cache holds exactly the three
    # splits of the installed clips, so asking it for them decodes nothing and adds nothing.
    table = tables.esc10_table(root)
    assert not any(Path(p).is_relative_to(REPO) for p in table.paths)
    written = sorted(cache.glob("waveforms-*"))
    assert len(written) == 3

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again: the run's cache does not hold the installed clips")

    monkeypatch.setattr(data, "decode_audio", no_decoding)
    for part in tables.split(table, tables.Splits((1,), (2,), (3,))):
        assert sum(1 for _ in data.waveform_dataset(part, 16000, cache_dir=cache)) == len(part)
    assert sorted(cache.glob("waveforms-*")) == written
