"""Where the predictor's Stable Diffusion weights come from, and fetching only the files a pipeline needs.

Order of preference: the folder named by ``PNP_WEIGHTS``; else the project's ``weights/`` folder if
it holds a model; else the model is downloaded from the model hub into ``weights/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .models import DEFAULT_MODEL, ModelError, first_line

WEIGHTS_ENV = "PNP_WEIGHTS"
MODEL_ENV = "PNP_MODEL"
# A diffusers folder counts as present only once this file is in place; downloads move it in last.
MARKER = "model_index.json"
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
WHOLE_COMPONENTS = ("tokenizer", "scheduler")
FP16_SUFFIX = ".fp16.safetensors"


def locate_weights(default_folder: str | Path, model: str | None = None) -> Path:
    """The diffusers folder to load: ``$PNP_WEIGHTS``, else ``default_folder``, downloading ``model`` into it if empty.

    ``model`` defaults to ``$PNP_MODEL``, else Stable Diffusion v1.4. Raises ModelError with
    instructions when ``$PNP_WEIGHTS`` names no folder or the download fails (for example offline).
    """
    named = os.environ.get(WEIGHTS_ENV, "").strip()
    if named:
        folder = Path(named).expanduser()
        if not folder.is_dir():
            raise ModelError(
                f"{WEIGHTS_ENV}={named} is not a folder; point it at a diffusers Stable Diffusion folder "
                f"(as written by `python -m pnp download-weights`), or unset it to use {default_folder}"
            )
        return folder
    folder = Path(default_folder)
    if (folder / MARKER).is_file():
        return folder
    model = model or os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL
    print(f"No weights in {folder} and {WEIGHTS_ENV} is not set: downloading {model} into {folder}")
    try:
        return download_weights(model, folder)
    except ModelError as err:
        raise ModelError(
            f"no Stable Diffusion weights: {err}. Supply them in one of these ways: run "
            f"`python -m pnp download-weights --model {model} --out {folder}` on a machine with internet "
            f"access (before `cog build`, so they are baked into the image); or set {WEIGHTS_ENV} to a "
            "diffusers model folder"
        ) from None


def download_weights(model: str, out: str | Path) -> Path:
    """Download the files a StableDiffusionPipeline loads from ``model`` (a model-hub id) into ``out``.

    Fetches model_index.json, the tokenizer and scheduler, and for the UNet, VAE and text
    encoder their config and safetensors weights: the float16 file where the repository has one
    (half the download; it is renamed so it loads as the default weights), else the full ones.
    Nothing else: no safety checker, no .ckpt or .bin copies. Files are downloaded into a
    temporary folder inside ``out`` and moved into place at the end, model_index.json last,
    so an interrupted download never leaves a folder that looks complete.
    """
    from huggingface_hub import HfApi, snapshot_download

    out = Path(out)
    if (out / MARKER).exists():
        raise ModelError(f"{out} already holds a model ({MARKER}); delete it first to download again")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".download-", suffix=".partial", dir=out))
    try:
        # The hub client raises errors from several libraries (its own, httpx, OSError); to the
        # user they all mean the same thing: the weights could not be fetched.
        try:
            files = select_files(HfApi().list_repo_files(model), model)
            snapshot_download(model, allow_patterns=files, local_dir=partial)
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001
            raise ModelError(f"downloading {model} failed ({first_line(err)})") from err
        for name in files:
            if name.endswith(FP16_SUFFIX):
                (partial / name).rename(partial / name.replace(FP16_SUFFIX, ".safetensors"))
        _move_into(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return out


def select_files(repo_files: list[str], model: str = "the model") -> list[str]:
    """The files of a diffusers Stable Diffusion repository that the pipeline needs; see ``download_weights``."""
    files = set(repo_files)
    if MARKER not in files:
        raise ModelError(f"{model} is not a diffusers model repository (no {MARKER})")
    selected = [MARKER]
    for component in WHOLE_COMPONENTS:
        selected += sorted(f for f in files if f.startswith(f"{component}/"))
    for component in WEIGHT_COMPONENTS:
        own = sorted(f for f in files if f.rpartition("/")[0] == component)
        fp16 = [f for f in own if f.endswith(FP16_SUFFIX)]
        full = [f for f in own if _is_plain_safetensors(f.rpartition("/")[2])]
        # Sharded float16 weights are skipped: renaming them would break their index file.
        weights = fp16 if len(fp16) == 1 else full
        if f"{component}/config.json" not in files or not weights:
            raise ModelError(f"{model} has no config.json and safetensors weights for its {component}")
        selected += [f"{component}/config.json", *weights]
    return selected


def _move_into(source: Path, target: Path) -> None:
    """Move the downloaded entries of ``source`` into ``target``, replacing same-named ones, MARKER last."""
    entries = sorted((p for p in source.iterdir() if not p.name.startswith(".")), key=lambda p: p.name == MARKER)
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir():
            shutil.rmtree(destination)
        entry.replace(destination)



def _is_plain_safetensors(name: str) -> bool:
    """Default-variant weights: model.safetensors, its shards and their index; not model.fp16.safetensors or model.non_ema.safetensors."""
    stem = name.removesuffix(".safetensors").removesuffix(".safetensors.index.json")
    return stem != name and "." not in stem
