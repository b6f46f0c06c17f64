"""The contact sheet, ``index.html``: the means, then each source beside its outputs with their scores.

A static page with relative links into ``images/``, so the run's folder can be copied and opened
anywhere. Scores are shown as PIE-Bench's table scales them.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from pnp.evaluation.metrics import METRICS
from pnp.outputs import write_atomic

THUMBNAIL_PX = 192
# The scores shown under each output, in this order (those a pair has).
SHOWN = (
    "clip_cosine",
    "clip_score",
    "clip_score_edited",
    "structure_distance_splice",
    "structure_distance_pie_bench",
    "psnr",
    "lpips",
    "ssim",
    "toy_iou",
    "toy_colour",
    "toy_shape",
)
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.means { border-collapse: collapse; margin-bottom: 1.5em; }
table.means td, table.means th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
table.means th:first-child, table.means td:first-child { text-align: left; }
.source { display: flex; flex-wrap: wrap; gap: 0.8em; padding: 0.8em 0; border-top: 1px solid #ddd; }
figure { margin: 0; width: %dpx; font-size: 12px; }
figure img { width: %dpx; image-rendering: auto; border: 1px solid #ccc; background: #eee; }
figcaption .prompt { font-weight: bold; display: block; margin: 0.2em 0; }
figcaption .scores { color: #555; }
""" % (THUMBNAIL_PX, THUMBNAIL_PX)


def write_contact_sheet(
    out: Path, title: str, notes: list[str], summary_means: dict, by_type: dict, records: list[dict]
) -> Path:
    """Write ``out``/index.html."""
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style>",
        f"<h1>{_e(title)}</h1>",
        *(f"<p>{_e(note)}</p>" for note in notes),
        _means_table({"all pairs": summary_means, **by_type}),
        "<p>Under each output: its scores, scaled as in the table (cos: the paper's CLIP cosine; clip: "
        "PIE-Bench's CLIPScore; struct: structure distance, (pie) on 0..255 input).</p>",
    ]
    if "toy_iou" in summary_means:
        parts.append(
            "<p>Read by the toy world's scorer: iou: the output's shape pixels against the source's; colour, shape: "
            "1 where the output's main shape has the prompt's colour, its class (their means are rates).</p>"
        )
    parts += [_source_row(record) for record in records]
    return write_atomic(out / "index.html", "\n".join(parts) + "\n")


def _means_table(groups: dict[str, dict]) -> str:
    names = [name for name in METRICS if any(name in group for group in groups.values())]
    head = "".join(f"<th>{_e(_label(name))}</th>" for name in names)
    rows = []
    for group, values in groups.items():
        count = max((v["pairs"] for v in values.values()), default=0)
        cells = "".join(f"<td>{_scaled(name, values[name]['mean']) if name in values else ''}</td>" for name in names)
        rows.append(f"<tr><td>{_e(group)} ({count})</td>{cells}</tr>")
    return f"<table class='means'><tr><th>mean over</th>{head}</tr>{''.join(rows)}</table>"


def _source_row(record: dict) -> str:
    info = record.get("info") or {}
    caption = " · ".join(_e(f"{k}: {v}") for k, v in info.items() if v) or _e(record["key"])
    figures = [_figure(record["source_image"], f"source {record['key']}", caption)]
    if record.get("mask_image"):
        figures.append(_figure(record["mask_image"], "edited region (white)", ""))
    for pair in record["pairs"]:
        scores = " · ".join(
            f"{_short(name)} {_scaled(name, pair['scores'][name])}"
            for name in SHOWN
            if pair["scores"].get(name) is not None
        )
        figures.append(_figure(pair["output"], pair["prompt"], scores))
    return f"<div class='source' id='{_e(record['key'])}'>{''.join(figures)}</div>"


def _figure(src: str, title: str, detail: str) -> str:
    return (
        f"<figure><a href='{_e(src)}'><img loading='lazy' src='{_e(src)}' alt='{_e(title)}'></a>"
        f"<figcaption><span class='prompt'>{_e(title)}</span><span class='scores'>{detail}</span></figcaption></figure>"
    )


def _scaled(name: str, value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * METRICS[name][0]:.3g}" if name == "clip_cosine" else f"{value * METRICS[name][0]:.2f}"


def _label(name: str) -> str:
    scale, higher_better = METRICS[name]
    unit = f" x10^{round(math.log10(scale))}" if scale != 1 else ""
    return f"{name}{unit} {'↑' if higher_better else '↓'}"


def _short(name: str) -> str:
    return {
        "structure_distance_splice": "struct",
        "structure_distance_pie_bench": "struct(pie)",
        "clip_score_edited": "clip(edit)",
        "clip_cosine": "cos",
        "clip_score": "clip",
        "toy_iou": "iou",
        "toy_colour": "colour",
        "toy_shape": "shape",
    }.get(name, name)


def _e(text) -> str:
    return html.escape(str(text), quote=True)
