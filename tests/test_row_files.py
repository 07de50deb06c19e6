"""Row files: what is written reads back exactly, by any index numpy takes; nothing is overwritten."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from l2i_tf.row_files import Rows, RowWriter


@pytest.fixture
def rows(tmp_path):
    expected = np.random.default_rng(0).standard_normal((7, 5)).astype("float32")
    writer = RowWriter(tmp_path / "rows.f32", 5)
    writer.append(expected[:3])
    for row in expected[3:]:
        writer.append(row)
    with writer.rows() as r:
        yield r, expected


def test_rows_read_back_exactly_by_every_kind_of_index(rows):
    r, expected = rows
    assert r.shape == (7, 5) and len(r) == 7 and r.ndim == 2
    for key in (3, -1, slice(None), slice(2, 5), slice(1, None, 3), slice(5, 2), [4, 0, 4], np.arange(7) % 2 == 0):
        np.testing.assert_array_equal(r[key], expected[key])
    np.testing.assert_array_equal(r[1:4, 2], expected[1:4, 2])
    np.testing.assert_array_equal(np.asarray(r), expected)
    np.testing.assert_array_equal(np.stack(list(r)), expected)
    assert tf.nest.flatten(r) == [r]  # one leaf for batch loops, not a sequence of rows
    with pytest.raises(IndexError, match="row 7 out of range for 7 rows"):
        r[7]


def test_a_row_file_is_never_overwritten_and_bad_shapes_are_named(tmp_path, rows):
    path = tmp_path / "rows.f32"
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        RowWriter(path, 5)
    assert path.read_bytes() == before
    writer = RowWriter(tmp_path / "other.f32", 4)
    with pytest.raises(ValueError, match=r"other.f32: rows of shape \(5,\), the file holds rows of 4"):
        writer.append(np.zeros((2, 5)))
    writer.rows().close()
    with pytest.raises(ValueError, match=r"rows.f32: 140 bytes is not a whole number of rows of 6 float32"):
        Rows(path, 6)
