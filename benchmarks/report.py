"""Markdown tables of a benchmark report."""

from __future__ import annotations

GIB = 2**30
BUSY = 0.05  # share of the machine's CPU time taken by others that marks a run as disturbed


def progress_line(run: dict) -> str:
    return (
        f"{run['dtype']} {run['resolution']}px P={run['prompts']}: {run['time']['total_s']:.1f} s, "
        f"bare {run['bare']['total_s']:.1f} s, overhead {run['overhead']['total']:.3f}"
    )


def format_report(report: dict) -> str:
    """Two Markdown tables: where the time goes, and how far each run is from its floor."""
    runs = report["runs"]
    env = report["environment"]
    lines = [
        f"{report['command']}",
        f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}, diffusers {env['diffusers']}; "
        f"steps {report['settings']['steps']}, inversion steps {report['settings']['inversion_steps']}, "
        f"model {report['settings']['model']}",
        "",
        "Where the time goes (seconds)",
        "",
    ]
    time_rows = [
        [
            r["dtype"],
            r["resolution"],
            r["prompts"],
            r["unet_calls"],
            r["unet_rows"],
            f"{r['public_rows']} ({r['public_rows_ratio']:.1f}x)",
            *(
                f"{r['time'][k]:.2f}"
                for k in ("encode_prompts_s", "encode_s", "inversion_s", "translation_s", "decode_s", "total_s")
            ),
            f"{r['seconds_per_image']:.2f}",
            f"{r['scaling']['time_ratio']:.2f}",
        ]
        for r in runs
    ]
    lines += markdown_table(
        [
            "dtype",
            "px",
            "P",
            "UNet calls",
            "UNet rows",
            "public rows",
            "text",
            "encode",
            "inversion",
            "translation",
            "decode",
            "total",
            "s/image",
            "time(P)/time(P0)",
        ],
        time_rows,
    )
    lines += ["", "Distance to the floor (bare text encoder, UNet and VAE replay of the same shapes, same process)", ""]
    floor_rows = [
        [
            r["dtype"],
            r["resolution"],
            r["prompts"],
            f"{r['bare']['total_s']:.2f}",
            *(f"{r['overhead'][k]:.3f}" for k in ("total", "text", "inversion", "translation", "vae")),
            f"{r['memory']['peak_bytes'] / GIB:.2f}",
            f"{r['memory']['working_bytes'] / GIB:.2f}",
            f"{r['memory']['bare_working_bytes'] / GIB:.2f}",
        ]
        for r in runs
    ]
    memory = "peak allocated" if "cuda" in env["memory_method"] else "peak RSS"
    lines += markdown_table(
        [
            "dtype",
            "px",
            "P",
            "bare s",
            "total/bare",
            "text/bare",
            "inversion/bare",
            "translation/bare",
            "VAE/bare",
            f"{memory} GiB",
            "working GiB",
            "bare working GiB",
        ],
        floor_rows,
    )
    marginal = [r for r in runs if r["scaling"]["marginal_cost"] is not None]
    if marginal:
        lines += [
            "",
            "Each extra prompt costs, as a fraction of the fewest-prompt run: "
            + ", ".join(
                f"{r['dtype']} {r['resolution']}px P={r['prompts']}: {r['scaling']['marginal_cost']:.2f}"
                for r in marginal
            ),
        ]
    busy = [r for r in runs if (r["other_cpu_share"] or 0) + (r["steal_share"] or 0) > BUSY]
    if busy:
        lines += [
            "",
            f"NOTE: other processes or the hypervisor took more than {BUSY:.0%} of the CPU during "
            f"{len(busy)} run(s), so their times and ratios are disturbed (other_cpu_share, steal_share in the JSON)",
        ]
    if not all(r["rows_match_schedule"] for r in runs):
        lines += ["", "WARNING: the engine's UNet calls differ from what the schedule implies (rows_match_schedule)"]
    return "\n".join(lines)


def markdown_table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out
