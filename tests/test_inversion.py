"""DDIM inversion and sampling against diffusers' schedulers, and an exact weights-free round trip."""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from pnp.ddim import DDIMSchedule, ddim_step
from pnp.generation import generate
from pnp.inversion import invert
from pnp.unet import NoisePredictor
from pnp.vae import encode, image_to_tensor


@pytest.fixture(scope="module")
def schedule(pipe):
    return DDIMSchedule.from_config(pipe.scheduler.config)


def test_timesteps_are_leading_with_offset(schedule):
    assert schedule.timesteps(50)[:3] == [981, 961, 941]
    assert schedule.timesteps(50)[-1] == 1
    reference = DDIMScheduler.from_config(DDIMScheduler().config, steps_offset=1)
    reference.set_timesteps(25)
    assert schedule.timesteps(25) == reference.timesteps.tolist()


@pytest.mark.parametrize("steps", [5, 10])
def test_inversion_matches_diffusers_ddim_inverse_scheduler(pipe, schedule, photo, steps):
    unet = pipe.unet
    with torch.inference_mode():
        latent = encode(pipe.vae, image_to_tensor(photo.resize((128, 128))))
        embedding, _ = pipe.encode_prompt([""], "cpu", 1, False)
        ours = invert(NoisePredictor(unet), schedule, latent, embedding, steps, steps)

        inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
        inverse.set_timesteps(steps)
        z = latent
        for t in inverse.timesteps:
            eps = unet(z, t, encoder_hidden_states=embedding).sample
            z = inverse.step(eps, t, z).prev_sample
            torch.testing.assert_close(ours[int(t)], z, rtol=0, atol=1e-6)
    assert sorted(ours) == sorted(schedule.timesteps(steps))


def test_sampling_step_matches_diffusers_ddim_scheduler(pipe, schedule):
    reference = DDIMScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(10)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for t, t_next in schedule.sampling_pairs(10):
        expected = reference.step(eps, t, z, eta=0.0).prev_sample
        ours = ddim_step(z, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_next))
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


class GaussianOracle:
    """The exact noise predictor for Gaussian data with per-element std s:
    eps*(x, t) = sqrt(1 - abar_t) x / (abar_t s^2 + 1 - abar_t)."""

    def __init__(self, schedule, std):
        self.schedule, self.std = schedule, std

    def __call__(self, latents, t, embeddings):
        abar = self.schedule.alpha_bar(t)
        return (1 - abar) ** 0.5 * latents / (abar * self.std**2 + 1 - abar)


def _round_trip_error(schedule, steps, std=0.5):
    x0 = std * torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    oracle = GaussianOracle(schedule, std)
    timesteps = schedule.timesteps(steps)
    no_text = torch.zeros(1, 1)
    latents = invert(oracle, schedule, x0, no_text, steps, steps)
    # Sampling with guidance between two identical predictions is plain DDIM sampling.
    _, reconstruction = generate(oracle, schedule, latents[timesteps[0]], no_text, no_text, steps, 7.5)
    return float((reconstruction - x0).norm() / x0.norm())


def test_invert_then_sample_error_is_small_and_falls_with_steps(schedule):
    schedule = DDIMSchedule(schedule.alphas_cumprod.double(), schedule.final_alpha_cumprod.double(), 1)
    errors = [_round_trip_error(schedule, steps) for steps in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.06
    assert errors[2] < 0.015
