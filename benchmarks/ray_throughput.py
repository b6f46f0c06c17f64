"""Throughput of the Ray backend's actors against one local process, on the same rows, as a ratio in one run.

    python -m benchmarks.ray_throughput                       # random-sd15 (SD 1.5 shapes): minutes on 2 cores
    python -m benchmarks.ray_throughput --model tiny          # seconds: a check that it runs

The same jobs (synthetic photos, one prompt each, one image a call) are translated by the local
backend in this process with ``--threads`` torch threads (2); by the local backend with one thread,
for reference; and on a local Ray cluster of ``--threads`` CPUs by ``--actors`` actors (2) of
``--threads // --actors`` CPUs and torch threads each (1). Throughput is counted once every worker
has finished its first row, so that no start (the model load; Ray's cluster and actor processes,
each loading the model) is in it; the times with them are printed too. The outputs of the local
and Ray runs are checked to be the same images (within a level: the thread counts differ, so float
sums do). The load average before and after is printed, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pnp.config import PnPConfig
from pnp.evaluation.backends import Job
from pnp.evaluation.benchmarks import Source

from .machine import model_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-sd15", help="a random model's name or a diffusers folder")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "pnp",
        help="where a random model is saved on first use (random-sd15 takes 4 GB)",
    )
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=2, help="the local process's torch threads, and the cluster's CPUs"
    )
    args = parser.parse_args(argv)

    folder = model_folder(args.model, args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="pnp-ray-bench-", dir="/tmp") as tmp:
        jobs = make_jobs(Path(tmp), args.rows, args.steps, args.resolution)
        load = os.getloadavg()
        local_times, local_images = run_local(folder, jobs, args.threads)
        single_times, _ = run_local(folder, jobs, 1)
        ray_times, ray_images = run_ray(folder, jobs, args.actors, args.threads, Path(tmp) / "ray")
        after = os.getloadavg()
    worst = max(
        np.abs(np.asarray(image, float) - np.asarray(ray_images[key], float)).max()
        for key, image in local_images.items()
    )
    local_rate, ray_rate = steady_rate(local_times), steady_rate(ray_times)
    print(
        f"model {args.model}, {args.rows} rows of one prompt at {args.resolution} px, {args.steps} steps, "
        f"float32 on the CPU"
    )
    print(f"load average before {load[0]:.2f} ({load[1]:.2f} over 5 min), after {after[0]:.2f}")
    print(
        f"local, 1 process x {args.threads} threads: {local_rate:.3f} rows/s once started; all rows "
        f"{local_times[-1][0]:.1f} s after the model load began"
    )
    print(
        f"ray, {args.actors} actors x {args.threads // args.actors} thread(s): {ray_rate:.3f} rows/s once started; "
        f"all rows {ray_times[-1][0]:.1f} s after the cluster's start began"
    )
    single_rate = steady_rate(single_times)
    print(
        f"for reference, local with 1 thread: {single_rate:.3f} rows/s ({local_rate / single_rate:.2f}x from the "
        f"second thread)"
    )
    print(f"ratio ray / local: {ray_rate / local_rate:.2f}; outputs differ by at most {worst:.0f} levels of 255")
    return 0


def make_jobs(folder: Path, rows: int, steps: int, resolution: int) -> list[Job]:
    """``rows`` synthetic photos, each with its own prompt: every row is a call of its own on both backends."""
    y, x = np.mgrid[0:resolution, 0:resolution]
    jobs = []
    for k in range(rows):
        pixels = np.stack([(x + 17 * k) % 256, y * 255 // max(resolution - 1, 1), np.full_like(x, 40 * k % 256)], -1)
        path = folder / f"photo-{k}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        config = PnPConfig(
            prompt=f"a painting of a landscape, number {k}", num_inference_steps=steps, resolution=resolution
        )
        jobs.append(Job(Source(f"row-{k}", config.prompt, path), config, 0))
    return jobs


def run_local(folder: Path, jobs: list[Job], threads: int) -> tuple[list[tuple[float, str]], dict]:
    """(seconds from the model load's start, worker) at each row's end, and the outputs, on the local backend."""
    from pnp.evaluation.local import LocalBackend
    from pnp.pipelines.pipeline_pnp import PnPPipeline

    torch.set_num_threads(threads)
    start, times, images = time.perf_counter(), [], {}
    pipe = PnPPipeline.from_pretrained(folder, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    pipe.set_source_cache(0)
    for translation in LocalBackend(pipe, images_per_call=1).translate(jobs):
        times.append((time.perf_counter() - start, translation.worker))
        images[translation.job.source.key] = translation.outputs[0]
    del pipe
    return times, images


def run_ray(folder: Path, jobs: list[Job], actors: int, cpus: int, temp: Path) -> tuple[list[tuple[float, str]], dict]:
    """The same on a local Ray cluster of ``cpus`` CPUs, from ``ray.init``."""
    import ray

    from pnp.evaluation.ray_backend import RayBackend

    temp.mkdir()
    start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=0,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _temp_dir=str(temp),
        _node_ip_address="127.0.0.1",
    )
    try:
        model = {
            "model": str(folder),
            "config": None,
            "allow_pickle": False,
            "injection_layers": None,
            "device": "cpu",
            "dtype": "float32",
        }
        backend = RayBackend(
            None,
            model,
            [],
            images_per_call=1,
            actors=actors,
            gpus_per_actor=0,
            cpus_per_actor=cpus // actors,
            warn=lambda message: print(message, file=sys.stderr),
        )
        backend.check()
        times, images = [], {}
        for translation in backend.translate(jobs):
            times.append((time.perf_counter() - start, translation.worker))
            images[translation.job.source.key] = translation.outputs[0]
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return times, images


def steady_rate(times: list[tuple[float, str]]) -> float:
    """Rows a second once every worker has finished its first row: the rate without anyone's start."""
    started = max(min(t for t, w in times if w == worker) for worker in {w for _, w in times})
    later = [t for t, _ in times if t > started]
    if not later:
        raise SystemExit("no row finished after every worker's first: give more --rows")
    return len(later) / (later[-1] - started)


if __name__ == "__main__":
    sys.exit(main())
