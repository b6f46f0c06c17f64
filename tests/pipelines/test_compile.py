"""A compiled UNet keeps the injection: the hooks are traced, none is dropped silently, and steps add no compilations.

torch.compile's "eager" backend traces, guards and recompiles exactly as the default one does but
runs the traced graphs without generating code, so these tests take seconds; the benchmark
(benchmarks.workflows) measures the real compiler's time and speed-up.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from pnp.method.injection import InjectionError
from support.models import load_tiny

# Five steps with both windows closing: one graph per kind of UNet call (inversion; residual and
# attention; residual only; neither), each compiled once, however many steps there are.
SETTINGS = dict(
    prompt=["a cat", "a dog"],
    num_inference_steps=5,
    resolution=128,
    output_type="latent",
    feature_injection_threshold=0.8,
    attention_injection_threshold=0.4,
)


@pytest.fixture
def fresh(tiny_model_dir):
    torch._dynamo.reset()
    counters.clear()
    yield load_tiny(tiny_model_dir)
    torch._dynamo.reset()


def compilations() -> int:
    return counters["frames"]["ok"]


def test_a_compiled_translation_equals_the_eager_one_and_steps_add_no_compilations(fresh, pipe, photo):
    # The same UNet, weights in the same memory, before and after compiling: the eager backend runs
    # the traced operations themselves, so bit for bit (another instance could differ: INSTANCE_TOLERANCE).
    eager = fresh(image=photo, **SETTINGS).images
    fresh.compile_unet(backend="eager")
    compiled = fresh(image=photo, **SETTINGS).images
    assert torch.equal(compiled, eager)
    first = compilations()
    assert first <= 4
    fresh(image=photo, **{**SETTINGS, "num_inference_steps": 10})
    assert compilations() == first
    uninjected = pipe(
        image=photo, **{**SETTINGS, "feature_injection_threshold": 0, "attention_injection_threshold": 0}
    ).images
    assert (uninjected - compiled).abs().max() > 0.1  # the injection did happen in the compiled UNet


def test_hooks_added_after_compiling_are_not_silently_dropped(fresh):
    """A UNet compiled without hooks keeps running its graph, hooks or not, for the same shapes
    (torch.compile does not guard on hooks): the injection's own check stops the call instead of
    letting it return uninjected."""
    from pnp.method.injection import FeatureInjector
    from pnp.method.plan import Row, RowKind

    unet = fresh.unet
    unet.compile(backend="eager")  # without compile_unet, which installs the hooks first
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        unet(latents, torch.tensor(401), encoder_hidden_states=text)  # compiled here, with no hooks
        with FeatureInjector(unet) as injector:
            injector.start_step(True, True)
            injector.set_call(
                (Row(RowKind.SOURCE), Row(RowKind.TARGET_UNCOND, 0), Row(RowKind.TARGET_COND, 0)), latents.device
            )
            unet(latents, torch.tensor(401), encoder_hidden_states=text)
            with pytest.raises(InjectionError, match="0 times"):
                injector.check_call()
