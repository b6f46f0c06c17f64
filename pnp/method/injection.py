"""Plug-and-play feature injection: the source row's decoder features copied into the target rows.

Which layers, and why, is ``pnp.method.layers``. Everything goes through public forward hooks on
the projection modules, so any attention processor that computes its queries and keys with the
module's ``to_q``/``to_k`` (or, after
``fuse_qkv_projections()``, with ``to_qkv``) keeps working, and the UNet is untouched once the
``FeatureInjector`` context exits. A UNet call in which an active hook did not fire exactly once
(a processor that bypasses the projections, a compiled UNet that ignores hooks) raises
InjectionError: a result is never returned uninjected.
"""

from __future__ import annotations

from functools import partial

import torch

from pnp.method.layers import InjectionLayers, architecture_layers, attention_feature, missing_modules
from pnp.method.plan import RowKind

InjectedFeatures = dict[str, torch.Tensor]  # feature name -> (1, ...) tensor: a source row's injected features


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
                raise InjectionError(
                    f"no source features for image {missing[0]} in this step: its source row must come first"
                )

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
                slots = [
                    (attention_feature(layer, "q"), slice(0, third)),
                    (attention_feature(layer, "k"), slice(third, 2 * third)),
                ]
                self._hook(fused, f"{layer}.to_qkv", "attention", slots)
        device = next(self.unet.parameters()).device
        self._fired = torch.zeros(len(self._hook_names), dtype=torch.int32, device=device)

    def _hook(self, module: torch.nn.Module, name: str, kind: str, slots) -> None:
        index = len(self._hook_names)
        self._hook_names.append(name)
        self._handles.append(module.register_forward_hook(partial(self._inject, index, kind, slots)))

    def check_call(self) -> None:
        """Raise InjectionError unless every active injection happened exactly once in the UNet call since
        ``set_call``."""
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
