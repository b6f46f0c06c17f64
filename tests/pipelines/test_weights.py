"""Weights for the predictor: where they are looked for, and which files a download fetches.

The model hub is replaced by a local folder laid out like a diffusers repository on the hub,
with the extras a real one has (safety checker, .ckpt and .bin copies, float16 variants).
"""

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch

from pnp.pipelines.loading import ModelError
from pnp.pipelines.pipeline_pnp import PnPPipeline
from pnp.pipelines.random_models import build_random_pipeline
from pnp.pipelines.weights import SAFETY_CHECKER, download_weights, locate_weights, select_files
from support.models import build_random_safety_checker

# The layout of CompVis/stable-diffusion-v1-4 on the hub (main branch), file names only.
SD14_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "sd-v1-4.ckpt",
    "sd-v1-4-full-ema.ckpt",
    "v1-inference.yaml",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "safety_checker/model.fp16.safetensors",
    "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
]


def test_only_the_pipeline_files_are_selected_preferring_float16():
    assert sorted(select_files(SD14_FILES)) == sorted(
        [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
        ]
    )


def test_full_weights_are_taken_where_there_is_no_single_float16_file():
    files = [f for f in SD14_FILES if not f.endswith(".fp16.safetensors")]
    files += [
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    selected = select_files(files)
    assert "unet/diffusion_pytorch_model.safetensors" in selected
    assert "text_encoder/model.safetensors" in selected
    assert not any("fp16" in f or "non_ema" in f for f in selected)


def test_sharded_full_weights_come_with_their_index():
    shards = [
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
    ]
    files = [f for f in SD14_FILES if not f.startswith("unet/") or f.endswith(".json")] + shards
    assert [f for f in select_files(files) if f.startswith("unet/")] == ["unet/config.json", *shards]


def test_a_repository_without_safetensors_is_refused():
    files = [f for f in SD14_FILES if not f.startswith("unet/") or f.endswith((".json", ".bin"))]
    with pytest.raises(ModelError, match="unet"):
        select_files(files, "someone/old-model")


def stored_on_hub(kind: str, repo: Path) -> Path:
    """Random model ``kind`` stored as a hub repository: full and float16 weights, as Stable Diffusion's repositories
    have."""
    pipe = build_random_pipeline(kind)
    pipe.save_pretrained(repo)
    pipe.to(torch.float16).save_pretrained(repo, variant="fp16")
    return repo


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """A tiny model stored as a hub repository: full and float16 weights plus files the pipeline never loads."""
    repo = stored_on_hub("tiny", tmp_path_factory.mktemp("hub") / "repo")
    for junk in ("sd-v1-4.ckpt", "unet/diffusion_pytorch_model.bin", "safety_checker/model.safetensors"):
        (repo / junk).parent.mkdir(exist_ok=True)
        (repo / junk).write_bytes(b"never downloaded")
    return repo


class FakeHub:
    """Stands in for huggingface_hub's HfApi and snapshot_download: serves ``repo`` for any id but those in
    ``others``; records what was fetched."""

    def __init__(self, repo, fail_after=None, others=None):
        self.repo, self.fail_after, self.others, self.fetched = repo, fail_after, others or {}, []

    def _folder(self, model):
        return self.others.get(model, self.repo)

    def list_repo_files(self, model):
        folder = self._folder(model)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def snapshot_download(self, model, allow_patterns, local_dir):
        local_dir = Path(local_dir)
        for name in self.list_repo_files(model):
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                if self.fail_after is not None and len(self.fetched) == self.fail_after:
                    raise ConnectionError("connection reset by peer")
                (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(self._folder(model) / name, local_dir / name)
                self.fetched.append(f"{model}:{name}" if model in self.others else name)
        return str(local_dir)

    def serve(self, monkeypatch) -> "FakeHub":
        """Be the hub for the test: huggingface_hub's client answers from here, and the hub counts as reachable."""
        monkeypatch.setattr("huggingface_hub.HfApi", lambda: self)
        monkeypatch.setattr("huggingface_hub.snapshot_download", self.snapshot_download)
        monkeypatch.setattr("pnp.pipelines.weights.hub_unreachable", lambda: False)
        return self


@pytest.fixture(scope="module")
def checker_repo(tmp_path_factory):
    """CompVis/stable-diffusion-safety-checker's layout, with a tiny random checker: config, safetensors,
    preprocessor config, and a pickled copy that is never to be fetched."""
    repo = tmp_path_factory.mktemp("hub") / "checker"
    checker, extractor = build_random_safety_checker()
    checker.save_pretrained(repo)
    extractor.save_pretrained(repo)
    (repo / "pytorch_model.bin").write_bytes(b"never downloaded")
    return repo


@pytest.fixture
def fake_hub(hub_repo, checker_repo, monkeypatch):
    return FakeHub(hub_repo, others={SAFETY_CHECKER: checker_repo}).serve(monkeypatch)


def test_download_fetches_float16_files_that_load_as_the_default_weights(fake_hub, tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    (out / "README.md").write_text("kept")
    assert download_weights("owner/model", out) == out
    assert not any("ckpt" in f or ".bin" in f or "safety" in f for f in fake_hub.fetched)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    pipe = PnPPipeline.from_pretrained(out, device="cpu", dtype="float32")
    stored = build_random_pipeline("tiny").unet.to(torch.float16).state_dict()
    assert all(torch.equal(v.to(torch.float16), stored[k]) for k, v in pipe.unet.state_dict().items())


def test_an_interrupted_download_leaves_nothing_that_looks_complete(hub_repo, monkeypatch, tmp_path):
    FakeHub(hub_repo, fail_after=4).serve(monkeypatch)
    out = tmp_path / "weights"
    out.mkdir()
    (out / "README.md").write_text("kept")
    with pytest.raises(ModelError, match="downloading owner/model failed .*connection reset"):
        download_weights("owner/model", out)
    assert [p.name for p in out.iterdir()] == ["README.md"]
    with pytest.raises(ModelError):
        download_weights("owner/model", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_download_refuses_to_overwrite_a_model(fake_hub, tmp_path):
    download_weights("owner/model", tmp_path)
    with pytest.raises(ModelError, match="already holds a model"):
        download_weights("owner/model", tmp_path)


def test_weights_are_looked_for_in_order(fake_hub, tmp_path, monkeypatch):
    default = tmp_path / "weights"
    named = tmp_path / "elsewhere"
    named.mkdir()
    monkeypatch.setenv("PNP_WEIGHTS", str(named))
    assert locate_weights(default) == named
    assert not default.exists() and fake_hub.fetched == []

    monkeypatch.delenv("PNP_WEIGHTS")
    assert locate_weights(default, "owner/model") == default
    assert fake_hub.fetched and (default / "model_index.json").is_file()

    fake_hub.fetched.clear()
    assert locate_weights(default) == default
    assert fake_hub.fetched == []


def test_the_safety_checker_is_fetched_as_safetensors_and_loads(fake_hub, tmp_path):
    out = download_weights("owner/model", tmp_path / "weights", with_safety_checker=True)
    checker_files = sorted(f for f in fake_hub.fetched if f.startswith(SAFETY_CHECKER))
    assert checker_files == [
        f"{SAFETY_CHECKER}:{name}" for name in ("config.json", "model.safetensors", "preprocessor_config.json")
    ]
    assert sorted(p.name for p in (out / "safety_checker").iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in (out / "feature_extractor").iterdir()] == ["preprocessor_config.json"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["requires_safety_checker"] is True
    pipe = PnPPipeline.from_pretrained(out, device="cpu", dtype="float32")
    expected = build_random_safety_checker()[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pipe.safety_checker.state_dict().items())
    assert pipe.feature_extractor is not None


def test_a_model_folder_can_gain_the_safety_checker_later(fake_hub, tmp_path):
    out = download_weights("owner/model", tmp_path / "weights")
    assert PnPPipeline.from_pretrained(out, device="cpu", dtype="float32").safety_checker is None
    fake_hub.fetched.clear()
    download_weights("owner/model", out, with_safety_checker=True)
    assert all(f.startswith(SAFETY_CHECKER) for f in fake_hub.fetched)  # the model itself is not fetched again
    assert PnPPipeline.from_pretrained(out, device="cpu", dtype="float32").safety_checker is not None


@pytest.fixture(scope="module")
def sdxl_repo(tmp_path_factory):
    """A tiny SDXL model stored as a hub repository, with float16 variants as stabilityai's SDXL repositories have."""
    return stored_on_hub("tiny-sdxl", tmp_path_factory.mktemp("hub") / "sdxl")


def test_an_sdxl_download_has_both_text_encoders_and_loads_as_the_xl_pipeline(sdxl_repo, monkeypatch, tmp_path):
    hub = FakeHub(sdxl_repo).serve(monkeypatch)
    out = download_weights("stabilityai/sdxl", tmp_path / "weights")
    assert sorted(p.name for p in out.iterdir()) == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "unet",
        "vae",
    ]
    assert sorted(p.name for p in (out / "text_encoder_2").iterdir()) == ["config.json", "model.safetensors"]
    assert not any(f.endswith("model.safetensors") and "fp16" not in f for f in hub.fetched if "text_encoder" in f)
    pipe = PnPPipeline.from_pretrained(out, device="cpu", dtype="float32")
    assert type(pipe).__name__ == "PnPXLPipeline"
    stored = build_random_pipeline("tiny-sdxl").text_encoder_2.to(torch.float16).state_dict()
    assert all(torch.equal(v.to(torch.float16), stored[k]) for k, v in pipe.text_encoder_2.state_dict().items())
    with pytest.raises(ModelError, match="SDXL pipelines have no safety checker"):
        download_weights("stabilityai/sdxl", tmp_path / "checked", with_safety_checker=True)
    assert not (tmp_path / "checked").exists()
