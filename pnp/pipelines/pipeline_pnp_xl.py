"""PnPXLPipeline: plug-and-play features on Stable Diffusion XL (experimental).

The call and the method are those of ``PnPPipeline`` (``pnp.pipelines.base``, ``pnp.method``); SDXL
adds, and this class handles:
- two text encoders, whose penultimate hidden states are joined, and the pooled, projected
  output of the second, which every UNet row gets with its text (``pnp.method.text.TextEmbeddings``);
- the added time ids (original size, crop, target size) of the working size (``pnp.method.noise_predictor``);
- ``force_zeros_for_empty_prompt``: the unconditional text (also a real image's source text) is
  zeros, as diffusers' SDXL pipeline makes it when no negative prompt is given;
- a VAE that overflows in float16: it runs in float32 (``pnp.method.vae``);
- its own injected layers, derived from SD 1.x's (``pnp.method.layers``, "sdxl").
No public PnP for SDXL exists, so the layer choice is untested on real weights until the
evaluation command has measured it.

``PnPPipeline.from_pretrained`` returns this class for an SDXL model; load it directly the same way.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pnp.method.text import TextEmbeddings
from pnp.method.vae import needs_float32
from pnp.pipelines import base


class PnPXLPipeline(StableDiffusionXLLoraLoaderMixin, base.PnPBasePipeline):
    """``PnPPipeline`` for Stable Diffusion XL weights (experimental); the same call, arguments and outputs.

    Components are those of ``StableDiffusionXLPipeline`` without the image encoder: no safety
    checker (SDXL ships none) and no watermark. LoRA adapters load into the UNet and both text
    encoders (``load_lora_weights``).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = []
    _exclude_from_cpu_offload = []
    _has_safety_checker = False
    safety_checker = None

    # diffusers' own SDXL prompt encoding: both encoders, pooled output, LoRA scaling, textual inversion.
    encode_prompt = StableDiffusionXLPipeline.encode_prompt

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        force_zeros_for_empty_prompt: bool = True,
    ):
        super().__init__(
            dict(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt),
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )

    def _embed(self, texts: list[str], device) -> TextEmbeddings:
        hidden, _, pooled, _ = self.encode_prompt(
            texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return TextEmbeddings(hidden, pooled)

    def _unconditional(self, empty: TextEmbeddings) -> TextEmbeddings:
        return empty.zeros_like() if self.config.force_zeros_for_empty_prompt else empty

    @property
    def _vae_float32(self) -> bool:
        return needs_float32(self.vae)
