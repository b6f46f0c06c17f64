"""Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) for Stable Diffusion, in memory and batched."""

from importlib import import_module

from .config import ConfigError, PnPConfig

# The editor pulls in torch, diffusers and transformers; importing it lazily lets `python -m pnp`
# configure those libraries' logging before they load.
_LAZY = {"PnPEditor": "editor", "PnPResult": "editor", "ModelError": "models", "load_pipeline": "models"}

__all__ = ["ConfigError", "PnPConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pnp' has no attribute {name!r}")
