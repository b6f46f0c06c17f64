"""Running the real Cog HTTP server (coglet, from PyPI) on predict.py in a subprocess, for tests;
and what the Cog test modules share: the form's input order, fast inputs, a sample photo.

The server reads its OpenAPI schema from .cog/openapi_schema.json under its working directory,
so each server runs in its own folder holding the schema that scripts/openapi_schema.py writes.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from support.paths import ROOT

PORT_LINE = re.compile(r"Starting coglet server on 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 120
# The order of the web form, as the tracker specifies it.
FORM_ORDER = [
    "input_image",
    "generation_prompt",
    "translation_prompts",
    "scale",
    "feature_injection_threshold",
    "attention_injection_threshold",
    "negative_prompt",
    "negative_prompt_alpha",
    "negative_prompt_schedule",
    "num_inference_steps",
    "num_inversion_steps",
    "generation_scale",
    "seed",
    "resolution",
    "output_format",
    "output_quality",
    "disable_safety_checker",
    "feature_maps",
    "lora_weights",
    "lora_scale",
]
# Inputs that make a prediction on the tiny model take a fraction of a second.
FAST = {"num_inference_steps": 2, "num_inversion_steps": 2, "resolution": 128}


def write_schema(folder: Path) -> Path:
    """Generate predict.py's schema into ``folder``/.cog/openapi_schema.json (see scripts/openapi_schema.py)."""
    out = folder / ".cog" / "openapi_schema.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "openapi_schema.py"), "--out", str(out)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"writing the Cog schema failed: {done.stderr.strip()}")
    return out


class CogServer:
    """``python -m cog.server.http`` on 127.0.0.1 and a free port, serving ``predict.py:Predictor``.

    ``folder`` must hold .cog/openapi_schema.json; the server's log goes to ``folder``/server.log.
    """

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.log_path = folder / "server.log"
        env = {
            **os.environ,
            **env,
            "PORT": "0",
            "COG_PREDICT_TYPE_STUB": f"{ROOT / 'predict.py'}:Predictor",
            # The worker is started as a bare `python`: it must be this environment's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self._wait_for_port()}"

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = PORT_LINE.search(self.log())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"the Cog server exited with status {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"the Cog server did not report its port:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_setup(self) -> dict:
        """Poll /health-check until setup has ended (READY or SETUP_FAILED); returns the last answer."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            health = requests.get(f"{self.url}/health-check", timeout=10).json()
            if health["status"] not in ("STARTING", "UNKNOWN"):
                return health
            time.sleep(0.2)
        raise TimeoutError(f"setup did not finish in {START_TIMEOUT_S} s:\n{self.log()}")

    def predict(self, inputs: dict, **kwargs) -> requests.Response:
        """POST /predictions, retrying while the single slot is still busy (409) from a previous prediction."""
        return self._when_free(
            lambda: requests.post(f"{self.url}/predictions", json={"input": inputs}, timeout=600, **kwargs)
        )

    def start(self, prediction_id: str, body: dict) -> requests.Response:
        """PUT /predictions/<id> asynchronously (``body`` holds input, webhook, ...), retrying as ``predict`` does."""
        return self._when_free(
            lambda: requests.put(
                f"{self.url}/predictions/{prediction_id}", json=body, headers={"Prefer": "respond-async"}, timeout=10
            )
        )

    @staticmethod
    def _when_free(send) -> requests.Response:
        # The slot can stay busy a few milliseconds after a response (docs/cog.md, "One prediction at a time").
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            response = send()
            if response.status_code != 409 or time.monotonic() > deadline:
                return response
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server and its worker (the whole process group), and wait until both are gone."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # The worker outlives the server briefly (it exits, then waits to be reaped by init).
        deadline = time.monotonic() + 20
        while self.group_alive():
            if time.monotonic() > deadline:
                os.killpg(self.process.pid, signal.SIGKILL)
                time.sleep(5)
                if self.group_alive():
                    raise RuntimeError(f"processes of group {self.process.pid} survive SIGKILL")
            time.sleep(0.1)

    def group_alive(self) -> bool:
        """Whether any process of the server's process group still exists."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def data_uri(image: Image.Image, image_format: str = "PNG") -> str:
    """An image as a data URI, the way `cog predict -i input_image=@file` sends it."""
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 data URI."""
    header, _, payload = uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), header[:80]
    return header[len("data:") : -len(";base64")], base64.b64decode(payload)


def sample_photo() -> Image.Image:
    """A 256x128 RGB image with gradients and a square: an input whose size the outputs must keep."""
    y, x = np.mgrid[0:128, 0:256]
    pixels = np.stack([x, y * 2, np.full_like(x, 90)], axis=-1)
    pixels[30:90, 100:180] = (250, 30, 30)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")
