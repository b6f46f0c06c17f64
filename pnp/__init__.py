"""Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) for Stable Diffusion, in memory and batched.

The public Python API is ``PnPPipeline``, a diffusers pipeline (``PnPXLPipeline`` for SDXL);
``PnPConfig`` is the validated set of its translation settings, ``ConfigError`` / ``ModelError``
the errors it raises for bad arguments and unusable models, and ``feature_maps`` draws the
paper's feature visualisations of a translation.
"""

from importlib import import_module

from pnp.config import ConfigError, PnPConfig
from pnp.pipelines.loading import ModelError

# These pull in torch, diffusers and transformers: imported on first use, so that the command
# line answers --help at once and configures those libraries before they load.
_LAZY = {
    "PnPPipeline": "pipelines.pipeline_pnp",
    "PnPXLPipeline": "pipelines.pipeline_pnp_xl",
    "PnPPipelineOutput": "pipelines.base",
    "InjectionError": "method.injection",
    "feature_maps": "visual.visualise",
}

__all__ = ["ConfigError", "ModelError", "PnPConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pnp' has no attribute {name!r}")
