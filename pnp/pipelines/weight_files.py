"""Weight files: safetensors, which holds only tensors, and the pickled formats, which are programs.

Checkpoints (``pnp.pipelines.single_file``) and LoRA adapters (``pnp.pipelines.lora``) are read from
safetensors, and from pickles only where the user allows them: although torch loads these with
``weights_only``, a pickle is a larger attack surface than a format that holds only tensors.
A file is known as safetensors by its header, not its name: the Cog server names an upload
``file.bin``. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

SAFETENSORS_SUFFIX = ".safetensors"
PICKLED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# The safetensors format: an 8-byte little-endian header length, then that many bytes of JSON
# (tensor name -> dtype, shape, data_offsets; "__metadata__" -> strings), then the tensors' bytes.
# The safetensors library refuses headers above 100 MB; so does this check, before reading one.
_MAX_HEADER_BYTES = 100_000_000


def is_pickled_name(path: str | Path) -> bool:
    """Whether ``path`` is named as a pickled weights file (.ckpt, .pt, .pth, .bin)."""
    return str(path).lower().endswith(PICKLED_SUFFIXES)


def safetensors_problem(path: str | Path) -> str | None:
    """Why the file at ``path`` is not a whole safetensors file, as words that follow its name; None if it is one.

    Reads the header only: its length, that it is a JSON object, and that the file holds every
    byte the header's tensors claim.
    """
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        file.seek(0)
        length = int.from_bytes(file.read(8), "little") if size >= 8 else 0
        if not 2 <= length <= min(size - 8, _MAX_HEADER_BYTES):
            return "is not a safetensors file (it does not start with a safetensors header)"
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError):
            header = None
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    held = size - 8 - length
    if max(ends, default=0) > held:
        return f"is cut short: its header describes {max(ends)} bytes of tensors, the file holds {held}"
    return None
