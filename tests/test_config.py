"""One validated, immutable configuration: every bad value or type names its parameter and what is allowed."""

import dataclasses
import pickle
import time

import numpy as np
import pytest

from pnp.config import MAX_PROMPT_LENGTH, ConfigError, PnPConfig, check_seed, describe_ranges
from pnp.method.timesteps import inversion_reaches, leading_timesteps, valid_inversion_steps


@pytest.mark.parametrize(
    "changes,parameter",
    [
        (dict(prompt=[]), "prompt"),
        (dict(prompt=["  ", ""]), "prompt"),
        (dict(prompt=["a cat", ""]), "prompt"),
        (dict(prompt=[f"p{i}" for i in range(17)]), "prompt"),
        (dict(prompt=None), "prompt"),
        (dict(prompt=[b"a cat"]), "prompt"),
        (dict(prompt=["a cat", 3]), "prompt"),
        (dict(generation_prompt=5), "generation_prompt"),
        (dict(negative_prompt=["ugly"]), "negative_prompt"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=1000), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(num_inference_steps=2.0), "num_inference_steps"),
        (dict(num_inference_steps="50"), "num_inference_steps"),
        (dict(num_inference_steps=True), "num_inference_steps"),
        (dict(num_inversion_steps=0), "num_inversion_steps"),
        (dict(num_inversion_steps=1001), "num_inversion_steps"),
        (dict(num_inversion_steps=70), "num_inversion_steps"),
        (dict(feature_injection_threshold=1.5), "feature_injection_threshold"),
        (dict(attention_injection_threshold=-0.1), "attention_injection_threshold"),
        (dict(feature_injection_threshold=float("nan")), "feature_injection_threshold"),
        (dict(feature_injection_threshold="0.5"), "feature_injection_threshold"),
        (dict(negative_prompt_alpha=2), "negative_prompt_alpha"),
        (dict(negative_prompt_schedule="cosine"), "negative_prompt_schedule"),
        (dict(negative_prompt_schedule=None), "negative_prompt_schedule"),
        (dict(guidance_scale=-1), "guidance_scale"),
        (dict(guidance_scale=None), "guidance_scale"),
        (dict(generation_guidance_scale=51), "generation_guidance_scale"),
        (dict(resolution=500), "resolution"),
        (dict(resolution=64), "resolution"),
        (dict(resolution=2048), "resolution"),
        (dict(resolution=512.0), "resolution"),
        (dict(max_batch_size=0), "max_batch_size"),
        (dict(prompt="x" * (MAX_PROMPT_LENGTH + 1)), "prompt"),
        (dict(prompt=["a cat", "a \udcff cat"]), "prompt"),  # how `--prompt $'a \xff cat'` arrives
        (dict(negative_prompt="\ud800"), "negative_prompt"),
        (dict(negative_prompt="x" * (MAX_PROMPT_LENGTH + 1)), "negative_prompt"),
        (dict(generation_prompt="a \udcff"), "generation_prompt"),
        (dict(generation_prompt="x" * (MAX_PROMPT_LENGTH + 1)), "generation_prompt"),
    ],
)
def test_bad_values_and_types_name_the_parameter(changes, parameter):
    with pytest.raises(ConfigError) as error:
        PnPConfig(**changes)
    assert error.value.param == parameter
    assert str(error.value) == f"{parameter}: {error.value.reason}"


def test_texts_are_bounded_before_anything_reads_them_whole():
    """Every text is tokenized whole: 4 MB of prompt held a server for 92 s. Refused at once, naming its place."""
    huge = "a cat " * (4 * 2**20 // 6)
    for settings in (
        dict(prompt=huge),
        dict(prompt=["a dog", huge]),
        dict(negative_prompt=huge),
        dict(generation_prompt=huge),
        dict(prompt=[huge] * 10**5),
    ):
        start = time.perf_counter()
        with pytest.raises(ConfigError) as error:
            PnPConfig(**settings)
        assert time.perf_counter() - start < 0.2
        assert len(str(error.value)) < 300  # the message does not echo the text
    assert error_of(prompt=["a dog", huge]).reason.startswith(
        f"prompt 2 of 2 is {len(huge) - 1} characters long, more than the {MAX_PROMPT_LENGTH} allowed"
    )
    limit = "x" * MAX_PROMPT_LENGTH
    assert PnPConfig(prompt=f"  {limit}  ", negative_prompt=limit).prompt == (limit,)  # the limit itself is allowed


def test_text_that_is_not_unicode_says_where():
    error = error_of(prompt=["a cat", "a \udcff cat"])
    assert error.reason == (
        "prompt 2 of 2 is not valid text: character 3 is '\\udcff', a lone surrogate, as bytes "
        "that are not UTF-8 become; give the text in UTF-8"
    )
    assert PnPConfig(prompt="un chat \u00e9l\u00e9gant \U0001f408").prompt == ("un chat \u00e9l\u00e9gant \U0001f408",)


def error_of(**settings) -> ConfigError:
    with pytest.raises(ConfigError) as error:
        PnPConfig(**settings)
    return error.value


def test_a_single_prompt_string_is_one_prompt_not_its_letters():
    assert PnPConfig(prompt="a cat").prompt == ("a cat",)
    assert PnPConfig(prompt=[" a cat ", "a dog"]).prompt == ("a cat", "a dog")


def test_the_config_is_immutable():
    config = PnPConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_inference_steps = 0
    assert isinstance(config.prompt, tuple)


def test_none_means_not_given_for_optional_texts():
    config = PnPConfig(generation_prompt=None, negative_prompt="  ")
    assert config.generation_prompt is None and not config.generating
    assert config.negative_prompt is None
    assert PnPConfig(generation_prompt=" a horse ").generation_prompt == "a horse"


def test_numbers_of_numpy_types_are_plain_numbers():
    config = PnPConfig(num_inference_steps=np.int64(10), guidance_scale=np.float32(7.5))
    assert type(config.num_inference_steps) is int and type(config.guidance_scale) is float


def test_config_errors_survive_pickling_as_cogs_worker_sends_them():
    error = pickle.loads(pickle.dumps(ConfigError("resolution", "500 is not a multiple of 64")))
    assert (error.param, error.reason, str(error)) == (
        "resolution",
        "500 is not a multiple of 64",
        "resolution: 500 is not a multiple of 64",
    )


def test_inversion_steps_error_lists_the_values_that_work():
    with pytest.raises(ConfigError, match="use one of 50, 99-100, 197-200, 246-250, 491-500, 981-1000"):
        PnPConfig(num_inference_steps=50, num_inversion_steps=70)


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
            assert not inversion_reaches(m, steps)


def test_leading_timesteps():
    assert leading_timesteps(50)[:3] == [1, 21, 41] and leading_timesteps(50)[-1] == 981
    assert leading_timesteps(3) == [1, 334, 667]


def test_generation_mode_does_not_check_inversion_steps():
    config = PnPConfig(generation_prompt="a horse", num_inference_steps=30, num_inversion_steps=50)
    assert config.num_inference_steps == 30


def test_defaults():
    config = PnPConfig(num_inference_steps=30)
    assert config.num_inversion_steps == 30
    assert (config.feature_injection_steps, config.attention_injection_steps) == (24, 15)
    assert config.as_kwargs()["num_inversion_steps"] == 30


def test_seed_range():
    assert check_seed(2**32 - 1) == 2**32 - 1
    for bad in (-1, 2**32, 1.0, "7"):
        with pytest.raises(ConfigError, match="^seed: "):
            check_seed(bad)


def test_describe_ranges():
    assert describe_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
