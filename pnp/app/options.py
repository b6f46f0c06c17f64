"""The options every command that loads a model shares (translate, features, evaluate, ui): the model, where and
how it runs, and the translation settings, as flags; and loading the pipeline they describe.

Torch-free at import: the flags are checked before any model library loads.
"""

from __future__ import annotations

import argparse
import sys

from pnp.config import NEGATIVE_SCHEDULES, ConfigError, PnPConfig
from pnp.devices import DTYPE_NAMES
from pnp.method.layers import LAYER_SETS
from pnp.pipelines.loading import DEFAULT_MODEL, RANDOM_MODELS, TOY_MODEL
from pnp.pipelines.lora import DEFAULT_LORA_SCALE, LORA_SCALE_RANGE, parse_lora


def add_translate_options(parser: argparse.ArgumentParser) -> None:
    """The flags of the model and of the translation settings, shared by every command that translates."""
    defaults = PnPConfig()
    parser.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="sampling steps")
    parser.add_argument("--inversion-steps", type=int, default=None, help="DDIM inversion steps (default: as --steps)")
    parser.add_argument(
        "--scale", type=float, default=defaults.guidance_scale, help="guidance scale of the translation"
    )
    parser.add_argument(
        "--feature-injection-threshold",
        type=float,
        default=defaults.feature_injection_threshold,
        help="fraction of steps with residual feature injection (0-1)",
    )
    parser.add_argument(
        "--attention-injection-threshold",
        type=float,
        default=defaults.attention_injection_threshold,
        help="fraction of steps with self-attention Q/K injection (0-1)",
    )
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument(
        "--negative-prompt-alpha",
        type=float,
        default=defaults.negative_prompt_alpha,
        help="weight of the unconditional term against the negative prompt (0-1; lower is stronger)",
    )
    parser.add_argument(
        "--negative-prompt-schedule",
        default=defaults.negative_prompt_schedule,
        help=f"how alpha changes over the steps: {', '.join(NEGATIVE_SCHEDULES)}",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=defaults.resolution,
        help="short side in pixels (multiple of 64; default: the model's own, 512 for SD 1.x, 768 for "
        "SD 2.1, 1024 for SDXL)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="most (image, prompt) targets per UNet call, to bound memory (default: all)",
    )
    parser.add_argument(
        "--mask-blend-threshold",
        type=float,
        default=defaults.mask_blend_threshold,
        help="with a mask: fraction of steps after which the background takes the source's latents (0-1; 1: all)",
    )
    parser.add_argument(
        "--mask-dilation",
        type=int,
        default=defaults.mask_dilation,
        help="with a mask: latent pixels (8 image pixels each) to grow it by",
    )
    parser.add_argument(
        "--mask-paste",
        action="store_true",
        help="with a mask: paste the source's own pixels back outside it after decoding (an exact background)",
    )
    parser.add_argument(
        "--mask-feather",
        type=int,
        default=defaults.mask_feather,
        help="with --mask-paste: width in pixels of the soft edge outside the mask (0: hard)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(parser)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model (its adapters and injected layers), on which device, in which dtype."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="diffusers model folder or model-hub id (SD 1.x, 2.x, SDXL), a single-file .safetensors "
        f"checkpoint, {TOY_MODEL} (a small model trained on a world of coloured shapes, shipped with pnp), or one "
        f"of {', '.join(RANDOM_MODELS)} (random weights, for testing)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="base configuration of a single-file --model: a diffusers folder or model-hub id of the "
        "same architecture (needed offline)",
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickled checkpoints and LoRA files (.ckpt, .bin): only from sources you trust",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="PATH[:SCALE]",
        help=f"a LoRA adapter (.safetensors file, or a folder holding one) and its scale "
        f"({LORA_SCALE_RANGE[0]:g}-{LORA_SCALE_RANGE[1]:g}, default {DEFAULT_LORA_SCALE:g}); repeat for several",
    )
    parser.add_argument(
        "--injection-layers",
        default=None,
        choices=list(LAYER_SETS),
        help="where the source's features are injected (default: the model's own set, sd or sdxl; "
        "sdxl-first-block: only the first transformer block of each SDXL attention)",
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_NAMES,
        help="default: float16 on CUDA, bfloat16 on CPUs with bfloat16 instructions, else float32",
    )


def translation_config(args: argparse.Namespace, **source) -> PnPConfig:
    """The validated settings of ``add_translate_options``'s flags; ``source`` gives the prompts and the rest."""
    return PnPConfig(**translation_settings(args), **source)


def translation_settings(args: argparse.Namespace) -> dict:
    """``add_translate_options``'s flags as PnPConfig fields."""
    return dict(
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
        mask_blend_threshold=args.mask_blend_threshold,
        mask_dilation=args.mask_dilation,
        mask_paste=args.mask_paste,
        mask_feather=args.mask_feather,
    )


def model_checks(args: argparse.Namespace) -> list:
    """Check the model options before anything loads; returns the ``--lora`` adapters as (path, scale)."""
    from pnp.pipelines.single_file import check_single_file, is_single_file

    single = is_single_file(args.model) and args.model not in RANDOM_MODELS
    if single:
        check_single_file(args.model, args.allow_pickle)
    elif args.config is not None:
        raise ConfigError("config", "a base configuration is only for a single-file --model (.safetensors)")
    return [parse_lora(spec, args.allow_pickle) for spec in args.lora or []]


def load_pipeline(args: argparse.Namespace, loras: list | None = None):
    """The pipeline of ``--model`` on ``--device`` in ``--dtype`` with the ``loras`` (``model_checks``) and
    ``--injection-layers``; says which, and whether its outputs are noise."""
    from pnp.environment import configure_libraries, log_to

    configure_libraries()  # before anything imports diffusers or transformers
    log_to("stderr")
    from pnp.devices import dtype_name
    from pnp.pipelines.lora import load_loras
    from pnp.pipelines.named_models import open_model
    from pnp.pipelines.pipeline_pnp import PnPPipeline
    from pnp.pipelines.single_file import is_single_file

    loras = model_checks(args) if loras is None else loras
    if args.model in RANDOM_MODELS:
        print(f"note: --model {args.model} has random weights; its outputs are noise", file=sys.stderr)
    with open_model(args.model) as model:
        if args.model not in RANDOM_MODELS and is_single_file(args.model):
            pipe = PnPPipeline.from_single_file(
                model, device=args.device, dtype=args.dtype, config=args.config, allow_pickle=args.allow_pickle
            )
        else:
            pipe = PnPPipeline.from_pretrained(model, device=args.device, dtype=args.dtype)
    load_loras(pipe, loras)
    if args.injection_layers is not None:
        try:
            pipe.set_injection_layers(args.injection_layers)
        except ValueError as err:
            raise ConfigError("injection_layers", str(err).removeprefix("injection layers: ")) from None
    pipe.set_progress_bar_config(disable=args.quiet)
    adapters = "".join(f", LoRA {path.name} at {scale:g}" for path, scale in loras)
    print(
        f"model {args.model} ({type(pipe).__name__}) on {pipe.device} ({dtype_name(pipe.unet.dtype)}{adapters}, "
        f"{pipe.default_resolution} px by default)",
        file=sys.stderr,
    )
    return pipe
