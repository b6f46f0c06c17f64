"""Train the toy model: a small Stable Diffusion 1.x-layout pipeline for the toy world (``pnp.toy.world``).

    python scripts/train_toy_model.py --out pnp/toy/model --work /tmp/toy-work

(the committed model: 66 min for the UNet after the VAE, about 95 min in all on a shared 2-core machine)

Stages, each printing its progress: render the training scenes; train the VAE (x4, so 128 px
images give 32x32 latents) and set its scaling factor so latents have unit variance; encode every
scene once; train the UNet and the CLIP text encoder together (noise prediction with Stable
Diffusion's own schedule and 10% empty captions for guidance); save the pipeline as a diffusers
folder in float16; measure it with ``pnp.toy.quality``. The same arguments give the same weights:
everything is seeded and torch runs on one thread (with more, the order of float sums, and so the
last bits of every step, may change with the machine's load).

Design (see README, "The toy model"):
- one torch thread: on a shared two-core machine, two threads per process ran 4-5x slower than one;
- the UNet keeps Stable Diffusion 1.x's block types and depth (so the "sd" injection layers exist),
  with (16, 32, 64, 128) channels: narrow where it is wide (self-attention over 32x32 latents is
  most of its cost), wider where it is coarse;
- the text encoder is trained with the UNet: a frozen random one barely separates colour words;
- min-SNR loss weighting (gamma 5) and an exponential moving average of the weights, which give
  usable samples after few steps;
- multi-scale ("pyramid") training noise from the first step: with white noise the model takes a
  shape's colour from the inverted noise and ignores the prompt's (docs/toy.md has the figures).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pnp.environment import configure_libraries  # noqa: E402
from pnp.pipelines.random_models import byte_level_tokenizer  # noqa: E402
from pnp.toy.world import SIZE, VOCABULARY, random_scene, render  # noqa: E402

# Stable Diffusion's noise schedule, for training and for the saved scheduler config.
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type="epsilon",
)
TEXT_WIDTH = 64
EMPTY_CAPTION_RATE = 0.1  # captions replaced by "" so that the model learns the unconditional prediction
MIN_SNR_GAMMA = 5.0
VAE_LR = 2e-3
# Few groups in the VAE's group norms: each group's mean is normalised away, and in a flat-coloured image that
# mean is the colour; with 4 channels a group the colour survives as the channels' differences.
VAE_GROUPS = 4
SHAPE_PIXEL_WEIGHT = 4.0
VAE_CHANNELS = (16, 32, 32)
VAE_BATCH = 8
# Noise added to the VAE's latents in training, relative to their spread: the decoder learns to draw
# clean shapes from slightly wrong latents, as a diffusion model makes them.
VAE_LATENT_NOISE = 0.1
# Training processes of one torch thread each, one per core of the two-core machine it was made for.
WORKERS = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to save the diffusers pipeline in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=8192, help="training scenes rendered (and encoded once)")
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32, help="UNet batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="UNet and text encoder learning rate")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the trained VAE and the encoded scenes here, and reuse them when present",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="save the averaged UNet and text encoder into --work every this many steps (0: never)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a checkpoint-N.pt saved by --checkpoint-every: start the UNet and text encoder from its "
        "averaged weights at step N (optimizer state restarts, so the result differs in the last bits "
        "from an uninterrupted run)",
    )
    parser.add_argument(
        "--pyramid-noise",
        type=float,
        default=0.7,
        help="weight ratio of each coarser level of multi-scale training noise (0: white noise; see _training_draws)",
    )
    parser.add_argument("--pyramid-from", type=int, default=0, help="the UNet step where --pyramid-noise starts")
    parser.add_argument("--eval-cases", type=int, default=32, help="cases per quality figure at the end (0: none)")
    args = parser.parse_args(argv)

    configure_libraries()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    log = Log(start)

    images, captions = training_scenes(args.seed, args.scenes, log)
    vae = cached(args.work, "vae", lambda: train_vae(images, args.vae_steps, args.seed, log), AutoencoderKL)
    latents = cached_tensor(args.work, "latents.pt", lambda: encode_all(vae, images, log))
    log(f"latents {tuple(latents.shape)}, std {latents.std():.3f} (scaling factor {vae.config.scaling_factor:.4f})")

    tokenizer = byte_level_tokenizer(VOCABULARY)
    text_encoder = build_text_encoder(tokenizer, args.seed)
    unet = build_unet(args.seed)
    args.start_step = 0
    if args.resume is not None:
        checkpoint = torch.load(args.resume)
        unet.load_state_dict(checkpoint["unet"])
        text_encoder.load_state_dict(checkpoint["text_encoder"])
        args.start_step = checkpoint.get("step", int(args.resume.stem.rsplit("-", 1)[-1]))
        log(f"resuming the UNet and text encoder from {args.resume} at step {args.start_step}")
    ids = tokenizer(
        captions + [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    unet, text_encoder = train_unet(unet, text_encoder, latents, ids[:-1], ids[-1], args, log)

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save(pipe, args.out)
    minutes = (time.perf_counter() - start) / 60
    log(f"saved to {args.out} ({folder_megabytes(args.out):.1f} MB); training took {minutes:.1f} min")
    if args.eval_cases:
        from pnp import PnPPipeline
        from pnp.toy.quality import report

        loaded = PnPPipeline.from_pretrained(args.out, device="cpu", dtype="float32")
        loaded.set_progress_bar_config(disable=True)
        report(loaded, cases=args.eval_cases, echo=log)


class Log:
    def __init__(self, start: float):
        self.start = start

    def __call__(self, message: str) -> None:
        print(f"[{(time.perf_counter() - self.start) / 60:5.1f} min] {message}", flush=True)


def training_scenes(seed: int, count: int, log: Log) -> tuple[np.ndarray, list[str]]:
    """(count, SIZE, SIZE, 3) uint8 images and their captions, from one random stream."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    images = np.stack([np.asarray(render(scene).image) for scene in scenes])
    log(f"rendered {count} scenes ({sum(len(s.shapes) == 2 for s in scenes)} with two shapes)")
    return images, [scene.caption for scene in scenes]


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [-1, 1], as pnp.vae.image_to_tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


# --- VAE ---------------------------------------------------------------------------------------


def build_vae() -> AutoencoderKL:
    """Three blocks (x4 downsampling), 4 latent channels, no attention in the middle block (flat shapes need none)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        norm_num_groups=VAE_GROUPS,
        sample_size=SIZE,
        mid_block_add_attention=False,
    )


def train_vae(images: np.ndarray, steps: int, seed: int, log: Log) -> AutoencoderKL:
    """Train the VAE in ``WORKERS`` processes; its scaling factor makes the latents of the scenes unit-variance."""
    torch.manual_seed(seed)
    vae = build_vae()
    vae.load_state_dict(in_workers(_train_vae, vae, images, steps, seed, log.start))
    vae.eval()
    with torch.no_grad():
        sample = vae.encode(to_pixels(images[:256])).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1 / sample.std()))
    return vae


def _train_vae(rank: int, vae: AutoencoderKL, images: np.ndarray, steps: int, seed: int, start: float) -> dict:
    """Reconstruction of whole images from the posterior mean plus a little noise (sampling the posterior at its
    initial unit variance drowned the latents: colours were still wrong after 400 steps), and a small KL term."""
    log = Log(start) if rank == 0 else None
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.Adam(vae.parameters(), lr=VAE_LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / 50) * (0.1 if i > 0.8 * steps else 1)
    )
    share = _share(rank, VAE_BATCH)
    params = list(vae.parameters())
    running = None
    for step in range(steps):
        index = torch.randint(len(images), (VAE_BATCH,), generator=generator)
        noise = torch.randn((VAE_BATCH, 4, images.shape[1] // 4, images.shape[2] // 4), generator=generator)
        pixels = to_pixels(images[index[share].numpy()])
        posterior = vae.encode(pixels).latent_dist
        mean = posterior.mean
        decoded = vae.decode(mean + VAE_LATENT_NOISE * mean.detach().std() * noise[share]).sample
        # L1, heavier on shape pixels: they are a small part of each image but what the scorer reads.
        weight = 1 + (SHAPE_PIXEL_WEIGHT - 1) * is_shape_pixel(pixels)
        loss = (weight * (decoded - pixels).abs()).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        _average_gradients(params)
        optimizer.step()
        schedule.step()
        error = F.mse_loss(decoded.detach(), pixels).item()
        running = error if running is None else 0.95 * running + 0.05 * error
        if log and ((step + 1) % 50 == 0 or step + 1 == steps):
            log(f"vae step {step + 1}/{steps}: reconstruction mse {running:.5f} (worker 0)")
    return vae.state_dict()


def is_shape_pixel(pixels: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) float: 1 where a pixel of ``pixels`` (in [-1, 1]) has a shape colour, not a background one."""
    neutral = (pixels.amax(1, keepdim=True) - pixels.amin(1, keepdim=True)) < 0.1  # backgrounds are grays
    return (~neutral).float()


def encode_all(vae: AutoencoderKL, images: np.ndarray, log: Log, batch: int = 64) -> torch.Tensor:
    """Every image's latent (posterior mean times the scaling factor, as pnp.vae.encode)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(to_pixels(images[i : i + batch])).latent_dist.mean * vae.config.scaling_factor)
            if (i // batch) % 20 == 0:
                log(f"encoded {i + len(out[-1])}/{len(images)}")
    return torch.cat(out)


# --- text encoder and UNet ---------------------------------------------------------------------


def build_text_encoder(tokenizer, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed + 2)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet(seed: int) -> UNet2DConditionModel:
    """Stable Diffusion 1.x's UNet layout at small widths: every "sd" injection layer exists under its own name."""
    torch.manual_seed(seed + 3)
    return UNet2DConditionModel(
        sample_size=SIZE // 4,
        block_out_channels=(16, 32, 64, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=(1, 1, 2, 4),  # heads per block (diffusers' SD 1.x naming): 16, 32, 32, 32 channels each
        cross_attention_dim=TEXT_WIDTH,
        norm_num_groups=4,  # few groups, as in the VAE: group norms erase each group's mean
    )


def train_unet(unet, text_encoder, latents, ids, empty_ids, args, log: Log):
    """Train the UNet and the text encoder together in ``WORKERS`` processes; returns them with the EMA weights."""
    trained = in_workers(_train_unet, (unet, text_encoder), latents, ids, empty_ids, args, log.start)
    unet.load_state_dict(trained[0])
    text_encoder.load_state_dict(trained[1])
    return unet.eval(), text_encoder.eval()


def _train_unet(rank, models, latents, ids, empty_ids, args, start) -> tuple[dict, dict]:
    """Noise prediction under Stable Diffusion's schedule, min-SNR weighted; the EMA of the weights."""
    unet, text_encoder = models
    log = Log(start) if rank == 0 else None
    generator = torch.Generator().manual_seed(args.seed + 5)
    alphas_cumprod = DDIMScheduler(**SCHEDULE).alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps, first = args.unet_steps, args.start_step
    # A resumed run warms up again (briefly): its optimizer starts without moment estimates.
    warmup = min(200, steps // 10) if first == 0 else 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: min(1.0, (i + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * min(first + i, steps) / steps)),
    )
    ema = [p.detach().clone() for p in params]
    share = _share(rank, args.batch)
    running, started = None, time.perf_counter()

    def draws(step: int):
        pyramid = args.pyramid_noise if step >= args.pyramid_from else 0.0
        return _training_draws(generator, args.batch, len(latents), latents.shape[1:], len(alphas_cumprod), pyramid)

    for step in range(first):  # the random draws of the steps already done, so a resumed run sees the same batches
        draws(step)
    for step in range(first, steps):
        index, empty, t, noise = draws(step)
        index, empty, t, noise = index[share], empty[share], t[share], noise[share]
        tokens = torch.where(empty[:, None], empty_ids[None], ids[index])
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * latents[index] + (1 - abar).sqrt() * noise
        predicted = unet(noisy, t, text_encoder(tokens)[0]).sample
        loss = (weight[t] * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        _average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, p in zip(ema, params):
                average.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if log and ((step + 1) % 50 == 0 or step + 1 == steps):
            per_step = (time.perf_counter() - started) / (step + 1 - first)
            log(f"unet step {step + 1}/{steps}: loss {running:.4f} (worker 0), {per_step:.2f} s/step")
        if log and args.work and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            torch.save(
                {
                    "unet": _averaged(unet, ema),
                    "step": step + 1,
                    "text_encoder": _averaged(text_encoder, ema[len(list(unet.parameters())) :]),
                },
                args.work / f"checkpoint-{step + 1}.pt",
            )
    with torch.no_grad():
        for average, p in zip(ema, params):
            p.copy_(average)
    return unet.state_dict(), text_encoder.state_dict()


def _training_draws(generator, batch, scenes, shape, timesteps, pyramid: float = 0.0):
    """One step's random choices: scene indices, which captions are emptied, timesteps, noise.

    ``pyramid`` > 0 makes the noise multi-scale: Gaussian noise at half, quarter, ... resolution,
    upsampled and weighted ``pyramid ** level``, is added (then each sample's noise is scaled back to
    unit variance). In Stable Diffusion's schedule even the last timestep keeps a little of the image,
    and a shape's colour, spread over many latent pixels, stays readable in it: a model trained on
    white noise takes the colour from there and not from the prompt, so a DDIM-inverted source keeps
    its colour whatever the prompt. Low-frequency noise hides it.
    """
    index = torch.randint(scenes, (batch,), generator=generator)
    empty = torch.rand(batch, generator=generator) < EMPTY_CAPTION_RATE
    t = torch.randint(0, timesteps, (batch,), generator=generator)
    noise = torch.randn((batch, *shape), generator=generator)
    if pyramid > 0:
        side, level = shape[-1] // 2, 1
        while side >= 1:
            coarse = torch.randn((batch, shape[0], side, side), generator=generator)
            noise += pyramid**level * F.interpolate(coarse, size=shape[-2:], mode="bilinear", align_corners=False)
            side, level = side // 2, level + 1
        noise /= noise.std(dim=(1, 2, 3), keepdim=True)
    return index, empty, t, noise


def _averaged(model, ema) -> dict:
    """``model``'s state with its parameters replaced by their moving averages (the first of ``ema``)."""
    state = model.state_dict()
    for (name, _), average in zip(model.named_parameters(), ema):
        state[name] = average.clone()
    return state


# --- workers -----------------------------------------------------------------------------------


def in_workers(train, models, *args):
    """Run ``train(rank, models, *args)`` in ``WORKERS`` processes of one torch thread, each on its own copy of
    ``models``; gradients are averaged every step (``_average_gradients``). Returns worker 0's result."""
    with tempfile.TemporaryDirectory(prefix="pnp-toy-") as tmp:
        torch.multiprocessing.spawn(_worker, (tmp, train, models, args), nprocs=WORKERS)
        return torch.load(Path(tmp) / "result.pt")


def _worker(rank: int, tmp: str, train, models, args) -> None:
    torch.set_num_threads(1)
    # The models arrive in shared memory (torch.multiprocessing); each worker trains its own copy.
    models = copy.deepcopy(models)
    for model in models if isinstance(models, tuple) else (models,):
        model.train()
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORKERS)
    result = train(rank, models, *args)
    if rank == 0:
        torch.save(result, Path(tmp) / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


def _share(rank: int, batch: int) -> slice:
    """The part of every batch that worker ``rank`` computes. Every worker draws the whole batch from the same
    seeded generator, so the result depends on the seed and ``WORKERS``, not on which process runs faster."""
    return slice(rank * batch // WORKERS, (rank + 1) * batch // WORKERS)


def _average_gradients(params: list[torch.nn.Parameter]) -> None:
    """The mean of the workers' gradients, in one all-reduce (the sum of two floats is the same in either order)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= WORKERS
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


# --- saving ------------------------------------------------------------------------------------


def save(pipe: StableDiffusionPipeline, out: Path) -> None:
    """A diffusers folder with float16 safetensors (loads in any dtype)."""
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def cached(work: Path | None, name: str, make, cls):
    if work is not None and (work / name / "config.json").is_file():
        return cls.from_pretrained(work / name)
    model = make()
    if work is not None:
        model.save_pretrained(work / name)
    return model


def cached_tensor(work: Path | None, name: str, make) -> torch.Tensor:
    if work is not None and (work / name).is_file():
        return torch.load(work / name)
    tensor = make()
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        torch.save(tensor, work / name)
    return tensor


if __name__ == "__main__":
    main()
