"""Cog predictor: Replicate's web form and HTTP API for plug-and-play image translation.

Every Input() argument is a literal on purpose: `cog build` reads them with a static parser
that silently drops bounds, choices and descriptions it cannot evaluate without running Python
(an imported constant, an f-string). tests/app/test_form.py checks them against the form's table
(``pnp.app.form``), which is computed from the configuration; the form's parser reads the inputs.
"""

import os
import shutil
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path as LocalPath
from typing import Optional

from cog import BasePredictor, Input, Path, current_scope
from PIL import Image

from cog_inputs import fetch_url, read_request_image, request_lora_file
from cog_outputs import new_output_folder, remove_stale_output_folders, remove_when_this_process_ends
from pnp.environment import configure_libraries, log_to

# Before diffusers and transformers load: their import-time advice would fill the setup logs.
configure_libraries()

from pnp.app.feature_files import write_feature_grids  # noqa: E402
from pnp.app.form import form_name, parse_form  # noqa: E402
from pnp.config import ConfigError  # noqa: E402
from pnp.devices import dtype_name  # noqa: E402
from pnp.images import ImageError  # noqa: E402
from pnp.method.generation import noise_generator  # noqa: E402
from pnp.outputs import write_outputs  # noqa: E402
from pnp.pipelines.loading import NO_SAFETY_CHECKER  # noqa: E402
from pnp.pipelines.lora import load_loras  # noqa: E402
from pnp.pipelines.pipeline_pnp import PnPPipeline  # noqa: E402
from pnp.pipelines.weights import locate_weights  # noqa: E402
from pnp.visual import visualise  # noqa: E402

WEIGHTS_DIR = LocalPath(__file__).resolve().parent / "weights"
SOURCE_CACHE_ENV = "PNP_SOURCE_CACHE_BYTES"
COMPILE_ENV = "PNP_COMPILE"
# The environment variable that sets each loading parameter (ConfigError.param) in setup.
SETUP_ENV = {"device": "PNP_DEVICE", "dtype": "PNP_DTYPE"}


class Predictor(BasePredictor):
    """Plug-and-play translation of an uploaded or generated image into one image per prompt."""

    def setup(self) -> None:
        """Load the weights once ($PNP_WEIGHTS, else weights/, else a download of $PNP_MODEL): SD 1.x, 2.x or SDXL.

        $PNP_DEVICE and $PNP_DTYPE override the device and dtype; $PNP_SOURCE_CACHE_BYTES bounds the
        cache of recent sources (0 turns it off; default: a quarter of the GPU's memory);
        PNP_COMPILE=1 compiles the UNet and warms it up here, so that predictions start compiled.
        Output folders of ended workers are removed, and this worker's will go when it ends (cog_outputs).
        """
        log_to("stdout")
        stale = remove_stale_output_folders()
        if stale:
            print(f"Removed {len(stale)} output folders of ended processes from {tempfile.gettempdir()}")
        remove_when_this_process_ends()
        start = time.perf_counter()
        folder = locate_weights(WEIGHTS_DIR)
        try:
            settings = {param: os.environ.get(name) or None for param, name in SETUP_ENV.items()}
            self.pipe = PnPPipeline.from_pretrained(folder, **settings)
        except ConfigError as err:
            raise ConfigError(SETUP_ENV.get(err.param, err.param), err.reason) from None
        dtype = dtype_name(self.pipe.unet.dtype)
        print(
            f"Loaded {folder} ({type(self.pipe).__name__}, {self.pipe.default_resolution} px by default) on "
            f"{self.pipe.device} as {dtype} in {time.perf_counter() - start:.1f} s"
        )
        self.pipe.set_source_cache(_env_bytes(SOURCE_CACHE_ENV))
        if os.environ.get(COMPILE_ENV, "").strip() == "1":
            self._compile()
        # The same weights without the checker, for predictions that turn it off. from_pipe casts the
        # shared weights to its dtype argument (float32 by default), so it is given theirs.
        self.unchecked = (
            self.pipe
            if self.pipe.safety_checker is None
            else PnPPipeline.from_pipe(self.pipe, **NO_SAFETY_CHECKER, dtype=self.pipe.unet.dtype)
        )
        checker = (
            "absent from the weights"
            if self.pipe.safety_checker is None
            else "on (disable_safety_checker turns it off)"
        )
        print(f"Safety checker: {checker}")
        self.output_dir = None

    def predict(
        self,
        input_image: Optional[Path] = Input(
            default=None,
            description="Image to translate (PNG, JPEG, WebP, ...). It is resized so that its short side is `resolution` pixels. Leave it empty to generate the source image from `generation_prompt` instead.",
        ),
        generation_prompt: str = Input(
            default="",
            description="Generate the source image from this prompt instead of uploading one; the generated image is returned first. When set, `input_image` is ignored.",
        ),
        translation_prompts: str = Input(
            default="A photo of a robot horse",
            description="What the output should show, keeping the layout of the source, e.g. 'a photo of a robot horse'. Separate several prompts with ';' or line breaks to get one output each, at most 16 per prediction; surrounding spaces and empty prompts are dropped.",
        ),
        scale: float = Input(
            default=10.0,
            ge=0.0,
            le=50.0,
            description="Guidance scale of the translation, from 0 to 50: how strongly the outputs follow the translation prompts. The authors recommend 10 to 15; very high values oversaturate.",
        ),
        feature_injection_threshold: float = Input(
            default=0.8,
            ge=0.0,
            le=1.0,
            description="Fraction of the sampling steps, counted from the first, in which the source's spatial features are injected, from 0 to 1. Higher keeps more of the source's structure, lower gives the prompt more freedom; the paper uses 0.5 for sketches and segmentation maps.",
        ),
        attention_injection_threshold: float = Input(
            default=0.5,
            ge=0.0,
            le=1.0,
            description="Fraction of the sampling steps, counted from the first, in which the source's self-attention queries and keys are injected, from 0 to 1. Higher keeps the source's layout more closely.",
        ),
        negative_prompt: str = Input(
            default="",
            description="What the outputs should move away from, e.g. a description of the source image. Leave empty for no negative prompting.",
        ),
        negative_prompt_alpha: float = Input(
            default=1.0,
            ge=0.0,
            le=1.0,
            description="Weight of plain unconditional guidance against the negative prompt, from 0 to 1: lower pushes harder away from the negative prompt, 1 ignores it. Only used with a negative prompt.",
        ),
        negative_prompt_schedule: str = Input(
            default="linear",
            choices=["constant", "linear", "exp"],
            description="How `negative_prompt_alpha` changes over the sampling steps: constant keeps it, linear lowers it to 0 by the last step, exp lowers it exponentially. Only used with a negative prompt.",
        ),
        num_inference_steps: int = Input(
            default=50,
            ge=1,
            le=999,
            description="Sampling steps of the translation, and of the source generation in generation mode, from 1 to 999. More steps take longer; 50 is the method's usual setting.",
        ),
        num_inversion_steps: Optional[int] = Input(
            default=None,
            ge=1,
            le=1000,
            description="DDIM inversion steps of an input image, from 1 to 1000 (ignored in generation mode); leave blank for as many as `num_inference_steps`. More steps invert more exactly but take longer; the original method used 999. The inversion must pass through every sampling step, so with 50 inference steps use 50, 99-100, 197-200, 246-250, 491-500 or 981-1000; other values fail with a message listing the values that work.",
        ),
        generation_scale: float = Input(
            default=5.0,
            ge=0.0,
            le=50.0,
            description="Guidance scale of the source generation in generation mode, from 0 to 50; ignored when translating an input image.",
        ),
        seed: Optional[int] = Input(
            default=None,
            ge=0,
            le=4294967295,
            description="Seed of the noise the source image is generated from, from 0 to 4294967295 (generation mode only; translating an input image is deterministic). Leave blank for a random seed; the seed used is printed in the logs.",
        ),
        resolution: int = Input(
            default=0,
            choices=[0, 128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024],
            description="Short side of the working image and the outputs, in pixels; the long side follows the input image's aspect ratio (at most twice the short side), generated sources are square. 0 (the default) uses the model's own size, at which it works best: 512 for Stable Diffusion 1.x, 768 for 2.1, 1024 for SDXL. Larger is slower.",
        ),
        output_format: str = Input(
            default="png",
            choices=["png", "webp", "jpg"],
            description="File format of the output images: png is lossless, webp and jpg are smaller (see `output_quality`).",
        ),
        output_quality: int = Input(
            default=90,
            ge=1,
            le=100,
            description="Quality of webp and jpg outputs, from 1 (smallest files) to 100 (best); not relevant for png outputs.",
        ),
        disable_safety_checker: bool = Input(
            default=False,
            description="Turn off the safety checker, which replaces outputs it judges not safe for work with black images (the logs say which). Only has an effect when the model's weights include the checker; API use only.",
        ),
        feature_maps: bool = Input(
            default=False,
            description="Also return the paper's PCA visualisations of the source's and the outputs' decoder features at five timesteps, as one labelled grid per map after the outputs: conv1 and conv2 of up_blocks.1.resnets.1, then the queries, keys and self-attention maps of up_blocks.1.attentions.1.transformer_blocks.0.attn1. Similar colours mean similar features; the outputs are unchanged.",
        ),
        lora_weights: Optional[Path] = Input(
            default=None,
            description="A LoRA adapter for the model's weights, as a .safetensors file (an upload or a URL), applied to this prediction only. It must be made for the model's architecture (Stable Diffusion 1.x, 2.x or SDXL). Leave empty for none.",
        ),
        lora_scale: float = Input(
            default=0.6,
            ge=0.0,
            le=1.0,
            description="Weight of the LoRA adapter in `lora_weights`, from 0 (off) to 1 (as trained); ignored without one.",
        ),
    ) -> list[Path]:
        """Translate the source into every prompt; the generated source (generation mode) comes first, feature grids last."""
        form = {name: value for name, value in locals().items() if name != "self"}  # every input, by its form name
        self._remove_outputs()
        fetched = ExitStack()  # files this prediction made of URLs (cog_inputs.fetch_url), deleted when it ends

        def read_image(value, resolution):
            return read_request_image(fetch_url(value, fetched, ImageError, "image"), resolution)

        try:
            request = parse_form(form, self.pipe.default_resolution, read_image)
            for note in request.notes:
                print(note)
            lora = self._lora(fetch_url(lora_weights, fetched, ConfigError, "lora_weights"), request.lora_scale)
            config = request.config
            self.output_dir = new_output_folder()
            generator = noise_generator(request.seed)
            pipe = self.unchecked if request.disable_safety_checker else self.pipe
            with self._adapter(lora):
                if request.feature_maps:
                    maps = visualise.feature_maps(pipe, image=request.image, generator=generator, **config.as_kwargs())
                    result = maps.translation
                else:
                    maps, result = None, pipe(image=request.image, generator=generator, **config.as_kwargs())
            paths = write_outputs(result, config.prompt, self.output_dir, request.options)
            if maps:
                paths += write_feature_grids(maps, self.output_dir, request.options, first=len(paths))
        except ConfigError as err:
            self._remove_outputs()
            raise type(err)(form_name(err.param), err.reason) from None
        except BaseException:
            # Failures and cancellations (cog.CancelationException is a BaseException) leave no files.
            self._remove_outputs()
            raise
        finally:
            fetched.close()
        scope = current_scope()
        for name, value in result.metrics.items():
            scope.record_metric(name, value)
        return [Path(p) for p in paths]

    def _lora(self, lora_weights, lora_scale: float):
        """The request's LoRA file and scale, checked; None without one."""
        if lora_weights is None:
            return None
        path, name = request_lora_file(lora_weights)
        if self.pipe._injector is not None:
            raise ConfigError(
                "lora_weights",
                f"{name}: this predictor runs a compiled UNet ({COMPILE_ENV}=1), whose "
                "modules cannot change; run it without compiling to use LoRA adapters",
            )
        print(f"LoRA adapter {name} at scale {lora_scale:g}")
        return path, lora_scale, name

    @contextmanager
    def _adapter(self, lora):
        """The request's adapter loaded for the prediction, then unloaded: the UNet is again exactly as loaded."""
        if lora is None:
            yield
            return
        path, scale, name = lora
        load_loras(self.pipe, [(path, scale)], "lora_weights", [name])  # the unchecked pipeline shares its modules
        try:
            yield
        finally:
            self.pipe.unload_lora_weights()

    def _compile(self) -> None:
        """Compile the UNet, then run each kind of UNet call the default inputs make once, so each compiles now."""
        start = time.perf_counter()
        self.pipe.compile_unet()
        warm_up = dict(prompt="a photo", num_inference_steps=5, output_type="latent")
        side = self.pipe.default_resolution
        self.pipe(image=Image.new("RGB", (side, side), (128, 128, 128)), **warm_up)  # inversion and translation
        self.pipe(generation_prompt="a photo", **warm_up)  # fused generation
        self.pipe.source_cache.clear()
        print(f"Compiled and warmed up the UNet in {time.perf_counter() - start:.1f} s")

    def _remove_outputs(self) -> None:
        # Outputs live until the next prediction starts (Cog has uploaded or encoded them by then),
        # until their own prediction fails, or until the worker ends (cog_outputs).
        if self.output_dir is not None:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            self.output_dir = None


def _env_bytes(name: str) -> int | None:
    """A byte count from the environment variable ``name``; None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(
            f"{name}={value!r} is not a whole number of bytes; set it to 0 to turn the cache off, or unset it"
        )
    return int(value)
