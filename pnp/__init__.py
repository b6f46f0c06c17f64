"""Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) for Stable Diffusion, in memory and batched."""

from .config import ConfigError, PnPConfig
from .editor import PnPEditor, PnPResult
from .models import ModelError, load_pipeline

__all__ = ["ConfigError", "ModelError", "PnPConfig", "PnPEditor", "PnPResult", "load_pipeline"]
