"""Command line: ``python -m pnp translate ...`` and ``python -m pnp download-weights ...``."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from .config import NEGATIVE_SCHEDULES, OUTPUT_FORMATS, ConfigError, PnPConfig
from .editor import PnPEditor
from .images import ImageError, load_image
from .models import DEFAULT_MODEL, DTYPES, ModelError, quiet_library_output
from .outputs import write_outputs
from .random_models import RANDOM_MODELS, random_model_folder
from .weights import download_weights

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any bad input, with a one-line message)."""
    args = _parser().parse_args(argv)
    quiet_library_output()
    try:
        return args.run(args)
    except (ConfigError, ImageError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def _translate(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before the (slow) model load.
    config = PnPConfig(
        prompts=args.prompt,
        generation_prompt=args.generation_prompt or "",
        steps=args.steps,
        inversion_steps=args.inversion_steps,
        scale=args.scale,
        generation_scale=args.generation_scale,
        feature_injection_threshold=args.feature_injection_threshold,
        attention_injection_threshold=args.attention_injection_threshold,
        negative_prompt=args.negative_prompt,
        negative_prompt_alpha=args.negative_prompt_alpha,
        negative_prompt_schedule=args.negative_prompt_schedule,
        resolution=args.resolution,
        seed=args.seed,
        max_batch_size=args.max_batch_size,
        output_format=args.format,
        output_quality=args.quality,
    )
    image = load_image(args.image) if args.image else None
    with ExitStack() as stack:
        model = args.model
        if model in RANDOM_MODELS:
            print(f"note: --model {model} has random weights; its outputs are noise", file=sys.stderr)
            model = stack.enter_context(random_model_folder(model))
        editor = PnPEditor.from_pretrained(model, args.device, args.dtype)
    print(f"model {args.model} on {editor.device} ({str(editor.dtype).removeprefix('torch.')})", file=sys.stderr)
    result = editor(config, image, progress=not args.quiet)
    for path in write_outputs(result, config.prompts, args.out, config.output_format, config.output_quality):
        print(path)
    return 0


def _download_weights(args: argparse.Namespace) -> int:
    print(download_weights(args.model, Path(args.out)))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pnp", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    defaults = PnPConfig()

    t = commands.add_parser("translate", help="translate an image (or a generated one) into each prompt")
    t.set_defaults(run=_translate)
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image to translate (PNG, JPEG, WebP, GIF, ...)")
    source.add_argument("--generation-prompt", help="generate the source image from this prompt instead")
    t.add_argument("--prompt", action="append", required=True, help="target prompt; repeat for several")
    t.add_argument("--out", required=True, help="folder for the output images (created if missing)")
    t.add_argument("--model", default=DEFAULT_MODEL,
                   help="diffusers model folder, model-hub id, or 'tiny' / 'random-sd15' (random weights, for testing)")
    t.add_argument("--steps", type=int, default=defaults.steps, help="sampling steps")
    t.add_argument("--inversion-steps", type=int, default=None, help="DDIM inversion steps (default: as --steps)")
    t.add_argument("--scale", type=float, default=defaults.scale, help="guidance scale of the translation")
    t.add_argument("--generation-scale", type=float, default=defaults.generation_scale,
                   help="guidance scale of the source generation")
    t.add_argument("--feature-injection-threshold", type=float, default=defaults.feature_injection_threshold,
                   help="fraction of steps with residual feature injection (0-1)")
    t.add_argument("--attention-injection-threshold", type=float, default=defaults.attention_injection_threshold,
                   help="fraction of steps with self-attention Q/K injection (0-1)")
    t.add_argument("--negative-prompt", default=defaults.negative_prompt, help="what to steer away from")
    t.add_argument("--negative-prompt-alpha", type=float, default=defaults.negative_prompt_alpha,
                   help="weight of the unconditional term against the negative prompt (0-1; lower is stronger)")
    t.add_argument("--negative-prompt-schedule", default=defaults.negative_prompt_schedule,
                   help=f"how alpha changes over the steps: {', '.join(NEGATIVE_SCHEDULES)}")
    t.add_argument("--resolution", type=int, default=defaults.resolution, help="short side in pixels (multiple of 64)")
    t.add_argument("--seed", type=int, default=defaults.seed, help="seed of a generated source's noise")
    t.add_argument("--max-batch-size", type=int, default=None, help="most prompts per UNet call (default: all)")
    t.add_argument("--format", default=defaults.output_format, help=f"output format: {', '.join(OUTPUT_FORMATS)}")
    t.add_argument("--quality", type=int, default=defaults.output_quality, help="webp/jpg quality (1-100)")
    t.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    t.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="default: float16 on CUDA, bfloat16 on CPUs with bfloat16 instructions, else float32")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    d = commands.add_parser("download-weights", help="download a model's diffusers files into a folder")
    d.set_defaults(run=_download_weights)
    d.add_argument("--model", default=DEFAULT_MODEL, help="model-hub id")
    d.add_argument("--out", default="weights", help="folder to fill")
    return parser
