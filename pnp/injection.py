"""Plug-and-play feature injection: the source row's decoder features copied into the target rows.

Injected, exactly as the method specifies (Tumanyan et al. 2023, Sec. 4; pnp-diffusers):
- the residual-branch output of ``up_blocks.1.resnets.1`` (its ``conv2``, before the skip is added);
- the self-attention queries and keys (never the values) of ``attn1`` in decoder layers 4-11.

Everything goes through public forward hooks on the projection modules, so any attention
processor keeps working and the UNet is untouched once the ``FeatureInjector`` context exits.
"""

from __future__ import annotations

from functools import partial

import torch

RESIDUAL_LAYER = "up_blocks.1.resnets.1.conv2"
ATTENTION_LAYERS = tuple(
    f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1"
    for block, indices in ((1, (1, 2)), (2, (0, 1, 2)), (3, (0, 1, 2)))
    for index in indices
)
QUERY_KEY_MODULES = tuple(f"{layer}.{proj}" for layer in ATTENTION_LAYERS for proj in ("to_q", "to_k"))


class FeatureInjector:
    """Context manager that installs the injection hooks on a UNet and removes them on exit.

    Before each UNet call, ``set_step`` says which injections are active and whether the batch
    starts with the source row. When it does, the source row's features are copied into every
    other row and kept; a later call of the same step without the source row (another chunk of
    prompts) receives the kept features, so the source row runs once per step at most.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self._handles: list = []
        self._kept: dict[str, torch.Tensor] = {}
        self._active = {"residual": False, "attention": False}
        self._source_in_batch = False

    def __enter__(self) -> "FeatureInjector":
        modules = dict(self.unet.named_modules())
        targets = [(RESIDUAL_LAYER, "residual")] + [(name, "attention") for name in QUERY_KEY_MODULES]
        missing = [name for name, _ in targets if name not in modules]
        if missing:
            raise ValueError(f"this UNet lacks the Stable Diffusion decoder layers PnP injects into: {missing[:3]}")
        for name, kind in targets:
            self._handles.append(modules[name].register_forward_hook(partial(self._inject, name, kind)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._kept.clear()

    def set_step(self, residual: bool, attention: bool, source_in_batch: bool) -> None:
        """Configure the next UNet call(s)."""
        if (residual or attention) and not source_in_batch and not self._kept:
            raise RuntimeError("injection needs the source row in the first call of a step")
        self._active = {"residual": residual, "attention": attention}
        self._source_in_batch = source_in_batch
        if source_in_batch:
            self._kept.clear()

    def _inject(self, name: str, kind: str, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not self._active[kind]:
            return None
        if self._source_in_batch:
            self._kept[name] = output[:1].clone()
            output[1:] = output[:1]
        else:
            output[:] = self._kept[name]
        return output
