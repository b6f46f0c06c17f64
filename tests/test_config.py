"""One validated configuration: every bad value names its parameter and what is allowed."""

import pytest

from pnp.config import ConfigError, PnPConfig, describe_ranges, valid_inversion_steps


@pytest.mark.parametrize(
    "changes,parameter",
    [
        (dict(prompts=[]), "prompts"),
        (dict(prompts=["  ", ""]), "prompts"),
        (dict(prompts=[f"p{i}" for i in range(17)]), "prompts"),
        (dict(steps=0), "steps"),
        (dict(steps=1000), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(inversion_steps=0), "inversion_steps"),
        (dict(inversion_steps=1001), "inversion_steps"),
        (dict(inversion_steps=70), "inversion_steps"),
        (dict(feature_injection_threshold=1.5), "feature_injection_threshold"),
        (dict(attention_injection_threshold=-0.1), "attention_injection_threshold"),
        (dict(feature_injection_threshold=float("nan")), "feature_injection_threshold"),
        (dict(negative_prompt_alpha=2), "negative_prompt_alpha"),
        (dict(negative_prompt_schedule="cosine"), "negative_prompt_schedule"),
        (dict(scale=-1), "scale"),
        (dict(resolution=500), "resolution"),
        (dict(resolution=64), "resolution"),
        (dict(resolution=2048), "resolution"),
        (dict(seed=-1), "seed"),
        (dict(max_batch_size=0), "max_batch_size"),
        (dict(output_format="gif"), "output_format"),
        (dict(output_quality=0), "output_quality"),
    ],
)
def test_bad_values_name_the_parameter(changes, parameter):
    with pytest.raises(ConfigError) as error:
        PnPConfig(**changes)
    assert str(error.value).startswith(f"{parameter}:")


def test_inversion_steps_error_lists_the_values_that_work():
    with pytest.raises(ConfigError, match="use one of 50, 99-100, 197-200, 246-250, 491-500, 981-1000"):
        PnPConfig(steps=50, inversion_steps=70)


def test_valid_inversion_steps_all_reach_every_sampling_timestep():
    for steps in (1, 7, 25, 50):
        stride = 1000 // steps
        sampling = {k * stride for k in range(steps)}
        for m in valid_inversion_steps(steps):
            grid = {k * (1000 // m) for k in range(m)}
            assert sampling <= grid, (steps, m)
        # and every count left out misses a sampling timestep
        for m in set(range(1, 1001)) - set(valid_inversion_steps(steps)):
            grid = {k * (1000 // m) for k in range(m)}
            assert not sampling <= grid, (steps, m)


def test_generation_mode_does_not_check_inversion_steps():
    assert PnPConfig(generation_prompt="a horse", steps=30, inversion_steps=50).steps == 30


def test_defaults_and_normalisation():
    config = PnPConfig(prompts=[" a cat ", "", "a dog"], steps=30, negative_prompt="  ")
    assert config.prompts == ["a cat", "a dog"]
    assert config.inversion_steps == 30
    assert config.negative_prompt == ""
    assert (config.feature_injection_steps, config.attention_injection_steps) == (24, 15)


def test_describe_ranges():
    assert describe_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
