"""Where plug-and-play injects: the layer sets, by name, and the modules they mean in a given UNet.

Injected into Stable Diffusion 1.x/2.x, exactly as the method specifies (Tumanyan et al. 2023,
Sec. 4; pnp-diffusers), the "sd" layers:
- the residual-branch output of ``up_blocks.1.resnets.1`` (its ``conv2``, before the skip is added),
  at 1/32 of the image (16x16 at 512 px);
- the self-attention queries and keys (never the values) of ``attn1`` in decoder layers 4-11:
  ``up_blocks.1.attentions.{1,2}`` (1/32), ``up_blocks.2`` and ``up_blocks.3`` (1/16 and 1/8).

SDXL (experimental: no published PnP for SDXL exists; these are derived, not measured). Its
decoder has attention only in ``up_blocks.0`` (1/32 of the image, 32x32 at 1024 px; three
attentions of 10 transformer blocks in SDXL itself) and ``up_blocks.1`` (1/16; three of 2
blocks); ``up_blocks.2`` (1/8) has none. Distilled SDXL models (SSD-1B, Segmind Vega) have
fewer transformer blocks. Keeping each feature at the scale it has in SD 1.x gives the
"sdxl" layers:
- the residual feature of ``up_blocks.0.resnets.1`` (conv2): the second resnet of the first
  decoder block at 1/32, as ``up_blocks.1.resnets.1`` is in SD 1.x (whose ``up_blocks.0`` has
  no attention and works at 1/64);
- queries and keys of ``attn1`` in ``up_blocks.0.attentions.{1,2}`` (1/32, as SD's
  ``up_blocks.1.attentions.{1,2}``) and ``up_blocks.1.attentions.{0,1,2}`` (1/16); there is
  nothing at 1/8 to inject into.
In every transformer block of those attentions, as many as the UNet has, not only the first: in
SD 1.x each attention has one block, so the method imposes the source's self-attention on every
self-attention of the injected attentions; injecting only the first of SDXL's 10 would leave
nine later self-attentions free to rebuild the target's own layout. "sdxl-first-block" injects
only ``transformer_blocks.0``, for comparison. ``LAYER_SETS`` names every set by its residual
modules and attentions (the blocks are counted in the UNet at hand); any other
``InjectionLayers`` of module names may be used for experiments.

Torch-free: the command line offers the sets' names before any model library loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InjectionLayers:
    """Where features are injected in a UNet (diffusers module names): a layer set resolved for it, or any choice."""

    residual: tuple[str, ...]  # modules whose output is the residual-branch feature
    attention: tuple[str, ...]  # self-attention modules whose queries and keys are injected

    def feature_names(self, residual: bool, attention: bool) -> tuple[str, ...]:
        """The names of the features injected at a step with these injections active."""
        names = self.residual if residual else ()
        if attention:
            names += tuple(attention_feature(layer, part) for layer in self.attention for part in "qk")
        return names


def attention_feature(layer: str, part: str) -> str:
    """The name of an attention layer's queries ("q") or keys ("k"), whichever module computes them."""
    return f"{layer}:{part}"


@dataclass(frozen=True)
class LayerSet:
    """A named choice of layers: residual modules, and attentions whose self-attentions are injected.

    Which transformer blocks of each attention is the UNet's own structure: ``layers(unet)`` takes
    every block an attention has (or only its first), so one set fits every depth of an
    architecture (SDXL's 10 and 2 blocks per attention, fewer in distilled models).
    """

    residual: tuple[str, ...]  # modules whose output is the residual-branch feature
    attentions: tuple[str, ...]  # attention modules (``Transformer2DModel``) whose blocks' ``attn1`` are injected
    first_block_only: bool = False

    def layers(self, unet: torch.nn.Module) -> InjectionLayers:
        """The module names this set means in ``unet``.

        An attention that ``unet`` lacks, or that has no transformer blocks, keeps its first block's
        name, which ``missing_modules`` then reports.
        """
        modules = dict(unet.named_modules())
        attention = []
        for name in self.attentions:
            blocks = getattr(modules.get(name), "transformer_blocks", None)
            count = 1 if self.first_block_only or not blocks else len(blocks)
            attention += [f"{name}.transformer_blocks.{n}.attn1" for n in range(count)]
        return InjectionLayers(self.residual, tuple(attention))


def _attentions(blocks: tuple[tuple[int, tuple[int, ...]], ...]) -> tuple[str, ...]:
    """The attention modules of each (up block, attention indices)."""
    return tuple(f"up_blocks.{block}.attentions.{index}" for block, indices in blocks for index in indices)


_SDXL_RESIDUAL = ("up_blocks.0.resnets.1.conv2",)
_SDXL_ATTENTIONS = _attentions(((0, (1, 2)), (1, (0, 1, 2))))
# Every layer set by name; see the module docstring.
LAYER_SETS = {
    "sd": LayerSet(("up_blocks.1.resnets.1.conv2",), _attentions(((1, (1, 2)), (2, (0, 1, 2)), (3, (0, 1, 2))))),
    "sdxl": LayerSet(_SDXL_RESIDUAL, _SDXL_ATTENTIONS),
    "sdxl-first-block": LayerSet(_SDXL_RESIDUAL, _SDXL_ATTENTIONS, first_block_only=True),
}


def default_layer_set(unet: torch.nn.Module) -> str:
    """The name of the layer set for a UNet's architecture: "sdxl" for SDXL (added text-time conditions), else "sd"."""
    return "sdxl" if unet.config.get("addition_embed_type") == "text_time" else "sd"


def architecture_layers(unet: torch.nn.Module) -> InjectionLayers:
    """The modules of ``unet`` that its architecture's layer set names (unchecked: see ``missing_modules``)."""
    return LAYER_SETS[default_layer_set(unet)].layers(unet)


def injection_layers(layers: str | InjectionLayers, unet: torch.nn.Module) -> InjectionLayers:
    """The modules of ``unet`` that the layer set ``layers`` names (or ``layers`` itself), checked.

    Raises ValueError naming what is wrong.
    """
    if isinstance(layers, str):
        if layers not in LAYER_SETS:
            raise ValueError(f"injection layers: {layers!r} is not one of {', '.join(LAYER_SETS)}")
        layers = LAYER_SETS[layers].layers(unet)
    missing = missing_modules(layers, unet)
    if missing:
        raise ValueError(
            f"injection layers: this UNet has no module {missing[0]} (is it the layer set for another architecture?)"
        )
    return layers


def missing_modules(layers: InjectionLayers, unet: torch.nn.Module) -> list[str]:
    """The modules of ``layers`` that ``unet`` lacks."""
    modules = dict(unet.named_modules())
    return [name for name in (*layers.residual, *layers.attention) if name not in modules]
