"""Work not redone: the source cache, fused generation, and several images per call."""

import numpy as np
import pytest
import torch
from PIL import Image

from pnp.config import ConfigError, PnPConfig
from pnp.method.cache import SourceCache, SourceEntry, default_budget
from pnp.method.plan import inversion_rows, translation_plan, translation_rows
from pnp.method.text import TextEmbeddings
from pnp.method.trajectory import Trajectory
from support.models import load_tiny

FAST = dict(num_inference_steps=5, resolution=128)
# Cached features were computed in a batch of another composition (with the source row, other
# prompts), and batch composition changes float32 sums inside the UNet: the same bound as
# test_engine's BATCH_TOLERANCE (measured there: at most 1.8e-4 on latents up to 14 in size).
BATCH_TOLERANCE = dict(rtol=0, atol=5e-4)


class Rows:
    """The batch size of every UNet call while it is active."""

    def __init__(self, unet):
        self.unet, self.rows = unet, []

    def __enter__(self):
        self.handle = self.unet.register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))
        return self.rows

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture
def cached(tiny_model_dir):
    return load_tiny(tiny_model_dir, source_cache=True)


def latents(pipe, **settings):
    return pipe(output_type="latent", **settings)


# --- The source cache ---


def test_a_repeated_source_skips_encoding_inversion_and_source_rows(cached, photo):
    first = latents(cached, prompt="a cat", image=photo, **FAST)
    with Rows(cached.unet) as rows:
        again = latents(cached, prompt="a dog", image=photo, **FAST)
    # Five translation steps of [uncond, cond] and nothing else: no inversion, no source row.
    assert rows == [2] * 5
    assert again.metrics["cache_hits"] == 1 and "encode_s" not in again.metrics and "inversion_s" not in again.metrics
    assert first.metrics["cache_hits"] == 0
    uncached = latents(load_tiny_like(cached), prompt="a dog", image=photo, **FAST)
    torch.testing.assert_close(again.images, uncached.images, **BATCH_TOLERANCE)
    assert (again.images - first.images).abs().max() > 100 * BATCH_TOLERANCE["atol"]  # another prompt


def load_tiny_like(pipe):
    """A pipeline on the same weights without a cache, for uncached reference runs."""
    from pnp.pipelines.pipeline_pnp import PnPPipeline

    plain = PnPPipeline.from_pipe(pipe, dtype=pipe.unet.dtype)
    plain.set_progress_bar_config(disable=True)
    plain.set_source_cache(0)
    return plain


def test_at_50_steps_a_repeat_plans_100_rows_instead_of_190():
    """The plan the pipeline executes (test_a_repeated_source_... runs it at 5 steps)."""
    config = PnPConfig(prompt="a cat", num_inference_steps=50)
    first = inversion_rows(config) + translation_rows(config)

    def every_feature_known(image, timestep, residual, attention):
        return True

    repeat = [call.rows for step in translation_plan(config, known=every_feature_known) for call in step.calls]
    assert (sum(first), sum(repeat)) == (190, 100)


def test_longer_injection_windows_run_the_source_row_only_where_the_cache_lacks_features(cached, photo):
    latents(
        cached, prompt="a cat", image=photo, feature_injection_threshold=0.4, attention_injection_threshold=0.2, **FAST
    )  # features kept for int(5 * 0.4) = 2 steps (attention for 1)
    with Rows(cached.unet) as rows:
        more = latents(
            cached,
            prompt="a cat",
            image=photo,
            feature_injection_threshold=0.8,
            attention_injection_threshold=0.6,
            **FAST,
        )
    # Step 0 has residual and attention features; step 1 lacks attention, steps 2-3 lack both.
    assert rows == [2, 3, 3, 3, 2]
    plain = latents(
        load_tiny_like(cached),
        prompt="a cat",
        image=photo,
        feature_injection_threshold=0.8,
        attention_injection_threshold=0.6,
        **FAST,
    )
    torch.testing.assert_close(more.images, plain.images, **BATCH_TOLERANCE)


@pytest.mark.parametrize(
    "change",
    ["pixels", "steps", "inversion steps", "resolution", "weights", "dtype"],
)
def test_an_entry_is_never_shared_between_different_sources_settings_models_or_dtypes(cached, photo, change):
    latents(cached, prompt="a cat", image=photo, **FAST)
    settings = dict(prompt="a cat", image=photo, **FAST)
    if change == "pixels":
        edited = photo.copy()
        edited.putpixel((0, 0), (0, 0, 0))
        settings["image"] = edited
    elif change == "steps":
        settings["num_inference_steps"] = 4
    elif change == "inversion steps":
        settings["num_inversion_steps"] = 10
    elif change == "resolution":
        settings["resolution"] = 192
    elif change == "weights":
        with torch.no_grad():
            cached.unet.conv_in.bias.add_(1e-3)  # as loading a LoRA or fusing weights changes them in place
    elif change == "dtype":
        cached.to(dtype=torch.bfloat16)
    assert latents(cached, **settings).metrics["cache_hits"] == 0
    assert latents(cached, **settings).metrics["cache_hits"] == 1


def test_a_generated_source_is_cached_with_its_image(cached):
    settings = dict(prompt="a cat", generation_prompt="a house", **FAST)
    first = cached(generator=torch.Generator().manual_seed(3), **settings)
    with Rows(cached.unet) as rows:
        again = cached(generator=torch.Generator().manual_seed(3), **{**settings, "prompt": "a dog"})
    assert rows == [2] * 5 and again.metrics["cache_hits"] == 1
    assert np.array_equal(np.asarray(again.source_image), np.asarray(first.source_image))
    other_seed = cached(generator=torch.Generator().manual_seed(4), **settings)
    other_scale = cached(generator=torch.Generator().manual_seed(3), **{**settings, "generation_guidance_scale": 7.0})
    other_prompt = cached(generator=torch.Generator().manual_seed(3), **{**settings, "generation_prompt": "a hut"})
    assert [r.metrics["cache_hits"] for r in (other_seed, other_scale, other_prompt)] == [0, 0, 0]


def test_the_budget_evicts_the_least_recently_used_and_zero_turns_it_off(cached, photo):
    images = [photo.rotate(angle) for angle in (0, 90, 180)]
    latents(cached, prompt="a cat", image=images[0], **FAST)
    one = cached.source_cache.nbytes
    cached.set_source_cache(int(2.5 * one))  # room for two entries of this size
    for image in images[1:]:
        latents(cached, prompt="a cat", image=image, **FAST)
    assert len(cached.source_cache) == 2
    assert latents(cached, prompt="a cat", image=images[0], **FAST).metrics["cache_hits"] == 0  # evicted first
    assert latents(cached, prompt="a cat", image=images[2], **FAST).metrics["cache_hits"] == 1
    cached.set_source_cache(0)
    assert len(cached.source_cache) == 0
    assert latents(cached, prompt="a cat", image=images[2], **FAST).metrics["cache_hits"] == 0
    assert len(cached.source_cache) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, 2.0, "x", True, [100]])
def test_a_budget_is_none_or_a_whole_number_of_bytes(cached, photo, bad):
    """After "x" was accepted, every call did all its work and then failed in cache.put."""
    cached.set_source_cache(10**9)
    with pytest.raises(ConfigError) as caught:
        cached.set_source_cache(bad)
    assert caught.value.param == "max_bytes" and cached.source_cache.max_bytes == 10**9  # unchanged
    with pytest.raises(ConfigError):
        SourceCache(bad)
    cached.set_source_cache(np.int64(10**8))
    assert cached.source_cache.max_bytes == 10**8 and type(cached.source_cache.max_bytes) is int
    cached.set_source_cache(None)  # None: the device's default budget, as documented
    assert cached.source_cache.budget(torch.device("cpu")) == default_budget(torch.device("cpu")) > 0
    assert latents(cached, prompt="a cat", image=photo, **FAST).metrics["cache_hits"] == 0
    assert len(cached.source_cache) == 1


def test_entries_count_their_bytes_and_an_oversized_one_is_not_kept():
    entry = SourceEntry(
        Trajectory({1: torch.zeros(1, 4, 8, 8)}, TextEmbeddings(torch.zeros(1, 77, 32))),
        injected={1: {"layer": torch.zeros(1, 10, dtype=torch.float16)}},
    )
    assert entry.nbytes == 4 * 256 + 4 * 77 * 32 + 2 * 10
    cache = SourceCache(max_bytes=entry.nbytes - 1)
    assert not cache.put("key", entry, torch.device("cpu")) and len(cache) == 0


def test_an_interrupted_run_leaves_nothing_in_the_cache(cached, photo):
    def stop(pipe, step, timestep, tensors):
        pipe._interrupt = pipe.phase == "translation"
        return {}

    cached(prompt="a cat", image=photo, callback_on_step_end=stop, **FAST)
    assert len(cached.source_cache) == 0


def at_inversion_step(index, change):
    """A step callback that applies ``change`` to the latents at the ``index``-th inversion step."""

    def callback(pipe, step, timestep, tensors):
        return change(tensors["latents"]) if pipe.phase == "inversion" and step == index else {}

    return callback


def add_one_in_place(latents):
    latents.add_(1.0)
    return {}


@pytest.mark.parametrize(
    "change",
    [
        lambda latents: {"latents": latents + 1.0},
        add_one_in_place,
        lambda latents: {"latents": torch.full_like(latents, float("nan"))},
    ],
    ids=["returned", "in place", "nan"],
)
def test_a_source_that_a_step_callback_changed_is_not_kept(cached, photo, change):
    """Its trajectory is not the image's: reused, a plain call reported cache_hits=1 and differed from a fresh
    pipeline by 1.0 (after NaN latents, every later call on the image returned NaN)."""
    latents(cached, prompt="a cat", image=photo, callback_on_step_end=at_inversion_step(1, change), **FAST)
    assert len(cached.source_cache) == 0
    plain = latents(cached, prompt="a cat", image=photo, **FAST)
    assert plain.metrics["cache_hits"] == 0 and len(cached.source_cache) == 1
    fresh = latents(load_tiny_like(cached), prompt="a cat", image=photo, **FAST)
    torch.testing.assert_close(plain.images, fresh.images, rtol=0, atol=0)  # the same module, the same inputs


def test_a_callback_that_leaves_the_latents_alone_or_changes_only_the_targets_keeps_the_source(cached, photo):
    def same(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"]} if pipe.phase == "inversion" else {"latents": tensors["latents"] * 0.5}

    latents(cached, prompt="a cat", image=photo, callback_on_step_end=same, **FAST)
    again = latents(cached, prompt="a dog", image=photo, **FAST)
    fresh = latents(load_tiny_like(cached), prompt="a dog", image=photo, **FAST)
    assert again.metrics["cache_hits"] == 1
    torch.testing.assert_close(again.images, fresh.images, **BATCH_TOLERANCE)


def test_a_generated_source_that_a_callback_changed_is_not_kept(cached):
    settings = dict(prompt="a cat", generation_prompt="a house", output_type="latent", **FAST)
    cached.fuse_generation = False  # generated before the translation, in steps the callback sees

    def shift(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] + 1.0} if pipe.phase == "generation" and step == 2 else {}

    cached(generator=torch.Generator().manual_seed(3), callback_on_step_end=shift, **settings)
    plain = cached(generator=torch.Generator().manual_seed(3), **settings)
    fresh = load_tiny_like(cached)
    fresh.fuse_generation = False
    reference = fresh(generator=torch.Generator().manual_seed(3), **settings)
    assert plain.metrics["cache_hits"] == 0
    torch.testing.assert_close(plain.source_image, reference.source_image, rtol=0, atol=0)


def test_a_source_with_non_finite_latents_is_not_kept(cached, photo):
    """However it came about (a float16 overflow, say): reused, it would turn every later call on the image to NaN."""
    calls = []

    def overflow_while_inverting(module, args, output):
        calls.append(1)
        if len(calls) <= FAST["num_inference_steps"]:  # the inversion's calls
            output.sample.fill_(float("inf"))
        return output

    handle = cached.unet.register_forward_hook(overflow_while_inverting)
    try:
        latents(cached, prompt="a cat", image=photo, **FAST)
    finally:
        handle.remove()
    assert len(calls) > FAST["num_inference_steps"] and len(cached.source_cache) == 0
    plain = latents(cached, prompt="a cat", image=photo, **FAST)
    assert plain.metrics["cache_hits"] == 0 and torch.isfinite(plain.images).all()


# --- Fused generation ---


def test_fused_generation_equals_the_separate_path(pipe):
    settings = dict(prompt=["a cat", "a dog"], generation_prompt="a house", **FAST)
    fused = latents(pipe, generator=torch.Generator().manual_seed(5), **settings)
    pipe.fuse_generation = False
    try:
        separate = latents(pipe, generator=torch.Generator().manual_seed(5), **settings)
    finally:
        pipe.fuse_generation = True
    torch.testing.assert_close(fused.source_image, separate.source_image, **BATCH_TOLERANCE)
    torch.testing.assert_close(fused.images, separate.images, **BATCH_TOLERANCE)
    # 5 steps of [generation uncond, source, 2 uncond, 2 cond] against 5 x 2 generation rows
    # and then 5 translation steps, 4 of them with the source row (int(5 * 0.8)).
    assert fused.metrics["unet_rows"] == 5 * 6 and separate.metrics["unet_rows"] == 5 * 2 + 5 * 4 + 4


# --- Several images per call ---


def test_several_images_share_calls_and_equal_one_image_at_a_time(pipe, photo):
    second = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    settings = dict(prompt=["a cat", "a dog"], **FAST)
    with Rows(pipe.unet) as rows:
        both = latents(pipe, image=[photo, second], **settings)
    # Inversion of both images in each call; per translation step one call with both source rows
    # (4 steps in the windows) and 2 images x 2 prompts x [uncond, cond].
    assert rows == [2] * 5 + [2 + 8] * 4 + [8]
    alone = torch.cat([latents(pipe, image=image, **settings).images for image in (photo, second)])
    assert both.images.shape == (4, 4, 16, 24)
    torch.testing.assert_close(both.images, alone, **BATCH_TOLERANCE)
    # Each target got its own source's features: the two images' outputs differ.
    assert (both.images[0] - both.images[2]).abs().max() > 100 * BATCH_TOLERANCE["atol"]


def test_images_of_different_sizes_run_size_group_by_size_group(pipe, photo):
    square = photo.resize((128, 128))
    with Rows(pipe.unet) as rows:
        out = pipe(prompt="a cat", image=[photo, square, photo.rotate(180)], **FAST)
    assert [image.size for image in out.images] == [(192, 128), (128, 128), (192, 128)]
    # The two 192x128 images first: 2 rows per inversion call, then 2 source rows (in the windows)
    # and 2 x [uncond, cond]; then the square one alone.
    assert rows == [2] * 5 + [2 + 4] * 4 + [4] + [1] * 5 + [1 + 2] * 4 + [2]
    alone = pipe(prompt="a cat", image=square, **FAST).images[0]
    assert np.abs(np.asarray(out.images[1], float) - np.asarray(alone, float)).max() <= 1
    with pytest.raises(ConfigError, match="^output_type: images of different working sizes"):
        pipe(prompt="a cat", image=[photo, square], output_type="np", **FAST)


def test_max_batch_size_bounds_the_targets_per_call(pipe, photo):
    with Rows(pipe.unet) as rows:
        pipe(prompt=["a", "b", "c"], image=[photo, photo.rotate(180)], max_batch_size=4, output_type="latent", **FAST)
    translation = rows[5:]
    # 6 targets in chunks of 4 and 2: [2 sources + 4 x 2] and [2 x 2] inside the windows.
    assert translation == [10, 4] * 4 + [8, 4]
