"""``pnp batch MANIFEST --out DIR [--backend local|ray[:ADDRESS]]`` plus the translate options as the rows' defaults.

Importing this module imports neither torch nor Ray. The flags, the manifest and the output folder
are checked before any model loads or any cluster starts; rows with bad settings are recorded as
failed and the others go on. Exit status: 0 when every row is translated, 1 when some failed (the
results file and the console name them) or the Ray job stopped, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pnp.batch.manifest import check_masks, read_manifest
from pnp.config import ConfigError, check_int
from pnp.evaluation.backends import IMAGES_PER_CALL, LOCAL, RAY, BackendError, parse_backend
from pnp.evaluation.ray_backend import add_ray_arguments
from pnp.evaluation.records import check_folder
from pnp.outputs import OUTPUT_FORMATS, OutputOptions
from pnp.pipelines.loading import model_location, own_resolution

PLACEHOLDER_PROMPT = "checked per row"


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch command's own arguments (the translate options are added beside them, as the rows' defaults)."""
    parser.add_argument(
        "manifest",
        metavar="MANIFEST",
        help="a .csv or .jsonl file, a row per source: image (path or URL) and optional mask (white where it "
        "may change), or generation-prompt and seed; prompt (several separated by ';'), and any setting by its "
        "flag's name (steps, scale, ...); an id column names the row's files",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for the outputs, a record per row and results.csv; rerunning into it resumes",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete another job's files in --out first")
    parser.add_argument(
        "--backend",
        default=LOCAL,
        help="where to translate: local (default, this process), ray (a local Ray cluster), "
        "ray:auto or ray:HOST:PORT (join a cluster, from one of its nodes; not ray://: Ray Data does not "
        "run through Ray Client)",
    )
    add_ray_arguments(parser)
    parser.add_argument(
        "--images-per-call",
        type=int,
        default=IMAGES_PER_CALL,
        help="real images that share their prompts and settings are translated together, this many "
        f"at most (default {IMAGES_PER_CALL}; 1: one at a time)",
    )
    parser.add_argument(
        "--prompt", action="append", default=None, help="target prompt of the rows that give none; repeat for several"
    )
    parser.add_argument(
        "--generation-scale",
        type=float,
        default=None,
        help="guidance scale of generated sources, for rows that give none",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of generated sources, for rows that give none")
    parser.add_argument(
        "--format", default=OutputOptions.output_format, help=f"output format: {', '.join(OUTPUT_FORMATS)}"
    )
    parser.add_argument("--quality", type=int, default=OutputOptions.output_quality, help="webp/jpg quality (1-100)")


def run_batch(args: argparse.Namespace, flag: Callable[[str], str]) -> int:
    """The batch command: 0 when every row is translated, 1 when some failed; ``flag`` names a setting's flag."""
    from pnp.app.options import model_checks
    from pnp.batch.run import BatchPlan, run

    defaults = _defaults(args)
    rows = check_masks(read_manifest(args.manifest, defaults, flag), flag, own_resolution(model_location(args.model)))
    options = OutputOptions(args.format, args.quality)
    check_int("images_per_call", args.images_per_call, 1, 64)
    spec = parse_backend(args.backend)
    if spec.kind not in (LOCAL, RAY):
        raise ConfigError("backend", f"{args.backend!r}: a batch job runs on local or ray[:ADDRESS]")
    loras = model_checks(args)
    manifest = {
        "kind": "batch",
        "model": args.model,
        "config": args.config,
        "lora": args.lora,
        "injection_layers": args.injection_layers,
        "dtype": args.dtype,
        "format": options.output_format,
        "quality": options.output_quality,
    }
    out = Path(args.out)
    check_folder(out, manifest, args.overwrite, "batch job")
    backend = _backend(spec, args, loras)
    plan = BatchPlan(tuple(rows), out, manifest, options, column=lambda param: flag(param).lstrip("-"))
    try:
        summary = run(plan, backend, quiet=args.quiet, log=lambda line: print(line, file=sys.stderr))
    except BackendError as err:  # the rows filed so far keep their records
        print(f"error: {err}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        getattr(backend, "close", lambda: None)()
    done = summary["rows"] - summary["failed"]
    print(
        f"{done} of {summary['rows']} rows translated ({summary['reused']} earlier), {summary['failed']} failed: "
        f"{summary['results']}"
    )
    return 1 if summary["failed"] else 0


def _defaults(args: argparse.Namespace) -> dict:
    """The translate flags as the rows' settings (PnPConfig's fields, and ``seed``), checked once here.

    As given, not as resolved: a row's own steps still set its inversion steps unless a flag gave them.
    """
    from pnp.app.options import translation_config, translation_settings

    translation_config(args, prompt=args.prompt or PLACEHOLDER_PROMPT)  # a bad flag is refused before any row
    defaults = {**translation_settings(args), "seed": args.seed}
    if args.prompt:
        defaults["prompt"] = args.prompt
    if args.generation_scale is not None:
        defaults["generation_guidance_scale"] = args.generation_scale
    return defaults


def _backend(spec, args: argparse.Namespace, loras: list):
    """The local backend with the pipeline loaded, or the Ray backend with its cluster joined."""
    if spec.kind == RAY:
        from pnp.evaluation.ray_backend import RayBackend

        backend = RayBackend.from_args(spec.address, args, keep_going=True, warn=_warn)
        backend.check()
        return backend
    from pnp.app.options import load_pipeline
    from pnp.evaluation.local import LocalBackend

    pipe = load_pipeline(args, loras)
    pipe.set_progress_bar_config(disable=True)  # the job's own bar counts rows
    return LocalBackend(pipe, args.images_per_call, keep_going=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
