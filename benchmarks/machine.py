"""What a benchmark runs on: the model folder, the device and threads, and a description of them."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import diffusers
import torch
import transformers

from pnp.devices import default_device
from pnp.pipelines import random_models
from pnp.pipelines.loading import RANDOM_MODELS, model_location

from .memory import MemoryTracker


def add_machine_options(parser: argparse.ArgumentParser) -> None:
    """The model, device and thread options that every benchmark command shares."""
    parser.add_argument(
        "--model",
        default="random-sd15",
        help="random-sd15 (Stable Diffusion 1.5 shapes, random weights, built once into --cache-dir), "
        "tiny (a small random model for tests), toy (the small trained model shipped with pnp), or a diffusers "
        "folder of real weights",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "pnp",
        help="where a random model is saved on first use (random-sd15 takes 4 GB)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's own choice, one per core)"
    )


def check_machine_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in the default device and apply --threads, or stop with a usage error."""
    args.device = args.device or default_device()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: {args.threads} is not a positive whole number")
        torch.set_num_threads(args.threads)


def model_folder(model: str, cache_dir: Path) -> Path:
    """A diffusers folder for ``model``: random models are built and saved once, then reused; bundled ones (toy)
    come from the package."""
    if model not in RANDOM_MODELS:
        return Path(model_location(model))
    folder = cache_dir / f"{model}-{_random_model_stamp()}"
    if not (folder / "model_index.json").is_file():
        print(f"building the {model} random model into {folder} (first use only)", file=sys.stderr, flush=True)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        random_models.save_random_pipeline(model, partial)
        partial.rename(folder)
    return folder


def _random_model_stamp() -> str:
    # A cached model stays valid only while the code and libraries that built it are unchanged.
    recipe = inspect.getsource(random_models) + diffusers.__version__ + transformers.__version__
    return hashlib.sha256(recipe.encode()).hexdigest()[:10]


def environment(device: str, tracker: MemoryTracker) -> dict:
    """What the figures were measured on."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = _cpu_name()
    return {
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "memory_method": tracker.method,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class OtherLoad:
    """CPU time that other processes (and the hypervisor, as steal) took while a block ran.

    From /proc/stat (Linux) less this process's own CPU time; on other systems the figures are None.
    A run that shared the CPU has disturbed times, so the report flags it.
    """

    def __enter__(self) -> "OtherLoad":
        self._start = (time.perf_counter(), _system_cpu(), _own_cpu())
        self.other_cpu_share = self.steal_share = None
        return self

    def __exit__(self, *exc) -> None:
        wall0, system0, own0 = self._start
        wall, system, own = time.perf_counter() - wall0, _system_cpu(), _own_cpu()
        if system is None or system0 is None:
            return
        capacity = wall * (os.cpu_count() or 1)
        busy, steal = system[0] - system0[0], system[1] - system0[1]
        self.other_cpu_share = max(busy - (own - own0), 0.0) / capacity
        self.steal_share = steal / capacity


def _system_cpu() -> tuple[float, float] | None:
    """Seconds all CPUs spent busy and stolen since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system
