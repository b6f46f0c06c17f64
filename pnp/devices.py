"""Choosing the device and dtype a model runs on, and the names dtypes go by on command lines and in logs.

Importing this module does not import torch, so the command line can list the names cheaply.
"""

from __future__ import annotations

from pathlib import Path

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def default_device() -> str:
    """The first CUDA GPU if there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    """float16 on a GPU; bfloat16 on a CPU with bfloat16 instructions, where it is several times faster; else
    float32."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bfloat16() else torch.float32


def cpu_has_bfloat16() -> bool:
    """Whether the processor has native bfloat16 arithmetic (x86 AMX/AVX512-BF16, Arm BF16)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(cpuinfo.replace("\n", " ").split())
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})


def parse_dtype(name: str):
    """The torch dtype called ``name`` ("float32", "float16" or "bfloat16"); ValueError naming the choices otherwise."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype: {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """ "float16" for torch.float16, and so on."""
    return str(dtype).removeprefix("torch.")
