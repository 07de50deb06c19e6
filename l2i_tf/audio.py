"""STFT configuration, STFT/ISTFT, log1p magnitude and phase, and the layers built on them (analysis, masked
synthesis, the log-mel front end).

This is the only module that calls ``tf.signal``. Every spectrogram in the package
is made here, with one frozen :class:`STFTConfig` that travels (as JSON) with the
dictionary, the interpreter and the export.

Shapes: waveforms are ``[..., samples]``; spectrograms are ``[..., frames, bins]``
with ``bins = fft_length // 2 + 1``. The STFT pads the front of the signal by
``frame_length - frame_step`` samples so that every sample, edges included, is
covered by the same number of frames; :func:`istft` crops that padding back off,
so ``istft(stft(x), len(x)) == x`` to float32 precision.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras
import tensorflow as tf

from l2i_tf import files, framing
from l2i_tf.settings import Settings

DOMAINS = ("log1p", "linear")
"""Where a mask is applied: ``"log1p"`` masks ``X = log1p|S|`` (the paper's ``expm1(M ⊙ X)``, which squashes
magnitudes for fractional masks); ``"linear"`` masks ``|S| = expm1(X)`` (``M ⊙ |S|``, a ratio mask)."""

WINDOWS = {
    "hann": tf.signal.hann_window,
    "hamming": tf.signal.hamming_window,
}


DEFAULT_SAMPLE_RATE = 16000
REFERENCE_FRAME = 1024
"""The default frame at :data:`DEFAULT_SAMPLE_RATE` (64 ms); other rates keep its duration (`STFTConfig.for_rate`)."""
SIZES = ("frame_length", "frame_step", "fft_length")


class AudioSettingError(ValueError):
    """A sample rate or STFT size that cannot be used. ``field`` is the :class:`STFTConfig` field, ``value`` its
    value; for a size that does not fit another, ``limit`` is ``(other field, its value)`` (``frame_step`` must not
    exceed ``frame_length``, ``fft_length`` must not be below it), else ``None`` (not a positive integer)."""

    def __init__(self, message: str, field: str, value, limit: tuple[str, int] | None = None):
        super().__init__(message)
        self.field, self.value, self.limit = field, value, limit


def check_positive_int(value, field: str = "sample_rate") -> int:
    """``value`` if it is a positive integer (not a bool, not a float), else an :class:`AudioSettingError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AudioSettingError(f"STFTConfig.{field} must be a positive integer, got {value!r}", field, value)
    return value


def power_of_two_at_least(n: int) -> int:
    """The smallest power of two >= ``n`` (a positive integer)."""
    return 1 << (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class STFTConfig(Settings):
    """One STFT configuration.

    Attributes:
        sample_rate: Hz.
        frame_length: samples per frame.
        frame_step: hop between frames, samples.
        fft_length: FFT size, samples (>= frame_length).
        window: one of ``WINDOWS``.
    """

    sample_rate: int = DEFAULT_SAMPLE_RATE
    frame_length: int = REFERENCE_FRAME
    frame_step: int = REFERENCE_FRAME // 4
    fft_length: int = REFERENCE_FRAME
    window: str = "hann"

    def __post_init__(self):
        for name in ("sample_rate", *SIZES):
            check_positive_int(getattr(self, name), name)
        if self.frame_step > self.frame_length:
            raise AudioSettingError(
                f"STFTConfig.frame_step ({self.frame_step}) must not exceed "
                f"frame_length ({self.frame_length}): samples would be skipped",
                "frame_step",
                self.frame_step,
                ("frame_length", self.frame_length),
            )
        if self.fft_length < self.frame_length:
            raise AudioSettingError(
                f"STFTConfig.fft_length ({self.fft_length}) must be >= frame_length ({self.frame_length})",
                "fft_length",
                self.fft_length,
                ("frame_length", self.frame_length),
            )
        if self.window not in WINDOWS:
            raise ValueError(f"STFTConfig.window must be one of {sorted(WINDOWS)}, got {self.window!r}")

    @classmethod
    def for_rate(
        cls,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        frame_length: int | None = None,
        frame_step: int | None = None,
        fft_length: int | None = None,
        window: str = "hann",
    ) -> STFTConfig:
        """The default STFT at ``sample_rate``: a frame at least as long as 1024 samples at 16 kHz (64 ms), rounded
        up to a power of two (``2^ceil(log2(1024 · rate / 16000))``: 512 at 8 kHz, 2048 at 22.05 kHz, 4096 at 44.1
        and 48 kHz), a hop of a quarter frame and an FFT of one frame; at 16 kHz exactly ``STFTConfig()``. Rounding
        up keeps the frequency resolution at least that of 16 kHz.

        Sizes given replace the defaults and the others follow them: hop = frame // 4, FFT = frame rounded up to a
        power of two. Raises :class:`AudioSettingError` for a rate or size that is not a positive integer, a hop
        longer than the frame or an FFT shorter than it.
        """
        check_positive_int(sample_rate, "sample_rate")
        for name, value in zip(SIZES, (frame_length, frame_step, fft_length), strict=True):
            if value is not None:
                check_positive_int(value, name)
        if frame_length is None:  # integer arithmetic: exact at every rate
            frame_length = max(4, power_of_two_at_least(-(-REFERENCE_FRAME * sample_rate // DEFAULT_SAMPLE_RATE)))
        if frame_step is None:
            frame_step = max(1, frame_length // 4)
        if fft_length is None:
            fft_length = power_of_two_at_least(frame_length)
        return cls(sample_rate, frame_length, frame_step, fft_length, window)

    def differences(self, other: STFTConfig) -> dict:
        """``{field: (self's value, other's value)}`` for every field that differs."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    @property
    def num_bins(self) -> int:
        return self.fft_length // 2 + 1

    @property
    def front_pad(self) -> int:
        return self.frame_length - self.frame_step

    def num_frames(self, num_samples: int) -> int:
        """Frame count T of the STFT of a clip of ``num_samples`` samples."""
        return -(-(num_samples + self.front_pad) // self.frame_step)

    def save(self, path: str | Path) -> None:
        files.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> STFTConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_same(self, other: STFTConfig, what: str = "") -> None:
        """Raise if ``other`` is a different configuration (naming each field that differs)."""
        if self != other:
            diff = self.differences(other)
            where = f" for {what}" if what else ""
            raise ValueError(f"STFT configuration mismatch{where} (in use vs given): {diff}")


def _check_waveform(waveform: tf.Tensor) -> tf.Tensor:
    waveform = tf.convert_to_tensor(waveform)
    if not waveform.dtype.is_floating:
        raise ValueError(f"waveform must be floating point, got dtype {waveform.dtype.name}")
    if waveform.shape.rank == 0:
        raise ValueError(f"waveform must be [..., samples], got a scalar of shape {waveform.shape}")
    return tf.cast(waveform, tf.float32)


def stft(waveform, config: STFTConfig) -> tf.Tensor:
    """Complex STFT.

    Args:
        waveform: float ``[..., samples]``.
        config: the STFT configuration.

    Returns:
        complex64 ``[..., frames, bins]`` with ``frames = config.num_frames(samples)``.
    """
    waveform = _check_waveform(waveform)
    frames = framing.frames(waveform, config.frame_length, config.frame_step, config.front_pad)
    window = WINDOWS[config.window](config.frame_length, dtype=tf.float32)
    return tf.signal.rfft(frames * window, [config.fft_length])


def istft(spectrum, num_samples, config: STFTConfig) -> tf.Tensor:
    """Inverse of :func:`stft`.

    Args:
        spectrum: complex ``[..., frames, bins]``.
        num_samples: length of the original waveform, samples (int or scalar tensor).
        config: the STFT configuration used by :func:`stft`.

    Returns:
        float32 ``[..., num_samples]``.
    """
    spectrum = tf.convert_to_tensor(spectrum)
    if not spectrum.dtype.is_complex:
        raise ValueError(f"istft expects a complex spectrum, got dtype {spectrum.dtype.name}")
    if spectrum.shape.rank is not None and spectrum.shape.rank < 2:
        raise ValueError(f"istft expects [..., frames, bins], got shape {spectrum.shape}")
    bins = spectrum.shape[-1]
    if bins is not None and bins != config.num_bins:
        raise ValueError(f"spectrum has {bins} bins but the STFT config gives {config.num_bins}")
    window_fn = tf.signal.inverse_stft_window_fn(config.frame_step, forward_window_fn=WINDOWS[config.window])
    frames = tf.signal.irfft(spectrum, [config.fft_length])
    if config.fft_length != config.frame_length:
        frames = frames[..., : config.frame_length]
    frames = frames * window_fn(config.frame_length, dtype=frames.dtype)
    return framing.overlap_add_crop(frames, config.frame_step, config.front_pad, num_samples)


def power(spectrum) -> tf.Tensor:
    """``|S|² = re² + im²`` of a complex STFT (``tf.abs`` is the overflow-safe ``hypot``, slower on CPU; an STFT's
    magnitudes are far from float32's range)."""
    real, imag = tf.math.real(spectrum), tf.math.imag(spectrum)
    return real * real + imag * imag


def magnitude(spectrum) -> tf.Tensor:
    """``|S|`` of a complex STFT, as ``sqrt(`` :func:`power` ``)``: ``tf.abs`` to float32 rounding, in half its time
    on one CPU thread (6.2 against 13.5 ms on [16, 313, 513])."""
    return tf.sqrt(power(spectrum))


def magnitude_phase(spectrum) -> tuple[tf.Tensor, tf.Tensor]:
    """Split a complex STFT into ``X = log1p(|S|)`` and unit-modulus phase ``S / |S|`` (1 where |S| = 0)."""
    mag = magnitude(spectrum)
    safe = tf.where(mag > 0, mag, tf.ones_like(mag))
    phase = tf.where(mag > 0, spectrum / tf.cast(safe, spectrum.dtype), tf.ones_like(spectrum))
    return tf.math.log1p(mag), phase


def analyze(waveform, config: STFTConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Waveform ``[..., samples]`` -> ``(X, phase)``, both ``[..., frames, bins]``."""
    return magnitude_phase(stft(waveform, config))


def synthesize(log_magnitude, phase, num_samples, config: STFTConfig) -> tf.Tensor:
    """``(X, phase)`` -> waveform: ``ISTFT(expm1(X) * phase)``, cropped to ``num_samples``."""
    mag = tf.math.expm1(tf.nn.relu(log_magnitude))
    return istft(tf.cast(mag, phase.dtype) * phase, num_samples, config)


def check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def masked_waveform(x, phase, mask, num_samples, config: STFTConfig, domain: str = "log1p") -> tf.Tensor:
    """Waveform of a masked spectrogram: ``"log1p"``: ``ISTFT(expm1(M ⊙ X)·P)``; ``"linear"``: ``ISTFT(M ⊙ |S|·P)``.

    Args:
        x: ``[..., frames, bins]`` ``log1p|S|``.
        phase: complex ``[..., frames, bins]``.
        mask: broadcastable to ``x``.
        num_samples: length of the analysed waveform, samples (int or scalar tensor).
        config: the configuration that made ``x``.
        domain: one of :data:`DOMAINS`.

    Returns:
        float32 ``[..., num_samples]``.
    """
    check_domain(domain)
    x = tf.cast(x, tf.float32)
    phase = tf.convert_to_tensor(phase)
    if not phase.dtype.is_complex:
        raise ValueError(f"phase must be complex, got dtype {phase.dtype.name}")
    if domain == "log1p":
        return synthesize(mask * x, phase, num_samples, config)
    scaled = mask * tf.math.expm1(tf.nn.relu(x))
    return istft(tf.cast(scaled, phase.dtype) * phase, num_samples, config)


def masked_spectrum_waveform(spectrum, mask, num_samples, config: STFTConfig, domain: str = "log1p") -> tf.Tensor:
    """:func:`masked_waveform` from the complex STFT ``S`` [..., frames, bins] itself: float32 ``ISTFT(S·g)``
    [..., num_samples] with the real gain ``g = expm1(M ⊙ log1p|S|) / |S|`` (``"log1p"``) or ``g = M``
    (``"linear"``), 0 where ``|S| = 0``; ``mask`` >= 0, broadcastable to ``S``. No phase tensor and no complex
    division (the costly part of :func:`magnitude_phase`); equal to :func:`masked_waveform` of ``analyze(x)`` to
    float32 rounding."""
    check_domain(domain)
    gain = tf.convert_to_tensor(mask, tf.float32)
    if domain == "log1p":
        mag = magnitude(spectrum)
        gain = tf.math.divide_no_nan(tf.math.expm1(gain * tf.math.log1p(mag)), mag)
    return istft(spectrum * tf.cast(gain, spectrum.dtype), num_samples, config)


@keras.saving.register_keras_serializable(package="l2i_tf")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveform ``[batch, samples]`` (or ``[batch, samples, 1]``) -> log-mel ``[batch, frames, mels]``.

    The classifier front-end. Frames are centred like the STFT above (front pad
    ``frame_length - frame_step``), so frame t of the log-mel spectrogram covers
    the same samples for every clip length.

    Args:
        sample_rate: Hz.
        frame_length: samples.
        frame_step: samples.
        fft_length: samples.
        num_mel_bins: mel bands.
        fmin, fmax: band edges, Hz (``fmax=None``: Nyquist).
    """

    def __init__(
        self,
        sample_rate=16000,
        frame_length=400,
        frame_step=160,
        fft_length=512,
        num_mel_bins=64,
        fmin=50.0,
        fmax=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.frame_length = frame_length
        self.frame_step = frame_step
        self.fft_length = fft_length
        self.num_mel_bins = num_mel_bins
        self.fmin = fmin
        self.fmax = fmax
        self._config = STFTConfig(sample_rate, frame_length, frame_step, fft_length, "hann")
        self._mel = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins,
            self._config.num_bins,
            sample_rate,
            fmin,
            fmax if fmax is not None else sample_rate / 2,
        )

    @classmethod
    def for_rate(cls, sample_rate: int = DEFAULT_SAMPLE_RATE, **kwargs) -> LogMelSpectrogram:
        """The front end at ``sample_rate`` with 25 ms frames, a 10 ms hop and an FFT of the frame rounded up to a
        power of two (400 / 160 / 512 at 16 kHz, the defaults)."""
        check_positive_int(sample_rate, "sample_rate")
        frame = max(1, round(0.025 * sample_rate))
        step = max(1, round(0.010 * sample_rate))
        return cls(sample_rate, frame, step, power_of_two_at_least(frame), **kwargs)

    def call(self, waveform):
        waveform = tf.convert_to_tensor(waveform)
        if waveform.shape.rank == 3:
            waveform = tf.squeeze(waveform, -1)
        mel = tf.tensordot(power(stft(waveform, self._config)), self._mel, 1)
        return tf.math.log(mel + 1e-6)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, self.num_mel_bins)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            frame_length=self.frame_length,
            frame_step=self.frame_step,
            fft_length=self.fft_length,
            num_mel_bins=self.num_mel_bins,
            fmin=self.fmin,
            fmax=self.fmax,
        )
        return config


def _config_layer_init(layer, stft: dict) -> STFTConfig:
    config = STFTConfig.from_dict(dict(stft))
    layer.stft = config.to_dict()
    return config


@keras.saving.register_keras_serializable(package="l2i_tf")
class Analysis(keras.layers.Layer):
    """Waveform ``[batch, samples]`` -> ``(X, phase)``: ``X = log1p|STFT|`` float32 and the unit-modulus phase
    complex64, both ``[batch, frames, bins]`` (:func:`analyze`).

    Args:
        stft: the STFT configuration as a dict (see :class:`STFTConfig`).
    """

    def __init__(self, stft, **kwargs):
        super().__init__(**kwargs)
        self.config = _config_layer_init(self, stft)

    def call(self, waveform):
        return analyze(waveform, self.config)

    def compute_output_spec(self, waveform):
        shape = (waveform.shape[0], None, self.config.num_bins)
        return keras.KerasTensor(shape, dtype="float32"), keras.KerasTensor(shape, dtype="complex64")

    def get_config(self):
        return {**super().get_config(), "stft": self.stft}


@keras.saving.register_keras_serializable(package="l2i_tf")
class MaskedSynthesis(keras.layers.Layer):
    """``(X, phase, mask, reference)`` -> the waveform of the masked spectrogram, as long as ``reference``.

    ``X`` and ``phase`` are ``[batch, frames, bins]``; ``mask`` is ``[batch, frames, bins]`` or
    ``[batch, n, frames, bins]`` (n masks per clip: the output is then ``[batch, n, samples]``). ``reference`` is
    the analysed waveform ``[batch, samples]`` (only its length is read). ``domain="log1p"`` gives
    ``ISTFT(expm1(M ⊙ X)·P)`` (the paper), ``"linear"`` gives ``ISTFT(M ⊙ expm1(X)·P)`` (a ratio mask).

    Args:
        stft: the STFT configuration as a dict.
        domain: ``"log1p"`` or ``"linear"``.
    """

    def __init__(self, stft, domain="log1p", **kwargs):
        super().__init__(**kwargs)
        check_domain(domain)
        self.config = _config_layer_init(self, stft)
        self.domain = domain

    def call(self, x, phase, mask, reference):
        if mask.shape.rank == 4:
            x, phase = x[:, None], phase[:, None]
        return masked_waveform(x, phase, mask, tf.shape(reference)[-1], self.config, self.domain)

    def spectrum(self, waveform):
        """Waveform ``[batch, samples]`` -> its complex STFT ``[batch, frames, bins]``, for :meth:`from_spectrum`."""
        return stft(waveform, self.config)

    def from_spectrum(self, spectrum, mask, reference):
        """:meth:`call` from the complex STFT (:meth:`spectrum`) rather than ``(X, phase)``: the same waveform to
        float32 rounding, at the cost of one STFT and no phase tensor (:func:`masked_spectrum_waveform`)."""
        if mask.shape.rank == 4:
            spectrum = spectrum[:, None]
        return masked_spectrum_waveform(spectrum, mask, tf.shape(reference)[-1], self.config, self.domain)

    def compute_output_spec(self, x, phase, mask, reference):
        return keras.KerasTensor(tuple(mask.shape[:-2]) + (None,), dtype="float32")

    def get_config(self):
        return {**super().get_config(), "stft": self.stft, "domain": self.domain}
