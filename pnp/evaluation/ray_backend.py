"""The Ray backend: jobs translated over a Ray cluster by actors that each hold one loaded ``PnPPipeline``.

Ray Data's pattern for batch inference, as in its Stable Diffusion example:

- the driver groups the jobs into calls by the local backend's rule (``batches``), and the calls
  become a Dataset, one row each: the same images share a UNet call whichever backend runs them,
  so the outputs are the local backend's, bit for bit, given the same weights and thread count;
- ``map_batches`` runs a callable class (``PipelineActor``) in a fixed pool of actors
  (``ActorPoolStrategy``, ``num_gpus``, ``num_cpus``); each loads the pipeline once, from the
  command's own model options, and runs the local backend on one call at a time. A job that fails
  there (an unreadable image) comes back with its error rather than as an exception, which Ray
  would retry and then end the whole run with;
- outputs travel back as lossless PNGs, and the driver takes each call as it finishes
  (``iter_rows`` streams) and files it;
- an actor whose process dies (killed, out of memory, its node lost) is restarted and its calls
  are run again: Ray Data's actor pools default to ``max_restarts=-1`` and ``max_task_retries=-1``,
  which are kept.

Ray (and torch) are imported when the cluster is first used, so the command line answers ``--help``
and refuses bad input without them (requirements-scale.txt installs Ray).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pnp.config import ConfigError, check_float, check_int
from pnp.evaluation.backends import BackendError, Job, Translation, decode_image, encode_png
from pnp.messages import first_line, plural

# The command-line flags of the model, which each actor loads as the local backend would.
MODEL_OPTIONS = ("model", "config", "allow_pickle", "injection_layers", "device", "dtype")
INSTALL = "pip install -r requirements-scale.txt"
LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT_S = 10
AUTH_MODE = "RAY_AUTH_MODE"


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The Ray backend's flags (for evaluate and batch)."""
    parser.add_argument(
        "--actors",
        type=int,
        default=None,
        help="with --backend ray: actors, each holding one loaded pipeline (default: one per GPU "
        "of the cluster, else 1)",
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="with --backend ray: GPUs each actor takes (default: 1 where the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=int,
        default=None,
        help="with --backend ray: CPUs each actor takes, and its torch threads (default: 1 with "
        "GPUs, else the cluster's CPUs shared among the actors)",
    )


class RayBackend:
    """Translates on a Ray cluster: ``address`` None starts a local one for this process, else joins it.

    ``model`` holds the model flags (``model_options``) and ``loras`` the checked ``--lora`` adapters.
    The actor count and each actor's GPUs and CPUs default from the cluster's resources (``check``).
    With ``keep_going`` a failed job comes back with its error; without, it raises BackendError.
    """

    def __init__(
        self,
        address: str | None,
        model: dict,
        loras: list,
        images_per_call: int,
        actors: int | None = None,
        gpus_per_actor: float | None = None,
        cpus_per_actor: int | None = None,
        keep_going: bool = False,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.address, self.model, self.loras = address, model, loras
        self.images_per_call, self.keep_going, self.warn = images_per_call, keep_going, warn
        self.actors = None if actors is None else check_int("actors", actors, 1, 10_000)
        self.gpus_per_actor = None if gpus_per_actor is None else check_float("gpus_per_actor", gpus_per_actor, 0, 64)
        self.cpus_per_actor = None if cpus_per_actor is None else check_int("cpus_per_actor", cpus_per_actor, 1, 1024)
        self.started = False

    @classmethod
    def from_args(
        cls,
        address: str | None,
        args: argparse.Namespace,
        keep_going: bool = False,
        warn: Callable[[str], None] = print,
    ) -> RayBackend:
        """The backend of a command's flags: its model options, adapters, actors and images per call."""
        from pnp.app.options import model_checks

        loras = [(Path(path).resolve(), scale) for path, scale in model_checks(args)]
        return cls(
            address,
            model_options(args),
            loras,
            args.images_per_call,
            args.actors,
            args.gpus_per_actor,
            args.cpus_per_actor,
            keep_going,
            warn,
        )

    def check(self) -> None:
        """Join (or start) the cluster, and size the actors from its resources: ConfigError("backend") if it cannot."""
        try:
            import ray
        except ImportError:
            raise ConfigError("backend", f"the Ray backend needs Ray: {INSTALL}") from None
        if not ray.is_initialized():  # else a cluster this process joined already (tests): used and left running
            self._init(ray)
        resources = ray.cluster_resources()
        cluster_gpus, cluster_cpus = resources.get("GPU", 0), resources.get("CPU", 0)
        self.actors, self.gpus_per_actor, self.cpus_per_actor = actor_resources(
            cluster_gpus, cluster_cpus, self.actors, self.gpus_per_actor, self.cpus_per_actor
        )
        wanted = (("GPU", self.gpus_per_actor, cluster_gpus), ("CPU", self.cpus_per_actor, cluster_cpus))
        for name, each, total in wanted:
            if each * self.actors > total:
                self.warn(
                    f"{plural(self.actors, 'actor')} of {each:g} {name} each need {each * self.actors:g} {name}s "
                    f"and the cluster has {total:g} now: some wait until nodes join"
                )
        if not self.gpus_per_actor and self.model.get("device") is None:
            self.model = {**self.model, "device": "cpu"}  # an actor without a GPU must not pick one up

    def _init(self, ray) -> None:
        local = self.address is None
        # A cluster of this process's own serves it alone: on the loopback address, without a dashboard.
        options = dict(include_dashboard=False, _node_ip_address=LOOPBACK) if local else {}
        try:
            if not local:
                _probe(self.address)
            ray.init(address="local" if local else self.address, logging_level=logging.WARNING, **options)
        except (ConnectionError, RuntimeError, ValueError, OSError) as err:
            # A cluster started where a token exists (~/.ray/auth_token: any local ray.init makes one) wants it
            # from its drivers, and a driver sends it only when told to: the refusal shows as a failed connection.
            token = (
                ""
                if os.environ.get(AUTH_MODE)
                else f"; if the cluster uses token authentication, set {AUTH_MODE}=token"
            )
            raise ConfigError(
                "backend",
                f"no Ray cluster answers at {self.address} ({first_line(err)}); start one "
                f"(ray start --head), or use ray for a local one{token}",
            ) from None
        self.started = local

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        """Yield each job's translation as its call finishes on an actor."""
        jobs = list(jobs)
        if not jobs:
            return
        import ray

        from pnp.evaluation.local import batches

        if self.actors is None:
            self.check()
        ray.data.DataContext.get_current().enable_progress_bars = False  # the command's own bar counts the jobs
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        calls = batches(jobs, self.images_per_call)
        rows = [{"call": i, "jobs": pickle.dumps(call)} for i, call in enumerate(calls)]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            PipelineActor,
            fn_constructor_kwargs=dict(
                model=self.model, loras=self.loras, images_per_call=self.images_per_call, threads=self.cpus_per_actor
            ),
            batch_size=1,  # one call at a time: the call is the batch the pipeline takes
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=self.cpus_per_actor,
            num_gpus=self.gpus_per_actor,
            udf_modifying_row_count=False,
        )
        try:
            for row in dataset.iter_rows():
                by_key = {job.source.key: job for job in calls[row["call"]]}
                for result in pickle.loads(row["results"]):
                    translation = _translation(by_key[result["key"]], result)
                    if translation.error is not None and not self.keep_going:
                        raise BackendError(f"{translation.job.source.key}: {translation.error}")
                    yield translation
        except ray.exceptions.RayError as err:  # the job itself failed (its nodes gone, an actor that cannot start)
            raise BackendError(f"the Ray job stopped: {_reason(err)}") from None

    def close(self) -> None:
        """Shut down the local cluster this backend started (a joined one keeps running)."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def actor_resources(
    cluster_gpus: float, cluster_cpus: float, actors: int | None, gpus: float | None, cpus: int | None
) -> tuple[int, float, int]:
    """(actors, GPUs each, CPUs each) on a cluster of these resources, those given (not None) kept.

    Each actor takes one GPU where the cluster has GPUs, none where it has not; there is one actor
    per GPU (or one, on CPUs); an actor with a GPU takes one CPU, one without shares the CPUs.
    """
    gpus = (1.0 if cluster_gpus else 0.0) if gpus is None else gpus
    if actors is None:
        actors = max(1, int(cluster_gpus // gpus)) if gpus else 1
    if cpus is None:
        cpus = 1 if gpus else max(1, int(cluster_cpus // actors))
    return actors, gpus, cpus


def _reason(err: Exception) -> str:
    """A Ray error in a line: an actor whose constructor raised (the model missing on a node) by that exception's
    own message, the last line of the traceback Ray's message carries; any other by its first line."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if getattr(err, "actor_init_failed", False) and lines:
        return f"an actor could not load the pipeline: {lines[-1].strip()}"
    return first_line(err)


def _probe(address: str) -> None:
    """Fail fast (OSError) if nothing listens at a HOST:PORT address: Ray itself waits minutes for it."""
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()


def model_options(args: argparse.Namespace) -> dict:
    """The model flags an actor loads the pipeline with; local paths made absolute, as actors start elsewhere."""
    options = {name: getattr(args, name) for name in MODEL_OPTIONS}
    for name in ("model", "config"):
        if options[name] is not None and Path(options[name]).exists():
            options[name] = str(Path(options[name]).resolve())
    return options


class PipelineActor:
    """One actor of the ``map_batches`` stage: a loaded pipeline, and the local backend that runs each call on it."""

    def __init__(self, model: dict, loras: list, images_per_call: int, threads: int) -> None:
        import torch

        from pnp.app.options import load_pipeline
        from pnp.evaluation.local import LocalBackend

        torch.set_num_threads(threads)
        pipe = load_pipeline(argparse.Namespace(**model, quiet=True), loras)
        worker = f"ray:{socket.gethostname()}:{os.getpid()}"
        self.backend = LocalBackend(pipe, images_per_call, keep_going=True, worker=worker)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = [
            pickle.dumps([_portable(t) for t in self.backend.translate(pickle.loads(jobs))]) for jobs in batch["jobs"]
        ]
        return {"call": batch["call"], "results": np.array(results, dtype=object)}


def _portable(translation: Translation) -> dict:
    """A translation as the actor sends it back: images as PNG bytes, the job by its key."""
    source = translation.generated_source
    return {
        "key": translation.job.source.key,
        "outputs": [encode_png(image) for image in translation.outputs],
        "source": None if source is None else encode_png(source),
        "worker": translation.worker,
        "error": translation.error,
    }


def _translation(job: Job, result: dict) -> Translation:
    source = result["source"]
    return Translation(
        job,
        [decode_image(data) for data in result["outputs"]],
        None if source is None else decode_image(source),
        result["worker"],
        result["error"],
    )
