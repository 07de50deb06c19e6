"""framing: the STFT's framing and overlap-add by whole hops equal tf.signal's, in any shape, and the STFT/ISTFT
built on them equal tf.signal.stft / inverse_stft."""

import numpy as np
import pytest
import tensorflow as tf

from l2i_tf import audio, framing

CONFIGS = [
    audio.STFTConfig(),  # 1024 / 256: four hops a frame
    audio.STFTConfig.for_rate(8000),  # 512 / 128
    audio.STFTConfig(16000, 512, 128, 1024),  # FFT longer than the frame
    audio.STFTConfig(16000, 400, 160, 512),  # the hop does not divide the frame: tf.signal's own path
]
SHAPES = [(1000,), (3, 16000), (2, 2, 777), (1, 5), (2, 0)]


def _signal(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).standard_normal(shape).astype("float32"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.frame_length}-{c.frame_step}-{c.fft_length}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_stft_and_istft_equal_tf_signal(config, shape):
    x = _signal(shape)
    padded = tf.pad(x, [[0, 0]] * (len(shape) - 1) + [[config.front_pad, 0]])
    window = audio.WINDOWS[config.window]
    expected = tf.signal.stft(
        padded, config.frame_length, config.frame_step, config.fft_length, window_fn=window, pad_end=True
    )
    spectrum = audio.stft(x, config)
    assert spectrum.shape == expected.shape
    np.testing.assert_array_equal(spectrum.numpy(), expected.numpy())
    inverse = tf.signal.inverse_stft_window_fn(config.frame_step, forward_window_fn=window)
    expected = tf.signal.inverse_stft(
        spectrum, config.frame_length, config.frame_step, config.fft_length, window_fn=inverse
    )[..., config.front_pad : config.front_pad + shape[-1]]
    np.testing.assert_allclose(audio.istft(spectrum, shape[-1], config).numpy(), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("length, step, pad", [(1024, 256, 768), (8, 2, 0), (6, 3, 3), (5, 2, 3), (4, 4, 0)])
def test_frames_and_overlap_add_equal_tf_signal_for_unknown_shapes(length, step, pad):
    x = _signal((3, 101), seed=1)
    frames = tf.function(lambda s: framing.frames(s, length, step, pad), input_signature=[tf.TensorSpec([None, None])])(
        x
    )
    expected = tf.signal.frame(tf.pad(x, [[0, 0], [pad, 0]]), length, step, pad_end=True)
    np.testing.assert_array_equal(frames.numpy(), expected.numpy())
    added = tf.function(lambda f: framing.overlap_add(f, step), input_signature=[tf.TensorSpec([None, None, length])])(
        frames
    )
    np.testing.assert_allclose(added.numpy(), tf.signal.overlap_and_add(frames, step).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "length, step, start, samples",
    [
        (1024, 256, 768, 5000),  # the ISTFT's crop: the rows every frame covers
        (1024, 256, 768, 0),
        (1024, 256, 768, 9000),  # past those rows: the whole sum, sliced
        (1024, 256, 0, 700),  # another start
        (8, 2, 6, 40),
        (6, 4, 2, 30),  # the hop does not divide the frame
    ],
)
def test_overlap_add_crop_is_overlap_add_cropped(length, step, start, samples):
    """The ISTFT's overlap-add of the rows every frame covers (or, for other crops, the whole sum sliced) equals
    tf.signal's overlap-add cropped to [start, start + samples), in shape and value, traced with unknown shapes."""
    frames = _signal((2, 25, length), seed=2)
    spec = [tf.TensorSpec([None, None, length])]
    ours = tf.function(lambda f: framing.overlap_add_crop(f, step, start, samples), input_signature=spec)(frames)
    expected = tf.signal.overlap_and_add(frames, step)[..., start : start + samples]
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-6)
