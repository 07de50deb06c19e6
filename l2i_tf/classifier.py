"""The classifier contract, its sidecar JSON, and the bundled VGG-style demo classifier with its training job.

Contract: any Keras model whose input is a mono waveform ``[batch, samples]`` (or
``[batch, samples, 1]``) at the configured sample rate and whose output is logits
``[batch, C]`` (softmax semantics for multi-class, sigmoid for multi-label). A
model that takes features is wrapped with :func:`l2i_tf.feature_models.wrap_feature_model` (also importable
from here).
Metadata (class names, sample rate, multi-label, default layers to tap) lives in
a sidecar ``<model>.json`` next to the ``.keras`` file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from l2i_tf import audio, data, mixtures, tables, timeline, windows
from l2i_tf.audio import LogMelSpectrogram
from l2i_tf.batches import without_autotune
from l2i_tf.feature_models import wrap_feature_model  # noqa: F401 (its home before feature_models)
from l2i_tf.metrics import macro_auprc
from l2i_tf.progress import Progress, epoch_line, per_split, teller

PACKAGE_ROOT = Path(__file__).resolve().parent
DEMO_MULTICLASS = PACKAGE_ROOT / "demo" / "esc10_classifier.keras"
DEMO_MULTILABEL = PACKAGE_ROOT / "demo" / "esc10_multilabel_classifier.keras"
DEMO_LAYERS = ("block2_pool", "block3_pool", "block4_relu")
DEMO_EVAL_MIXTURES = 200  # validation and test mixtures of the multi-label demo
LONGEST_DEFAULT_CLIP_SECONDS = timeline.WHOLE_CLIP_SECONDS
"""The cap of the default clip length (:func:`default_clip_seconds`): the Explainer hears a recording up to this long
whole and a longer one in windows of it, so longer training clips cost memory and time for nothing."""


@dataclasses.dataclass(frozen=True)
class ClassifierInfo:
    """What travels with a classifier: its sidecar JSON."""

    class_names: tuple[str, ...]
    sample_rate: int = 16000
    multilabel: bool = False
    layers: tuple[str, ...] = ()
    clip_samples: int | None = None
    metrics: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["class_names"], d["layers"] = list(self.class_names), list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        d["class_names"] = tuple(d["class_names"])
        d["layers"] = tuple(d.get("layers", ()))
        return cls(**d)


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def save_classifier(model: keras.Model, info: ClassifierInfo, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # An inference copy: Keras 3 saves a compiled model's optimizer state too (2x the weights).
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    # Temporary files + renames: a crash never leaves half a model (the sidecar goes last; a model without its
    # sidecar still loads, with default settings).
    tmp = path.with_name(f".{path.name}.tmp.keras")
    clean.save(tmp)
    os.replace(tmp, path)
    side = sidecar_path(path)
    tmp_side = side.with_name(f".{side.name}.tmp")
    tmp_side.write_text(json.dumps(info.to_dict(), indent=2))
    os.replace(tmp_side, side)


def load_info(model_path: str | Path) -> ClassifierInfo | None:
    side = sidecar_path(model_path)
    return ClassifierInfo.from_dict(json.loads(side.read_text())) if side.is_file() else None


# ---------------------------------------------------------------- demo model


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Demo classifier architecture and training settings."""

    sample_rate: int = 16000
    num_mel_bins: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 256)
    dropout: float = 0.3
    crop_seconds: float = 3.0  # random training crops, never longer than clip_seconds
    clip_seconds: float = 5.0  # clips are padded/cropped to this (l2i-tf train-classifier: default_clip_seconds)
    # None: any input length. Else the model's input is fixed to this many seconds (``keras.Input((L,))``): it trains
    # on random L-sample crops and is scored on the windows of l2i_tf.windows (hop L/2) of every clip.
    fixed_seconds: float | None = None
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    mixup: float = 0.2
    gain_db: float = 6.0
    seed: int = 0
    multilabel: bool = False
    mixtures_per_epoch: int = 720

    def __post_init__(self):
        audio.check_positive_int(self.sample_rate, "sample_rate")
        for name in ("clip_seconds", "crop_seconds", "fixed_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DemoConfig.{name} must be > 0 seconds, got {value!r}")
        if self.fixed_seconds is not None and self.fixed_samples < 2:
            raise ValueError(
                f"DemoConfig.fixed_seconds={self.fixed_seconds!r} is {self.fixed_samples} samples at "
                f"{self.sample_rate} Hz; a fixed input needs at least 2"
            )

    @property
    def fixed_samples(self) -> int | None:
        """The fixed input length, samples (None: any length)."""
        if self.fixed_seconds is None:
            return None
        return int(round(self.fixed_seconds * self.sample_rate))


def default_clip_seconds(infos: list[data.ClipInfo]) -> tuple[float, float]:
    """``(clip length, 95th percentile)``, seconds: the clip length to train the demo classifier on when none is
    given, the 95th percentile of the clips' durations (:func:`l2i_tf.data.typical_seconds`, to the millisecond)
    capped at :data:`LONGEST_DEFAULT_CLIP_SECONDS`, and that percentile."""
    typical = round(data.typical_seconds(infos), 3)
    return min(typical, LONGEST_DEFAULT_CLIP_SECONDS), typical


def build_demo_classifier(num_classes: int, config: DemoConfig = DemoConfig()) -> keras.Model:
    """Waveform ``[batch, samples]`` at ``config.sample_rate`` -> logits ``[batch, num_classes]``; any clip length, or
    ``config.fixed_samples`` exactly when set.

    Log-mel front-end (25 ms / 10 ms frames at any rate), per-band BatchNorm, VGG blocks (conv-BN-ReLU x2, 2x2 average
    pooling) whose layers are named ``block{i}_conv{j}``, ``block{i}_relu`` and
    ``block{i}_pool`` ([batch, time, freq, channels]), then mean over frequency,
    max + mean over time, dropout and a Dense layer named ``logits``.
    """
    waveform = keras.Input(shape=(config.fixed_samples,), name="waveform")
    x = LogMelSpectrogram.for_rate(config.sample_rate, num_mel_bins=config.num_mel_bins, name="logmel")(waveform)
    x = keras.layers.Reshape((-1, config.num_mel_bins, 1), name="logmel_4d")(x)
    x = MinFrames(2 ** (len(config.channels) - 1), name="min_frames")(x)
    # momentum 0.9: with ~15 steps an epoch, Keras' default 0.99 leaves the moving statistics
    # far behind the weights, and validation accuracy sits near chance for 20+ epochs.
    x = keras.layers.BatchNormalization(axis=2, momentum=0.9, name="band_norm")(x)
    for i, ch in enumerate(config.channels, start=1):
        for j in (1, 2):
            x = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"block{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"block{i}_relu" if j == 2 else f"block{i}_relu{j}")(x)
        if i < len(config.channels):
            x = keras.layers.AveragePooling2D(2, name=f"block{i}_pool")(x)
    x = FreqMean(name="freq_mean")(x)
    pooled = keras.layers.Concatenate(name="time_pool")(
        [keras.layers.GlobalMaxPooling1D(name="time_max")(x), keras.layers.GlobalAveragePooling1D(name="time_mean")(x)]
    )
    pooled = keras.layers.Dropout(config.dropout, name="dropout")(pooled)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(waveform, logits, name="esc10_vgg")


@keras.saving.register_keras_serializable(package="l2i_tf")
class MinFrames(keras.layers.Layer):
    """Pad ``[batch, time, ...]`` at the end of time to at least ``min_frames`` frames with each clip's lowest value.

    Lets a network with pooling accept clips shorter than its receptive field (down to one sample). Each clip is
    padded with its own minimum, so its output never depends on the other clips of its batch.
    """

    def __init__(self, min_frames, **kwargs):
        super().__init__(**kwargs)
        self.min_frames = min_frames

    def call(self, x):
        frames = tf.shape(x)[1]
        missing = tf.maximum(self.min_frames - frames, 0)
        paddings = tf.concat([[[0, 0], [0, missing]], tf.zeros([tf.rank(x) - 2, 2], tf.int32)], axis=0)
        padded = tf.pad(x, paddings)
        rank = x.shape.rank
        lowest = tf.reduce_min(x, axis=list(range(1, rank)), keepdims=True)  # [batch, 1, ...]
        is_pad = tf.reshape(tf.range(tf.shape(padded)[1]) >= frames, [1, -1] + [1] * (rank - 2))
        padded = tf.where(is_pad, lowest, padded)
        # Computed paddings lose the static shape; only time changes. Without it the next Conv2D sees unknown
        # channels, and Keras runs it through XLA (its route for grouped convolutions): slower, and noisy.
        padded.set_shape([x.shape[0], None, *x.shape[2:]])
        return padded

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_frames": self.min_frames}


@keras.saving.register_keras_serializable(package="l2i_tf")
class FreqMean(keras.layers.Layer):
    """``[batch, time, freq, channels]`` -> ``[batch, time, channels]`` (mean over frequency)."""

    def call(self, x):
        return tf.reduce_mean(x, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[3])


# ---------------------------------------------------------------- training


class TimeCosineSchedule(keras.callbacks.Callback):
    """Cosine learning-rate decay over a fixed number of epochs, updated every batch."""

    def __init__(self, base_lr: float, total_steps: int):
        super().__init__()
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.step = 0

    def on_train_batch_begin(self, batch, logs=None):
        frac = min(self.step / max(self.total_steps, 1), 1.0)
        self.model.optimizer.learning_rate.assign(self.base_lr * 0.5 * (1 + math.cos(math.pi * frac)))
        self.step += 1


def _augment(config: DemoConfig, crop: int):
    @tf.autograph.experimental.do_not_convert  # run as written, not converted as tf.data would: no tensor branches
    def fn(wave, label):
        wave = data.fix_length(wave, crop, random_crop=True)
        shift = tf.random.uniform([], 0, crop, dtype=tf.int32)
        wave = tf.roll(wave, shift, axis=0)
        gain = tf.random.uniform([], -config.gain_db, config.gain_db)
        return wave * tf.pow(10.0, gain / 20.0), label

    return fn


def _mixup(alpha: float):
    @tf.autograph.experimental.do_not_convert  # as _augment's
    def fn(waves, labels):
        n = tf.shape(waves)[0]
        g1 = tf.random.gamma([n], alpha)
        g2 = tf.random.gamma([n], alpha)
        lam = g1 / (g1 + g2)
        lam = tf.maximum(lam, 1 - lam)
        perm = tf.random.shuffle(tf.range(n))
        waves = lam[:, None] * waves + (1 - lam[:, None]) * tf.gather(waves, perm)
        labels = lam[:, None] * labels + (1 - lam[:, None]) * tf.gather(labels, perm)
        return waves, labels

    return fn


def _compiled_model(num_classes: int, config: DemoConfig, init_from) -> keras.Model:
    """The demo architecture (weights from ``init_from`` if given), compiled with AdamW and a logits loss."""
    model = build_demo_classifier(num_classes, config)
    if init_from is not None:
        source = keras.saving.load_model(init_from, compile=False)
        try:
            model.set_weights(source.get_weights())
        except ValueError as e:
            raise ValueError(f"cannot start from {str(init_from)!r}: its architecture differs ({e})") from None
    model.compile(
        optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay),
        loss=keras.losses.BinaryCrossentropy(from_logits=True)
        if config.multilabel
        else keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[] if config.multilabel else ["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)  # now: built inside the first step, it is traced twice
    return model


def _steps_per_epoch(config: DemoConfig, clips: int) -> int:
    """Whole batches an epoch (BatchNorm): the rest waits for the next epoch's order; none is an error."""
    steps = (config.mixtures_per_epoch if config.multilabel else clips) // config.batch_size
    if not steps:
        what = "--mixtures-per-epoch is" if config.multilabel else f"the training folds hold {clips} clips,"
        raise data.AudioDataError(f"{what} fewer than one batch of {config.batch_size}: lower --batch-size")
    return steps


def _epoch_dataset(xtr, ytr, num_classes: int, config: DemoConfig, crop: int, epoch: int) -> tf.data.Dataset:
    """One epoch of training batches: shuffled, cropped and augmented clips (fresh mixtures when multi-label)."""
    if config.multilabel:
        mix = mixtures.make_mixtures(
            xtr, ytr, num_classes, config.mixtures_per_epoch, seed=config.seed * 1000 + epoch, keep_sources=False
        )
        ds = tf.data.Dataset.from_tensor_slices((mix["mixture"], mix["labels"]))
    else:
        ds = tf.data.Dataset.from_tensor_slices((xtr, np.eye(num_classes, dtype="float32")[ytr]))
    ds = ds.shuffle(len(ds), seed=config.seed + epoch).map(_augment(config, crop), num_parallel_calls=2)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    if config.mixup > 0 and not config.multilabel:
        ds = ds.map(_mixup(config.mixup))
    return without_autotune(ds.prefetch(2))  # a new iterator every epoch: dropping each must not wait


def train_demo_classifier(
    out: str | Path,
    config: DemoConfig = DemoConfig(),
    table: tables.ClipTable | None = None,
    splits: tables.Splits = tables.Splits(),
    cache_dir=None,
    init_from: str | Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train the demo classifier on ``table`` (default: bundled ESC-10) and save it with its sidecar.

    ``init_from``: a ``.keras`` demo classifier of the same architecture to start from
    (e.g. the multi-class model, fine-tuned on mixtures for the multi-label one).
    ``progress``: called with each progress line (the clips read, each epoch); None: they go to the log at INFO.

    Returns the metrics: validation and test accuracy (multi-class) or macro-AUPRC on
    mixtures (multi-label), wall time.
    """
    say = teller(progress)
    keras.utils.set_random_seed(config.seed)
    start = time.perf_counter()
    table = table or tables.esc10_table()
    clip = max(1, int(round(config.clip_seconds * config.sample_rate)))
    crop = config.fixed_samples or min(clip, int(config.crop_seconds * config.sample_rate))
    num_classes = len(table.class_names)
    parts = tables.split(table, splits)
    (xtr, ytr), (xva, yva), (xte, yte) = (
        data.load_waveforms(p, config.sample_rate, clip, cache_dir=cache_dir) for p in parts
    )
    if config.fixed_samples and not config.multilabel:  # scored on windows of the clips at their own lengths
        (xva, yva), (xte, yte) = (data.load_clips(p, config.sample_rate, cache_dir=cache_dir) for p in parts[1:])
    say(f"data: {per_split(map(len, parts), 'clips')} read in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    if config.multilabel:  # validation and test mixtures; the training ones are drawn afresh every epoch
        _, (xva, yva), (xte, yte) = mixtures.split_mixtures(
            (None, (xva, yva), (xte, yte)), num_classes, 4 * DEMO_EVAL_MIXTURES, config.seed
        )

    steps_per_epoch = _steps_per_epoch(config, len(xtr))
    model = _compiled_model(num_classes, config, init_from)
    history_val = []
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        ds = _epoch_dataset(xtr, ytr, num_classes, config, crop, epoch)
        if epoch == 0:
            schedule = TimeCosineSchedule(config.learning_rate, steps_per_epoch * config.epochs)
        # shuffle=False: `ds` is shuffled above (Keras ignores the flag for a dataset, and warns).
        hist = model.fit(ds, epochs=1, verbose=0, callbacks=[schedule], shuffle=False)
        val_score = _score(model, xva, yva, config)
        history_val.append(val_score)
        score = f"{'macro-AUPRC' if config.multilabel else 'accuracy'} {val_score:.3f}"  # as the test score prints
        seconds = time.perf_counter() - epoch_start
        say(epoch_line(epoch + 1, config.epochs, hist.history["loss"][-1], score, seconds))
    seconds = time.perf_counter() - start
    metric = "macro_auprc" if config.multilabel else "accuracy"
    metrics = {
        f"validation_{metric}": history_val[-1],
        f"test_{metric}": _score(model, xte, yte, config),
        "train_seconds": seconds,
        "epochs": config.epochs,
        "seed": config.seed,
        "splits": dataclasses.asdict(splits),
        "clip_seconds": config.clip_seconds,
        "crop_seconds": min(config.crop_seconds, config.clip_seconds),
    }
    if config.fixed_samples:
        metrics.update(_window_metrics(model, config, (xva, yva), (xte, yte)))
    info = ClassifierInfo(
        class_names=table.class_names,
        sample_rate=config.sample_rate,
        multilabel=config.multilabel,
        layers=DEMO_LAYERS,
        clip_samples=config.fixed_samples,
        metrics=metrics,
    )
    save_classifier(model, info, out)
    return metrics


def _window_metrics(model: keras.Model, config: DemoConfig, validation, test) -> dict:
    """A fixed-input classifier's window counts per split and (multi-class) its test accuracy per clip."""
    metrics = {
        "fixed_seconds": config.fixed_seconds,
        "windows": {
            name: windows.cut(x, y, config.fixed_samples).counts()
            for name, (x, y) in (("validation", validation), ("test", test))
        },
    }
    if not config.multilabel:
        metrics["test_clip_accuracy"] = _clip_accuracy(model, *test, config.fixed_samples)
    return metrics


def predict_logits(model: keras.Model, waves: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate(
        [model(waves[i : i + batch_size], training=False).numpy() for i in range(0, len(waves), batch_size)]
    )


def _score(model, waves, labels, config: DemoConfig) -> float:
    """Accuracy (macro-AUPRC if multi-label) on the clips (``[n, S]``), or on their windows for a fixed-length model
    (``waves`` may then be a list of clips of any lengths)."""
    if config.fixed_samples:
        cut = windows.cut(waves, labels, config.fixed_samples)
        waves, labels = cut.waves, cut.labels
    logits = predict_logits(model, waves)
    if config.multilabel:
        return macro_auprc(labels, logits)
    return float(np.mean(logits.argmax(axis=1) == labels))


def _clip_accuracy(model, waves, labels, length: int) -> float:
    """Accuracy of a fixed-length model per clip, on the mean of its windows' logits."""
    cut = windows.cut(waves, labels, length)
    logits = predict_logits(model, cut.waves)
    mean = np.stack([logits[cut.clip == i].mean(axis=0) for i in range(cut.clips)])
    return float(np.mean(mean.argmax(axis=1) == labels))
