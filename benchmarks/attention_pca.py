"""Peak memory and time of the self-attention map PCA of the feature visualisations.

    python -m benchmarks.attention_pca --resolution 512 --images 3

The largest self-attention layers of Stable Diffusion 1.x are those of ``up_blocks.3``: 8 heads
of 40 channels over (resolution / 8)^2 positions, so at 512 px each image's maps are
4096 x 32768 values. Here their queries and keys are random (the memory needed does not depend
on the values; the number of iterations, and so the time, does), for ``--images`` images at once,
and ``pnp.visual.pca.matrix_free_pca_scores`` runs on ``pnp.visual.attention_maps.SelfAttentionMaps`` of them.
Printed: the working memory the PCA needed beyond its inputs (``benchmarks.memory``), next to
what holding every map at once, or a Gram matrix of all rows, would take in float32.
"""

from __future__ import annotations

import argparse
import time

import torch

from pnp.visual.attention_maps import SelfAttentionMaps
from pnp.visual.pca import matrix_free_pca_scores

from .memory import MemoryTracker

HEADS, CHANNELS = 8, 320  # SD 1.x up_blocks.3 attn1
MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_pca", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=512, help="working image side in pixels")
    parser.add_argument("--images", type=int, default=3, help="images shown together (the source and the prompts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    positions = (args.resolution // 8) ** 2
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(args.images, positions, CHANNELS, generator=generator).to(args.device) for _ in range(2))
    # A first small run loads the linear-algebra libraries, whose pages would otherwise count.
    matrix_free_pca_scores(SelfAttentionMaps(q[:, :64], k[:, :64], HEADS))
    passes = []
    tracker = MemoryTracker(torch.device(args.device))
    start = time.perf_counter()
    with tracker.measure() as peak:
        maps = SelfAttentionMaps(q, k, HEADS)
        matmul = maps.matmul
        maps.matmul = lambda v: passes.append(1) or matmul(v)
        matrix_free_pca_scores(maps)
    seconds = time.perf_counter() - start

    rows, columns = maps.shape
    print(
        f"{args.images} images at {args.resolution} px: maps {rows} x {columns} "
        f"({HEADS} heads of {positions} positions)"
    )
    print(f"PCA working memory {peak.working / MIB:.1f} MiB ({tracker.method}), {seconds:.1f} s, {len(passes)} passes")
    print(
        f"all maps at once would take {rows * columns * 4 / MIB:.1f} MiB, "
        f"a Gram matrix of all rows {rows * rows * 4 / MIB:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
