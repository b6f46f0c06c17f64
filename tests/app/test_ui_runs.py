"""The web UI's runs without a browser: form values to a request, errors naming fields, progress, stopping, cleanliness.

The page's Run handler (pnp.app.ui) is called here as Gradio calls it, in an event loop."""

import asyncio
import logging
import threading

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from pnp.app.form import FORM_INPUTS
from pnp.app.ui import run_handler
from pnp.app.ui_runs import Runner, Stopped, read_form
from pnp.config import ConfigError
from support.hooks import all_hooks

# The form as it opens, with the fields left blank that the page shows blank, and fast settings.
BLANK = {"seed": "", "num_inversion_steps": ""}
FAST = {"num_inference_steps": 2, "resolution": 128}


def form(**values):
    defaults = {spec.name: spec.default for spec in FORM_INPUTS if spec.name != "disable_safety_checker"}
    return {**defaults, **BLANK, **FAST, **values}


def sent(values):
    """The form's values as the page sends them to its handler, unprocessed: an image as Gradio's file data."""
    image = values.get("input_image")
    return {**values, "input_image": None if image is None else {"path": image, "meta": {"_type": "gradio.FileData"}}}


@pytest.fixture
def photo_file(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    return str(path)


@pytest.fixture
def pnp_log(caplog):
    """caplog for pnp's own log, which a predictor or command in this process may have sent elsewhere (log_to)."""
    logger = logging.getLogger("pnp")
    saved = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.level, logger.propagate = saved


@pytest.fixture
def runner(pipe, tmp_path):
    return Runner(pipe, tmp_path)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


# --- The form ---


def test_prompts_are_lines_and_blank_fields_take_their_defaults(photo_file):
    request = read_form(form(input_image=photo_file, translation_prompts=" a cat \n\n a dog\n"))
    assert request.config.prompt == ("a cat", "a dog")
    assert request.config.num_inversion_steps == 2  # blank: as many as num_inference_steps
    assert request.image.size == (192, 128)  # 160x128 at resolution 128: short side 128, long side rounded to 64
    assert 0 <= request.seed < 2**32
    assert request.notes == ()


def test_numbers_come_as_floats_or_text(photo_file):
    request = read_form(
        form(input_image=photo_file, num_inference_steps=3.0, num_inversion_steps=" 3 ", output_quality=75.0)
    )
    assert (request.config.num_inference_steps, request.config.num_inversion_steps) == (3, 3)
    assert request.options.output_quality == 75 and isinstance(request.options.output_quality, int)


def test_generation_mode_uses_the_seed_and_says_the_image_was_ignored(photo_file):
    request = read_form(form(input_image=photo_file, generation_prompt="a house", seed="42"))
    assert request.seed == 42 and request.image is None
    assert request.notes == (
        "The source image is generated with seed 42",
        "input_image is ignored: generation_prompt is set",
    )


@pytest.mark.parametrize(
    "values, field, hint",
    [
        ({}, "input_image", "generation prompt"),
        ({"generation_prompt": "a house", "translation_prompts": "\n \n"}, "translation_prompts", "at least one"),
        (
            {"generation_prompt": "a house", "translation_prompts": "\n".join(["a cat"] * 17)},
            "translation_prompts",
            "at most 16",
        ),
        ({"generation_prompt": "a house", "scale": 60.0}, "scale", "0 to 50"),
        ({"generation_prompt": "a house", "seed": "-1"}, "seed", "0 to 4294967295"),
        ({"generation_prompt": "a house", "seed": "lucky"}, "seed", "whole number"),
        ({"generation_prompt": "a house", "num_inference_steps": 2.5}, "num_inference_steps", "whole number"),
        ({"generation_prompt": "a house", "num_inference_steps": None}, "num_inference_steps", "whole number"),
        ({"input_image": "photo", "num_inversion_steps": "3"}, "num_inversion_steps", "with 2 sampling steps"),
        ({"generation_prompt": "a house", "generation_scale": 51.0}, "generation_scale", "0 to 50"),
        ({"generation_prompt": "a house", "output_quality": 0}, "output_quality", "1 to 100"),
    ],
)
def test_bad_values_name_the_field_to_change(photo_file, values, field, hint):
    if values.get("input_image") == "photo":
        values = {**values, "input_image": photo_file}
    with pytest.raises(ConfigError) as caught:
        read_form(form(**values))
    assert caught.value.param == field and str(caught.value).startswith(f"{field}: ")
    assert hint in caught.value.reason


@pytest.mark.parametrize(
    "values, message",
    [
        ({"translation_prompts": 5}, "translation_prompts: 5 is not text"),
        ({"output_format": 3}, "output_format: 3 is not text"),
        ({"feature_maps": "yes"}, "feature_maps: 'yes' is neither true nor false"),
        ({"resolution": "64"}, "resolution: 64 is out of range"),
    ],
)
def test_values_of_the_wrong_kind_name_the_field(values, message):
    """The page's API hands values over unchecked (the page sends the right kinds)."""
    with pytest.raises(ConfigError) as caught:
        read_form(form(generation_prompt="a house", **values))
    assert str(caught.value).startswith(message)


def test_choices_come_as_text_too():
    request = read_form(form(generation_prompt="a house", resolution="192", negative_prompt_schedule="exp"))
    assert (request.config.resolution, request.config.negative_prompt_schedule) == (192, "exp")


def test_a_file_that_is_not_an_image_names_input_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    # Called by its name: the page's uploads sit in Gradio's temporary folder.
    with pytest.raises(ConfigError, match="^input_image: notes.png is not a readable image"):
        read_form(form(input_image=str(path)))


# --- Runs ---


def run(runner, values, stop_after=None):
    """A run, recording the progress it reports; ``stop_after`` presses Stop after that many steps."""
    steps, stop = [], threading.Event()

    def progress(phase, done, total):
        steps.append((phase, done, total))
        if done == stop_after:
            stop.set()

    return runner.run(read_form(values), progress, stop), steps


def test_progress_follows_the_source_then_the_translation(runner, photo_file):
    _, steps = run(runner, form(input_image=photo_file, num_inference_steps=3))
    # 3 sampling steps: 3 inversion steps reach the first sampling timestep, then 3 translation
    # steps; every report counts all 6.
    assert steps == [
        ("inversion", 1, 6),
        ("inversion", 2, 6),
        ("inversion", 3, 6),
        ("translation", 4, 6),
        ("translation", 5, 6),
        ("translation", 6, 6),
    ]


def test_a_generated_source_is_made_in_the_translation_steps(runner):
    _, steps = run(runner, form(generation_prompt="a house", num_inference_steps=3))
    # Fused generation: the source is generated in the same 3 steps as the translation.
    assert steps == [("translation", 1, 3), ("translation", 2, 3), ("translation", 3, 3)]


def test_outputs_are_files_captioned_with_their_prompts_the_generated_source_first(runner, pnp_log):
    result, _ = run(runner, form(generation_prompt="a house", translation_prompts="a castle\na tent", seed="3"))
    assert [p.name for p in result.files] == ["00-source.png", "01-a-castle.png", "02-a-tent.png"]
    assert result.captions == ["source: a house", "a castle", "a tent"]
    assert result.status.startswith("2 translations in ") and "seed 3" in result.status
    assert "generating the source with seed 3" in pnp_log.messages
    source = pixels(result.files[0])
    again, _ = run(runner, form(generation_prompt="a house", translation_prompts="a tent", seed="3"))
    assert not any(p.exists() for p in result.files)  # the previous run's files are gone
    # The seed was used: the same source, up to rounding (fused into a translation of other prompts,
    # the generation runs in other batches; see tests/method/test_cache.py's BATCH_TOLERANCE).
    assert np.abs(pixels(again.files[0]) - source).max() <= 1
    assert again.status.startswith("1 translation in ")  # one prompt: singular
    as_jpg, _ = run(runner, form(generation_prompt="a house", translation_prompts="a castle", output_format="jpg"))
    assert [p.name for p in as_jpg.files] == ["00-source.jpg", "01-a-castle.jpg"]


def test_a_stopped_run_leaves_the_model_clean_and_the_next_run_is_unchanged(runner, photo_file):
    unet = runner.pipe.unet
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    values = form(input_image=photo_file, translation_prompts="a cat\na dog", num_inference_steps=3)
    before, _ = run(runner, values)
    expected = [pixels(p) for p in before.files]
    for stop_after in (1, 4):  # during the inversion, during the translation (with the injection hooks on)
        with pytest.raises(Stopped):
            run(runner, values, stop_after=stop_after)
        assert all_hooks(unet) == []
        assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    after, steps = run(runner, values)
    assert len(steps) == 6
    assert all(np.array_equal(a, pixels(b)) for a, b in zip(expected, after.files, strict=True))


def test_cancelling_the_pages_run_stops_the_model_before_the_queue_moves_on(runner, photo_file):
    """Gradio's Stop cancels the task awaiting the run; the task ends only once the model is clean."""
    values = form(input_image=photo_file, num_inference_steps=20)
    unet = runner.pipe.unet
    calls = []
    started = threading.Event()

    def count(module, args, output):
        calls.append(1)
        started.set()

    async def cancel_during_the_run():
        task = asyncio.ensure_future(run_handler(runner)(**sent(values)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(calls), runner._lock.locked()

    handle = unet.register_forward_hook(count)
    try:
        calls_at_cancel, busy = asyncio.run(cancel_during_the_run())
        calls_later = len(calls)
    finally:
        handle.remove()
    assert not busy  # the run's thread had finished when the task ended
    assert calls_later == calls_at_cancel < 20  # stopped early (a whole run makes 20 + 20 calls), and nothing ran on
    assert all_hooks(unet) == []
    result, _ = run(runner, form(input_image=photo_file))
    assert len(result.files) == 1


def test_feature_maps_come_with_unchanged_outputs_and_a_stopped_one_leaves_the_model_clean(runner, photo_file):
    values = form(input_image=photo_file, translation_prompts="a cat\na dog")
    plain, _ = run(runner, values)
    expected = [pixels(p) for p in plain.files]
    assert (plain.grids, plain.maps) == ([], [])

    with_maps, steps = run(runner, {**values, "feature_maps": True})
    assert len(steps) == 4  # the same progress: 2 inversion and 2 translation steps
    assert all(np.array_equal(a, pixels(b)) for a, b in zip(expected, with_maps.files, strict=True))
    # The default maps (issue 9): a residual block's two convs, then a self-attention layer's Q, K and attention.
    attn1 = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert with_maps.maps == [
        "up_blocks.1.resnets.1.conv1",
        "up_blocks.1.resnets.1.conv2",
        f"{attn1}.to_q",
        f"{attn1}.to_k",
        f"{attn1}.attention",
    ]
    assert [p.suffix for p in with_maps.grids] == [".png"] * 5 and all(p.exists() for p in with_maps.grids)

    with pytest.raises(Stopped):
        run(runner, {**values, "feature_maps": True}, stop_after=3)
    assert all_hooks(runner.pipe.unet) == []


def test_a_failing_run_shows_its_first_line_logs_the_traceback_and_leaves_the_model_clean(runner, photo_file, pnp_log):
    def out_of_memory(module, args, output):
        raise RuntimeError("CUDA out of memory\nmore detail")

    values = form(input_image=photo_file)
    handle = runner.pipe.unet.register_forward_hook(out_of_memory)
    try:
        with pytest.raises(gr.Error) as caught:
            asyncio.run(run_handler(runner)(**sent(values)))
    finally:
        handle.remove()
    assert caught.value.message == "The run failed: CUDA out of memory. The terminal shows the details."
    [record] = pnp_log.records
    assert "Traceback" in record.getMessage() and "more detail" in record.getMessage()
    assert all_hooks(runner.pipe.unet) == []
    assert len(run(runner, values)[0].files) == 1


def test_bad_input_is_shown_as_a_message_naming_the_field(runner):
    values = form()  # no source
    with pytest.raises(gr.Error) as caught:
        asyncio.run(run_handler(runner)(**sent(values)))
    assert caught.value.message == "input_image: give an input image or a generation prompt"
