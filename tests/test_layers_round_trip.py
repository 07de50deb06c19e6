"""Every Keras object the package registers survives get_config/from_config and a .keras save/load unchanged.

To add a case: append a ``Case`` to ``CASES`` (the class, its constructor arguments, the call's inputs). A class
registered under ``package="l2i_tf"`` without a case fails ``test_every_registered_class_has_a_case``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import l2i_tf
from l2i_tf import audio, classifier, dictionary, explain_layers, explainer, flint, interpreter, layers, vibi

K = 8
BASELINE_BINS = audio.STFTConfig().num_bins  # FLINT's and VIBI's spectrogram bins (the default STFT's)
SMALL_STFT = {"sample_rate": 8000, "frame_length": 64, "frame_step": 16, "fft_length": 64, "window": "hann"}


def _random(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@dataclasses.dataclass(frozen=True)
class Case:
    """One round trip: ``cls(**init())`` called as ``layer(*args, **tensor_kwargs, **kwargs)``.

    Attributes:
        cls: the registered class.
        init: constructor keyword arguments (a function, so models and arrays are made only when the case runs).
        args: positional call inputs; each an array or a list of arrays (one ``keras.Input`` per array).
        tensor_kwargs: call inputs passed by keyword (e.g. a mask).
        kwargs: constant call keyword arguments (e.g. ``num_frames``).
        shapes: ``keras.Input`` shapes of the flattened inputs (None: the arrays' own; use None axes to test
            variable lengths).
        saved_elsewhere: constructor arguments ``get_config`` leaves out on purpose (they are saved as weights).
        variant: names the case when a class has several.
    """

    cls: type
    init: Callable[[], dict]
    args: Callable[[], tuple]
    tensor_kwargs: Callable[[], dict] = dict
    kwargs: dict = dataclasses.field(default_factory=dict)
    shapes: list | None = None
    saved_elsewhere: tuple[str, ...] = ()
    variant: str = ""

    @property
    def id(self) -> str:
        return f"{self.cls.__name__}-{self.variant}" if self.variant else self.cls.__name__


def _synthesis_inputs() -> tuple:
    x, phase = audio.analyze(_random(2, 300), audio.STFTConfig(**SMALL_STFT))
    mask = np.random.default_rng(4).random(x.shape).astype("float32")
    return np.asarray(x), np.asarray(phase), mask, _random(2, 300)


def _interpreter_init() -> dict:
    model = classifier.build_demo_classifier(3, classifier.DemoConfig(channels=(4, 8, 8, 8)))
    names, orders = interpreter.tap_orders(model, classifier.DEMO_LAYERS)
    stft = audio.STFTConfig()
    w = np.abs(_random(stft.num_bins, K, seed=3))
    return dict(
        classifier=model,
        layers=names,
        orders=orders,
        k=K,
        num_bins=stft.num_bins,
        stft=stft.to_dict(),
        psi={"hidden": 8},
        dictionary=w / np.linalg.norm(w, axis=0),
    )


CASES = [
    Case(
        audio.LogMelSpectrogram,
        lambda: dict(sample_rate=16000, num_mel_bins=16, fmax=7000.0),
        lambda: (0.3 * _random(2, 1600),),
        shapes=[(None,)],
    ),
    Case(classifier.MinFrames, lambda: dict(min_frames=8), lambda: (_random(2, 3, 5, 1),), shapes=[(None, 5, 1)]),
    Case(classifier.FreqMean, dict, lambda: (_random(2, 6, 5, 4),)),
    Case(
        dictionary.NMFDecoder,
        lambda: dict(num_bins=33, k=4, dictionary_w=np.abs(_random(33, 4, seed=1))),
        lambda: (np.abs(_random(2, 7, 4)),),
        saved_elsewhere=("dictionary_w",),
    ),
    Case(
        layers.FeatureSequences,
        lambda: dict(orders=("btfc", "bftc", "btc"), freq_reduce="flatten"),
        lambda: ([_random(2, 25, 16, 4), _random(2, 8, 12, 4, seed=1), _random(2, 7, 5, seed=2)],),
        shapes=[(None, 16, 4), (8, None, 4), (None, 5)],
        variant="flatten",
    ),
    Case(
        layers.FeatureSequences,
        lambda: dict(orders=("btfc", "btc"), freq_reduce="mean"),
        lambda: ([_random(2, 25, 16, 4), _random(2, 7, 5, seed=2)],),
        shapes=[(None, None, 4), (None, 5)],
        variant="mean",
    ),
    Case(
        layers.Psi,
        lambda: dict(k=K, hidden=8, kernel_size=5, dropout=0.5),
        lambda: ([_random(2, 25, 4), _random(2, 7, 5, seed=2), np.abs(_random(2, 40, 33, seed=3))],),
        shapes=[(None, 4), (None, 5), (None, 33)],
    ),
    Case(
        layers.Theta,
        lambda: dict(num_classes=3, pooling="attention", attention_units=16),
        lambda: (np.abs(_random(2, 6, K)),),
        variant="attention",
    ),
    Case(
        layers.Theta,
        lambda: dict(num_classes=3, pooling="max"),
        lambda: (np.abs(_random(2, 6, K)),),
        tensor_kwargs=lambda: {"valid_frames": np.array([[True] * 6, [True] * 4 + [False] * 2])},
        variant="max-masked",
    ),
    Case(
        dictionary.NMFDecoder,
        lambda: dict(num_bins=33, k=4, dictionary_w=np.abs(_random(33, 4, seed=1)), eps=1e-6),
        lambda: (np.abs(_random(2, 7, 4)),),
        tensor_kwargs=lambda: {"selected": np.array([[True, False, True, False], [False] * 4])},
        saved_elsewhere=("dictionary_w",),
        variant="selected-mask",
    ),
    Case(
        dictionary.NMFDecoder,
        lambda: dict(num_bins=33, k=4, dictionary_w=np.abs(_random(33, 4, seed=1))),
        lambda: (np.abs(_random(2, 7, 4)),),
        tensor_kwargs=lambda: {"indices": np.array([[3, 0], [1, 1]], "int32")},
        saved_elsewhere=("dictionary_w",),
        variant="component-masks",
    ),
    Case(audio.Analysis, lambda: dict(stft=SMALL_STFT), lambda: (_random(2, 300),), shapes=[(None,)]),
    Case(
        audio.MaskedSynthesis,
        lambda: dict(stft=SMALL_STFT, domain="linear"),
        lambda: _synthesis_inputs(),
        shapes=[(None, 33), (None, 33), (None, 33), (None,)],
    ),
    Case(explain_layers.PrepareWaveform, lambda: dict(clip_samples=250), lambda: (_random(2, 300),), shapes=[(None,)]),
    Case(
        explain_layers.WaveformGuard,
        lambda: dict(max_samples=400, sample_rate=8000),
        lambda: (_random(2, 300),),
        shapes=[(None,)],
    ),
    Case(
        explain_layers.TargetClass,
        lambda: dict(num_classes=3),
        lambda: (np.array([-1, 2], "int32"), _random(2, 3)),
    ),
    Case(
        explain_layers.Relevance,
        dict,
        lambda: (_random(2, K, 3), np.array([0, 2], "int32"), np.array([True, False])),
    ),
    Case(
        explain_layers.Active, dict, lambda: (np.abs(_random(2, 5, 33)) * np.array([1, 0], "float32")[:, None, None],)
    ),
    Case(
        explain_layers.Selection,
        lambda: dict(top_n=3),
        lambda: (np.tanh(_random(2, K)), np.array([0.1, -1.0], "float32"), np.array([True, False])),
    ),
    Case(explain_layers.Probabilities, lambda: dict(multilabel=True), lambda: (_random(2, 3),)),
    Case(explain_layers.PredictedClass, dict, lambda: (_random(2, 3),)),
    Case(explain_layers.ClassNames, lambda: dict(class_names=("a", "b", "c")), lambda: (np.array([2, 0], "int32"),)),
    Case(
        explain_layers.ClassNames,
        lambda: dict(class_names=("a", "b"), table=True),
        lambda: (np.array([1, 0], "int32"),),
        variant="table",
    ),
    Case(explain_layers.FitLength, dict, lambda: (_random(2, 3, 50), _random(2, 40)), shapes=[(3, None), (None,)]),
    Case(
        flint.FlintAttributes,
        lambda: dict(attributes=5, hidden=8),
        lambda: ([_random(2, 12, 8), _random(2, 6, 4)],),
        shapes=[(None, 8), (None, 4)],
    ),
    Case(
        flint.FlintDecoder,
        lambda: dict(num_bins=BASELINE_BINS, hidden=8, steps=4),
        lambda: ([_random(2, 5), _random(2, 20, BASELINE_BINS)],),
        shapes=[(5,), (None, BASELINE_BINS)],
    ),
    Case(
        flint.Flint,
        lambda: dict(
            widths=[8], num_bins=BASELINE_BINS, attributes=6, num_classes=3, stft=audio.STFTConfig().to_dict(), hidden=8
        ),
        lambda: ([np.abs(_random(2, 10, 8)), np.abs(_random(2, 40, BASELINE_BINS))],),
        shapes=[(None, 8), (None, BASELINE_BINS)],
    ),
    Case(
        vibi.BandPool,
        lambda: dict(num_bins=BASELINE_BINS, bands=16, sample_rate=16000),
        lambda: (_random(2, 20, BASELINE_BINS),),
        shapes=[(None, BASELINE_BINS)],
    ),
    Case(vibi.ChunkPool, lambda: dict(time_chunks=5, freq_chunks=4), lambda: (_random(2, 20, 16, 3),)),
    Case(vibi.KHot, lambda: dict(k=3), lambda: (_random(2, 20),)),
    Case(
        vibi.ChunkMask,
        lambda: dict(time_chunks=5, freq_chunks=4, num_bins=BASELINE_BINS, bands=16, sample_rate=16000),
        lambda: (np.asarray(vibi.hard_k_hot(tf.constant(_random(2, 20)), 3)), _random(2, 20, BASELINE_BINS)),
        shapes=[(20,), (None, BASELINE_BINS)],
    ),
    Case(
        vibi.Vibi,
        lambda: dict(
            num_bins=BASELINE_BINS,
            num_classes=3,
            stft=audio.STFTConfig().to_dict(),
            k=3,
            time_chunks=4,
            freq_chunks=4,
            bands=16,
        ),  # fmt: skip
        lambda: (np.abs(_random(2, 40, BASELINE_BINS)),),
        shapes=[(None, BASELINE_BINS)],
    ),
    Case(
        interpreter.Interpreter, _interpreter_init, lambda: (0.1 * _random(2, 4000),), saved_elsewhere=("dictionary",)
    ),
    Case(
        explainer.Explainer,
        lambda: dict(
            interpreter=interpreter.Interpreter(**_interpreter_init()),
            class_names=("a", "b", "c"),
            config={"threshold": 0.0, "top_n": 3, "domain": "log1p", "max_seconds": 1.0},
        ),
        lambda: (
            {
                "target_class": np.array([-1, 1], "int32"),
                "threshold": np.array([0.0, -1.0], "float32"),
                "waveform": 0.1 * _random(2, 4000),
            },
        ),
        shapes=[(), (), (None,)],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_layer_round_trips_through_config_and_keras_file(case, layer_round_trip):
    layer = case.cls(**case.init(), name=f"under_test_{case.id.lower().replace('-', '_')}")
    layer_round_trip(
        layer,
        case.args(),
        kwargs=case.kwargs,
        tensor_kwargs=case.tensor_kwargs(),
        shapes=case.shapes,
        saved_elsewhere=case.saved_elsewhere,
    )


def test_every_registered_class_has_a_case():
    for module in pkgutil.walk_packages(l2i_tf.__path__, "l2i_tf."):
        importlib.import_module(module.name)  # every module registers its objects on import
    registered = {name for name in keras.saving.get_custom_objects() if name.startswith("l2i_tf>")}
    covered = {keras.saving.get_registered_name(case.cls) for case in CASES}
    assert registered, "no class registered under package 'l2i_tf': the check would be empty"
    assert registered <= covered, f"registered without a round-trip case: {sorted(registered - covered)}"
