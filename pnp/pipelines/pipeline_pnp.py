"""PnPPipeline: Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) as a diffusers pipeline.

Stable Diffusion 1.x and 2.x; an SDXL model loads as ``PnPXLPipeline``. The call, its checks and
its phases are ``pnp.pipelines.base``'s; the method is ``pnp.method.engine``'s.

Imports are absolute (``pnp.…``), not relative, so that diffusers can also load this file on its
own as a community pipeline: ``DiffusionPipeline.from_pretrained(model, custom_pipeline=<this file>)``
with the ``pnp`` package installed. diffusers takes the one DiffusionPipeline subclass a community
file holds, so the other pipeline classes are reached through their modules (``base.``, ``pipeline_pnp_xl.``).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

from pnp.method.text import TextEmbeddings
from pnp.pipelines import base, pipeline_pnp_xl, single_file
from pnp.pipelines.loading import is_sdxl, loading_errors


class PnPPipeline(StableDiffusionLoraLoaderMixin, base.PnPBasePipeline):
    """Text-driven image-to-image translation that keeps the source's structure, on Stable Diffusion 1.x/2.x.

    The source, a real image (DDIM-inverted) or one generated from ``generation_prompt``, is
    translated into every target prompt in batched UNet calls, with the source's decoder
    features (``pnp.method.injection``) injected during the first part of sampling. Only the UNet
    rows the method needs are run (``pnp.method.plan``); everything stays in memory. See
    ``__call__`` for the arguments.

    Components are those of ``StableDiffusionPipeline``; ``safety_checker`` and
    ``feature_extractor`` are optional (None turns the check off).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]
    _exclude_from_cpu_offload = ["safety_checker"]

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
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("safety_checker: a safety checker needs its feature_extractor; pass both or neither")
        super().__init__(
            dict(requires_safety_checker=requires_safety_checker),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, device: str | None = None, dtype=None, **kwargs):
        """Load a Stable Diffusion 1.x/2.x or SDXL diffusers folder or model-hub id onto ``device`` in ``dtype``.

        Called on PnPPipeline, an SDXL model (one whose components include ``text_encoder_2``) comes
        back as ``pnp.PnPXLPipeline``. device defaults to CUDA if present, else the CPU; dtype
        ("float16", torch.float16, ...) to float16 on CUDA, bfloat16 on CPUs with bfloat16
        instructions, float32 otherwise. A local folder loads offline, with its safety checker if it
        has one; a hub id is downloaded once into the Hugging Face cache, without the safety checker
        unless ``safety_checker`` is passed. Other keyword arguments go to
        ``DiffusionPipeline.from_pretrained``. Raises ``pnp.ModelError`` saying what to do when the
        model cannot be loaded. Single ``.safetensors`` checkpoints load with ``from_single_file``.
        """
        with loading_errors(pretrained_model_name_or_path):
            xl = cls is PnPPipeline and is_sdxl(pretrained_model_name_or_path)
        if xl:
            return pipeline_pnp_xl.PnPXLPipeline.from_pretrained(pretrained_model_name_or_path, device, dtype, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, device, dtype, **kwargs)

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | Path, device: str | None = None, dtype=None,
                         config: str | Path | None = None, allow_pickle: bool = False, **kwargs):
        """Load a single-file checkpoint (``.safetensors``, the format of community fine-tunes) onto ``device`` in ``dtype``.

        ``config`` is the base configuration of its architecture, a diffusers folder or model-hub id
        (needed offline); called on PnPPipeline, an SDXL file comes back as ``PnPXLPipeline``.
        Pickled ``.ckpt`` files load only with ``allow_pickle``. Raises ``pnp.ModelError`` saying
        what to do; see ``pnp.pipelines.single_file``.
        """
        path = single_file.check_single_file(pretrained_model_link_or_path, allow_pickle)
        if cls is PnPPipeline and single_file.is_sdxl_checkpoint(path, config):
            return pipeline_pnp_xl.PnPXLPipeline.from_single_file(path, device, dtype, config, allow_pickle, **kwargs)
        return super().from_single_file(path, device, dtype, config, allow_pickle, **kwargs)

    def _embed(self, texts: list[str], device) -> TextEmbeddings:
        hidden, _ = self.encode_prompt(texts, device, 1, False)
        return TextEmbeddings(hidden)
