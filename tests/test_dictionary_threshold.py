"""Issue 14: the dictionary is learnt streaming above a size threshold, in memory below it (the bundled default)."""

from __future__ import annotations

from l2i_tf import data, dictionary, tables
from l2i_tf.audio import STFTConfig
from l2i_tf.data import ClipInfo


def infos(count: int, seconds: float = 5.0, rate: int = 44100) -> list[ClipInfo]:
    return [ClipInfo(f"{i}.wav", rate, 1, int(seconds * rate)) for i in range(count)]


def test_frames_are_estimated_from_headers_at_the_stft_rate():
    stft = STFTConfig()  # 16 kHz, hop 256
    assert dictionary.estimated_frames(infos(2), stft) == 160000 // 256 + 2  # samples / hop + one a clip
    assert abs(dictionary.estimated_frames(infos(10), stft) - 10 * 313) <= 10


def test_small_data_stays_in_memory_and_large_data_streams():
    stft = STFTConfig()
    limit_clips = dictionary.IN_MEMORY_LIMIT_BYTES // (313 * stft.num_bins * 4)  # ~835 five-second clips
    assert not dictionary.use_streaming(infos(limit_clips - 10), stft)
    assert dictionary.use_streaming(infos(limit_clips + 10), stft)
    assert dictionary.use_streaming(infos(20000), stft)


def test_the_bundled_esc10_training_folds_keep_the_in_memory_dictionary():
    train = tables.esc10_table().with_folds((1, 2, 3))
    _, clip_infos, _ = data.probe_table(train)
    assert not dictionary.use_streaming(clip_infos, STFTConfig())
    assert 70_000 < dictionary.estimated_frames(clip_infos, STFTConfig()) < 80_000  # 76 104 frames gathered
