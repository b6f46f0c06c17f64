"""A stand-in for Replicate's prediction API on 127.0.0.1, running each prediction on a local Cog server.

It speaks the part of the API the official client uses to run a model: create a prediction
(POST /v1/predictions with a version, or POST /v1/models/OWNER/NAME/predictions), get it
(GET /v1/predictions/ID, polled until it is done), and it serves the outputs as files at http
URLs, as Replicate does. Requests without the expected bearer token get 401.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time

import requests

from support.local_http import LocalServer, QuietHandler

TOKEN = "r8_fake_token_for_tests"
_MODEL_PATH = re.compile(r"^/v1/models/([^/]+)/([^/]+)/predictions$")


class FakeReplicate:
    """The fake API; ``cog_url`` is the Cog server that computes the predictions."""

    def __init__(self, cog_url: str) -> None:
        self.cog_url = cog_url
        self.predictions: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.created: list[dict] = []  # the request bodies, for the tests to inspect
        self._ids = itertools.count()
        self._lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            def do_POST(self):
                if not fake._authorized(self):
                    return self._send(401, {"detail": "Invalid token."})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                match = _MODEL_PATH.match(self.path)
                if self.path == "/v1/predictions" and "version" in body:
                    model, version = "owner/model", body["version"]
                elif match:
                    model, version = f"{match[1]}/{match[2]}", "latest"
                else:
                    return self._send(404, {"detail": "Not found."})
                self._send(201, fake._create(model, version, body))

            def do_GET(self):
                if self.path.startswith("/files/"):
                    data = fake.files.get(self.path)
                    return self._send_bytes(data) if data is not None else self._send(404, {"detail": "Not found."})
                if not fake._authorized(self):
                    return self._send(401, {"detail": "Invalid token."})
                prediction = fake.predictions.get(self.path.removeprefix("/v1/predictions/"))
                self._send(200, prediction) if prediction else self._send(404, {"detail": "Not found."})

            def _send(self, status, body):
                self.send_body(json.dumps(body).encode(), status, "application/json")

            def _send_bytes(self, data):
                self.send_body(data, 200, "image/png")

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def _authorized(self, handler) -> bool:
        return handler.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _create(self, model: str, version: str, body: dict) -> dict:
        with self._lock:
            prediction_id = f"fake{next(self._ids):04d}"
            self.created.append(body)
        prediction = {
            "id": prediction_id,
            "model": model,
            "version": version,
            "status": "starting",
            "input": body["input"],
            "output": None,
            "logs": "",
            "error": None,
            "metrics": {},
            "created_at": "2025-01-01T00:00:00Z",
            "started_at": None,
            "completed_at": None,
            "urls": {
                "get": f"{self.url}/v1/predictions/{prediction_id}",
                "cancel": f"{self.url}/v1/predictions/{prediction_id}/cancel",
            },
        }
        self.predictions[prediction_id] = prediction
        threading.Thread(target=self._run, args=(prediction,), daemon=True).start()
        return dict(prediction)

    def _run(self, prediction: dict) -> None:
        prediction["status"] = "processing"
        while True:  # one slot: wait while the Cog server is busy with another prediction
            answer = requests.post(f"{self.cog_url}/predictions", json={"input": prediction["input"]}, timeout=600)
            if answer.status_code != 409:
                break
            time.sleep(0.02)
        result = answer.json()
        if result.get("status") != "succeeded":
            prediction.update(status="failed", error=result.get("error") or answer.text)
            return
        urls = []
        for index, uri in enumerate(result["output"]):
            path = f"/files/{prediction['id']}/{index:02d}.png"
            self.files[path] = base64.b64decode(uri.partition(",")[2])
            urls.append(self.url + path)
        prediction.update(output=urls, status="succeeded")

    def stop(self) -> None:
        self.server.stop()
