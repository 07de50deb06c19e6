"""The Beam RunInference model handler of an exported SavedModel's ``explain`` signature, batched by clip length.

Beam's stock TensorFlow handler loads with ``tf.keras.models.load_model``, which Keras 3 refuses for a SavedModel
folder: this one loads with ``tf.saved_model.load`` and calls the ``explain`` signature (``serving_default`` when
no component audio is needed). It derives from Beam's base ``ModelHandler``, not from its TensorFlow module, which
imports tensorflow_hub (and through it tf_keras and pkg_resources: ~0.35 s in every worker) for nothing used here.
Inside a batch, clips of the same exact length are explained together and others apart, never zero-padded: a padded
clip's explanation differs from the clip's own, and padding can never dominate.
Beam's length-bucketed batching (``batch_length_fn`` with ``max_batch_duration_secs``) was measured and is not used:
on the DirectRunner (2.77) the metric updates of the batches its timers flush are lost (33 of 40 inferences counted,
RunInference's own counter included).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading

import numpy as np
import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from l2i_tf.explain_files import graph_error_message
from l2i_tf.recording import TIMELINE_OUTPUTS

OUTPUTS = (
    "interpretation",
    "class_probabilities",
    "interpreter_probabilities",
    "relevance",
    "selected",
    "target_class",
    "component_indices",
    "component_relevance",
    "component_selected",
    "component_audio",
    *TIMELINE_OUTPUTS,
)
"""The outputs of the ``explain`` signature that a bulk explanation keeps (what the summary reads; an export
made before timelines has no ``window_*`` outputs)."""

WARM_UP_SAMPLES = 16000
"""Length of the silent clip :meth:`ExplainModelHandler.load_model` explains once (1 s at 16 kHz)."""


def _call(signature, waveforms: np.ndarray, threshold: float) -> dict:
    out = signature(
        waveform=tf.constant(waveforms, tf.float32),
        target_class=tf.fill([len(waveforms)], -1),
        threshold=tf.constant(threshold, tf.float32),
    )
    return {key: out[key].numpy() for key in OUTPUTS if key in out}


def _call_without_component_audio(signature, waveforms: np.ndarray, top_n: int) -> dict:
    """:func:`_call` with the export's τ through ``serving_default``, which skips the N components' syntheses (~30 %
    of a call): the component outputs are derived as the graph makes them (the selected components, then the most
    relevant others, N in all, by decreasing relevance, ties: lower index first; chosen = selected), and
    ``component_audio`` is empty ([B, N, 0])."""
    out = {key: value.numpy() for key, value in signature(waveform=tf.constant(waveforms, tf.float32)).items()}
    relevance, selected = out["relevance"], out["selected"]
    order = np.argsort(-relevance, axis=1, kind="stable")
    first = np.argsort(~np.take_along_axis(selected, order, axis=1), axis=1, kind="stable")
    indices = np.take_along_axis(order, first, axis=1)[:, :top_n].astype(np.int32)
    return {
        **{key: out[key] for key in OUTPUTS if key in out},
        "target_class": out["predicted_class"].astype(np.int32),  # target -1: the classifier's prediction
        "component_indices": indices,
        "component_relevance": np.take_along_axis(relevance, indices, axis=1),
        "component_selected": np.take_along_axis(selected, indices, axis=1),
        "component_audio": np.zeros((*indices.shape, 0), np.float32),
    }


def explain_batch(model, batch, inference_args: dict, model_id: str | None = None) -> list[PredictionResult]:
    """The ``inference_fn``: one :class:`PredictionResult` per clip, whose ``inference`` is the clip's outputs
    (numpy, no batch dimension) or ``{"error": reason}`` when the graph rejects it (too long, NaN samples...).

    ``inference_args``: ``threshold`` (τ), and ``top_n_without_audio`` (the export's N) when the components' audio
    is not wanted and τ is the export's: then ``serving_default`` runs (see :func:`_call_without_component_audio`).
    Clips of one exact length run as one batch; if the graph rejects that batch, each clip runs alone so one bad
    clip costs only itself.
    """
    top_n = inference_args.get("top_n_without_audio")
    if top_n:
        call = functools.partial(_call_without_component_audio, model.signatures["serving_default"], top_n=top_n)
    else:
        call = functools.partial(_call, model.signatures["explain"], threshold=float(inference_args["threshold"]))
    results: list[dict | None] = [None] * len(batch)
    groups: dict[int, list[int]] = {}
    for i, clip in enumerate(batch):
        groups.setdefault(len(clip), []).append(i)
    for members in groups.values():
        try:
            out = call(np.stack([batch[i] for i in members]))
            for j, i in enumerate(members):
                results[i] = {key: value[j] for key, value in out.items()}
        except tf.errors.OpError:
            for i in members:
                try:
                    results[i] = {key: value[0] for key, value in call(batch[i][None]).items()}
                except tf.errors.OpError as e:
                    results[i] = {"error": graph_error_message(e)}
    return [PredictionResult(clip, result, model_id) for clip, result in zip(batch, results)]


def set_tf_threads(intra_op: int) -> bool:
    """Run each TensorFlow op on ``intra_op`` threads in this process; False (unchanged) if TensorFlow has already
    started. With several workers on the cores (threads or processes), one thread per op keeps every core busy with
    its own worker's clips and spends less CPU than each call spreading its ops over all cores (measured on 2 shared
    cores: ~5–10 % less CPU for 400 clips)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
    except RuntimeError:  # TensorFlow's runtime is already initialized: keep its pools
        return False
    return True


_preloads: dict[tuple, concurrent.futures.Future] = {}
_preloads_lock = threading.Lock()


def preload(handler: ExplainModelHandler) -> None:
    """Start ``handler``'s loading in a background thread of this process; the first ``load_model`` of an equal
    handler in this process then takes that model instead of loading its own. For runners whose workers are threads
    of this process (the DirectRunner in memory or multi-threading): the ~2–3 s of loading and warming up overlap
    Beam's start-up and the matching of the inputs. (A rerun with every input complete loads it for nothing.)"""
    with _preloads_lock:
        if handler.key not in _preloads:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="l2i_tf-preload")
            _preloads[handler.key] = pool.submit(handler.load_warm)
            pool.shutdown(wait=False)


def discard_preload(handler: ExplainModelHandler) -> None:
    """Drop what :func:`preload` loaded for ``handler`` and no ``load_model`` took (a pipeline that failed first)."""
    with _preloads_lock:
        _preloads.pop(handler.key, None)


class ExplainModelHandler(ModelHandler):
    """RunInference on float32 clips [S] (one file each, any lengths) with an export's ``explain`` signature.

    Args:
        saved_model: the SavedModel folder (a version folder).
        threshold: τ passed to the signature.
        max_batch_size: at most this many clips a batch (memory: clips × samples × (N + 2) floats); Beam's
            ``BatchElements`` adapts the size within a bundle up to it.
        top_n_without_audio: the export's N when the components' audio is not wanted and ``threshold`` is the
            export's τ: the cheaper ``serving_default`` signature runs instead (the same outputs, no component audio).
        tf_threads: TensorFlow's intra-op threads in the process that loads the model (see :func:`set_tf_threads`);
            None: TensorFlow's default (one per core).
    """

    def __init__(
        self, saved_model: str, threshold: float, max_batch_size: int = 8, top_n_without_audio=None, tf_threads=None
    ):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._model_uri = str(saved_model)
        self._inference_fn = explain_batch
        self._threshold = float(threshold)
        self._top_n_without_audio = top_n_without_audio
        self._tf_threads = tf_threads

    @property
    def key(self) -> tuple:
        """What the loaded model depends on: the SavedModel, the signature warmed up, the thread setting."""
        return self._model_uri, self._threshold, self._top_n_without_audio, self._tf_threads

    def load_warm(self):
        """The SavedModel as ``tf.saved_model.load`` returns it (Keras 3 cannot load a SavedModel folder), its
        signature called once on a short silent clip: a signature's first call builds its graph function (~1 s of
        CPU), and worker threads that each make a first call at once each build it."""
        if self._tf_threads:
            set_tf_threads(self._tf_threads)
        model = tf.saved_model.load(self._model_uri)
        self.run_inference([np.zeros(WARM_UP_SAMPLES, np.float32)], model)  # a rejected clip warms up as well
        return model

    def load_model(self):
        """The model :func:`preload` started loading in this process (once), else :meth:`load_warm`'s."""
        with _preloads_lock:
            future = _preloads.pop(self.key, None)
        return self.load_warm() if future is None else future.result()

    def run_inference(self, batch, model, inference_args=None):
        args = {
            "threshold": self._threshold,
            "top_n_without_audio": self._top_n_without_audio,
            **(inference_args or {}),
        }
        return self._inference_fn(model, batch, args, self._model_uri)

    def get_num_bytes(self, batch) -> int:
        """The clips' bytes (the base class pickles the whole batch to count them)."""
        return sum(np.asarray(clip).nbytes for clip in batch)

    def get_metrics_namespace(self) -> str:
        return "l2i_tf_explain"
