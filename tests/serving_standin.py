"""A minimal stand-in for TF Serving's REST predict API (tests only): one SavedModel on 127.0.0.1, a random port.

Implements what ``l2i-tf request`` and the README's examples use, following TF Serving's REST contract:
``GET /v1/models/<name>`` (status) and ``POST /v1/models/<name>[/versions/<v>]:predict`` with
``{"signature_name": ..., "instances": [...]}`` (row format -> ``{"predictions": [...]}``) or
``{"inputs": ...}`` (columnar -> ``{"outputs": ...}``). DT_STRING inputs may be ``{"b64": "..."}``; string
outputs whose names end in ``_bytes`` are returned as ``{"b64": "..."}``, other strings as UTF-8 text. Errors are
``{"error": "..."}`` with HTTP 400 (bad request, failed assertion) or 404 (unknown model or signature).
Only ``tensorflow`` and the standard library are used, as a serving process would.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import tensorflow as tf

_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_STATUS = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?$")


def _decode(value):
    """JSON value -> nested lists with ``{"b64": ...}`` replaced by bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise ValueError(f"unexpected object in a tensor value: keys {sorted(value)}")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _encode(name: str, value):
    """numpy value -> JSON value (strings: ``{"b64"}`` if ``name`` ends in ``_bytes``, else UTF-8 text)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_encode(name, v) for v in value]
        return value.tolist()
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")} if name.endswith("_bytes") else value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


class StandIn:
    """Serve ``saved_model`` as model ``name`` (version = its folder name) until :meth:`close`.

    Usage: ``with StandIn(path, "l2i") as server: requests to server.url + "/v1/models/l2i:predict"``.
    """

    def __init__(self, saved_model: str | Path, name: str = "l2i"):
        self.path = Path(saved_model)
        self.name = name
        self.version = self.path.name
        self.model = tf.saved_model.load(str(self.path))
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def predict(self, request: dict) -> dict:
        """The predict API on a parsed request body; raises ``KeyError`` (404) or ``ValueError`` (400)."""
        signature_name = request.get("signature_name", "serving_default")
        if signature_name not in self.model.signatures:
            raise KeyError(f'Serving signature name: "{signature_name}" not found in signature def')
        fn = self.model.signatures[signature_name]
        specs = fn.structured_input_signature[1]
        if ("instances" in request) == ("inputs" in request):
            raise ValueError('the request must hold exactly one of "instances" (row format) or "inputs" (columnar)')
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list) or not rows:
                raise ValueError('"instances" must be a non-empty list')
            if all(isinstance(r, dict) and not set(r) == {"b64"} for r in rows):
                columns = {key: [_decode(r[key]) for r in rows] for key in specs}
            elif len(specs) == 1:
                columns = {next(iter(specs)): [_decode(r) for r in rows]}
            else:
                raise ValueError(f"the signature has inputs {sorted(specs)}: each instance must be an object")
        else:
            inputs = request["inputs"]
            if isinstance(inputs, dict) and not set(inputs) == {"b64"}:
                columns = {key: _decode(value) for key, value in inputs.items()}
            elif len(specs) == 1:
                columns = {next(iter(specs)): _decode(inputs)}
            else:
                raise ValueError(f'the signature has inputs {sorted(specs)}: "inputs" must be an object')
        missing = set(specs) - set(columns)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)} for signature {signature_name!r}")
        tensors = {key: tf.constant(columns[key], dtype=specs[key].dtype) for key in specs}
        try:
            outputs = {key: value.numpy() for key, value in fn(**tensors).items()}
        except tf.errors.OpError as e:
            raise ValueError(e.message) from None
        if "instances" in request:
            n = len(request["instances"])
            rows = [{key: _encode(key, value[i]) for key, value in outputs.items()} for i in range(n)]
            if len(outputs) == 1:
                rows = [next(iter(r.values())) for r in rows]
            return {"predictions": rows}
        encoded = {key: _encode(key, value) for key, value in outputs.items()}
        return {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded}


class _Handler(BaseHTTPRequestHandler):
    standin: StandIn

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _model_matches(self, match) -> bool:
        return match.group("name") == self.standin.name and match.group("version") in (None, self.standin.version)

    def do_GET(self):
        match = _STATUS.match(self.path)
        if not match or not self._model_matches(match):
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        status = {"version": self.standin.version, "state": "AVAILABLE", "status": {"error_code": "OK"}}
        return self._reply(200, {"model_version_status": [status]})

    def do_POST(self):
        match = _PREDICT.match(self.path)
        if not match or not self._model_matches(match):
            return self._reply(404, {"error": f"Servable not found for request: {self.path}"})
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            return self._reply(200, self.standin.predict(request))
        except KeyError as e:
            return self._reply(404, {"error": e.args[0]})
        except (ValueError, TypeError) as e:
            return self._reply(400, {"error": str(e)})
