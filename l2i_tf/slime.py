"""SLIME: LIME over spectrogram segments (time segments x frequency bands), the listenable baseline to L2I."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
from sklearn.linear_model import Ridge

from l2i_tf import audio, metrics
from l2i_tf.settings import Settings


@dataclasses.dataclass(frozen=True)
class SlimeConfig(Settings):
    """SLIME settings.

    Attributes:
        time_segments: equal-length time segments.
        freq_bands: mel-spaced frequency bands (segments = ``time_segments * freq_bands``).
        num_samples: random on/off masks per clip (the first keeps every segment).
        keep_probability: chance that a segment is kept in a random mask.
        kernel_width: width of LIME's exponential kernel on the cosine distance to the full input.
        ridge_alpha: L2 weight of scikit-learn's ``Ridge``.
        batch_size: re-synthesised clips per classifier call.
        seed: seeds the masks.
    """

    time_segments: int = 5
    freq_bands: int = 6
    num_samples: int = 300
    keep_probability: float = 0.5
    kernel_width: float = 0.25
    ridge_alpha: float = 1.0
    batch_size: int = 32
    seed: int = 0

    @property
    def num_segments(self) -> int:
        return self.time_segments * self.freq_bands

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype="float64") / 700.0)


def band_edges(num_bins: int, freq_bands: int, sample_rate: int) -> np.ndarray:
    """Bin edges ``[freq_bands + 1]`` of bands equally spaced on the mel scale from 0 Hz to Nyquist."""
    nyquist = sample_rate / 2
    mels = np.linspace(0.0, _mel(nyquist), freq_bands + 1)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    edges = np.round(hz / nyquist * (num_bins - 1)).astype(int)
    edges[-1] = num_bins
    edges = np.maximum.accumulate(np.maximum(edges, np.arange(freq_bands + 1)))  # every band at least one bin
    if edges[-1] > num_bins:
        raise ValueError(f"{freq_bands} frequency bands do not fit in {num_bins} bins")
    return edges


def segments(num_frames: int, num_bins: int, config: SlimeConfig, sample_rate: int) -> np.ndarray:
    """Binary segment masks ``float32 [S, T, F]``; segment ``s = t_index * freq_bands + f_index``; they tile [T, F]."""
    if config.time_segments > num_frames:
        raise ValueError(f"{config.time_segments} time segments do not fit in {num_frames} frames")
    t_edges = np.linspace(0, num_frames, config.time_segments + 1).round().astype(int)
    f_edges = band_edges(num_bins, config.freq_bands, sample_rate)
    out = np.zeros((config.num_segments, num_frames, num_bins), dtype="float32")
    for i in range(config.time_segments):
        for j in range(config.freq_bands):
            out[i * config.freq_bands + j, t_edges[i] : t_edges[i + 1], f_edges[j] : f_edges[j + 1]] = 1.0
    return out


def masked_audio(spectrum, segment_masks, on, num_samples: int, stft: audio.STFTConfig) -> tf.Tensor:
    """``ISTFT((Σ_s on_s · segment_s) ⊙ S)``: the clip with only the ``on`` segments kept.

    Args:
        spectrum: complex64 [T, F] STFT of the clip.
        segment_masks: [S, T, F] from :func:`segments`.
        on: [n, S] 0/1 per mask and segment.
        num_samples: clip length, samples.
        stft: the STFT configuration.

    Returns:
        float32 [n, num_samples].
    """
    mask = tf.einsum("ns,stf->ntf", tf.cast(on, tf.float32), tf.convert_to_tensor(segment_masks))
    return audio.istft(tf.cast(mask, tf.complex64) * spectrum[None], num_samples, stft)


def explain(
    classify,
    waveform,
    target_class: int,
    stft: audio.STFTConfig,
    config: SlimeConfig = SlimeConfig(),
    multilabel: bool = False,
) -> dict:
    """Fit SLIME's segment weights for one clip and class.

    Draws ``num_samples`` random on/off masks over the segments (the first keeps all), re-synthesises each with the
    clip's phase, runs the classifier on the audio, and fits scikit-learn's ``Ridge`` from the masks to the class
    probability, weighted by LIME's kernel ``sqrt(exp(−d²/width²))`` on the cosine distance to the all-on mask.

    Args:
        classify: callable, float32 waveforms [n, samples] -> logits [n, C] (numpy or tensor).
        waveform: float [samples], one clip.
        target_class: class index c.
        stft: STFT configuration for the segments and the re-synthesis.
        config: SLIME settings.
        multilabel: sigmoid (True) or softmax (False) probability.

    Returns:
        ``{"weights": [S], "relevance": [S] (weights / max |weights|), "intercept", "r2", "segments": [S, T, F],
        "spectrum": complex [T, F], "seconds"}``.
    """
    start = time.perf_counter()
    waveform = np.asarray(waveform, dtype="float32")
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be one clip [samples], got shape {waveform.shape}")
    num_samples = waveform.shape[0]
    spectrum = audio.stft(waveform, stft)
    segs = segments(int(spectrum.shape[0]), int(spectrum.shape[1]), config, stft.sample_rate)
    rng = np.random.default_rng(config.seed)
    on = (rng.random((config.num_samples, config.num_segments)) < config.keep_probability).astype("float32")
    on[0] = 1.0
    probs = []
    for i in range(0, len(on), config.batch_size):
        clips = masked_audio(spectrum, segs, on[i : i + config.batch_size], num_samples, stft)
        probs.append(metrics.probabilities(np.asarray(classify(clips)), multilabel)[:, target_class])
    y = np.concatenate(probs)
    cosine = on.sum(axis=1) / (np.sqrt(np.maximum(on.sum(axis=1), 1e-12)) * math.sqrt(config.num_segments))
    distance = 1.0 - cosine
    weight = np.sqrt(np.exp(-(distance**2) / config.kernel_width**2))
    ridge = Ridge(alpha=config.ridge_alpha).fit(on, y, sample_weight=weight)
    weights = ridge.coef_.astype("float64")
    scale = np.max(np.abs(weights))
    return {
        "weights": weights,
        "relevance": weights / scale if scale > 0 else np.zeros_like(weights),
        "intercept": float(ridge.intercept_),
        "r2": float(ridge.score(on, y, sample_weight=weight)),
        "segments": segs,
        "spectrum": spectrum,
        "seconds": time.perf_counter() - start,
    }


def interpretation(result: dict, threshold: float, num_samples: int, stft: audio.STFTConfig) -> np.ndarray:
    """The listenable output: the segments with relevance > τ, re-synthesised. float32 [num_samples]."""
    on = (result["relevance"] > threshold).astype("float32")[None]
    return np.asarray(masked_audio(result["spectrum"], result["segments"], on, num_samples, stft))[0]
