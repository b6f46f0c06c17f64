"""Running a batch job: skip the finished rows, translate the rest on a backend, file each row as it arrives.

    OUT/run.json               what the job runs with (model, adapters, output format): another job's folder is refused
    OUT/images/<key>/          00-source.png (a generated source), then NN-<prompt>.<format> per prompt
    OUT/records/<key>.json     one row: what it asked for, and its outputs or its error
    OUT/results.csv            one line per output (a failed row: one line with its error), in manifest order

The folder is the evaluation's (``pnp.evaluation.records``): a row's images are written first and
its record last, so a rerun of the same command redoes only the rows without a record for what
they ask now (a changed row is redone) and the failed ones.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pnp.batch.manifest import Row
from pnp.evaluation.backends import Translation
from pnp.evaluation.records import IMAGES, finished, record_path, start_folder, write_json
from pnp.outputs import OutputOptions, output_names, save_image, write_atomic

RESULTS = "results.csv"
ROW_COLUMNS = ("id", "row", "image", "seed", "prompt", "output", "error", "worker")
NO_RESULT = "the backend returned no result for this row; run the command again to redo it"


@dataclass(frozen=True)
class BatchPlan:
    """A batch job: the manifest's rows, the folder it writes, its manifest (run.json), how outputs are written,
    and the column name of each setting in results.csv (the manifest's: ``steps`` for num_inference_steps)."""

    rows: tuple[Row, ...]
    out: Path
    manifest: dict
    options: OutputOptions
    column: Callable[[str], str] = str


def run(plan: BatchPlan, backend, quiet: bool = False, log=print) -> dict:
    """Translate every unfinished row, file each as it arrives, then write results.csv; returns the counts."""
    start_folder(plan.out, plan.manifest)
    records = {row.key: _finished(plan.out, row) for row in plan.rows}
    reused = sum(record is not None for record in records.values())
    if reused:
        log(f"reusing {reused} finished rows in {plan.out}")
    for row in plan.rows:
        if records[row.key] is None and row.error is not None:
            records[row.key] = _file_failure(plan.out, row, row.error, worker=None)
    todo = [row for row in plan.rows if records[row.key] is None]
    by_key = {row.key: row for row in todo}
    with tqdm(total=len(todo), unit="row", desc="batch", disable=quiet or not todo, file=sys.stderr) as bar:
        for translation in backend.translate([row.job for row in todo]):
            row = by_key[translation.job.source.key]
            records[row.key] = file_translation(plan, row, translation)
            bar.update()
    for row in todo:  # a backend that ended without a row's result: recorded as failed, so a rerun redoes it
        if records[row.key] is None:
            records[row.key] = _file_failure(plan.out, row, NO_RESULT, worker=None)
    ordered = [records[row.key] for row in plan.rows]
    results = write_results(plan.out, ordered, plan.column)
    failed = [record for record in ordered if record.get("error")]
    for record in failed:
        log(f"row {record['row']} ({record['key']}) failed: {record['error']}")
    return {"rows": len(plan.rows), "reused": reused, "failed": len(failed), "results": results}


def _finished(out: Path, row: Row) -> dict | None:
    """The row's record if it holds this row's outputs for what the row asks now."""
    if row.job is None:
        return None
    record = finished(out, row.key, row.job.source.prompts)
    return record if record is not None and record.get("request") == request(row) else None


def request(row: Row) -> dict:
    """What a row asks for, as its record keeps it: a rerun redoes the row when this changed."""
    job = row.job
    settings = {k: v for k, v in job.config.as_kwargs().items() if k != "prompt"}
    image = None if job.source.image is None else str(job.source.image)
    # Only where there is one: a row without a mask asks what it asked before masks existed, and is not redone.
    mask = {} if job.source.mask_file is None else {"mask": str(job.source.mask_file)}
    return {"image": image, **mask, "seed": job.seed, "settings": settings}


def file_translation(plan: BatchPlan, row: Row, translation: Translation) -> dict:
    """Write one row's images (its generated source first), then its record; a failed row only its record."""
    if translation.error is not None:
        return _file_failure(plan.out, row, translation.error, translation.worker)
    folder = plan.out / IMAGES / row.key
    source = translation.generated_source
    images = ([source] if source is not None else []) + translation.outputs
    names = output_names(row.job.source.prompts, source is not None, plan.options.output_format)
    paths = [save_image(image, folder / name, plan.options) for image, name in zip(images, names, strict=True)]
    outputs = paths[1:] if source is not None else paths
    record = {
        **_identity(row),
        "worker": translation.worker,
        "request": request(row),
        "source_image": _relative(paths[0], plan.out) if source is not None else None,
        "pairs": [
            {"prompt": prompt, "output": _relative(path, plan.out)}
            for prompt, path in zip(row.job.source.prompts, outputs, strict=True)
        ],
    }
    write_json(record_path(plan.out, row.key), record)
    return record


def _file_failure(out: Path, row: Row, error: str, worker: str | None) -> dict:
    record = {**_identity(row), "worker": worker, "error": error, "pairs": []}
    write_json(record_path(out, row.key), record)
    return record


def _identity(row: Row) -> dict:
    return {"key": row.key, "row": row.number, "given": row.given}


def write_results(out: Path, records: list[dict], column: Callable[[str], str] = str) -> Path:
    """results.csv: a line per output, with its row's settings; a failed row's line has its error and no output.

    ``column`` names a setting's column (by default its PnPConfig name).
    """
    lines = []
    for record in records:
        given, asked = record["given"], record.get("request", {})
        settings = {column(name): value for name, value in asked.get("settings", {}).items()}
        base = {
            "id": record["key"],
            "row": record["row"],
            "image": given.get("image"),
            **({"mask": given["mask"]} if "mask" in given else {}),
            "seed": asked.get("seed"),
            "worker": record.get("worker"),
            "error": record.get("error"),
            **settings,
        }
        prompt = given.get("prompt")
        for pair in record["pairs"] or [{"prompt": "; ".join(prompt) if isinstance(prompt, list) else prompt}]:
            lines.append({**base, "prompt": pair["prompt"], "output": pair.get("output")})
    names = list(dict.fromkeys([*ROW_COLUMNS, *(name for line in lines for name in line)]))
    text = io.StringIO()
    writer = csv.DictWriter(text, names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return write_atomic(out / RESULTS, text.getvalue())


def _relative(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()
