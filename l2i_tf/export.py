"""SavedModel export of an Explainer: its four signatures, versioned atomic export, and reading an export back.

Signatures (every input and output has a batch dimension B; S = samples, any length up to the export's maximum;
outputs as in :mod:`l2i_tf.explainer`):

``serving_default``  waveform float32 [B, S] -> interpretation, predicted_class, predicted_class_name,
                     class_probabilities, interpreter_probabilities, relevance, selected, and the timeline of W
                     windows: window_start, window_end int32 [B, W] (samples), window_predicted_class [B, W],
                     window_class_probabilities [B, W, C], window_selected bool [B, W, K]
``explain``          + target_class int32 [B] (-1: the classifier's prediction), threshold float32 [] ->
                     the above + target_class, component_indices, component_relevance, component_selected,
                     component_audio (the N most relevant components). The request's τ is taken as sent (only
                     NaN is refused): τ >= 1 selects none, τ < -1 every component; the package's clients refuse a
                     τ outside [-1, 1] before sending it, as the export refuses it as its default
``classify``         waveform -> class_probabilities, predicted_class, predicted_class_name, class_names [B, C]
``explain_wav``      audio string [B] (16-bit PCM WAV files at the model's rate, any lengths) ->
                     interpretation_wav_bytes string [B] (16-bit WAV) + the predictions of ``serving_default``

Metadata (class names, sample rate, STFT, K, τ, N, domain, maximum length, the run folder it was made from and
that run's fingerprint, :func:`l2i_tf.runs.fingerprint`) is written to ``assets.extra/l2i_tf.json`` inside the
SavedModel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path

import keras
import tensorflow as tf

from l2i_tf import audio, files, recording, runs
from l2i_tf.explainer import ExplainConfig, Explainer
from l2i_tf.interpreter import with_precision

log = logging.getLogger(__name__)

METADATA_FILE = Path("assets.extra") / "l2i_tf.json"
SIGNATURES = ("serving_default", "explain", "classify", "explain_wav")
FORMAT = "l2i_tf.savedmodel/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(ValueError):
    """An export that cannot be written as asked. ``reason`` is ``"name"`` (not a plain folder name),
    ``"version"`` (it exists, or is not a positive integer) or ``"folder"`` (cannot be created or written);
    ``value`` is the name, version or folder."""

    def __init__(self, message: str, reason: str, value):
        super().__init__(message)
        self.reason = reason
        self.value = value


# -------------------------------------------------------------------- signatures


def _explain_wav(explainer: Explainer, plain):
    """WAV files (string [B], any lengths, mono or multi-channel: downmixed) -> ``interpretation_wav_bytes`` + the
    outputs of ``serving_default`` (``plain``: its recording graph). Each file is explained on its own
    (``tf.map_fn``): no clip is padded; the timeline outputs are padded to the batch's longest timeline
    (``window_predicted_class`` -1 past a file's end)."""
    rate = explainer.sample_rate
    C, K = len(explainer.class_names), explainer.num_components

    def one(contents):
        decoded, file_rate = tf.audio.decode_wav(contents)  # [S, channels] in [-1, 1), int32 Hz
        check = tf.debugging.Assert(
            tf.equal(file_rate, rate),
            ["WAV sample rate", file_rate, f"Hz differs from the model sample rate {rate} Hz; resample the file"],
            name="check_sample_rate",
        )
        with tf.control_dependencies([check]):
            mono = tf.reduce_mean(decoded, axis=1)[None]
        out = _explain(plain, explainer.config.threshold, mono)
        wav = tf.audio.encode_wav(out.pop("interpretation")[0][:, None], rate)
        return {"interpretation_wav_bytes": wav, **{key: value[0] for key, value in out.items()}}

    def ragged(shape, dtype):
        return tf.RaggedTensorSpec([None, *shape], dtype, ragged_rank=0)

    signature = {
        "interpretation_wav_bytes": tf.TensorSpec([], tf.string),
        "predicted_class": tf.TensorSpec([], tf.int32),
        "predicted_class_name": tf.TensorSpec([], tf.string),
        "class_probabilities": tf.TensorSpec([C], tf.float32),
        "interpreter_probabilities": tf.TensorSpec([C], tf.float32),
        "relevance": tf.TensorSpec([K], tf.float32),
        "selected": tf.TensorSpec([K], tf.bool),
        "window_start": ragged([], tf.int32),
        "window_end": ragged([], tf.int32),
        "window_predicted_class": ragged([], tf.int32),
        "window_class_probabilities": ragged([C], tf.float32),
        "window_selected": ragged([K], tf.bool),
    }

    def run(audio):
        out = tf.map_fn(one, audio, fn_output_signature=signature)
        for key in recording.TIMELINE_OUTPUTS:
            out[key] = out[key].to_tensor(-1 if key == "window_predicted_class" else None)
        return out

    return run


def _explain(explain, threshold: float, waveform, target_class=None, tau=None) -> dict:
    """``explain`` (a recording graph: waveform, target [B], τ [B]) with the target class (default -1: the
    decision) and τ (default ``threshold``) broadcast to the batch."""
    batch = tf.shape(waveform)[:1]
    if target_class is None:
        target = tf.fill(batch, -1)
    else:
        given = tf.size(target_class)
        count = tf.debugging.Assert(
            (given == 1) | (given == batch[0]),
            ["target_class must hold one class for every clip or one for all: got", given, "for", batch[0], "clips"],
            name="check_target_count",
        )
        with tf.control_dependencies([count]):
            target = tf.broadcast_to(target_class, batch)
    return explain(waveform, target, tf.broadcast_to(threshold if tau is None else tau, batch))


def signatures(explainer: Explainer) -> dict:
    """``{name: (function, input signature)}`` of the four SavedModel signatures, on the Explainer's layers (the
    recording graph of :mod:`l2i_tf.recording`, as :meth:`Explainer.explain` runs it)."""
    waveform = tf.TensorSpec([None, None], tf.float32, name="waveform")
    # The Explainer's own recording graphs (tf.functions): serving_default and explain_wav call one, so the
    # SavedModel holds (and the export traces) that graph once.
    plain, with_components = explainer.calls.serve, explainer.calls.explain
    tau = explainer.config.threshold
    return {
        "serving_default": (lambda waveform: _explain(plain, tau, waveform), [waveform]),
        "explain": (
            lambda waveform, target_class, threshold: _explain(with_components, tau, waveform, target_class, threshold),
            [
                waveform,
                tf.TensorSpec([None], tf.int32, name="target_class"),
                tf.TensorSpec([], tf.float32, name="threshold"),
            ],
        ),
        "classify": (lambda waveform: recording.classify(explainer.parts, waveform), [waveform]),
        "explain_wav": (_explain_wav(explainer, plain), [tf.TensorSpec([None], tf.string, name="audio")]),
    }


SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
"""How the SavedModel is written: without the graphs of Ψ's custom gradients (:func:`l2i_tf.layers.resize_time`; a
faster form of the gradient TensorFlow derives anyway), which serving never computes and which took 12 of the
export's traces."""


def write_saved_model(explainer: Explainer, path: str | Path) -> None:
    """Write the four signatures with Keras' ``ExportArchive`` (variables tracked, loadable without this package)."""
    archive = keras.export.ExportArchive()
    archive.track(explainer)
    for name, (fn, spec) in signatures(explainer).items():
        archive.add_endpoint(name, fn, input_signature=spec)
    _trace_once(archive)
    with _no_layer_signatures():
        archive.write_out(str(path), SAVE_OPTIONS, verbose=False)


@contextlib.contextmanager
def _no_layer_signatures():
    """Keep Keras' per-model ``_default_save_signature`` out of the SavedModel while it is written.

    Saving walks every tracked object's attributes for ``tf.function`` s; on a Keras model that property makes a new
    ``serving_default`` each time it is read, which the walk then traces and saves: one unused function per model
    (Explainer, interpreter, classifier, heads...; with serving_default and explain_wav sharing a graph, the tiny test
    run's SavedModel is 1.51 MB instead of 1.88 MB, in about the same time). The signatures are ours; nothing reads
    those. Keras-internal (the TensorFlow backend's layer class): where it is missing, nothing changes.
    """
    try:
        from keras.src.backend.tensorflow.layer import TFLayer
    except ImportError:  # pragma: no cover - another Keras layout: the functions are traced and saved
        yield
        return
    original = TFLayer.__dict__.get("_default_save_signature")
    if original is None:  # pragma: no cover - another Keras: nothing to hide
        yield
        return
    TFLayer._default_save_signature = property(lambda self: None)
    try:
        yield
    finally:
        TFLayer._default_save_signature = original


def _trace_once(archive) -> None:
    """Make ``archive.write_out`` trace each signature once instead of twice (a third of ``l2i-tf export``'s time).

    ``write_out`` first traces every endpoint to list the variables it uses, then ``tf.saved_model.save`` traces them
    again: a trace is cached per context, and the save context (its variable policy) is part of the key. Listing
    inside a save context with the options ``write_out`` saves with makes the save find those traces. Keras-internal
    (``_filter_and_track_resources``, TensorFlow's ``save_context``): where either is missing, nothing changes.
    """
    try:
        from tensorflow.python.saved_model import save_context
    except ImportError:  # pragma: no cover - another TensorFlow layout: trace twice
        return
    list_and_track = getattr(archive, "_filter_and_track_resources", None)
    if list_and_track is None:  # pragma: no cover - another Keras: trace twice
        return

    def in_save_context():
        with save_context.save_context(SAVE_OPTIONS):
            list_and_track()

    archive._filter_and_track_resources = in_save_context


# -------------------------------------------------------------------- versioned export


def versions(model_folder: str | Path) -> list[int]:
    """Integer version folders under ``savedmodels/<name>/``, ascending (what TF Serving would see)."""
    folder = Path(model_folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _model_folder(out: str | Path, name: str, version: int | None) -> Path:
    """``out/name``, created and writable, after checking the name and version."""
    if not _NAME.match(name):
        raise ExportError(
            f"model name {name!r} must be a plain folder name: a letter or digit first, then letters, digits, '_', "
            "'.' and '-'",
            "name",
            name,
        )
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"version must be a positive integer, got {version!r}", "version", version)
    base = Path(out) / name
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(
            f"cannot create the export folder {str(base)!r}: {e.strerror or e}", "folder", str(base)
        ) from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise ExportError(f"the export folder {str(base)!r} is not writable", "folder", str(base))
    return base


def _free_version(base: Path, after: int = 0) -> int:
    """The next version number above every existing version (and ``after``) whose name is free under ``base``."""
    version = max([*versions(base), after]) + 1
    while (base / str(version)).exists():  # a file, or a folder that is no version, with that name
        version += 1
    return version


def _move_into_place(tmp: Path, base: Path, metadata: dict, pinned: bool) -> Path:
    """Write ``metadata`` into the finished SavedModel ``tmp`` and rename it to ``base/<metadata["version"]>``.

    When that version appears meanwhile (another export of the same model finished first): a ``pinned`` version
    (``--version``) is an :class:`ExportError`; otherwise the export takes the next free version, and so on.
    """
    version, name = metadata["version"], metadata["name"]
    while True:
        files.write_json(tmp / METADATA_FILE, {**metadata, "version": version})
        target = base / str(version)
        try:
            files.swap_in(tmp, target)
            return target
        except FileExistsError:
            if pinned:
                raise ExportError(
                    f"version {version} of model {name!r} appeared at {str(target)!r} during the export",
                    "version",
                    version,
                ) from None
        taken, version = version, _free_version(base, after=version)
        log.warning(
            "version %d of model %r appeared during the export; this export is version %d", taken, name, version
        )


def export(
    run,
    out: str | Path = "savedmodels",
    name: str = "l2i",
    config: ExplainConfig = ExplainConfig(),
    version: int | None = None,
    safe_mode: bool = True,
    precision: str | None = None,
) -> Path:
    """Export a run as ``<out>/<name>/<version>/`` (a SavedModel) and return that folder.

    ``version`` defaults to one more than the largest existing version (1 for the first); if another export takes
    that version while this one is written, this one takes the next free version. An existing version is never
    overwritten: the model is written to a hidden temporary folder next to the versions and renamed into place, so
    TF Serving never sees half a model.

    Args:
        run: a run folder (``l2i-tf train``) or a loaded :class:`~l2i_tf.runs.Run`.
        out: the model base folder (TF Serving's ``base_path`` is ``<out>/<name>``).
        name: model name.
        config: τ, N, domain, maximum length.
        version: explicit version (must not exist, nor appear during the export).
        safe_mode: load the run's ``.keras`` file with Keras' safe mode (refuses ``Lambda`` layers' code).
        precision: the classifier's compute in the export (:data:`~l2i_tf.interpreter.PRECISIONS`); None: the
            run's. Ψ, Θ and every output stay float32.

    Raises:
        ExportError: the folder cannot be written, the version exists, or the name is not a plain folder name.
    """
    base = _model_folder(out, name, version)
    pinned = version is not None
    if not pinned:
        version = _free_version(base)
    elif (base / str(version)).exists():
        target = base / str(version)
        raise ExportError(f"version {version} of model {name!r} already exists at {str(target)!r}", "version", version)
    if not isinstance(run, runs.Run):
        fingerprint = _fingerprint(run) if runs.is_run(run) else None  # of the files loaded next
        run = runs.load_run(run, safe_mode=safe_mode)
    else:
        fingerprint = _fingerprint(run.folder)
    interpreter = run.interpreter if precision is None else with_precision(run.interpreter, precision)
    explainer = Explainer(interpreter, run.class_names, config)
    start = time.perf_counter()
    metadata = {"format": FORMAT, **explainer.metadata(), "signatures": list(SIGNATURES)}
    metadata.update(
        name=name, version=version, run=str(Path(run.folder).resolve()), created=time.strftime("%Y-%m-%dT%H:%M:%S%z")
    )
    metadata["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
    metadata["precision"] = interpreter.precision
    metadata["run_fingerprint"] = fingerprint  # report uses the run folder only while it still holds this run
    try:
        with files.temporary_folder(base / str(version)) as tmp:
            write_saved_model(explainer, tmp)
            target = _move_into_place(tmp, base, metadata, pinned)
    except OSError as e:
        raise ExportError(f"cannot write into {str(base)!r}: {e.strerror or e}", "folder", str(base)) from None
    log.info("exported %s in %.1f s", target, time.perf_counter() - start)
    return target


def _fingerprint(folder) -> dict | None:
    """The run's :func:`~l2i_tf.runs.fingerprint`, or None (warned) when its files cannot be read."""
    try:
        return runs.fingerprint(folder)
    except (OSError, ValueError) as e:
        log.warning(
            "cannot fingerprint the run folder %s: %s; l2i-tf report will check only its classes, K and STFT", folder, e
        )
        return None


# -------------------------------------------------------------------- reading an export


def resolve_saved_model(path: str | Path) -> Path:
    """A SavedModel folder, or a model folder of versions (-> its newest version). Raises ``FileNotFoundError``."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    found = [v for v in versions(path) if (path / str(v) / "saved_model.pb").is_file()]
    if found:
        return path / str(found[-1])
    run_folder = (path / "interpreter.keras").is_file()
    hint = "; it is a run folder: export it first with `l2i-tf export`" if run_folder else ""
    raise FileNotFoundError(f"{str(path)!r} holds no SavedModel (saved_model.pb) nor integer version folders{hint}")


def load_metadata(saved_model: str | Path) -> dict:
    """The export's ``assets.extra/l2i_tf.json``."""
    path = Path(saved_model) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(saved_model)!r} is not an l2i_tf export: {METADATA_FILE} is missing")
    return json.loads(path.read_text())


def recorded_run(metadata: dict) -> tuple[Path | None, str | None]:
    """The run folder an export (its ``metadata``) was made from, while that folder still holds that run.

    Returns ``(folder, None)`` when it does; ``(None, None)`` when the recorded folder holds no finished run (moved,
    removed); ``(None, why)`` when it holds another run (or one that cannot be read), ``why`` naming the folder. The
    run is the export's when its :func:`~l2i_tf.runs.fingerprint` is the one recorded at export time. An export
    written before fingerprints were recorded has none: its folder is taken when the run's class names, K and STFT
    are the export's (another run with the same ones cannot be told apart).
    """
    recorded = metadata.get("run")
    if not recorded or not runs.is_run(recorded):
        return None, None
    folder = Path(recorded)
    expected = metadata.get("run_fingerprint")
    try:
        if expected is not None:
            if runs.fingerprint(folder) == expected:
                return folder, None
            return None, (
                f"the run folder {str(folder)!r} changed since the export (its {runs.INTERPRETER} or training "
                "settings are not the exported run's)"
            )
        differs = _differences(folder, metadata)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"cannot check that the run folder {str(folder)!r} still holds the export's run: {e}"
    if differs:
        what = " and ".join(differs) + (" differs" if differs in (["K"], ["STFT"]) else " differ")
        return None, f"the run folder {str(folder)!r} changed since the export (its {what} from the export's)"
    return folder, None


def _differences(folder: Path, metadata: dict) -> list[str]:
    """What of class names, K and STFT differs between the run in ``folder`` and an export's ``metadata``."""
    config = runs.read_config(folder)
    if (folder / runs.STFT).is_file():
        stft = audio.STFTConfig.load(folder / runs.STFT)
    else:
        stft = audio.STFTConfig.from_dict(config.stft or {})
    differs = []
    if list(config.class_names or ()) != list(metadata.get("class_names") or ()):
        differs.append("class names")
    if config.k != metadata.get("k"):
        differs.append("K")
    if stft.to_dict() != audio.STFTConfig.from_dict(metadata.get("stft") or {}).to_dict():
        differs.append("STFT")
    return differs
