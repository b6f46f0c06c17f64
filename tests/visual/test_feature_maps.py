"""Feature visualisations: what is recorded, that recording changes nothing, the request and the maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from pnp.config import ConfigError
from pnp.method.injection import FeatureInjector
from pnp.method.noise_predictor import NoisePredictor
from pnp.method.plan import RowKind, TranslationStep, UNetCall
from pnp.method.timesteps import sampling_timesteps
from pnp.visual.capture import ModuleCapture
from pnp.visual.maps import (
    DEFAULT_LAYERS,
    default_timesteps,
    map_names,
    map_request,
)
from pnp.visual.visualise import feature_maps
from support.hooks import all_hooks

BLOCK = "up_blocks.1.resnets.1"
ATTN1 = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
FAST = dict(num_inference_steps=4, resolution=128)
# The default maps, spelt out from the issue: conv1 and conv2 of the block, then the layer's three.
DEFAULT_MAPS = [f"{BLOCK}.conv1", f"{BLOCK}.conv2", f"{ATTN1}.to_q", f"{ATTN1}.to_k", f"{ATTN1}.attention"]


class Outputs:
    """The outputs of chosen modules in plain UNet calls, with hooks of the test's own."""

    def __init__(self, unet, names):
        modules = dict(unet.named_modules())
        self.seen, self.handles = {}, [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        return lambda module, inputs, output: self.seen.__setitem__(name, output.clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# --- What is recorded ---


def test_recorded_features_are_the_unets_own_on_the_same_inputs(pipe, photo):
    """Source: the UNet on z_t with the source embedding (from the batch inside the windows, from an
    extra call outside). Targets: their conditional rows before injection (chunked, one prompt per call)."""
    prompts, schedule = ["a cat", "a dog"], sampling_timesteps(4)  # 751, 501, 251, 1
    shown = {1: 501, 2: 251}  # step index -> timestep: inside both windows (int(4 * 0.5) = 2 steps), outside
    convs, query = [f"{BLOCK}.conv1", f"{BLOCK}.conv2"], f"{ATTN1}.to_q"
    latents = {}

    def keep(pipe, step, t, tensors):
        latents[pipe.phase, t] = tensors["latents"].clone()
        return tensors

    with ModuleCapture(pipe.unet, [*convs, query], shown.values(), images=3) as capture:
        pipe(
            prompt=prompts,
            image=photo,
            feature_injection_threshold=0.5,
            attention_injection_threshold=0.5,
            max_batch_size=1,
            output_type="latent",
            callback_on_step_end=keep,
            observer=capture,
            **FAST,
        )
        with torch.inference_mode():
            capture.record_source(NoisePredictor(pipe.unet))
    assert capture.extra_calls == 1  # for t = 251
    assert len(capture._records) == 3 * 2 * 3  # modules x timesteps x images, nothing else

    embeddings, _ = pipe.encode_prompt(["", *prompts], "cpu", 1, False)  # a real image's source prompt is empty
    for i, t in shown.items():
        source, targets = latents["inversion", t], latents["translation", schedule[i - 1]]
        with Outputs(pipe.unet, [*convs, query]) as direct, torch.inference_mode():
            pipe.unet(torch.cat([source, targets]), t, encoder_hidden_states=embeddings)
        # conv1 and conv2 of the block come before every injection, so even inside the windows the
        # targets' own outputs equal an uninjected call; to_q comes after the injected conv2.
        for name in convs if i < 2 else [*convs, query]:
            # Same rows in other batches (2 to 4 rows here, 3 in the direct call), text encoded in
            # another batch: float32 sums in another order. Measured: at most 4e-6 on features of
            # size 1-2; recording the injected conv2 instead would be off by more than 1e-2.
            torch.testing.assert_close(capture.outputs(name, t), direct.seen[name], rtol=1e-4, atol=1e-4)


def test_recording_comes_before_injection_whatever_the_hook_order(pipe):
    """Hooks installed after the injector's still see each row's own output, not the injected one."""
    call = UNetCall(targets=((0, 0),), sources=(0,), terms=(RowKind.TARGET_COND,))  # rows: [source, cond of prompt 0]
    step = TranslationStep(0, 401, residual=True, attention=True, alpha=1.0, calls=(call,))
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    embeddings, _ = pipe.encode_prompt(["", "a cat"], "cpu", 1, False)
    conv2 = f"{BLOCK}.conv2"
    with torch.inference_mode(), FeatureInjector(pipe.unet) as injector:
        with ModuleCapture(pipe.unet, [conv2], [401], images=2) as capture, Outputs(pipe.unet, [conv2]) as after:
            injector.start_step(True, True)
            injector.set_call(call.layout, latents.device)
            capture.before_call(step, call)
            pipe.unet(latents, 401, encoder_hidden_states=embeddings)
    assert torch.equal(after.seen[conv2][1], after.seen[conv2][0])  # injected: the target carries the source's
    recorded = capture.outputs(conv2, 401)
    assert torch.equal(recorded[0], after.seen[conv2][0])
    assert (recorded[1] - recorded[0]).abs().max() > 1e-2  # the target's own


def test_capture_changes_no_result_and_leaves_the_unet_clean(pipe, photo):
    settings = dict(prompt=["a cat", "a dog"], image=photo, **FAST)
    plain = pipe(output_type="latent", **settings).images
    modules = [f"{BLOCK}.conv2", f"{ATTN1}.to_q", f"{ATTN1}.to_k"]
    with ModuleCapture(pipe.unet, modules, sampling_timesteps(4), images=3) as capture:
        captured = pipe(output_type="latent", observer=capture, **settings).images
    assert torch.equal(captured, plain)
    assert all_hooks(pipe.unet) == []


class _FailAt:
    def __init__(self, call):
        self.call, self.calls = call, 0

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.call:
            raise RuntimeError("stopped")


@pytest.mark.parametrize("call", [6, 9])  # inside the translation; the first extra source call
def test_the_unet_is_clean_after_a_failed_visualisation(pipe, photo, call):
    handle = pipe.unet.register_forward_pre_hook(_FailAt(call))
    try:
        with pytest.raises(RuntimeError, match="stopped"):
            feature_maps(pipe, prompt="a cat", image=photo, **FAST)  # 4 inversion, 4 translation, 1 extra call
    finally:
        handle.remove()
    assert all_hooks(pipe.unet) == []


# --- Through the pipeline ---


@pytest.fixture(scope="module")
def two_prompts(pipe):
    """A visualisation of a photo and two translations, with the default maps at two timesteps."""
    y, x = np.mgrid[0:128, 0:160]
    photo = Image.fromarray(np.stack([x, y, x + y], axis=-1).astype(np.uint8), "RGB")
    return photo, feature_maps(pipe, prompt=["a cat", "A Red Car!"], image=photo, timesteps=[751, 1], **FAST)


def test_maps_of_every_image_in_one_pca(two_prompts):
    _, maps = two_prompts
    assert list(maps.maps) == DEFAULT_MAPS and maps.timesteps == (751, 1)
    assert maps.labels == ["source", "a-cat", "a-red-car"]
    assert [image.size for image in maps.images] == [(192, 128)] * 3  # 160x128 -> sides to multiples of 64
    for by_timestep in maps.maps.values():
        for feature_map in by_timestep.values():
            # up_blocks.1 works at 1/32 of the image: 4 x 6 positions; each image spans 0..255 per channel
            assert feature_map.rgb.shape == (3, 4, 6, 3) and feature_map.scores.shape == (3, 4, 6, 3)
            assert (feature_map.rgb.max(axis=(1, 2)) == 255).all() and (feature_map.rgb.min(axis=(1, 2)) == 0).all()
            enlarged = np.asarray(feature_map.images[2])
            assert enlarged.shape == (128, 192, 3)
            assert np.array_equal(enlarged, feature_map.rgb[2].repeat(32, axis=0).repeat(32, axis=1))


@pytest.mark.parametrize("generating", [False, True])
def test_without_prompts_only_the_source_is_computed_and_shown(pipe, photo, generating):
    source = dict(generation_prompt="a house") if generating else dict(image=photo)
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        maps = feature_maps(pipe, timesteps=[751, 251], **source, **FAST)
    finally:
        handle.remove()
    # The source trajectory (generation: 2 rows a step; inversion: 1), then one call per timestep.
    assert rows == [2 if generating else 1] * 4 + [1, 1]
    assert maps.translation is None and len(maps.images) == 1 and maps.extra_unet_calls == 2
    assert maps.images[0].size == ((128, 128) if generating else (192, 128))
    assert all(m.rgb.shape[0] == 1 for by_t in maps.maps.values() for m in by_t.values())


# --- The request ---


@pytest.mark.parametrize(
    "steps,expected",
    [
        (50, (981, 741, 481, 241, 1)),  # step indices 0, 12, 25 (24.5 rounds up), 37, 49
        (6, (831, 665, 333, 167, 1)),  # 0, 1, 3 (2.5 up), 4, 5
        (3, (667, 334, 1)),  # 0, 1, 1, 2, 2: each step once
    ],
)
def test_default_timesteps(steps, expected):
    assert default_timesteps(sampling_timesteps(steps)) == expected


def test_layers_name_maps_or_what_is_allowed():
    assert map_names(DEFAULT_LAYERS) == tuple(DEFAULT_MAPS)
    assert map_names(["mid_block.resnets.0.conv2", f"{ATTN1}.attention", f"{ATTN1}"]) == (
        "mid_block.resnets.0.conv2",
        f"{ATTN1}.attention",
        f"{ATTN1}.to_q",
        f"{ATTN1}.to_k",
    )
    for bad in ["up_blocks.1.resnets.1.norm1", f"{ATTN1}.to_v", "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]:
        with pytest.raises(ConfigError, match="resnets.1.conv2.*attn1.attention") as caught:
            map_names([bad])
        assert caught.value.param == "layers" and bad in caught.value.reason


def test_a_timestep_off_the_schedule_lists_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        map_request(None, [751, 750], steps=4)
    assert caught.value.param == "timesteps"
    assert "750 is not a timestep" in caught.value.reason and caught.value.reason.endswith("751, 501, 251, 1")
    assert map_request(None, [1, 751, 1], steps=4).timesteps == (751, 1)


def test_a_module_the_unet_lacks_is_refused_before_any_work(pipe, photo):
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(1))
    try:
        with pytest.raises(ConfigError, match="no module up_blocks.7.resnets.0.conv1") as caught:
            feature_maps(pipe, prompt="a cat", image=photo, layers=["up_blocks.7.resnets.0"], **FAST)
    finally:
        handle.remove()
    assert caught.value.param == "layers" and rows == []
