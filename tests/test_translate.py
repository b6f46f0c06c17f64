"""Translation: the exact minimal UNet row schedule, batching, chunking, determinism, and a clean UNet after."""

import math

import numpy as np
import pytest
import torch
from helpers import all_hooks

from pnp.config import PnPConfig


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
def test_unet_rows_follow_the_minimal_schedule(editor, photo, case):
    config = PnPConfig(
        prompts=[f"prompt {i}" for i in range(case["prompts"])],
        steps=case["steps"],
        inversion_steps=case["steps"],
        resolution=128,
        feature_injection_threshold=case["f"],
        attention_injection_threshold=case["a"],
        negative_prompt="blurry" if case.get("negative") else "",
        negative_prompt_alpha=case.get("alpha", 1.0),
        negative_prompt_schedule=case.get("schedule", "linear"),
        max_batch_size=case.get("chunk"),
    )
    with RowCounter(editor.pipe.unet) as counter:
        result = editor(config, photo)
    inversion = [1] * case["steps"]
    assert counter.rows == inversion + expected_translation_rows(
        case["prompts"], case["steps"], case["f"], case["a"],
        case.get("negative", False), case.get("alpha", 1.0), case.get("schedule", "constant"), case.get("chunk"),
    )
    assert result.unet_batch_sizes == counter.rows
    assert result.metrics["unet_rows"] == sum(counter.rows)


def test_generation_mode_rows_and_outputs(editor):
    config = PnPConfig(prompts=["a cat", "a dog"], generation_prompt="a horse", steps=5, resolution=128)
    with RowCounter(editor.pipe.unet) as counter:
        result = editor(config)
    assert counter.rows == [2] * 5 + expected_translation_rows(2, 5, 0.8, 0.5)
    assert result.source_image.size == (128, 128)
    assert [image.size for image in result.images] == [(128, 128)] * 2


def test_inversion_runs_only_up_to_the_noisiest_sampling_timestep(editor, photo):
    # 10 sampling steps need latents up to t=901; the 20-step grid (1, 51, ..., 951) reaches it in 19.
    config = PnPConfig(prompts=["a cat"], steps=10, inversion_steps=20, resolution=128,
                       feature_injection_threshold=0, attention_injection_threshold=0)
    with RowCounter(editor.pipe.unet) as counter:
        editor(config, photo)
    assert counter.rows == [1] * 19 + [2] * 10


def _pixels(images):
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def _latents_of(editor, config, image, monkeypatch):
    """Final latents (before decoding) of a translation, to compare runs tightly."""
    captured = []
    original = editor.decode
    monkeypatch.setattr(editor, "decode", lambda latent: captured.append(latent.clone()) or original(latent))
    editor(config, image)
    monkeypatch.undo()
    return torch.cat(captured)


def test_batched_prompts_equal_single_prompt_runs(editor, photo, monkeypatch):
    prompts = ["a cat", "a red car", "a bowl of fruit"]
    base = dict(steps=6, inversion_steps=6, resolution=128, negative_prompt="ugly", negative_prompt_alpha=0.5)
    batched = _latents_of(editor, PnPConfig(prompts=prompts, **base), photo, monkeypatch)
    singles = torch.cat([_latents_of(editor, PnPConfig(prompts=[p], **base), photo, monkeypatch) for p in prompts])
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


def test_chunked_equals_unchunked(editor, photo, monkeypatch):
    base = dict(prompts=["a", "b", "c", "d", "e"], steps=6, inversion_steps=6, resolution=128)
    whole = _latents_of(editor, PnPConfig(**base), photo, monkeypatch)
    for size in (1, 2, 4):
        chunked = _latents_of(editor, PnPConfig(max_batch_size=size, **base), photo, monkeypatch)
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_same_inputs_and_seed_give_the_same_output(editor, photo):
    config = PnPConfig(prompts=["a cat"], generation_prompt="a horse", steps=4, resolution=128, seed=7)
    first, second = editor(config), editor(config)
    assert np.array_equal(_pixels([first.source_image, *first.images]), _pixels([second.source_image, *second.images]))
    other = editor(PnPConfig(prompts=["a cat"], generation_prompt="a horse", steps=4, resolution=128, seed=8))
    assert not np.array_equal(_pixels([first.source_image]), _pixels([other.source_image]))
    real = PnPConfig(prompts=["a cat"], steps=4, inversion_steps=4, resolution=128)
    assert np.array_equal(_pixels(editor(real, photo).images), _pixels(editor(real, photo).images))


def _plain_generation(editor):
    generator = torch.Generator().manual_seed(3)
    return editor.pipe("a lighthouse", num_inference_steps=3, height=64, width=64, generator=generator,
                       output_type="latent").images


def test_unet_is_clean_after_a_translation(editor, photo, tiny_model_dir):
    from pnp.editor import PnPEditor
    from pnp.models import load_pipeline

    fresh = _plain_generation(PnPEditor(load_pipeline(tiny_model_dir, device="cpu", dtype=torch.float32)))
    editor(PnPConfig(prompts=["a", "b"], steps=4, inversion_steps=4, resolution=128), photo)
    assert all_hooks(editor.pipe.unet) == []
    assert torch.equal(_plain_generation(editor), fresh)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_unet_is_clean_after_an_interrupted_translation(editor, photo, error):
    before = _plain_generation(editor)
    calls = []

    def fail_midway(module, args):
        calls.append(1)
        if len(calls) == 8:  # inside the translation's injection window
            raise error("stopped")

    handle = editor.pipe.unet.register_forward_pre_hook(fail_midway)
    try:
        with pytest.raises(error):
            editor(PnPConfig(prompts=["a", "b"], steps=6, inversion_steps=6, resolution=128), photo)
    finally:
        handle.remove()
    assert all_hooks(editor.pipe.unet) == []
    assert torch.equal(_plain_generation(editor), before)
