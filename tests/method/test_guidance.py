"""Negative-prompt schedules and the guidance formula, checked against values worked out by hand."""

import math

import pytest
import torch

from pnp.method.guidance import guided_noise, negative_prompt_alphas


def test_constant_schedule():
    assert negative_prompt_alphas("constant", 0.3, 4) == [0.3, 0.3, 0.3, 0.3]


def test_linear_schedule_runs_from_alpha_down_to_zero():
    assert negative_prompt_alphas("linear", 0.8, 5) == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    assert negative_prompt_alphas("linear", 1.0, 3) == pytest.approx([1.0, 0.5, 0.0])


def test_exp_schedule():
    values = negative_prompt_alphas("exp", 0.5, 4)
    assert values[0] == 0.5
    assert values[1] == pytest.approx(0.5 * math.exp(-2))
    assert values[3] == pytest.approx(0.5 * math.exp(-6))


def test_single_step_schedules_do_not_divide_by_zero():
    assert negative_prompt_alphas("linear", 0.7, 1) == [0.7]
    assert negative_prompt_alphas("exp", 0.7, 1) == [0.7]


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="negative_prompt_schedule"):
        negative_prompt_alphas("cosine", 1.0, 5)


def test_guidance_formula():
    u, n, c = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0])
    # alpha 0.25: eps~ = 0.25 * 1 + 0.75 * 3 = 2.5; eps = 2.5 + 10 * (2 - 2.5) = -2.5
    assert guided_noise(u, n, c, 0.25, 10.0).item() == pytest.approx(-2.5)
    # alpha 1 ignores the negative term; its row need not exist
    assert guided_noise(u, None, c, 1.0, 7.5).item() == pytest.approx(1 + 7.5 * (2 - 1))
    # alpha 0 uses the negative term alone; the unconditional row need not exist
    assert guided_noise(None, n, c, 0.0, 2.0).item() == pytest.approx(3 + 2 * (2 - 3))
