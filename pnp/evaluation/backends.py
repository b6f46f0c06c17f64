"""What every backend does the same way: the unit of work, its result, the ``--backend`` syntax, and image transport.

A backend takes jobs (one source and all its prompts, with the exact settings and seed) and
yields translations as they finish, in any order. The local backend runs ``PnPPipeline``, and the
Ray backend runs it in actors over a cluster (``pnp.evaluation.ray_backend``); the others send the
same settings to our Cog predictor (``pnp.app.form``) and get lossless PNGs back, so outputs are the
same whichever backend ran them. Torch-free.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from pnp.config import ConfigError, PnPConfig
from pnp.evaluation.benchmarks import Source
from pnp.evaluation.piebench import editing_mask
from pnp.images import load_mask_at

LOCAL = "local"
# The local backend translates real images with the same prompts and settings (ImageNet-R-TI2I's
# images of one class, say) together, in shared UNet calls; this many at most, to bound memory.
IMAGES_PER_CALL = 4
OUTPUT_TIMEOUT_S = 300
REPLICATE_PREFIX = "replicate:"
RAY = "ray"
# ray starts a local cluster; ray:auto joins the one this machine belongs to; ray:HOST:PORT a head
# node's GCS address (ray.init's addresses). Not ray://HOST:PORT: Ray Data does not run through Ray
# Client (its driver needs a core worker; ray-project/ray#48682), so the job would fail once started.
_RAY_ADDRESS = re.compile(r"^(auto|[\w.-]+:\d+)$")
RAY_CLIENT = "ray://"
BACKEND_SYNTAX = (
    "local, ray[:auto|:HOST:PORT], http://HOST:PORT[,http://HOST2:PORT...] or replicate:OWNER/MODEL[:VERSION]"
)
# OWNER/MODEL or OWNER/MODEL:VERSION, as Replicate names them.
_REPLICATE_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[0-9a-f]{16,64})?$")


@dataclass(frozen=True)
class Job:
    """One call: a source translated into all its prompts with ``config``; ``seed`` seeds a generated source's noise."""

    source: Source
    config: PnPConfig
    seed: int
    use_mask: bool = False  # edit only inside the source's own mask (PIE-Bench's, ``--use-masks``)


@dataclass
class Translation:
    """A finished job: one output per prompt, the generated source (generation mode) and who translated it.

    A backend that keeps going past a failed job (``pnp batch``) yields it with no outputs and the
    ``error`` that stopped it; the evaluation's backends raise instead.
    """

    job: Job
    outputs: list[Image.Image]
    generated_source: Image.Image | None
    worker: str
    error: str | None = None


@dataclass(frozen=True)
class BackendSpec:
    """A parsed ``--backend``: ``local``, a Ray cluster's address, a list of Cog server URLs, or a Replicate model."""

    kind: str  # "local", "ray", "http" or "replicate"
    urls: tuple[str, ...] = ()
    model: str | None = None
    address: str | None = None  # ray: None starts a local cluster


def parse_backend(text: str) -> BackendSpec:
    """Check ``--backend``'s syntax (nothing is contacted yet)."""
    text = text.strip()
    if text == LOCAL:
        return BackendSpec(LOCAL)
    if text == RAY or text.startswith("ray:"):
        return parse_ray_backend(text)
    if text.startswith(REPLICATE_PREFIX):
        model = text[len(REPLICATE_PREFIX) :]
        if not _REPLICATE_REF.match(model):
            raise ConfigError(
                "backend",
                f"{model!r} is not a Replicate model: use replicate:OWNER/MODEL or replicate:OWNER/MODEL:VERSION",
            )
        return BackendSpec("replicate", model=model)
    urls = tuple(url.strip().rstrip("/") for url in text.split(","))
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                "backend",
                f"{url!r} is not a server URL; use {BACKEND_SYNTAX}",
            )
    return BackendSpec("http", urls=urls)


def parse_ray_backend(text: str) -> BackendSpec:
    """``ray`` (a local cluster, started for the run), ``ray:auto`` or ``ray:HOST:PORT`` (a head node's GCS)."""
    if text == RAY:
        return BackendSpec(RAY)
    if text.startswith(RAY_CLIENT):
        raise ConfigError(
            "backend",
            f"{text!r}: Ray Data cannot run through Ray Client (ray://); run the command on a node of the "
            "cluster with ray:auto, submit it as a Ray job (ray job submit --address http://HEAD:8265 -- "
            "pnp ... --backend ray:auto), or join by the head's GCS address, ray:HEAD:6379",
        )
    address = text.removeprefix("ray:")
    if not _RAY_ADDRESS.match(address):
        raise ConfigError(
            "backend",
            f"{text!r} is not a Ray cluster's address; use ray (a local cluster), ray:auto or "
            "ray:HOST:PORT (the head node's GCS address)",
        )
    return BackendSpec(RAY, address=address)


def make_job(source: Source, base: PnPConfig, use_mask: bool = False) -> Job:
    """The job of ``source`` under the run's settings; a generated source brings its own prompt, scale, steps and
    seed. With ``use_mask`` a source with a mask (PIE-Bench's) is edited only inside it."""
    generation = source.generation
    if generation is None:
        mask = use_mask and source.mask is not None
        return Job(source, replace(base, prompt=source.prompts), seed=0, use_mask=mask)
    config = replace(
        base,
        prompt=source.prompts,
        generation_prompt=generation.prompt,
        generation_guidance_scale=generation.scale,
        num_inference_steps=generation.steps,
        num_inversion_steps=None,
    )
    return Job(source, config, generation.seed)


def job_mask(job: Job) -> Image.Image | None:
    """The mask a job's source is translated with: its mask file, or with ``use_mask`` its PIE-Bench region
    (``piebench.editing_mask``); None without either, or where the region is empty or the whole image."""
    if job.source.mask_file is not None:
        return load_mask_at(job.source.mask_file)
    if not job.use_mask:
        return None
    with Image.open(job.source.image) as image:  # the header gives the size
        width, height = image.size
    return editing_mask(job.source.mask, height, width)


def image_data_uri(image: Image.Image) -> str:
    """An image as a PNG data URI."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def file_data_uri(path: Path) -> str:
    """A file as a data URI, as `cog predict -i input_image=@file` sends it."""
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def encode_png(image: Image.Image) -> bytes:
    """An image as PNG bytes: lossless, so ``decode_image`` gives back the same pixels."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """An output file's bytes as an RGB image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def read_output(uri: str, session) -> bytes:
    """An output file's bytes, from a data URI or an http(s) URL fetched with ``session`` (a requests.Session)."""
    if uri.startswith("data:"):
        return data_uri_bytes(uri)
    response = session.get(uri, timeout=OUTPUT_TIMEOUT_S)
    response.raise_for_status()
    return response.content


def data_uri_bytes(uri: str) -> bytes:
    """The payload of a base64 data URI."""
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise ValueError(f"not a base64 data URI: {uri[:60]}...")
    return base64.b64decode(payload)


def split_outputs(job: Job, images: list[Image.Image], worker: str) -> Translation:
    """A predictor's output list as a Translation: in generation mode the generated source comes first."""
    expected = len(job.source.prompts) + (1 if job.config.generating else 0)
    if len(images) != expected:
        raise ValueError(f"{worker} returned {len(images)} images for {expected} expected")
    if job.config.generating:
        return Translation(job, images[1:], images[0], worker)
    return Translation(job, images, None, worker)


class BackendError(RuntimeError):
    """Translation failed in a way a retry elsewhere cannot fix; the message names the source and the cause."""
