"""A classifier that nests its backbone (waveform -> backbone -> pooling -> Dense, the transfer-learning shape): the
layers inside the backbone are tapped by re-running it flat, with the classifier's outputs and its frozen weights,
through the interpreter, training, saving and export; what cannot be re-run or named is refused."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from run_fixture import invoke, make_tone_job

from l2i_tf import audio, classifier, runs, training
from l2i_tf.classifier_contract import ClassifierContractError, flat_classifier, layer_output, tap_orders
from l2i_tf.interpreter import Interpreter

MELS = 16
K = 4
STFT = audio.STFTConfig(16000, 400, 160, 512, "hann")
TAPPED = ("conv1", "conv2")  # conv1 inside the backbone, conv2 inside the backbone's own nested block


def _clips(n=2, samples=4000, seed=0):
    return (0.3 * np.random.default_rng(seed).standard_normal((n, samples))).astype("float32")


def _block():
    """The backbone's nested Sequential block: [batch, time, mels, 4] -> [batch, time, mels, 6]."""
    layers = [keras.layers.Conv2D(6, 3, padding="same", name="conv2"), keras.layers.BatchNormalization(name="bn2")]
    return keras.Sequential([keras.Input((None, MELS, 4)), *layers], name="block")


def _stem(x):
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    return keras.layers.ReLU(name="relu1")(keras.layers.BatchNormalization(name="bn1")(x))


def _functional_backbone(features=False):
    """Waveform (or log-mel features) -> conv1 -> BatchNorm -> ReLU -> the nested block."""
    inputs = keras.Input((None, MELS) if features else (None,), name="backbone_input")
    x = inputs if features else audio.LogMelSpectrogram(16000, num_mel_bins=MELS, name="logmel")(inputs)
    x = _stem(keras.layers.Reshape((-1, MELS, 1), name="frames")(x))
    return keras.Model(inputs, _block()(x), name="backbone")


def _sequential_backbone():
    front = [audio.LogMelSpectrogram(16000, num_mel_bins=MELS, name="logmel")]
    front.append(keras.layers.Reshape((-1, MELS, 1), name="frames"))
    convs = [
        keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.Conv2D(6, 3, padding="same", name="conv2"),
        keras.layers.BatchNormalization(name="bn2"),
    ]
    return keras.Sequential([keras.Input((None,)), *front, *convs], name="backbone")


def _head(backbone, inputs, name="transfer"):
    x = backbone(inputs, training=False)  # the transfer-learning idiom
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)


def _with_statistics(model: keras.Model, seed=0) -> keras.Model:
    """``model`` with every BatchNormalization inside it given moving statistics far from 0 and 1, so that a layer
    in training mode (batch statistics) or left out would change the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0.5, 0.5, size))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, size))
    return model


def _functional_kind():
    backbone = _functional_backbone()
    model = _with_statistics(_head(backbone, keras.Input((None,), name="waveform")))
    upto_relu = keras.Model(backbone.inputs[0], backbone.get_layer("relu1").output)
    block = backbone.get_layer("block")
    references = {  # each layer's output by a sub-model of the model that holds it
        "conv1": keras.Model(backbone.inputs[0], backbone.get_layer("conv1").output),
        "conv2": lambda x: keras.Model(block.inputs[0], block.get_layer("conv2").output)(upto_relu(x)),
    }
    return model, references


def _sequential_kind():
    backbone = _sequential_backbone()
    model = _with_statistics(_head(backbone, keras.Input((None,), name="waveform")))
    return model, {name: keras.Model(backbone.inputs[0], backbone.get_layer(name).output) for name in TAPPED}


def _wrapped_kind():
    """A feature model with a nested backbone, wrapped with the front end: the wrapper re-runs the feature model's
    layers, but the backbone in it stays nested."""
    backbone = _functional_backbone(features=True)
    front_end = audio.LogMelSpectrogram(16000, num_mel_bins=MELS, name="front_end")
    model = _with_statistics(classifier.wrap_feature_model(_head(backbone, keras.Input((None, MELS))), front_end))
    block = backbone.get_layer("block")
    upto_relu = keras.Model(backbone.inputs[0], backbone.get_layer("relu1").output)
    references = {
        "conv1": lambda x: keras.Model(backbone.inputs[0], backbone.get_layer("conv1").output)(front_end(x)),
        "conv2": lambda x: keras.Model(block.inputs[0], block.get_layer("conv2").output)(upto_relu(front_end(x))),
    }
    return model, references


KINDS = {
    "functional backbone with a Sequential block": (_functional_kind, ["logmel", "frames", "conv1", "bn1", "relu1"]),
    "Sequential backbone": (_sequential_kind, ["logmel", "frames", "conv1", "bn1", "relu1", "conv2", "bn2"]),
    "wrapped feature model with a backbone": (_wrapped_kind, ["front_end", "frames", "conv1", "bn1", "relu1"]),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_flat_classifier_has_the_nested_layers_and_the_nested_models_logits(kind):
    keras.utils.set_random_seed(0)
    make, inner_names = KINDS[kind]
    model, _ = make()
    flat = flat_classifier(model, TAPPED)
    names = [layer.name for layer in flat.layers]
    assert names[0] == "waveform" and names[-2:] == ["pool", "logits"]
    assert set(inner_names) | {"conv2", "bn2"} <= set(names) and "backbone" not in names and "block" not in names
    nested = model._flatten_layers()
    assert all(any(layer is mine for mine in nested) for layer in flat.layers[1:])  # the same layers, not copies
    x = _clips()
    np.testing.assert_allclose(flat(x).numpy(), model(x).numpy(), atol=1e-6)
    assert flat_classifier(model, ("pool",)) is model  # nothing nested is tapped: the classifier as it is


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_tapped_inner_layer_outputs_what_a_sub_model_of_its_backbone_does(kind):
    keras.utils.set_random_seed(0)
    model, references = KINDS[kind][0]()
    assert tap_orders(model, ["conv1", "conv2:btfc"]) == (TAPPED, ("btfc", "btfc"))
    flat = flat_classifier(model, TAPPED)
    tapped = keras.Model(flat.inputs[0], [layer_output(flat, name) for name in TAPPED])(_clips())
    for name, output in zip(TAPPED, tapped):
        np.testing.assert_allclose(output.numpy(), references[name](_clips()).numpy(), atol=1e-6, err_msg=name)


def _interpreter(model, precision="float32"):
    w = np.random.default_rng(0).random((STFT.num_bins, K)).astype("float32")
    return Interpreter(
        model, TAPPED, ("btfc", "btfc"), K, STFT.num_bins, STFT.to_dict(), dictionary=w, precision=precision
    )


def test_an_interpreter_of_a_nested_classifier_saves_and_loads_with_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    model, _ = _functional_kind()
    interpreter = _interpreter(model)
    x = _clips()
    out = interpreter(x)
    np.testing.assert_allclose(out["classifier_logits"].numpy(), model(x).numpy(), atol=1e-6)
    assert interpreter.classifier is model and not interpreter.classifier.trainable_weights
    interpreter.save(tmp_path / "interpreter.keras")
    loaded = keras.saving.load_model(tmp_path / "interpreter.keras")
    assert isinstance(loaded.classifier.get_layer("backbone"), keras.Model)  # the user's classifier, nested
    again = loaded(x)
    for key in out:
        np.testing.assert_array_equal(again[key].numpy(), out[key].numpy(), err_msg=key)


def test_the_backbone_stays_frozen_and_in_inference_mode_while_the_interpreter_trains():
    keras.utils.set_random_seed(0)
    model, _ = _functional_kind()
    before = [w.numpy().copy() for w in model.weights]  # kernels and BatchNormalization's moving statistics
    interpreter = _interpreter(model)
    psi_before = [w.numpy().copy() for w in interpreter.psi.weights]
    interpreter.compile(optimizer=keras.optimizers.Adam(1e-2))
    interpreter.fit(tf.data.Dataset.from_tensor_slices(_clips(4)).batch(2), epochs=1, verbose=0, shuffle=False)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(new.numpy(), old, err_msg=new.path)
    assert any(not np.array_equal(w.numpy(), old) for w, old in zip(interpreter.psi.weights, psi_before))
    x = _clips()
    np.testing.assert_allclose(interpreter(x)["classifier_logits"].numpy(), model(x).numpy(), atol=1e-6)


def test_a_nested_classifier_computes_in_mixed_precision():
    """The flat model holds a convert_to_tensor operation (from the wrapper's call on symbolic features): it stays
    float32, its layers compute in float16."""
    keras.utils.set_random_seed(0)
    model, _ = _wrapped_kind()
    x = _clips()
    low = _interpreter(model, "mixed_float16")(x)["classifier_logits"].numpy()
    reference = model(x).numpy()
    assert np.abs(low - reference).max() <= 0.01 * np.abs(reference).max()


def test_a_nested_model_with_several_inputs_and_outputs_is_re_run_too():
    left, right = keras.Input((None, 4)), keras.Input((None, 4))
    mixed = keras.layers.Conv1D(5, 3, padding="same", name="mixed")(
        keras.layers.Concatenate(name="join")([left, right])
    )
    pair = keras.Model([left, right], [mixed, keras.layers.Conv1D(2, 1, name="narrow")(mixed)], name="pair")
    waveform = keras.Input((None,), name="waveform")
    frames = keras.layers.Reshape((-1, 4), name="frames")(waveform)
    wide, narrow = pair([frames, keras.layers.Identity(name="copy")(frames)])
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(keras.layers.Concatenate(name="both")([wide, narrow]))
    model = keras.Model(waveform, keras.layers.Dense(3, name="logits")(pooled))
    assert tap_orders(model, ["mixed", "narrow"]) == (("mixed", "narrow"), ("btc", "btc"))
    flat = flat_classifier(model, ["mixed", "narrow"])
    np.testing.assert_allclose(flat(_clips()).numpy(), model(_clips()).numpy(), atol=1e-6)


# ---------------------------------------------------------------- refused


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv1D(4, 3, name="conv1")

    def call(self, x, training=None):
        return self.conv1(x)


def test_a_layer_inside_a_subclassed_nested_model_is_refused_naming_it():
    waveform = keras.Input((None,), name="waveform")
    x = _Subclassed(name="sub")(keras.layers.Reshape((-1, 4))(waveform))
    model = keras.Model(waveform, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    with pytest.raises(ClassifierContractError, match="inside the nested model 'sub'.*'sub' is a subclassed model"):
        tap_orders(model, ["conv1"])


def test_a_name_both_of_the_classifier_and_inside_its_backbone_is_refused_naming_both():
    backbone = _functional_backbone()
    waveform = keras.Input((None,), name="waveform")
    x = keras.layers.ReLU(name="relu1")(backbone(waveform))  # relu1 is the backbone's too
    model = keras.Model(waveform, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    both = "two layers are named 'relu1', one of the classifier and one inside the nested model 'backbone'"
    with pytest.raises(ClassifierContractError, match=both):
        tap_orders(model, ["relu1"])  # which one?
    flattened = "two layers are named 'relu1', one inside the nested model 'backbone' and one of the classifier"
    with pytest.raises(ClassifierContractError, match=flattened):
        tap_orders(model, ["conv2"])  # re-running the backbone would give the flat graph two of them
    # the way out the error gives: rename one, and both can be tapped
    with pytest.raises(ClassifierContractError, match=r"get_layer\('backbone'\).get_layer\('relu1'\).name = 'backb"):
        tap_orders(model, ["relu1"])
    backbone.get_layer("relu1").name = "backbone_relu1"
    assert tap_orders(model, ["relu1", "backbone_relu1", "conv2"])[0] == ("relu1", "backbone_relu1", "conv2")


def test_a_backbone_called_twice_or_tapped_itself_with_its_layers_is_refused():
    backbone = _functional_backbone()
    waveform = keras.Input((None,), name="waveform")
    twice = keras.layers.Add()([backbone(waveform), backbone(keras.layers.Identity()(waveform))])
    model = keras.Model(waveform, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(twice)))
    with pytest.raises(ClassifierContractError, match="calls 'backbone' 2 times, so each of its layers would have 2"):
        tap_orders(model, ["conv1"])
    model, _ = _functional_kind()
    with pytest.raises(ClassifierContractError, match="'backbone' is a nested model .* tap its last layer 'block'"):
        tap_orders(model, ["backbone", "conv1"])
    assert tap_orders(model, ["backbone"]) == (("backbone",), ("btfc",))  # alone, it is the classifier's own layer
    with pytest.raises(ClassifierContractError, match="no layer 'conv9'.*nor has any of its nested models 'backbone'"):
        tap_orders(model, ["conv9"])


# ---------------------------------------------------------------- end to end


def test_l2i_tf_trains_on_a_nested_classifier_and_exports_its_logits(tmp_path):
    """``training.train`` taps the backbone's layers and keeps it frozen; the run loads with the same outputs; the
    export's ``classify`` gives the nested classifier's own probabilities."""
    config = make_tone_job(tmp_path, layers=TAPPED, epochs=1, augment_copies=0, mix_inputs=0, k=K)
    keras.utils.set_random_seed(0)
    model, _ = _functional_kind()
    info = classifier.ClassifierInfo(("a", "b", "c"), 16000, False, TAPPED)
    classifier.save_classifier(model, info, config.classifier)  # over the job's demo classifier
    original = runs.load_classifier(config.classifier)
    training.train(tmp_path / "run", config)

    run = runs.load_run(tmp_path / "run")
    x = _clips(2, 8000)
    np.testing.assert_allclose(run.interpreter(x)["classifier_logits"].numpy(), original(x).numpy(), atol=1e-5)
    for old, new in zip(original.weights, run.interpreter.classifier.weights):  # frozen through training
        np.testing.assert_array_equal(new.numpy(), old.numpy(), err_msg=new.path)

    result = invoke("export", tmp_path / "run", "--out", tmp_path / "savedmodels", "--threshold", 0)
    assert result.exit_code == 0, result.output
    served = tf.saved_model.load(str(tmp_path / "savedmodels" / "l2i" / "1")).signatures["classify"]
    probabilities = served(waveform=tf.constant(x))["class_probabilities"].numpy()
    np.testing.assert_allclose(probabilities, tf.nn.softmax(original(x)).numpy(), atol=1e-5)
