"""Feature injection on the real diffusers module names of a Stable Diffusion 1.5-layout UNet."""

import pytest
import torch

from pnp.method import engine as translate_module
from pnp.method.injection import FeatureInjector
from pnp.method.plan import Row, RowKind
from support.hooks import Capture, all_hooks

RESIDUAL_LAYER = "up_blocks.1.resnets.1.conv2"
# The paper's decoder layers 4-11, written out from the method's description (not from the code).
EXPECTED_ATTENTION = {
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.2.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1",
}
ATTENTION_LAYERS = sorted(EXPECTED_ATTENTION)


def test_layers_are_the_papers(pipe):
    modules = dict(pipe.unet.named_modules())
    layers = pipe.injection_layers
    assert len(layers.attention) == len(EXPECTED_ATTENTION) and set(layers.attention) == EXPECTED_ATTENTION
    assert layers.residual == (RESIDUAL_LAYER,)
    assert FeatureInjector(pipe.unet).layers == layers  # the injector's default: the UNet's architecture's set
    for name in [RESIDUAL_LAYER, *ATTENTION_LAYERS]:
        assert name in modules
    assert type(modules[ATTENTION_LAYERS[0]]).__name__ == "Attention"
    assert type(modules["up_blocks.1.resnets.1"]).__name__ == "ResnetBlock2D"


PROJECTIONS = [f"{layer}.{p}" for layer in ATTENTION_LAYERS for p in ("to_q", "to_k", "to_v")]
UNTOUCHED = [
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
]


def _unet_inputs(pipe):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=generator)
    embeddings, _ = pipe.encode_prompt(["", "a cat", "a dog"], "cpu", 1, False)
    return latents, embeddings


# A call's rows: the source row, then a target's unconditional and conditional rows.
WITH_SOURCE = (Row(RowKind.SOURCE), Row(RowKind.TARGET_UNCOND, 0), Row(RowKind.TARGET_COND, 0))


def _run(pipe, residual, attention, injected=True):
    unet = pipe.unet
    latents, embeddings = _unet_inputs(pipe)
    with torch.inference_mode(), FeatureInjector(unet) as injector:
        injector.start_step(residual, attention)
        injector.set_call(WITH_SOURCE, latents.device)
        if not injected:
            injector.__exit__(None, None, None)
        capture = Capture(unet, [RESIDUAL_LAYER, *PROJECTIONS, *UNTOUCHED])
        try:
            eps = unet(latents, 401, encoder_hidden_states=embeddings).sample
        finally:
            capture.remove()
    return eps, capture.outputs


def _rows_equal_source(tensor):
    return all(torch.equal(tensor[row], tensor[0]) for row in range(1, tensor.shape[0]))


def test_inside_both_windows_targets_get_source_qk_and_residual_but_not_v(pipe):
    eps, out = _run(pipe, residual=True, attention=True)
    assert _rows_equal_source(out[RESIDUAL_LAYER])
    for layer in ATTENTION_LAYERS:
        assert _rows_equal_source(out[f"{layer}.to_q"]), layer
        assert _rows_equal_source(out[f"{layer}.to_k"]), layer
        assert not torch.equal(out[f"{layer}.to_v"][1], out[f"{layer}.to_v"][0]), layer
    for name in UNTOUCHED:
        assert not torch.equal(out[name][1], out[name][0]), name


def test_source_row_is_never_modified(pipe):
    plain_eps, plain = _run(pipe, False, False, injected=False)
    eps, out = _run(pipe, residual=True, attention=True)
    assert torch.equal(eps[0], plain_eps[0])
    for name in [RESIDUAL_LAYER, *PROJECTIONS]:
        assert torch.equal(out[name][0], plain[name][0]), name
    assert not torch.equal(eps[1], plain_eps[1])


def test_outside_the_windows_nothing_changes(pipe):
    plain_eps, plain = _run(pipe, False, False, injected=False)
    eps, out = _run(pipe, residual=False, attention=False)
    assert torch.equal(eps, plain_eps)
    for name in plain:
        assert torch.equal(out[name], plain[name]), name


def test_residual_window_alone_copies_only_conv2(pipe):
    _, out = _run(pipe, residual=True, attention=False)
    assert _rows_equal_source(out[RESIDUAL_LAYER])
    for layer in ATTENTION_LAYERS:
        assert not torch.equal(out[f"{layer}.to_q"][1], out[f"{layer}.to_q"][0]), layer


def test_attention_window_alone_copies_only_qk(pipe):
    _, out = _run(pipe, residual=False, attention=True)
    assert not torch.equal(out[RESIDUAL_LAYER][1], out[RESIDUAL_LAYER][0])
    for layer in ATTENTION_LAYERS:
        assert _rows_equal_source(out[f"{layer}.to_q"]), layer
        assert _rows_equal_source(out[f"{layer}.to_k"]), layer


def test_a_call_without_the_source_row_gets_the_kept_source_features(pipe):
    unet = pipe.unet
    latents, embeddings = _unet_inputs(pipe)
    with torch.inference_mode(), FeatureInjector(unet) as injector:
        injector.start_step(True, True)
        injector.set_call(WITH_SOURCE, latents.device)
        capture = Capture(unet, [RESIDUAL_LAYER, *PROJECTIONS])
        unet(latents, 401, encoder_hidden_states=embeddings)
        with_source = dict(capture.outputs)
        injector.set_call(WITH_SOURCE[1:], latents.device)  # the next chunk: targets only
        unet(latents[1:], 401, encoder_hidden_states=embeddings[1:])
        capture.remove()
    for name in [RESIDUAL_LAYER] + [p for p in PROJECTIONS if not p.endswith("to_v")]:
        assert torch.equal(capture.outputs[name][0], with_source[name][0]), name
    assert all_hooks(unet) == []


@pytest.mark.parametrize("steps,f,a", [(7, 0.8, 0.5), (10, 0.35, 0.95), (6, 0.0, 1.0)])
def test_injected_step_counts_are_int_of_n_times_threshold(pipe, photo, monkeypatch, steps, f, a):
    """Count, per translation step, whether target rows really carry the source's Q/K and conv2."""
    records = []

    class RecordingInjector(translate_module.FeatureInjector):
        def __enter__(self):
            super().__enter__()
            self.capture = Capture(
                self.unet, [RESIDUAL_LAYER, f"{ATTENTION_LAYERS[-1]}.to_q", f"{ATTENTION_LAYERS[0]}.to_k"]
            )
            self.capture.handles.append(
                self.unet.register_forward_hook(lambda *_: records.append(dict(self.capture.outputs)))
            )
            return self

        def __exit__(self, *exc):
            self.capture.remove()
            super().__exit__(*exc)

    monkeypatch.setattr(translate_module, "FeatureInjector", RecordingInjector)
    pipe(
        prompt="a cat",
        image=photo,
        num_inference_steps=steps,
        resolution=128,
        feature_injection_threshold=f,
        attention_injection_threshold=a,
        output_type="latent",
    )
    assert all_hooks(pipe.unet) == []
    assert len(records) == steps
    residual = [_rows_equal_source(r[RESIDUAL_LAYER]) and r[RESIDUAL_LAYER].shape[0] == 3 for r in records]
    query = [_rows_equal_source(r[f"{ATTENTION_LAYERS[-1]}.to_q"]) and r[RESIDUAL_LAYER].shape[0] == 3 for r in records]
    key = [_rows_equal_source(r[f"{ATTENTION_LAYERS[0]}.to_k"]) and r[RESIDUAL_LAYER].shape[0] == 3 for r in records]
    assert residual == [i < int(steps * f) for i in range(steps)]
    assert query == [i < int(steps * a) for i in range(steps)]
    assert key == query
