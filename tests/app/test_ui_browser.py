"""The web UI in a real browser: `python -m pnp ui --model tiny` in a subprocess, driven by Playwright and Debian's
chromium.

One app serves the whole module (starting it is most of the time); each test opens its own
page, so its session is fresh. The finished page is saved as a screenshot under the pytest
temporary folder, ``<basetemp>/screenshots0/pnp-ui.png`` (and the Features tab as
``pnp-ui-features.png``); README's screenshot is that file.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from pnp.app.form import FORM_INPUTS
from support.paths import ROOT

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own browser download is unreachable here
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 180  # importing torch, diffusers and Gradio and building the tiny model, on a busy 2-core machine
RUN_TIMEOUT_MS = 60_000  # a 2-step run at 128 px takes about 2 s; the margin is for a busy machine
VIEWPORT = {"width": 1280, "height": 900}
ADVANCED = "#advanced .label-wrap"  # the Advanced section's header, which opens and closes it


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app's URL: `python -m pnp ui --model tiny` on 127.0.0.1 and a free port, stopped as a service manager stops
    it."""
    folder = tmp_path_factory.mktemp("ui-app")
    port = _free_port()
    temp = folder / "tmp"
    temp.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        "TMPDIR": str(temp),
        "PYTHONPATH": str(ROOT),
    }
    log_path = folder / "app.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pnp",
                "ui",
                "--model",
                "tiny",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = log_path.read_text()
    # Bad input, stopped runs and the final SIGTERM print no traceback to the terminal either.
    assert f"serving on {url}" in log and "Traceback" not in log, log
    assert process.returncode == 0 and list(temp.iterdir()) == []  # stopped as by Ctrl-C: its files removed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not serve {url} within {START_TIMEOUT_S} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(app, browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(app)
    page.wait_for_selector("#run")
    yield page
    context.close()


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory) -> Path:
    """A 256x128 image: at resolution 128 it is translated at its own size, so outputs are 256x128."""
    y, x = np.mgrid[0:128, 0:256]
    pixels = np.stack([x, y * 2, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("images") / "wide.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path


def fast(page: Page, steps: int = 2) -> None:
    """Open Advanced and ask for few steps at 128 px."""
    page.click(ADVANCED)
    page.fill("#num_inference_steps input", str(steps))
    page.click("#resolution input")
    page.get_by_role("option", name="128", exact=True).click()


def upload(page: Page, path: Path) -> None:
    page.set_input_files("#input_image input[type=file]", str(path))
    page.wait_for_selector("#input_image img")


def run_and_wait(page: Page, images: int) -> list[dict]:
    """Press Run; once ``images`` outputs have loaded, each one's caption and natural size."""
    page.click("#run")
    return outputs(page, images)


def outputs(page: Page, images: int) -> list[dict]:
    """Once ``images`` outputs have loaded, each one's caption and natural size."""
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('#gallery .thumbnail-item img')];
                  return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=images,
        timeout=RUN_TIMEOUT_MS,
    )
    return page.eval_on_selector_all(
        "#gallery .thumbnail-item",
        """items => items.map(item => ({caption: item.querySelector('.caption-label').textContent.trim(),
                                         size: [item.querySelector('img').naturalWidth,
                                                item.querySelector('img').naturalHeight]}))""",
    )


def test_an_uploaded_image_into_two_prompts(page, wide_image):
    upload(page, wide_image)
    page.fill("#translation_prompts textarea", "a cat\na dog")
    fast(page)
    outputs = run_and_wait(page, 2)
    assert outputs == [{"caption": "a cat", "size": [256, 128]}, {"caption": "a dog", "size": [256, 128]}]
    assert "2 translations in" in page.inner_text("#status")

    # Each output downloads under its file name: open it, then press the preview's download button.
    page.click("#gallery .thumbnail-item >> nth=1")
    with page.expect_download() as download:
        page.click("#gallery button[aria-label='Download']")
    assert download.value.suggested_filename == "01-a-dog.png"


def test_no_source_shows_the_error_and_the_next_run_succeeds(page, wide_image):
    fast(page)
    page.click("#run")
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=RUN_TIMEOUT_MS)
    assert "input_image: give an input image or a generation prompt" in toast.inner_text()
    assert "Traceback" not in page.inner_text("body")

    upload(page, wide_image)
    assert [o["caption"] for o in run_and_wait(page, 1)] == ["A photo of a robot horse"]


def test_generation_mode_shows_the_source_first(page):
    page.fill("#generation_prompt input, #generation_prompt textarea", "a house")
    page.fill("#seed input, #seed textarea", "3")
    page.fill("#translation_prompts textarea", "a castle")
    fast(page)
    outputs = run_and_wait(page, 2)
    assert outputs == [{"caption": "source: a house", "size": [128, 128]}, {"caption": "a castle", "size": [128, 128]}]
    status = page.inner_text("#status")
    assert status.startswith("1 translation in ") and "seed 3" in status


def test_a_waiting_run_sees_its_place_in_the_queue_and_runs_once_the_first_is_stopped(app, browser, wide_image):
    pages = []
    for steps in (50, 2):
        context = browser.new_context(viewport=VIEWPORT)
        pages.append(context.new_page())
        pages[-1].goto(app)
        upload(pages[-1], wide_image)
        fast(pages[-1], steps)
    first, second = pages
    first.click("#run")
    first.wait_for_selector("#gallery .progress-text", timeout=RUN_TIMEOUT_MS)  # the first run has started
    second.click("#run")
    second.wait_for_selector("#gallery :text('queue: 1/1')", timeout=RUN_TIMEOUT_MS)
    first.click("#stop")
    assert outputs(second, 1) == [{"caption": "A photo of a robot horse", "size": [256, 128]}]
    for p in pages:
        p.context.close()


def test_the_features_tab_shows_the_last_runs_grids_and_the_finished_page(page, tmp_path_factory):
    """An example's sample image into its two prompts with feature maps on; the page is saved as README's screenshot."""
    page.get_by_role("tab", name="Features").click()
    page.check("#feature_maps input[type=checkbox]")
    page.get_by_role("tab", name="Translate").click()
    page.click("text=a photo of a wooden cabin in a snowy forest")  # the first example
    page.wait_for_selector("#input_image img")
    fast(page)
    translations = run_and_wait(page, 2)
    assert [o["caption"] for o in translations] == [
        "a photo of a wooden cabin in a snowy forest",
        "a watercolor painting of a cottage",
    ]
    assert translations[0]["size"] == [192, 128]  # the 512x384 sample at resolution 128: 171 rounded to 192

    page.get_by_role("tab", name="Features").click()
    grids = page.locator("#features .thumbnail-item")
    grids.first.locator("img").wait_for()
    attn1 = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert grids.locator(".caption-label").all_inner_texts() == [
        "up_blocks.1.resnets.1.conv1",
        "up_blocks.1.resnets.1.conv2",
        f"{attn1}.to_q",
        f"{attn1}.to_k",
        f"{attn1}.attention",
    ]
    for src in grids.locator("img").evaluate_all("imgs => imgs.map(i => i.src)"):  # served, whether shown yet or not
        with Image.open(io.BytesIO(page.request.get(src).body())) as grid:
            # A row per image (source and two outputs) under a title line; a column per timestep after the image.
            assert grid.format == "PNG" and grid.height > 3 * 128 and grid.width > 3 * 192
    screenshots = tmp_path_factory.mktemp("screenshots")
    page.screenshot(path=screenshots / "pnp-ui-features.png", full_page=True)

    page.get_by_role("tab", name="Translate").click()
    page.click(ADVANCED)  # closed again, so that the screenshot shows the outputs beside the form
    page.screenshot(path=screenshots / "pnp-ui.png", full_page=True)


# --- The page's API, as a script calls it (gradio_client) ---


@pytest.fixture(scope="module")
def api(app):
    return Client(app, verbose=False)


def generate(api: Client, **inputs) -> tuple[list, str]:
    """A 2-step generation at 128 px through the API, with ``inputs`` changed; the outputs and the status line."""
    inputs = {
        "input_image": None,
        "generation_prompt": "a house",
        "seed": "3",
        "translation_prompts": "a cat",
        "num_inference_steps": 2,
        "resolution": 128,
        **inputs,
    }
    outputs, status, _ = api.predict(api_name="/run", **inputs)
    return outputs, status


def test_the_api_calls_the_inputs_by_the_forms_names_and_describes_resolution_as_it_takes_it(api):
    parameters = api.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"]
    page_fields = {spec.name for spec in FORM_INPUTS} - {"disable_safety_checker", "lora_weights", "lora_scale"}
    assert {p["parameter_name"] for p in parameters} == page_fields
    resolution = next(p for p in parameters if p["parameter_name"] == "resolution")
    # Gradio describes every drop-down choice as text: the choices are text, and numbers are taken too (below).
    assert resolution["type"] == {"type": "string", "enum": ["0", "128", "192", *resolution["type"]["enum"][3:]]}
    assert resolution["python_type"]["type"].startswith("Literal['0', '128', '192'")
    assert resolution["parameter_default"] == "0"


@pytest.mark.parametrize("resolution", [128, "128"], ids=["integer", "text"])
def test_the_api_takes_resolution_as_described_and_as_text(api, resolution):
    outputs, status = generate(api, resolution=resolution)
    with Image.open(outputs[1]["image"]) as image:
        assert image.size == (128, 128)
    assert status.startswith("1 translation in ")


def test_the_api_refuses_values_naming_the_input(api, tmp_path):
    with pytest.raises(AppError, match="^resolution: 64 is out of range"):
        generate(api, resolution="64")
    with pytest.raises(AppError, match="^translation_prompts: 5 is not text"):
        generate(api, translation_prompts=5)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(AppError, match="^input_image: notes.txt is not a readable image"):
        generate(api, input_image=handle_file(str(notes)), generation_prompt="")
