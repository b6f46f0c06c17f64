"""The command line end to end on the tiny random model, in a subprocess as a user runs it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from support.cli import FAST, run_cli
from support.hub import unreachable_hub_env
from support.paths import ROOT


def test_translate_an_image_into_two_prompts(tmp_path, photo):
    photo.save(tmp_path / "in.jpg")
    out = tmp_path / "out"
    done = run_cli(
        "translate",
        "--image",
        str(tmp_path / "in.jpg"),
        "--prompt",
        "a cat",
        "--prompt",
        "a red car",
        "--out",
        str(out),
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["00-a-cat.png", "01-a-red-car.png"]
    assert done.stdout.split() == [str(f) for f in files]
    for f in files:
        with Image.open(f) as image:
            assert image.format == "PNG" and image.size == (192, 128)  # 160x128 input, sides to multiples of 64
    assert "outputs are noise" in done.stderr
    assert "translation" in done.stderr  # progress bar
    assert "[transformers]" not in done.stderr and "Warning" not in done.stderr  # the libraries' advice stays quiet


def test_generation_mode_writes_the_source_first(tmp_path):
    out = tmp_path / "gen"
    done = run_cli(
        "translate",
        "--generation-prompt",
        "a horse",
        "--prompt",
        "a zebra",
        "--out",
        str(out),
        "--format",
        "jpg",
        "--quality",
        "70",
        "--quiet",
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    assert [f.name for f in sorted(out.iterdir())] == ["00-source.jpg", "01-a-zebra.jpg"]
    with Image.open(out / "01-a-zebra.jpg") as image:
        assert image.format == "JPEG" and image.size == (128, 128)
    assert "translation" not in done.stderr


def test_a_second_run_into_the_same_folder_is_refused_before_work_or_replaces_with_overwrite(tmp_path):
    out = tmp_path / "out"
    args = ["translate", "--generation-prompt", "a horse", "--out", str(out), "--quiet", *FAST]
    assert run_cli(*args, "--prompt", "alpha").returncode == 0
    refused = run_cli(*args, "--prompt", "gamma")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert "model tiny on" not in refused.stderr  # refused before the model loaded
    assert sorted(f.name for f in out.iterdir()) == ["00-source.png", "01-alpha.png"]
    failed = run_cli(*args, "--prompt", "gamma", "--overwrite", "--model", "./no-such-model")
    assert failed.returncode == 2 and "error: model folder" in failed.stderr
    assert sorted(f.name for f in out.iterdir()) == ["00-source.png", "01-alpha.png"]  # kept: nothing replaced them
    replaced = run_cli(*args, "--prompt", "gamma", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(f.name for f in out.iterdir()) == ["00-source.png", "01-gamma.png"]


def test_a_prompt_longer_than_the_text_encoder_reads_is_reported(tmp_path):
    long_prompt = "a photo of a horse " + "with many words " * 40
    done = run_cli(
        "translate",
        "--generation-prompt",
        "a horse",
        "--prompt",
        long_prompt,
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert "tokens long" in line and "only this part is used: 'a photo of a horse" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "missing.png"], "error: --image: no file at missing.png"),
        (["--image", "in.png", "--feature-injection-threshold", "1.5"], "error: --feature-injection-threshold:"),
        (["--image", "in.png", "--steps", "50", "--inversion-steps", "70"], "error: --inversion-steps: 70 inversion"),
        (["--image", "in.png", "--steps", "2.5"], "error: argument --steps: invalid int value"),
        (["--image", "in.png", "--prompt", " "], "error: --prompt: prompt 1 of 2 is empty"),
        (["--image", "in.png", "--seed", "-1"], "error: --seed:"),
        (["--image", "in.png", "--format", "gif"], "error: --format:"),
        (["--image", "strip.png"], "error: --image: 1100x100 is more than 8 times longer than wide"),
        (["--image", "in.png", "--out", "taken"], "error: --out: taken is a file"),
        (["--image", "in.png", "--out", "taken/sub"], "error: --out: taken/sub cannot be made: taken is a file"),
        (
            ["--image", "in.png", "--out", "/proc/pnp"],
            "error: --out: /proc/pnp cannot be made: nothing can be written into /proc",
        ),
        (["--image", "in.png", "--model", "./no-such-folder"], "error: model folder"),
        (["--image", "in.png", "--model", "someone/some-model"], "download-weights"),
        (
            ["--image", "in.png", "--device", "cuda:0"],
            "error: --device: cuda:0 was asked for but no CUDA GPU is available; use cpu",
        ),
        (
            ["--image", "in.png", "--prompt", b"a \xff cat"],  # bytes that are not UTF-8
            "error: --prompt: prompt 1 of 2 is not valid text: character 3 is '\\udcff'",
        ),
        (["--image", "in.png", "--negative-prompt", b"\xff"], "error: --negative-prompt: it is not valid text"),
        (["--image", "in.png", "--prompt", "cat " * 1000], "error: --prompt: prompt 1 of 2 is 3999 characters long"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, photo, args, message):
    photo.save(tmp_path / "in.png")
    Image.new("RGB", (1100, 100)).save(tmp_path / "strip.png")
    (tmp_path / "taken").write_text("")
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    done = run_cli("translate", *args, "--prompt", "a cat", "--quiet", "--dtype", "float32", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["translate", "features"])
def test_an_image_that_is_a_fifo_or_a_folder_is_refused_at_once(tmp_path, photo, command):
    """Reading a FIFO waits for a writer: the command hung."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    for name, kind in (("pipe.png", "a FIFO (named pipe)"), ("folder.png", "a folder")):
        done = run_cli(command, "--image", name, "--prompt", "a cat", "--out", "out", *FAST, cwd=tmp_path, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip() == f"error: --image: {name} is {kind}, not an image file; name an image file"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 64 KiB file system (a tmpfs), where the second of two noise images no longer fits; the
    function it comes with grows it to 1 MiB. Mounting needs root (CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root; test_outputs injects the same failure without it")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)

    try:
        yield disk, grow
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_leaves_no_outputs_names_the_file_and_the_rerun_succeeds(tmp_path, small_disk):
    """A full disk left .partial files and half the outputs, named no path, and the rerun was refused."""
    disk, grow = small_disk
    args = [
        "translate",
        "--generation-prompt",
        "a horse",
        "--prompt",
        "a cat",
        "--out",
        str(disk / "out"),
        "--quiet",
        *FAST,
    ]
    full = run_cli(*args)
    assert full.returncode == 2
    *loading, line = full.stderr.strip().splitlines()  # after what was loaded, one line
    # 00-source.png (about 50 KB of noise) fits, 01-a-cat.png does not.
    assert re.fullmatch(
        rf"error: --out: could not write {disk / 'out'}/0[01]-(source|a-cat)\.png "
        r"\(No space left on device\); nothing was written",
        line,
    ), line
    assert [text.split()[0] for text in loading] == ["note:", "model"]
    assert list(disk.iterdir()) == []  # no outputs, no half-written file, not even the folder the run made
    grow()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (disk / "out").iterdir()) == ["00-source.png", "01-a-cat.png"]


def test_features_of_an_image_and_its_translation(tmp_path, photo):
    photo.save(tmp_path / "in.png")
    out = tmp_path / "maps"
    conv2 = "up_blocks.1.resnets.1.conv2"
    done = run_cli(
        "features",
        "--image",
        str(tmp_path / "in.png"),
        "--prompt",
        "a cat",
        "--out",
        str(out),
        "--timesteps",
        "1",
        "667",
        "--layers",
        conv2,
        "--quiet",
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert names == [
        conv2,
        f"{conv2}.png",
        *(f"{conv2}/{n}" for n in ["00-source-t1.png", "00-source-t667.png", "01-a-cat-t1.png", "01-a-cat-t667.png"]),
    ]
    assert done.stdout.split() == [str(out / f"{conv2}.png")]
    with Image.open(out / conv2 / "01-a-cat-t667.png") as image:
        assert image.size == (192, 128)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--timesteps", "667", "500"],
            "error: --timesteps: 500 is not a timestep of the 3-step sampling schedule; use some of 667, 334, 1",
        ),
        (
            ["--layers", "up_blocks.1.attentions.1"],
            "error: --layers: 'up_blocks.1.attentions.1' is not a map pnp draws; name a residual block",
        ),
        (["--steps", "0"], "error: --steps: 0 is out of range"),
    ],
)
def test_features_bad_input_is_one_line_before_the_model_loads(tmp_path, photo, args, message):
    photo.save(tmp_path / "in.png")
    done = run_cli("features", "--image", "in.png", "--out", "maps", *FAST, *args, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "maps").exists()


def test_offline_model_error_says_what_to_do(tmp_path, photo):
    photo.save(tmp_path / "in.png")
    done = run_cli("translate", "--image", "in.png", "--prompt", "a cat", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    for advice in ("download-weights", "'tiny'"):
        assert advice in line
    for hub_advice in ("local_files_only", "stacktrace"):
        assert hub_advice not in line


@pytest.mark.parametrize(
    "command",
    [["translate", "--image", "in.png", "--prompt", "a cat", "--out", "out"], ["download-weights", "--out", "weights"]],
)
def test_without_the_model_hub_the_first_command_fails_at_once_in_one_line(tmp_path, photo, command):
    """A host name that does not resolve is no passing fault: the hub client's five retries are not waited for
    (test_loading times it)."""
    photo.save(tmp_path / "in.png")
    done = run_cli(*command, cwd=tmp_path, env=unreachable_hub_env(tmp_path / "hf"))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "CompVis/stable-diffusion-v1-4" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "weights").exists()


def test_help_and_argument_errors_do_not_load_torch():
    probe = (
        "import sys, runpy; sys.argv = ['pnp', 'translate', '--steps', 'x']\n"
        "try:\n    runpy.run_module('pnp', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('loaded' if {'torch', 'diffusers'} & set(sys.modules) else 'light')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "light", done.stderr
    assert run_cli("--help").returncode == 0


def test_the_installed_package_runs_from_any_folder(tmp_path):
    """README installs the package, so `pnp` and `python -m pnp` work outside the repository too."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pnp", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert done.returncode == 0, f"is the package installed (pip install -e .)? {done.stderr}"
    script = Path(sys.executable).with_name("pnp")
    assert (
        subprocess.run([str(script), "--help"], capture_output=True, cwd=tmp_path, env=env, timeout=60).returncode == 0
    )


def test_several_images_are_each_translated_into_every_prompt(tmp_path, photo):
    photo.save(tmp_path / "house.png")
    photo.rotate(180).save(tmp_path / "barn.png")
    out = tmp_path / "out"
    done = run_cli(
        "translate",
        "--image",
        str(tmp_path / "house.png"),
        "--image",
        str(tmp_path / "barn.png"),
        "--prompt",
        "a cat",
        "--prompt",
        "a dog",
        "--out",
        str(out),
        "--quiet",
        *FAST,
    )
    assert done.returncode == 0, done.stderr
    assert [f.name for f in sorted(out.iterdir())] == [
        "00-house-a-cat.png",
        "01-house-a-dog.png",
        "02-barn-a-cat.png",
        "03-barn-a-dog.png",
    ]
