"""Shared fixtures: a session-wide decode cache, ESC-10 fold-5 waveforms, tiny generated data sets, a layer checker.

The decoded-audio cache (``L2I_TF_CACHE``) points at one folder for the whole session, so
the bundled ESC-10 clips are decoded and resampled once per run. Set ``L2I_TF_TEST_CACHE``
to a folder to keep that cache between runs (it is keyed by file paths, sizes and mtimes).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import soundfile

from l2i_tf import data, tables

SAMPLE_RATE = 16000
ESC10_SAMPLES = 5 * SAMPLE_RATE


@pytest.fixture(scope="session", autouse=True)
def decode_cache(tmp_path_factory) -> Path:
    """One decoded-audio cache folder for the session, exported as ``L2I_TF_CACHE``."""
    folder = Path(os.environ.get("L2I_TF_TEST_CACHE") or tmp_path_factory.mktemp("l2i_tf_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2I_TF_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def esc10_fold5(decode_cache):
    """Bundled ESC-10 fold 5 at 16 kHz: ``(waveforms float32 [80, 80000], labels int [80], table)``."""
    table = tables.esc10_table().with_folds([5])
    waveforms, labels = data.load_waveforms(table, SAMPLE_RATE, ESC10_SAMPLES)
    return waveforms, labels, table


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """A float32 sine at ``freq`` Hz with a little seeded noise, amplitude <= ~0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) + noise * rng.standard_normal(len(t))
    return x.astype("float32")


def write_audio(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str | None = None) -> Path:
    """Write ``samples`` ([n] or [n, channels]) with soundfile, making parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype)
    return path


@pytest.fixture
def make_folders_dataset():
    """``make(root, classes, clips_per_class, seconds=1.0, rate=16000)`` -> root of a ``folders`` data set.

    Class ``i`` is a tone at ``300 * (i + 1)`` Hz, so a classifier can tell them apart.
    """

    def make(root: Path, classes=("low", "high"), clips_per_class: int = 10, seconds: float = 1.0, rate=SAMPLE_RATE):
        root = Path(root)
        for c, name in enumerate(classes):
            for k in range(clips_per_class):
                clip = tone(300.0 * (c + 1), seconds, rate, seed=100 * c + k)
                write_audio(root / name / f"{name}_{k:02d}.wav", clip, rate)
        return root

    return make


@pytest.fixture
def layer_round_trip(tmp_path):
    """``check(layer, inputs)``: ``from_config(get_config())`` gives the same config, and a small model
    holding the layer survives ``.keras`` save/load (no ``custom_objects``) with identical outputs."""

    def check(layer: keras.layers.Layer, inputs, input_shape=None):
        config = layer.get_config()
        clone = layer.__class__.from_config(config)
        assert clone.get_config() == config

        inputs = np.asarray(inputs)
        x = keras.Input(shape=input_shape or inputs.shape[1:])
        model = keras.Model(x, layer(x))
        expected = np.asarray(model(inputs))
        path = tmp_path / f"{layer.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(np.asarray(loaded(inputs)), expected)
        return loaded

    return check
