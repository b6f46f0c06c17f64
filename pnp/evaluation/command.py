"""``python -m pnp evaluate BENCHMARK --out DIR [--model M] [--limit N] [--backend ...]`` plus the translate options.

Importing this module does not import torch. Everything the user gave (flags, the benchmark file
and its images, the backend's servers or token, the output folder) is checked before any model
loads; then the metric models load (so an offline machine says so before translating), then the
local pipeline, and only then does the run write into the output folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pnp.app.form import form_inputs
from pnp.app.options import load_pipeline, translation_config
from pnp.config import MASK_SETTINGS, ConfigError, check_int
from pnp.evaluation.backends import IMAGES_PER_CALL, LOCAL, RAY, BackendError, make_job, parse_backend
from pnp.evaluation.benchmarks import PIE_BENCH
from pnp.evaluation.load import load_benchmark
from pnp.evaluation.metric_models import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL, RANDOM
from pnp.evaluation.metrics import STRUCTURE_VARIANTS
from pnp.evaluation.ray_backend import add_ray_arguments
from pnp.evaluation.records import Plan, check_folder
from pnp.evaluation.toy import is_toy
from pnp.pipelines.loading import RANDOM_MODELS

BOTH = "both"
DEFAULT_PARALLEL = 8
PLACEHOLDER_PROMPT = "checked per source"


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate command's own arguments (the translate options are added beside them)."""
    parser.add_argument(
        "benchmark",
        metavar="BENCHMARK",
        help="a TI2I yaml file, or a PIE-Bench folder holding mapping_file.json and annotation_images/",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder for outputs, scores and the contact sheet; rerunning into it resumes the run",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete another run's files in --out first")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N sources")
    parser.add_argument(
        "--backend",
        default=LOCAL,
        help="where to translate: local (default), ray[:ADDRESS] (actors on a Ray cluster: ray "
        "starts a local one, ray:auto or ray:HOST:PORT joins one), http://HOST:PORT[,http://"
        "HOST2:PORT...] (Cog servers running predict.py) or replicate:OWNER/MODEL[:VERSION] "
        "(needs REPLICATE_API_TOKEN)",
    )
    add_ray_arguments(parser)
    parser.add_argument(
        "--images-per-call",
        type=int,
        default=IMAGES_PER_CALL,
        help="with the local and ray backends, real images that share their prompts and settings are "
        f"translated together, this many at most (default {IMAGES_PER_CALL}; 1: one at a time)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"predictions in flight at once with the replicate backend (default {DEFAULT_PARALLEL})",
    )
    parser.add_argument(
        "--clip-model",
        default=None,
        help=f"CLIP model-hub id or folder (default {DEFAULT_CLIP_MODEL}; '{RANDOM}' with a random --model)",
    )
    parser.add_argument(
        "--dino-model",
        default=None,
        help=f"DINO ViT model-hub id or folder (default {DEFAULT_DINO_MODEL}; '{RANDOM}' with a random --model)",
    )
    parser.add_argument(
        "--use-masks",
        action="store_true",
        help="PIE-Bench: edit only inside each source's own mask (masked editing; see the --mask-* options), so "
        "the background scores show its effect",
    )
    parser.add_argument(
        "--structure-variant",
        default=BOTH,
        choices=(*STRUCTURE_VARIANTS, BOTH),
        help="structure distance on images in 0..1 (splice) or 0..255 as PIE-Bench's code does "
        "(pie-bench), or both (default)",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """The evaluate command: returns 0, or 1 when translation failed midway (finished sources are kept)."""
    plan, backend = _plan(args)
    warn = _warner()
    suite = _metric_suite(args, plan, warn)
    if backend is None:
        from pnp.evaluation.local import LocalBackend

        pipe = load_pipeline(args)
        pipe.set_progress_bar_config(disable=True)  # the evaluation's own bar counts pairs
        backend = LocalBackend(pipe, args.images_per_call)
    from pnp.evaluation.runner import run

    try:
        summary = run(plan, backend, suite, quiet=args.quiet, log=lambda line: print(line, file=sys.stderr))
    except BackendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        getattr(backend, "close", lambda: None)()  # a local Ray cluster this run started
    print("\n".join(summary["table"]))
    print("\n".join(summary["files"]))
    return 0


def _plan(args: argparse.Namespace):
    """Check every input and prepare the output folder; returns the plan and the remote backend (None: local)."""
    base = translation_config(args, prompt=PLACEHOLDER_PROMPT)
    limit = None if args.limit is None else check_int("limit", args.limit, 1, 10**9)
    check_int("images_per_call", args.images_per_call, 1, 64)
    spec = parse_backend(args.backend)
    benchmark = load_benchmark(args.benchmark).limited(limit)
    if args.use_masks and benchmark.kind != PIE_BENCH:
        raise ConfigError("use_masks", f"{args.benchmark} has no masks: --use-masks takes a PIE-Bench folder")
    jobs = tuple(make_job(source, base, args.use_masks) for source in benchmark.sources)
    random_metrics = args.model in RANDOM_MODELS
    args.clip_model = args.clip_model or (RANDOM if random_metrics else DEFAULT_CLIP_MODEL)
    args.dino_model = args.dino_model or (RANDOM if random_metrics else DEFAULT_DINO_MODEL)
    settings = {k: v for k, v in base.as_kwargs().items() if k not in ("prompt", "generation_prompt")}
    if not args.use_masks:  # the mask settings do nothing without masks
        settings = {k: v for k, v in settings.items() if k not in MASK_SETTINGS}
    manifest = {
        "benchmark": str(benchmark.path.resolve()),
        "kind": benchmark.kind,
        "model": args.model,
        "settings": settings,
        "clip_model": args.clip_model,
        "dino_model": args.dino_model,
        "structure_variants": list(_variants(args)),
    }
    if args.use_masks:  # only then: an unmasked run's manifest is as before, so its folder resumes
        manifest["masks"] = PIE_BENCH
    out = Path(args.out)
    check_folder(out, manifest, args.overwrite)  # written once the models have loaded, by the run
    if spec.kind not in (LOCAL, RAY):
        for job in jobs:
            form_inputs(job.config, job.seed)  # refuses prompts the form cannot carry
    # A remote backend last: starting a Ray cluster or probing servers is the slow part of the checks.
    backend = None
    if spec.kind != LOCAL:
        backend = _remote_backend(spec, args)
        backend.check()
    return Plan(benchmark, jobs, out, manifest), backend


def _remote_backend(spec, args):
    if spec.kind == RAY:
        from pnp.evaluation.ray_backend import RayBackend

        return RayBackend.from_args(spec.address, args, warn=_warner())
    if spec.kind == "http":
        from pnp.evaluation.cog_pool import CogPool

        return CogPool(spec.urls, _warner())
    from pnp.evaluation.replicate_backend import ReplicateBackend

    return ReplicateBackend(spec.model, check_int("parallel", args.parallel, 1, 1000), _warner())


def _metric_suite(args: argparse.Namespace, plan: Plan, warn):
    from pnp.devices import default_device
    from pnp.environment import configure_libraries
    from pnp.evaluation.metric_models import load_metric_suite

    configure_libraries()
    if RANDOM in (args.clip_model, args.dino_model):
        print("note: random-weight metric models: their scores mean nothing", file=sys.stderr)
    device = args.device or default_device()
    toy = is_toy(plan.benchmark)
    return load_metric_suite(plan.benchmark.kind, args.clip_model, args.dino_model, _variants(args), device, warn, toy)


def _variants(args: argparse.Namespace) -> tuple[str, ...]:
    return STRUCTURE_VARIANTS if args.structure_variant == BOTH else (args.structure_variant,)


def _warner():
    return lambda message: print(f"warning: {message}", file=sys.stderr)
