"""Shared fixtures: a session-wide decode cache, ESC-10 fold-5 waveforms, tiny generated data sets, a layer checker,
one tiny run folder and its export, and one tiny trained run per test run, shared by pytest-xdist's workers
(read-only: copy them to change them).

The decoded-audio cache (``L2I_TF_CACHE``) points at one folder for the whole session, so
the bundled ESC-10 clips are decoded and resampled once per run. Set ``L2I_TF_TEST_CACHE``
to a folder to keep that cache between runs (it is keyed by file paths, sizes and mtimes).

TensorFlow, Keras and l2i_tf are imported inside the fixtures that use them, not at the top of this file: pytest-xdist's
controller process loads this file too, before it starts the workers, and has no use for TensorFlow's ~4 s import.
"""

from __future__ import annotations

import copy
import fcntl
import inspect
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

SAMPLE_RATE = 16000
ESC10_SAMPLES = 5 * SAMPLE_RATE


def shared(tmp_path_factory, worker_id: str, name: str, build):
    """``build(folder)`` run once for the whole test run, even across pytest-xdist's workers: the first worker to
    ask builds it into a folder beside every worker's own temporary folders (under a file lock) and leaves its
    pickled value; the others wait and load that value. Without xdist (``worker_id`` "master"): built here.

    For read-only session fixtures (runs, exports, caches): what one worker builds, the others must not change.
    """
    if worker_id == "master":
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build fails
        done = root / "value.pickle"
        if done.is_file():
            return pickle.loads(done.read_bytes())
        folder = root / f"built-by-{worker_id}"  # a worker whose build failed leaves its folder to itself
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        value = build(folder)
        done.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session", autouse=True)
def decode_cache(tmp_path_factory, worker_id) -> Path:
    """One decoded-audio cache folder for the session (shared by xdist's workers: a cache is written to a
    temporary folder and renamed, so two writers of the same clips cannot clash), exported as ``L2I_TF_CACHE``."""
    folder = os.environ.get("L2I_TF_TEST_CACHE") or shared(tmp_path_factory, worker_id, "l2i_tf_cache", lambda f: f)
    folder = Path(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2I_TF_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def paper_training_by_default():
    """Training in tests (in this process) uses the paper's loss unless a test sets ``source_mixtures`` and
    ``source_weight`` itself: the default 480 source mixtures would multiply every tiny training's examples. The
    default itself is tested in tests/test_source_mixtures.py (which puts ``SOURCE_DEFAULTS`` back)."""
    from l2i_tf import training

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "DEFAULT_SOURCES", {False: (0, 0.0), True: (0, 0.0)})
        yield


@pytest.fixture(scope="session")
def esc10_fold5(decode_cache):
    """Bundled ESC-10 fold 5 at 16 kHz: ``(waveforms float32 [80, 80000], labels int [80], table)``."""
    from l2i_tf import data, tables

    table = tables.esc10_table().with_folds([5])
    waveforms, labels = data.load_waveforms(table, SAMPLE_RATE, ESC10_SAMPLES)
    return waveforms, labels, table


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> Path:
    """``run_fixture.make_run``'s tiny untrained run (classes dog, rain, siren; K = 8), made once a test run.

    Read-only: a test that writes into a run folder copies it (``shutil.copytree``) first.
    """
    from run_fixture import make_run

    return shared(tmp_path_factory, worker_id, "tiny_run", lambda folder: make_run(folder / "run"))


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory, worker_id) -> dict:
    """``tiny_run`` exported once a session by ``l2i-tf export --top 3 --max-seconds 1 --threshold 0`` into a model
    folder that already held version 1 (with a file in it), so the export is version 2.

    Returns ``{"root", "run", "path", "output", "traced"}``: ``path`` is ``<root>/savedmodels/l2i/2``, ``output``
    what the command printed, ``traced`` the graphs of :mod:`l2i_tf.recording` the command built, in order (each
    call of ``explain_recording`` or ``classify`` is one trace: they run only while a ``tf.function`` is traced).
    Read-only, like ``tiny_run``.
    """
    from run_fixture import invoke

    from l2i_tf import recording

    def build(root: Path) -> dict:
        older = root / "savedmodels" / "l2i" / "1"
        older.mkdir(parents=True)
        (older / "keep.txt").write_text("an older version")
        args = ("--top", 3, "--max-seconds", 1, "--threshold", 0)
        traced = []
        with pytest.MonkeyPatch.context() as mp:
            for name in ("explain_recording", "classify"):
                original = getattr(recording, name)
                mp.setattr(recording, name, lambda *a, _f=original, _n=name, **k: traced.append(_n) or _f(*a, **k))
            result = invoke("export", tiny_run, "--out", root / "savedmodels", *args)
        assert result.exit_code == 0, result.output
        path = root / "savedmodels" / "l2i" / "2"
        return {"root": root, "run": tiny_run, "path": path, "output": result.output, "traced": traced}

    return shared(tmp_path_factory, worker_id, "tiny_export", build)


@pytest.fixture(scope="module")
def tiny_export_loaded_once(tiny_export) -> dict:
    """``tiny_export``, loaded once while the module that asks for it runs (``run_fixture.saved_model_loaded_once``):
    for the modules that run `l2i-tf explain` (or a server, or a signature) on the session's export test after test.
    """
    from run_fixture import saved_model_loaded_once

    with saved_model_loaded_once(tiny_export["path"]):
        yield tiny_export


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, worker_id) -> dict:
    """``run_fixture.make_tone_job``'s tiny job (4 epochs, no augmented copies or mixed inputs, no early stop),
    trained once a session by ``training.train``.

    Returns ``{"root", "config", "run", "metrics"}`` (``metrics``: what ``train`` returned). Read-only: a test that
    resumes or changes the run copies it (``shutil.copytree``) first.
    """
    from run_fixture import make_tone_job

    from l2i_tf import training

    def build(root: Path) -> dict:
        config = make_tone_job(root, epochs=4, augment_copies=0, mix_inputs=0, patience=50)
        metrics = training.train(root / "run", config)
        return {"root": root, "config": config, "run": root / "run", "metrics": metrics}

    return shared(tmp_path_factory, worker_id, "tiny_trained", build)


@pytest.fixture(scope="session")
def tiny_source_trained(tmp_path_factory, worker_id) -> dict:
    """``run_fixture.make_tone_job``'s tiny job with the source term (6 source mixtures, weight 1; 1 epoch), trained
    once a session by ``training.train`` with its feature shards kept (``<run>/cache/features``: the run removes
    them otherwise), the free space it checked for recorded, and its progress lines told to a list.

    Returns ``{"root", "config", "run", "metrics", "planned", "told"}`` (``metrics``: what ``train`` returned;
    ``planned``: the bytes of each ``feature_cache.check_free_space`` call, in order; ``told``: the lines ``train``
    gave its ``progress`` callable). Read-only: copy it to change it.
    """
    from run_fixture import make_tone_job

    from l2i_tf import feature_cache, training

    def build(root: Path) -> dict:
        config = make_tone_job(root, epochs=1, source_mixtures=6, source_weight=1.0)
        planned, told, check = [], [], feature_cache.check_free_space
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(feature_cache, "check_free_space", lambda f, needed: planned.append(needed) or check(f, needed))
            mp.setattr(training, "remove_feature_cache", lambda out: None)  # keep the shards, to weigh them
            metrics = training.train(root / "run", config, progress=told.append)
        run = root / "run"
        return {"root": root, "config": config, "run": run, "metrics": metrics, "planned": planned, "told": told}

    return shared(tmp_path_factory, worker_id, "tiny_source_trained", build)


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
    """``check(layer, args, kwargs=None, tensor_kwargs=None, shapes=None, saved_elsewhere=())`` -> the reloaded model.

    ``args`` are the positional call inputs (a tuple; each an array or a list of arrays, one ``keras.Input`` per
    array), ``tensor_kwargs`` inputs passed by keyword (e.g. ``mask``), ``kwargs`` constant keyword arguments (e.g.
    ``num_frames``), ``shapes`` optional ``keras.Input`` shapes (no batch axis) for the flattened inputs, in
    ``keras.tree.flatten((args, tensor_kwargs))`` order (``None`` for a variable axis). Checks:

    - ``get_config`` chains to ``super()`` and holds every constructor argument but ``saved_elsewhere`` (weights);
    - ``from_config(get_config())`` gives the same config and, with the layer's weights, the same outputs;
    - a functional model holding the layer survives ``.keras`` save/load (no ``custom_objects``) with the same
      class and identical outputs.
    """

    def check(layer, args, kwargs=None, tensor_kwargs=None, shapes=None, saved_elsewhere=()):
        import keras

        kwargs, tensor_kwargs = dict(kwargs or {}), dict(tensor_kwargs or {})
        config = layer.get_config()
        assert {"name", "trainable", "dtype"} <= set(config), f"get_config does not chain to super(): {config}"
        params = inspect.signature(type(layer).__init__).parameters.values()
        arguments = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        missing = arguments - set(config) - set(saved_elsewhere)
        assert not missing, f"{type(layer).__name__}.get_config() leaves out constructor argument(s) {sorted(missing)}"
        clone = type(layer).from_config(copy.deepcopy(config))  # a copy: Keras' deserialisation may consume it
        assert clone.get_config() == config

        arrays = keras.tree.flatten((args, tensor_kwargs))
        shapes = shapes or [np.shape(a)[1:] for a in arrays]
        symbolic = [keras.Input(shape=s, dtype=np.asarray(a).dtype) for s, a in zip(shapes, arrays)]
        sym_args, sym_kwargs = keras.tree.pack_sequence_as((args, tensor_kwargs), symbolic)
        model = keras.Model(symbolic, layer(*sym_args, **sym_kwargs, **kwargs))
        expected = [np.asarray(t) for t in keras.tree.flatten(model(arrays))]

        clone(*args, **tensor_kwargs, **kwargs)  # builds it
        clone.set_weights(layer.get_weights())
        for got, want in zip(keras.tree.flatten(clone(*args, **tensor_kwargs, **kwargs)), expected, strict=True):
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(np.asarray(got), want)

        path = tmp_path / f"{layer.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded.get_layer(layer.name)) is type(layer)
        for got, want in zip(keras.tree.flatten(loaded(arrays)), expected, strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)
        return loaded

    return check
