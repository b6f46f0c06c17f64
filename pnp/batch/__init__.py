"""Batch jobs: a manifest of rows translated locally or on a Ray cluster, resumable (``pnp batch``)."""
