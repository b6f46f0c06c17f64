"""The self-attention maps of several images as one matrix for the PCA, computed a block at a time, never whole."""

from __future__ import annotations

import torch

# Attention maps are computed in blocks of query rows (all heads) of at most this many elements:
# 2**24 float32 values, 64 MiB, is 512 query rows of the 8 heads of a 4096-position layer.
MAP_BLOCK_ELEMENTS = 2**24


class SelfAttentionMaps:
    """The self-attention maps of several images, stacked, as a ``pnp.visual.pca.RowOperator``.

    Row i * P + r, column h * P + c holds A_ih[r, c], with A_ih = softmax(Q_ih K_ih^T / sqrt(d)) the
    map of head h of image i over P positions. Products with X and X^T compute the maps a block of
    query rows (all heads) at a time, in one buffer of ``block_elements`` values that every block
    reuses (allocating a fresh block each time costs more in page faults than the maps cost to compute).
    """

    def __init__(self, q: torch.Tensor, k: torch.Tensor, heads: int, block_elements: int = MAP_BLOCK_ELEMENTS) -> None:
        images, positions, channels = q.shape  # to_q / to_k outputs: (images, P, heads * d)
        d = channels // heads
        self.q = q.float().view(images, positions, heads, d).transpose(1, 2)  # (images, heads, P, d)
        self.k = k.float().view(images, positions, heads, d).transpose(1, 2)
        self.heads, self.positions, self.scale = heads, positions, d**-0.5
        self.shape = (images * positions, heads * positions)
        self.block_rows = max(1, min(positions, block_elements // (heads * positions)))
        self._buffer = torch.empty(heads * self.block_rows * positions, device=q.device)

    def maps(self, image: int, rows: slice) -> torch.Tensor:
        """(heads, rows, P): the attention of ``rows`` query positions of ``image`` over its key positions.

        The result lives in the shared buffer: the next call overwrites it.
        """
        queries = self.q[image, :, rows]
        maps = self._buffer[: queries.shape[0] * queries.shape[1] * self.positions].view(*queries.shape[:2], -1)
        torch.matmul(queries, self.k[image].transpose(-1, -2), out=maps)
        maps.mul_(self.scale)
        maps.sub_(maps.amax(dim=-1, keepdim=True)).exp_()  # softmax in place
        return maps.div_(maps.sum(dim=-1, keepdim=True))

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.q.device).view(self.heads, self.positions, -1)
        out = torch.empty(self.shape[0], v.shape[-1], device=self.q.device)
        for image, rows in self._blocks():
            out[self._rows(image, rows)] = (self.maps(image, rows) @ v).sum(0)
        return out

    def rmatmul(self, u: torch.Tensor) -> torch.Tensor:
        u = u.to(self.q.device)
        out = torch.zeros(self.heads, self.positions, u.shape[-1], device=self.q.device)
        for image, rows in self._blocks():
            out += self.maps(image, rows).transpose(1, 2) @ u[self._rows(image, rows)]
        return out.view(self.shape[1], -1)

    def _rows(self, image: int, rows: slice) -> slice:
        """The rows of X that are ``rows`` of ``image``'s queries."""
        return slice(image * self.positions + rows.start, image * self.positions + rows.stop)

    def _blocks(self):
        for image in range(self.q.shape[0]):
            for start in range(0, self.positions, self.block_rows):
                yield image, slice(start, min(start + self.block_rows, self.positions))
