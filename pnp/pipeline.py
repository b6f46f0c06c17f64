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

from pnp.cache import SourceCache, SourceKey, generation_digest, image_digest
from pnp.config import ConfigError, PnPConfig
from pnp.ddim import DDIMSchedule
from pnp.devices import dtype_name
from pnp.feature_maps import feature_maps
from pnp.features import FeatureMaps
from pnp.generation import generate
from pnp.images import resize_for_model, to_rgb
from pnp.injection import LAYER_SETS, FeatureInjector, InjectionLayers, default_layer_set, injection_layers
from pnp.inversion import Trajectory, invert
from pnp.models import (
    check_supported, choose_device_and_dtype, is_sdxl, loading_errors, loading_options, model_location,
)
from pnp.rows import translation_plan
from pnp.sources import SourceGroup
from pnp.text import TextEmbeddings
from pnp.translate import CallObserver, Generation, Prompts, translate
from pnp.unet import NoisePredictor
from pnp.vae import decode, encode, image_to_tensor

logger = logging.getLogger("pnp.pipeline")

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_DEFAULTS = PnPConfig()


class RunObserver(CallObserver, Protocol):
    """Told each source trajectory once it is made, then (``before_call``) about every translation UNet call."""

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
        self._init_state(vae, unet)

    def _init_state(self, vae: AutoencoderKL | None, unet: UNet2DConditionModel | None) -> None:
        """The pipeline's own state beside its components (every architecture's)."""
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._interrupt = False
        self._phase = None
        self._num_timesteps = 0
        # Recent sources, for calls that reuse one (see set_source_cache).
        self.source_cache = SourceCache()
        # Whether a generated source is made in the translation's own UNet calls (saves its source
        # rows) or first, separately; the results are the same within batch tolerance.
        self.fuse_generation = True
        # The injection hooks of a compiled UNet, installed once before compiling (see compile_unet).
        self._injector = None
        # Where the source's features are injected: the architecture's set (see set_injection_layers).
        self.injection_layers = None if unet is None else LAYER_SETS[default_layer_set(unet)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, device: str | None = None, dtype=None, **kwargs):
        """Load a Stable Diffusion 1.x/2.x or SDXL diffusers folder or model-hub id (or ``"toy"``, the small model
        shipped in the package, see ``pnp.toy``) onto ``device`` in ``dtype``.

        Called on PnPPipeline, an SDXL model (one whose components include ``text_encoder_2``)
        comes back as its subclass ``pnp.pipeline_xl.PnPXLPipeline``. device defaults to CUDA if
        present, else the CPU; dtype ("float16", torch.float16, ...) to float16 on CUDA, bfloat16
        on CPUs with bfloat16 instructions, float32 otherwise. A local folder loads offline, with
        its safety checker if it has one; a hub id is downloaded once into the Hugging Face cache,
        without the safety checker unless ``safety_checker`` is passed. Other keyword arguments go
        to ``DiffusionPipeline.from_pretrained``. Raises ``pnp.ModelError`` saying what to do when
        the model cannot be loaded. Single ``.safetensors`` checkpoints load with ``from_single_file``
        (see ``pnp.single_file``).
        """
        device, dtype = choose_device_and_dtype(device, dtype)
        pretrained_model_name_or_path = model_location(pretrained_model_name_or_path)
        with loading_errors(pretrained_model_name_or_path):
            if cls is PnPPipeline and is_sdxl(pretrained_model_name_or_path):
                from pnp.pipeline_xl import PnPXLPipeline

                return PnPXLPipeline.from_pretrained(pretrained_model_name_or_path, device, dtype, **kwargs)
            options = {**loading_options(pretrained_model_name_or_path, cls._safety_checker_options), **kwargs}
            pipe = super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, **options)
        check_supported(pipe, pretrained_model_name_or_path)
        return pipe.to(device)

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | Path, device: str | None = None, dtype=None,
                         config: str | Path | None = None, allow_pickle: bool = False, **kwargs):
        """Load a single-file checkpoint (``.safetensors``, the format of community fine-tunes) onto ``device`` in ``dtype``.

        ``config`` is the base configuration of its architecture, a diffusers folder or model-hub id
        (needed offline); an SDXL file comes back as ``PnPXLPipeline``. Pickled ``.ckpt`` files load
        only with ``allow_pickle``. Raises ``pnp.ModelError`` saying what to do; see ``pnp.single_file``.
        """
        from pnp.single_file import load_single_file

        device, dtype = choose_device_and_dtype(device, dtype)
        pipe = load_single_file(cls, pretrained_model_link_or_path, config, dtype, allow_pickle, **kwargs)
        check_supported(pipe, pretrained_model_link_or_path)
        return pipe.to(device)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``: a new pipeline on the same components (give ``dtype``: it defaults to float32).

        A compiled UNet's injection hooks (``compile_unet``) come along with the UNet they are on, and
        a PnPPipeline's source cache is shared (its keys tell weights and dtypes apart).
        """
        pipe = super().from_pipe(pipeline, **kwargs)
        if isinstance(pipeline, PnPPipeline):
            pipe.source_cache = pipeline.source_cache
            if pipe.unet is pipeline.unet:
                pipe._injector = pipeline._injector
        return pipe

    # Whether loading_options may turn a safety checker off: only pipelines that have one.
    _safety_checker_options = True

    @property
    def default_resolution(self) -> int:
        """The model's own image size in pixels: its UNet's sample size times the VAE's factor (512 SD 1.x, 768 SD 2.1, 1024 SDXL)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def set_injection_layers(self, layers: str | InjectionLayers) -> None:
        """Inject into another layer set: a name of ``pnp.injection.LAYER_SETS`` or an ``InjectionLayers`` of module names.

        The default is the architecture's set ("sd" or "sdxl"). Raises ValueError if the UNet
        lacks a module, or if ``compile_unet`` has already installed the hooks of another set.
        """
        chosen = injection_layers(layers, self.unet)
        if self._injector is not None and chosen != self._injector.layers:
            raise ValueError("injection layers: the compiled UNet's hooks are installed; choose the layers before compile_unet")
        self.injection_layers = chosen

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
        config = PnPConfig(**settings).resolved(self.default_resolution)
        if not config.generating and (image is None or (isinstance(image, list) and not image)):
            raise ConfigError("image", "give an input image or a generation prompt")
        if not config.generating:
            wrong = [type(i).__name__ for i in _listed(image) if not isinstance(i, (PIL.Image.Image, np.ndarray, torch.Tensor))]
            if wrong:
                raise ConfigError("image", f"expected PIL images, numpy arrays or torch tensors, got {wrong[0]}")
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
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
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
        resolution: int | None = _DEFAULTS.resolution,
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
                side is ``resolution`` (the long side at most twice that, both multiples of 64);
                or a list of images, each translated into every prompt (images of the same
                working size share their UNet calls; outputs come image by image, prompts in order).
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
            resolution: short side of the working image in pixels (a multiple of 64, 128-1024); None
                for the model's own size, ``default_resolution`` (512 for SD 1.x, 768 for SD 2.1, 1024 for SDXL).
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
                ``_interrupt`` in ``source_ready`` to skip the translation. With an observer, a
                generated source is made before the translation, not fused into it.

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
        pictures = [] if config.generating else [resize_for_model(_as_pil(i), config.resolution) for i in _listed(image)]
        sizes = sorted({picture.size for picture in pictures})
        if output_type != "pil" and len(sizes) > 1:
            raise ConfigError("output_type", f"images of different working sizes ({', '.join(f'{w}x{h}' for w, h in sizes)}) "
                              "come back only as PIL images; use output_type='pil' or images of one size")
        device = self._execution_device
        ddim = DDIMSchedule.from_config(self.scheduler.config)
        predict = NoisePredictor(self.unet, ddim, self.vae_scale_factor)
        metrics: dict[str, float] = {"cache_hits": 0}

        # 2. Encode the prompts: [empty, source, negative, targets...] in one text-encoder batch.
        with self._timed(metrics, "encode_prompts_s"):
            prompts, source_embedding = self._encode_prompts(config, device)

        # 3. Group the sources by working size, each taken from the source cache where it can be.
        if config.generating:
            noise = self._initial_noise(config.resolution, generator, device)
            groups = [self._generation_group(config, noise, source_embedding, self.fuse_generation and observer is None)]
        else:
            groups = self._image_groups(config, pictures, prompts.uncond)
        metrics["cache_hits"] = sum(group.hits.count(True) for group in groups)
        self._interrupt, self._num_timesteps = False, sum(self._steps_of(group, config, ddim) for group in groups)
        step_end = _StepEnd(self, callback_on_step_end, callback_on_step_end_tensor_inputs)

        outputs = []
        for group in groups:
            # 4. The trajectories of the sources the cache did not have: inverted, or generated.
            if not self.interrupt:
                self._make_trajectories(group, config, ddim, predict, prompts, step_end, metrics)
            if observer is not None and not self.interrupt:
                for trajectory in group.trajectories:
                    observer.source_ready(trajectory)
            # 5. Translation: every target of the group in the same UNet calls, each source's features injected.
            if self.interrupt:
                break
            outputs.append(self._translate(group, config, ddim, predict, prompts, step_end, metrics, observer))
        metrics.update(unet_calls=predict.calls, unet_rows=predict.rows)

        # 6. Decode, check and convert.
        generated = groups[0].clean if config.generating else None
        with self._timed(metrics, "decode_s"):
            images, source_image, flagged = self._postprocess(
                config, _in_input_order(groups, outputs, len(config.prompt)), generated, output_type, device
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, source_image, flagged, metrics
        return PnPPipelineOutput(images=images, source_image=source_image, nsfw_content_detected=flagged, metrics=metrics)

    def compile_unet(self, channels_last: bool | None = None, **compile_options) -> None:
        """Run the UNet through ``torch.compile`` (``compile_options`` are its arguments), the injection included.

        The injection hooks are installed first and stay, since compiled code ignores hooks added
        later (the injection's own check would then stop the run). ``channels_last`` (default: on
        CUDA only) stores the UNet's weights in the layout GPU convolution kernels prefer. Each
        new batch shape compiles on its first call: minutes on a CPU, so warm up before timing.
        """
        if self._injector is None:
            self._injector = FeatureInjector(self.unet, self.injection_layers).install()
        if channels_last if channels_last is not None else self.unet.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        self.unet.compile(**compile_options)

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

    def set_source_cache(self, max_bytes: int | None) -> None:
        """Bound the source cache to ``max_bytes`` (0 turns it off; None: a quarter of a GPU's memory, a tenth of RAM on the CPU)."""
        self.source_cache.max_bytes = max_bytes
        if max_bytes == 0:
            self.source_cache.clear()

    def _image_groups(self, config: PnPConfig, pictures, uncond: torch.Tensor) -> list[SourceGroup]:
        """The input images grouped by working size, in order of first appearance, with their cache entries."""
        groups: dict[tuple[int, int], SourceGroup] = {}
        for index, picture in enumerate(pictures):
            key = self._source_key(config, image_digest(picture), picture.size, config.num_inversion_steps)
            group = groups.setdefault(picture.size, SourceGroup())
            group.add(index, key, self.source_cache.get(key), picture, uncond)
        return list(groups.values())

    def _generation_group(self, config: PnPConfig, noise: torch.Tensor, embedding: torch.Tensor, fuse: bool) -> SourceGroup:
        """The generated source: from the cache, or to generate (in the translation's calls if ``fuse``)."""
        content = generation_digest(noise, config.generation_prompt, config.generation_guidance_scale)
        side = config.resolution
        key = self._source_key(config, content, (side, side), None)
        group = SourceGroup(noise=noise)
        group.add(0, key, self.source_cache.get(key), None, embedding)
        group.fused = fuse and bool(group.misses)
        return group

    def _source_key(self, config: PnPConfig, content: str, size, inversion_steps) -> SourceKey:
        unet = self.unet
        weights = self.source_cache.weights.fingerprint(*self._source_modules())
        return SourceKey(weights, dtype_name(unet.dtype), str(unet.device), self.injection_layers, content, tuple(size),
                         config.num_inference_steps, inversion_steps)

    def _source_modules(self) -> list[torch.nn.Module]:
        """The modules that compute a source's trajectory and features: every model component but a safety checker."""
        return [m for name, m in self.components.items() if isinstance(m, torch.nn.Module) and name != "safety_checker"]

    def _steps_of(self, group: SourceGroup, config: PnPConfig, ddim: DDIMSchedule) -> int:
        """The steps a group takes: the inversion of its uncached images (or a separate generation), then the translation."""
        steps = config.num_inference_steps
        if not group.misses:
            return steps
        if group.noise is not None:
            return steps if group.fused else 2 * steps
        noisiest = ddim.timesteps(steps)[0]
        return len(ddim.inversion_timesteps(config.num_inversion_steps, up_to=noisiest)) + steps

    def _make_trajectories(self, group: SourceGroup, config, ddim, predict, prompts: Prompts, step_end, metrics) -> None:
        """Invert the group's uncached images together, or generate its uncached source (unless it is fused)."""
        misses = group.misses
        if not misses:
            logger.info(f"{_count(len(group.hits), 'source')} from the source cache: no encoding, inversion or generation")
            return
        if group.noise is not None:
            if not group.fused:
                with self._timed(metrics, "generation_s"), step_end.phase("generation", config.num_inference_steps) as on_step:
                    embedding = group.trajectories[0].embedding
                    latents, group.clean = generate(predict, ddim, group.noise, prompts.uncond, embedding,
                                                    config.num_inference_steps, config.generation_guidance_scale, on_step)
                group.trajectories[0].latents.update(latents)
            return
        with self._timed(metrics, "encode_s"):
            latent = torch.cat([encode(self.vae, image_to_tensor(group.pictures[k]).to(predict.unet.device), self._vae_float32)
                                for k in misses])
        steps = self._steps_of(group, config, ddim) - config.num_inference_steps
        with self._timed(metrics, "inversion_s"), step_end.phase("inversion", steps) as on_step:
            latents = invert(predict, ddim, latent, prompts.uncond.expand(len(misses)),
                             config.num_inference_steps, config.num_inversion_steps, on_step)
        for n, k in enumerate(misses):
            group.trajectories[k].latents.update({t: z[n : n + 1] for t, z in latents.items()})

    def _translate(self, group: SourceGroup, config, ddim, predict, prompts: Prompts, step_end, metrics,
                   observer) -> torch.Tensor:
        """Translate a group's sources into every prompt, keeping what the cache should know for next time."""
        fused = group.fused
        layers = self.injection_layers
        needed = {step.timestep: layers.feature_names(step.residual, step.attention)
                  for step in translation_plan(config, num_train_timesteps=ddim.num_train_timesteps, offset=ddim.steps_offset)}
        known = group.known_features()
        plan = translation_plan(
            config, len(group.trajectories), tuple(group.known_timesteps(needed)), fused,
            ddim.num_train_timesteps, ddim.steps_offset,
        )
        generation = Generation(group.noise, group.trajectories[0].embedding, config.generation_guidance_scale) if fused else None
        with self._timed(metrics, "translation_s"), step_end.phase("translation", len(plan)) as on_step:
            translated = translate(predict, ddim, group.trajectories, prompts, plan, config.guidance_scale, layers,
                                   on_step, observer, known, generation, self._injector)
        if generation is not None:
            group.clean = generation.clean
        if not self.interrupt:
            group.remember(self.source_cache, translated.features, predict.unet.device)
        return translated.latents

    def _encode_prompts(self, config: PnPConfig, device) -> tuple[Prompts, TextEmbeddings]:
        texts = ["", config.generation_prompt or "", config.negative_prompt or "", *config.prompt]
        self._warn_about_truncation(texts[1:])
        embeddings = self._embed(texts, device)
        uncond, source, negative, targets = self._unconditional(embeddings[0]), embeddings[1], embeddings[2], embeddings[3:]
        # An empty negative prompt embeds exactly as the unconditional one: no extra rows needed.
        return Prompts(targets, uncond, negative if config.negative_prompt else None), source

    def _embed(self, texts: list[str], device) -> TextEmbeddings:
        """The text encoder's embeddings of ``texts``, one row each (diffusers' encode_prompt: LoRA and textual inversion apply)."""
        hidden, _ = self.encode_prompt(texts, device, 1, False)
        return TextEmbeddings(hidden)

    def _unconditional(self, empty: TextEmbeddings) -> TextEmbeddings:
        """The unconditional text: the empty prompt's embedding (SDXL may use zeros instead)."""
        return empty

    @property
    def _vae_float32(self) -> bool:
        """Whether the VAE runs in float32 whatever its dtype (SDXL's overflows in float16)."""
        return False

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

    def _postprocess(self, config, latents: list[torch.Tensor], generated, output_type, device):
        """Decode, check and convert the latents one image at a time (bounded memory; sizes may differ)."""
        if generated is not None:
            latents = [generated, *latents]
        if output_type == "latent":
            images = torch.cat(latents) if latents else torch.empty(0)
            return (*_split_source(images, generated is not None), None)
        converted, flagged = [], []
        for latent in latents:
            decoded = decode(self.vae, latent, self._vae_float32).float()
            bad = False
            if self.safety_checker is not None:
                decoded, [bad] = self.run_safety_checker(decoded, device, self.safety_checker.dtype)
            converted.append(self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[not bad]))
            flagged.append(bad)
        if self.safety_checker is None:
            flagged = None
        else:
            self._log_flagged(config, flagged, generated is not None)
        images = _joined(converted, output_type)
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


def _listed(image) -> list:
    """The call's images as a list."""
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _in_input_order(groups: list[SourceGroup], outputs: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """(1, 4, h, w) latents per target, image by image in the call's order, prompts in order.

    Groups that an interruption left untranslated have no outputs.
    """
    placed = {}
    for group, latents in zip(groups, outputs):
        for k, index in enumerate(group.indices):
            placed[index] = [latents[k * count + p][None] for p in range(count)]
    return [latent for index in sorted(placed) for latent in placed[index]]


def _joined(converted: list, output_type: str):
    """One output from per-image outputs: a list of PIL images, or one array or tensor."""
    if output_type == "pil":
        return [image for images in converted for image in images]
    if not converted:
        return np.zeros((0, 0, 0, 3)) if output_type == "np" else torch.empty(0)
    return np.concatenate(converted) if output_type == "np" else torch.cat(converted)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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
