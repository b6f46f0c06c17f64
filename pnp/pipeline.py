"""PnPPipeline: Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) as a diffusers pipeline.

Imports are absolute (``pnp.…``), not relative, so that diffusers can also load this file on its
own as a community pipeline: ``DiffusionPipeline.from_pretrained(model, custom_pipeline=<this file>)``
with the ``pnp`` package installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

from pnp.config import ConfigError, PnPConfig
from pnp.ddim import DDIMSchedule
from pnp.feature_maps import feature_maps
from pnp.features import FeatureMaps
from pnp.generation import generate
from pnp.images import resize_for_model, to_rgb
from pnp.injection import SD_LAYERS
from pnp.inversion import Trajectory, invert
from pnp.models import check_supported, choose_device_and_dtype, loading_errors, loading_options
from pnp.rows import translation_plan
from pnp.translate import CallObserver, Prompts, translate
from pnp.unet import NoisePredictor
from pnp.vae import decode, encode, image_to_tensor

logger = logging.getLogger("pnp.pipeline")

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_DEFAULTS = PnPConfig()


class RunObserver(CallObserver, Protocol):
    """Told the source trajectory once it is made, then (``before_call``) about every translation UNet call."""

    def source_ready(self, trajectory: Trajectory) -> None: ...


@dataclass
class PnPPipelineOutput(BaseOutput):
    """What a translation returns.

    images: one per target prompt, in prompt order (PIL images, an (n, H, W, 3) array or an
        (n, 3, H, W) tensor in [0, 1], or (n, 4, h, w) latents, as ``output_type`` says).
    source_image: the generated source (generation mode, same type), else None.
    nsfw_content_detected: per image, whether the safety checker flagged (and blacked) it; None
        without a safety checker.
    metrics: UNet calls and rows, and seconds per phase.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    source_image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None
    nsfw_content_detected: list[bool] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class PnPPipeline(
    DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin, FromSingleFileMixin
):
    """Text-driven image-to-image translation that keeps the source's structure (plug-and-play features).

    The source, a real image (DDIM-inverted) or one generated from ``generation_prompt``, is
    translated into every target prompt in batched UNet calls, with the source's decoder
    features (``pnp.injection``) injected during the first part of sampling. Only the UNet rows
    the method needs are run (``pnp.rows``); everything stays in memory.

    Components are those of ``StableDiffusionPipeline``; ``safety_checker`` and
    ``feature_extractor`` are optional (None turns the check off).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents"]

    # diffusers' own Stable Diffusion implementations, which read only components this pipeline
    # has; they bring LoRA scaling, textual inversion and clip_skip with them.
    encode_prompt = StableDiffusionPipeline.encode_prompt
    run_safety_checker = StableDiffusionPipeline.run_safety_checker

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        requires_safety_checker: bool = False,
    ):
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker: a safety checker needs its feature_extractor; pass both or neither")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._interrupt = False
        self._phase = None
        self._num_timesteps = 0

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, device: str | None = None, dtype=None, **kwargs):
        """Load a Stable Diffusion 1.x/2.x diffusers folder or model-hub id onto ``device`` in ``dtype``.

        device defaults to CUDA if present, else the CPU; dtype ("float16", torch.float16, ...) to
        float16 on CUDA, bfloat16 on CPUs with bfloat16 instructions, float32 otherwise. A local
        folder loads offline, with its safety checker if it has one; a hub id is downloaded once
        into the Hugging Face cache, without the safety checker unless ``safety_checker`` is passed.
        Other keyword arguments go to ``DiffusionPipeline.from_pretrained``. Raises
        ``pnp.ModelError`` saying what to do when the model cannot be loaded.
        """
        device, dtype = choose_device_and_dtype(device, dtype)
        options = {**loading_options(pretrained_model_name_or_path), **kwargs}
        with loading_errors(pretrained_model_name_or_path):
            pipe = super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, **options)
        check_supported(pipe, pretrained_model_name_or_path)
        return pipe.to(device)

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a step callback to stop the run after that step."""
        return self._interrupt

    @property
    def phase(self) -> str | None:
        """The phase the last step callback came from: "inversion", "generation" or "translation"."""
        return self._phase

    @property
    def num_timesteps(self) -> int:
        """Steps of the current run, inversion (or generation) and translation together: what a progress bar counts."""
        return self._num_timesteps

    def check_inputs(self, image, output_type: str, callback_on_step_end_tensor_inputs, **settings) -> PnPConfig:
        """Validate every argument before any work; returns the configuration. Raises ConfigError naming the argument."""
        config = PnPConfig(**settings)
        if not config.generating and image is None:
            raise ConfigError("image", "give an input image or a generation prompt")
        if not config.generating and not isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            raise ConfigError("image", f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ConfigError("output_type", f"{output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ConfigError(
                "callback_on_step_end_tensor_inputs",
                f"{unknown} are not among the tensors this pipeline passes: {self._callback_tensor_inputs}",
            )
        return config

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str] = _DEFAULTS.prompt,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        generation_prompt: str | None = None,
        num_inference_steps: int = _DEFAULTS.num_inference_steps,
        num_inversion_steps: int | None = None,
        guidance_scale: float = _DEFAULTS.guidance_scale,
        generation_guidance_scale: float = _DEFAULTS.generation_guidance_scale,
        feature_injection_threshold: float = _DEFAULTS.feature_injection_threshold,
        attention_injection_threshold: float = _DEFAULTS.attention_injection_threshold,
        negative_prompt: str | None = None,
        negative_prompt_alpha: float = _DEFAULTS.negative_prompt_alpha,
        negative_prompt_schedule: str = _DEFAULTS.negative_prompt_schedule,
        resolution: int = _DEFAULTS.resolution,
        generator: torch.Generator | None = None,
        max_batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        observer: RunObserver | None = None,
    ) -> PnPPipelineOutput | tuple:
        """Translate ``image`` (or a source generated from ``generation_prompt``) into every prompt of ``prompt``.

        Args:
            prompt: the target prompt, or a list of them (at most 16): one output each.
            image: the image to translate (PIL; a numpy array (H, W, 3) of uint8, or of floats in
                [0, 1]; a tensor (3, H, W) or (1, 3, H, W) in [0, 1]), resized so that its short
                side is ``resolution`` (the long side at most twice that, both multiples of 64).
            generation_prompt: generate the source from this prompt instead (``image`` is ignored).
            num_inference_steps: DDIM sampling steps of the translation (and of the generation).
            num_inversion_steps: DDIM inversion steps of ``image``; None means as many as
                ``num_inference_steps``. They must reach every sampling timestep.
            guidance_scale: classifier-free guidance scale of the translation.
            generation_guidance_scale: guidance scale of the source generation.
            feature_injection_threshold: residual features are injected in the first
                int(steps * threshold) steps.
            attention_injection_threshold: self-attention queries and keys are injected in the
                first int(steps * threshold) steps.
            negative_prompt: what to steer away from; None for no negative prompting.
            negative_prompt_alpha: weight of the unconditional term against the negative one (0-1).
            negative_prompt_schedule: "constant", "linear" (alpha to 0) or "exp".
            resolution: short side of the working image in pixels (a multiple of 64, 128-1024).
            generator: the random generator of a generated source's initial noise.
            max_batch_size: most prompts per UNet call (bounds memory; results are the same).
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return a PnPPipelineOutput, or else a tuple of its fields.
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs)``, called after
                every inversion (or generation) step and every translation step, with ``step``
                counting all of them (``pipe.phase`` says which phase, ``pipe.num_timesteps`` how
                many there are). It may return a dict whose "latents" replace the current ones;
                setting ``pipe._interrupt = True`` stops the run after that step (a stopped
                inversion returns no images; a stopped translation returns its partly denoised
                latents, decoded).
            callback_on_step_end_tensor_inputs: the tensors passed in ``callback_kwargs``.
            observer: a ``RunObserver``, such as the feature capture of ``feature_maps``; it may set
                ``_interrupt`` in ``source_ready`` to skip the translation.

        Raises ``pnp.ConfigError`` (naming the argument) before any work if an argument is invalid.
        """
        # 1. Check inputs: every argument, before any model work.
        config = self.check_inputs(
            image, output_type, callback_on_step_end_tensor_inputs,
            prompt=prompt, generation_prompt=generation_prompt, num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps, guidance_scale=guidance_scale,
            generation_guidance_scale=generation_guidance_scale,
            feature_injection_threshold=feature_injection_threshold,
            attention_injection_threshold=attention_injection_threshold, negative_prompt=negative_prompt,
            negative_prompt_alpha=negative_prompt_alpha, negative_prompt_schedule=negative_prompt_schedule,
            resolution=resolution, max_batch_size=max_batch_size,
        )
        source = None if config.generating else resize_for_model(_as_pil(image), config.resolution)
        device = self._execution_device
        ddim = DDIMSchedule.from_config(self.scheduler.config)
        predict = NoisePredictor(self.unet)
        metrics: dict[str, float] = {}
        plan = translation_plan(config, ddim.num_train_timesteps, ddim.steps_offset)
        source_steps = config.num_inference_steps if config.generating else len(
            ddim.inversion_timesteps(config.num_inversion_steps, up_to=plan[0].timestep)
        )
        self._interrupt, self._num_timesteps = False, source_steps + len(plan)
        step_end = _StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 2. Encode the prompts: [empty, source, negative, targets...] in one text-encoder batch.
        with self._timed(metrics, "encode_prompts_s"):
            prompts, source_embedding = self._encode_prompts(config, device)

        # 3. The source trajectory: a generation recorded step by step, or an inversion.
        generated = None
        if config.generating:
            with self._timed(metrics, "generation_s"), step_end.phase("generation", source_steps) as on_step:
                noise = self._initial_noise(config.resolution, generator, device)
                latents, generated = generate(
                    predict, ddim, noise, prompts.uncond, source_embedding, config.num_inference_steps,
                    config.generation_guidance_scale, on_step,
                )
        else:
            with self._timed(metrics, "encode_s"):
                latent = encode(self.vae, image_to_tensor(source).to(device))
            with self._timed(metrics, "inversion_s"), step_end.phase("inversion", source_steps) as on_step:
                latents = invert(
                    predict, ddim, latent, prompts.uncond, config.num_inference_steps, config.num_inversion_steps, on_step
                )
        trajectory = Trajectory(latents, source_embedding)
        if observer is not None:
            observer.source_ready(trajectory)

        # 4. Translation: every prompt in the same UNet calls, the source's features injected.
        outputs = None
        if not self.interrupt:
            with self._timed(metrics, "translation_s"), step_end.phase("translation", len(plan)) as on_step:
                outputs = translate(
                    predict, ddim, trajectory, prompts, plan, config.guidance_scale, SD_LAYERS, on_step, observer
                )
            outputs = step_end.latents if outputs is None else outputs
        metrics.update(unet_calls=predict.calls, unet_rows=predict.rows)

        # 5. Decode, check and convert.
        with self._timed(metrics, "decode_s"):
            images, source_image, flagged = self._postprocess(config, outputs, generated, output_type, device)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, source_image, flagged, metrics
        return PnPPipelineOutput(images=images, source_image=source_image, nsfw_content_detected=flagged, metrics=metrics)

    def feature_maps(
        self,
        prompt: str | list[str] | None = None,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        layers: list[str] | None = None,
        **kwargs,
    ) -> FeatureMaps:
        """PCA maps of decoder features and self-attention (the paper's Fig. 3 and 6) of a source and its translations.

        Translates ``image`` (or a source generated from ``generation_prompt``) into every prompt
        of ``prompt`` as ``__call__`` does, with the same keyword arguments, and records the chosen
        modules' outputs for the source and each target's conditional row (``pnp.capture``); with
        no prompt only the source is shown and nothing is translated. Per map and timestep, one
        PCA over all images gives each image an RGB map (``pnp.features``, ``pnp.pca``).

        Args:
            timesteps: sampling timesteps to show (of ``num_inference_steps``' schedule); None
                for five spread over it.
            layers: module names (see ``pnp.features``); None for ``up_blocks.1.resnets.1`` and
                ``up_blocks.1.attentions.1.transformer_blocks.0.attn1``.

        Returns a ``pnp.features.FeatureMaps``: the maps as arrays and PIL images, a labelled
        grid per map, and the translation's own output. Recording changes no result. Raises
        ``pnp.ConfigError`` (naming the argument) before any work if an argument is invalid.
        """
        source = None if image is None else _as_pil(image)
        return feature_maps(self, prompt, source, timesteps, layers, **kwargs)

    def _encode_prompts(self, config: PnPConfig, device) -> tuple[Prompts, torch.Tensor]:
        texts = ["", config.generation_prompt or "", config.negative_prompt or "", *config.prompt]
        self._warn_about_truncation(texts[1:])
        embeddings, _ = self.encode_prompt(texts, device, 1, False)
        uncond, source, negative, targets = embeddings[:1], embeddings[1:2], embeddings[2:3], embeddings[3:]
        # An empty negative prompt embeds exactly as the unconditional one: no extra rows needed.
        return Prompts(targets, uncond, negative if config.negative_prompt else None), source

    def _warn_about_truncation(self, texts: list[str]) -> None:
        """CLIP reads at most ``model_max_length`` tokens; say which prompt lost words and what was kept."""
        limit = self.tokenizer.model_max_length
        for text in dict.fromkeys(t for t in texts if t):
            ids = self.tokenizer(text, truncation=False).input_ids
            if len(ids) > limit:
                kept = self.tokenizer.decode(ids[1 : limit - 1], skip_special_tokens=True)
                logger.warning(
                    f"prompt {text[:40]!r}... is {len(ids) - 2} tokens long; the text encoder reads only the "
                    f"first {limit - 2}, so only this part is used: {kept!r}"
                )

    def _initial_noise(self, resolution: int, generator, device) -> torch.Tensor:
        side = resolution // self.vae_scale_factor
        shape = (1, self.unet.config.in_channels, side, side)
        # float32 noise; with a CPU generator it is drawn on the CPU, so a seed gives the same source on every device.
        return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=torch.float32)

    def _postprocess(self, config, outputs, generated, output_type, device):
        """Decode the latents one image at a time (bounded memory), run the safety checker, convert to ``output_type``."""
        latents = [] if outputs is None else list(outputs.split(1))
        if generated is not None:
            latents.insert(0, generated)
        if output_type == "latent":
            images = torch.cat(latents) if latents else torch.empty(0)
            return (*_split_source(images, generated is not None), None)
        decoded = torch.cat([decode(self.vae, latent).float() for latent in latents]) if latents else None
        flagged = None
        if decoded is not None and self.safety_checker is not None:
            decoded, flagged = self.run_safety_checker(decoded, device, self.safety_checker.dtype)
            self._log_flagged(config, flagged, generated is not None)
        if decoded is None:
            images = [] if output_type == "pil" else np.zeros((0, 0, 0, 3)) if output_type == "np" else torch.empty(0)
            return images, None, None
        denormalize = None if flagged is None else [not f for f in flagged]
        images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=denormalize)
        images, source_image = _split_source(images, generated is not None)
        if flagged is not None and generated is not None:
            flagged = flagged[1:]
        return images, source_image, flagged

    def _log_flagged(self, config: PnPConfig, flagged: list[bool], with_source: bool) -> None:
        labels = (["the generated source"] if with_source else []) + [
            f"output {i + 1} ({prompt!r})" for i, prompt in enumerate(config.prompt)
        ]
        for label, bad in zip(labels, flagged):
            if bad:
                logger.warning(f"the safety checker flagged {label}; it was replaced by a black image")

    @contextmanager
    def _timed(self, metrics: dict[str, float], name: str):
        start = time.perf_counter()
        yield
        if self._execution_device.type == "cuda":
            torch.cuda.synchronize(self._execution_device)
        metrics[name] = time.perf_counter() - start


class _StepEnd:
    """After each inversion, generation or translation step: the progress bar, the user's callback, the interrupt."""

    def __init__(self, pipe: PnPPipeline, callback: Callable | None, tensor_inputs) -> None:
        self.pipe, self.callback, self.tensor_inputs = pipe, callback, tuple(tensor_inputs)
        self.step = 0
        self.latents = None  # the latents after the last step taken, for a stopped translation

    @contextmanager
    def phase(self, name: str, total: int):
        with self.pipe.progress_bar(total=total) as bar:
            bar.set_description(name)

            def on_step(index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
                bar.update()
                self.pipe._phase = name
                if self.callback is not None:
                    given = {"latents": latents}
                    returned = self.callback(self.pipe, self.step, timestep, {k: given[k] for k in self.tensor_inputs})
                    latents = (returned or {}).get("latents", latents)
                self.step += 1
                self.latents = latents
                return None if self.pipe.interrupt else latents

            yield on_step


def _split_source(images, with_source: bool):
    """(translations, generated source or None) from a sequence that starts with the source in generation mode."""
    return (images[1:], images[0]) if with_source else (images, None)


def _as_pil(image) -> PIL.Image.Image:
    """A PIL image from a PIL image, an (H, W, 3) array (uint8, or floats in [0, 1]) or a (1,) 3 x H x W tensor in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        tensor = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ConfigError("image", f"a tensor image must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        image = tensor.permute(1, 2, 0).float().cpu().numpy()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError("image", f"an array image must be (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        if image.min() < 0 or image.max() > 1:
            raise ConfigError("image", f"float image values must lie in [0, 1], got {image.min():g} to {image.max():g}")
        image = (image * 255).round().astype(np.uint8)
    return PIL.Image.fromarray(image, "RGB")
