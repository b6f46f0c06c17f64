"""Benchmark complete real-image translations and compare each with its own cost floor.

    python -m benchmarks.run --quick            # a few minutes on 2 CPU cores
    python -m benchmarks.run                    # 50/50 steps; see --help for the grid

For every dtype, resolution and prompt count it runs one translation through ``PnPPipeline``
(text encoding, VAE encoding, DDIM inversion, batched translation, decoding), then, in the same
process, replays the same text-encoder batch, the exact sequence of UNet batch shapes of that run
(``pnp.method.plan``) as bare UNet calls, and the same VAE work. The ratio of the two is the overhead of
the implementation over the method's minimum. The model is
Stable Diffusion 1.5-shaped with random weights (built once, saved, and loaded through the same
code that loads real weights), or a diffusers folder of real weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pnp.config import ConfigError, PnPConfig
from pnp.devices import DTYPE_NAMES, default_dtype, dtype_name
from pnp.images import load_image, resize_for_model
from pnp.method.plan import inversion_rows, translation_rows
from pnp.pipelines.pipeline_pnp import PnPPipeline

from .machine import OtherLoad, add_machine_options, check_machine_options, environment, model_folder
from .memory import MemoryTracker
from .replay import BareReplay
from .report import format_report, markdown_table, progress_line
from .schedule import public_calls, public_rows

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = (
    "a photo of a robot horse",
    "a watercolor painting of a horse",
    "a bronze statue of a horse",
    "a horse made of lego bricks",
    "a pencil sketch of a horse",
    "a horse in a snowy forest, oil painting",
    "a zebra on a beach at sunset",
    "a paper origami horse",
)
QUICK = dict(resolutions=[256], prompts=[1, 2], steps=10)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rows_only:
        print("\n".join(rows_table(args)))
        return 0
    folder = model_folder(args.model, args.cache_dir)
    tracker = MemoryTracker(args.device)
    runs = []
    for dtype in args.dtypes:
        pipe = PnPPipeline.from_pretrained(folder, device=args.device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.set_source_cache(0)  # every repeat is a first call (benchmarks.workflows measures the cache)
        for resolution in args.resolutions:
            image = resize_for_model(source_image(args.image, resolution), resolution)
            replay = BareReplay(pipe, *image.size)
            replay.warm_up(set(), vae=True)
            for count in args.prompts:
                config = make_config(args, resolution, count)
                run = measure(pipe, replay, tracker, config, image, args.repeats)
                runs.append(run)
                print(progress_line(run), file=sys.stderr, flush=True)
        del pipe, replay
    add_prompt_scaling(runs)
    report = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(args.device, tracker),
        "settings": {
            "model": args.model,
            "steps": args.steps,
            "inversion_steps": args.inversion_steps,
            "max_batch_size": args.max_batch_size,
            "image": str(args.image) if args.image else "synthetic",
            "repeats": args.repeats,
        },
        "runs": runs,
    }
    out = args.out or RESULTS / f"{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwritten: {out}")
    return 0 if all(run["rows_match_schedule"] for run in runs) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time complete real-image PnP translations and their bare UNet/VAE floor.",
    )
    add_machine_options(parser)
    parser.add_argument(
        "--dtypes",
        type=_names,
        default=None,
        help="comma-separated; default float32,bfloat16 on the CPU, float16 on CUDA",
    )
    parser.add_argument(
        "--resolutions",
        type=_numbers,
        default=None,
        help="comma-separated pixel sizes; default 256 on the CPU, 256,512 on CUDA",
    )
    parser.add_argument(
        "--prompts",
        type=_numbers,
        default=None,
        help="comma-separated prompt counts P; default 1,2,4 on the CPU, 1,2,4,8 on CUDA",
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps N (default 50)")
    parser.add_argument(
        "--inversion-steps", type=int, default=None, help="DDIM inversion steps (default: as many as --steps)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="most prompts per UNet call, as in PnPConfig (default: all in one call)",
    )
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="source image (default: a synthetic one; content does not change the cost)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run each translation and its replay this many times, alternately, and keep the "
        "fastest of each (default 1); more repeats resist other load on the machine",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="256 px, P = 1,2, 10/10 steps, the device's default dtype, unless given otherwise: "
        "a few minutes on 2 CPU cores",
    )
    parser.add_argument(
        "--rows-only",
        action="store_true",
        help="print the UNet calls and rows of each prompt count, ours and the public "
        "implementations', computed from the schedule; run nothing",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file to write (default: benchmarks/results/<date-time>.json)"
    )
    args = parser.parse_args(argv)

    check_machine_options(parser, args)
    cuda = torch.device(args.device).type == "cuda"
    preset = (
        QUICK
        if args.quick
        else dict(
            resolutions=[256, 512] if cuda else [256],
            prompts=[1, 2, 4, 8] if cuda else [1, 2, 4],
            steps=50,
        )
    )
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.dtypes is None:
        everything = ["float16"] if cuda else ["float32", "bfloat16"]
        args.dtypes = [dtype_name(default_dtype(args.device))] if args.quick else everything
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats} is not a positive whole number")
    unknown = [name for name in args.dtypes if name not in DTYPE_NAMES]
    if unknown:
        parser.error(f"--dtypes: {', '.join(unknown)} not among {', '.join(DTYPE_NAMES)}")
    try:
        for resolution in args.resolutions:
            for count in args.prompts:
                make_config(args, resolution, count)
    except ConfigError as err:
        parser.error(str(err))
    return args


def make_config(args: argparse.Namespace, resolution: int, count: int) -> PnPConfig:
    """The translation of one run; prompt texts differ but their cost does not (CLIP pads to 77 tokens)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    return PnPConfig(
        prompt=prompts,
        num_inference_steps=args.steps,
        num_inversion_steps=args.inversion_steps,
        resolution=resolution,
        max_batch_size=args.max_batch_size,
    )


def source_image(path: Path | None, resolution: int) -> Image.Image:
    """The given image, or a synthetic one with smooth gradients and a disc."""
    if path is not None:
        return load_image(path)
    y, x = np.mgrid[0:resolution, 0:resolution] / resolution
    disc = ((x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.08) * 160
    pixels = np.stack([x * 255, y * 200 + disc * 0.3, 90 + disc], axis=-1)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def measure(
    pipe: PnPPipeline, replay: BareReplay, tracker: MemoryTracker, config: PnPConfig, image, repeats: int = 1
) -> dict:
    """A translation through the pipeline, then its bare replay, ``repeats`` times: the fastest of
    each with the peak memory of that same repeat, and the rows."""
    scheduler = pipe.scheduler.config
    inversion = inversion_rows(config, num_train_timesteps=scheduler.num_train_timesteps, offset=scheduler.steps_offset)
    translation = translation_rows(
        config, num_train_timesteps=scheduler.num_train_timesteps, offset=scheduler.steps_offset
    )
    texts = 3 + len(config.prompt)  # the empty, source and negative prompts, then the targets
    replay.warm_up(set(inversion + translation), vae=False, texts=texts)

    best = bare = None
    with OtherLoad() as load:
        for _ in range(repeats):
            # Alternating pipeline and replay exposes both to the same drift; the fastest of each is
            # the least disturbed by other work on the machine.
            with tracker.measure() as memory:
                start = time.perf_counter()
                result = pipe(image=image, **config.as_kwargs())
                total_s = time.perf_counter() - start
            if best is None or total_s < best[0]:
                best = (total_s, result.metrics, memory)
            decodes = len(result.images)
            del result
            with tracker.measure() as memory:
                times = replay.run(texts, inversion, translation, decodes)
            if bare is None or times.total_s < bare[0].total_s:
                bare = (times, memory)
    (total_s, metrics, engine_memory), (bare, bare_memory) = best, bare

    count = len(config.prompt)
    steps = config.num_inference_steps
    phases = {
        name: metrics[name] for name in ("encode_prompts_s", "encode_s", "inversion_s", "translation_s", "decode_s")
    }
    phases["other_s"] = total_s - sum(phases.values())
    return {
        "dtype": dtype_name(pipe.unet.dtype),
        "resolution": config.resolution,
        "size": list(image.size),
        "prompts": count,
        "steps": steps,
        "inversion_steps": config.num_inversion_steps,
        "unet_calls": metrics["unet_calls"],
        "unet_rows": metrics["unet_rows"],
        "planned_rows": sum(inversion) + sum(translation),
        "rows_match_schedule": (metrics["unet_calls"], metrics["unet_rows"])
        == (len(inversion) + len(translation), sum(inversion) + sum(translation)),
        "public_calls": public_calls(count, steps),
        "public_rows": public_rows(count, steps),
        "public_rows_ratio": public_rows(count, steps) / metrics["unet_rows"],
        "time": {**phases, "total_s": total_s},
        "seconds_per_image": total_s / count,
        "bare": {**vars(bare), "total_s": bare.total_s},
        "overhead": {
            "total": total_s / bare.total_s,
            "text": phases["encode_prompts_s"] / bare.text_s,
            "inversion": phases["inversion_s"] / bare.inversion_s,
            "translation": phases["translation_s"] / bare.translation_s,
            "vae": (phases["encode_s"] + phases["decode_s"]) / (bare.encode_s + bare.decode_s),
        },
        "memory": {
            "method": tracker.method,
            "peak_bytes": engine_memory.peak,
            "working_bytes": engine_memory.working,
            "bare_peak_bytes": bare_memory.peak,
            "bare_working_bytes": bare_memory.working,
            "working_ratio": engine_memory.working / bare_memory.working if bare_memory.working else None,
        },
        "repeats": repeats,
        "other_cpu_share": load.other_cpu_share,
        "steal_share": load.steal_share,
    }


def add_prompt_scaling(runs: list[dict]) -> None:
    """time(P) / time(P0) against the fewest prompts P0 of the same dtype and resolution, and the
    marginal cost of each extra prompt as a fraction of that run's time (1.0 = as costly as a new run)."""
    for run in runs:
        group = [r for r in runs if (r["dtype"], r["resolution"]) == (run["dtype"], run["resolution"])]
        base = min(group, key=lambda r: r["prompts"])
        extra = run["prompts"] - base["prompts"]
        total, base_total = run["time"]["total_s"], base["time"]["total_s"]
        run["scaling"] = {
            "base_prompts": base["prompts"],
            "time_ratio": total / base_total,
            "translation_ratio": run["time"]["translation_s"] / base["time"]["translation_s"],
            "marginal_cost": (total - base_total) / extra / base_total if extra else None,
        }


def rows_table(args: argparse.Namespace) -> list[str]:
    """Markdown table of the UNet work of each prompt count, from the schedule alone."""
    rows = []
    for count in args.prompts:
        config = make_config(args, args.resolutions[0], count)
        batches = inversion_rows(config) + translation_rows(config)
        steps = config.num_inference_steps
        ours, public = sum(batches), public_rows(count, steps)
        rows.append(
            [
                count,
                steps,
                config.num_inversion_steps,
                len(batches),
                ours,
                public_calls(count, steps),
                public,
                f"{public / ours:.1f}x",
            ]
        )
    return markdown_table(
        ["P", "steps", "inversion steps", "UNet calls", "UNet rows", "public calls", "public rows", "public/ours"],
        rows,
    )


def _numbers(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    return numbers


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one value")
    return names


if __name__ == "__main__":
    sys.exit(main())
