"""Writing what a run makes: output images (format, quality, names), files written whole, and the folder a run
writes into, which must not hold an earlier run's files. Shared by the CLI, the predictor, the UI and the evaluation.

Torch-free. Output names start with their zero-padded position, so they sort in output order:
the generated source first (generation mode), then one image per prompt, in prompt order.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from PIL import Image

from pnp.config import ConfigError, check_choice, check_int

OUTPUT_FORMATS = ("png", "webp", "jpg")
QUALITY_RANGE = (1, 100)  # of webp and jpg outputs, both ends allowed
_PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}
# What a name this module writes looks like; used to find an earlier run's outputs.
_OUTPUT_NAME = re.compile(r"^\d{2,}-[a-z0-9-]+\.(png|webp|jpg)$")


@dataclass(frozen=True)
class OutputOptions:
    """How output images are written: png (lossless), webp or jpg with a quality from 1 to 100."""

    output_format: str = "png"
    output_quality: int = 90

    def __post_init__(self) -> None:
        check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        check_int("output_quality", self.output_quality, *QUALITY_RANGE)


def output_names(prompts, with_source: bool, output_format: str, images: list[str] | None = None) -> list[str]:
    """File names in output order: ``00-source.png`` (if any), then ``NN-<prompt slug>.png`` per prompt.

    With several input ``images`` (their labels, e.g. file stems), one name per image and prompt,
    image by image: ``NN-<image>-<prompt slug>.png``.
    """
    labels = output_labels(prompts, with_source, images)
    return [f"{i:02d}-{label}.{output_format}" for i, label in enumerate(labels)]


def output_labels(prompts, with_source: bool, images: list[str] | None = None) -> list[str]:
    """The labels of output names, in output order: ``source`` (if any), then each prompt's slug
    (with several ``images``, each image's label and slug, then each prompt's)."""
    if images and len(images) > 1:
        targets = [f"{slug(image)}-{slug(p)}" for image in images for p in prompts]
    else:
        targets = [slug(p) for p in prompts]
    return (["source"] if with_source else []) + targets


def slug(text: str, length: int = 48) -> str:
    """A file-name-safe label for a prompt: lower case, letters and digits joined by '-'."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return label[:length].rstrip("-") or "prompt"


@dataclass(frozen=True)
class OutputFolder:
    """A folder checked before a run (``check_output_folder``), and the earlier run's outputs there that it replaces."""

    path: Path
    replaces: tuple[Path, ...] = ()


def check_output_folder(folder: str | Path, overwrite: bool = False) -> OutputFolder:
    """Make sure a run's outputs can be written and cannot be mixed up with an earlier run's, before any work starts.

    The folder may be new (it must then be creatable) or hold no earlier outputs; with
    ``overwrite``, earlier outputs (files named as this module names them) are replaced, once the
    new ones are all written (``write_outputs``). Anything else in the folder is left alone.
    """
    return check_run_folder(folder, lambda path: bool(_OUTPUT_NAME.match(path.name)), overwrite, "outputs")


def check_run_folder(folder: str | Path, earlier: Callable[[Path], bool], overwrite: bool, what: str) -> OutputFolder:
    """Before any work: a folder that ``what`` can be written into, holding no earlier run's files unless ``overwrite``.

    ``earlier`` tells an earlier run's files (and folders) among the folder's entries; with
    ``overwrite`` they are what the returned OutputFolder replaces, once the new files are written.
    """
    folder = check_writable_folder(folder, what)
    found = sorted(p for p in folder.iterdir() if earlier(p)) if folder.is_dir() else []
    if found and not overwrite:
        refuse_earlier_run(folder, f"already holds {what} of an earlier run ({found[0].name}, ...)")
    return OutputFolder(folder, tuple(found))


def refuse_earlier_run(folder: Path, holds: str) -> NoReturn:
    """Raise ConfigError("out"): ``folder`` holds another run's files, as ``holds`` says; it says what to do."""
    raise ConfigError("out", f"{folder} {holds}; choose another folder, or pass --overwrite to replace them")


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """``folder`` if it is a folder this process can write ``what`` into, or one it can make; ConfigError("out") if not.

    Probed by making and removing a folder in it, or in its nearest existing parent: nothing is left behind.
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        if existing == folder:
            raise ConfigError("out", f"{folder} is a file, not a folder; name a folder for the {what}")
        raise ConfigError(
            "out", f"{folder} cannot be made: {existing} is a file, not a folder; name a folder for the {what}"
        )
    try:
        Path(tempfile.mkdtemp(prefix=".pnp-probe-", dir=existing)).rmdir()
    except OSError as err:
        made = "" if existing == folder else f"{folder} cannot be made: "
        raise ConfigError(
            "out",
            f"{made}nothing can be written into {existing} ({err.strerror or err}); choose a folder you can write to",
        ) from None
    return folder


def write_outputs(
    result, prompts, folder: str | Path | OutputFolder, options: OutputOptions, images: list[str] | None = None
) -> list[Path]:
    """Write a pipeline result's generated source (if any) and translations (PIL images) into ``folder``, all or none.

    ``images`` labels the input images when there are several (see ``output_names``). ``folder`` is
    created if missing; an ``OutputFolder``'s earlier outputs are replaced (see ``all_or_nothing``).
    Returns the paths in output order.
    """
    target = as_output_folder(folder)
    with_source = result.source_image is not None
    outputs = ([result.source_image] if with_source else []) + list(result.images)
    names = output_names(prompts, with_source, options.output_format, images)
    with all_or_nothing(target) as staging:
        for image, name in zip(outputs, names, strict=True):
            save_image(image, staging / name, options)
    return [target.path / name for name in names]


@contextmanager
def all_or_nothing(folder: str | Path | OutputFolder) -> Iterator[Path]:
    """A hidden folder inside ``folder`` to write a run's files into: they appear in ``folder`` together, or not at all.

    When the block ends without an error, the earlier outputs an ``OutputFolder`` replaces are
    deleted and everything written is moved into ``folder`` (renames, on the same file system). On
    an error (a full disk, say) nothing is moved or deleted, nothing half-written stays, ``folder``
    is removed again if this made it, and an OSError names the file that failed by its final path.
    """
    target = as_output_folder(folder)
    made = [p for p in (target.path, *target.path.parents) if not p.exists()]  # deepest first
    staging = None
    try:
        target.path.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pnp-writing-", dir=target.path))
        try:
            yield staging
        except OSError as err:
            if err.filename is not None and Path(err.filename).is_relative_to(staging):
                err.filename = str(target.path / Path(err.filename).relative_to(staging))
            raise
        for path in target.replaces:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        for entry in sorted(staging.iterdir()):
            entry.replace(target.path / entry.name)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for path in made:  # only what is still empty: nothing of this run was moved in
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def as_output_folder(folder: str | Path | OutputFolder) -> OutputFolder:
    """``folder`` as an OutputFolder (a plain path replaces nothing)."""
    return folder if isinstance(folder, OutputFolder) else OutputFolder(Path(folder))


def save_image(image: Image.Image, path: str | Path, options: OutputOptions) -> Path:
    """Write one image in the options' format, whole or not at all; an OSError names ``path``."""
    buffer = io.BytesIO()
    extra = {} if options.output_format == "png" else {"quality": options.output_quality}
    try:
        image.save(buffer, _PIL_FORMATS[options.output_format], **extra)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None  # an encoder names no file
    return write_atomic(path, buffer.getvalue())


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole or not at all: into ``path.partial``, then renamed.

    The folder is made if missing. On failure nothing is left behind, and the OSError names ``path``.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data.encode() if isinstance(data, str) else data)
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        # A write() that fails (a full disk) names no file: name the one being written.
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    return path
