"""The real Cog HTTP server (coglet) on predict.py, driven over HTTP as Replicate and `cog predict` drive it.

The server runs in a subprocess with the schema `cog build` would bake in, on a tiny
random-weight model named by PNP_WEIGHTS.
"""

import io
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from PIL import Image

from cog_server import FAST, FORM_ORDER, CogServer, data_uri, decode_data_uri, sample_photo, write_schema
from pnp.config import MAX_RESOLUTION, MAX_SAMPLING_STEPS, MIN_RESOLUTION, NEGATIVE_SCHEDULES
from pnp.outputs import OUTPUT_FORMATS

SERVER_ENV = {"PNP_DEVICE": "cpu", "PNP_DTYPE": "float32", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def schema_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cog-schema")
    write_schema(folder)
    return folder


def start_server(folder, schema_folder, env):
    """A server in ``folder`` (its working directory) with the generated schema."""
    shutil.copytree(schema_folder / ".cog", folder / ".cog")
    return CogServer(folder, {**SERVER_ENV, **env})


@pytest.fixture(scope="module")
def server(tmp_path_factory, schema_folder, tiny_model_dir):
    folder = tmp_path_factory.mktemp("cog-server")
    # The worker's temporary files (the outputs) go here, where the tests can look at them.
    (folder / "tmp").mkdir()
    running = start_server(folder, schema_folder, {"PNP_WEIGHTS": str(tiny_model_dir), "TMPDIR": str(folder / "tmp")})
    try:
        health = running.wait_for_setup()
        assert health["status"] == "READY", running.log()
        yield running
    finally:
        running.stop()


@pytest.fixture
def photo():
    return sample_photo()


def decoded_images(outputs):
    images = []
    for uri in outputs:
        media_type, data = decode_data_uri(uri)
        image = Image.open(io.BytesIO(data))
        image.load()
        images.append((media_type, image))
    return images


def test_setup_is_ready_and_logged(server, tiny_model_dir):
    assert requests.get(f"{server.url}/health-check", timeout=10).json()["status"] == "READY"
    # From the server's own log: coglet's health-check sometimes drops the last setup lines.
    assert f"Loaded {tiny_model_dir} on cpu as float32 in " in server.log()


def test_openapi_lists_every_input_in_form_order(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    components = schema["components"]["schemas"]
    inputs = components["Input"]["properties"]
    assert sorted(inputs, key=lambda name: inputs[name]["x-order"]) == FORM_ORDER
    assert "required" not in components["Input"]

    def choices(name):
        [ref] = inputs[name]["allOf"]
        return components[ref["$ref"].rpartition("/")[2]]["enum"]

    for name, field in inputs.items():
        assert len(field["description"]) > 60, name
        assert ("default" in field) != (name in ("input_image", "seed", "num_inversion_steps")), name
        if field.get("type") in ("integer", "number"):
            assert "minimum" in field and "maximum" in field, name
    assert inputs["input_image"]["format"] == "uri" and inputs["seed"]["nullable"]
    assert inputs["num_inversion_steps"]["nullable"]
    assert inputs["num_inference_steps"]["maximum"] == MAX_SAMPLING_STEPS
    assert choices("negative_prompt_schedule") == list(NEGATIVE_SCHEDULES)
    assert choices("output_format") == list(OUTPUT_FORMATS)
    assert choices("resolution") == list(range(MIN_RESOLUTION, MAX_RESOLUTION + 1, 64))
    assert components["Output"] == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def test_an_image_sent_as_data_uri_is_translated(server, photo):
    inputs = {"input_image": data_uri(photo), "translation_prompts": "a cat; a dog", "output_format": "webp", **FAST}
    response = server.predict(inputs)
    assert response.status_code == 200
    prediction = response.json()
    assert prediction["status"] == "succeeded", prediction.get("error")
    images = decoded_images(prediction["output"])
    assert [(media_type, image.format, image.size) for media_type, image in images] == [
        ("image/webp", "WEBP", (256, 128))] * 2
    metrics = prediction["metrics"]
    assert metrics["unet_rows"] > 0 and metrics["inversion_s"] > 0 and metrics["translation_s"] > 0
    assert "inversion:" in prediction["logs"] and "translation:" in prediction["logs"]


def test_generation_mode_returns_the_source_first(server):
    inputs = {"generation_prompt": "a house", "translation_prompts": "a castle", "seed": 5, "output_format": "jpg",
              **FAST}
    prediction = server.predict(inputs).json()
    assert prediction["status"] == "succeeded", prediction.get("error")
    images = decoded_images(prediction["output"])
    assert [(media_type, image.size) for media_type, image in images] == [("image/jpeg", (128, 128))] * 2
    assert "Generating the source image with seed 5" in prediction["logs"]


@pytest.mark.parametrize(
    "name, value",
    [("scale", 60), ("feature_injection_threshold", 1.5), ("num_inference_steps", 0), ("seed", -1),
     ("resolution", 500), ("output_format", "gif"), ("negative_prompt_schedule", "cubic")],
)
def test_values_outside_the_schema_are_answered_422(server, name, value):
    response = server.predict({"generation_prompt": "a house", name: value})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "input", name]]


def test_a_file_that_is_not_an_image_fails_readably(server):
    inputs = {"input_image": "data:text/plain;base64,aGVsbG8=", **FAST}
    prediction = server.predict(inputs).json()
    assert prediction["status"] == "failed"
    assert "input_image: " in prediction["error"] and "is not a readable image" in prediction["error"]


def test_a_request_without_source_fails_readably(server):
    prediction = server.predict(FAST).json()
    assert prediction["status"] == "failed"
    assert "input_image: give an input image or a generation prompt" in prediction["error"]


class WebhookReceiver:
    """Collects the prediction updates the server POSTs to a webhook."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/webhook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for(self, condition, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(condition(update) for update in list(self.received)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"no such webhook update; last: {self.received[-1:]}")

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_a_cancelled_prediction_is_followed_by_a_successful_one(server, photo):
    inputs = {"input_image": data_uri(photo), "translation_prompts": "a cat; a dog", **FAST}
    before = server.predict(inputs).json()
    assert before["status"] == "succeeded", before.get("error")

    webhook = WebhookReceiver()
    try:
        # Slow enough (1000 inversion steps) to be cancelled in the middle of the inversion.
        slow = {**inputs, "num_inference_steps": 50, "num_inversion_steps": 1000}
        started = requests.put(
            f"{server.url}/predictions/cancel-me",
            json={"input": slow, "webhook": webhook.url, "webhook_events_filter": ["start", "logs", "completed"]},
            headers={"Prefer": "respond-async"}, timeout=10,
        )
        assert started.status_code == 202
        webhook.wait_for(lambda update: "inversion:" in (update.get("logs") or ""))
        assert requests.post(f"{server.url}/predictions/cancel-me/cancel", timeout=10).status_code == 200
        webhook.wait_for(lambda update: update["status"] == "canceled")
    finally:
        webhook.stop()

    after = server.predict(inputs).json()
    assert after["status"] == "succeeded", after.get("error")
    assert [decode_data_uri(uri) for uri in after["output"]] == [decode_data_uri(uri) for uri in before["output"]]
    # Only the latest prediction's outputs remain on the server's disk.
    leftovers = [p.name for p in (server.folder / "tmp").iterdir() if p.name.startswith("pnp-outputs-")]
    assert len(leftovers) == 1


def test_missing_weights_fail_setup_with_the_message_from_setup(tmp_path, schema_folder):
    missing = tmp_path / "no-weights-here"
    failing = start_server(tmp_path, schema_folder, {"PNP_WEIGHTS": str(missing)})
    try:
        health = failing.wait_for_setup()
        assert health["status"] == "SETUP_FAILED"
        assert f"PNP_WEIGHTS={missing} is not a folder" in health["setup"]["logs"]
        assert failing.predict({"generation_prompt": "a house"}).status_code == 503
    finally:
        failing.stop()
    assert not failing.group_alive()  # the worker went with the server

