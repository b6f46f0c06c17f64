"""Loading: local folders, hub ids offline, device and dtype choice, random models through the real loader."""

import pytest
import torch
from diffusers import DDIMScheduler

from pnp import devices
from pnp.devices import default_dtype
from pnp.models import ModelError
from pnp.pipeline import PnPPipeline
from pnp.random_models import build_random_pipeline


def load_pipeline(model, **kwargs):
    return PnPPipeline.from_pretrained(model, **kwargs)


def test_tiny_model_round_trips_through_the_loader(tiny_model_dir):
    built = build_random_pipeline("tiny")
    loaded = load_pipeline(tiny_model_dir, device="cpu", dtype="float32")
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(built, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert loaded.safety_checker is None
    assert loaded.tokenizer("a photo of a cat").input_ids == built.tokenizer("a photo of a cat").input_ids


def test_dtype_override_and_names(tiny_model_dir):
    assert load_pipeline(tiny_model_dir, device="cpu", dtype="bfloat16").unet.dtype == torch.bfloat16
    with pytest.raises(ModelError, match="dtype"):
        load_pipeline(tiny_model_dir, device="cpu", dtype="float8")


def test_default_dtype_follows_the_hardware(monkeypatch):
    assert default_dtype("cuda") == torch.float16
    monkeypatch.setattr(devices, "cpu_has_bfloat16", lambda: True)
    assert default_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bfloat16", lambda: False)
    assert default_dtype("cpu") == torch.float32


def test_missing_folder_and_offline_hub_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_pipeline(tmp_path / "nothing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a complete diffusers"):
        load_pipeline(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelError) as error:
        load_pipeline("CompVis/stable-diffusion-v1-4", device="cpu")
    message = str(error.value)
    assert "CompVis/stable-diffusion-v1-4" in message and "download-weights" in message
    assert "\n" not in message


def test_cuda_asked_for_without_a_gpu(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        load_pipeline(tiny_model_dir, device="cuda")


def test_v_prediction_models_are_refused(tmp_path):
    pipe = build_random_pipeline("tiny")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path / "v")
    with pytest.raises(ModelError, match="epsilon"):
        load_pipeline(tmp_path / "v", device="cpu")
