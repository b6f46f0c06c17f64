"""Benchmark of plug-and-play translation: where the time goes and how far each run is from its floor.

Run ``python -m benchmarks.run --help``. Results are ratios measured in one process, because
absolute times on shared machines drift.
"""

from pnp.environment import configure_libraries

# Before any benchmark module imports diffusers or transformers.
configure_libraries()
