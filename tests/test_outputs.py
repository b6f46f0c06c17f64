"""Writing outputs: formats, quality, names, and keeping one run's outputs apart from another's."""

from types import SimpleNamespace

import pytest
from PIL import Image

from pnp.config import ConfigError
from pnp.outputs import OutputOptions, check_output_folder, output_names, save_image, write_outputs


@pytest.mark.parametrize("output_format,pil_format", [("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")])
def test_save_formats(tmp_path, output_format, pil_format):
    image = Image.effect_noise((64, 48), 40).convert("RGB")
    path = save_image(image, tmp_path / f"out.{output_format}", OutputOptions(output_format, 80))
    with Image.open(path) as reopened:
        assert reopened.format == pil_format and reopened.size == (64, 48)
    assert list(tmp_path.iterdir()) == [path]


def test_quality_changes_lossy_outputs(tmp_path):
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    low = save_image(image, tmp_path / "low.jpg", OutputOptions("jpg", 10)).stat().st_size
    high = save_image(image, tmp_path / "high.jpg", OutputOptions("jpg", 95)).stat().st_size
    assert low < high


@pytest.mark.parametrize("options,param", [(dict(output_format="gif"), "output_format"),
                                           (dict(output_quality=0), "output_quality"),
                                           (dict(output_quality=101), "output_quality"),
                                           (dict(output_quality=90.0), "output_quality")])
def test_bad_options_name_the_parameter(options, param):
    with pytest.raises(ConfigError) as caught:
        OutputOptions(**options)
    assert caught.value.param == param


def test_names_carry_position_and_prompt():
    assert output_names(["A photo of a Robot horse!", "???"], True, "webp") == [
        "00-source.webp", "01-a-photo-of-a-robot-horse.webp", "02-prompt.webp"]
    assert output_names(["x" * 80], False, "png") == ["00-" + "x" * 48 + ".png"]


def test_an_earlier_runs_outputs_are_refused_or_replaced(tmp_path):
    image = Image.new("RGB", (8, 8))
    result = SimpleNamespace(images=[image, image], source_image=None)
    first = write_outputs(result, ["alpha", "beta"], tmp_path, OutputOptions())
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="^out: .*2 outputs of an earlier run.*--overwrite"):
        check_output_folder(tmp_path)
    check_output_folder(tmp_path, overwrite=True)
    assert not any(p.exists() for p in first)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    check_output_folder(tmp_path)  # nothing of an earlier run is left to confuse


def test_a_file_is_no_output_folder(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match="^out: .*is a file"):
        check_output_folder(tmp_path / "taken")
