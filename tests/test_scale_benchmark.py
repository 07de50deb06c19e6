"""benchmarks/scale.py's data sets against the folders layout: every fold and split gets clips at every size it
takes, and a size too small for that is refused before any work, naming the smallest."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2i_tf import tables

SCALE = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
ESC10_CLASSES = 10


@pytest.fixture(scope="module")
def scale():
    path = list(sys.path)
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCALE)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # it puts benchmarks/ on the path for its sibling
    finally:
        sys.path[:] = path
    return module


@pytest.mark.parametrize("count", [10, 11, 14, 23, 49, 50, 57, 400])
def test_every_fold_holds_every_class_of_a_data_set_the_benchmark_writes(scale, tmp_path, count):
    classes = scale.clip_classes(count, ESC10_CLASSES)
    for i, c in enumerate(classes):  # the files build() writes, empty: the layout only lists them
        folder = tmp_path / f"class{c}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i:06d}.wav").touch()
    table = tables.folders_table(tmp_path)
    folds = np.asarray(table.folds)
    for fold in range(1, scale.FOLDS + 1):
        assert sorted(set(table.labels[folds == fold])) == list(range(len(table.class_names))), fold
    train, validation, test = tables.split(table, tables.Splits())
    assert len(set(train.labels)) >= 2 and len(validation.paths) and len(test.paths)
    assert len(table.class_names) == (ESC10_CLASSES if count >= 50 else count // 5)  # the big sizes as before


@pytest.mark.parametrize("count", [0, 1, 5, 9])
def test_a_size_below_ten_clips_is_refused_naming_the_smallest(scale, count):
    with pytest.raises(ValueError, match=rf"^{count} clips are too few: the smallest size is 10 \(2 classes of 5"):
        scale.clip_classes(count)


def test_the_command_refuses_a_small_size_before_writing_anything(tmp_path):
    work = tmp_path / "work"
    command = [sys.executable, str(SCALE), "--sizes", "400,9", "--workdir", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--sizes: 9 clips are too few: the smallest size is 10" in result.stderr
    assert not work.exists()
