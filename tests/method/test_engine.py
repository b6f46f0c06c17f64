"""Translation: the exact minimal UNet row schedule, batching, chunking, determinism, and a clean UNet after."""

import math

import numpy as np
import pytest
import torch

from support.hooks import all_hooks
from support.models import load_tiny


class RowCounter:
    """Counts the rows of every UNet call with a hook of the test's own."""

    def __init__(self, unet):
        self.rows = []
        self.handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.rows.append(sample.shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def expected_translation_rows(prompts, steps, f, a, negative=False, alpha=1.0, schedule="constant", chunk=None):
    """The minimal schedule, from the method's description: per step and chunk of k prompts,
    a source row (once per step, inside an injection window), k uncond rows where alpha_i > 0,
    k negative rows where alpha_i < 1 (with a negative prompt), and k cond rows."""
    chunk = chunk or prompts
    rows = []
    for i in range(steps):
        weights = {
            "constant": alpha,
            "linear": alpha * (1 - i / max(steps - 1, 1)),
            "exp": alpha * math.exp(-6 * i / max(steps - 1, 1)),
        }
        alpha_i = weights[schedule] if negative else 1.0
        for start in range(0, prompts, chunk):
            k = min(chunk, prompts - start)
            source = 1 if start == 0 and (i < int(steps * f) or i < int(steps * a)) else 0
            uncond = k if alpha_i > 0 else 0
            neg = k if negative and alpha_i < 1 else 0
            rows.append(source + uncond + neg + k)
    return rows


CASES = [
    dict(prompts=1, steps=6, f=0.8, a=0.5),
    dict(prompts=3, steps=8, f=0.8, a=0.5),
    dict(prompts=2, steps=5, f=0.3, a=0.9),
    dict(prompts=2, steps=6, f=0.0, a=0.0),
    dict(prompts=2, steps=6, f=0.8, a=0.5, negative=True, alpha=0.7, schedule="linear"),
    dict(prompts=2, steps=6, f=0.8, a=0.5, negative=True, alpha=1.0, schedule="constant"),
    dict(prompts=2, steps=6, f=0.8, a=0.5, negative=True, alpha=0.0, schedule="constant"),
    dict(prompts=2, steps=6, f=0.8, a=0.5, negative=True, alpha=0.5, schedule="exp"),
    dict(prompts=5, steps=5, f=0.8, a=0.5, chunk=2),
    dict(prompts=3, steps=5, f=0.8, a=0.5, negative=True, alpha=0.5, schedule="linear", chunk=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_unet_rows_follow_the_minimal_schedule(pipe, photo, case):
    settings = dict(
        prompt=[f"prompt {i}" for i in range(case["prompts"])],
        num_inference_steps=case["steps"],
        resolution=128,
        feature_injection_threshold=case["f"],
        attention_injection_threshold=case["a"],
        negative_prompt="blurry" if case.get("negative") else None,
        negative_prompt_alpha=case.get("alpha", 1.0),
        negative_prompt_schedule=case.get("schedule", "linear"),
        max_batch_size=case.get("chunk"),
    )
    with RowCounter(pipe.unet) as counter:
        result = pipe(image=photo, output_type="latent", **settings)
    inversion = [1] * case["steps"]
    assert counter.rows == inversion + expected_translation_rows(
        case["prompts"],
        case["steps"],
        case["f"],
        case["a"],
        case.get("negative", False),
        case.get("alpha", 1.0),
        case.get("schedule", "constant"),
        case.get("chunk"),
    )
    assert result.metrics["unet_rows"] == sum(counter.rows)
    assert result.metrics["unet_calls"] == len(counter.rows)


def test_generation_mode_rows_and_outputs(pipe):
    """Fused generation: each step's one call runs the generation's two rows (its conditional row is the
    source row) and the targets' rows; never a separate source row."""
    with RowCounter(pipe.unet) as counter:
        result = pipe(prompt=["a cat", "a dog"], generation_prompt="a horse", num_inference_steps=5, resolution=128)
    assert counter.rows == [2 + 2 * 2] * 5
    assert result.source_image.size == (128, 128)
    assert [image.size for image in result.images] == [(128, 128)] * 2


def test_separate_generation_rows(pipe):
    pipe.fuse_generation = False
    try:
        with RowCounter(pipe.unet) as counter:
            pipe(
                prompt=["a cat", "a dog"],
                generation_prompt="a horse",
                num_inference_steps=5,
                resolution=128,
                output_type="latent",
            )
    finally:
        pipe.fuse_generation = True
    assert counter.rows == [2] * 5 + expected_translation_rows(2, 5, 0.8, 0.5)


def test_inversion_runs_only_up_to_the_noisiest_sampling_timestep(pipe, photo):
    # 10 sampling steps need latents up to t=901; the 20-step grid (1, 51, ..., 951) reaches it in 19.
    with RowCounter(pipe.unet) as counter:
        pipe(
            prompt="a cat",
            image=photo,
            num_inference_steps=10,
            num_inversion_steps=20,
            resolution=128,
            feature_injection_threshold=0,
            attention_injection_threshold=0,
            output_type="latent",
        )
    assert counter.rows == [1] * 19 + [2] * 10


def _pixels(images):
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def _latents_of(pipe, image, **settings):
    """Final latents (before decoding) of a translation, to compare runs tightly."""
    return pipe(image=image, output_type="latent", **settings).images


# Batch composition (and the thread count) changes the order of float32 sums inside the UNet's
# matrix products. Over six steps that moved the tiny model's latents (up to 14 in size) by at most
# 8.8e-5 between batched and single runs at one thread, and by 1.8e-4 between one and two threads:
# 5e-4 covers both with margin, while two prompts' latents differ by about 7.
BATCH_TOLERANCE = dict(rtol=0, atol=5e-4)


def test_batched_prompts_equal_single_prompt_runs(pipe, photo):
    prompts = ["a cat", "a red car", "a bowl of fruit"]
    base = dict(num_inference_steps=6, resolution=128, negative_prompt="ugly", negative_prompt_alpha=0.5)
    batched = _latents_of(pipe, photo, prompt=prompts, **base)
    singles = torch.cat([_latents_of(pipe, photo, prompt=p, **base) for p in prompts])
    torch.testing.assert_close(batched, singles, **BATCH_TOLERANCE)
    assert (batched[0] - batched[1]).abs().max() > 100 * BATCH_TOLERANCE["atol"]


def test_chunked_equals_unchunked(pipe, photo):
    base = dict(prompt=["a", "b", "c", "d", "e"], num_inference_steps=6, resolution=128)
    whole = _latents_of(pipe, photo, **base)
    for size in (1, 2, 4):
        chunked = _latents_of(pipe, photo, max_batch_size=size, **base)
        torch.testing.assert_close(chunked, whole, **BATCH_TOLERANCE)


def test_same_inputs_and_seed_give_the_same_output(pipe, photo):
    def generated(seed):
        out = pipe(
            prompt="a cat",
            generation_prompt="a horse",
            num_inference_steps=4,
            resolution=128,
            generator=torch.Generator().manual_seed(seed),
        )
        return _pixels([out.source_image, *out.images])

    assert np.array_equal(generated(7), generated(7))
    assert not np.array_equal(generated(7)[0], generated(8)[0])
    real = dict(prompt="a cat", image=photo, num_inference_steps=4, resolution=128)
    assert np.array_equal(_pixels(pipe(**real).images), _pixels(pipe(**real).images))


def _plain_unet_output(pipe):
    """A plain UNet call, to compare a UNet with an untouched one."""
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    with torch.inference_mode():
        return pipe.unet(latents, 500, encoder_hidden_states=text).sample


def test_unet_is_clean_after_a_translation(pipe, photo, tiny_model_dir):
    fresh = _plain_unet_output(load_tiny(tiny_model_dir))
    pipe(prompt=["a", "b"], image=photo, num_inference_steps=4, resolution=128)
    assert all_hooks(pipe.unet) == []
    assert torch.equal(_plain_unet_output(pipe), fresh)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_unet_is_clean_after_an_interrupted_translation(pipe, photo, error):
    before = _plain_unet_output(pipe)
    calls = []

    def fail_midway(module, args):
        calls.append(1)
        if len(calls) == 8:  # inside the translation's injection window
            raise error("stopped")

    handle = pipe.unet.register_forward_pre_hook(fail_midway)
    try:
        with pytest.raises(error):
            pipe(prompt=["a", "b"], image=photo, num_inference_steps=6, resolution=128)
    finally:
        handle.remove()
    assert all_hooks(pipe.unet) == []
    assert torch.equal(_plain_unet_output(pipe), before)


def test_call_layout_lists_rows_in_batch_order():
    from pnp.config import PnPConfig
    from pnp.method.plan import Row, RowKind, translation_plan

    config = PnPConfig(
        prompt=["a", "b", "c"],
        num_inference_steps=4,
        negative_prompt="ugly",
        negative_prompt_alpha=0.5,
        negative_prompt_schedule="constant",
        max_batch_size=2,
    )
    first, second = translation_plan(config)[0].calls
    assert first.layout == (
        Row(RowKind.SOURCE),
        Row(RowKind.TARGET_UNCOND, 0),
        Row(RowKind.TARGET_UNCOND, 1),
        Row(RowKind.TARGET_NEGATIVE, 0),
        Row(RowKind.TARGET_NEGATIVE, 1),
        Row(RowKind.TARGET_COND, 0),
        Row(RowKind.TARGET_COND, 1),
    )
    assert second.layout == (
        Row(RowKind.TARGET_UNCOND, 2),
        Row(RowKind.TARGET_NEGATIVE, 2),
        Row(RowKind.TARGET_COND, 2),
    )
    assert len(first.layout) == first.rows
