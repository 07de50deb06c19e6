"""The TF Serving REST client of an export (what ``l2i-tf request`` runs)."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request


def predict_url(url: str) -> str:
    """``http://host:8501/v1/models/l2i`` (optionally ``/versions/N``, optionally ``:predict``) -> the predict URL."""
    url = url.rstrip("/")
    if not re.match(r"^https?://[^/]+/v1/models/[^/:]+(/versions/\d+)?(:predict)?$", url):
        raise ValueError(f"{url!r} is not a TF Serving model URL like http://localhost:8501/v1/models/l2i")
    return url if url.endswith(":predict") else url + ":predict"


def rest_explain_wav(url: str, wav_files: list[bytes], timeout: float = 120.0) -> list[dict]:
    """POST WAV files to the ``explain_wav`` signature over TF Serving's REST API; returns one dict per file with
    ``interpretation_wav_bytes`` as bytes. Raises ``ConnectionError`` with the server's error text."""
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
