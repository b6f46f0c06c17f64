"""Loading the metric models by model-hub id or local folder, or as random-weight stand-ins; LPIPS; the whole suite.

A hub id downloads once into the Hugging Face cache; a folder loads offline. Where neither works
(offline, no cache) the ModelError says how to provide the model. ``tiny`` builds a random-weight
model (``random_metric_models``) into a temporary folder and loads it the same way.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from pnp.evaluation.benchmarks import PIE_BENCH
from pnp.evaluation.metrics import MetricSuite
from pnp.messages import first_line
from pnp.pipelines.loading import ModelError

# CLIP ViT-L/14: the model of PIE-Bench's CLIP scores, used for the paper's cosine too (one model, one load).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
# DINO ViT-B/8: Splice's structure model, which PIE-Bench uses as well.
DEFAULT_DINO_MODEL = "facebook/dino-vitb8"
RANDOM = "tiny"


def load_clip(name: str, device: str):
    """(CLIPModel, CLIPProcessor) of ``name`` on ``device``, in float32 and eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    from pnp.evaluation.random_metric_models import save_random_clip

    with _located(name, "--clip-model", save_random_clip) as (where, options):
        model = CLIPModel.from_pretrained(where, **options)
        processor = CLIPProcessor.from_pretrained(where, **options)
    return model.to(device).eval(), processor


def load_dino(name: str, device: str):
    """The ViTModel of ``name`` on ``device``, in float32 and eval mode."""
    from transformers import ViTModel

    from pnp.evaluation.random_metric_models import save_random_dino

    with _located(name, "--dino-model", save_random_dino) as (where, options):
        model = ViTModel.from_pretrained(where, add_pooling_layer=False, **options)
    return model.to(device).eval()


@contextmanager
def _located(name: str, flag: str, save_random):
    """Where to load ``name`` from and with which options; loading errors become a ModelError saying what to do."""
    with tempfile.TemporaryDirectory(prefix="pnp-metric-model-") as tmp:
        if name == RANDOM:
            where, options = save_random(Path(tmp) / RANDOM), {"local_files_only": True}
        elif Path(name).expanduser().is_dir():
            where, options = str(Path(name).expanduser()), {"local_files_only": True}
        elif name.startswith((".", "/", "~")):
            raise ModelError(
                f"{flag}: no model folder at {name}; pass a model-hub id or a folder holding a transformers model"
            )
        else:
            where, options = name, {}
        try:
            yield where, options
        except (OSError, ValueError) as err:
            if options:
                raise ModelError(
                    f"{flag}: {name} is not a complete transformers model folder ({first_line(err)})"
                ) from None
            raise ModelError(
                f"{flag}: model {name!r} is not in the local Hugging Face cache and could not be fetched from the "
                f"model hub. On a machine with internet access run `hf download {name} --local-dir <folder>` and "
                f"pass {flag} <folder>; or pass {flag} {RANDOM} for random weights (meaningless scores, for testing)"
            ) from None


def load_lpips(device: str):
    """torchmetrics' LPIPS with the SqueezeNet backbone (PIE-Bench's), as a function of two [-1, 1] image batches.

    Raises MetricUnavailable with the reason and the remedy where it cannot be set up: it needs
    torchvision (whose CPU builds are not on PyPI) and downloads the backbone's ImageNet weights.
    """
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type="squeeze").to(device).eval()
    except Exception as err:  # noqa: BLE001  (ImportError, torchvision's RuntimeError, download errors: all "unavailable")
        raise MetricUnavailable(
            f"LPIPS cannot be computed here ({first_line(err)}): it needs torchvision built for the installed "
            "torch (on a CUDA machine: the torchvision release paired with it from PyPI) and, once, internet "
            "access for SqueezeNet's ImageNet weights (or that file in torch's hub cache)"
        ) from None
    return metric


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed in this environment; the message says why and what would make it work."""


def load_metric_suite(
    kind: str, clip_model: str, dino_model: str, variants: tuple[str, ...], device: str, warn, toy: bool = False
) -> MetricSuite:
    """Load the models a benchmark of ``kind`` needs; LPIPS (PIE-Bench only) is skipped with a warning where
    unavailable. ``toy``: add the toy scorer's columns (they need no model)."""
    from pnp.evaluation.clip import ClipSimilarity
    from pnp.evaluation.structure import StructureDistance

    suite = MetricSuite(
        ClipSimilarity(*load_clip(clip_model, device)),
        StructureDistance(load_dino(dino_model, device)),
        variants,
        toy=toy,
    )
    if kind == PIE_BENCH:
        try:
            suite.lpips = load_lpips(device)
        except MetricUnavailable as err:
            suite.unavailable["lpips"] = str(err)
            warn(f"{err}; the lpips column stays empty")
    return suite
