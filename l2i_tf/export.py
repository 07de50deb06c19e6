"""SavedModel export: the in-graph explanation (core TensorFlow ops only), its signatures, versioned atomic export.

One :class:`Explainer` builds every output from a waveform batch: the classifier and Ψ/Θ run once, the NMF STFT
runs once, the selected components' masks are fused into one mask (only the top-N columns of W and H are read),
and one batched ISTFT makes every output waveform. The same object serves the CLI (``l2i-tf explain`` on a run
folder) and the SavedModel, so both give the same numbers.

Signatures (every input and output has a batch dimension B; S = samples, any length up to the export's maximum):

``serving_default``  waveform float32 [B, S] -> interpretation float32 [B, S], predicted_class int32 [B],
                     predicted_class_name string [B], class_probabilities float32 [B, C] (the classifier's),
                     interpreter_probabilities float32 [B, C], relevance float32 [B, K], selected bool [B, K]
``explain``          + target_class int32 [B] (-1: the classifier's prediction), threshold float32 [] ->
                     the above + component_indices int32 [B, N], component_relevance float32 [B, N],
                     component_selected bool [B, N], component_audio float32 [B, N, S] (the N most relevant)
``classify``         waveform -> class_probabilities, predicted_class, predicted_class_name, class_names [B, C]
``explain_wav``      audio string [B] (16-bit PCM WAV files at the model's rate, any lengths) ->
                     interpretation_wav_bytes string [B] (16-bit WAV) + the predictions of ``serving_default``

Metadata (class names, sample rate, STFT, K, τ, N, domain, maximum length) is written to
``assets.extra/l2i_tf.json`` inside the SavedModel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from l2i_tf import audio, explain

log = logging.getLogger(__name__)

METADATA_FILE = Path("assets.extra") / "l2i_tf.json"
SIGNATURES = ("serving_default", "explain", "classify", "explain_wav")
FORMAT = "l2i_tf.savedmodel/1"


class ExportError(ValueError):
    """An export that cannot be written as asked (folder not writable, version exists, bad name)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What is fixed in an export.

    Attributes:
        threshold: default τ (``serving_default``, ``explain_wav``; ``explain`` takes it as an input).
        top_n: N, at most this many components are selected, and ``explain`` returns the audio of the N most
            relevant ones. 0: no limit (N = K).
        domain: mask domain, one of :data:`l2i_tf.explain.DOMAINS`.
        max_seconds: longest accepted clip, seconds (0: no limit).
        eps: ε of the soft masks.
    """

    threshold: float = 0.5
    top_n: int = 5
    domain: str = "log1p"
    max_seconds: float = 60.0
    eps: float = 1e-8

    def __post_init__(self):
        if not isinstance(self.top_n, int) or isinstance(self.top_n, bool) or self.top_n < 0:
            raise ValueError(f"top_n must be a non-negative integer, got {self.top_n!r}")
        if self.domain not in explain.DOMAINS:
            raise ValueError(f"domain must be one of {explain.DOMAINS}, got {self.domain!r}")
        if not self.max_seconds >= 0:
            raise ValueError(f"max_seconds must be >= 0 (0: no limit), got {self.max_seconds!r}")
        if self.threshold != self.threshold:
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Explainer:
    """The explanation pipeline of one interpreter, as batched TensorFlow functions (core ops only).

    Args:
        interpreter: a built :class:`~l2i_tf.interpreter.Interpreter`.
        class_names: C names.
        config: what the export fixes (τ, N, domain, maximum length).
    """

    def __init__(self, interpreter, class_names, config: ExportConfig = ExportConfig()):
        if len(class_names) != interpreter.num_classes:
            raise ValueError(f"{len(class_names)} class names for a classifier with {interpreter.num_classes} classes")
        self.interpreter = interpreter
        self.class_names = tuple(class_names)
        self.config = config
        self.stft_config: audio.STFTConfig = interpreter.stft_config
        self.sample_rate = self.stft_config.sample_rate
        self.num_components = interpreter.k
        self.top_n = min(config.top_n, interpreter.k) if config.top_n else interpreter.k
        self.max_samples = int(round(config.max_seconds * self.sample_rate)) if config.max_seconds else 0

    # ---------------------------------------------------------------- checks

    def check_waveform(self, waveform) -> tf.Tensor:
        """float32 [B, S], asserting (in the graph) at least one sample, finite samples, S <= the maximum."""
        waveform = tf.convert_to_tensor(waveform)
        if waveform.shape.rank != 2:
            raise ValueError(f"waveform must be [batch, samples] (rank 2), got shape {waveform.shape}")
        if not waveform.dtype.is_floating:
            raise ValueError(f"waveform must be floating point, got dtype {waveform.dtype.name}")
        waveform = tf.cast(waveform, tf.float32)
        # A SavedModel signature does not enforce its input's rank, and graph optimisation folds tf.rank of a
        # [None, None] input to 2: read the rank at run time, through an op whose output shape is unknown.
        shape = tf.shape(waveform)
        rank = tf.size(tf.io.parse_tensor(tf.io.serialize_tensor(shape), tf.int32))
        rank_check = tf.debugging.Assert(
            tf.equal(rank, 2),
            ["waveform must be [batch, samples] (rank 2), got rank", rank, "with shape", shape],
            name="check_rank",
        )
        with tf.control_dependencies([rank_check]):
            waveform = tf.identity(waveform)
        samples = tf.shape(waveform)[1]
        checks = [
            tf.debugging.Assert(
                samples > 0, ["empty waveform: 0 samples; send at least one sample per clip"], name="check_empty"
            )
        ]
        if self.max_samples:
            checks.append(
                tf.debugging.Assert(
                    samples <= self.max_samples,
                    [
                        "clip too long:",
                        samples,
                        f"samples, more than the maximum of this export, {self.max_samples} samples "
                        f"({self.config.max_seconds:g} s at {self.sample_rate} Hz); split the clip or re-export "
                        "with a larger --max-seconds",
                    ],
                    name="check_length",
                )
            )
        with tf.control_dependencies(checks):
            return tf.debugging.assert_all_finite(waveform, "waveform holds NaN or Inf samples")

    def _target(self, target_class, predicted) -> tf.Tensor:
        if target_class is None:
            return predicted
        target_class = tf.cast(tf.convert_to_tensor(target_class), tf.int32)
        target_class = tf.broadcast_to(target_class, tf.shape(predicted))
        num = len(self.class_names)
        ok = tf.reduce_all((target_class >= -1) & (target_class < num))
        check = tf.debugging.Assert(
            ok,
            [f"target_class must be -1 (the classifier prediction) or a class index in [0, {num}), got", target_class],
            name="check_target_class",
        )
        with tf.control_dependencies([check]):
            return tf.where(target_class < 0, predicted, target_class)

    # ---------------------------------------------------------------- pipeline

    def _probabilities(self, logits) -> tf.Tensor:
        return tf.sigmoid(logits) if self.interpreter.multilabel else tf.nn.softmax(logits, axis=-1)

    def _names(self, index) -> tf.Tensor:
        return tf.gather(tf.constant(self.class_names), index)

    def classify(self, waveform) -> dict[str, tf.Tensor]:
        """Waveform [B, S] -> the classifier's ``class_probabilities`` [B, C], ``predicted_class`` [B] and names."""
        waveform = self.check_waveform(waveform)
        prepared = self.interpreter.prepare(waveform)
        x = prepared[:, :, None] if self.interpreter.classifier_rank == 3 else prepared
        logits = self.interpreter.classifier(x, training=False)
        predicted = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
        batch = tf.shape(waveform)[0]
        return {
            "class_probabilities": self._probabilities(logits),
            "predicted_class": predicted,
            "predicted_class_name": self._names(predicted),
            "class_names": tf.tile(tf.constant(self.class_names)[None], tf.stack([batch, 1])),
        }

    def explain(self, waveform, target_class=None, threshold=None, components: bool = False) -> dict[str, tf.Tensor]:
        """Explain a batch: predictions, relevance, selection and interpretation (and the top-N components' audio).

        Args:
            waveform: float32 [B, S] at the model's sample rate.
            target_class: int [B] or scalar class to explain; -1 or None: the classifier's prediction.
            threshold: τ (scalar); None: the export's default.
            components: also return the audio of the N most relevant components.

        Returns:
            dict of tensors, see the module docstring (``serving_default`` and ``explain``).
        """
        waveform = self.check_waveform(waveform)
        threshold = tf.cast(self.config.threshold if threshold is None else threshold, tf.float32)
        check_tau = tf.debugging.Assert(~tf.math.is_nan(threshold), ["threshold is NaN"], name="check_threshold")
        samples = tf.shape(waveform)[1]
        interp = self.interpreter
        prepared = interp.prepare(waveform)
        features, classifier_logits = interp.features(prepared)
        X, phase = audio.analyze(prepared, self.stft_config)  # the one STFT
        H, interpreter_logits, z = interp.heads(features, tf.shape(X)[1], training=False)
        predicted = tf.cast(tf.argmax(classifier_logits, axis=-1), tf.int32)
        target = self._target(target_class, predicted)

        # A clip with no energy has nothing to explain: zero relevance, nothing selected.
        has_energy = tf.reduce_max(X, axis=[1, 2]) > 0  # [B]
        theta = interp.theta.kernel
        r = explain.relevance(z, theta, target)
        r = tf.where(has_energy[:, None], r, tf.zeros_like(r))
        with tf.control_dependencies([check_tau]):
            indices, values = explain.top_components(r, self.top_n)  # [B, N], by decreasing relevance
        chosen = (values > threshold) & has_energy[:, None]  # [B, N]; selected ⊂ top-N
        selected = (
            tf.reduce_max(tf.one_hot(indices, self.num_components) * tf.cast(chosen, tf.float32)[..., None], 1) > 0
        )

        W = tf.convert_to_tensor(interp.decoder.weights[0])  # [F, K]
        H = tf.cast(H, tf.float32)
        denominator = tf.einsum("btk,fk->btf", H, W) + self.config.eps  # [B, T, F]
        h_top = tf.gather(H, indices, axis=2, batch_dims=1)  # [B, T, N]
        w_top = tf.gather(tf.transpose(W), indices)  # [B, N, F]
        if components:
            parts = tf.einsum("btn,bnf->bntf", h_top, w_top) / denominator[:, None]  # [B, N, T, F]
            mask = tf.reduce_sum(parts * tf.cast(chosen, tf.float32)[:, :, None, None], axis=1)
            masks = tf.concat([mask[:, None], parts], axis=1)  # [B, 1 + N, T, F]: one ISTFT for every output
            waves = explain.masked_audio(
                X[:, None], phase[:, None], masks, tf.shape(prepared)[1], self.stft_config, self.config.domain
            )
            waves = _fit_length(waves, samples)
            interpretation, component_audio = waves[:, 0], waves[:, 1:]
        else:
            mask = tf.einsum("btn,bnf->btf", h_top * tf.cast(chosen, tf.float32)[:, None, :], w_top) / denominator
            interpretation = explain.masked_audio(
                X, phase, mask, tf.shape(prepared)[1], self.stft_config, self.config.domain
            )
            interpretation = _fit_length(interpretation, samples)
        out = {
            "interpretation": interpretation,
            "predicted_class": predicted,
            "predicted_class_name": self._names(predicted),
            "class_probabilities": self._probabilities(classifier_logits),
            "interpreter_probabilities": self._probabilities(interpreter_logits),
            "relevance": r,
            "selected": selected,
        }
        if components:
            out.update(
                target_class=target,
                component_indices=indices,
                component_relevance=values,
                component_selected=chosen,
                component_audio=component_audio,
            )
        return out

    def explain_wav(self, wav_files) -> dict[str, tf.Tensor]:
        """WAV files (string [B], 16-bit PCM at the model's rate, any lengths, mono or multi-channel, downmixed)
        -> ``interpretation_wav_bytes`` string [B] (16-bit WAV) + the predictions of :meth:`explain`.

        Each file is explained on its own (``tf.map_fn``), so clips of different lengths share a request and no
        clip is padded.
        """
        wav_files = tf.convert_to_tensor(wav_files, tf.string)
        if wav_files.shape.rank != 1:
            raise ValueError(f"audio must be a batch of WAV files, string [batch], got shape {wav_files.shape}")
        rate = self.sample_rate
        C, K = len(self.class_names), self.num_components

        def one(contents):
            decoded, file_rate = tf.audio.decode_wav(contents)  # [S, channels] in [-1, 1), int32 Hz
            check = tf.debugging.Assert(
                tf.equal(file_rate, rate),
                [
                    "WAV sample rate",
                    file_rate,
                    f"Hz differs from the model sample rate {rate} Hz; resample the file to {rate} Hz",
                ],
                name="check_sample_rate",
            )
            with tf.control_dependencies([check]):
                mono = tf.reduce_mean(decoded, axis=1)[None]
            out = self.explain(mono)
            wav = tf.audio.encode_wav(out.pop("interpretation")[0][:, None], rate)
            return {"interpretation_wav_bytes": wav, **{key: value[0] for key, value in out.items()}}

        signature = {
            "interpretation_wav_bytes": tf.TensorSpec([], tf.string),
            "predicted_class": tf.TensorSpec([], tf.int32),
            "predicted_class_name": tf.TensorSpec([], tf.string),
            "class_probabilities": tf.TensorSpec([C], tf.float32),
            "interpreter_probabilities": tf.TensorSpec([C], tf.float32),
            "relevance": tf.TensorSpec([K], tf.float32),
            "selected": tf.TensorSpec([K], tf.bool),
        }
        return tf.map_fn(one, wav_files, fn_output_signature=signature)

    # ---------------------------------------------------------------- signatures

    def signatures(self) -> dict:
        """``{name: (python function, input signature)}`` for the four SavedModel signatures."""
        waveform = tf.TensorSpec([None, None], tf.float32, name="waveform")
        return {
            "serving_default": (lambda waveform: self.explain(waveform), [waveform]),
            "explain": (
                lambda waveform, target_class, threshold: self.explain(waveform, target_class, threshold, True),
                [
                    waveform,
                    tf.TensorSpec([None], tf.int32, name="target_class"),
                    tf.TensorSpec([], tf.float32, name="threshold"),
                ],
            ),
            "classify": (lambda waveform: self.classify(waveform), [waveform]),
            "explain_wav": (lambda audio: self.explain_wav(audio), [tf.TensorSpec([None], tf.string, name="audio")]),
        }

    def functions(self) -> dict:
        """The signatures as ``tf.function``s with their input signatures (what the CLI calls on a run folder)."""
        return {name: tf.function(fn, input_signature=spec) for name, (fn, spec) in self.signatures().items()}

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "class_names": list(self.class_names),
            "sample_rate": self.sample_rate,
            "stft": self.stft_config.to_dict(),
            "k": self.num_components,
            "top_n": self.top_n,
            "threshold": self.config.threshold,
            "domain": self.config.domain,
            "max_seconds": self.config.max_seconds,
            "max_samples": self.max_samples,
            "multilabel": self.interpreter.multilabel,
            "signatures": list(SIGNATURES),
        }


def make_explain_fn(interpreter, class_names, config: ExportConfig = ExportConfig()) -> Explainer:
    """The explanation pipeline shared by the export and ``l2i-tf explain`` (see :class:`Explainer`)."""
    return Explainer(interpreter, class_names, config)


def _fit_length(waves, samples) -> tf.Tensor:
    """Crop or zero-pad the last axis to ``samples`` (undoes a fixed-length classifier's pad/crop)."""
    waves = waves[..., :samples]
    pad = tf.maximum(samples - tf.shape(waves)[-1], 0)
    rank = waves.shape.rank
    return tf.pad(waves, [[0, 0]] * (rank - 1) + [[0, pad]])


# -------------------------------------------------------------------- versioned export

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def versions(model_folder: str | Path) -> list[int]:
    """Integer version folders under ``savedmodels/<name>/``, ascending (what TF Serving would see)."""
    folder = Path(model_folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def export(
    run,
    out: str | Path = "savedmodels",
    name: str = "l2i",
    config: ExportConfig = ExportConfig(),
    version: int | None = None,
    safe_mode: bool = True,
) -> Path:
    """Export a run as ``<out>/<name>/<version>/`` (a SavedModel) and return that folder.

    ``version`` defaults to one more than the largest existing version (1 for the first). An existing version is
    never overwritten: the model is written to a hidden temporary folder next to the versions and renamed into
    place, so TF Serving never sees half a model.

    Args:
        run: a run folder (``l2i-tf train``) or a loaded :class:`~l2i_tf.training.Run`.
        out: the model base folder (TF Serving's ``base_path`` is ``<out>/<name>``).
        name: model name.
        config: τ, N, domain, maximum length.
        version: explicit version (must not exist).
        safe_mode: load the run's ``.keras`` file with Keras' safe mode (refuses ``Lambda`` layers' code).

    Raises:
        ExportError: the folder cannot be written, the version exists, or the name is not a plain folder name.
    """
    from l2i_tf import training

    if not _NAME.match(name):
        raise ExportError(f"model name {name!r} must be a plain folder name (letters, digits, '_', '.', '-')")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"version must be a positive integer, got {version!r}")
    base = Path(out) / name
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the export folder {str(base)!r}: {e.strerror or e}") from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise ExportError(f"the export folder {str(base)!r} is not writable")
    existing = versions(base)
    if version is None:
        version = max(existing, default=0) + 1
    target = base / str(version)
    if target.exists():
        raise ExportError(
            f"version {version} of model {name!r} already exists at {str(target)!r}; exports never overwrite "
            "(omit --version for the next free one)"
        )

    if not isinstance(run, training.Run):
        run = training.load_run(run, safe_mode=safe_mode)
    explainer = Explainer(run.interpreter, run.class_names, config)
    start = time.perf_counter()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=base))
    except OSError as e:
        raise ExportError(f"cannot write into the export folder {str(base)!r}: {e.strerror or e}") from None
    try:
        saved = tmp / "model"
        write_saved_model(explainer, saved)
        metadata = explainer.metadata()
        metadata.update(name=name, version=version, run=str(run.folder), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        metadata["versions"] = {"tensorflow": tf.__version__, "keras": _keras_version()}
        (saved / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
        (saved / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if target.exists():  # another export took this version meanwhile
            raise ExportError(f"version {version} of model {name!r} appeared at {str(target)!r} during the export")
        os.rename(saved, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (version %d) in %.1f s", target, version, time.perf_counter() - start)
    return target


def write_saved_model(explainer: Explainer, path: str | Path) -> None:
    """Write the four signatures with Keras' ``ExportArchive`` (variables tracked, loadable without this package)."""
    import keras

    interpreter = explainer.interpreter
    if not interpreter.built:  # a subclassed model saved before its first call loads unbuilt
        interpreter(tf.zeros([1, explainer.sample_rate // 4]))
    archive = keras.export.ExportArchive()
    archive.track(interpreter)
    for name, (fn, spec) in explainer.signatures().items():
        archive.add_endpoint(name, fn, input_signature=spec)
    archive.write_out(str(path), verbose=False)


def _keras_version() -> str:
    import keras

    return keras.__version__


# -------------------------------------------------------------------- reading an export


def resolve_saved_model(path: str | Path) -> Path:
    """A SavedModel folder, or a model folder of versions (-> its newest version). Raises ``FileNotFoundError``."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    found = [v for v in versions(path) if (path / str(v) / "saved_model.pb").is_file()]
    if found:
        return path / str(found[-1])
    raise FileNotFoundError(f"{str(path)!r} holds no SavedModel (saved_model.pb) nor integer version folders")


def load_metadata(saved_model: str | Path) -> dict:
    """The export's ``assets.extra/l2i_tf.json``."""
    path = Path(saved_model) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(saved_model)!r} is not an l2i_tf export: {METADATA_FILE} is missing")
    return json.loads(path.read_text())


# -------------------------------------------------------------------- explaining files (l2i-tf explain)


class ExplainSource:
    """A run folder or an exported SavedModel, behind one ``explain(waveform [1, S], target_class, threshold)``.

    Args:
        path: a run folder (``config.json`` + ``interpreter.keras``), a SavedModel folder, or a model folder of
            integer versions (the newest is used).
        threshold, top_n, domain: run folder: override the :class:`ExportConfig` defaults; SavedModel: ``top_n``
            and ``domain`` are fixed by the export and must match if given, ``threshold`` overrides its default.
        safe_mode: load a run folder's ``.keras`` file with Keras' safe mode (refuses ``Lambda`` layers' code).
    """

    def __init__(
        self,
        path: str | Path,
        threshold: float | None = None,
        top_n: int | None = None,
        domain=None,
        safe_mode: bool = True,
    ):
        path = Path(path)
        self.path = path
        if (path / "interpreter.keras").is_file() and (path / "config.json").is_file():
            from l2i_tf import training

            run = training.load_run(path, safe_mode=safe_mode)
            defaults = ExportConfig()
            config = ExportConfig(
                threshold=defaults.threshold if threshold is None else threshold,
                top_n=defaults.top_n if top_n is None else top_n,
                domain=domain or defaults.domain,
                max_seconds=0,
            )
            explainer = Explainer(run.interpreter, run.class_names, config)
            self.kind = "run"
            self.explainer = explainer  # the interpreter behind it (l2i-tf report reads H from it)
            self.metadata = explainer.metadata()
            self._explain = explainer.functions()["explain"]
        else:
            saved = resolve_saved_model(path)
            self.metadata = load_metadata(saved)
            for option, value, key in (("--top", top_n, "top_n"), ("--domain", domain, "domain")):
                if value is not None and value != self.metadata[key]:
                    raise ValueError(
                        f"{option} {value!r} differs from this SavedModel's {self.metadata[key]!r}, fixed at export; "
                        f"re-export with {option} {value} or explain from the run folder"
                    )
            self.kind = "savedmodel"
            self.explainer = None
            self.path = saved
            self._explain = tf.saved_model.load(str(saved)).signatures["explain"]
        self.threshold = self.metadata["threshold"] if threshold is None else float(threshold)
        self.class_names = tuple(self.metadata["class_names"])
        self.sample_rate = int(self.metadata["sample_rate"])

    def class_index(self, name: str | None) -> int:
        """Index of a class name (-1 for None: the classifier's prediction); ``ValueError`` listing the classes."""
        if name is None:
            return -1
        if name not in self.class_names:
            raise ValueError(f"unknown class {name!r}; the classes are: {', '.join(self.class_names)}")
        return self.class_names.index(name)

    def explain(self, waveform, target_class: int = -1) -> dict:
        """float32 [1, S] -> the ``explain`` signature's outputs as numpy."""
        out = self._explain(
            waveform=tf.constant(waveform, tf.float32),
            target_class=tf.constant([target_class], tf.int32),
            threshold=tf.constant(self.threshold, tf.float32),
        )
        return {key: value.numpy() for key, value in out.items()}


def load_audio(path: str | Path, sample_rate: int):
    """Any supported file -> mono float32 numpy [S] at ``sample_rate`` (tensorflow-io: downmix, resample)."""
    from l2i_tf import data

    info = data.probe(str(path))
    try:
        return data.decode_audio(tf.io.read_file(str(path)), info.decoder, info.sample_rate, sample_rate).numpy()
    except tf.errors.OpError as e:  # e.g. a truncated file whose header promises more samples than it holds
        raise data.AudioDataError(
            f"{path}: cannot decode audio ({graph_error_message(e)}); the file is truncated or corrupt"
        ) from None


def explain_file(source: ExplainSource, path: str | Path, out: str | Path, class_name: str | None = None) -> dict:
    """Explain one audio file and write ``interpretation.wav``, ``component_<k>.wav`` per selected component and
    ``explanation.json`` into ``out``; returns the JSON's content.

    Raises:
        l2i_tf.data.AudioDataError: unreadable or empty file. ValueError: unknown class name.
        tf.errors.InvalidArgumentError: rejected by the graph (NaN/Inf samples, too long for the export).
    """
    import soundfile

    target = source.class_index(class_name)
    waveform = load_audio(path, source.sample_rate)
    result = source.explain(waveform[None], target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rate = source.sample_rate
    soundfile.write(out / "interpretation.wav", result["interpretation"][0], rate, subtype="FLOAT")
    names = source.class_names
    selected = []
    for index, relevance, chosen, wave in zip(
        result["component_indices"][0],
        result["component_relevance"][0],
        result["component_selected"][0],
        result["component_audio"][0],
        strict=True,
    ):
        if chosen:
            file = f"component_{int(index):03d}.wav"
            soundfile.write(out / file, wave, rate, subtype="FLOAT")
            selected.append({"component": int(index), "relevance": float(relevance), "file": file})

    def probabilities(key):
        p = result[key][0]
        return {
            "predicted": names[int(p.argmax())],
            "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
        }

    report = {
        "input": str(path),
        "source": str(source.path),
        "source_kind": source.kind,
        "sample_rate": rate,
        "samples": int(waveform.shape[0]),
        "seconds": waveform.shape[0] / rate,
        "target_class": names[int(result["target_class"][0])],
        "threshold": source.threshold,
        "top_n": source.metadata["top_n"],
        "domain": source.metadata["domain"],
        "classifier": probabilities("class_probabilities"),
        "interpreter": probabilities("interpreter_probabilities"),
        "relevance": [float(v) for v in result["relevance"][0]],
        "selected": selected,
        "interpretation": "interpretation.wav",
    }
    (out / "explanation.json").write_text(json.dumps(report, indent=2))
    return report


def graph_error_message(error: Exception) -> str:
    """The readable part of a TensorFlow runtime error (the failed assertion's text, without node names)."""
    text = getattr(error, "message", str(error))
    text = re.sub(r"\{\{[^}]*\}\}", "", text).split("\n")[0].strip()
    text = text.replace("assertion failed: ", "")
    return re.sub(r"\] \[", " ", text).strip("[] ").replace("\\'", "'")


# -------------------------------------------------------------------- TF Serving REST client (l2i-tf request)


def predict_url(url: str) -> str:
    """``http://host:8501/v1/models/l2i`` (optionally ``/versions/N``, optionally ``:predict``) -> the predict URL."""
    url = url.rstrip("/")
    if not re.match(r"^https?://[^/]+/v1/models/[^/:]+(/versions/\d+)?(:predict)?$", url):
        raise ValueError(f"{url!r} is not a TF Serving model URL like http://localhost:8501/v1/models/l2i")
    return url if url.endswith(":predict") else url + ":predict"


def rest_explain_wav(url: str, wav_files: list[bytes], timeout: float = 120.0) -> list[dict]:
    """POST WAV files to the ``explain_wav`` signature over TF Serving's REST API; returns one dict per file with
    ``interpretation_wav_bytes`` as bytes. Raises ``ConnectionError`` with the server's error text."""
    import base64
    import urllib.error
    import urllib.request

    body = {
        "signature_name": "explain_wav",
        "instances": [{"audio": {"b64": base64.b64encode(w).decode("ascii")}} for w in wav_files],
    }
    request = urllib.request.Request(
        predict_url(url), data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except ValueError:
            message = ""
        raise ConnectionError(f"{url}: HTTP {e.code}: {message or e.reason}") from None
    except urllib.error.URLError as e:
        raise ConnectionError(f"cannot reach {url}: {e.reason}") from None
    predictions = reply["predictions"]
    for p in predictions:
        p["interpretation_wav_bytes"] = base64.b64decode(p["interpretation_wav_bytes"]["b64"])
    return predictions
