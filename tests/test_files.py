"""Tests for l2i_tf.files: atomic files and folders, their modes, replacing and refusing."""

from __future__ import annotations

import os
import stat

import pytest
import run_fixture

from l2i_tf import files


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    """Run the test under this umask, and put the previous one back."""
    with run_fixture.umask(request.param) as value:
        yield value


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_folders_get_the_mode_mkdir_gives_under_the_umask(umask, tmp_path):
    os.mkdir(tmp_path / "reference")
    expected = mode(tmp_path / "reference")
    assert expected == 0o777 & ~umask  # 0o755 under 0o022, 0o750 under 0o027; tempfile.mkdtemp gives 0o700
    with files.atomic_folder(tmp_path / "made") as tmp:
        (tmp / "inside").mkdir()
        files.write_json(tmp / "inside" / "meta.json", {"a": 1})
    assert mode(tmp_path / "made") == expected and mode(tmp_path / "made" / "inside") == expected
    with files.atomic_folder(tmp_path / "made", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("replaced")
    assert mode(tmp_path / "made") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made", "reference"]  # no temporary folder left


def test_atomic_files_get_the_mode_open_gives_under_the_umask(umask, tmp_path):
    (tmp_path / "reference.txt").write_text("plain open")
    expected = mode(tmp_path / "reference.txt")
    assert expected == 0o666 & ~umask  # 0o644 under 0o022; tempfile.mkstemp gives 0o600
    files.write_json(tmp_path / "sub" / "config.json", {"a": 1})
    files.write_text(tmp_path / "report.html", "<p>")
    with files.atomic_file(tmp_path / "clip.wav") as tmp, open(tmp, "wb") as f:
        f.write(b"RIFF")
    for name in ("sub/config.json", "report.html", "clip.wav"):
        assert mode(tmp_path / name) == expected, name
    assert mode(tmp_path / "sub") == 0o777 & ~umask


def test_a_folder_that_exists_is_refused_and_left_alone(tmp_path):
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="made"), files.atomic_folder(tmp_path / "made"):
        pass
    assert (tmp_path / "made" / "keep.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_a_folder_that_appears_just_before_the_rename_is_refused_not_replaced(tmp_path, monkeypatch):
    """The other writer's folder lands between the existence check and the rename: FileExistsError (the export's
    retry looks for that), and the other folder is kept."""
    rename = os.rename

    def other_writer_first(src, dst):
        if dst == tmp_path / "made":
            (tmp_path / "made").mkdir()
            (tmp_path / "made" / "theirs.txt").write_text("theirs")
        rename(src, dst)

    monkeypatch.setattr(files.os, "rename", other_writer_first)
    with pytest.raises(FileExistsError, match="made"), files.atomic_folder(tmp_path / "made") as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]
