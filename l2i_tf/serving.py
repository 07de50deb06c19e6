"""The TF Serving REST client of an export (what ``l2i-tf request`` runs): files -> 16-bit WAV -> ``explain_wav``."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXPLAIN_WAV_TAKES = (
    "explain_wav takes 16-bit PCM WAV files at the model's sample rate, into which this client converts any audio "
    "file libsndfile reads (wav of any encoding, aiff, flac, ogg, mp3...)"
)


class RefusedError(ConnectionError):
    """The server answered with an error (HTTP 4xx/5xx): its text."""


def predict_url(url: str) -> str:
    """``http://host:8501/v1/models/l2i`` (optionally ``/versions/N``, optionally ``:predict``) -> the predict URL."""
    url = url.rstrip("/")
    if not re.match(r"^https?://[^/]+/v1/models/[^/:]+(/versions/\d+)?(:predict)?$", url):
        raise ValueError(f"{url!r} is not a TF Serving model URL like http://localhost:8501/v1/models/l2i")
    return url if url.endswith(":predict") else url + ":predict"


def pcm16_wav(path: str | Path) -> bytes:
    """A file libsndfile reads (any wav/WAVEX encoding, aiff, flac, ogg, mp3...) -> a plain 16-bit PCM WAV at the
    same rate and channels: the only WAV ``explain_wav`` takes (TensorFlow's ``decode_wav`` reads 16-bit PCM with a
    16-byte fmt chunk, nothing else). Samples are rounded to 16 bits, ``round(x * 32768)``, the inverse of
    ``decode_wav``'s ``/ 32768``: a 16-bit file keeps its samples exactly; 24-bit, 32-bit and float files lose
    what lies below 2^-15 (-90 dB full scale), and float samples beyond ±1 are clipped (with a warning).

    :class:`~l2i_tf.data.AudioDataError` naming the file for one libsndfile cannot read (empty, corrupt,
    truncated) or that holds NaN or infinite samples."""
    from l2i_tf import data  # here, not at the top: it imports TensorFlow, which sending a request does not need

    audio, rate = data.read_audio(Path(path).read_bytes(), str(path))
    data.finite(audio, str(path))
    scaled = np.round(audio.astype(np.float64) * 32768.0)
    clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
    if clipped:
        log.warning("%s: %d sample(s) beyond ±1 clipped to the 16-bit range", path, clipped)
    pcm = np.clip(scaled, -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:  # the standard library writes exactly the plain PCM header decode_wav reads
        w.setnchannels(audio.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def rest_explain_wav(url: str, wav_files: list[bytes], timeout: float = 120.0) -> list[dict]:
    """POST WAV files to the ``explain_wav`` signature over TF Serving's REST API; returns one dict per file with
    ``interpretation_wav_bytes`` as bytes. Raises :class:`RefusedError` with the server's error text, or
    ``ConnectionError`` when the server cannot be reached or sends no reply within ``timeout`` (the URL and the
    seconds waited named)."""
    body = {
        "signature_name": "explain_wav",
        "instances": [{"audio": {"b64": base64.b64encode(w).decode("ascii")}} for w in wav_files],
    }
    target = predict_url(url)
    request = urllib.request.Request(
        target, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", "")
        except ValueError:
            message = ""
        raise RefusedError(f"{url}: HTTP {e.code}: {message or e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise ConnectionError(f"{target}: timed out after {timeout:g} s without a reply") from None
        raise ConnectionError(f"cannot reach {url}: {e.reason}") from None
    except TimeoutError:  # the connection was made, the reply did not come
        raise ConnectionError(f"{target}: timed out after {timeout:g} s without a reply") from None
    predictions = reply["predictions"]
    for p in predictions:
        p["interpretation_wav_bytes"] = base64.b64decode(p["interpretation_wav_bytes"]["b64"])
    return predictions


def explain_files(url: str, paths: list[str], timeout: float = 120.0) -> list[dict]:
    """Every file re-encoded by :func:`pcm16_wav`, then all sent in one ``explain_wav`` request; one prediction
    per file, as :func:`rest_explain_wav`.

    Every file is checked before anything is sent: one :class:`~l2i_tf.data.AudioDataError` naming each that
    cannot be. When the server refuses the batch (e.g. a file at another sample rate than the model's), the files
    are sent one at a time to find those it refuses: :class:`RefusedError` naming each, with the server's text.
    """
    from l2i_tf.data import AudioDataError

    wavs, problems = [], []
    for path in paths:
        try:
            wavs.append(pcm16_wav(path))
        except (AudioDataError, OSError) as e:
            problems.append(str(e))
    if problems:
        raise AudioDataError(f"{'; '.join(problems)} (nothing was sent; {EXPLAIN_WAV_TAKES})")
    try:
        return rest_explain_wav(url, wavs, timeout)
    except RefusedError as e:
        if len(paths) == 1:
            raise RefusedError(f"{paths[0]}: {e}") from None
        batch_error = e
    refused = []
    for path, wav in zip(paths, wavs, strict=True):
        try:
            rest_explain_wav(url, [wav], timeout)
        except RefusedError as e:
            refused.append(f"{path}: {e}")
    if not refused:  # each file alone is taken: the batch as a whole was not
        raise RefusedError(f"{batch_error} (a batch of {len(paths)} files; each alone is taken)")
    raise RefusedError(f"{'; '.join(refused)} ({len(refused)} of {len(paths)} files refused)")


def without_padding(prediction: dict) -> dict:
    """One file's prediction without the timeline rows ``explain_wav`` pads a batch's shorter files with (past the
    file's own windows: ``window_predicted_class`` -1)."""
    classes = prediction.get("window_predicted_class")
    if not classes:
        return prediction
    keep = [i for i, c in enumerate(classes) if c != -1]
    timeline = [key for key in prediction if key.startswith("window_")]  # the timeline's outputs, one row a window
    return {**prediction, **{key: [prediction[key][i] for i in keep] for key in timeline}}
