"""Benchmark of plug-and-play translation: where the time goes and how far each run is from its floor.

Run ``python -m benchmarks.run --help``. Results are ratios measured in one process, because
absolute times on shared machines drift.
"""

import os

# Read by transformers when it is first imported, before any benchmark module loads it; it
# otherwise warns about image backends that are never used here.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
