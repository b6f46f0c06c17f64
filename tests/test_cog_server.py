"""The real Cog HTTP server (coglet) on predict.py, driven over HTTP as Replicate and `cog predict` drive it.

The server runs in a subprocess with the schema `cog build` would bake in, on a tiny
random-weight model named by PNP_WEIGHTS.
"""

import base64
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from cog_outputs import PREFIX
from pnp.config import MAX_RESOLUTION, MAX_SAMPLING_STEPS, MIN_RESOLUTION, NEGATIVE_SCHEDULES
from pnp.outputs import OUTPUT_FORMATS
from support.cog_server import FAST, FORM_ORDER, CogServer, data_uri, decode_data_uri, sample_photo, write_schema
from support.local_http import LocalServer, QuietHandler
from support.models import safetensors_bytes, save_random_lora

SERVER_ENV = {"PNP_DEVICE": "cpu", "PNP_DTYPE": "float32", "HF_HUB_OFFLINE": "1"}
# coglet 0.23.1 writes "Prediction failed: " twice before an exception from predict(): predict_worker
# (cog's crates/coglet-python/src/predictor.rs) wraps it as PredictionError::Failed("Prediction failed: ..."),
# whose Display (crates/coglet/src/predictor.rs) adds the words again. Pinned: a Cog upgrade that changes it shows here.
PREDICT_ERROR = "Prediction failed: Prediction failed: "
# Errors raised while coglet fetches or decodes a file input, before predict() runs (cog's
# input.rs prepare_input, mapped to PredictionError::InvalidInput): predict.py cannot word them.
COG_INPUT_ERROR = "Input validation error: "
REFUSED = (
    "ImageError: input_image: only a file the request brings is read: an upload, a data: URI or an "
    "http(s) URL, not a path on the server"
)


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


class FileServer:
    """A web server on 127.0.0.1 for URL inputs: ``files`` by path, 404 otherwise; /slow.png, which sends
    its 3 bytes one per ``slow_delay_s`` and sets ``last_byte`` just before the last one; and /bomb.png, which
    sends ``bomb`` gzip-encoded (Content-Encoding: gzip)."""

    slow_delay_s = 1.0

    def __init__(self) -> None:
        self.files = {}
        self.first_byte, self.last_byte = threading.Event(), threading.Event()
        self.bomb = b""
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                if self.path == "/slow.png":
                    return server.send_slowly(self)
                if self.path == "/bomb.png":
                    return server.send_bomb(self)
                data = server.files.get(self.path.partition("?")[0])
                if data is None:
                    return self.send_error(404)
                self.send_body(data)

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def send_slowly(self, handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "3")
        handler.end_headers()
        handler.wfile.write(b"x")
        handler.wfile.flush()
        self.first_byte.set()
        time.sleep(self.slow_delay_s)
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(self.slow_delay_s)
        self.last_byte.set()  # before the byte is written: no download can end before it is set
        handler.wfile.write(b"x")

    def send_bomb(self, handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(self.bomb)))
        handler.end_headers()
        handler.wfile.write(self.bomb)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def web():
    files = FileServer()
    yield files
    files.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    assert f"Loaded {tiny_model_dir} (PnPPipeline, 128 px by default) on cpu as float32 in " in server.log()


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
        assert ("default" in field) != (name in ("input_image", "seed", "num_inversion_steps", "lora_weights")), name
        if field.get("type") in ("integer", "number"):
            assert "minimum" in field and "maximum" in field, name
    assert inputs["input_image"]["format"] == "uri" and inputs["seed"]["nullable"]
    assert inputs["num_inversion_steps"]["nullable"]
    assert inputs["num_inference_steps"]["maximum"] == MAX_SAMPLING_STEPS
    assert choices("negative_prompt_schedule") == list(NEGATIVE_SCHEDULES)
    assert choices("output_format") == list(OUTPUT_FORMATS)
    assert choices("resolution") == [0, *range(MIN_RESOLUTION, MAX_RESOLUTION + 1, 64)]
    assert components["Output"] == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def test_an_image_sent_as_data_uri_is_translated(server, photo):
    inputs = {"input_image": data_uri(photo), "translation_prompts": "a cat; a dog", "output_format": "webp", **FAST}
    response = server.predict(inputs)
    assert response.status_code == 200
    prediction = response.json()
    assert prediction["status"] == "succeeded", prediction.get("error")
    images = decoded_images(prediction["output"])
    assert [(media_type, image.format, image.size) for media_type, image in images] == [
        ("image/webp", "WEBP", (256, 128))
    ] * 2
    metrics = prediction["metrics"]
    assert metrics["unet_rows"] > 0 and metrics["inversion_s"] > 0 and metrics["translation_s"] > 0
    assert "inversion:" in prediction["logs"] and "translation:" in prediction["logs"]


def test_generation_mode_returns_the_source_first(server):
    inputs = {
        "generation_prompt": "a house",
        "translation_prompts": "a castle",
        "seed": 5,
        "output_format": "jpg",
        **FAST,
    }
    prediction = server.predict(inputs).json()
    assert prediction["status"] == "succeeded", prediction.get("error")
    images = decoded_images(prediction["output"])
    assert [(media_type, image.size) for media_type, image in images] == [("image/jpeg", (128, 128))] * 2
    assert "The source image is generated with seed 5" in prediction["logs"]


@pytest.mark.parametrize(
    "name, value",
    [
        ("scale", 60),
        ("feature_injection_threshold", 1.5),
        ("num_inference_steps", 0),
        ("num_inference_steps", 2.5),
        ("seed", -1),
        ("resolution", 500),
        ("output_format", "gif"),
        ("negative_prompt_schedule", "cubic"),
    ],
)
def test_values_outside_the_schema_are_answered_422(server, name, value):
    response = server.predict({"generation_prompt": "a house", name: value})
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "input", name]]


def test_whole_numbers_sent_as_floats_count_as_integers(server):
    """JSON Schema's "integer" admits 2.0, so the server passes it on; it must work as 2 for every integer input."""
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()["components"]["schemas"]

    def json_type(field):
        return field.get("type") or schema[field["allOf"][0]["$ref"].rpartition("/")[2]]["type"]

    integers = {"num_inference_steps": 2, "num_inversion_steps": 2, "seed": 3, "resolution": 128, "output_quality": 40}
    assert sorted(integers) == sorted(n for n, f in schema["Input"]["properties"].items() if json_type(f) == "integer")

    def outputs(values):
        prediction = server.predict({"generation_prompt": "a house", "output_format": "jpg", **values}).json()
        assert prediction["status"] == "succeeded", prediction.get("error")
        return prediction["metrics"]["cache_hits"], [decode_data_uri(uri) for uri in prediction["output"]]

    outputs(integers)  # the source, generated once and kept in the server's source cache
    # Both from the cache (a hit: the same settings), so the same UNet calls on the same inputs: bit for bit.
    # (A call that computes its source runs other batches, which may change the last bits: test_translate.)
    from_floats, from_integers = outputs({name: float(value) for name, value in integers.items()}), outputs(integers)
    assert from_floats == from_integers and from_integers[0] == 1


def test_paths_on_the_server_are_never_read(server, tmp_path):
    """Only files the request brings are read; the answer is the same whether a path exists or not."""
    photo = tmp_path / "photo.png"
    sample_photo().save(photo)
    # Named and placed as Cog names and places the files it makes of URLs and data URIs.
    lookalike = server.folder / "tmp" / "tmpabcdefghphoto.png"
    sample_photo().save(lookalike)
    values = ["/etc/passwd", str(photo), str(tmp_path / "missing.png"), str(lookalike), f"file://{photo}", "photo.png"]
    try:
        errors = {value: server.predict({"input_image": value, **FAST}).json().get("error") for value in values}
    finally:
        lookalike.unlink()
    assert errors == {value: PREDICT_ERROR + REFUSED for value in values}


def test_urls_are_fetched_and_errors_name_files_as_the_user_sent_them(server, web, photo):
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    web.files.update({"/albums/horse.png": buffer.getvalue(), "/albums/notes.txt": b"not an image"})
    fetched = server.predict({"input_image": f"{web.url}/albums/horse.png?size=large", **FAST}).json()
    assert fetched["status"] == "succeeded", fetched.get("error")
    assert decoded_images(fetched["output"])[0][1].size == (256, 128)

    errors = {
        f"{web.url}/albums/notes.txt": "notes.txt is not a readable image",
        "data:text/plain;base64,aGVsbG8=": "the uploaded file is not a readable image",
        # Python's base64 decoder drops characters outside the alphabet: the file Cog writes is empty.
        "data:image/png;base64,@@@": (
            "the uploaded file is empty: no bytes arrived (with a data: URI, check its base64)"
        ),
    }
    for value, message in errors.items():
        prediction = server.predict({"input_image": value, **FAST}).json()
        assert prediction["status"] == "failed"
        assert prediction["error"] == f"{PREDICT_ERROR}ImageError: input_image: {message}"


def test_url_schemes_in_any_case_are_urls_and_names_are_repeated_harmlessly(server, web, photo):
    """coglet hands on "HTTP://..." as text (it compares the lower-case prefix): predict() fetches it as Cog would,
    and leaves no file behind. Names from URLs lose line breaks and markup (cog_inputs.display_name)."""
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    web.files.update(
        {
            "/albums/horse.png": buffer.getvalue(),
            "/x%0D%0AInjected:%20line.png": b"text",
            "/%3Cscript%3Ealert(1)%3C%2Fscript%3E.png": b"text",
        }
    )
    host = web.url.removeprefix("http://")
    fetched = server.predict({"input_image": f"HTTP://{host}/albums/horse.png", **FAST}).json()
    assert fetched["status"] == "succeeded", fetched.get("error")
    assert decoded_images(fetched["output"])[0][1].size == (256, 128)
    errors = {
        f"Http://{host}/x%0D%0AInjected:%20line.png": "x__Injected_ line.png is not a readable image",
        f"{web.url}/%3Cscript%3Ealert(1)%3C%2Fscript%3E.png": "_script_alert(1)__script_.png is not a readable image",
        f"HTTPS://{host}/missing.png": "missing.png could not be fetched: ",
    }
    for value, message in errors.items():
        prediction = server.predict({"input_image": value, **FAST}).json()
        assert prediction["status"] == "failed"
        assert prediction["error"].startswith(f"{PREDICT_ERROR}ImageError: input_image: {message}"), prediction["error"]
        assert "\r" not in prediction["error"] and "<" not in prediction["error"]
    assert not [p.name for p in (server.folder / "tmp").iterdir() if p.is_file()]


def test_cog_words_failed_downloads_itself(server, web):
    """Pins coglet 0.23.1: fetch and decode failures end the prediction before predict() runs, in Cog's words,
    without the input's name (docs/cog.md: "Files and URLs"). A Cog upgrade that changes them fails here."""
    refused = f"http://127.0.0.1:{closed_port()}/horse.png"
    errors = {
        f"{web.url}/missing.png": f"404 Client Error: Not Found for url: {web.url}/missing.png",
        "data:image/png;base64,abc": "Incorrect padding",
    }
    for value, message in errors.items():
        prediction = server.predict({"input_image": value, **FAST}).json()
        assert (prediction["status"], prediction["error"]) == ("failed", COG_INPUT_ERROR + message)
    prediction = server.predict({"input_image": refused, **FAST}).json()
    assert prediction["status"] == "failed"
    assert prediction["error"].startswith(COG_INPUT_ERROR + "HTTPConnectionPool(host='127.0.0.1'")
    assert "Connection refused" in prediction["error"]


def test_a_request_without_source_fails_readably(server):
    prediction = server.predict(FAST).json()
    assert prediction["status"] == "failed"
    assert prediction["error"] == PREDICT_ERROR + "ConfigError: input_image: give an input image or a generation prompt"


class WebhookReceiver:
    """Collects the prediction updates the server POSTs to a webhook."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(QuietHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

        self.server = LocalServer(Handler)
        self.url = f"{self.server.url}/webhook"

    def wait_for(self, condition, timeout_s=120):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(condition(update) for update in list(self.received)):
                return
            time.sleep(0.05)
        raise TimeoutError(f"no such webhook update; last: {self.received[-1:]}")

    def stop(self) -> None:
        self.server.stop()


def test_a_cancelled_prediction_is_followed_by_a_successful_one(server, photo):
    inputs = {"input_image": data_uri(photo), "translation_prompts": "a cat; a dog", **FAST}
    server.predict(inputs)  # the source, inverted once and kept in the server's source cache
    # This prediction and the one after the cancel both take their source from the cache, so they
    # run the same UNet calls on the same inputs and must agree bit for bit.
    before = server.predict(inputs).json()
    assert before["status"] == "succeeded", before.get("error")

    webhook = WebhookReceiver()
    try:
        # Slow enough (1000 inversion steps) to be cancelled in the middle of the inversion.
        slow = {**inputs, "num_inference_steps": 50, "num_inversion_steps": 1000}
        started = server.start(
            "cancel-me",
            {"input": slow, "webhook": webhook.url, "webhook_events_filter": ["start", "logs", "completed"]},
        )
        assert started.status_code == 202
        webhook.wait_for(lambda update: "inversion:" in (update.get("logs") or ""))
        assert requests.post(f"{server.url}/predictions/cancel-me/cancel", timeout=10).status_code == 200
        webhook.wait_for(lambda update: update["status"] == "canceled")
    finally:
        webhook.stop()

    after = server.predict(inputs).json()
    assert after["status"] == "succeeded", after.get("error")
    assert before["metrics"]["cache_hits"] == after["metrics"]["cache_hits"] == 1
    assert [decode_data_uri(uri) for uri in after["output"]] == [decode_data_uri(uri) for uri in before["output"]]
    # Only the latest prediction's outputs remain on the server's disk.
    leftovers = [p.name for p in (server.folder / "tmp").iterdir() if p.name.startswith("pnp-outputs-")]
    assert len(leftovers) == 1


def test_a_slow_download_holds_the_slot_and_cancelling_waits_for_it(server, web):
    """Pins coglet 0.23.1: the worker fetches URL inputs before predict() runs, without a total time limit,
    and a cancel takes effect only once the download has ended (docs/cog.md: "Slow URLs")."""
    webhook = WebhookReceiver()
    try:
        started = server.start(
            "slow-url",
            {
                "input": {"input_image": f"{web.url}/slow.png", **FAST},
                "webhook": webhook.url,
                "webhook_events_filter": ["completed"],
            },
        )
        assert started.status_code == 202
        assert web.first_byte.wait(timeout=30)
        busy = requests.post(f"{server.url}/predictions", json={"input": FAST}, timeout=10)
        assert (busy.status_code, busy.json()) == (
            409,
            {"error": "At capacity - all prediction slots busy", "status": "failed"},
        )
        assert requests.post(f"{server.url}/predictions/slow-url/cancel", timeout=10).status_code == 200
        webhook.wait_for(lambda update: update["status"] == "canceled")
        assert web.last_byte.is_set()  # the cancel waited for the whole download
    finally:
        webhook.stop()


def test_missing_weights_fail_setup_with_the_message_from_setup(tmp_path, schema_folder):
    missing = tmp_path / "no-weights-here"
    failing = start_server(tmp_path, schema_folder, {"PNP_WEIGHTS": str(missing)})
    try:
        health = failing.wait_for_setup()
        assert health["status"] == "SETUP_FAILED"
        assert f"PNP_WEIGHTS={missing} is not a folder" in health["setup"]["logs"]
        refused = failing.predict({"generation_prompt": "a house"})
        # Cog's words for every state but READY (coglet service.rs submit_prediction): docs/cog.md, "Failed setup".
        assert (refused.status_code, refused.json()) == (
            503,
            {
                "error": "Setup has not finished yet. Wait until it has finished, or GET /health-check for status.",
                "status": "failed",
            },
        )
    finally:
        failing.stop()
    assert not failing.group_alive()  # the worker went with the server


# --- LoRA adapters ---


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """The bytes of a LoRA adapter for the server's tiny model, and of one for another architecture (tiny SDXL)."""
    folder = tmp_path_factory.mktemp("adapters")
    return (
        save_random_lora("tiny", folder / "own").read_bytes(),
        save_random_lora("tiny-sdxl", folder / "other").read_bytes(),
    )


def test_lora_weights_are_known_by_their_content_and_refused_in_words_that_help(server, web, adapters):
    """An upload (Cog names it file.bin) or a URL of any name is an adapter if it holds safetensors; errors name the
    file as it was sent, never the server's temporary path, and say why in full."""
    own, other = adapters
    web.files.update(
        {
            "/adapters/download": own,
            "/adapters/style.safetensors": own,
            "/adapters/xl.safetensors": other,
            "/adapters/odd.safetensors": safetensors_bytes(
                {"a.lora_A.weight": {"dtype": "XX", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)
            ),
        }
    )
    inputs = {"generation_prompt": "a house", "translation_prompts": "a cat", "seed": 5, "lora_scale": 1.0, **FAST}

    def outputs(lora_weights=None):
        prediction = server.predict({**inputs, **({"lora_weights": lora_weights} if lora_weights else {})}).json()
        assert prediction["status"] == "succeeded", prediction.get("error")
        return [
            (media_type, np.asarray(image, dtype=int)) for media_type, image in decoded_images(prediction["output"])
        ]

    def same(ours, theirs):
        """Each prediction loads a new copy of the adapter's weights (tests/helpers.py's INSTANCE_TOLERANCE)."""
        return [(m, a.shape) for m, a in ours] == [(m, a.shape) for m, a in theirs] and all(
            np.abs(a - b).max() <= 1 for (_, a), (_, b) in zip(ours, theirs)
        )

    uploaded = outputs(f"data:application/octet-stream;base64,{base64.b64encode(own).decode()}")
    assert not same(uploaded, outputs())  # applied
    assert same(uploaded, outputs(f"{web.url}/adapters/style.safetensors"))
    assert same(uploaded, outputs(f"{web.url}/adapters/download?id=3"))

    def error(lora_weights):
        prediction = server.predict({**inputs, "lora_weights": lora_weights}).json()
        assert prediction["status"] == "failed"
        assert str(server.folder) not in prediction["error"] and "tmp" not in prediction["error"]
        return prediction["error"].removeprefix(PREDICT_ERROR + "ConfigError: lora_weights: ")

    assert error("data:application/octet-stream;base64,bm90IGFuIGFkYXB0ZXI=") == (
        "the uploaded file is not a safetensors file (it does not start with a safetensors header); "
        "send the LoRA adapter as a .safetensors file"
    )
    assert re.fullmatch(
        r"xl\.safetensors cannot be loaded into this model as a LoRA adapter \(\d+ of its layers "
        r"have other shapes than this model's, e\.g\. \S+: \[4, 64\] in the adapter, \[4, 32\] in the "
        r"model; it was made for another architecture\)",
        error(f"{web.url}/adapters/xl.safetensors"),
    )
    assert error(f"{web.url}/adapters/odd.safetensors").startswith(
        "odd.safetensors cannot be loaded into this model as a LoRA adapter ("
    )


# --- coglet 0.23.1's own behaviour, which the predictor cannot change (docs/operations.md) ---


def test_null_for_an_optional_input_is_refused_though_the_schema_says_nullable(server):
    """Pins coglet 0.23.1: it checks inputs against the schema as plain JSON Schema, which knows no OpenAPI
    `nullable`, so `null` fails the field's type. Leaving the input out is the way to leave it blank (docs/cog.md)."""
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()["components"]["schemas"]["Input"]
    types = {"seed": "integer", "num_inversion_steps": "integer", "input_image": "string", "lora_weights": "string"}
    for name, json_type in types.items():
        assert schema["properties"][name]["nullable"] is True
        response = server.predict({"generation_prompt": "a house", **FAST, name: None})
        assert (response.status_code, response.json()) == (
            422,
            {
                "detail": [
                    {"loc": ["body", "input", name], "msg": f'null is not of type "{json_type}"', "type": "value_error"}
                ]
            },
        )


def test_gzip_encoded_downloads_are_inflated_to_disk_without_a_limit(server, web):
    """Pins coglet 0.23.1 (cog.types copies a download to disk through requests, which inflates Content-Encoding:
    gzip): 33 KB sent become a 32 MiB file before predict() runs; 1 MB sent would become 1 GiB (docs/operations.md).
    The file is looked at while a long prediction that ignores it (generation mode) runs, then cancelled."""
    inflated = 32 * 2**20
    web.bomb = gzip.compress(bytes(inflated), 9)
    slow = {"input_image": f"{web.url}/bomb.png", "generation_prompt": "a house", **FAST, "num_inference_steps": 999}
    assert server.start("gzip-bomb", {"input": slow}).status_code == 202
    written = 0
    try:
        deadline = time.monotonic() + 60
        while written < inflated and time.monotonic() < deadline:
            written = max([p.stat().st_size for p in (server.folder / "tmp").glob("tmp*bomb.png")], default=0)
            time.sleep(0.02)
    finally:
        assert requests.post(f"{server.url}/predictions/gzip-bomb/cancel", timeout=10).status_code == 200
    assert written == inflated and written > 1000 * len(web.bomb)
    deadline = time.monotonic() + 60
    while list((server.folder / "tmp").glob("tmp*bomb.png")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((server.folder / "tmp").glob("tmp*bomb.png"))  # Cog deletes it when the prediction ends


def start_own_server(folder, schema_folder, model_dir):
    """A server of one test's own (for one that breaks it), ready, with its temporary folder in ``folder``/tmp."""
    (folder / "tmp").mkdir(exist_ok=True)
    running = start_server(folder, schema_folder, {"PNP_WEIGHTS": str(model_dir), "TMPDIR": str(folder / "tmp")})
    health = running.wait_for_setup()
    assert health["status"] == "READY", running.log()
    return running


def output_folders(server) -> list[str]:
    return sorted(p.name for p in (server.folder / "tmp").iterdir() if p.name.startswith(PREFIX))


def wait_until(condition, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_killed_worker_takes_its_outputs_along_and_is_never_replaced(tmp_path, schema_folder, tiny_model_dir):
    """kill -9 of the worker (as the kernel's out-of-memory killer does): its output folder goes at once
    (cog_outputs' watcher). Pins coglet 0.23.1: the server starts no new worker; health stays UNHEALTHY and every
    later request is refused, 409 "At capacity", until the server is restarted (docs/operations.md). The Cog guide's
    retry-on-409 recipes and docs/operations.md's liveness probe are run against it."""
    killed = start_own_server(tmp_path, schema_folder, tiny_model_dir)
    try:
        done = killed.predict({"generation_prompt": "a house", **FAST}).json()
        assert done["status"] == "succeeded", done.get("error")
        # The shell recipe's health test (run below on the dead server) holds for a healthy one.
        [healthy] = [line for line in cog_guide_block("Retry on 409", "bash").splitlines() if "health-check" in line]
        healthy = healthy.replace("http://127.0.0.1:5000", killed.url).replace(" || break", "")
        assert subprocess.run(["bash", "-c", healthy], timeout=30).returncode == 0
        probe = doc_block("docs/operations.md", "a command can.", "bash").replace("http://127.0.0.1:5000", killed.url)
        assert subprocess.run(["bash", "-c", probe], timeout=30).returncode == 0
        [folder] = output_folders(killed)
        worker = int(folder.removeprefix(PREFIX).partition("-")[0])
        assert Path(f"/proc/{worker}/stat").read_text().split(") ")[1].split()[1] == str(killed.process.pid)  # ppid
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: not output_folders(killed))

        def health():
            return requests.get(f"{killed.url}/health-check", timeout=10).json()["status"]

        assert wait_until(lambda: health() == "UNHEALTHY")
        # The first request after the kill fails on the dead worker's socket; the slot is then gone for good.
        requests.post(f"{killed.url}/predictions", json={"input": {"generation_prompt": "a house", **FAST}}, timeout=60)
        for _ in range(5):
            time.sleep(0.5)
            refused = requests.post(f"{killed.url}/predictions", json={"input": FAST}, timeout=10)
            assert (refused.status_code, refused.json()) == (
                409,
                {"error": "At capacity - all prediction slots busy", "status": "failed"},
            )
            assert health() == "UNHEALTHY"
        assert subprocess.run(["bash", "-c", probe], timeout=30).returncode == 1  # docs/operations.md's liveness probe
        # The Cog guide's retry-on-409 recipes give up at once instead of retrying for ever.
        recipe = {}
        exec(cog_guide_block("Retry on 409", "python"), recipe)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="answers 409 and its health is UNHEALTHY: restart it"):
            recipe["predict"]({"generation_prompt": "a house", **FAST}, url=killed.url)
        (tmp_path / "request.json").write_text(json.dumps({"input": {"generation_prompt": "a house", **FAST}}))
        shell = cog_guide_block("Retry on 409", "bash").replace("http://127.0.0.1:5000", killed.url)
        done = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.stdout.startswith("HTTP 409") and time.monotonic() - started < 20
    finally:
        killed.stop()


def doc_block(document: str, after: str, language: str) -> str:
    """The first ``language`` code block of ``document`` (a path in the repository) after the text ``after``."""
    text = (Path(__file__).resolve().parents[1] / document).read_text()
    rest = text[text.index(after) :]
    start = rest.index(f"```{language}\n") + len(f"```{language}\n")
    return rest[start : rest.index("```", start)]


def cog_guide_block(after: str, language: str) -> str:
    return doc_block("docs/cog.md", after, language)


def test_a_prediction_id_of_256_characters_leaves_the_slot_busy_for_good(tmp_path, schema_folder, tiny_model_dir):
    """Pins coglet 0.23.1: it makes a folder named after the prediction id, which fails for 256 characters or more
    (Linux's limit on a name is 255 bytes); the slot is never released: health BUSY, every later request 409
    (docs/operations.md). The same server checks that output folders of ended workers go at setup, and that
    stopping the server takes its worker's outputs along."""
    (tmp_path / "tmp").mkdir()
    ended = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    planted = [f"{PREFIX}{ended}-abcd1234", f"{PREFIX}{os.getpid()}-abcd1234", f"{PREFIX}k9nnybd8"]
    for name in planted:
        (tmp_path / "tmp" / name).mkdir()
    stuck = start_own_server(tmp_path, schema_folder, tiny_model_dir)
    try:
        # This test's own process lives on (another server, say); an older version's folder has no owner to ask.
        assert output_folders(stuck) == sorted(planted[1:])
        inputs = {"input": {"generation_prompt": "a house", **FAST}}
        done = requests.put(f"{stuck.url}/predictions/{'x' * 255}", json=inputs, timeout=60).json()
        assert done["status"] == "succeeded", done.get("error")
        [own] = set(output_folders(stuck)) - set(planted)
        # coglet frees the slot just after it answers: a request sent at once can still meet 409.
        assert wait_until(lambda: requests.get(f"{stuck.url}/health-check", timeout=10).json()["status"] == "READY")

        failed = requests.put(f"{stuck.url}/predictions/{'x' * 256}", json=inputs, timeout=60)
        assert (failed.status_code, failed.json()["error"]) == (
            200,
            "Failed to create output dir: File name too long (os error 36)",
        )
        for _ in range(5):
            time.sleep(0.5)
            assert requests.get(f"{stuck.url}/health-check", timeout=10).json()["status"] == "BUSY"
            refused = requests.post(f"{stuck.url}/predictions", json=inputs, timeout=10)
            assert refused.status_code == 409
    finally:
        stuck.stop()
    assert wait_until(lambda: own not in output_folders(stuck))
    assert output_folders(stuck) == sorted(planted[1:])
