"""The installed stack: one TensorFlow build at the pinned version, and tensorflow-io native ops that actually run."""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import soundfile
import tensorflow as tf

from l2i_tf import tables

# Distributions that each install a TensorFlow build (the `tensorflow` module). Two of them side by side
# overwrite each other's files; tensorflow-io's native ops then fail with undefined symbols.
TENSORFLOW_BUILDS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-rocm",
    "tensorflow-aarch64",
    "tensorflow-cpu-aws",
    "intel-tensorflow",
    "tf-nightly",
    "tf-nightly-cpu",
    "tf-nightly-gpu",
    "tf-nightly-intel",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_exactly_one_tensorflow_distribution_is_installed():
    installed = {_normalized(d.metadata["Name"]) for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert installed & TENSORFLOW_BUILDS == {"tensorflow"}


def test_tensorflow_is_the_pinned_2_17():
    assert tf.__version__.startswith("2.17"), tf.__version__
    assert importlib.metadata.version("tensorflow").startswith("2.17")
    assert importlib.metadata.version("tensorflow-io") == "0.37.1"


def test_tensorflow_io_decodes_a_bundled_esc10_clip_like_soundfile():
    """Fails when tensorflow-io imports but its native ops cannot load (e.g. next to the wrong TensorFlow)."""
    import tensorflow_io as tfio

    path = sorted(tables.esc10_table().paths)[0]
    expected, _ = soundfile.read(path, dtype="float32", always_2d=True)
    decoded = tfio.audio.decode_vorbis(tf.io.read_file(path)).numpy()
    assert decoded.shape == expected.shape
    assert np.max(np.abs(decoded - expected)) < 1e-5


def test_tensorflow_io_resample_op_runs():
    import tensorflow_io as tfio

    x = tf.sin(tf.range(4410, dtype=tf.float32) * 0.05)[:, None]
    y = tfio.audio.resample(x, tf.constant(44100, tf.int64), tf.constant(16000, tf.int64))
    assert y.shape == (1600, 1)
    assert np.all(np.isfinite(y.numpy()))
