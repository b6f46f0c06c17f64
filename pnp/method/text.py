"""What a UNet row is conditioned on by text: the encoder's hidden states, and SDXL's pooled embedding.

Stable Diffusion 1.x/2.x condition only on the hidden states (n, 77, D). SDXL also adds the
pooled, projected output of its second text encoder (n, P) to the time embedding. Rows of a UNet
call each carry their own text (an unconditional row, a negative row, a target's prompt), so
both parts are selected and concatenated together, row by row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextEmbeddings:
    """Text conditioning of n rows: ``hidden`` (n, 77, D) and, for SDXL, ``pooled`` (n, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, rows: int | slice) -> TextEmbeddings:
        """Some rows, as TextEmbeddings: an int keeps its row's dimension (``[i]`` is ``[i : i + 1]``)."""
        if isinstance(rows, int):
            rows = slice(rows, rows + 1 if rows != -1 else None)
        return TextEmbeddings(self.hidden[rows], None if self.pooled is None else self.pooled[rows])

    def expand(self, n: int) -> TextEmbeddings:
        """One row repeated n times (a view)."""
        return TextEmbeddings(self.hidden.expand(n, -1, -1), None if self.pooled is None else self.pooled.expand(n, -1))

    def zeros_like(self) -> TextEmbeddings:
        """Zeros in the same shapes: SDXL's unconditional text where ``force_zeros_for_empty_prompt`` is set."""
        return TextEmbeddings(
            torch.zeros_like(self.hidden), None if self.pooled is None else torch.zeros_like(self.pooled)
        )

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.hidden,) if self.pooled is None else (self.hidden, self.pooled)

    @staticmethod
    def cat(parts: list[TextEmbeddings]) -> TextEmbeddings:
        """The rows of ``parts``, in order, as one TextEmbeddings."""
        pooled = [part.pooled for part in parts]
        return TextEmbeddings(
            torch.cat([part.hidden for part in parts]), None if pooled[0] is None else torch.cat(pooled)
        )


@dataclass
class Prompts:
    """Text embeddings of a translation."""

    targets: TextEmbeddings  # one row per target prompt
    uncond: TextEmbeddings  # the empty prompt (zeros for SDXL, where its config says so)
    negative: TextEmbeddings | None  # None when there is no negative prompt
