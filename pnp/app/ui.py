"""The local web UI (``python -m pnp ui``): a Gradio page around one loaded pipeline.

The page holds the source (an uploaded or pasted image, or a generation prompt and seed), a mask
editor showing the uploaded image to paint the region to edit on (or to upload a mask into), the
target prompts one per line, Run and Stop, and an "Advanced" section with the other translation
inputs, built from the same table as the Cog predictor's form (``pnp.app.form``). Runs wait in
Gradio's queue, one at a time on the model; the progress bar follows the pipeline's steps.

Stopping: Gradio stops a run by cancelling the task that awaits it, but a function running in a
thread cannot be cancelled, and the queue would start the next run beside it, on the same model.
So each run works in its own thread, and when its task is cancelled (Stop, or the page closed),
it asks the pipeline to stop after the current step and waits for that before the queue moves
on: the next run finds the model clean.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
import tempfile
import threading
import traceback

import gradio as gr
import numpy as np
from gradio.components.image_editor import EditorData
from PIL import Image

from pnp.app.form import FORM_INPUTS, FormInput, form_input
from pnp.app.samples import Examples, examples_for, write_samples
from pnp.app.ui_runs import Runner, RunResult, read_form
from pnp.config import MAX_PROMPTS, ConfigError
from pnp.images import to_rgb
from pnp.messages import first_line
from pnp.pipelines.loading import TOY_MODEL

logger = logging.getLogger("pnp.ui")

# The fields above the Advanced section, and those elsewhere: feature_maps on the Features tab,
# disable_safety_checker nowhere (an API-only input of the predictor), nor the LoRA inputs (the
# page's model takes its adapters when it loads: python -m pnp ui --lora PATH[:SCALE]).
MAIN_FIELDS = ("input_image", "mask", "generation_prompt", "seed", "translation_prompts")
OTHER_FIELDS = ("feature_maps", "disable_safety_checker", "lora_weights", "lora_scale")
ADVANCED_FIELDS = tuple(s.name for s in FORM_INPUTS if s.name not in (*MAIN_FIELDS, *OTHER_FIELDS))
PROMPTS_INFO = (
    f"What the outputs should show, keeping the layout of the source: one prompt per line (or separated by "
    f"';'), one output each, at most {MAX_PROMPTS}."
)
MASK_COLOUR = "#ffffff"  # strokes count by where they are, whatever their colour: white, as masks are drawn
MASK_INFO = (
    "Paint over the region that may change; everything else is kept (see mask_paste in Advanced). Or upload a "
    "black-and-white mask here, white where the edit may happen. Leave it unpainted to change the whole image."
)
# Slider steps: the form gives ranges, the page also needs a resolution for its sliders.
SLIDER_STEPS = {"float": 0.01, "int": 1}
# Integer ranges wider than this get a number box rather than a slider.
SLIDER_MAX_SPAN = 100
BLANK_MEANS = {"seed": "blank: a random seed", "num_inversion_steps": "blank: as many as num_inference_steps"}
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
FEATURES_TEXT = """\
The paper's PCA visualisations (Fig. 3 and 6) of the last run's decoder features: for each map, a row per image (the
source, then each output) and a column per timestep, noisiest first. The first three principal components of all the
images' features together are drawn as red, green and blue, so similar colours mean similar features: where an
output's map looks like the source's, it keeps the source's structure. The injection windows
(`feature_injection_threshold`, `attention_injection_threshold`) set for how many steps the source's features and
self-attention are imposed. Random-weight models give meaningless maps.

Tick `feature_maps`, then press Run on the Translate tab."""
FEATURE_MAPS_INFO = (
    "Also draw the maps below in the next runs, at five timesteps: conv1 and conv2 of up_blocks.1.resnets.1, "
    "then the queries, keys and self-attention of up_blocks.1.attentions.1.transformer_blocks.0.attn1. "
    "The outputs are unchanged."
)


def serve(pipe, model: str, host: str, port: int, share: bool) -> None:
    """Serve the page for ``pipe`` on ``host``:``port`` until interrupted; a public share link only if ``share``."""
    # Stopped as by Ctrl-C (a service manager sends SIGTERM), so that the temporary folder goes too.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="pnp-ui-") as folder:
        examples = examples_for(model)
        page = build_page(Runner(pipe, folder), model, examples, write_samples(folder, examples))
        page.queue(default_concurrency_limit=1)
        # Quiet: Gradio's own lines tell a Python caller to set share=True in launch(); these name the flags.
        page.launch(
            server_name=host, server_port=port, share=share, theme=theme(), quiet=True, prevent_thread_lock=True
        )
        print(f"serving on {page.local_url} (Ctrl-C stops)", file=sys.stderr)
        if share:
            print(f"public link: {page.share_url}", file=sys.stderr)
        page.block_thread()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def theme() -> gr.themes.Base:
    return gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"])


def build_page(runner: Runner, model: str, examples: Examples, samples: dict) -> gr.Blocks:
    """The page; ``samples`` maps the names of ``examples``' sample images to their files."""
    from pnp.pipelines.loading import RANDOM_MODELS

    with gr.Blocks(title="Plug-and-play image translation", analytics_enabled=False) as page:
        gr.Markdown(_header(runner.pipe, model, model in RANDOM_MODELS))
        with gr.Tab("Translate"):
            with gr.Row():
                with gr.Column():
                    fields = _main_fields()
                    with gr.Row():
                        run = gr.Button("Run", variant="primary", elem_id="run")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                        fields.update({name: _field(form_input(name)) for name in ADVANCED_FIELDS})
                with gr.Column():
                    gallery = gr.Gallery(
                        label="outputs",
                        elem_id="gallery",
                        columns=2,
                        object_fit="contain",
                        buttons=["download", "download_all", "fullscreen"],
                        interactive=False,
                    )
                    status = gr.Markdown(elem_id="status")
            _examples(fields, examples, samples)
        with gr.Tab("Features", elem_id="features-tab"):
            gr.Markdown(FEATURES_TEXT)
            # Its own help: the predictor's says where its outputs list puts the grids.
            fields["feature_maps"] = _field(form_input("feature_maps"), info=FEATURE_MAPS_INFO)
            grids = gr.Gallery(
                label="feature maps of the last run",
                elem_id="features",
                columns=2,
                height="auto",
                object_fit="contain",
                buttons=["download", "fullscreen"],
                interactive=False,
            )
        # By name, so that API clients see the form's names (input_image, resolution, ...), as errors call them.
        # Unprocessed: the form's own check reads every value and names the field it refuses, where Gradio's
        # checks (an image its image field cannot open, a choice sent as a number) fail naming none.
        # The editor shows the uploaded image, to paint the region to edit on.
        fields["input_image"].change(_background, inputs=fields["input_image"], outputs=fields["mask"])
        started = run.click(
            run_handler(runner, fields["mask"]),
            inputs_kwargs=fields,
            outputs=[gallery, status, grids],
            preprocess=False,
            concurrency_id="model",
            concurrency_limit=1,
        )
        stop.click(None, cancels=[started])
    return page


def _header(pipe, model: str, random_weights: bool) -> str:
    from pnp.devices import dtype_name

    lines = [
        "# Plug-and-play image translation",
        "Translate an image into each prompt while keeping its layout (Plug-and-Play Diffusion Features, "
        "Tumanyan et al., CVPR 2023).",
        f"Model: `{model}` on {pipe.device} ({dtype_name(pipe.unet.dtype)}); its own size, resolution 0, is "
        f"{pipe.default_resolution} px.",
    ]
    if random_weights:
        lines.append(
            f"**`{model}` has random weights: its outputs are noise.** It is for trying the page; "
            "start it with a Stable Diffusion model for real translations."
        )
    if model == TOY_MODEL:
        from pnp.toy.world import summary

        lines.append(f"`{model}` is a small model trained on a world of simple shapes: {summary()}.")
    return "\n\n".join(lines)


def _main_fields() -> dict:
    image = form_input("input_image")
    fields = {
        "input_image": gr.Image(
            label=image.name,
            placeholder=image.description,
            type="filepath",
            image_mode=None,
            sources=["upload", "clipboard"],
            elem_id=image.name,
        )
    }
    fields["mask"] = mask_editor()
    with gr.Group():
        fields["generation_prompt"] = _field(form_input("generation_prompt"))
        fields["seed"] = _field(form_input("seed"))
    fields["translation_prompts"] = gr.Textbox(
        label="translation_prompts",
        info=PROMPTS_INFO,
        lines=3,
        value=form_input("translation_prompts").default,
        elem_id="translation_prompts",
    )
    return fields


def mask_editor(render: bool = True) -> gr.ImageEditor:
    """The mask field: an image editor that shows the uploaded image to paint on, with a white brush."""
    return gr.ImageEditor(
        label="mask: paint the region that may change (optional)",
        type="pil",
        image_mode="RGBA",
        sources=["upload", "clipboard"],
        brush=gr.Brush(colors=[MASK_COLOUR], default_color=MASK_COLOUR, color_mode="fixed"),
        layers=False,
        transforms=(),
        format="png",
        placeholder=MASK_INFO,
        elem_id="mask",
        render=render,
    )


def _field(spec: FormInput, info: str | None = None) -> gr.components.Component:
    """The page's field for a form input: its name as label, its description (or ``info``) as help, its default and
    range."""
    common = {"label": spec.name, "info": info or spec.description, "value": spec.default, "elem_id": spec.name}
    if spec.choices is not None:
        # As text, as Gradio describes every choice to API clients ('128'); the form's check reads the numbers.
        return gr.Dropdown(choices=[str(choice) for choice in spec.choices], **{**common, "value": str(spec.default)})
    if spec.kind == "bool":
        return gr.Checkbox(**common)
    if spec.kind == "text":
        return gr.Textbox(**common)
    if spec.optional:
        # A number box cannot be blank (it shows 0): text, read by the form's check.
        return gr.Textbox(**{**common, "value": ""}, placeholder=BLANK_MEANS[spec.name])
    if spec.le - spec.ge > SLIDER_MAX_SPAN:
        # No bounds given to Gradio: its own range error would not name the field; the form's check does.
        return gr.Number(precision=None, **common)
    return gr.Slider(minimum=spec.ge, maximum=spec.le, step=SLIDER_STEPS[spec.kind], **common)


def _examples(fields: dict, examples: Examples, samples: dict) -> None:
    gr.Examples(
        [[str(samples[name]), prompts] for name, prompts in examples.prompts.items()],
        inputs=[fields["input_image"], fields["translation_prompts"]],
        label="Examples: translate a sample image",
    )
    gr.Examples(
        [list(examples.generation)],
        inputs=[fields["generation_prompt"], fields["translation_prompts"], fields["seed"]],
        label="Example: generate the source",
    )


def _background(image: str | None) -> str | None:
    """The mask editor's new value when an image is uploaded: that image, to paint on."""
    return image


def editor_mask(value: dict | None, image_path: str | None) -> Image.Image | None:
    """The mask the editor holds (its value as ``type="pil"`` gives it): white where strokes were painted; with no
    strokes, an uploaded mask (a picture other than the input image); else None, no mask."""
    if value is None:
        return None
    strokes = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in value.get("layers") or []]
    if any(stroke.any() for stroke in strokes):
        return Image.fromarray(np.logical_or.reduce(strokes).astype(np.uint8) * 255, "L")
    background = value.get("background")
    if background is None or (image_path is not None and _same_picture(background, image_path)):
        return None
    return background


def _same_picture(picture: Image.Image, path: str) -> bool:
    with Image.open(path) as image:
        return image.size == picture.size and np.array_equal(np.asarray(to_rgb(image)), np.asarray(to_rgb(picture)))


def run_handler(runner: Runner, editor: gr.ImageEditor | None = None):
    """The Run button's handler: the form's values by field name, as Gradio sends them unprocessed (an image is
    Gradio's file data, the uploaded file in its cache; the mask ``editor``'s, its own data, read with its own
    preprocessing: the page's editor, else one like it), to the gallery's items and a status line."""
    editor = editor or mask_editor(render=False)

    async def run(progress=gr.Progress(), **values):
        stop = threading.Event()

        def work() -> RunResult:
            image = values["input_image"]  # Gradio's file data: the uploaded file is at its path
            path = None if image is None else image["path"]
            drawn = None if values.get("mask") is None else editor.preprocess(EditorData(**values["mask"]))
            request = read_form(
                {**values, "input_image": path, "mask": editor_mask(drawn, path)}, runner.pipe.default_resolution
            )
            progress(0, desc="starting")
            return runner.run(request, lambda phase, done, total: progress((done, total), desc=phase), stop)

        # Gradio finds the run's progress bar through context variables: the thread gets a copy.
        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(None, context.run, work)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            await _finished(future)
            raise
        except ConfigError as err:
            raise gr.Error(str(err), title="Check the form", print_exception=False) from None
        except Exception as err:
            # pnp's log lines are one line each: the traceback goes into the message.
            logger.error(f"the run failed:\n{traceback.format_exc()}")
            raise gr.Error(
                f"The run failed: {first_line(err)}. The terminal shows the details.", print_exception=False
            ) from None
        return _items(result.files, result.captions), result.status, _items(result.grids, result.maps)

    return run


def _items(paths, captions) -> list[tuple[str, str]]:
    """A gallery's value: (file, caption) pairs."""
    return [(str(path), caption) for path, caption in zip(paths, captions, strict=True)]


async def _finished(future: asyncio.Future) -> None:
    """Wait until a stopped run's thread has returned, whatever it returned, even if cancelled again meanwhile."""
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            continue
    if not future.cancelled():
        future.exception()  # retrieved, so that asyncio does not log it as never retrieved
