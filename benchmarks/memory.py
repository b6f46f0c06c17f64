"""Peak memory of one phase of work: resident set on the CPU, allocated memory on CUDA.

On the CPU the kernel's resident high-water mark (VmHWM) is reset before each phase by writing
"5" to /proc/self/clear_refs (Linux), after returning freed heap memory to the system with
malloc_trim, so that memory a previous phase freed but the allocator kept does not hide the
next phase's needs. Where that is impossible the process-wide ru_maxrss is reported instead and
``method`` says so: its peaks never go down between phases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Peak:
    """Bytes at the start of a phase, and the most in use during it."""

    start: int = 0
    peak: int = 0

    @property
    def working(self) -> int:
        """Memory the phase needed beyond what was already in use (the weights, mostly)."""
        return max(self.peak - self.start, 0)


class MemoryTracker:
    """Measures the peak memory of phases run one after another on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif _can_reset_hwm():
            self.method = "VmHWM reset per phase"
        else:
            self.method = "ru_maxrss (process-wide, never reset)"

    @contextmanager
    def measure(self):
        """Context whose yielded ``Peak`` is filled in when the block ends."""
        gc.collect()
        peak = Peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            peak.start = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            if self.method.startswith("VmHWM"):
                CLEAR_REFS.write_text("5")
            peak.start = _status_bytes("VmRSS")
        yield peak
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak.peak = _status_bytes("VmHWM")
        else:
            peak.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _can_reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return _status_bytes("VmHWM") > 0
    except (OSError, ValueError):
        return False


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    if not match:
        raise ValueError(f"{STATUS} has no {field}")
    return int(match.group(1)) * 1024


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: peaks may then be understated after a phase that freed a lot
