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
from pnp.pipelines.loading import is_sdxl


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
    def _class_of_model(cls, model: str | Path) -> type[base.PnPBasePipeline]:
        """PnPXLPipeline for an SDXL model (its components include ``text_encoder_2``), else this class."""
        if cls is PnPPipeline and is_sdxl(model):
            return pipeline_pnp_xl.PnPXLPipeline
        return cls

    @classmethod
    def _class_of_checkpoint(cls, path: Path, config: str | Path | None) -> type[base.PnPBasePipeline]:
        """PnPXLPipeline for an SDXL checkpoint (by its base configuration, or by its keys), else this class."""
        if cls is PnPPipeline and single_file.is_sdxl_checkpoint(path, config):
            return pipeline_pnp_xl.PnPXLPipeline
        return cls

    def _embed(self, texts: list[str], device) -> TextEmbeddings:
        hidden, _ = self.encode_prompt(texts, device, 1, False)
        return TextEmbeddings(hidden)
