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

from pnp.visual.capture import FeatureCapture
from pnp.config import PnPConfig
from pnp.method.ddim import DDIMSchedule
from pnp.visual.maps import FeatureMap, FeatureMaps, FeatureRequest, attention_layer, feature_request, run_config
from pnp.images import resize_for_model
from pnp.method.trajectory import Trajectory
from pnp.visual.pca import matrix_free_pca_scores, pca_scores, scores_to_rgb
from pnp.method.noise_predictor import NoisePredictor
from pnp.pipelines.inputs import as_pil

# Attention maps are computed in blocks of query rows (all heads) of at most this many elements:
# 2**24 float32 values, 64 MiB, is 512 query rows of the 8 heads of a 4096-position layer.
MAP_BLOCK_ELEMENTS = 2**24
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
    config = run_config(prompts, **{k: v for k, v in kwargs.items() if k in _CONFIG_FIELDS}).resolved(pipe.default_resolution)
    request = _request(pipe, config, timesteps, layers)
    n = 1 + len(prompts)
    with FeatureCapture(pipe.unet, request.modules, request.timesteps, n) as capture:
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


class SelfAttentionMaps:
    """The self-attention maps of several images, stacked, as a ``pnp.visual.pca.RowOperator``.

    Row i * P + r, column h * P + c holds A_ih[r, c], with A_ih = softmax(Q_ih K_ih^T / sqrt(d)) the
    map of head h of image i over P positions. Products with X and X^T compute the maps a block of
    query rows (all heads) at a time, in one buffer of ``block_elements`` values that every block
    reuses (allocating a fresh block each time costs more in page faults than the maps cost to compute).
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, heads: int, block_elements: int = MAP_BLOCK_ELEMENTS) -> None:
        images, positions, channels = q.shape  # to_q / to_k outputs: (images, P, heads * d)
        d = channels // heads
        self.q = q.float().view(images, positions, heads, d).transpose(1, 2)  # (images, heads, P, d)
        self.k = k.float().view(images, positions, heads, d).transpose(1, 2)
        self.heads, self.positions, self.scale = heads, positions, d**-0.5
        self.shape = (images * positions, heads * positions)
        self.block_rows = max(1, min(positions, block_elements // (heads * positions)))
        self._buffer = torch.empty(heads * self.block_rows * positions, device=q.device)

    def maps(self, image: int, rows: slice) -> torch.Tensor:
        """(heads, rows, P): the attention of ``rows`` query positions of ``image`` over its key positions.

        The result lives in the shared buffer: the next call overwrites it.
        """
        queries = self.q[image, :, rows]
        maps = self._buffer[: queries.shape[0] * queries.shape[1] * self.positions].view(*queries.shape[:2], -1)
        torch.matmul(queries, self.k[image].transpose(-1, -2), out=maps)
        maps.mul_(self.scale)
        maps.sub_(maps.amax(dim=-1, keepdim=True)).exp_()  # softmax in place
        return maps.div_(maps.sum(dim=-1, keepdim=True))

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.q.device).view(self.heads, self.positions, -1)
        out = torch.empty(self.shape[0], v.shape[-1], device=self.q.device)
        for image, rows in self._blocks():
            out[self._rows(image, rows)] = (self.maps(image, rows) @ v).sum(0)
        return out

    def rmatmul(self, u: torch.Tensor) -> torch.Tensor:
        u = u.to(self.q.device)
        out = torch.zeros(self.heads, self.positions, u.shape[-1], device=self.q.device)
        for image, rows in self._blocks():
            out += self.maps(image, rows).transpose(1, 2) @ u[self._rows(image, rows)]
        return out.view(self.shape[1], -1)

    def _rows(self, image: int, rows: slice) -> slice:
        """The rows of X that are ``rows`` of ``image``'s queries."""
        return slice(image * self.positions + rows.start, image * self.positions + rows.stop)

    def _blocks(self):
        for image in range(self.q.shape[0]):
            for start in range(0, self.positions, self.block_rows):
                yield image, slice(start, min(start + self.block_rows, self.positions))


class _SourceOnly:
    """The observer of a run without target prompts: keeps the source trajectory, then stops before the translation."""

    def __init__(self, pipe, capture: FeatureCapture) -> None:
        self.pipe, self.capture = pipe, capture

    def source_ready(self, trajectory: Trajectory) -> None:
        self.capture.source_ready(trajectory)
        self.pipe._interrupt = True  # the pipeline's documented stop: no translation follows


def _request(pipe, config: PnPConfig, timesteps, layers) -> FeatureRequest:
    """The request, checked against the model's own schedule (``FeatureCapture`` checks the modules)."""
    ddim = DDIMSchedule.from_config(pipe.scheduler.config)
    return feature_request(layers, timesteps, config.num_inference_steps, ddim.num_train_timesteps, ddim.steps_offset)


def _module(unet: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(unet.named_modules())[name]


def _feature_map(capture: FeatureCapture, name: str, t: int, images: int, size: tuple[int, int], heads) -> FeatureMap:
    """One PCA over all images' rows of a map at timestep t."""
    layer = attention_layer(name)
    if layer:
        q, k = (capture.features(f"{layer}.{part}", t) for part in ("to_q", "to_k"))
        scores = matrix_free_pca_scores(SelfAttentionMaps(q, k, heads[layer]))
    else:
        x = capture.features(name, t)  # conv: (images, C, h, w); projection: (images, P, C)
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
