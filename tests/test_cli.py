"""The command line end to end on the tiny random model, in a subprocess as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pnp", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


FAST = ["--model", "tiny", "--steps", "3", "--resolution", "128", "--dtype", "float32"]


def test_translate_an_image_into_two_prompts(tmp_path, photo):
    photo.save(tmp_path / "in.jpg")
    out = tmp_path / "out"
    done = run_cli("translate", "--image", str(tmp_path / "in.jpg"), "--prompt", "a cat",
                   "--prompt", "a red car", "--out", str(out), *FAST)
    assert done.returncode == 0, done.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["00-a-cat.png", "01-a-red-car.png"]
    assert done.stdout.split() == [str(f) for f in files]
    for f in files:
        with Image.open(f) as image:
            assert image.format == "PNG" and image.size == (192, 128)  # 160x128 input, sides to multiples of 64
    assert "outputs are noise" in done.stderr
    assert "translation" in done.stderr  # progress bar


def test_generation_mode_writes_the_source_first(tmp_path):
    out = tmp_path / "gen"
    done = run_cli("translate", "--generation-prompt", "a horse", "--prompt", "a zebra", "--out", str(out),
                   "--format", "jpg", "--quality", "70", "--quiet", *FAST)
    assert done.returncode == 0, done.stderr
    assert [f.name for f in sorted(out.iterdir())] == ["00-source.jpg", "01-a-zebra.jpg"]
    with Image.open(out / "01-a-zebra.jpg") as image:
        assert image.format == "JPEG" and image.size == (128, 128)
    assert "translation" not in done.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "missing.png"], "error: image: no file at missing.png"),
        (["--image", "in.png", "--feature-injection-threshold", "1.5"], "error: feature_injection_threshold:"),
        (["--image", "in.png", "--steps", "50", "--inversion-steps", "70"], "error: inversion_steps:"),
        (["--image", "in.png", "--model", "./no-such-folder"], "error: model folder"),
        (["--image", "in.png", "--model", "someone/some-model"], "download-weights"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, photo, args, message):
    photo.save(tmp_path / "in.png")
    done = run_cli("translate", *args, "--prompt", "a cat", "--out", str(tmp_path / "out"),
                   "--quiet", "--dtype", "float32", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
