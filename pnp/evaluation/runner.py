"""Running an evaluation: skip finished sources, translate the rest on a backend, score and file each as it arrives.

Scores are computed here, in the evaluating process, whatever translated the images. Each
source's images are written first and its record last (``records``), so a rerun of an
interrupted run picks up where it stopped. A progress bar counts pairs and shows the time left.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pnp.evaluation.backends import Translation
from pnp.evaluation.benchmarks import PIE_BENCH
from pnp.evaluation.contact_sheet import write_contact_sheet
from pnp.evaluation.metrics import MetricSuite, finite_or_none
from pnp.evaluation.piebench import decode_mask
from pnp.evaluation.records import IMAGES, Plan, finished, record_path, start_folder, write_json
from pnp.evaluation.report import means, means_by_editing_type, rows_of, summary_table, write_results
from pnp.images import load_image
from pnp.outputs import OutputOptions, output_names, save_image

LOSSLESS = OutputOptions("png")


def run(plan: Plan, backend, suite: MetricSuite, quiet: bool = False, log=print) -> dict:
    """Translate and score every unfinished source, then write results.csv/json and index.html; returns the summary."""
    start_folder(plan.out, plan.manifest)
    records = {job.source.key: finished(plan.out, job.source.key, job.source.prompts) for job in plan.jobs}
    todo = [job for job in plan.jobs if records[job.source.key] is None]
    if len(todo) < len(plan.jobs):
        log(f"reusing {len(plan.jobs) - len(todo)} finished sources in {plan.out}")
    pairs = sum(len(job.source.prompts) for job in todo)
    with tqdm(total=pairs, unit="pair", desc="evaluate", disable=quiet or not todo, file=sys.stderr) as bar:
        for translation in backend.translate(todo):
            records[translation.job.source.key] = file_translation(plan, translation, suite)
            bar.update(len(translation.outputs))
    return write_report(plan, [records[job.source.key] for job in plan.jobs], suite.unavailable)


def file_translation(plan: Plan, translation: Translation, suite: MetricSuite) -> dict:
    """Write one source's images, score its pairs, and write its record (last)."""
    job, source = translation.job, translation.job.source
    folder = plan.out / IMAGES / source.key
    folder.mkdir(parents=True, exist_ok=True)
    if translation.generated_source is not None:
        source_image = translation.generated_source
        source_path = save_image(source_image, folder / "source.png", LOSSLESS)
    else:
        source_image = load_image(source.image)
        source_path = folder / f"source{source.image.suffix.lower()}"
        shutil.copyfile(source.image, source_path)
    names = output_names(source.prompts, False, LOSSLESS.output_format)
    outputs = [
        save_image(image, folder / name, LOSSLESS) for image, name in zip(translation.outputs, names, strict=True)
    ]
    mask_path = None
    if source.mask is not None:
        mask = decode_mask(source.mask, source_image.height, source_image.width)
        mask_path = save_image(Image.fromarray((mask * 255).astype(np.uint8), "L"), folder / "mask.png", LOSSLESS)
    scores = suite.score(source, source_image, translation.outputs)
    settings = {k: v for k, v in job.config.as_kwargs().items() if k != "prompt"}
    record = {
        "key": source.key,
        "editing_type": source.editing_type,
        "info": source.info,
        "worker": translation.worker,
        "source_image": _relative(source_path, plan.out),
        "mask_image": _relative(mask_path, plan.out) if mask_path else None,
        "settings": {**settings, "seed": job.seed, "model": plan.manifest["model"]},
        "pairs": [
            {
                "prompt": prompt,
                "output": _relative(path, plan.out),
                "scores": {name: finite_or_none(value) for name, value in pair_scores.items()},
            }
            for prompt, path, pair_scores in zip(source.prompts, outputs, scores, strict=True)
        ],
    }
    write_json(record_path(plan.out, source.key), record)
    return record


def write_report(plan: Plan, records: list[dict], unavailable: dict[str, str]) -> dict:
    """results.csv, results.json and index.html from the records, in benchmark order; returns the summary.

    ``unavailable`` names the metrics that could not be computed here, and why.
    """
    benchmark = plan.benchmark
    rows = rows_of(benchmark.name, records)
    summary = {
        **plan.manifest,
        "name": benchmark.name,
        "sources": len(records),
        "pairs": len(rows),
        "not_computed": unavailable,
        "means": means(rows),
    }
    if benchmark.kind == PIE_BENCH:
        summary["means_by_editing_type"] = means_by_editing_type(rows)
    paths = write_results(plan.out, summary, rows)
    notes = [
        f"{summary['pairs']} pairs from {summary['sources']} sources of {benchmark.path}",
        f"model {plan.manifest['model']}; metric models: CLIP {plan.manifest['clip_model']}, "
        f"DINO {plan.manifest['dino_model']}",
        *(f"{name} not computed: {reason}" for name, reason in unavailable.items()),
    ]
    paths.append(
        write_contact_sheet(
            plan.out,
            f"pnp evaluation: {benchmark.name}",
            notes,
            summary["means"],
            summary.get("means_by_editing_type", {}),
            records,
        )
    )
    summary["files"] = [str(p) for p in paths]
    summary["table"] = summary_table(summary["means"])
    return summary


def _relative(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()
