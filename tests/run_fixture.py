"""Test helpers: a tiny, untrained run folder (demo classifier + random dictionary) as `l2i-tf train` writes it, a tiny
tone data set with its training settings, audio files, and the file modes a umask gives."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import numpy as np

CLASS_NAMES = ("dog", "rain", "siren")
K = 8
SAMPLE_RATE = 16000


def make_run(
    folder: str | Path,
    k: int = K,
    class_names=CLASS_NAMES,
    seed: int = 0,
    channels=(4, 8, 8, 8),
    hidden: int = 8,
    classifier=None,
    layers=("block2_pool", "block3_pool", "block4_relu"),
) -> Path:
    """Write ``interpreter.keras``, ``config.json``, ``stft.json`` and ``metrics.json`` into ``folder``.

    The classifier is ``classifier`` if given, else the demo VGG with ``channels`` (tiny by default), untrained; Ψ
    taps ``layers`` and has ``hidden`` channels; W [513, k] is random, non-negative, with unit-norm columns. Good
    for contract tests, not for listening.
    """
    import keras

    from l2i_tf import runs
    from l2i_tf.audio import STFTConfig
    from l2i_tf.classifier import DemoConfig, build_demo_classifier
    from l2i_tf.interpreter import Interpreter, tap_orders

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    stft = STFTConfig()
    model = classifier or build_demo_classifier(len(class_names), DemoConfig(channels=tuple(channels)))
    names, orders = tap_orders(model, layers)
    rng = np.random.default_rng(seed)
    W = rng.random((stft.num_bins, k)).astype("float32")
    W /= np.linalg.norm(W, axis=0, keepdims=True)
    interpreter = Interpreter(
        model,
        names,
        orders,
        k,
        stft.num_bins,
        stft.to_dict(),
        psi={"hidden": hidden},
        theta={"pooling": "attention"},
        dictionary=W,
    )
    interpreter(np.zeros((1, stft.sample_rate // 4), "float32"))  # build, as training does
    interpreter.save(folder / "interpreter.keras")
    config = runs.TrainConfig(class_names=tuple(class_names), k=k, layers=names)
    (folder / "config.json").write_text(json.dumps({"train": config.to_dict(), "environment": {}}, indent=2))
    stft.save(folder / "stft.json")
    (folder / "metrics.json").write_text(json.dumps({"class_names": list(class_names), "k": k}))
    return folder


@contextlib.contextmanager
def saved_model_loaded_once(path: str | Path):
    """While the block runs, ``tf.saved_model.load`` of the SavedModel at ``path`` loads it the first time and gives
    that object again after (other paths, or other arguments, load as usual).

    For the tests of one export that run command after command on it (`l2i-tf explain`, `explain-bulk`, a server):
    each command loads its model, and loading one and readying its signatures costs ~1-2 s a time. The loaded object
    holds no state between calls (its signatures are concrete functions of the export's graph), so every command
    still reads the export's metadata and runs its graph; only the repeated deserialisation is skipped.
    """
    import tensorflow as tf

    load, target, loaded = tf.saved_model.load, os.path.realpath(path), []

    def load_once(export_dir, *args, **kwargs):
        if args or kwargs or os.path.realpath(export_dir) != target:
            return load(export_dir, *args, **kwargs)
        if not loaded:
            loaded.append(load(export_dir))
        return loaded[0]

    previous, tf.saved_model.load = tf.saved_model.load, load_once
    try:
        yield
    finally:
        tf.saved_model.load = previous


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    """Write ``samples`` ([n] or [n, channels]) with soundfile; returns the path."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype)
    return path


def chirp(seconds: float = 0.5, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A float32 test clip: a rising tone plus a little seeded noise, amplitude <= ~0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.4 * np.sin(2 * np.pi * (300 + 1500 * t) * t) + 0.1 * rng.standard_normal(len(t))
    return x.astype("float32")


def invoke(*args):
    """Run `l2i-tf ARGS...` in-process (click's CliRunner)."""
    from click.testing import CliRunner

    from cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, code, *fragments):
    """A CLI failure the way a user should see it: an exit code, a message naming the problem, no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@contextlib.contextmanager
def umask(value: int = 0o022):
    """Run the block under this umask, then put the previous one back."""
    previous = os.umask(value)
    try:
        yield value
    finally:
        os.umask(previous)


def current_umask() -> int:
    """The process's umask (read by setting one and putting it back)."""
    previous = os.umask(0o022)
    os.umask(previous)
    return previous


def unexpected_modes(root: str | Path, mask: int) -> dict[str, str]:
    """``{path: mode}`` of ``root`` and everything under it whose mode is not what ``os.mkdir`` (folders: 0o777) or
    ``open`` (files: 0o666) give under the umask ``mask``; empty when all are."""
    root = Path(root)
    found = {}
    for path in (root, *root.rglob("*")):
        have = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~mask
        if have != want:
            found[str(path.relative_to(root))] = oct(have)
    return found


def make_tone_job(root: str | Path, **changes):
    """A 3-class `folders` data set of tones (440 / 1200 / 3000 Hz, 5 half-second clips a class) in ``root/data``, a
    tiny untrained demo classifier (seed 0) with its sidecar, and the ``TrainConfig`` of a short run on them."""
    import keras
    import soundfile

    from l2i_tf import classifier, runs

    root = Path(root)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
    for c, freq in enumerate((440, 1200, 3000)):
        (root / "data" / f"tone{c}").mkdir(parents=True)
        for i in range(5):
            x = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * i) * t) + 0.01 * rng.standard_normal(len(t))
            soundfile.write(root / "data" / f"tone{c}" / f"{i}.wav", x.astype("float32"), SAMPLE_RATE)
    keras.utils.set_random_seed(0)
    path = root / "tiny_classifier.keras"
    info = classifier.ClassifierInfo(("a", "b", "c"), SAMPLE_RATE, False, classifier.DEMO_LAYERS)
    model = classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(4, 8, 8, 8)))
    classifier.save_classifier(model, info, path)
    settings = dict(
        classifier=str(path),
        data=str(root / "data"),
        layout="folders",
        clip_seconds=0.5,
        k=K,
        nmf_iterations=10,
        hidden=8,
        epochs=2,
        batch_size=4,
        source_mixtures=0,  # the paper's training, explicitly: also in a subprocess, where conftest's pin is absent
        source_weight=0.0,
    )
    return runs.TrainConfig(**{**settings, **changes})


def write(path: Path, samples, rate: int = SAMPLE_RATE, subtype: str | None = None, format: str | None = None) -> Path:
    """Write ``samples`` with soundfile in any subtype/format, making parent folders."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype, format=format)
    return path


def noise(n: int, seed: int = 0, channels: int | None = None) -> np.ndarray:
    """Seeded uniform noise in [-0.5, 0.5], float32 [n] or [n, channels]."""
    shape = (n,) if channels is None else (n, channels)
    return (0.5 * np.random.default_rng(seed).uniform(-1, 1, shape)).astype("float32")
