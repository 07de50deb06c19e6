"""Clip tables: the four layouts against hand-made data sets, bad tables named by file and row, fold splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from run_fixture import noise, write

from l2i_tf import tables
from l2i_tf.data import AudioDataError

RATE = 16000


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- layouts


def test_esc10_table_reads_the_bundled_400_clips_in_10_classes_and_5_folds():
    table = tables.load_table(tables.ESC10_ROOT, "esc10")
    assert len(table) == 400
    assert table.class_names[:3] == ("Dog bark", "Rain", "Sea waves")
    assert len(table.class_names) == 10 and not table.multilabel
    assert np.bincount(table.folds).tolist() == [0, 80, 80, 80, 80, 80]
    assert np.bincount(table.labels).tolist() == [40] * 10
    for path, label, fold in zip(table.paths, table.labels, table.folds, strict=True):
        assert Path(path).parent.name.endswith(" - " + table.class_names[label])
        assert Path(path).name.startswith(f"{fold}-")
    assert tables.esc10_table().paths == table.paths  # the default root is the bundled copy


def test_esc50_layout_reads_meta_csv_and_audio_folder(tmp_path):
    rows = [
        ("1-1-A-0.wav", 1, 0, "dog"),
        ("1-2-A-1.wav", 1, 1, "rooster"),
        ("2-3-A-2.wav", 2, 2, "pig"),
        ("2-4-A-0.wav", 2, 0, "dog"),
        ("3-5-A-1.wav", 3, 1, "rooster"),
    ]
    for i, (name, *_) in enumerate(rows):
        write(tmp_path / "audio" / name, noise(800, seed=i))
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category", "esc10"],
        [(*r, "False") for r in rows],
    )
    table = tables.load_table(tmp_path, "esc50")
    assert table.class_names == ("dog", "rooster", "pig")
    assert table.labels.tolist() == [0, 1, 2, 0, 1]
    assert table.folds == (1, 1, 2, 2, 3)
    assert table.paths == tuple(str((tmp_path / "audio" / r[0]).resolve()) for r in rows)


def test_esc50_rows_of_some_targets_are_a_data_set_of_those_classes_in_target_order(tmp_path):
    rows = [("a.wav", 1, 41, "chainsaw"), ("b.wav", 2, 0, "dog"), ("c.wav", 3, 10, "rain"), ("d.wav", 4, 0, "dog")]
    write_csv(tmp_path / "meta" / "esc50.csv", ["filename", "fold", "target", "category"], rows)
    table = tables.load_table(tmp_path, "esc50")
    assert table.class_names == ("dog", "rain", "chainsaw") and table.labels.tolist() == [2, 0, 1, 0]


def test_esc50_layout_rejects_a_target_with_two_category_names(tmp_path):
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category"],
        [("a.wav", 1, 0, "dog"), ("b.wav", 1, 0, "cat")],
    )
    with pytest.raises(AudioDataError, match=r"esc50\.csv:3.*'dog'.*'cat'"):
        tables.esc50_table(tmp_path)


def test_esc50_layout_names_missing_columns(tmp_path):
    write_csv(tmp_path / "meta" / "esc50.csv", ["filename", "fold", "category"], [("a.wav", 1, "dog")])
    with pytest.raises(AudioDataError, match=r"missing column\(s\) \['target'\]"):
        tables.esc50_table(tmp_path)


def test_folders_layout_takes_class_names_from_folders_and_spreads_folds(tmp_path):
    for name in ("siren", "bird", "engine"):
        for k in range(5):
            write(tmp_path / name / f"{k}.wav", noise(400, seed=k))
    (tmp_path / "bird" / "notes.txt").write_text("not audio")
    write(tmp_path / "engine" / "5.aiff", noise(400), format="AIFF")  # AIFF is listed too
    write(tmp_path / "engine" / "6.AIF", noise(400), format="AIFF")
    write(tmp_path / ".hidden" / "x.wav", noise(400))
    table = tables.load_table(tmp_path, "folders")
    assert table.class_names == ("bird", "engine", "siren")
    assert len(table) == 17
    assert sum(Path(p).suffix.lower() in (".aif", ".aiff") for p in table.paths) == 2
    for c in (0, 2):  # 5 clips, 5 folds: each fold once per class
        assert sorted(f for f, label in zip(table.folds, table.labels, strict=True) if label == c) == [1, 2, 3, 4, 5]

    def fold_of(t):
        return dict(zip(t.paths, t.folds, strict=True))

    assert fold_of(tables.folders_table(tmp_path, seed=0)) == fold_of(table)
    assert fold_of(tables.folders_table(tmp_path, seed=1)) != fold_of(table)


def test_manifest_with_multi_hot_columns_is_multilabel(tmp_path):
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        write(tmp_path / name, noise(400))
    manifest = write_csv(
        tmp_path / "manifest.csv",
        ["filename", "fold", "dog", "rain", "siren"],
        [("a.wav", 1, 1, 0, 0), ("b.wav", 2, 1, 1, 0), ("sub/c.wav", 2, 0, 0, 1)],
    )
    table = tables.load_table(manifest, "manifest")
    assert table.multilabel
    assert table.class_names == ("dog", "rain", "siren")
    np.testing.assert_array_equal(table.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert table.folds == (1, 2, 2)
    assert table.paths[2] == str((tmp_path / "sub" / "c.wav").resolve())


def test_manifest_as_a_spreadsheet_writes_it_byte_order_mark_spaced_header_and_float_folds(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("\ufefffilename, fold , labels\na.wav,1.0,dog\nb.wav, 2 ,rain\n", encoding="utf-8")
    table = tables.manifest_table(manifest)
    assert table.folds == (1, 2) and table.class_names == ("dog", "rain") and table.labels.tolist() == [0, 1]
    manifest.write_text("filename,fold,labels\na.wav,1.5,dog\n")
    with pytest.raises(AudioDataError, match=r"m\.csv:2: fold must be an integer, got '1\.5'"):
        tables.manifest_table(manifest)


def test_manifest_with_one_hot_columns_is_single_label(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog", "rain"], [("a.wav", 0, 1), ("b.wav", 1, 0)])
    table = tables.manifest_table(manifest)
    assert not table.multilabel and table.folds is None
    assert table.labels.tolist() == [1, 0]
    with pytest.raises(AudioDataError, match=r"no folds to select \[1\] from: its manifest has no 'fold' column; add"):
        table.with_folds([1])


def test_manifest_with_labels_column_reads_several_labels_per_row(tmp_path):
    manifest = write_csv(
        tmp_path / "m.csv",
        ["filename", "labels"],
        [("a.wav", "dog"), ("b.wav", "rain; dog"), ("c.wav", "siren")],
    )
    table = tables.manifest_table(manifest)
    assert table.multilabel
    assert table.class_names == ("dog", "rain", "siren")
    np.testing.assert_array_equal(table.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    given = tables.manifest_table(manifest, class_names=["siren", "rain", "dog", "car"])
    assert given.class_names == ("siren", "rain", "dog", "car")
    np.testing.assert_array_equal(given.labels, [[0, 0, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]])


# ---------------------------------------------------------------- bad tables


def test_manifest_naming_an_unknown_class_names_the_class_and_row(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("b.wav", "dog;unicorn")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: unknown class 'unicorn'"):
        tables.manifest_table(manifest, class_names=["dog", "rain"])


def test_manifest_with_an_unknown_class_column_names_the_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog", "unicorn"], [("a.wav", 1, 0)])
    with pytest.raises(AudioDataError, match="unicorn"):
        tables.manifest_table(manifest, class_names=["dog", "rain"])


def test_manifest_rejects_a_non_binary_label_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "dog"], [("a.wav", 1), ("b.wav", "yes")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: column 'dog' must be 0 or 1, got 'yes'"):
        tables.manifest_table(manifest)


def test_manifest_path_escaping_the_data_root_is_an_error_naming_it(tmp_path):
    manifest = write_csv(tmp_path / "set" / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("../x.wav", "dog")])
    with pytest.raises(AudioDataError, match=r"m\.csv:3: path '\.\./x\.wav' escapes the data root"):
        tables.manifest_table(manifest)


def test_manifest_absolute_path_outside_the_root_is_an_error(tmp_path):
    outside = write(tmp_path / "outside.wav", noise(100))
    manifest = write_csv(tmp_path / "set" / "m.csv", ["filename", "labels"], [(str(outside), "dog")])
    with pytest.raises(AudioDataError, match="escapes the data root"):
        tables.manifest_table(manifest)


def test_manifest_duplicate_rows_are_an_error_naming_both_lines(tmp_path):
    manifest = write_csv(
        tmp_path / "m.csv", ["filename", "labels"], [("a.wav", "dog"), ("b.wav", "rain"), ("./a.wav", "rain")]
    )
    with pytest.raises(AudioDataError, match=r"m\.csv:4: '\./a\.wav' is listed twice \(first on line 2\)"):
        tables.manifest_table(manifest)


def test_manifest_without_filename_column_names_the_missing_column(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["file", "labels"], [("a.wav", "dog")])
    with pytest.raises(AudioDataError, match=r"missing column\(s\) \['filename'\]"):
        tables.manifest_table(manifest)


def test_manifest_without_label_columns_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "fold"], [("a.wav", 1)])
    with pytest.raises(AudioDataError, match="no label columns"):
        tables.manifest_table(manifest)


def test_manifest_with_a_non_integer_fold_names_the_row(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "fold", "labels"], [("a.wav", "one", "dog")])
    with pytest.raises(AudioDataError, match=r"m\.csv:2: fold must be an integer, got 'one'"):
        tables.manifest_table(manifest)


def test_missing_manifest_is_an_error_naming_it(tmp_path):
    with pytest.raises(AudioDataError, match="nope.csv"):
        tables.load_table(tmp_path / "nope.csv", "manifest")


@pytest.mark.parametrize("layout", ["esc10", "folders"])
def test_data_set_without_audio_is_an_error(tmp_path, layout):
    (tmp_path / "001 - Dog bark").mkdir()
    (tmp_path / "001 - Dog bark" / "readme.txt").write_text("no audio here")
    with pytest.raises(AudioDataError, match="no audio clips found"):
        tables.load_table(tmp_path, layout)


def test_manifest_without_rows_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filename", "labels"], [])
    with pytest.raises(AudioDataError, match="no audio clips found"):
        tables.manifest_table(manifest)


def test_unknown_layout_is_an_error_listing_the_layouts(tmp_path):
    with pytest.raises(AudioDataError, match=r"'tfrecord'.*esc10"):
        tables.load_table(tmp_path, "tfrecord")


def test_splits_reject_overlapping_folds_and_missing_folds():
    with pytest.raises(AudioDataError, match="overlap"):
        tables.Splits(train=(1, 2), validation=(2,), test=(5,))
    assert tables.Splits.holding_out(5) == tables.Splits(train=(2, 3, 4), validation=(1,), test=(5,))
    table = tables.esc10_table()
    with pytest.raises(AudioDataError, match=r"fold\(s\) \[7\]"):
        table.with_folds([7])
    train, validation, test = tables.split(table, tables.Splits())
    assert (len(train), len(validation), len(test)) == (240, 80, 80)
    assert set(test.folds) == {5} and set(validation.folds) == {4}


# ---------------------------------------------------------------- classes of a classifier


def _table(labels, names, multilabel=False) -> tables.ClipTable:
    paths = tuple(f"/d/{i}.wav" for i in range(len(labels)))
    return tables.ClipTable(paths, np.asarray(labels), tuple(names), (1,) * len(labels), multilabel, "/d")


def test_a_classifier_with_more_classes_relabels_the_data_in_its_order():
    table = _table([0, 1, 1, 2], ("dog", "rain", "siren"))
    wider = table.in_classes(("car", "siren", "dog", "bird", "rain"))
    assert wider.labels.tolist() == [2, 4, 4, 1] and len(wider.class_names) == 5 and wider.paths == table.paths
    multi = _table([[1, 0, 1], [0, 1, 0]], ("dog", "rain", "siren"), multilabel=True)
    wide = multi.in_classes(("car", "siren", "dog", "bird", "rain")).labels
    np.testing.assert_array_equal(wide, [[0, 1, 1, 0, 0], [0, 0, 0, 0, 1]])


def test_same_count_of_other_names_is_read_by_position_and_a_missing_class_is_named(caplog):
    table = _table([0, 1, 2], ("dog", "rain", "siren"))
    assert table.in_classes(("a", "b", "c")).labels.tolist() == [0, 1, 2]
    assert "none of its classes ['dog', 'rain', 'siren'] is one of the classifier's ['a', 'b', 'c']" in caplog.text
    caplog.clear()
    same = table.in_classes(("dog", "rain", "siren"))
    assert same.labels.tolist() == [0, 1, 2] and same.class_names == table.class_names
    assert "by position" not in caplog.text
    with pytest.raises(AudioDataError, match=r"1 class\(es\) the classifier does not output: \['siren'\]"):
        table.in_classes(("dog", "rain", "car", "bird"))
    # the same names in another order are read by name; names that match in part are refused (not by position)
    assert table.in_classes(("siren", "dog", "rain")).labels.tolist() == [1, 2, 0]
    # names in another case or with spaces around them are the same names, read by name
    assert table.in_classes(("Siren", " DOG", "Rain ")).labels.tolist() == [1, 2, 0]
    assert "by position" not in caplog.text
    with pytest.raises(AudioDataError, match=r"match only in part \(\['rain', 'siren'\] are not the classifier's\)"):
        table.in_classes(("rooster", "dog", "car"))
