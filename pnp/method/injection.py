"""Plug-and-play feature injection: the source row's decoder features copied into the target rows.

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

from pnp.method.plan import RowKind

InjectedFeatures = dict[str, torch.Tensor]  # feature name -> (1, ...) tensor: a source row's injected features


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
        raise ValueError(f"injection layers: this UNet has no module {missing[0]} (is it the layer set for another architecture?)")
    return layers


def missing_modules(layers: InjectionLayers, unet: torch.nn.Module) -> list[str]:
    """The modules of ``layers`` that ``unet`` lacks."""
    modules = dict(unet.named_modules())
    return [name for name in (*layers.residual, *layers.attention) if name not in modules]


class InjectionError(RuntimeError):
    """The injection hooks did not run as the method requires; the message names the layer."""


class FeatureInjector:
    """Context manager that installs the injection hooks on a UNet and removes them on exit.

    Before each translation step, ``start_step`` says which injections are active and which source
    features are already known (a cached source); before each UNet call, ``set_call`` gives the
    call's row layout (``pnp.method.plan``). A source row's features are copied into the rows of its
    targets and kept, so a later call of the same step (another chunk of targets) receives them
    and the source row runs once per step at most. Features are named by layer ("<module>" for
    the residual feature, "<attention>:q" and "<attention>:k"), whichever module computed them.
    """

    def __init__(self, unet: torch.nn.Module, layers: InjectionLayers | None = None) -> None:
        self.unet = unet
        self.layers = architecture_layers(unet) if layers is None else layers
        self._handles: list = []
        self._hook_names: list[str] = []  # every hooked module, in the order of ``_fired``
        # How often each hooked module ran in the current call: a tensor, so that counting inside a
        # compiled UNet adds graph operations, not guards on Python numbers (recompiling each call).
        self._fired = torch.zeros(0, dtype=torch.int32)
        self._active = {"residual": False, "attention": False}
        self._features: dict[int, InjectedFeatures] = {}  # image -> its source's features at this step
        self.computed: dict[int, InjectedFeatures] = {}  # the features source rows produced this step
        self._source_rows: dict[int, int] = {}  # image -> its source row in the current call
        self._target_rows: dict[int, slice | torch.Tensor] = {}  # image -> its targets' rows in the current call

    def __enter__(self) -> "FeatureInjector":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    def install(self) -> "FeatureInjector":
        """Install the hooks (idle until ``start_step``); on failure none stays."""
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook and forget every feature."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.idle()

    def idle(self) -> None:
        """Turn every injection off and forget the features, keeping the hooks (a compiled UNet's)."""
        self.start_step(False, False)
        self._source_rows.clear()
        self._target_rows.clear()

    def start_step(self, residual: bool, attention: bool, known: dict[int, InjectedFeatures] | None = None) -> None:
        """Begin a translation step: which injections are active, and the features known before it (cached sources)."""
        self._active.update(residual=residual, attention=attention)
        self._features.clear()
        self._features.update({j: dict(features) for j, features in (known or {}).items()})
        self.computed.clear()

    def set_call(self, layout, device: torch.device) -> None:
        """Map the next UNet call's rows (a ``UNetCall.layout``): each target takes its own source's features."""
        targets: dict[int, list[int]] = {}
        for i, row in enumerate(layout):
            if row.kind.is_target:
                targets.setdefault(row.image, []).append(i)
        self._source_rows.clear()
        self._source_rows.update({row.image: i for i, row in enumerate(layout) if row.kind is RowKind.SOURCE})
        self._target_rows.clear()
        self._target_rows.update({j: _rows_index(rows, device) for j, rows in targets.items()})
        self._fired.zero_()
        if self._active["residual"] or self._active["attention"]:
            missing = [j for j in targets if j not in self._source_rows and j not in self._features]
            if missing:
                raise InjectionError(f"no source features for image {missing[0]} in this step: its source row must come first")

    def _install(self) -> None:
        modules = dict(self.unet.named_modules())
        self._hook_names.clear()
        missing = missing_modules(self.layers, self.unet)
        if missing:
            raise InjectionError(f"this UNet lacks the decoder layers PnP injects into: {', '.join(missing[:3])}")
        for name in self.layers.residual:
            self._hook(modules[name], name, "residual", [(name, None)])
        for layer in self.layers.attention:
            attention = modules[layer]
            self._hook(attention.to_q, f"{layer}.to_q", "attention", [(attention_feature(layer, "q"), None)])
            self._hook(attention.to_k, f"{layer}.to_k", "attention", [(attention_feature(layer, "k"), None)])
            fused = getattr(attention, "to_qkv", None)
            if fused is not None:
                # Fused projections compute [q | k | v] in one matrix product: inject its first two thirds.
                third = fused.out_features // 3
                slots = [(attention_feature(layer, "q"), slice(0, third)), (attention_feature(layer, "k"), slice(third, 2 * third))]
                self._hook(fused, f"{layer}.to_qkv", "attention", slots)
        device = next(self.unet.parameters()).device
        self._fired = torch.zeros(len(self._hook_names), dtype=torch.int32, device=device)

    def _hook(self, module: torch.nn.Module, name: str, kind: str, slots) -> None:
        index = len(self._hook_names)
        self._hook_names.append(name)
        self._handles.append(module.register_forward_hook(partial(self._inject, index, kind, slots)))

    def check_call(self) -> None:
        """Raise InjectionError unless every active injection happened exactly once in the UNet call since ``set_call``."""
        fired = dict(zip(self._hook_names, self._fired.tolist()))
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

    def _inject(self, index: int, kind: str, slots, module, inputs, output: torch.Tensor):
        self._fired[index] += 1
        if not (self._active[kind] and self._target_rows):
            return None
        for feature, channels in slots:
            part = output if channels is None else output[..., channels]
            for j, row in self._source_rows.items():
                kept = part[row : row + 1].clone()
                self._features.setdefault(j, {})[feature] = kept
                self.computed.setdefault(j, {})[feature] = kept
            for j, rows in self._target_rows.items():
                part[rows] = self._features[j][feature]
        return output


def _rows_index(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice where the rows are contiguous (a view, no copy), else an index tensor."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, device=device)


def _expect_once(name: str, what: str, count: int) -> None:
    if count != 1:
        raise InjectionError(
            f"{name}: computed {what} {count} times in one UNet call, not once; the injection hook on it "
            "did not run as the method needs (a compiled or modified UNet?)"
        )
