"""Command line: ``python -m pnp translate|features|evaluate|batch|ui|download-weights ...``.

Every input is checked before the model loads, and torch and diffusers are imported only once
a command needs them, so ``--help`` and argument errors answer at once. Bad input prints one
line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from pnp.app.feature_files import check_feature_folder, write_feature_maps
from pnp.app.options import (
    add_model_options,
    add_translate_options,
    load_pipeline,
    model_checks,
    translation_config,
    translation_settings,
)
from pnp.batch.command import add_batch_arguments, run_batch
from pnp.config import ConfigError, PnPConfig, check_seed
from pnp.evaluation.command import add_evaluate_arguments, run_evaluate
from pnp.images import ImageError, check_image, load_image, load_mask
from pnp.outputs import OUTPUT_FORMATS, OutputOptions, check_output_folder, write_outputs
from pnp.pipelines.loading import DEFAULT_MODEL, ModelError, model_location, own_resolution
from pnp.visual.maps import DEFAULT_LAYERS, LAYER_HELP, map_request, run_config

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
    "manifest": "MANIFEST",
    "injection_layers": "--injection-layers",
    "mask_image": "--mask",
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
    config = translation_config(args, prompt=args.prompt, **_source_settings(args))
    seed = check_seed(args.seed)
    options = OutputOptions(args.format, args.quality)
    images = _source_images(args, config.resolution)
    masks = _masks(args, config)
    loras = model_checks(args)
    out = check_output_folder(args.out, args.overwrite)

    pipe, config, images = _loaded(args, config, images, loras)
    if args.compile:
        slower = "; on a CPU the compiled steps were measured slower than eager" if pipe.device.type == "cpu" else ""
        print(f"compiling the UNet: the first steps of each kind take minutes{slower}", file=sys.stderr)
        pipe.compile_unet()
    from pnp.method.generation import noise_generator

    result = pipe(image=images or None, mask_image=masks, generator=noise_generator(seed), **config.as_kwargs())
    labels = [Path(path).stem for path in args.image or []]
    with _writing_into_out():
        paths = write_outputs(result, config.prompt, out, options, labels)
    for path in paths:
        print(path)
    return 0


def _features(args: argparse.Namespace) -> int:
    prompts = args.prompt or []
    config = run_config(prompts, **_source_settings(args), **translation_settings(args))
    request = map_request(args.layers, args.timesteps, config.num_inference_steps)
    seed = check_seed(args.seed)
    if len(args.image or []) > 1:
        raise ImageError("image", f"{len(args.image)} images given; the maps show one source: give one --image")
    images = _source_images(args, config.resolution)
    loras = model_checks(args)
    out = check_feature_folder(args.out, args.overwrite)

    pipe, config, images = _loaded(args, config, images, loras)
    from pnp.method.generation import noise_generator
    from pnp.visual.visualise import feature_maps

    settings = {k: v for k, v in config.as_kwargs().items() if k != "prompt"}
    maps = feature_maps(
        pipe,
        prompts,
        images[0] if images else None,
        list(request.timesteps),
        list(request.maps),
        generator=noise_generator(seed),
        **settings,
    )
    with _writing_into_out():
        paths = write_feature_maps(maps, out)
    for path in paths:
        print(path)
    return 0


@contextmanager
def _writing_into_out():
    """A failed write (a full disk, say) as an error of --out that names the file; nothing of the run was left."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError("out", f"could not write {err.filename} ({reason}); nothing was written") from None


def _source_settings(args: argparse.Namespace) -> dict:
    """``_add_source_options``'s flags as PnPConfig fields."""
    return dict(generation_prompt=args.generation_prompt, generation_guidance_scale=args.generation_scale)


def _source_images(args: argparse.Namespace, resolution: int | None) -> list | None:
    """Every ``--image``, read at its working size (a large image is shrunk while it is read, one
    too long is refused); none in generation mode. Without a resolution (the model's own, known
    once it has loaded) they are only checked, from their headers: None."""
    if resolution is None and args.image:
        for path in args.image:
            check_image(path)
        return None
    return [load_image(path, resolution) for path in args.image or []]


def _masks(args: argparse.Namespace, config: PnPConfig) -> list | None:
    """Every ``--mask``, one per ``--image`` in order, read at its own size and checked against its image's stored
    size by the pipeline's own pixel rules, so a bad mask is refused before the model loads; None without masks.
    Without a ``--resolution`` the size rule takes the model's own from its configuration files, and where they
    cannot be read before loading (a single-file checkpoint) that one rule waits for the model."""
    if not args.mask:
        return None
    if config.generating:
        raise ConfigError("mask_image", "a mask marks part of an --image; a generated source has none to mark")
    paths = args.image or []
    if len(args.mask) != len(paths):
        raise ConfigError(
            "mask_image",
            f"give one --mask per --image, in the same order: {len(paths)} images, {len(args.mask)} masks",
        )
    masks = [load_mask(path) for path in args.mask]
    from pnp.pipelines.inputs import check_mask, mask_label  # imports torch: only once there are masks

    resolution = config.resolution or own_resolution(model_location(args.model))
    for n, (mask, path) in enumerate(zip(masks, paths)):
        check_mask(mask, check_image(path), resolution, mask_label(n, len(masks)))
    return masks


def _loaded(args: argparse.Namespace, config, images: list | None, loras: list):
    """The loaded pipeline, ``config`` at its resolution (the model's own where none was given), and
    the source images at that size (read now if their size had to wait for the model)."""
    pipe = load_pipeline(args, loras)
    config = config.resolved(pipe.default_resolution)
    return pipe, config, images if images is not None else _source_images(args, config.resolution)


def _ui(args: argparse.Namespace) -> int:
    # Gradio is an optional dependency; the port is checked before the slow model load.
    if importlib.util.find_spec("gradio") is None:
        print("error: the web UI needs Gradio: pip install -r requirements-ui.txt", file=sys.stderr)
        return EXIT_USAGE
    _check_port(args.host, args.port)
    pipe = load_pipeline(args)
    from pnp.app.ui import serve

    serve(pipe, args.model, host=args.host, port=args.port, share=args.share)
    return 0


def _check_port(host: str, port: int) -> None:
    if not 0 < port < 2**16:
        raise ConfigError("port", f"{port} is not a port number; use one from 1 to 65535")
    with socket.socket() as probe:
        # As the web server binds: a port whose last connections are closing is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(
                "port", f"cannot serve on {host}:{port} ({err.strerror}); choose another --port or --host"
            ) from None


def _download_weights(args: argparse.Namespace) -> int:
    from pnp.pipelines.weights import download_weights

    print(download_weights(args.model, Path(args.out), with_safety_checker=args.with_safety_checker))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``error: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pnp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    t = commands.add_parser("translate", help="translate an image (or a generated one) into each prompt")
    t.set_defaults(run=_translate)
    t.add_argument("--prompt", action="append", required=True, help="target prompt; repeat for several")
    t.add_argument(
        "--out",
        required=True,
        help="folder for the output images (created if missing; it must not hold an earlier run's outputs)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's outputs in --out (deleted once this run's are all written)",
    )
    _add_source_options(t, "image to translate (PNG, JPEG, WebP, GIF, ...); repeat for several, each into every prompt")
    t.add_argument(
        "--mask",
        action="append",
        help="where the --image may change: white there, black (or transparent) where it must stay; an image "
        "of its aspect ratio. Repeat as --image, one each, in the same order",
    )
    t.add_argument("--format", default=OutputOptions.output_format, help=f"output format: {', '.join(OUTPUT_FORMATS)}")
    t.add_argument("--quality", type=int, default=OutputOptions.output_quality, help="webp/jpg quality (1-100)")
    t.add_argument(
        "--compile",
        action="store_true",
        help="run the UNet through torch.compile after minutes of compiling; meant for GPUs (on a CPU the "
        "compiled steps were measured slower: docs/performance.md)",
    )
    add_translate_options(t)

    f = commands.add_parser(
        "features", help="PCA maps of decoder features and self-attention of a source and its translations"
    )
    f.set_defaults(run=_features)
    f.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="target prompt, translated and shown with the source; repeat for several (none: source only)",
    )
    f.add_argument(
        "--out",
        required=True,
        help="folder for <module>/NN-<label>-t<T>.png and <module>.png grids (not holding earlier maps)",
    )
    f.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's maps in --out (deleted once this run's are all written)",
    )
    f.add_argument(
        "--timesteps",
        type=int,
        nargs="+",
        default=None,
        help="sampling timesteps to show (default: five spread over the --steps schedule)",
    )
    f.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="MODULE",
        help=f"what to show, each {LAYER_HELP} (default: {' '.join(DEFAULT_LAYERS)})",
    )
    _add_source_options(f, "image to translate and show (PNG, JPEG, WebP, GIF, ...)")
    add_translate_options(f)

    e = commands.add_parser(
        "evaluate", help="translate a benchmark's sources and score them with its published metrics"
    )
    e.set_defaults(run=run_evaluate)
    add_evaluate_arguments(e)
    add_translate_options(e)

    b = commands.add_parser(
        "batch", help="translate the rows of a CSV or JSONL manifest, here or on a Ray cluster; rerunning resumes"
    )
    b.set_defaults(run=lambda args: run_batch(args, flag))
    add_batch_arguments(b)
    add_translate_options(b)

    u = commands.add_parser("ui", help="serve a web page for translating images (needs requirements-ui.txt)")
    u.set_defaults(run=_ui, quiet=True)
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every network interface)")
    u.add_argument("--port", type=int, default=7860, help="port to serve on")
    u.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    add_model_options(u)

    d = commands.add_parser("download-weights", help="download a model's diffusers files into a folder")
    d.set_defaults(run=_download_weights)
    d.add_argument("--model", default=DEFAULT_MODEL, help="model-hub id")
    d.add_argument("--out", default="weights", help="folder to fill")
    d.add_argument(
        "--with-safety-checker",
        action="store_true",
        help="also fetch CompVis/stable-diffusion-safety-checker (safetensors only; into a folder that "
        "already holds a model, only the checker is added)",
    )
    return parser


def _add_source_options(parser: argparse.ArgumentParser, image_help: str) -> None:
    """The source (an image, or a generation prompt with its guidance and seed), for translate and features."""
    defaults = PnPConfig()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", action="append", help=image_help)
    source.add_argument("--generation-prompt", help="generate the source image from this prompt instead")
    parser.add_argument(
        "--generation-scale",
        type=float,
        default=defaults.generation_guidance_scale,
        help="guidance scale of the source generation",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a generated source's noise")
