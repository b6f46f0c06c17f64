"""The diffusers shell of both PnP pipelines: loading, ``check_inputs``, ``__call__`` in numbered phases,
post-processing.

``PnPPipeline`` (Stable Diffusion 1.x/2.x, ``pnp.pipelines.pipeline_pnp``) and ``PnPXLPipeline`` (SDXL,
``pnp.pipelines.pipeline_pnp_xl``) share everything here and differ in their components and text
encoding. The method itself, a call's trajectories and translation, is ``pnp.method.engine.EngineRun``.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import FromSingleFileMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from pnp.config import ConfigError, PnPConfig
from pnp.devices import dtype_name
from pnp.images import resize_for_model
from pnp.messages import plural
from pnp.method.cache import SourceCache, SourceKey, generation_digest, image_digest
from pnp.method.ddim import DDIMSchedule, StepEnd
from pnp.method.engine import EngineRun, Metrics, Observer
from pnp.method.injection import FeatureInjector
from pnp.method.layers import InjectionLayers, architecture_layers, injection_layers
from pnp.method.mask import paste, paste_alpha
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.sources import SourceGroup
from pnp.method.text import Prompts, TextEmbeddings
from pnp.method.vae import decode, image_to_tensor
from pnp.pipelines import single_file
from pnp.pipelines.inputs import MASK_TYPES, as_pil, edit_masks, listed
from pnp.pipelines.loading import (
    check_supported,
    choose_device_and_dtype,
    loading_errors,
    loading_options,
    model_location,
    vae_scale_factor,
)

logger = logging.getLogger("pnp.pipeline")

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The phases that make a source's trajectory (the translation's latents are its targets').
SOURCE_PHASES = ("inversion", "generation")
_DEFAULTS = PnPConfig()


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


class PnPBasePipeline(DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, FromSingleFileMixin):
    """Text-driven image-to-image translation that keeps the source's structure (plug-and-play features).

    The source, a real image (DDIM-inverted) or one generated from ``generation_prompt``, is
    translated into every target prompt in batched UNet calls, with the source's decoder
    features (``pnp.method.injection``) injected during the first part of sampling. Only the UNet
    rows the method needs are run (``pnp.method.plan``); everything stays in memory.

    Subclasses register their components (``__init__``) and encode text (``_embed``).
    """

    _callback_tensor_inputs = ["latents"]
    # Whether the architecture has a safety checker at all (SDXL's has not).
    _has_safety_checker = True

    def __init__(self, config: dict, **components) -> None:
        """Register ``components`` (the subclass's, by name) and ``config`` (its own settings)."""
        super().__init__()
        self.register_modules(**components)
        self.register_to_config(**config)
        vae, unet = components["vae"], components["unet"]
        self.vae_scale_factor = vae_scale_factor(vae.config) if vae is not None else 8
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
        self.injection_layers = None if unet is None else architecture_layers(unet)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, device: str | None = None, dtype=None, **kwargs
    ):
        """Load a Stable Diffusion 1.x/2.x or SDXL diffusers folder or model-hub id (or ``"toy"``, the small model
        shipped in the package, see ``pnp.toy``) onto ``device`` in ``dtype``.

        Called on PnPPipeline, an SDXL model (one whose components include ``text_encoder_2``) comes
        back as ``PnPXLPipeline``. device defaults to CUDA if present, else the CPU; dtype ("float16",
        torch.float16, ...) to float16 on CUDA, bfloat16 on CPUs with bfloat16 instructions, float32
        otherwise. A local folder loads offline, with its safety checker if it has one; a hub id is
        downloaded once into the Hugging Face cache, without the safety checker unless
        ``safety_checker`` is passed. Other keyword arguments go to ``DiffusionPipeline.from_pretrained``.
        Raises ``pnp.ModelError`` saying what to do when the model cannot be loaded, ``pnp.ConfigError``
        for a device or dtype that cannot be used. Single ``.safetensors`` checkpoints load with
        ``from_single_file``.
        """
        device, dtype = choose_device_and_dtype(device, dtype)
        pretrained_model_name_or_path = model_location(pretrained_model_name_or_path)
        with loading_errors(pretrained_model_name_or_path):
            architecture = cls._class_of_model(pretrained_model_name_or_path)
            options = {**loading_options(pretrained_model_name_or_path, architecture._has_safety_checker), **kwargs}
            pipe = super(PnPBasePipeline, architecture).from_pretrained(
                pretrained_model_name_or_path, dtype=dtype, **options
            )
        check_supported(pipe, pretrained_model_name_or_path)
        return pipe.to(device)

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | Path,
        device: str | None = None,
        dtype=None,
        config: str | Path | None = None,
        allow_pickle: bool = False,
        **kwargs,
    ):
        """Load a single-file checkpoint (``.safetensors``, the format of community fine-tunes) onto ``device`` in
        ``dtype``.

        ``config`` is the base configuration of its architecture, a diffusers folder or model-hub id
        (needed offline); called on PnPPipeline, an SDXL file comes back as ``PnPXLPipeline``.
        Pickled ``.ckpt`` files load only with ``allow_pickle``. Raises ``pnp.ModelError`` saying
        what to do; see ``pnp.pipelines.single_file``.
        """
        device, dtype = choose_device_and_dtype(device, dtype)
        path = single_file.check_single_file(pretrained_model_link_or_path, allow_pickle)
        architecture = cls._class_of_checkpoint(path, config)
        pipe = single_file.load_single_file(
            architecture, path, config, dtype, architecture._has_safety_checker, **kwargs
        )
        check_supported(pipe, pretrained_model_link_or_path)
        return pipe.to(device)

    @classmethod
    def _class_of_model(cls, model: str | Path) -> type[PnPBasePipeline]:
        """The pipeline class that loads ``model``: this one (PnPPipeline also answers for SDXL models)."""
        return cls

    @classmethod
    def _class_of_checkpoint(cls, path: Path, config: str | Path | None) -> type[PnPBasePipeline]:
        """The pipeline class that loads the checkpoint file ``path``: this one (PnPPipeline also answers for
        SDXL's)."""
        return cls

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``: a new pipeline on the same components (give ``dtype``: it defaults to float32).

        A compiled UNet's injection hooks (``compile_unet``) come along with the UNet they are on, and
        a PnP pipeline's source cache is shared (its keys tell weights and dtypes apart).
        """
        pipe = super().from_pipe(pipeline, **kwargs)
        if isinstance(pipeline, PnPBasePipeline):
            pipe.source_cache = pipeline.source_cache
            if pipe.unet is pipeline.unet:
                pipe._injector = pipeline._injector
        return pipe

    @property
    def default_resolution(self) -> int:
        """The model's own image size in pixels: its UNet's sample size times the VAE's factor (512 SD 1.x, 768 SD 2.1,
        1024 SDXL)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def set_injection_layers(self, layers: str | InjectionLayers) -> None:
        """Inject into another layer set: a name of ``pnp.method.layers.LAYER_SETS`` or an ``InjectionLayers`` of
        module names.

        The default is the architecture's set ("sd" or "sdxl"). Raises ValueError if the UNet
        lacks a module, or if ``compile_unet`` has already installed the hooks of another set.
        """
        chosen = injection_layers(layers, self.unet)
        if self._injector is not None and chosen != self._injector.layers:
            raise ValueError(
                "injection layers: the compiled UNet's hooks are installed; choose the layers before compile_unet"
            )
        self.injection_layers = chosen

    def set_source_cache(self, max_bytes: int | None) -> None:
        """Bound the source cache to ``max_bytes`` (0 turns it off; None, the default: a quarter of a GPU's memory,
        a tenth of RAM on the CPU). Raises ConfigError("max_bytes", ...) for anything else than None or a whole
        number from 0 up.
        """
        self.source_cache.max_bytes = max_bytes
        if max_bytes == 0:
            self.source_cache.clear()

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

    def check_inputs(
        self,
        image,
        output_type: str,
        callback_on_step_end_tensor_inputs,
        generator=None,
        callback_on_step_end=None,
        mask_image=None,
        **settings,
    ) -> PnPConfig:
        """Validate every argument before any work; returns the configuration. Raises ConfigError naming the
        argument."""
        config = PnPConfig(**settings).resolved(self.default_resolution)
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and (len(generators) != 1 or not isinstance(generators[0], torch.Generator)):
            raise ConfigError(
                "generator", f"expected a torch.Generator (or a list of one), got {reprlib.repr(generator)}"
            )
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ConfigError("callback_on_step_end", f"expected a function, got {reprlib.repr(callback_on_step_end)}")
        if not config.generating and (image is None or (isinstance(image, list) and not image)):
            raise ConfigError("image", "give an input image or a generation prompt")
        if not config.generating:
            wrong = [
                type(i).__name__
                for i in listed(image)
                if not isinstance(i, (PIL.Image.Image, np.ndarray, torch.Tensor))
            ]
            if wrong:
                raise ConfigError("image", f"expected PIL images, numpy arrays or torch tensors, got {wrong[0]}")
        if mask_image is not None:
            _check_masks(config, image, mask_image, output_type)
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
        mask_image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
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
        mask_blend_threshold: float = _DEFAULTS.mask_blend_threshold,
        mask_dilation: int = _DEFAULTS.mask_dilation,
        mask_paste: bool = _DEFAULTS.mask_paste,
        mask_feather: int = _DEFAULTS.mask_feather,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        observer: Observer | None = None,
    ) -> PnPPipelineOutput | tuple:
        """Translate ``image`` (or a source generated from ``generation_prompt``) into every prompt of ``prompt``.

        Args:
            prompt: the target prompt, or a list of them (at most 16): one output each.
            image: the image to translate (PIL; a numpy array (H, W, 3) of uint8, or of floats in
                [0, 1]; a tensor (3, H, W) or (1, 3, H, W) in [0, 1]), resized so that its short
                side is ``resolution`` (the long side at most twice that, both multiples of 64);
                or a list of images, each translated into every prompt (images of the same
                working size share their UNet calls; outputs come image by image, prompts in order).
            mask_image: where each image may change: white there, black where it must stay (any grey level
                counts as white from half up; transparent as black). A PIL image, an (H, W) or (H, W, 3) array
                or an (H, W) or (3, H, W) tensor with the image's aspect ratio (of another size it is scaled);
                with a list of images, a list of as many masks (None for an image edited everywhere). It is
                taken to latent resolution once (``pnp.method.mask``); outside it, every target's latents are
                the source's at the same timestep after each of the first int(steps * mask_blend_threshold)
                steps. Costs no UNet rows. Not with ``generation_prompt``: a generated source is not known
                before the call, so there is nothing to draw a mask on.
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
            mask_blend_threshold: the fraction of sampling steps, from the first, after which masked targets
                take their source's latents outside the mask; 1 (the default) to the end, which keeps the
                background as the source's latents (its VAE reconstruction); lower lets the last steps
                blend the edge, and the background drift.
            mask_dilation: latent pixels the latent mask grows by (0-8).
            mask_paste: after decoding, put the source image's own pixels back outside the mask, over a
                feathered edge: the background is then exact in pixels. Not with ``output_type="latent"``.
            mask_feather: the paste's soft edge, in pixels outside the mask (0-64; 0: hard).
            output_type: "pil", "np", "pt" or "latent".
            return_dict: return a PnPPipelineOutput, or else a tuple of its fields.
            callback_on_step_end: ``callback(pipe, step, timestep, callback_kwargs)``, called after
                every inversion (or generation) step and every translation step, with ``step``
                counting all of them (``pipe.phase`` says which phase, ``pipe.num_timesteps`` how
                many there are). It may return a dict whose "latents" replace the current ones;
                setting ``pipe._interrupt = True`` stops the run after that step (a stopped
                inversion returns no images; a stopped translation returns its partly denoised
                latents, decoded). Returned latents must keep the shape, dtype and device they
                came with; a source whose inversion or generation latents the callback changed
                (returned or in place) is not kept in the source cache.
            callback_on_step_end_tensor_inputs: the tensors passed in ``callback_kwargs``.
            observer: a ``pnp.method.engine.Observer``, such as the feature capture of ``pnp.feature_maps``;
                it may set ``_interrupt`` in ``source_ready`` to skip the translation. With an observer, a
                generated source is made before the translation, not fused into it.

        Raises ``pnp.ConfigError`` (naming the argument) before any work if an argument is invalid.
        """
        # 1. Check inputs: every argument, before any model work.
        config = self.check_inputs(
            image,
            output_type,
            callback_on_step_end_tensor_inputs,
            generator,
            callback_on_step_end,
            mask_image,
            prompt=prompt,
            generation_prompt=generation_prompt,
            num_inference_steps=num_inference_steps,
            num_inversion_steps=num_inversion_steps,
            guidance_scale=guidance_scale,
            generation_guidance_scale=generation_guidance_scale,
            feature_injection_threshold=feature_injection_threshold,
            attention_injection_threshold=attention_injection_threshold,
            negative_prompt=negative_prompt,
            negative_prompt_alpha=negative_prompt_alpha,
            negative_prompt_schedule=negative_prompt_schedule,
            resolution=resolution,
            max_batch_size=max_batch_size,
            mask_blend_threshold=mask_blend_threshold,
            mask_dilation=mask_dilation,
            mask_paste=mask_paste,
            mask_feather=mask_feather,
        )
        originals = [] if config.generating else [as_pil(i) for i in listed(image)]
        pictures = [resize_for_model(original, config.resolution) for original in originals]
        masks = [None] * len(pictures)
        if mask_image is not None:
            masks = edit_masks(
                listed(mask_image), originals, config.resolution, self.vae_scale_factor, config.mask_dilation
            )
        sizes = sorted({picture.size for picture in pictures})
        if output_type != "pil" and len(sizes) > 1:
            raise ConfigError(
                "output_type",
                f"images of different working sizes ({', '.join(f'{w}x{h}' for w, h in sizes)}) "
                "come back only as PIL images; use output_type='pil' or images of one size",
            )
        device = self._execution_device
        metrics = Metrics(device)

        # 2. Encode the prompts: [empty, source, negative, targets...] in one text-encoder batch.
        with metrics.timed("encode_prompts_s"):
            prompts, source_text = self._encode_prompts(config, device)

        # 3. The sources, grouped by working size, each taken from the source cache where it can be; the run.
        if config.generating:
            noise = self._initial_noise(config.resolution, generator, device)
            groups = [self._generation_group(config, noise, source_text, self.fuse_generation and observer is None)]
        else:
            groups = self._image_groups(config, pictures, masks, prompts.uncond)
        metrics.values["cache_hits"] = sum(group.hits.count(True) for group in groups)
        schedule = DDIMSchedule.from_config(self.scheduler.config)
        run = EngineRun(
            config=config,
            schedule=schedule,
            predict=NoisePredictor(self.unet, schedule, self.vae_scale_factor),
            prompts=prompts,
            layers=self.injection_layers,
            vae=self.vae,
            vae_float32=self._vae_float32,
            cache=self.source_cache,
            callbacks=StepCallbacks(self, callback_on_step_end, callback_on_step_end_tensor_inputs),
            metrics=metrics,
            observer=observer,
            injector=self._injector,
        )
        self._interrupt, self._num_timesteps = False, sum(run.steps(group) for group in groups)

        outputs = []
        for group in groups:
            # 4. The trajectories of the sources the cache did not have: inverted, or generated.
            run.trajectories(group)
            if self.interrupt:
                break
            # 5. Translation: every target of the group in the same UNet calls, each source's features injected.
            translated = run.translate(group)
            outputs.append(translated.latents)
            # 6. The source cache keeps the group's sources for the next call (not from a stopped run).
            if not self.interrupt:
                run.keep(group, translated)
        metrics.values.update(unet_calls=run.predict.calls, unet_rows=run.predict.rows)

        # 7. Decode, check and convert.
        generated = groups[0].clean if config.generating else None
        with metrics.timed("decode_s"):
            placed = _in_input_order(groups, outputs, len(config.prompt))
            pastes = [
                (masks[i], pictures[i]) if config.mask_paste and masks[i] is not None else None for i, _ in placed
            ]
            images, source_image, flagged = self._postprocess(
                config, [latent for _, latent in placed], generated, output_type, device, pastes
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, source_image, flagged, metrics.values
        return PnPPipelineOutput(
            images=images, source_image=source_image, nsfw_content_detected=flagged, metrics=metrics.values
        )

    def _encode_prompts(self, config: PnPConfig, device) -> tuple[Prompts, TextEmbeddings]:
        """The translation's prompts, and the source's text (the generation prompt; empty for an image)."""
        texts = ["", config.generation_prompt or "", config.negative_prompt or "", *config.prompt]
        self._warn_about_truncation(texts[1:])
        embeddings = self._embed(texts, device)
        uncond, source, negative, targets = (
            self._unconditional(embeddings[0]),
            embeddings[1],
            embeddings[2],
            embeddings[3:],
        )
        # An empty negative prompt embeds exactly as the unconditional one: no extra rows needed.
        return Prompts(targets, uncond, negative if config.negative_prompt else None), source

    def _embed(self, texts: list[str], device) -> TextEmbeddings:
        """The text encoders' embeddings of ``texts``, one row each (diffusers' encode_prompt: LoRA and textual
        inversion apply)."""
        raise NotImplementedError

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

    def _image_groups(self, config: PnPConfig, pictures, masks, uncond: TextEmbeddings) -> list[SourceGroup]:
        """The input images grouped by working size, in order of first appearance, with their cache entries and
        latent masks (which no key depends on: a mask changes no source data)."""
        groups: dict[tuple[int, int], SourceGroup] = {}
        for index, (picture, mask) in enumerate(zip(pictures, masks)):
            key = self._source_key(config, image_digest(picture), picture.size, config.num_inversion_steps)
            group = groups.setdefault(picture.size, SourceGroup())
            group.add(index, key, self.source_cache.get(key), picture, uncond, None if mask is None else mask.latent)
        return list(groups.values())

    def _generation_group(
        self, config: PnPConfig, noise: torch.Tensor, text: TextEmbeddings, fuse: bool
    ) -> SourceGroup:
        """The generated source: from the cache, or to generate (in the translation's calls if ``fuse``)."""
        content = generation_digest(noise, config.generation_prompt, config.generation_guidance_scale)
        side = config.resolution
        key = self._source_key(config, content, (side, side), None)
        group = SourceGroup(noise=noise)
        group.add(0, key, self.source_cache.get(key), None, text)
        group.fused = fuse and bool(group.misses)
        return group

    def _source_key(self, config: PnPConfig, content: str, size, inversion_steps) -> SourceKey:
        unet = self.unet
        weights = self.source_cache.weights.fingerprint(*self._source_modules())
        return SourceKey(
            weights,
            dtype_name(unet.dtype),
            str(unet.device),
            self.injection_layers,
            content,
            tuple(size),
            config.num_inference_steps,
            inversion_steps,
        )

    def _source_modules(self) -> list[torch.nn.Module]:
        """The modules that compute a source's trajectory and features: every model component but a safety checker."""
        return [m for name, m in self.components.items() if isinstance(m, torch.nn.Module) and name != "safety_checker"]

    def _postprocess(self, config, latents: list[torch.Tensor], generated, output_type, device, pastes):
        """Decode, paste, check and convert the latents one image at a time (bounded memory; sizes may differ).

        ``pastes`` holds, per latent, the (``EditMask``, source picture) of the pixel paste, or None.
        """
        if generated is not None:
            latents, pastes = [generated, *latents], [None, *pastes]
        if output_type == "latent":
            images = torch.cat(latents) if latents else torch.empty(0)
            return (*_split_source(images, generated is not None), None)
        converted, flagged = [], []
        for latent, pasted in zip(latents, pastes):
            decoded = decode(self.vae, latent, self._vae_float32).float()
            if pasted is not None:
                mask, picture = pasted
                alpha = paste_alpha(mask.pixels, config.mask_feather).to(decoded.device)
                decoded = paste(decoded, image_to_tensor(picture).to(decoded.device), alpha)
            bad = False
            if self.safety_checker is not None:
                decoded, [bad] = self.run_safety_checker(decoded, device, self.safety_checker.dtype)
            converted.append(
                self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=[not bad])
            )
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


class StepCallbacks:
    """After each inversion, generation or translation step: the progress bar, the user's callback, the interrupt."""

    def __init__(self, pipe: PnPBasePipeline, callback: Callable | None, tensor_inputs) -> None:
        self.pipe, self.callback, self.tensor_inputs = pipe, callback, tuple(tensor_inputs)
        self.step = 0  # counts every step of the call, whatever its phase
        self.changed = False  # whether the callback changed the latents of the last phase (returned or in place)

    @property
    def stopped(self) -> bool:
        return self.pipe.interrupt

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[StepEnd]:
        self.changed = False
        # Only the source phases' latents become trajectories (which the source cache keeps), so only there is a
        # change watched for; a translation's latents are its targets'.
        watched = self.callback is not None and name in SOURCE_PHASES
        with self.pipe.progress_bar(total=total) as bar:
            bar.set_description(name)

            def step_end(index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
                bar.update()
                self.pipe._phase = name
                if self.callback is not None:
                    before = latents.clone() if watched else None
                    given = {"latents": latents}
                    returned = self.callback(self.pipe, self.step, timestep, {k: given[k] for k in self.tensor_inputs})
                    latents = _callback_latents(returned, latents, self.step, name)
                    self.changed |= before is not None and not torch.equal(before, latents)
                self.step += 1
                return None if self.pipe.interrupt else latents

            yield step_end


def _callback_latents(returned, latents: torch.Tensor, step: int, phase: str) -> torch.Tensor:
    """The latents to go on with after a step callback returned ``returned``: its "latents" if it gave any.

    Checked here: a tensor of another shape, dtype or device would fail deep inside the UNet, not naming the callback.
    """
    if returned is None:
        return latents
    if not isinstance(returned, dict):
        raise ConfigError(
            "callback_on_step_end",
            f"returned a {type(returned).__name__} at step {step} ({phase}); "
            'return a dict (or None), whose "latents" replace the current ones',
        )
    new = returned.get("latents", latents)
    if new is latents:
        return latents
    expected = f"a tensor of shape {tuple(latents.shape)}, {dtype_name(latents.dtype)}, on {latents.device}"
    if not isinstance(new, torch.Tensor):
        raise ConfigError(
            "callback_on_step_end",
            f'returned "latents" that are a {type(new).__name__} at step '
            f"{step} ({phase}); return {expected}, as it was given",
        )
    if (new.shape, new.dtype, new.device) != (latents.shape, latents.dtype, latents.device):
        got = f"{tuple(new.shape)}, {dtype_name(new.dtype)}, on {new.device}"
        raise ConfigError(
            "callback_on_step_end",
            f"returned latents of shape {got} at step {step} ({phase}); return {expected}, as it was given",
        )
    return new


def _in_input_order(
    groups: list[SourceGroup], outputs: list[torch.Tensor], count: int
) -> list[tuple[int, torch.Tensor]]:
    """(image index, (1, 4, h, w) latents) per target, image by image in the call's order, prompts in order.

    Groups that an interruption left untranslated have no outputs.
    """
    placed = {}
    for group, latents in zip(groups, outputs):
        for k, index in enumerate(group.indices):
            placed[index] = [latents[k * count + p][None] for p in range(count)]
    return [(index, latent) for index in sorted(placed) for latent in placed[index]]


def _check_masks(config: PnPConfig, image, mask_image, output_type: str) -> None:
    """What can be told of ``mask_image`` without reading its pixels (``inputs.edit_masks`` reads them)."""
    if config.generating:
        raise ConfigError(
            "mask_image",
            "a mask marks part of an input image, and a generated source is not known before the call: leave out "
            "the mask, or give the image instead of a generation prompt",
        )
    masks, images = listed(mask_image), listed(image)
    if len(masks) != len(images):
        raise ConfigError(
            "mask_image",
            f"give one mask per image: {plural(len(images), 'image')}, {plural(len(masks), 'mask')} "
            "(None for an image that may change everywhere)",
        )
    wrong = [type(m).__name__ for m in masks if m is not None and not isinstance(m, MASK_TYPES)]
    if wrong:
        raise ConfigError("mask_image", f"expected PIL images, numpy arrays or torch tensors, got {wrong[0]}")
    if config.mask_paste and output_type == "latent":
        raise ConfigError(
            "mask_paste", 'pastes pixels after decoding, so it needs decoded outputs: not output_type="latent"'
        )


def _joined(converted: list, output_type: str):
    """One output from per-image outputs: a list of PIL images, or one array or tensor."""
    if output_type == "pil":
        return [image for images in converted for image in images]
    if not converted:
        return np.zeros((0, 0, 0, 3)) if output_type == "np" else torch.empty(0)
    return np.concatenate(converted) if output_type == "np" else torch.cat(converted)


def _split_source(images, with_source: bool):
    """(translations, generated source or None) from a sequence that starts with the source in generation mode."""
    return (images[1:], images[0]) if with_source else (images, None)
