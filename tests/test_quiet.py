"""Quiet by default: without -v, `l2i-tf` shows its own progress and results but no TensorFlow, Keras or tensorflow-io
noise; with -v it shows that too."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import cli
from cli import options
from l2i_tf import classifier

REPO = Path(__file__).resolve().parents[1]

# What TensorFlow, XLA, tensorflow-io and Keras print when nobody asks them to.
NOISE = re.compile(
    "|".join(
        [
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ",  # TensorFlow's C++ log lines
            r"Unable to register cu(FFT|DNN|BLAS) factory",
            r"cudart_stub|oneDNN|cpu_feature_guard|TF-TRT|TensorRT",
            r"[IWE]0000 ",  # absl's C++ log lines (XLA)
            r"absl::InitializeLog|XLA",
            r"Using a while_loop for converting",
            r"retracing",
            r"shuffle=True|has not yet been built|Skipping variable loading",
            r"UserWarning|DeprecationWarning|FutureWarning",
            r"Warning|warning:|WARNING|tensorflow/",
            r"(?i:cuda)",
        ]
    )
)
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ")


def l2i_tf(*args, cache: Path) -> subprocess.CompletedProcess:
    """`l2i-tf ARGS` in a fresh process, in an environment that does not set TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["L2I_TF_CACHE"] = str(cache)  # an empty cache: the clips are decoded (and tensorflow-io traced) again
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 2-class `folders` data set (6 one-second tones each) and a tiny untrained demo classifier for it."""
    from conftest import tone, write_audio

    root = tmp_path_factory.mktemp("quiet")
    for c, name in enumerate(("low", "high")):
        for k in range(6):
            write_audio(root / "data" / name / f"{name}_{k:02d}.wav", tone(300.0 * (c + 1), 1.0, seed=10 * c + k))
    keras.utils.set_random_seed(0)
    model = classifier.build_demo_classifier(2, classifier.DemoConfig(channels=(4, 8, 8, 8)))
    info = classifier.ClassifierInfo(("low", "high"), 16000, False, classifier.DEMO_LAYERS)
    classifier.save_classifier(model, info, root / "classifier.keras")
    return root


def train_args(root: Path, out: Path) -> list:
    return [
        "train",
        *("--classifier", root / "classifier.keras", "--data", root / "data", "--layout", "folders"),
        *("--epochs", 1, "--nmf-iterations", 2, "-k", 4, "--hidden", 8, "--clip-seconds", 1, "--batch-size", 4),
        *("--source-mixtures", 16, "--source-weight", 5),  # the default term, on fewer mixtures
        *("--out", out),
    ]


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def test_train_and_explain_print_no_noise_without_verbose(job, tmp_path):
    start = time.perf_counter()
    trained = l2i_tf(*train_args(job, tmp_path / "run"), cache=tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test fidelity: top-1" in trained.stdout
    assert (tmp_path / "run" / "interpreter.keras").is_file()
    assert noise(trained.stderr) == [], trained.stderr[-5000:]
    # The command's own progress lines, on stdout with its results, are not noise.
    starts = ("data: ", "dictionary: K=4 learnt on ", "features: ", "epoch 1/1: loss ", "kept the weights of epoch 1")
    printed = trained.stdout.splitlines()
    assert all(any(line.startswith(start) for line in printed) for start in starts), trained.stdout
    assert noise(trained.stdout) == [], trained.stdout

    clip = job / "data" / "low" / "low_00.wav"
    explained = l2i_tf("explain", tmp_path / "run", clip, "--out", tmp_path / "explained", cache=tmp_path / "cache")
    assert explained.returncode == 0, explained.stderr[-3000:]
    assert (tmp_path / "explained" / "interpretation.wav").is_file()
    assert noise(explained.stderr) == [], explained.stderr[-5000:]
    assert time.perf_counter() - start < 300


def test_verbose_lets_tensorflow_and_keras_through_once(job, tmp_path):
    trained = l2i_tf(*train_args(job, tmp_path / "run"), "-v", cache=tmp_path / "cache")
    assert trained.returncode == 0, trained.stderr[-3000:]
    lines = trained.stderr.splitlines()
    # TensorFlow's C++ start-up lines (oneDNN, cudart_stub, CUDA factories, cpu_feature_guard, TF-TRT: some apply).
    assert any(TF_CPP_LINE.match(line) for line in lines), trained.stderr[-5000:]
    # Python-side warnings (TensorFlow's, Keras UserWarnings), when there are any: the decoder no longer uses
    # tensorflow-io, whose while_loop fallback warning this test used to rely on, so a train may print none...
    # ...each once: TensorFlow's own handler prints it, the root handler must not print it again.
    tf_messages = {line.removeprefix("WARNING:tensorflow:") for line in lines if line.startswith("WARNING:tensorflow:")}
    assert not tf_messages & set(lines), sorted(tf_messages & set(lines))
    # The package's own progress log.
    assert any(line.startswith("decoding and resampling") for line in lines), trained.stderr[-5000:]


@pytest.mark.parametrize(
    ("argv", "preset", "expected"),
    [
        (["train"], None, "3"),
        (["train", "--epochs", "1"], "0", "0"),  # never override the user's choice
        (["train", "-v"], None, None),
        (["explain", "run", "a.wav", "--verbose"], None, None),
    ],
)
def test_native_logs_are_quiet_unless_verbose(argv, preset, expected):
    environ = {} if preset is None else {"TF_CPP_MIN_LOG_LEVEL": preset}
    cli.quiet_native_logs(argv, environ)
    assert environ.get("TF_CPP_MIN_LOG_LEVEL") == expected


@pytest.fixture
def restore_logging():
    tf_logger = tf.get_logger()
    saved = tf_logger.level, tf_logger.propagate, logging.getLogger("absl").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    tf_logger.setLevel(saved[0])
    tf_logger.propagate = saved[1]
    logging.getLogger("absl").setLevel(saved[2])


def warn_from(module: str, category=UserWarning) -> None:
    warnings.warn_explicit(f"from {module}", category, f"{module}.py", 1, module=module)


@pytest.mark.parametrize("verbose", [False, True])
def test_setup_filters_third_party_warnings_unless_verbose(restore_logging, verbose):
    options.setup(verbose)
    warn_from("keras.src.trainers.epoch_iterator")
    warn_from("tensorflow.python.framework.ops", DeprecationWarning)
    warn_from("tensorflow_io.python.ops")
    warn_from("l2i_tf.training")  # the package's own warnings always show
    shown = [str(w.message) for w in restore_logging]
    third_party = ["from keras.src.trainers.epoch_iterator", "from tensorflow.python.framework.ops"]
    third_party.append("from tensorflow_io.python.ops")
    assert shown == (third_party if verbose else []) + ["from l2i_tf.training"]
    assert tf.get_logger().isEnabledFor(logging.WARNING) == verbose
