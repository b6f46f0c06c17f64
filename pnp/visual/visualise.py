"""Computing the feature visualisations: a translation run with capture on, then one PCA per map and timestep.

See ``pnp.visual.maps`` for what the maps are and ``pnp.visual.capture`` for which rows are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import PIL.Image
import torch

from pnp.config import PnPConfig
from pnp.images import resize_for_model
from pnp.method.ddim import DDIMSchedule
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.trajectory import Trajectory
from pnp.pipelines.inputs import as_pil
from pnp.visual.attention_maps import SelfAttentionMaps
from pnp.visual.capture import ModuleCapture
from pnp.visual.maps import FeatureMap, FeatureMaps, MapRequest, attention_layer, map_request, run_config
from pnp.visual.pca import matrix_free_pca_scores, pca_scores, scores_to_rgb

_CONFIG_FIELDS = {f.name for f in fields(PnPConfig)} - {"prompt"}


def feature_maps(
    pipe,
    prompt: str | Sequence[str] | None = None,
    image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
    timesteps: Sequence[int] | None = None,
    layers: Sequence[str] | None = None,
    **kwargs,
) -> FeatureMaps:
    """PCA maps of decoder features and self-attention (the paper's Fig. 3 and 6) of a source and its translations.

    ``pipe`` (a ``PnPPipeline`` or ``PnPXLPipeline``) translates ``image`` (or a source generated
    from ``generation_prompt``) into every prompt of ``prompt`` as its ``__call__`` does, with the
    same keyword arguments, while the chosen modules' outputs are recorded for the source and each
    target's conditional row (``pnp.visual.capture``); with no prompt only the source is shown and
    nothing is translated. Per map and timestep, one PCA over all images gives each image an RGB
    map (``pnp.visual.maps``, ``pnp.visual.pca``).

    Args:
        timesteps: sampling timesteps to show (of ``num_inference_steps``' schedule); None for
            five spread over it.
        layers: module names (see ``pnp.visual.maps``); None for ``up_blocks.1.resnets.1`` and
            ``up_blocks.1.attentions.1.transformer_blocks.0.attn1``.

    Returns a ``pnp.visual.maps.FeatureMaps``: the maps as arrays and PIL images, a labelled grid
    per map, and the translation's own output. Recording changes no result. Raises
    ``pnp.ConfigError`` (naming the argument) before any work if an argument is invalid.
    """
    fixed = sorted({"output_type", "return_dict", "observer"} & set(kwargs))
    if fixed:
        raise TypeError(f"feature_maps() sets {', '.join(fixed)} itself; leave it out")
    image = None if image is None else as_pil(image)
    prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
    config = run_config(prompts, **{k: v for k, v in kwargs.items() if k in _CONFIG_FIELDS}).resolved(
        pipe.default_resolution
    )
    request = _request(pipe, config, timesteps, layers)
    n = 1 + len(prompts)
    with ModuleCapture(pipe.unet, request.modules, request.timesteps, n) as capture:
        observer = capture if prompts else _SourceOnly(pipe, capture)
        result = pipe(prompt=config.prompt, image=image, output_type="pil", observer=observer, **kwargs)
        with torch.inference_mode():
            capture.record_source(NoisePredictor(pipe.unet, vae_scale_factor=pipe.vae_scale_factor))
    source = result.source_image if config.generating else resize_for_model(image, config.resolution)
    images = [source, *(result.images if prompts else [])]
    heads = {name: _module(pipe.unet, name).heads for name in map(attention_layer, request.maps) if name}
    maps = {
        name: {t: _feature_map(capture, name, t, n, source.size, heads) for t in request.timesteps}
        for name in request.maps
    }
    return FeatureMaps(prompts, request.timesteps, images, maps, result if prompts else None, capture.extra_calls)


class _SourceOnly:
    """The observer of a run without target prompts: keeps the source trajectory, then stops before the translation."""

    def __init__(self, pipe, capture: ModuleCapture) -> None:
        self.pipe, self.capture = pipe, capture

    def source_ready(self, trajectory: Trajectory) -> None:
        self.capture.source_ready(trajectory)
        self.pipe._interrupt = True  # the pipeline's documented stop: no translation follows


def _request(pipe, config: PnPConfig, timesteps, layers) -> MapRequest:
    """The request, checked against the model's own schedule (``ModuleCapture`` checks the modules)."""
    ddim = DDIMSchedule.from_config(pipe.scheduler.config)
    return map_request(layers, timesteps, config.num_inference_steps, ddim.num_train_timesteps, ddim.steps_offset)


def _module(unet: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(unet.named_modules())[name]


def _feature_map(capture: ModuleCapture, name: str, t: int, images: int, size: tuple[int, int], heads) -> FeatureMap:
    """One PCA over all images' rows of a map at timestep t."""
    layer = attention_layer(name)
    if layer:
        q, k = (capture.outputs(f"{layer}.{part}", t) for part in ("to_q", "to_k"))
        scores = matrix_free_pca_scores(SelfAttentionMaps(q, k, heads[layer]))
    else:
        x = capture.outputs(name, t)  # conv: (images, C, h, w); projection: (images, P, C)
        rows = x.flatten(2).transpose(1, 2) if x.ndim == 4 else x
        scores = pca_scores(rows.reshape(-1, rows.shape[-1]))
    h, w = _map_shape(scores.shape[0] // images, size)
    rgb = scores_to_rgb(scores, images).reshape(images, h, w, 3)
    return FeatureMap(name, t, scores.reshape(images, h, w, 3).numpy(), rgb, size)


def _map_shape(positions: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a map of ``positions`` positions over a working image of ``size`` (the UNet keeps the aspect)."""
    width, height = size
    factor = math.isqrt(width * height // positions)
    if (height // factor) * (width // factor) != positions:
        raise ValueError(f"{positions} positions do not tile a {width}x{height} image")
    return height // factor, width // factor
