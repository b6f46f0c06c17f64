"""Single-file checkpoints: one original-layout file of the tiny model loads through diffusers'
from_single_file with the folder as its base configuration, holds exactly the folder's weights and
translates as the folder does; pickles only when allowed; offline without a configuration, the error says what to pass.

diffusers reads these files but cannot write them (tests/ldm_checkpoint.py says why), so the test
writes the file itself, in the original key layout.
"""

import pytest
import torch
from safetensors.torch import load_file

from pnp.pipelines.loading import ModelError
from pnp.pipelines.pipeline_pnp import PnPPipeline
from support.cli import run_cli
from support.ldm_checkpoint import write_ldm_checkpoint
from support.models import INSTANCE_TOLERANCE, load_tiny

SETTINGS = dict(prompt=["a cat", "a dog"], num_inference_steps=3, resolution=128, output_type="latent")


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "tiny.safetensors"
    write_ldm_checkpoint(pipe, path)
    return path


def load(path, **kwargs):
    single = PnPPipeline.from_single_file(path, device="cpu", dtype="float32", **kwargs)
    single.set_progress_bar_config(disable=True)
    single.set_source_cache(0)
    return single


def test_a_single_file_holds_its_folders_weights_and_translates_alike(pipe, checkpoint, tiny_model_dir, photo):
    single = load(checkpoint, config=tiny_model_dir)
    assert type(single) is PnPPipeline and single.safety_checker is None
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in load_file(str(checkpoint))  # the original layout
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(single, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    # The same values from another file: each weight sits at another alignment (INSTANCE_TOLERANCE).
    torch.testing.assert_close(
        single(image=photo, **SETTINGS).images, pipe(image=photo, **SETTINGS).images, **INSTANCE_TOLERANCE
    )


def test_pickled_checkpoints_load_only_when_allowed(checkpoint, tiny_model_dir, tmp_path):
    pickled = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(checkpoint))}, pickled)
    with pytest.raises(ModelError, match="pickled checkpoint, which is not loaded by default.*--allow-pickle"):
        load(pickled, config=tiny_model_dir)
    single = load(pickled, config=tiny_model_dir, allow_pickle=True)
    expected = load_tiny(tiny_model_dir).unet.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in single.unet.state_dict().items())


def test_offline_without_a_configuration_the_error_says_what_to_pass(checkpoint):
    with pytest.raises(ModelError) as error:
        load(checkpoint)
    message = str(error.value)
    assert "\n" not in message and "Offline, pass --config" in message and "download-weights" in message


def test_cli_loads_a_single_file_with_its_configuration(checkpoint, tiny_model_dir, tmp_path, photo):
    photo.save(tmp_path / "in.png")
    args = [
        "translate",
        "--image",
        "in.png",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--resolution",
        "128",
        "--dtype",
        "float32",
        "--quiet",
    ]
    done = run_cli(*args, "--out", "out", "--model", str(checkpoint), "--config", str(tiny_model_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "00-a-cat.png").exists()
    for extra, message in (
        (
            ["--model", "tiny", "--config", str(tiny_model_dir)],
            "error: --config: a base configuration is only for a single-file --model",
        ),
        (["--model", str(tmp_path / "missing.safetensors")], "error: model file"),
        (["--model", str(tmp_path / "in.ckpt")], "does not exist"),
    ):
        done = run_cli(*args, "--out", "bad", *extra, cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr
    assert not (tmp_path / "bad").exists()
