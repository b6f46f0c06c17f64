"""Feature visualisations (the paper's Fig. 3 and Fig. 6): which maps, at which timesteps, and what comes back.

A map is named by a diffusers module of the UNet:
- a residual block's ``conv1`` or ``conv2`` output, e.g. ``up_blocks.1.resnets.1.conv2`` (the
  injected feature); its channels are the PCA's columns;
- a self-attention layer's ``to_q`` or ``to_k`` output, heads concatenated, e.g.
  ``up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q``;
- a self-attention layer's attention map, ``<attn1>.attention``: per head
  softmax(Q K^T / sqrt(head_dim)); its columns are heads times key positions.
A residual block (``...resnets.N``) stands for its two convs, an ``attn1`` layer for its three maps.

Each image shown (the source, then one translation per prompt) gets one RGB map per map name and
timestep, from one PCA over all of them (``pnp.visual.pca``). Torch-free, so that the command line can
check a request before any model library is imported; ``pnp.visual.visualise`` computes the maps, and
``pnp.app.feature_files`` writes them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pnp.config import ConfigError, PnPConfig
from pnp.method.timesteps import NUM_TRAIN_TIMESTEPS, STEPS_OFFSET, sampling_timesteps
from pnp.outputs import output_labels
from pnp.visual.grids import labelled_grid

DEFAULT_LAYERS = ("up_blocks.1.resnets.1", "up_blocks.1.attentions.1.transformer_blocks.0.attn1")
ATTENTION = "attention"  # the last part of a self-attention map's name
DEFAULT_TIMESTEPS = 5
# Grid tiles are the working size halved until the short side is at most this (at most 3 times,
# so that every map's cells stay whole pixels).
GRID_TILE = 256

# A UNet block's name, which every map's name starts with.
BLOCK = r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)"
_RESNET = re.compile(rf"{BLOCK}\.resnets\.\d+")
_ATTN1 = re.compile(rf"{BLOCK}\.attentions\.\d+\.transformer_blocks\.\d+\.attn1")
_PARTS = {_RESNET: ("conv1", "conv2"), _ATTN1: ("to_q", "to_k", ATTENTION)}
LAYER_HELP = (
    "a residual block or one of its convs (e.g. up_blocks.1.resnets.1, up_blocks.1.resnets.1.conv2), or a "
    "self-attention layer or one of its maps (e.g. up_blocks.1.attentions.1.transformer_blocks.0.attn1, "
    "...attn1.to_q, ...attn1.to_k, ...attn1.attention)"
)
# PnPConfig needs a target prompt. A run without target prompts stops after the source trajectory,
# before the translation, so this one is encoded but never used.
_UNUSED_PROMPT = "unused"


def map_names(layers: Sequence[str]) -> tuple[str, ...]:
    """The maps that ``layers`` name, in order, without repeats; ConfigError("layers") for any other name."""
    names: list[str] = []
    for layer in layers:
        for pattern, parts in _PARTS.items():
            if pattern.fullmatch(layer):
                names += [f"{layer}.{part}" for part in parts]
                break
            base, _, part = layer.rpartition(".")
            if pattern.fullmatch(base) and part in parts:
                names.append(layer)
                break
        else:
            raise ConfigError("layers", f"{layer!r} is not a map pnp draws; name {LAYER_HELP}")
    if not names:
        raise ConfigError("layers", f"name at least one layer: {LAYER_HELP}")
    return tuple(dict.fromkeys(names))


def attention_layer(name: str) -> str | None:
    """The ``attn1`` layer of a self-attention map's name; None for other maps."""
    base, _, part = name.rpartition(".")
    return base if part == ATTENTION else None


def map_modules(names: Sequence[str]) -> tuple[str, ...]:
    """The modules whose outputs the maps are made from: an attention map needs its layer's to_q and to_k."""
    modules: list[str] = []
    for name in names:
        layer = attention_layer(name)
        modules += [f"{layer}.to_q", f"{layer}.to_k"] if layer else [name]
    return tuple(dict.fromkeys(modules))


def default_timesteps(schedule: Sequence[int]) -> tuple[int, ...]:
    """Five timesteps of a sampling ``schedule`` (noisiest first), at step indices round(k (N - 1) / 4), k = 0..4.

    Halves round up; fewer than five steps give each step once.
    """
    last = len(schedule) - 1
    indices = dict.fromkeys(int(k * last / (DEFAULT_TIMESTEPS - 1) + 0.5) for k in range(DEFAULT_TIMESTEPS))
    return tuple(schedule[i] for i in indices)


def check_timesteps(values: Sequence[int], schedule: Sequence[int]) -> tuple[int, ...]:
    """``values`` in sampling order without repeats, if each is on ``schedule``; else ConfigError("timesteps")."""
    off = [v for v in values if v not in schedule]
    if off:
        raise ConfigError(
            "timesteps",
            f"{off[0]} is not a timestep of the {len(schedule)}-step sampling schedule; "
            f"use some of {', '.join(map(str, schedule))}",
        )
    if not values:
        raise ConfigError("timesteps", "name at least one timestep")
    return tuple(t for t in schedule if t in set(values))


@dataclass(frozen=True)
class MapRequest:
    """The maps to draw and the timesteps to draw them at (noisiest first)."""

    maps: tuple[str, ...]
    timesteps: tuple[int, ...]

    @property
    def modules(self) -> tuple[str, ...]:
        """The modules to record."""
        return map_modules(self.maps)


def map_request(
    layers: Sequence[str] | None,
    timesteps: Sequence[int] | None,
    steps: int,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    offset: int = STEPS_OFFSET,
) -> MapRequest:
    """A checked request; None means the defaults (``DEFAULT_LAYERS``, ``default_timesteps``)."""
    schedule = sampling_timesteps(steps, num_train_timesteps, offset)
    chosen = default_timesteps(schedule) if timesteps is None else check_timesteps(list(timesteps), schedule)
    return MapRequest(map_names(DEFAULT_LAYERS if layers is None else list(layers)), chosen)


def run_config(prompts: Sequence[str], **settings) -> PnPConfig:
    """The configuration of a visualisation run: ``settings`` (PnPConfig fields) and ``prompts``, perhaps none."""
    return PnPConfig(prompt=tuple(prompts) or (_UNUSED_PROMPT,), **settings)


@dataclass
class FeatureMap:
    """One map at one timestep, for every image shown."""

    name: str
    timestep: int
    scores: np.ndarray  # (images, h, w, 3) float32: each position's projection on the 3 principal components
    rgb: np.ndarray  # (images, h, w, 3) uint8: the scores scaled per image and component to 0..255
    size: tuple[int, int]  # (width, height) of the working image

    @property
    def images(self) -> list[Image.Image]:
        """The maps as RGB images, enlarged nearest-neighbour to the working size."""
        return [Image.fromarray(rgb).resize(self.size, Image.Resampling.NEAREST) for rgb in self.rgb]


@dataclass
class FeatureMaps:
    """What ``pnp.feature_maps`` returns.

    images: the source at the working size, then one translation per prompt (PIL).
    labels: ``source``, then each prompt's slug (as the translate command names its outputs).
    maps: map name -> timestep -> FeatureMap, in the request's order.
    translation: the translation's PnPPipelineOutput; None without prompts.
    extra_unet_calls: UNet calls made for the source's features outside the injection windows.
    """

    prompts: tuple[str, ...]
    timesteps: tuple[int, ...]
    images: list[Image.Image]
    maps: dict[str, dict[int, FeatureMap]]
    translation: object | None = None
    extra_unet_calls: int = 0
    labels: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = output_labels(self.prompts, with_source=True)

    def grid(self, name: str) -> Image.Image:
        """One labelled grid of a map: a row per image, the image first, then a column per timestep."""
        size = _tile_size(self.images[0].size)
        rows = []
        for i, image in enumerate(self.images):
            maps = [self.maps[name][t].images[i].resize(size, Image.Resampling.NEAREST) for t in self.timesteps]
            rows.append([_fit(image, size), *maps])
        row_labels = ["source", *self.prompts]
        return labelled_grid(rows, row_labels, ["image", *(f"t={t}" for t in self.timesteps)], name)


def _tile_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    for _ in range(3):
        if min(width, height) <= GRID_TILE:
            break
        width, height = width // 2, height // 2
    return width, height


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
