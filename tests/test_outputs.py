"""Writing outputs: formats, quality, names, and keeping one run's outputs apart from another's."""

import errno
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


@pytest.mark.parametrize(
    "options,param",
    [
        (dict(output_format="gif"), "output_format"),
        (dict(output_quality=0), "output_quality"),
        (dict(output_quality=101), "output_quality"),
        (dict(output_quality=90.0), "output_quality"),
    ],
)
def test_bad_options_name_the_parameter(options, param):
    with pytest.raises(ConfigError) as caught:
        OutputOptions(**options)
    assert caught.value.param == param


def test_names_carry_position_and_prompt():
    assert output_names(["A photo of a Robot horse!", "???"], True, "webp") == [
        "00-source.webp",
        "01-a-photo-of-a-robot-horse.webp",
        "02-prompt.webp",
    ]
    assert output_names(["x" * 80], False, "png") == ["00-" + "x" * 48 + ".png"]


def test_an_earlier_runs_outputs_are_refused_or_replaced_once_the_new_ones_are_written(tmp_path):
    image = Image.new("RGB", (8, 8))
    result = SimpleNamespace(images=[image, image], source_image=None)
    first = write_outputs(result, ["alpha", "beta"], tmp_path, OutputOptions())
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="^out: .* already holds outputs of an earlier run .*--overwrite"):
        check_output_folder(tmp_path)
    checked = check_output_folder(tmp_path, overwrite=True)
    assert all(p.exists() for p in first)  # nothing is deleted before the new outputs exist (the run may fail)
    second = write_outputs(SimpleNamespace(images=[image], source_image=None), ["gamma"], checked, OutputOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-gamma.png", "notes.txt"]
    assert second == [tmp_path / "00-gamma.png"]
    check_output_folder(tmp_path, overwrite=True)  # only this run's outputs are there to replace


class FullDisk:
    """An image whose writing fails as on a full disk."""

    def save(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("new_folder", [True, False])
def test_a_failed_write_leaves_nothing_of_the_run_and_keeps_the_earlier_outputs(tmp_path, new_folder):
    """A full disk left .partial files and half the outputs, named no path, and the rerun was refused."""
    folder = tmp_path / "new" / "out" if new_folder else tmp_path
    good = Image.new("RGB", (8, 8))
    if not new_folder:
        write_outputs(SimpleNamespace(images=[good], source_image=None), ["alpha"], folder, OutputOptions())
    checked = check_output_folder(folder, overwrite=True)
    failing = SimpleNamespace(images=[good, FullDisk(), good], source_image=None)
    with pytest.raises(OSError) as caught:
        write_outputs(failing, ["a", "b", "c"], checked, OutputOptions())
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(folder / "01-b.png")
    if new_folder:
        assert list(tmp_path.iterdir()) == []  # the folders this run made are gone again
    else:
        assert [p.name for p in folder.iterdir()] == ["00-alpha.png"]  # as before the run, nothing else
    again = write_outputs(
        SimpleNamespace(images=[good] * 3, source_image=None),
        ["a", "b", "c"],
        check_output_folder(folder, overwrite=True),
        OutputOptions(),
    )
    assert sorted(folder.iterdir()) == again


@pytest.mark.parametrize(
    "out,message",
    [
        ("/proc/pnp-out", "^out: /proc/pnp-out cannot be made: nothing can be written into /proc "),
        ("taken/sub", "^out: .*taken/sub cannot be made: .*taken is a file, not a folder"),
        ("taken", "^out: .*taken is a file, not a folder"),
    ],
)
def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, out, message):
    (tmp_path / "taken").write_text("")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=message):
        check_output_folder(out if out.startswith("/") else tmp_path / out)
    assert sorted(tmp_path.iterdir()) == before


def test_a_file_is_no_output_folder(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(ConfigError, match="^out: .*is a file"):
        check_output_folder(tmp_path / "taken")
