"""Per-call cost of the engine's UNet wrapper and injection hooks, against the bare UNet call.

    python -m benchmarks.calls --dtype bfloat16 --resolution 256 --prompts 2

Whole-run ratios (``benchmarks.run``) cannot resolve differences smaller than the drift between
two back-to-back runs. Here the same translation-step batch, [source, P uncond, P cond], is run
bare (a plain UNet, no hooks installed) and through the engine's pieces (``NoisePredictor`` with
the ``FeatureInjector`` hooks copying residual features and attention queries/keys), alternating
in A-B-B-A order so that drift cancels, and the median of each is compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from pnp.devices import DTYPE_NAMES, default_dtype, dtype_name
from pnp.method.injection import FeatureInjector
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.text import TextEmbeddings
from pnp.pipelines.pipeline_pnp import PnPPipeline

from .machine import add_machine_options, check_machine_options, model_folder
from .replay import TIMESTEP, BareReplay, timed
from .report import markdown_table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = PnPPipeline.from_pretrained(model_folder(args.model, args.cache_dir), device=args.device, dtype=args.dtype)
    replay = BareReplay(pipe, args.resolution, args.resolution)
    rows = 2 * args.prompts + 1
    latents, text = replay.unet_inputs(rows)
    latents32 = latents.float()  # the engine keeps latents in float32 and converts per call
    unet = pipe.unet
    predict = NoisePredictor(unet)

    def bare():
        unet(latents, TIMESTEP, encoder_hidden_states=text).sample

    def engine():
        # The hooks are installed around the timed call only, so the bare runs have none.
        with FeatureInjector(unet) as injector:
            injector.set_step(residual=True, attention=True, source_in_batch=True)
            return timed(lambda: predict(latents32, TIMESTEP, TextEmbeddings(text)), pipe.device)

    times = {"bare": [], "engine": []}
    with torch.inference_mode():
        timed(bare, pipe.device), engine()  # warm-up
        for pair in range(args.pairs):
            order = ("bare", "engine") if pair % 2 == 0 else ("engine", "bare")
            for name in order:
                times[name].append(timed(bare, pipe.device) if name == "bare" else engine())
    bare_s, engine_s = statistics.median(times["bare"]), statistics.median(times["engine"])
    print(f"python -m benchmarks.calls {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"{args.dtype}, {args.resolution} px, batch {rows} (P = {args.prompts} with the source row), "
        f"{args.pairs} alternating pairs, {torch.get_num_threads()} threads"
    )
    print()
    print(
        "\n".join(
            markdown_table(
                ["call", "median s", "min s", "max s"],
                [[name, f"{statistics.median(v):.3f}", f"{min(v):.3f}", f"{max(v):.3f}"] for name, v in times.items()],
            )
        )
    )
    print(f"\nengine / bare: {engine_s / bare_s:.3f}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls", description=__doc__.split("\n\n")[0])
    add_machine_options(parser)
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="default: the device's default dtype")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8, help="bare/engine pairs to time (default 8)")
    args = parser.parse_args(argv)
    check_machine_options(parser, args)
    args.dtype = args.dtype or dtype_name(default_dtype(args.device))
    return args


if __name__ == "__main__":
    sys.exit(main())
