"""What the Cog server hands predict() for a request's inputs, and how predict.py takes it.

Facts about coglet 0.23.1 (the Cog server; its Python side is `coerce_typed_inputs` and
`download_url_paths_into_dict` in cog's crates/coglet-python/src/input.rs, with cog.types),
checked over HTTP by tests/test_cog_server.py:

- A `Path` input given as an http(s) URL or a data: URI is fetched or decoded by the worker
  before predict() runs, into ``tempfile.NamedTemporaryFile(suffix=NAME)`` in the worker's
  temporary folder: ``<tempdir>/tmpXXXXXXXXNAME``, where NAME is the URL's last path segment, or
  ``file.<ext>`` for a data URI (``ext`` from its media type). predict() gets a cog.Path to that
  file, which records nothing else of its origin; Cog deletes the file after the prediction.
- Any other string (``/etc/passwd``, ``file:///etc/passwd``, ``x.png``) reaches predict() as it is,
  a ``str`` (cog 0.19.3's PrimitiveType.normalize made it a cog.Path): a path on the server, which
  a request must never read.
- The schema's "integer" is JSON Schema's, which admits 2.0; predict() then gets the float 2.0.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import PurePath

from PIL import Image

from pnp.config import ConfigError
from pnp.images import ImageError, load_image
from pnp.pipelines.lora import check_lora_file

# NamedTemporaryFile's name: "tmp", 8 characters of tempfile's alphabet, then the suffix.
_REQUEST_FILE = re.compile(r"tmp[a-z0-9_]{8}(?P<name>.*)", re.DOTALL)
# cog.types.get_filename's name for a data URI (and for a URL without a file name: "").
_NAMELESS = re.compile(r"(file(\.[A-Za-z0-9+-]+)?)?")
REFUSED = "only a file the request brings is read: an upload, a data: URI or an http(s) URL, not a path on the server"


def read_request_image(value: object, resolution: int | None = None) -> Image.Image:
    """The image in the file Cog made from the request's ``input_image``; ImageError("image", ...) otherwise.

    The file must be one that Cog wrote from the request (see the module docstring); anything
    else is refused before any file is looked at, so the answer never tells whether a path exists.
    Error messages call the file by the name the user gave it, not by Cog's temporary name.
    Given the ``resolution``, the image is read at its working size (``pnp.images.load_image``).
    """
    name = _request_file_name(value, ImageError("image", REFUSED))
    if os.path.getsize(value) == 0:
        raise ImageError("image", f"{name} is empty: no bytes arrived (with a data: URI, check its base64)")
    return load_image(value, resolution, name=name)


def whole_number(value: object) -> object:
    """An integer input: JSON's 2.0 as 2 (the schema admits it, see above); anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def request_lora_file(value: object):
    """The LoRA file Cog made from the request's ``lora_weights``, as (path, the name the user gave it); ConfigError otherwise.

    The same rule as images: only a file the request brought is read.
    """
    name = _request_file_name(value, ConfigError("lora_weights", REFUSED))
    if not name.lower().endswith(".safetensors"):
        raise ConfigError("lora_weights", f"{name} is not a .safetensors file; LoRA adapters are read from safetensors only")
    return check_lora_file(value, "lora_weights", name=name), name


def _request_file_name(value: object, refused: ConfigError) -> str:
    if isinstance(value, PurePath):
        # Lexical checks only: nothing on the disk is looked at before the file is known to be Cog's.
        path = os.path.abspath(value)
        folder, base = os.path.split(path)
        match = _REQUEST_FILE.fullmatch(base)
        if match and folder == os.path.abspath(tempfile.gettempdir()):
            return "the uploaded file" if _NAMELESS.fullmatch(match["name"]) else match["name"]
    raise refused
