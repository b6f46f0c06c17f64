"""The sources of one translation call, grouped by working size: each from the source cache, or still to compute.

Sources of the same working size share their UNet calls (one inversion batch, one translation
batch); a list mixing sizes runs group by group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from pnp.method.cache import SourceCache, SourceEntry, SourceKey
from pnp.method.injection import InjectedFeatures
from pnp.method.text import TextEmbeddings
from pnp.method.trajectory import Trajectory


@dataclass
class SourceGroup:
    """Sources of one working size: where they came from in the call, their keys, trajectories and cache entries."""

    indices: list[int] = field(default_factory=list)  # positions in the call's list of images
    keys: list[SourceKey] = field(default_factory=list)
    entries: list[SourceEntry | None] = field(default_factory=list)  # None: not in the cache
    trajectories: list[Trajectory] = field(default_factory=list)
    pictures: list[Image.Image | None] = field(default_factory=list)  # at working size; None when generated
    noise: torch.Tensor | None = None  # a generated source's initial noise
    clean: torch.Tensor | None = None  # a generated source's final latent, once known
    fused: bool = False  # a generated source made in the translation's own UNet calls
    changed_by_callback: bool = False  # a step callback changed the latents that made the uncached trajectories

    def add(self, index: int, key: SourceKey, entry: SourceEntry | None, picture, embedding: TextEmbeddings) -> None:
        """Add a source: its cache entry's trajectory, or an empty one (with its prompt embedding) to fill."""
        self.indices.append(index)
        self.keys.append(key)
        self.entries.append(entry)
        self.pictures.append(picture)
        self.trajectories.append(entry.trajectory if entry is not None else Trajectory({}, embedding))
        if entry is not None and entry.clean is not None:
            self.clean = entry.clean

    @property
    def hits(self) -> list[bool]:
        return [entry is not None for entry in self.entries]

    @property
    def misses(self) -> list[int]:
        """Positions in the group of the sources whose trajectories must be computed."""
        return [k for k, entry in enumerate(self.entries) if entry is None]

    def known_injected(self) -> dict[int, dict[int, InjectedFeatures]]:
        """Per source position, the cached injected features by timestep."""
        return {k: entry.injected for k, entry in enumerate(self.entries) if entry is not None}

    def remember(
        self, cache: SourceCache, features: dict[int, dict[int, InjectedFeatures]], device: torch.device
    ) -> None:
        """Put every source, with the features its rows produced in this call, into ``cache``.

        Only what the model alone computed, and finite, is kept: a later call reuses it as the source's own. Not a
        trajectory a step callback changed, nor one (or features) with NaN or infinite values (a float16 overflow).
        """
        for k, key in enumerate(self.keys):
            new = self.entries[k] is None
            if new and self.changed_by_callback:
                continue
            entry = self.entries[k] or SourceEntry(self.trajectories[k], self.clean if self.noise is not None else None)
            computed = features.get(k, {})
            tensors = [t for by_name in computed.values() for t in by_name.values()]
            if not _finite(tensors + ([*entry.trajectory.latents.values(), entry.clean] if new else [])):
                continue
            for t, by_name in computed.items():
                entry.injected.setdefault(t, {}).update(by_name)
            cache.put(key, entry, device)


def _finite(tensors: list[torch.Tensor | None]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)
