"""A run's folder: its manifest, and the per-source records that make it resumable.

    OUT/run.json               what the run computes (benchmark, model, settings, metric models)
    OUT/images/<key>/          source.<ext>, mask.png (PIE-Bench), NN-<prompt>.png per prompt
    OUT/records/<key>.json     one finished source: its pairs' outputs and scores
    OUT/results.csv|json, OUT/index.html   written from the records at the end

A record is written last, after its images, and whole (written aside, then renamed): an
interrupted run loses at most the sources in flight, and a rerun of the same command reuses
every source whose record and images are there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pnp.evaluation.backends import Job
from pnp.evaluation.benchmarks import Benchmark
from pnp.outputs import check_writable_folder, refuse_earlier_run, write_atomic

MANIFEST = "run.json"
RECORDS = "records"
IMAGES = "images"
RESULTS = ("results.csv", "results.json", "index.html")


@dataclass(frozen=True)
class Plan:
    """What a run evaluates: the (limited) benchmark, one job per source, the folder it writes, and its manifest."""

    benchmark: Benchmark
    jobs: tuple[Job, ...]
    out: Path
    manifest: dict


def write_json(path: Path, data) -> Path:
    """Write ``data`` as JSON, whole or not at all."""
    return write_atomic(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def check_folder(out: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse, before any work and without writing, a folder that holds a different run (unless ``overwrite``).

    The same run's files are kept: rerunning the command resumes it.
    """
    check_writable_folder(out, "evaluation")
    previous = _manifest(out)
    if previous is not None and previous != manifest and not overwrite:
        name = next((k for k in manifest if previous.get(k) != manifest[k]), None) or "the run"
        refuse_earlier_run(
            out, f"holds an evaluation with other {name} ({previous.get(name)!r}, now {manifest.get(name)!r})"
        )


def start_folder(out: Path, manifest: dict) -> None:
    """Make ``out`` hold this run (after ``check_folder``): another run's files are deleted, this run's kept."""
    previous = _manifest(out)
    if previous is not None and previous != manifest:
        clear(out)
    write_json(out / MANIFEST, manifest)


def _manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def clear(out: Path) -> None:
    """Delete the files a run writes (nothing else in the folder)."""
    for name in (RECORDS, IMAGES):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (*RESULTS, MANIFEST):
        (out / name).unlink(missing_ok=True)


def record_path(out: Path, key: str) -> Path:
    return out / RECORDS / f"{key}.json"


def finished(out: Path, key: str, prompts: tuple[str, ...]) -> dict | None:
    """The record of source ``key`` if it is complete for these prompts and its images are all there."""
    path = record_path(out, key)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    pairs = record.get("pairs", [])
    if [pair["prompt"] for pair in pairs] != list(prompts):
        return None
    images = [record["source_image"], *(pair["output"] for pair in pairs)]
    return record if all((out / image).is_file() for image in images) else None
