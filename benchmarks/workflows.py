"""Work not redone, as ratios measured in one run: cached sources, fused generation, several images per call, compiling.

    python -m benchmarks.workflows --quick                       # minutes on 2 CPU cores
    python -m benchmarks.workflows --model weights --dtype float16 --resolution 512 --steps 50 --prompts 1,4,8

Cases (``--cases``):
- cache: a repeat call on a cached source (another prompt) against the first call on it;
- generation: generation mode with the generation fused into the translation's calls, against
  generating first and translating after;
- images: images translated per second with 1, 2 and 4 images per call (``--images``);
- compile: a warm translation through a compiled UNet against the eager one, the time the
  first compiled call takes (compiling), and how far the compiled result is from the eager one
  on a source the compiled UNet first sees after the timed runs.
Each timing is the fastest of ``--repeats`` runs after a warm-up run. Results are ratios: absolute
times on shared machines drift.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from pnp.devices import DTYPE_NAMES, default_dtype, dtype_name
from pnp.method.generation import noise_generator
from pnp.pipelines.pipeline_pnp import PnPPipeline

from .machine import OtherLoad, add_machine_options, check_machine_options, environment, model_folder
from .memory import MemoryTracker
from .report import markdown_table
from .run import PROMPTS, RESULTS, source_image

CASES = ("cache", "generation", "images", "compile")
QUICK = dict(resolution=256, steps=10, prompts=[1], images=[1, 2, 4])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = PnPPipeline.from_pretrained(model_folder(args.model, args.cache_dir), device=args.device, dtype=args.dtype)
    pipe.set_progress_bar_config(disable=True)
    image = source_image(None, args.resolution)
    results = {}
    with OtherLoad() as load:
        for case in args.cases:
            print(f"{case} ...", file=sys.stderr, flush=True)
            results[case] = CASE_RUNS[case](pipe, image, args)
    report = {
        "command": "python -m benchmarks.workflows " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(args.device, MemoryTracker(args.device)),
        "settings": {
            "model": args.model,
            "dtype": args.dtype,
            "resolution": args.resolution,
            "steps": args.steps,
            "repeats": args.repeats,
        },
        "results": results,
        "other_cpu_share": load.other_cpu_share,
    }
    out = args.out or RESULTS / f"workflows-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nwritten: {out}")
    return 0


def settings(args, prompts: int, first: int = 0, **extra) -> dict:
    """A translation's arguments: ``prompts`` of the benchmark's prompts (from the ``first``), its steps and
    resolution."""
    return dict(
        prompt=[PROMPTS[(first + i) % len(PROMPTS)] for i in range(prompts)],
        num_inference_steps=args.steps,
        resolution=args.resolution,
        output_type="latent",
        **extra,
    )


def fastest(run, repeats: int, device) -> tuple[float, dict]:
    """The fastest of ``repeats`` runs of ``run()`` (after one warm-up), and that run's metrics."""
    run()
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = run()
        _synchronize(device)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, metrics)
    return best


def cache_case(pipe, image, args) -> list[dict]:
    rows = []
    for count in args.prompts:

        def first():
            pipe.source_cache.clear()
            return pipe(image=image, **settings(args, count)).metrics

        def repeat():  # other prompts on the same (now cached) source
            return pipe(image=image, **settings(args, count, first=count)).metrics

        first_s, first_metrics = fastest(first, args.repeats, args.device)
        repeat_s, repeat_metrics = fastest(repeat, args.repeats, args.device)
        assert repeat_metrics["cache_hits"] == 1 and first_metrics["cache_hits"] == 0
        rows.append(
            {
                "prompts": count,
                "first_s": first_s,
                "repeat_s": repeat_s,
                "ratio": repeat_s / first_s,
                "first_rows": first_metrics["unet_rows"],
                "repeat_rows": repeat_metrics["unet_rows"],
            }
        )
    return rows


def generation_case(pipe, image, args) -> list[dict]:
    pipe.set_source_cache(0)  # every call generates
    rows = []
    for count in args.prompts:
        times = {}
        for fused in (True, False):
            pipe.fuse_generation = fused

            def run():
                return pipe(
                    generation_prompt="a photo of a horse in a field",
                    generator=noise_generator(0),
                    **settings(args, count),
                ).metrics

            times[fused] = fastest(run, args.repeats, args.device)
        pipe.fuse_generation = True
        rows.append(
            {
                "prompts": count,
                "fused_s": times[True][0],
                "separate_s": times[False][0],
                "ratio": times[True][0] / times[False][0],
                "fused_rows": times[True][1]["unet_rows"],
                "separate_rows": times[False][1]["unet_rows"],
            }
        )
    pipe.set_source_cache(None)
    return rows


def images_case(pipe, image, args) -> list[dict]:
    pipe.set_source_cache(0)  # every image is inverted
    pictures = [image.rotate(90 * k) for k in range(max(args.images))]
    count = args.prompts[0]
    rows = []
    for n in args.images:
        seconds, metrics = fastest(
            lambda: pipe(image=pictures[:n], **settings(args, count)).metrics, args.repeats, args.device
        )
        rows.append(
            {
                "images": n,
                "prompts": count,
                "seconds": seconds,
                "images_per_s": n * count / seconds,
                "unet_calls": metrics["unet_calls"],
                "unet_rows": metrics["unet_rows"],
            }
        )
    for row in rows:
        row["throughput_ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
    pipe.set_source_cache(None)
    return rows


def compile_case(pipe, image, args) -> list[dict]:
    pipe.set_source_cache(0)
    eager = {
        count: fastest(lambda c=count: pipe(image=image, **settings(args, c)).metrics, args.repeats, args.device)[0]
        for count in args.prompts
    }
    # A source the compiled UNet first sees after the timed runs: stale (frozen) features or weights would show.
    check = image.rotate(90)
    expected = pipe(image=check, **settings(args, args.prompts[0])).images
    pipe.compile_unet(backend=args.compile_backend)
    rows = []
    for count in args.prompts:
        start = time.perf_counter()
        pipe(image=image, **settings(args, count))  # compiles each new kind of call
        _synchronize(args.device)
        first_s = time.perf_counter() - start
        compiled_s = fastest(lambda: pipe(image=image, **settings(args, count)).metrics, args.repeats, args.device)[0]
        rows.append(
            {
                "prompts": count,
                "eager_s": eager[count],
                "compiled_s": compiled_s,
                "first_compiled_s": first_s,
                "speedup": eager[count] / compiled_s,
            }
        )
    rows[0]["max_abs_diff"] = float(
        (pipe(image=check, **settings(args, args.prompts[0])).images - expected).abs().max()
    )
    return rows


def _synchronize(device) -> None:
    """Wait for the GPU work queued so far, so that it counts in the time measured."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


CASE_RUNS = {"cache": cache_case, "generation": generation_case, "images": images_case, "compile": compile_case}


def format_report(report: dict) -> str:
    env, results = report["environment"], report["results"]
    lines = [
        report["command"],
        f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}; "
        f"{report['settings']['dtype']}, {report['settings']['resolution']} px, {report['settings']['steps']} steps",
        "",
    ]
    if "cache" in results:
        lines += ["Repeat call on a cached source against the first call", ""]
        lines += markdown_table(
            ["P", "first s", "repeat s", "repeat/first", "UNet rows first", "repeat"],
            [
                [
                    r["prompts"],
                    f"{r['first_s']:.2f}",
                    f"{r['repeat_s']:.2f}",
                    f"{r['ratio']:.2f}",
                    r["first_rows"],
                    r["repeat_rows"],
                ]
                for r in results["cache"]
            ],
        ) + [""]
    if "generation" in results:
        lines += ["Generation mode: fused against separate generation", ""]
        lines += markdown_table(
            ["P", "fused s", "separate s", "fused/separate", "UNet rows fused", "separate"],
            [
                [
                    r["prompts"],
                    f"{r['fused_s']:.2f}",
                    f"{r['separate_s']:.2f}",
                    f"{r['ratio']:.2f}",
                    r["fused_rows"],
                    r["separate_rows"],
                ]
                for r in results["generation"]
            ],
        ) + [""]
    if "images" in results:
        lines += ["Several images per call", ""]
        lines += markdown_table(
            ["images", "P", "s", "images/s", "throughput vs 1 image", "UNet calls", "UNet rows"],
            [
                [
                    r["images"],
                    r["prompts"],
                    f"{r['seconds']:.2f}",
                    f"{r['images_per_s']:.3f}",
                    f"{r['throughput_ratio']:.2f}",
                    r["unet_calls"],
                    r["unet_rows"],
                ]
                for r in results["images"]
            ],
        ) + [""]
    if "compile" in results:
        lines += ["Compiled UNet against eager", ""]
        lines += markdown_table(
            ["P", "eager s", "compiled s", "speed-up", "first compiled call s"],
            [
                [
                    r["prompts"],
                    f"{r['eager_s']:.2f}",
                    f"{r['compiled_s']:.2f}",
                    f"{r['speedup']:.2f}",
                    f"{r['first_compiled_s']:.1f}",
                ]
                for r in results["compile"]
            ],
        )
        lines += [
            "",
            f"Compiled against eager on a source first seen after compiling: max |difference| "
            f"{results['compile'][0]['max_abs_diff']:.2e} in the final latents",
            "",
        ]
    if (report["other_cpu_share"] or 0) > 0.05:
        lines += [
            f"NOTE: other processes took {report['other_cpu_share']:.0%} of the CPU during the run: times are disturbed"
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workflows", description=__doc__.split("\n\n")[0])
    add_machine_options(parser)
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="default: the device's default dtype")
    parser.add_argument("--resolution", type=int, default=None, help="default 256 on the CPU, 512 on CUDA")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling (and inversion) steps; default 10 on the CPU, 50 on CUDA"
    )
    parser.add_argument("--prompts", type=_numbers, default=None, help="prompt counts P, comma-separated (default 1)")
    parser.add_argument(
        "--images", type=_numbers, default=None, help="images per call for the images case (default 1,2,4)"
    )
    parser.add_argument("--cases", type=_cases, default=list(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each configuration, the fastest kept")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compile case (default inductor; 'eager' only traces, for tests)",
    )
    parser.add_argument("--quick", action="store_true", help="256 px, 10 steps, P = 1: minutes on 2 CPU cores")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: benchmarks/results/workflows-<time>.json)"
    )
    args = parser.parse_args(argv)
    check_machine_options(parser, args)
    cuda = torch.device(args.device).type == "cuda"
    defaults = QUICK if args.quick or not cuda else dict(resolution=512, steps=50, prompts=[1, 4, 8], images=[1, 2, 4])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.dtype = args.dtype or dtype_name(default_dtype(args.device))
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats} is not a positive whole number")
    return args


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _cases(text: str) -> list[str]:
    cases = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [case for case in cases if case not in CASES]
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"cases must be some of {', '.join(CASES)}, got {text!r}")
    return cases


if __name__ == "__main__":
    sys.exit(main())
