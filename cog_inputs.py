"""What the Cog server hands predict() for a request's inputs, and how predict.py takes it.

Facts about coglet 0.23.1 (the Cog server; its Python side is `coerce_typed_inputs` and
`download_url_paths_into_dict` in cog's crates/coglet-python/src/input.rs, with cog.types),
checked over HTTP by tests/test_cog_server.py:

- A `Path` input given as an http(s) URL or a data: URI is fetched or decoded by the worker
  before predict() runs, into ``tempfile.NamedTemporaryFile(suffix=NAME)`` in the worker's
  temporary folder: ``<tempdir>/tmpXXXXXXXXNAME``, where NAME is the URL's last path segment, or
  ``file.<ext>`` for a data URI (``ext`` from its media type). predict() gets a cog.Path to that
  file, which records nothing else of its origin; Cog deletes the file after the prediction.
- Only text that starts with exactly ``http://``, ``https://`` or ``data:`` counts as a URL there
  (coglet's input.rs compares the prefix), though URL schemes are case-insensitive: ``HTTP://...``
  reaches predict() as a ``str``, and ``fetch_url`` fetches it as Cog would have.
- Any other string (``/etc/passwd``, ``file:///etc/passwd``, ``x.png``) reaches predict() as it is,
  a ``str`` (cog 0.19.3's PrimitiveType.normalize made it a cog.Path): a path on the server, which
  a request must never read.
- The schema's "integer" is JSON Schema's, which admits 2.0; predict() then gets the float 2.0 (the form's
  parser, ``pnp.app.form.whole_number``, reads it as 2).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path, PurePath

from cog.types import Path as CogPath
from cog.types import get_filename
from PIL import Image

from pnp.config import ConfigError
from pnp.images import ImageError, load_image
from pnp.pipelines.weight_files import safetensors_problem

# NamedTemporaryFile's name: "tmp", 8 characters of tempfile's alphabet, then the suffix.
_REQUEST_FILE = re.compile(r"tmp[a-z0-9_]{8}(?P<name>.*)", re.DOTALL)
# cog.types.get_filename's name for a data URI (and for a URL without a file name: "").
_NAMELESS = re.compile(r"(file(\.[A-Za-z0-9+-]+)?)?")
# A URL in any case of its scheme (RFC 3986: schemes are case-insensitive).
_URL = re.compile(r"(https?|data):", re.IGNORECASE)
# What a name the user gave may keep when a message repeats it, besides letters and digits: no line
# breaks (they would forge log lines), no markup (a page that shows the error could run it).
_NAME_PUNCTUATION = frozenset(" .,_-+=~@#%!()[]'")
MAX_NAME_CHARS = 100
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


def request_lora_file(value: object) -> tuple[Path, str]:
    """The LoRA file Cog made from the request's ``lora_weights`` and the name the user gave it; ConfigError otherwise.

    The same rule as images: only a file the request brought is read. It must hold safetensors,
    whatever its name: an upload arrives as ``file.bin``, a URL may end in no file name at all.
    """
    name = _request_file_name(value, ConfigError("lora_weights", REFUSED))
    problem = safetensors_problem(value)
    if problem is not None:
        raise ConfigError("lora_weights", f"{name} {problem}; send the LoRA adapter as a .safetensors file")
    return Path(value), name


def fetch_url(value: object, files: ExitStack, error: type[ConfigError], param: str) -> object:
    """``value``, or, for a URL the server left as text (see the module docstring), the file Cog would have made of it.

    The file is fetched with Cog's own download (cog.types) into Cog's temporary folder under Cog's
    name for it, and deleted when ``files`` closes. A failed fetch raises ``error(param, ...)``.
    """
    if not (isinstance(value, str) and _URL.match(value)):
        return value
    # As cog.types.URLPath.convert does, but without leaving a partial file behind when the fetch fails.
    try:
        source = CogPath.validate(value)
        with tempfile.NamedTemporaryFile(suffix=source.filename, delete=False) as file:
            files.callback(Path(file.name).unlink, missing_ok=True)
            shutil.copyfileobj(source.fileobj, file)
    except Exception as err:  # requests' and urllib's errors, and a data URI's broken base64
        name = _sent_name("" if value[:5].lower() == "data:" else get_filename(value))
        reason = "".join(c for c in " ".join(str(err).split()) if c.isprintable()) or type(err).__name__
        raise error(param, f"{name} could not be fetched: {reason[:300]}") from None
    return CogPath(file.name)


def display_name(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """A name the user gave (a URL's file name, say), as messages and logs may repeat it: letters, digits and
    plain punctuation kept, anything else (line breaks, markup, control characters) as "_", at most ``limit``
    characters with the end kept (where the file's type shows)."""
    name = "".join(c if c.isalnum() or c in _NAME_PUNCTUATION else "_" for c in name)
    if len(name) <= limit:
        return name
    tail = limit // 4
    return f"{name[: limit - tail - 3]}...{name[-tail:]}"


def _request_file_name(value: object, refused: ConfigError) -> str:
    if isinstance(value, PurePath):
        # Lexical checks only: nothing on the disk is looked at before the file is known to be Cog's.
        path = os.path.abspath(value)
        folder, base = os.path.split(path)
        match = _REQUEST_FILE.fullmatch(base)
        if match and folder == os.path.abspath(tempfile.gettempdir()):
            return _sent_name(match["name"])
    raise refused


def _sent_name(cog_name: str) -> str:
    """What messages call a file by the name Cog gave it (cog.types.get_filename)."""
    return "the uploaded file" if _NAMELESS.fullmatch(cog_name) else display_name(cog_name)
