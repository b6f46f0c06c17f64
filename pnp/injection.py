"""Plug-and-play feature injection: the source row's decoder features copied into the target rows.

Injected, exactly as the method specifies (Tumanyan et al. 2023, Sec. 4; pnp-diffusers):
- the residual-branch output of ``up_blocks.1.resnets.1`` (its ``conv2``, before the skip is added);
- the self-attention queries and keys (never the values) of ``attn1`` in decoder layers 4-11.

Everything goes through public forward hooks on the projection modules, so any attention
processor that computes its queries and keys with the module's ``to_q``/``to_k`` (or, after
``fuse_qkv_projections()``, with ``to_qkv``) keeps working, and the UNet is untouched once the
``FeatureInjector`` context exits. A UNet call in which an active hook did not fire exactly once
(a processor that bypasses the projections, a compiled UNet that ignores hooks) raises
InjectionError: a result is never returned uninjected.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch


@dataclass(frozen=True)
class InjectionLayers:
    """Where a UNet architecture's features are injected (diffusers module names)."""

    residual: tuple[str, ...]  # modules whose output is the residual-branch feature
    attention: tuple[str, ...]  # self-attention modules whose queries and keys are injected


SD_LAYERS = InjectionLayers(
    residual=("up_blocks.1.resnets.1.conv2",),
    attention=tuple(
        f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1"
        for block, indices in ((1, (1, 2)), (2, (0, 1, 2)), (3, (0, 1, 2)))
        for index in indices
    ),
)


class InjectionError(RuntimeError):
    """The injection hooks did not run as the method requires; the message names the layer."""


class FeatureInjector:
    """Context manager that installs the injection hooks on a UNet and removes them on exit.

    Before each UNet call, ``set_step`` says which injections are active and whether the batch
    starts with the source row. When it does, the source row's features are copied into every
    other row and kept; a later call of the same step without the source row (another chunk of
    prompts) receives the kept features, so the source row runs once per step at most.
    """

    def __init__(self, unet: torch.nn.Module, layers: InjectionLayers = SD_LAYERS) -> None:
        self.unet = unet
        self.layers = layers
        self._handles: list = []
        self._kept: dict[str, torch.Tensor] = {}
        self._fired: dict[str, int] = {}
        self._active = {"residual": False, "attention": False}
        self._source_in_batch = False

    def __enter__(self) -> "FeatureInjector":
        try:
            self._install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._kept.clear()

    def set_step(self, residual: bool, attention: bool, source_in_batch: bool) -> None:
        """Configure the next UNet call(s)."""
        if (residual or attention) and not source_in_batch and not self._kept:
            raise InjectionError("injection needs the source row in the first call of a step")
        self._active = {"residual": residual, "attention": attention}
        self._source_in_batch = source_in_batch
        if source_in_batch:
            self._kept.clear()

    def _install(self) -> None:
        modules = dict(self.unet.named_modules())
        missing = [name for name in (*self.layers.residual, *self.layers.attention) if name not in modules]
        if missing:
            raise InjectionError(f"this UNet lacks the decoder layers PnP injects into: {', '.join(missing[:3])}")
        for name in self.layers.residual:
            self._hook(modules[name], name, "residual", channels=None)
        for layer in self.layers.attention:
            attention = modules[layer]
            self._hook(attention.to_q, f"{layer}.to_q", "attention", channels=None)
            self._hook(attention.to_k, f"{layer}.to_k", "attention", channels=None)
            fused = getattr(attention, "to_qkv", None)
            if fused is not None:
                # Fused projections compute [q | k | v] in one matrix product: inject its first two thirds.
                self._hook(fused, f"{layer}.to_qkv", "attention", channels=2 * fused.out_features // 3)
        self._handles.append(self.unet.register_forward_pre_hook(self._start_call))
        self._handles.append(self.unet.register_forward_hook(self._check_call))

    def _hook(self, module: torch.nn.Module, name: str, kind: str, channels: int | None) -> None:
        self._handles.append(module.register_forward_hook(partial(self._inject, name, kind, channels)))

    def _start_call(self, module, args) -> None:
        self._fired = {}

    def _check_call(self, module, args, output) -> None:
        """Every active injection happened exactly once in the UNet call that just ended."""
        fired = self._fired
        if self._active["residual"]:
            for name in self.layers.residual:
                _expect_once(name, "its residual features", fired.get(name, 0))
        if self._active["attention"]:
            for layer in self.layers.attention:
                q, k, qkv = (fired.get(f"{layer}.{p}", 0) for p in ("to_q", "to_k", "to_qkv"))
                if not ((q, k, qkv) == (1, 1, 0) or (q, k, qkv) == (0, 0, 1)):
                    times = f"to_q {q}, to_k {k}" + (f", to_qkv {qkv}" if qkv else "")
                    raise InjectionError(
                        f"{layer}: its queries and keys were computed {times} times in one UNet call, not once; "
                        "its attention processor bypasses the projection modules the injection hooks. "
                        "Set a standard processor, e.g. pipe.unet.set_attn_processor(AttnProcessor2_0())"
                    )

    def _inject(self, name: str, kind: str, channels: int | None, module, inputs, output: torch.Tensor):
        self._fired[name] = self._fired.get(name, 0) + 1
        if not self._active[kind]:
            return None
        part = output if channels is None else output[..., :channels]
        if self._source_in_batch:
            self._kept[name] = part[:1].clone()
            part[1:] = part[:1]
        else:
            part[:] = self._kept[name]
        return output


def _expect_once(name: str, what: str, count: int) -> None:
    if count != 1:
        raise InjectionError(
            f"{name}: computed {what} {count} times in one UNet call, not once; the injection hook on it "
            "did not run as the method needs (a compiled or modified UNet?)"
        )
