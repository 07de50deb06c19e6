"""Tests for l2i_tf.dictionary: learning, compatibility checks, atomic save/load, the NMFDecoder layer, the CLI."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import soundfile
import tensorflow as tf
from click.testing import CliRunner
from run_fixture import umask, unexpected_modes
from test_nmf import TINY_STFT, F, planted

from l2i_tf import nmf
from l2i_tf.audio import STFTConfig
from l2i_tf.dictionary import Dictionary, DictionaryMismatchError, NMFDecoder, learn_dictionary


def small_dictionary(k=4):
    X, _ = planted(frames=100, k=k, noise=0.1)
    return learn_dictionary(
        X, nmf.NMFConfig(k=k, iterations=10), TINY_STFT, provenance={"root": "synthetic", "folds": [1, 2, 3]}
    )


def test_check_compatible_names_mismatching_fields():
    dictionary = small_dictionary()
    dictionary.check_compatible(TINY_STFT, k=4)
    other = STFTConfig(sample_rate=8000, frame_length=64, frame_step=32, fft_length=64)
    with pytest.raises(DictionaryMismatchError, match="frame_step: dictionary 16, given 32") as refused:
        dictionary.check_compatible(other)
    assert refused.value.dictionary_stft == TINY_STFT and refused.value.given_stft == other
    assert refused.value.differences == {"frame_step": (16, 32)}
    assert f"(dictionary STFT {TINY_STFT.to_dict()}, given {other.to_dict()})" in str(refused.value)
    with pytest.raises(DictionaryMismatchError, match="k: dictionary 4, given 7") as refused:
        dictionary.check_compatible(TINY_STFT, k=7)
    assert refused.value.differences == {"k": (4, 7)}


def test_save_load_round_trip_and_refuses_to_overwrite(tmp_path):
    dictionary = small_dictionary()
    folder = dictionary.save(tmp_path / "dict")
    loaded = Dictionary.load(folder)
    np.testing.assert_array_equal(loaded.W, dictionary.W)
    assert loaded.stft == TINY_STFT and loaded.config == dictionary.config
    assert loaded.history == pytest.approx(dictionary.history)
    assert loaded.provenance["folds"] == [1, 2, 3] and loaded.provenance["frames"] == 100
    meta = json.loads((folder / "dictionary.json").read_text())
    assert (meta["k"], meta["num_bins"]) == (4, F)
    with pytest.raises(FileExistsError, match="overwrite"):
        dictionary.save(folder)
    small_dictionary(k=3).save(folder, overwrite=True)
    assert Dictionary.load(folder).k == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dict"]  # no temporary folders left


def test_a_saved_dictionary_under_umask_022_is_readable_by_everyone(tmp_path):
    with umask(0o022):
        folder = small_dictionary().save(tmp_path / "dict")
    assert unexpected_modes(folder, 0o022) == {}  # the folder 0o755 (not tempfile's 0o700), its files 0o644


def test_load_errors_name_the_folder_and_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Dictionary.load(tmp_path / "nowhere")
    folder = small_dictionary().save(tmp_path / "d")
    (folder / "dictionary.npz").unlink()
    with pytest.raises(FileNotFoundError, match="dictionary.npz is missing"):
        Dictionary.load(folder)


def test_a_failed_save_keeps_the_existing_folder_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    folder = small_dictionary(k=3).save(tmp_path / "dict")

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        small_dictionary(k=4).save(folder, overwrite=True)
    assert Dictionary.load(folder).k == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dict"]


def test_learn_dictionary_records_how_it_was_learnt_and_streams_a_dataset():
    X, _ = planted(frames=300, noise=0.1)
    config = nmf.NMFConfig(k=5, sparsity=0.1, iterations=20, batch_frames=64)
    in_memory = learn_dictionary(X, config, TINY_STFT, provenance={"root": "synthetic"})
    assert in_memory.provenance == {"root": "synthetic", "frames": 300, "method": "in-memory"}
    np.testing.assert_array_equal(in_memory.W, nmf.factorize(X, config)[0])
    blocks = tf.data.Dataset.from_tensor_slices(X).batch(config.batch_frames)
    streamed = learn_dictionary(blocks, config, TINY_STFT)
    assert streamed.provenance == {"frames": 300, "method": "streaming"} and len(streamed.history) == 20
    np.testing.assert_array_equal(streamed.W, nmf.factorize_stream(blocks, config, F)[0])


def test_learn_dictionary_refuses_frames_whose_bin_count_is_not_the_stft_one():
    X, _ = planted(frames=50)
    with pytest.raises(ValueError, match=f"X has {F - 1} bins per frame but the STFT config gives {F}"):
        learn_dictionary(X[:, :-1], nmf.NMFConfig(k=3, iterations=2), TINY_STFT)


def test_nmf_decoder_keras_round_trip(tmp_path):
    dictionary = small_dictionary()
    inputs = keras.Input((None, dictionary.k))
    model = keras.Model(inputs, dictionary.decoder(name="decoder")(inputs))
    layer = model.get_layer("decoder")
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 1
    assert "dictionary_w" not in layer.get_config()
    h = np.random.default_rng(0).random((2, 7, dictionary.k)).astype(np.float32)
    expected = h @ dictionary.W.T
    np.testing.assert_allclose(model.predict(h, verbose=0), expected, rtol=1e-5)
    path = tmp_path / "decoder.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(h, verbose=0), model.predict(h, verbose=0))
    np.testing.assert_array_equal(restored.get_layer("decoder").get_weights()[0], dictionary.W)


def test_nmf_decoder_takes_weights_via_set_weights():
    W = small_dictionary().W
    layer = NMFDecoder(num_bins=F, k=4)
    layer.build((None, None, 4))
    layer.set_weights([W])
    h = np.ones((1, 2, 4), np.float32)
    np.testing.assert_allclose(np.asarray(layer(h)), h @ W.T, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        NMFDecoder(num_bins=F, k=4, dictionary_w=np.ones((5, 4)))


def test_a_keras_file_saved_when_the_decoder_lived_in_nmf_still_loads(tmp_path):
    """Files written before the move record module ``l2i_tf.nmf``; the registered ``l2i_tf>NMFDecoder`` loads them."""
    W = small_dictionary().W
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, NMFDecoder(F, 4, dictionary_w=W, name="decoder")(inputs))
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as new, zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in new.infolist():
            content = new.read(item)
            if item.filename == "config.json":
                config = json.loads(content)
                (layer,) = [layer for layer in config["config"]["layers"] if layer["class_name"] == "NMFDecoder"]
                assert layer["registered_name"] == "l2i_tf>NMFDecoder"
                layer["module"] = "l2i_tf.nmf"
                content = json.dumps(config)
            old.writestr(item, content)
    restored = keras.saving.load_model(tmp_path / "old.keras")
    assert type(restored.get_layer("decoder")) is NMFDecoder
    h = np.random.default_rng(0).random((1, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(restored(h)), h @ W.T, rtol=1e-5)


def write_tiny_folders_dataset(root, clips_per_class=5, seconds=0.3, sample_rate=16000):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for c, freq in enumerate((440.0, 1500.0)):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(clips_per_class):
            wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.05 * i) * t) + 0.01 * rng.standard_normal(t.size)
            soundfile.write(folder / f"clip{i}.wav", wave.astype(np.float32), sample_rate, subtype="PCM_16")


def test_cli_learns_and_saves_a_dictionary_and_refuses_existing_folder(tmp_path, monkeypatch):
    from cli.main import main

    monkeypatch.setenv("L2I_TF_CACHE", str(tmp_path / "cache"))
    write_tiny_folders_dataset(tmp_path / "data")
    out = tmp_path / "dict"
    args = ["learn-dictionary", "--data", str(tmp_path / "data"), "--layout", "folders"]
    args += ["--k", "4", "--iterations", "5", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "time:" in result.output and "peak memory:" in result.output
    dictionary = Dictionary.load(out)
    assert dictionary.k == 4 and dictionary.num_bins == 513 and len(dictionary.history) == 5
    assert dictionary.provenance["clips"] == 6 and dictionary.provenance["folds"] == [1, 2, 3]

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "exists" in result.output and "--overwrite" in result.output
    result = CliRunner().invoke(main, args[:-2] + ["--sparsity", "-1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "-1" in result.output


def test_cli_help_ends_with_examples():
    from cli.main import main

    result = CliRunner().invoke(main, ["learn-dictionary", "--help"])
    assert result.exit_code == 0
    assert result.output.rstrip().splitlines()[-1].strip().startswith("l2i-tf learn-dictionary")
    assert "Examples:" in result.output


def test_train_takes_k_from_the_given_dictionary_unless_k_is_given(tmp_path, monkeypatch):
    from cli import train as train_cmd
    from cli.main import main

    folder = small_dictionary(k=3).save(tmp_path / "dict")
    seen = []
    monkeypatch.setattr(train_cmd, "run", lambda out, config, *args: seen.append(config) or {})
    monkeypatch.setattr(train_cmd, "report", lambda *args: None)
    for extra, k in (((), 3), (("-k", "7"), 7)):
        result = CliRunner().invoke(main, ["train", "--dictionary", str(folder), "--out", str(tmp_path / "r"), *extra])
        assert result.exit_code == 0, result.output
        assert seen[-1].k == k and seen[-1].dictionary == str(folder)
