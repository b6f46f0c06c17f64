"""Quality evaluation: the paper's TI2I benchmarks and PIE-Bench, translated and scored with their published metrics.

``python -m pnp evaluate BENCHMARK --out DIR`` (``command``) reads a benchmark (``sources``,
``ti2i``, ``piebench``), translates every source into all its prompts on a backend (``local``,
``cog_pool``, ``replicate_backend``), scores each pair where the evaluation runs (``metrics``,
``structure``, ``clip``, ``metric_models``), and writes per-source records, results tables and a
contact sheet (``runner``, ``records``, ``report``, ``contact_sheet``). Modules that import torch
do so inside functions, or are only imported once a run starts.
"""
