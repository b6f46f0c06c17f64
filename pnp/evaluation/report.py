"""A run's results: one row per source-prompt pair with every score and the settings used, and their means.

Scores are written as computed (``results.csv``, ``results.json``); the summary also shows them
scaled as PIE-Bench's table prints them (structure and LPIPS x 10^3, MSE x 10^4, SSIM x 10^2). The
means of the toy benchmark's 0/1 columns (``toy_colour``, ``toy_shape``) are rates.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from pnp.evaluation.metrics import METRICS
from pnp.evaluation.records import write_json
from pnp.evaluation.toy import TOY_METRICS
from pnp.outputs import write_atomic

# PIE-Bench's editing_type_id values.
EDITING_TYPES = {
    "0": "random",
    "1": "change object",
    "2": "add object",
    "3": "delete object",
    "4": "change content",
    "5": "change pose",
    "6": "change color",
    "7": "change material",
    "8": "change background",
    "9": "change style",
}
PAIR_COLUMNS = ("benchmark", "source", "editing_type", "prompt_index", "prompt", "source_image", "output", "worker")


def rows_of(benchmark_name: str, records: list[dict]) -> list[dict]:
    """One flat row per pair: identification, what the benchmark says of its source (``Source.info``: TI2I's
    ``source_prompt``, PIE-Bench's ``original_prompt``, ...), scores, then the settings (``setting_*``) of its
    source's call."""
    rows = []
    for record in records:
        for index, pair in enumerate(record["pairs"]):
            row = {
                "benchmark": benchmark_name,
                "source": record["key"],
                "editing_type": record.get("editing_type"),
                "prompt_index": index,
                "prompt": pair["prompt"],
                "source_image": record["source_image"],
                "output": pair["output"],
                "worker": record["worker"],
            }
            row.update(record.get("info") or {})
            # Every benchmark's rows have the same score columns, empty where not computed; the toy columns only
            # where they are, so that other benchmarks' tables stay as they were.
            names = [name for name in METRICS if name not in TOY_METRICS or name in pair["scores"]]
            row.update({name: pair["scores"].get(name) for name in names})
            row.update({f"setting_{name}": value for name, value in record["settings"].items()})
            rows.append(row)
    return rows


def means(rows: list[dict]) -> dict[str, dict]:
    """Per metric: the mean over the pairs that have a finite score, and how many those are."""
    summary = {}
    for name in METRICS:
        values = [row[name] for row in rows if row.get(name) is not None and math.isfinite(row[name])]
        if values:
            summary[name] = {"mean": sum(values) / len(values), "pairs": len(values)}
    return summary


def means_by_editing_type(rows: list[dict]) -> dict[str, dict]:
    """PIE-Bench: the means of each editing type, keyed by "<id> <name>"."""
    types = sorted({row["editing_type"] for row in rows if row["editing_type"] is not None}, key=_numeric_first)
    return {
        f"{t} {EDITING_TYPES.get(t, '')}".strip(): means([r for r in rows if r["editing_type"] == t]) for t in types
    }


def write_results(out: Path, summary: dict, rows: list[dict]) -> list[Path]:
    """results.csv (the rows) and results.json (the summary and the rows)."""
    columns = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    json_rows = [{k: _json_value(v) for k, v in row.items()} for row in rows]
    return [
        write_atomic(out / "results.csv", buffer.getvalue()),
        write_json(out / "results.json", {**summary, "rows": json_rows}),
    ]


def summary_table(summary_means: dict[str, dict]) -> list[str]:
    """Text lines: each metric's mean as computed, and times the factor PIE-Bench's table prints it with."""
    lines = [f"{'metric':<30} {'mean':>10} {'factor':>7} {'mean x factor':>14} {'pairs':>6}"]
    for name, value in summary_means.items():
        scale, higher_better = METRICS[name]
        arrow = "higher is better" if higher_better else "lower is better"
        mean = value["mean"]
        lines.append(f"{name:<30} {mean:>10.4g} {scale:>7g} {mean * scale:>14.2f} {value['pairs']:>6}   {arrow}")
    return lines


def _numeric_first(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _json_value(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
