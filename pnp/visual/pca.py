"""Principal component analysis of feature rows, and its first three components as RGB images.

The rows of several images are stacked into one matrix X (one row per spatial position, one
column per channel), X is centred by its mean row, and the rows are projected onto its first
three principal components, so that colours correspond across the images shown together.

Two computations of the same thing:
- ``pca_scores``: exact, from the SVD of the centred matrix, for features that fit in memory;
- ``matrix_free_pca_scores``: for matrices too large to hold (self-attention maps), by randomised
  block Krylov iteration (Musco & Musco 2015, Alg. 2) on an operator that multiplies by X and by
  X^T a block of vectors at a time. It never forms X, X^T X or X X^T; it holds a basis of at most
  ``MAX_BLOCKS`` blocks of vectors per row and per column.

Signs follow scikit-learn's convention (``svd_flip``): each component's largest-magnitude score
is positive, so the colours do not depend on the algorithm's arbitrary signs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

COMPONENTS = 3
# Block Krylov iteration: block width beyond the components wanted; when to stop: every component's
# direction moved by less than this angle (radians) in one iteration (the products run in float32,
# whose rounding moves them by about 1e-6; an 8-bit colour moves at about 4e-3); and the most
# blocks kept, which bounds memory (2 x 30 x 12 float64 values per row and column).
OVERSAMPLING = 9
ANGLE_TOLERANCE = 1e-5
MAX_BLOCKS = 30
# What remains of a new vector after removing the basis from it, relative to its length, below
# which it is taken to add no direction (float64 rounding of the projection is about 1e-16).
LOST_DIRECTION = 1e-12
# A component whose spread over an image is below this fraction of the largest score is constant
# up to rounding: it is drawn as 0, not stretched into visible noise.
CONSTANT_FRACTION = 1e-6


class RowOperator(Protocol):
    """A matrix X (``shape`` = rows x columns) known only through products with blocks of vectors."""

    shape: tuple[int, int]

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """X @ v for v (columns, k); returns (rows, k) float32."""

    def rmatmul(self, u: torch.Tensor) -> torch.Tensor:
        """X^T @ u for u (rows, k); returns (columns, k) float32."""


def pca_scores(x: torch.Tensor, components: int = COMPONENTS) -> torch.Tensor:
    """Projections (rows, components) of the rows of ``x`` (rows, columns) onto its first principal components."""
    xc = x.detach().to("cpu", torch.float64)
    xc = xc - xc.mean(dim=0)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    scores = _pad(u[:, :components] * s[:components], components)
    return _flip_signs(scores).float()


def matrix_free_pca_scores(
    op: RowOperator, components: int = COMPONENTS, seed: int = 0, max_blocks: int = MAX_BLOCKS
) -> torch.Tensor:
    """``pca_scores`` of the matrix behind ``op``, by randomised block Krylov iteration; see the module docstring.

    The Krylov space [X_c G, (X_c X_c^T) X_c G, ...] of a random block G grows a block per
    iteration (two products with the maps); the components are the Rayleigh-Ritz vectors of the
    space so far, and it stops growing once they stop moving. Centring is folded into the
    products: for a basis Q of centred vectors (1^T Q = 0), X_c^T Q = X^T Q, and X_c V is X V with
    its mean row removed.
    """
    rows, columns = op.shape
    width = min(components + OVERSAMPLING, rows)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(columns, width, generator=generator, dtype=torch.float64)
    basis = _new_directions(torch.empty(rows, 0, dtype=torch.float64), _centred(op.matmul(start.float())))
    projected = torch.empty(columns, 0, dtype=torch.float64)  # X_c^T Q
    previous = None
    for _ in range(max_blocks):
        block = op.rmatmul(basis[:, projected.shape[1] :].float()).double()
        projected = torch.cat([projected, block], dim=1)
        # Rayleigh-Ritz: with X_c^T Q = W S Z^T (Z, S from the small Gram matrix Z S^2 Z^T),
        # X_c = (Q Z) S W^T on span(Q): components W = X_c^T Q Z / S, directions Q Z.
        squares, z = torch.linalg.eigh(projected.T @ projected)
        z, singular = z.flip(1)[:, :components], squares.flip(0)[:components].clamp(min=0).sqrt()
        directions = basis @ z
        converged = previous is not None and _max_angle(previous, directions) < ANGLE_TOLERANCE
        if converged:
            break
        previous = directions
        more = _new_directions(basis, _centred(op.matmul(block.float())))
        if more.shape[1] == 0:  # the space holds every direction of X_c: the components are exact
            break
        basis = torch.cat([basis, more], dim=1)
    right = projected @ z / torch.where(singular > 0, singular, 1.0)
    scores = _centred(op.matmul(right.float()))
    return _flip_signs(_pad(scores, components)).float()


def scores_to_rgb(scores: torch.Tensor, images: int) -> np.ndarray:
    """(images, positions, 3) uint8 colours from (images * positions, 3) scores.

    Per image and per component, the scores are scaled min-max to 0..255 (component k is colour
    channel k, red first); a component constant over an image becomes 0.
    """
    values = scores.detach().to("cpu", torch.float64).reshape(images, -1, scores.shape[-1])
    low = values.amin(dim=1, keepdim=True)
    spread = values.amax(dim=1, keepdim=True) - low
    constant = spread <= CONSTANT_FRACTION * values.abs().max()
    scaled = (values - low) / torch.where(constant, 1.0, spread) * 255
    scaled = torch.where(constant, 0.0, scaled)
    return np.floor(scaled.numpy() + 0.5).astype(np.uint8)


def _centred(x: torch.Tensor) -> torch.Tensor:
    x = x.double().cpu()
    return x - x.mean(dim=0)


def _new_directions(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning what ``vectors`` add to the orthonormal ``basis``; none if nothing.

    Every column returned is a combination of ``vectors``, so centred vectors give centred columns,
    as the folded centring needs (a QR factorisation would fill a lost dimension with any vector).
    """
    scale = vectors.norm()
    for _ in range(2):  # Gram-Schmidt twice keeps the basis orthonormal to rounding
        vectors = vectors - basis @ (basis.T @ vectors)
    u, s, _ = torch.linalg.svd(vectors, full_matrices=False)
    return u[:, s > LOST_DIRECTION * scale]


def _max_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest angle between corresponding unit columns of ``a`` and ``b``, whatever their signs."""
    cosines = (a * b).sum(dim=0).abs() / (a.norm(dim=0) * b.norm(dim=0))
    return float(torch.arccos(cosines.clamp(max=1.0)).max())


def _flip_signs(scores: torch.Tensor) -> torch.Tensor:
    largest = scores.abs().argmax(dim=0)
    signs = torch.sign(scores[largest, torch.arange(scores.shape[1])])
    return scores * torch.where(signs == 0, 1.0, signs)


def _pad(scores: torch.Tensor, components: int) -> torch.Tensor:
    """Zero columns for components a matrix of lower rank (fewer rows or columns) does not have."""
    missing = components - scores.shape[1]
    return torch.cat([scores, scores.new_zeros(scores.shape[0], missing)], dim=1) if missing > 0 else scores
