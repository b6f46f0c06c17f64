"""Command line: ``python -m pnp translate ...``, ``evaluate ...`` and ``download-weights ...``.

Every input is checked before the model loads, and torch and diffusers are imported only once
a command needs them, so ``--help`` and argument errors answer at once. Bad input prints one
line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import NEGATIVE_SCHEDULES, ConfigError, PnPConfig, check_seed
from .devices import DTYPE_NAMES
from .evaluation.command import add_evaluate_arguments, run_evaluate
from .images import load_image, working_size
from .models import DEFAULT_MODEL, ModelError
from .outputs import OUTPUT_FORMATS, OutputOptions, check_output_folder, write_outputs

EXIT_USAGE = 2
# Flags whose name is not the parameter's own ("--" + name with dashes).
FLAGS = {
    "num_inference_steps": "--steps",
    "num_inversion_steps": "--inversion-steps",
    "guidance_scale": "--scale",
    "generation_guidance_scale": "--generation-scale",
    "output_format": "--format",
    "output_quality": "--quality",
    "benchmark": "BENCHMARK",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any bad input, with a one-line message)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"error: {flag(err.param)}: {err.reason}", file=sys.stderr)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def flag(param: str) -> str:
    """The command-line flag of a configuration parameter."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def _translate(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before the (slow) imports and model load.
    config = translation_config(args, prompt=args.prompt, generation_prompt=args.generation_prompt,
                                generation_guidance_scale=args.generation_scale)
    seed = check_seed(args.seed)
    options = OutputOptions(args.format, args.quality)
    image = load_image(args.image) if args.image else None
    if image is not None:
        working_size(*image.size, config.resolution)
    out = check_output_folder(args.out, args.overwrite)

    pipe = load_pipeline(args)
    import torch

    result = pipe(image=image, generator=torch.Generator("cpu").manual_seed(seed), **config.as_kwargs())
    for path in write_outputs(result, config.prompt, out, options):
        print(path)
    return 0


def translation_config(args: argparse.Namespace, **source) -> PnPConfig:
    """The validated settings of ``add_translate_options``'s flags; ``source`` gives the prompts and the rest."""
    return PnPConfig(
        num_inference_steps=args.steps,
        num_inversion_steps=args.inversion_steps,
        guidance_scale=args.scale,
        feature_injection_threshold=args.feature_injection_threshold,
        attention_injection_threshold=args.attention_injection_threshold,
        negative_prompt=args.negative_prompt,
        negative_prompt_alpha=args.negative_prompt_alpha,
        negative_prompt_schedule=args.negative_prompt_schedule,
        resolution=args.resolution,
        max_batch_size=args.max_batch_size,
        **source,
    )


def load_pipeline(args: argparse.Namespace):
    """The pipeline of ``--model`` on ``--device`` in ``--dtype``; says which, and whether its outputs are noise."""
    from .devices import dtype_name
    from .environment import configure_libraries, log_to
    from .models import open_model
    from .random_models import RANDOM_MODELS

    configure_libraries()
    log_to(sys.stderr)
    from .pipeline import PnPPipeline

    if args.model in RANDOM_MODELS:
        print(f"note: --model {args.model} has random weights; its outputs are noise", file=sys.stderr)
    with open_model(args.model) as model:
        pipe = PnPPipeline.from_pretrained(model, device=args.device, dtype=args.dtype)
    pipe.set_progress_bar_config(disable=args.quiet)
    print(f"model {args.model} on {pipe.device} ({dtype_name(pipe.unet.dtype)})", file=sys.stderr)
    return pipe


def _download_weights(args: argparse.Namespace) -> int:
    from .weights import download_weights

    print(download_weights(args.model, Path(args.out)))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``error: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pnp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    defaults = PnPConfig()

    t = commands.add_parser("translate", help="translate an image (or a generated one) into each prompt")
    t.set_defaults(run=_translate)
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image to translate (PNG, JPEG, WebP, GIF, ...)")
    source.add_argument("--generation-prompt", help="generate the source image from this prompt instead")
    t.add_argument("--prompt", action="append", required=True, help="target prompt; repeat for several")
    t.add_argument("--out", required=True,
                   help="folder for the output images (created if missing; it must not hold an earlier run's outputs)")
    t.add_argument("--overwrite", action="store_true", help="delete an earlier run's outputs in --out first")
    t.add_argument("--generation-scale", type=float, default=defaults.generation_guidance_scale,
                   help="guidance scale of the source generation")
    t.add_argument("--seed", type=int, default=0, help="seed of a generated source's noise")
    t.add_argument("--format", default=OutputOptions.output_format, help=f"output format: {', '.join(OUTPUT_FORMATS)}")
    t.add_argument("--quality", type=int, default=OutputOptions.output_quality, help="webp/jpg quality (1-100)")
    add_translate_options(t)

    e = commands.add_parser("evaluate", help="translate a benchmark's sources and score them with its published metrics")
    e.set_defaults(run=run_evaluate)
    add_evaluate_arguments(e)
    add_translate_options(e)

    d = commands.add_parser("download-weights", help="download a model's diffusers files into a folder")
    d.set_defaults(run=_download_weights)
    d.add_argument("--model", default=DEFAULT_MODEL, help="model-hub id")
    d.add_argument("--out", default="weights", help="folder to fill")
    return parser


def add_translate_options(parser: argparse.ArgumentParser) -> None:
    """The flags of the model and of the translation settings, shared by every command that translates."""
    defaults = PnPConfig()
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="diffusers model folder, model-hub id, or 'tiny' / 'random-sd15' (random weights, for testing)")
    parser.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="sampling steps")
    parser.add_argument("--inversion-steps", type=int, default=None, help="DDIM inversion steps (default: as --steps)")
    parser.add_argument("--scale", type=float, default=defaults.guidance_scale, help="guidance scale of the translation")
    parser.add_argument("--feature-injection-threshold", type=float, default=defaults.feature_injection_threshold,
                        help="fraction of steps with residual feature injection (0-1)")
    parser.add_argument("--attention-injection-threshold", type=float, default=defaults.attention_injection_threshold,
                        help="fraction of steps with self-attention Q/K injection (0-1)")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument("--negative-prompt-alpha", type=float, default=defaults.negative_prompt_alpha,
                        help="weight of the unconditional term against the negative prompt (0-1; lower is stronger)")
    parser.add_argument("--negative-prompt-schedule", default=defaults.negative_prompt_schedule,
                        help=f"how alpha changes over the steps: {', '.join(NEGATIVE_SCHEDULES)}")
    parser.add_argument("--resolution", type=int, default=defaults.resolution, help="short side in pixels (multiple of 64)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="most prompts per UNet call (default: all)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                        help="default: float16 on CUDA, bfloat16 on CPUs with bfloat16 instructions, else float32")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
