"""SDXL (experimental) on the tiny random SDXL-layout model: the mapped injection layers (also in
UNets of other depths), the rows a translation runs, a translation without injection against a
plain DDIM loop with SDXL's added conditions, and the command line and predictor end to end."""

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image

from pnp.config import PnPConfig
from pnp.method.injection import FeatureInjector
from pnp.method.layers import InjectionLayers, injection_layers
from pnp.method.plan import Row, RowKind, inversion_rows, translation_rows
from pnp.method.vae import decode, encode, image_to_tensor, needs_float32
from pnp.pipelines.random_models import build_random_pipeline
from predict import Predictor
from support.cli import run_cli
from support.hooks import Capture
from support.models import load_tiny
from support.predictor import run

# The mapping, written out here: SD 1.x's residual at 1/32 and Q/K at 1/32 and 1/16 move to
# SDXL's up_blocks.0 (1/32) and up_blocks.1 (1/16), in every transformer block (10 and 2 of them).
RESIDUAL = "up_blocks.0.resnets.1.conv2"
ATTENTION = [f"up_blocks.0.attentions.{a}.transformer_blocks.{b}.attn1" for a in (1, 2) for b in range(10)] + [
    f"up_blocks.1.attentions.{a}.transformer_blocks.{b}.attn1" for a in (0, 1, 2) for b in range(2)
]
UNTOUCHED = [
    "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",  # SD's up_blocks.1.attentions.0 is not injected either
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",  # cross-attention
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.0.resnets.0.conv2",
]
STEPS = 4


@pytest.fixture(scope="module")
def xl(tiny_sdxl_model_dir):
    return load_tiny(tiny_sdxl_model_dir)


@pytest.fixture
def square(photo):
    """The test photo cropped to 128x128, its working size at resolution 128."""
    return photo.crop((16, 0, 144, 128))


def test_the_sdxl_layers_are_the_mapped_modules(xl):
    assert xl.injection_layers == InjectionLayers((RESIDUAL,), tuple(ATTENTION)) == injection_layers("sdxl", xl.unet)
    first = injection_layers("sdxl-first-block", xl.unet)
    assert first == InjectionLayers((RESIDUAL,), tuple(n for n in ATTENTION if ".transformer_blocks.0." in n))
    modules = dict(xl.unet.named_modules())
    assert type(modules[RESIDUAL.removesuffix(".conv2")]).__name__ == "ResnetBlock2D"
    assert all(type(modules[name]).__name__ == "Attention" for name in ATTENTION)
    assert "up_blocks.2.attentions.0" not in modules  # nothing at 1/8 to inject into


def _unet_call(xl, rows_text):
    """One UNet call on three rows (the source, a target's unconditional and conditional rows) with SDXL's
    conditions."""
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    hidden, _, pooled, _ = xl.encode_prompt(rows_text, device="cpu", do_classifier_free_guidance=False)
    time_ids = torch.tensor([[128.0, 128, 0, 0, 128, 128]]).expand(3, -1)
    return latents, dict(encoder_hidden_states=hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})


def test_targets_get_the_sources_qk_and_residual_on_the_mapped_modules_but_not_v(xl):
    latents, conditions = _unet_call(xl, ["", "", "a cat"])
    projections = [f"{layer}.{p}" for layer in ATTENTION for p in ("to_q", "to_k", "to_v")]
    with torch.inference_mode(), FeatureInjector(xl.unet, xl.injection_layers) as injector:
        injector.start_step(True, True)
        injector.set_call(
            (Row(RowKind.SOURCE), Row(RowKind.TARGET_UNCOND, 0), Row(RowKind.TARGET_COND, 0)), latents.device
        )
        capture = Capture(xl.unet, [RESIDUAL, *projections, *UNTOUCHED])
        xl.unet(latents, 401, **conditions)
        capture.remove()
        injector.check_call()
    out = capture.outputs
    for name in [RESIDUAL, *(p for p in projections if not p.endswith("to_v"))]:
        assert all(torch.equal(out[name][row], out[name][0]) for row in (1, 2)), name
    for name in [*(p for p in projections if p.endswith("to_v")), *UNTOUCHED]:
        assert not torch.equal(out[name][2], out[name][0]), name


# SDXL-layout UNets with other numbers of transformer blocks per attention (distilled SDXL models
# such as SSD-1B and Segmind Vega have fewer than SDXL's 10 and 2): the UNet config's keys, and
# the blocks that gives each decoder attention, written out per up block.
DEPTHS = {
    "3 blocks per attention": (dict(transformer_layers_per_block=(1, 2, 3)), {0: (3, 3, 3), 1: (2, 2, 2)}),
    "blocks differ between attentions": (
        dict(
            transformer_layers_per_block=((1, 1), (2, 1), (3, 2)),
            reverse_transformer_layers_per_block=((1, 3, 2), (2, 1, 1), (1, 1, 1)),
        ),
        {0: (1, 3, 2), 1: (2, 1, 1)},
    ),
}


@pytest.fixture(scope="module", params=list(DEPTHS))
def other_depth(request, tmp_path_factory):
    """The tiny SDXL model with a UNet of another depth, saved and loaded (loading refused them once); its blocks."""
    config, blocks = DEPTHS[request.param]
    xl = build_random_pipeline("tiny-sdxl")
    # Without the private keys: "_use_default_values" would make the UNet ignore reverse_transformer_layers_per_block.
    unet_config = {key: value for key, value in xl.unet.config.items() if not key.startswith("_")}
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**{**unet_config, **config})
    folder = tmp_path_factory.mktemp("sdxl-depth")
    StableDiffusionXLPipeline(**{**xl.components, "unet": unet}).save_pretrained(folder)
    return load_tiny(folder), blocks


def test_the_sdxl_layers_are_every_block_of_the_mapped_attentions_at_any_depth(other_depth):
    pipe, blocks = other_depth
    expected = [
        f"up_blocks.{block}.attentions.{a}.transformer_blocks.{n}.attn1"
        for block, attentions in ((0, (1, 2)), (1, (0, 1, 2)))
        for a in attentions
        for n in range(blocks[block][a])
    ]
    assert pipe.injection_layers == InjectionLayers((RESIDUAL,), tuple(expected)) == injection_layers("sdxl", pipe.unet)
    first = injection_layers("sdxl-first-block", pipe.unet)
    assert first == InjectionLayers((RESIDUAL,), tuple(n for n in expected if ".transformer_blocks.0." in n))
    pipe.set_injection_layers("sdxl-first-block")
    try:
        assert pipe.injection_layers == first
    finally:
        pipe.set_injection_layers("sdxl")
    with pytest.raises(ValueError, match="no module up_blocks.2.attentions.0.transformer_blocks.0.attn1 "):
        pipe.set_injection_layers("sd")  # SD's layers at 1/8, where SDXL has no attention

    # One UNet call: every injected module runs once, and the target rows carry the source's queries and keys.
    latents, conditions = _unet_call(pipe, ["", "", "a cat"])
    projections = [f"{layer}.{p}" for layer in expected for p in ("to_q", "to_k", "to_v")]
    with torch.inference_mode(), FeatureInjector(pipe.unet, pipe.injection_layers) as injector:
        injector.start_step(True, True)
        injector.set_call(
            (Row(RowKind.SOURCE), Row(RowKind.TARGET_UNCOND, 0), Row(RowKind.TARGET_COND, 0)), latents.device
        )
        capture = Capture(pipe.unet, [RESIDUAL, *projections])
        pipe.unet(latents, 401, **conditions)
        capture.remove()
        injector.check_call()
    out = capture.outputs
    for name in [RESIDUAL, *projections]:
        injected = not name.endswith("to_v")
        assert all(torch.equal(out[name][row], out[name][0]) == injected for row in (1, 2)), name


def test_a_translation_at_another_depth_runs_every_hook_once_per_call(other_depth, square):
    pipe, _ = other_depth
    modules = dict(pipe.unet.named_modules())
    layers = pipe.injection_layers
    names = [*layers.residual, *(f"{a}.{p}" for a in layers.attention for p in ("to_q", "to_k"))]
    fired, calls = Counter(), []
    handles = [
        modules[name].register_forward_hook(lambda module, args, output, name=name: fired.update([name]))
        for name in names
    ]
    handles.append(pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1)))
    try:
        pipe(
            prompt=["a cat", "a dog"],
            image=square,
            num_inference_steps=2,
            resolution=128,
            output_type="latent",
            feature_injection_threshold=1.0,
            attention_injection_threshold=1.0,
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == 4 and fired == {name: len(calls) for name in names}  # 2 inversion and 2 translation calls


def test_rows_are_exactly_the_plan(xl, photo):
    settings = dict(
        prompt=["a cat", "a dog"],
        num_inference_steps=STEPS,
        resolution=128,
        feature_injection_threshold=0.5,
        attention_injection_threshold=0.25,
    )
    calls = []
    handle = xl.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        result = xl(image=photo, output_type="latent", **settings)
    finally:
        handle.remove()
    config = PnPConfig(**settings)
    assert calls == inversion_rows(config) + translation_rows(config)
    # Written out: 4 inversion rows of the source; then per step the source row while injecting
    # (2 of 4 steps), and an unconditional and a conditional row per prompt.
    assert calls == [1] * 4 + [5, 5, 4, 4]
    assert (result.metrics["unet_calls"], result.metrics["unet_rows"]) == (8, 22)


def test_without_injection_a_translation_is_plain_ddim_with_sdxls_added_conditions(xl, tiny_sdxl_model_dir, square):
    """Reference: diffusers' own SDXL pipeline encodes the texts (zeros for the empty prompt, as
    force_zeros_for_empty_prompt says) and makes the time ids; DDIMInverseScheduler inverts with the
    empty prompt, DDIMScheduler samples each prompt with guidance. Nothing from pnp but the pipeline."""
    prompts, scale = ["a cat", "a dog"], 7.5
    ours = xl(
        prompt=prompts,
        image=square,
        num_inference_steps=STEPS,
        resolution=128,
        guidance_scale=scale,
        feature_injection_threshold=0.0,
        attention_injection_threshold=0.0,
        output_type="latent",
    ).images

    ref = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_model_dir)
    with torch.inference_mode():
        cond, uncond, pooled, uncond_pooled = ref.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
        assert not uncond.any() and not uncond_pooled.any()  # force_zeros_for_empty_prompt
        time_ids = ref._get_add_time_ids(
            (128, 128), (0, 0), (128, 128), torch.float32, ref.text_encoder_2.config.projection_dim
        )
        pixels = torch.from_numpy(np.asarray(square, dtype="float32") / 127.5 - 1).permute(2, 0, 1)[None]
        z = ref.vae.encode(pixels).latent_dist.mean * ref.vae.config.scaling_factor

        def unet(x, t, hidden, text_embeds):
            ids = time_ids.expand(len(x), -1)
            return ref.unet(
                x, t, encoder_hidden_states=hidden, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": ids}
            ).sample

        # SDXL ships an Euler scheduler config, which says nothing of clipping; diffusers' DDIM
        # schedulers then clip x0 to [-1, 1] by default, which suits pixels, not latents: off, as
        # Stable Diffusion's own DDIM configs have it and as pnp computes.
        sampler = DDIMScheduler.from_config(ref.scheduler.config, clip_sample=False)
        sampler.set_timesteps(STEPS)
        inverse = DDIMInverseScheduler.from_config(ref.scheduler.config, clip_sample=False)
        inverse.set_timesteps(STEPS)
        for t in inverse.timesteps[inverse.timesteps <= sampler.timesteps[0]]:
            z = inverse.step(unet(z, t, uncond[:1], uncond_pooled[:1]), t, z).prev_sample
        finals = []
        for p in range(len(prompts)):
            x = z
            for t in sampler.timesteps:
                both = unet(
                    torch.cat([x, x]),
                    t,
                    torch.cat([uncond[p : p + 1], cond[p : p + 1]]),
                    torch.cat([uncond_pooled[p : p + 1], pooled[p : p + 1]]),
                )
                eps_u, eps_c = both.chunk(2)
                x = sampler.step(eps_u + scale * (eps_c - eps_u), t, x, eta=0.0).prev_sample
            finals.append(x)
    # Batched differently (all prompts' rows in one call here, one call per prompt there), float32
    # sums inside the UNet differ: measured 4.8e-5 on latents up to 9 in size, the bound of
    # tests/method/test_reference.py's LATENT_TOLERANCE. Planted in pnp: the empty prompt's text instead of
    # zeros moved them by 10.3, time ids of twice the size by 6.0, the first prompt's pooled
    # embedding on every conditional row by 2.1.
    torch.testing.assert_close(ours, torch.cat(finals), rtol=0, atol=5e-4)


def test_the_vae_runs_in_float32_where_float16_overflows_and_goes_back(xl):
    vae = copy.deepcopy(xl.vae).to(torch.float16)
    assert needs_float32(vae) and xl.config.force_zeros_for_empty_prompt
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        decoded = decode(vae, latents, float32=True)
        assert vae.dtype == torch.float16  # back to its dtype after the call
        # The same float16-rounded weights, computing in float32 all through.
        expected = decode(copy.deepcopy(vae).to(torch.float32), latents)
        pixels = image_to_tensor(Image.new("RGB", (64, 64), (200, 30, 30)))
        encoded = encode(vae, pixels, float32=True)
        expected_latents = encode(copy.deepcopy(vae).to(torch.float32), pixels)
    # Another copy of the weights (INSTANCE_TOLERANCE says why that may change the last bits): 1e-5
    # of each tensor's size, float32 rounding. Planted: decoding in float16 moved the pixels by 2.4e-3 of it.
    for ours, reference in ((decoded, expected), (encoded, expected_latents)):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))
    assert not needs_float32(xl.vae)  # float32 already
    vae.register_to_config(force_upcast=False)  # a VAE fixed for float16 (as madebyollin's) runs as it is
    assert not needs_float32(vae)


def test_cli_translates_with_sdxl_at_its_own_size(tmp_path, photo):
    photo.save(tmp_path / "in.png")
    done = run_cli(
        "translate",
        "--model",
        "tiny-sdxl",
        "--image",
        "in.png",
        "--prompt",
        "a cat",
        "--out",
        "out",
        "--steps",
        "2",
        "--dtype",
        "float32",
        "--quiet",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "PnPXLPipeline" in done.stderr and "256 px by default" in done.stderr
    with Image.open(tmp_path / "out" / "00-a-cat.png") as image:
        assert image.size == (320, 256)  # 160x128 at tiny-sdxl's own 256 px (SDXL's 1024 / 4)


def test_the_predictor_runs_sdxl_weights(tiny_sdxl_model_dir, monkeypatch, tmp_path, capsys):
    for name, value in (("PNP_WEIGHTS", str(tiny_sdxl_model_dir)), ("PNP_DEVICE", "cpu"), ("PNP_DTYPE", "float32")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model = Predictor()
    model.setup()
    assert "PnPXLPipeline, 256 px by default" in capsys.readouterr().out and model.unchecked is model.pipe
    outputs = run(model, generation_prompt="a house", translation_prompts="a cat; a dog", seed=3)
    assert [p.name for p in outputs] == ["00-source.png", "01-a-cat.png", "02-a-dog.png"]
    with Image.open(outputs[1]) as image:
        assert image.size == (128, 128)
