"""The source cache: recent source trajectories and their injected features, kept for the next call.

Someone editing one photo tries prompt after prompt. A source seen before (the same pixels, or the
same generation, under the same model and settings) skips the VAE encoding, the inversion or
generation, and the source row of every step whose features are kept: at 50/50 steps with one
prompt, 100 UNet rows instead of 190. Entries are bounded by a memory budget in bytes; the least
recently used go first.
"""

from __future__ import annotations

import hashlib
import itertools
import numbers
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.weak import WeakIdKeyDictionary

from pnp.config import ConfigError
from pnp.method.injection import InjectedFeatures
from pnp.method.layers import InjectionLayers
from pnp.method.trajectory import Trajectory

# Default budgets: a share of the device's memory.
CUDA_SHARE, CPU_SHARE = 0.25, 0.10


@dataclass(frozen=True)
class SourceKey:
    """Everything that decides a source's trajectory and its features at each sampling step."""

    weights: tuple  # ``WeightsIdentity.fingerprint`` of the modules that compute them
    dtype: str
    device: str
    layers: InjectionLayers
    content: str  # a digest of the working-size pixels, or of the generation's noise, prompt and guidance
    size: tuple[int, int]  # working size (width, height)
    steps: int  # sampling steps: they decide the timesteps
    inversion_steps: int | None  # None for a generated source


@dataclass
class SourceEntry:
    """A source's trajectory, its generated image's clean latent (generation mode), and its injected features per
    timestep."""

    trajectory: Trajectory
    clean: torch.Tensor | None = None
    injected: dict[int, InjectedFeatures] = field(default_factory=dict)  # timestep -> the source row's features

    @property
    def nbytes(self) -> int:
        tensors = [*self.trajectory.latents.values(), *self.trajectory.embedding.tensors]
        tensors += [t for features in self.injected.values() for t in features.values()]
        tensors += [] if self.clean is None else [self.clean]
        return sum(t.numel() * t.element_size() for t in tensors)

    def holds(self, t: int, names: tuple[str, ...]) -> bool:
        """Whether every feature in ``names`` is kept for timestep t."""
        return t in self.injected and set(names) <= set(self.injected[t])


class SourceCache:
    """Least-recently-used entries within ``max_bytes`` (None: the device's default, 0: off)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[SourceKey, SourceEntry] = OrderedDict()
        self.weights = WeightsIdentity()  # what ``SourceKey.weights`` is made with

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        # Checked when set: a bad budget would otherwise surface only in ``put``, after a whole translation.
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0):
            raise ConfigError(
                "max_bytes",
                f"expected a whole number of bytes from 0 (off) up, or None (the device's default), got {value!r}",
            )
        self._max_bytes = None if value is None else int(value)

    def get(self, key: SourceKey) -> SourceEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: SourceKey, entry: SourceEntry, device: torch.device) -> bool:
        """Keep ``entry`` (replacing ``key``'s), evicting the least recently used; False if it alone is over budget."""
        budget = self.budget(device)
        self._entries.pop(key, None)
        if entry.nbytes > budget:
            return False
        self._entries[key] = entry
        while self.nbytes > budget:
            self._entries.popitem(last=False)
        return True

    def budget(self, device: torch.device) -> int:
        return default_budget(device) if self.max_bytes is None else self.max_bytes

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def default_budget(device: torch.device) -> int:
    """A quarter of a GPU's memory, or a tenth of the machine's memory for the CPU."""
    if device.type == "cuda":
        return int(CUDA_SHARE * torch.cuda.get_device_properties(device).total_memory)
    return int(CPU_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class WeightsIdentity:
    """Fingerprints of modules' weights that change whenever what they compute may have changed.

    Each module and parameter gets a serial number the first time it is seen, kept for as long
    as it lives: a parameter replaced by another (LoRA adapters unloaded and others loaded, even
    of the same shapes and at the same memory address) is told apart, which ``id`` cannot do.
    Every in-place change to a tensor bumps its version counter. LoRA layers (peft's) compute
    with their adapters' scales and active set, which change no parameter: they are part of the
    fingerprint too.
    """

    def __init__(self) -> None:
        self._serials = WeakIdKeyDictionary()
        self._next = itertools.count()

    def fingerprint(self, *modules: torch.nn.Module) -> tuple:
        return tuple((self._serial(m), self._parameters(m), _adapter_state(m)) for m in modules)

    def _serial(self, thing) -> int:
        serial = self._serials.get(thing)
        if serial is None:
            serial = self._serials[thing] = next(self._next)
        return serial

    def _parameters(self, module: torch.nn.Module) -> int:
        return hash(tuple((self._serial(p), p._version) for p in module.parameters()))


def _adapter_state(module: torch.nn.Module) -> int:
    """A hash of every LoRA layer's scales, active adapters and whether adapters are disabled (0 without any)."""
    states = [
        (name, tuple(sorted(layer.scaling.items())), tuple(layer.active_adapters), bool(layer.disable_adapters))
        for name, layer in module.named_modules()
        if isinstance(getattr(layer, "scaling", None), dict) and hasattr(layer, "active_adapters")
    ]
    return hash(tuple(states)) if states else 0


def image_digest(image: Image.Image) -> str:
    """A digest of an image's size, mode and pixels."""
    digest = hashlib.sha256(f"{image.size}{image.mode}".encode())
    digest.update(np.ascontiguousarray(np.asarray(image)).tobytes())
    return digest.hexdigest()


def generation_digest(noise: torch.Tensor, prompt: str, scale: float) -> str:
    """A digest of what decides a generated source: its initial noise, prompt and guidance scale."""
    digest = hashlib.sha256(f"{prompt}\0{scale!r}\0{tuple(noise.shape)}".encode())
    digest.update(noise.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
