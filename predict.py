"""Cog predictor: Replicate's web form and HTTP API for plug-and-play image translation.

Every Input() argument is a literal on purpose: `cog build` reads them with a static parser
that silently drops bounds, choices and descriptions it cannot evaluate without running Python
(an imported constant, an f-string). tests/test_predict.py checks the literals against pnp.config.
"""

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path as LocalPath
from typing import Optional

from cog import BasePredictor, Input, Path, current_scope

from pnp.environment import configure_libraries, log_to

# Before diffusers and transformers load: their import-time advice would fill the setup logs.
configure_libraries()

import torch  # noqa: E402

from pnp.config import ConfigError, PnPConfig  # noqa: E402
from pnp.devices import dtype_name  # noqa: E402
from pnp.form import PROMPT_SEPARATOR, form_name  # noqa: E402
from pnp.images import load_image  # noqa: E402
from pnp.outputs import OutputOptions, write_outputs  # noqa: E402
from pnp.pipeline import PnPPipeline  # noqa: E402
from pnp.weights import locate_weights  # noqa: E402

WEIGHTS_DIR = LocalPath(__file__).resolve().parent / "weights"


class Predictor(BasePredictor):
    """Plug-and-play translation of an uploaded or generated image into one image per prompt."""

    def setup(self) -> None:
        """Load the weights once ($PNP_WEIGHTS, else weights/, else a download); $PNP_DEVICE and $PNP_DTYPE override the defaults."""
        log_to(sys.stdout)
        start = time.perf_counter()
        folder = locate_weights(WEIGHTS_DIR)
        self.pipe = PnPPipeline.from_pretrained(
            folder, device=os.environ.get("PNP_DEVICE") or None, dtype=os.environ.get("PNP_DTYPE") or None
        )
        dtype = dtype_name(self.pipe.unet.dtype)
        print(f"Loaded {folder} on {self.pipe.device} as {dtype} in {time.perf_counter() - start:.1f} s")
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
            description="What the output should show, keeping the layout of the source, e.g. 'a photo of a robot horse'. Separate several prompts with ';' to get one output each, at most 16 per prediction; surrounding spaces and empty prompts are dropped.",
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
            default=512,
            choices=[128, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024],
            description="Short side of the working image and the outputs, in pixels; the long side follows the input image's aspect ratio (at most twice the short side), generated sources are square. Stable Diffusion 1.x works best at 512; larger is slower.",
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
    ) -> list[Path]:
        """Translate the source into every prompt; the generated source (generation mode) comes first."""
        self._remove_outputs()
        chosen = "random seed" if seed is None else "seed"
        if seed is None:
            seed = random.randint(0, 2**32 - 1)
        try:
            config = PnPConfig(
                prompt=[p for p in translation_prompts.split(PROMPT_SEPARATOR) if p.strip()],
                generation_prompt=generation_prompt,
                num_inference_steps=num_inference_steps,
                num_inversion_steps=num_inversion_steps,
                guidance_scale=scale,
                generation_guidance_scale=generation_scale,
                feature_injection_threshold=feature_injection_threshold,
                attention_injection_threshold=attention_injection_threshold,
                negative_prompt=negative_prompt,
                negative_prompt_alpha=negative_prompt_alpha,
                negative_prompt_schedule=negative_prompt_schedule,
                resolution=resolution,
            )
            options = OutputOptions(output_format, output_quality)
            image = None
            if config.generating:
                print(f"Generating the source image with {chosen} {seed}")
                if input_image is not None:
                    print("Both input_image and generation_prompt were given: the generation prompt is used, the image is ignored")
            elif input_image is not None:
                image = load_image(input_image)
            self.output_dir = tempfile.mkdtemp(prefix="pnp-outputs-")
            generator = torch.Generator("cpu").manual_seed(seed)
            result = self.pipe(image=image, generator=generator, **config.as_kwargs())
            paths = write_outputs(result, config.prompt, self.output_dir, options)
        except ConfigError as err:
            self._remove_outputs()
            raise type(err)(form_name(err.param), err.reason) from None
        except BaseException:
            # Failures and cancellations (cog.CancelationException is a BaseException) leave no files.
            self._remove_outputs()
            raise
        scope = current_scope()
        for name, value in result.metrics.items():
            scope.record_metric(name, value)
        return [Path(p) for p in paths]

    def _remove_outputs(self) -> None:
        # Outputs live until the next prediction starts (Cog has uploaded or encoded them by then)
        # or until their own prediction fails.
        if self.output_dir is not None:
            shutil.rmtree(self.output_dir, ignore_errors=True)
            self.output_dir = None

