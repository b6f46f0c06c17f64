"""Where the predictor's Stable Diffusion weights (1.x, 2.x or SDXL) come from, and fetching only the files a pipeline
needs.

Order of preference: the folder named by ``PNP_WEIGHTS``; else the project's ``weights/`` folder if
it holds a model; else the model is downloaded from the model hub into ``weights/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pnp.messages import first_line
from pnp.pipelines.hub import hub_host, hub_unreachable
from pnp.pipelines.loading import BUNDLED_MODELS, DEFAULT_MODEL, ModelError

WEIGHTS_ENV = "PNP_WEIGHTS"
MODEL_ENV = "PNP_MODEL"
# A diffusers folder counts as present only once this file is in place; downloads move it in last.
MARKER = "model_index.json"
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
WHOLE_COMPONENTS = ("tokenizer", "scheduler")
# SDXL's second text encoder and tokenizer: fetched where the repository has them.
SDXL_WEIGHT_COMPONENTS = ("text_encoder_2",)
SDXL_WHOLE_COMPONENTS = ("tokenizer_2",)
FP16_SUFFIX = ".fp16.safetensors"
SAFETY_CHECKER = "CompVis/stable-diffusion-safety-checker"
# How model_index.json lists a safety checker, as Stable Diffusion's own repositories do.
SAFETY_CHECKER_COMPONENTS = {
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "requires_safety_checker": True,
}


def locate_weights(default_folder: str | Path, model: str | None = None) -> Path:
    """The diffusers folder to load: ``$PNP_WEIGHTS``, else ``default_folder``, downloading ``model`` into it if empty.

    ``model`` defaults to ``$PNP_MODEL``, else Stable Diffusion v1.4; a bundled model's name (``toy``)
    gives its folder inside the package, nothing downloaded. Raises ModelError with
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
    model = model or os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL
    if model in BUNDLED_MODELS:
        return BUNDLED_MODELS[model]
    folder = Path(default_folder)
    if (folder / MARKER).is_file():
        return folder
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


def download_weights(model: str, out: str | Path, with_safety_checker: bool = False) -> Path:
    """Download the files a Stable Diffusion pipeline loads from ``model`` (a model-hub id) into ``out``.

    Fetches model_index.json, the tokenizer and scheduler, and for the UNet, VAE and text
    encoder (SDXL: both tokenizers and text encoders) their config and safetensors weights: the
    float16 file where the repository has one
    (half the download; it is renamed so it loads as the default weights), else the full ones.
    Nothing else: no safety checker, no .ckpt or .bin copies. With ``with_safety_checker``, also
    CompVis/stable-diffusion-safety-checker's config and safetensors weights (into
    ``safety_checker/``) and its preprocessor config (into ``feature_extractor/``); a folder that
    already holds a model then gains only the checker. Files are downloaded into a temporary
    folder inside ``out`` and moved into place at the end, model_index.json last, so an
    interrupted download never leaves a folder that looks complete.
    """
    out = Path(out)
    has_model = (out / MARKER).exists()
    if has_model and not with_safety_checker:
        raise ModelError(f"{out} already holds a model ({MARKER}); delete it first to download again")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".download-", suffix=".partial", dir=out))
    try:
        if not has_model:
            for name in _fetch(model, select_files, partial):
                if name.endswith(FP16_SUFFIX):
                    (partial / name).rename(partial / name.replace(FP16_SUFFIX, ".safetensors"))
        if with_safety_checker:
            _add_safety_checker(partial, index=out / MARKER if has_model else partial / MARKER)
        _move_into(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return out


def _fetch(repo: str, choose, folder: Path) -> list[str]:
    """Download the files ``choose(repo_files, repo)`` selects from ``repo`` into ``folder``; returns their names."""
    from huggingface_hub import HfApi, snapshot_download

    if hub_unreachable():
        raise ModelError(f"downloading {repo} failed (the model hub, {hub_host()}, cannot be reached: offline?)")
    # The hub client raises errors from several libraries (its own, httpx, OSError); to the
    # user they all mean the same thing: the weights could not be fetched.
    try:
        files = choose(HfApi().list_repo_files(repo), repo)
        snapshot_download(repo, allow_patterns=files, local_dir=folder)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"downloading {repo} failed ({first_line(err)})") from err
    return files


def _add_safety_checker(partial: Path, index: Path) -> None:
    """Fetch the safety checker into ``partial``'s component folders and list it in a new model_index.json there."""
    components = json.loads(index.read_text())
    if "text_encoder_2" in components:
        raise ModelError("SDXL pipelines have no safety checker; download the model without --with-safety-checker")
    staging = partial / ".safety-checker"
    _fetch(SAFETY_CHECKER, select_safety_checker_files, staging)
    for component in ("safety_checker", "feature_extractor"):
        (partial / component).mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        (staging / name).replace(partial / "safety_checker" / name)
    (staging / "preprocessor_config.json").replace(partial / "feature_extractor" / "preprocessor_config.json")
    components.update(SAFETY_CHECKER_COMPONENTS)
    (partial / MARKER).write_text(json.dumps(components, indent=2) + "\n")


def select_safety_checker_files(repo_files: list[str], repo: str = SAFETY_CHECKER) -> list[str]:
    """The safety checker's config, safetensors weights and preprocessor config (no pickled .bin)."""
    needed = ["config.json", "model.safetensors", "preprocessor_config.json"]
    missing = [name for name in needed if name not in repo_files]
    if missing:
        raise ModelError(f"{repo} lacks {', '.join(missing)}; the safety checker is loaded from safetensors only")
    return needed


def select_files(repo_files: list[str], model: str = "the model") -> list[str]:
    """The files of a diffusers Stable Diffusion repository that the pipeline needs; see ``download_weights``."""
    files = set(repo_files)
    if MARKER not in files:
        raise ModelError(f"{model} is not a diffusers model repository (no {MARKER})")
    selected = [MARKER]
    present = {f.partition("/")[0] for f in files if "/" in f}
    for component in (*WHOLE_COMPONENTS, *(c for c in SDXL_WHOLE_COMPONENTS if c in present)):
        selected += sorted(f for f in files if f.startswith(f"{component}/"))
    for component in (*WEIGHT_COMPONENTS, *(c for c in SDXL_WEIGHT_COMPONENTS if c in present)):
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
    """Default-variant weights: model.safetensors, its shards and their index; not model.fp16.safetensors or
    model.non_ema.safetensors."""
    stem = name.removesuffix(".safetensors").removesuffix(".safetensors.index.json")
    return stem != name and "." not in stem
