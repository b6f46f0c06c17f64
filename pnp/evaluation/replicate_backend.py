"""The Replicate backend: predictions on a Replicate model through the official ``replicate`` client.

Up to ``parallel`` predictions are in flight at once; a deployment's autoscaling (or Replicate's
shared pool) spreads them over as many GPUs as it allows. The client reads REPLICATE_API_TOKEN
(and REPLICATE_BASE_URL, where set). Source images go inline as data URIs; outputs are read from
the URLs the prediction returns. API inputs and outputs are deleted after an hour on Replicate,
so each source's outputs are written to the run's folder as soon as they arrive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import requests

from pnp.app.form import form_inputs
from pnp.config import ConfigError
from pnp.evaluation.backends import BackendError, Job, Translation, decode_image, read_output, split_outputs
from pnp.messages import first_line

TOKEN_ENV = "REPLICATE_API_TOKEN"
ATTEMPTS = 3  # network failures on the way to Replicate are retried; failed predictions are not


class ReplicateBackend:
    """Runs each job as one prediction of ``model`` ("OWNER/MODEL" or "OWNER/MODEL:VERSION")."""

    def __init__(self, model: str, parallel: int, warn: Callable[[str], None]) -> None:
        self.model, self.parallel, self.warn = model, parallel, warn
        self.name, _, self.version = model.partition(":")
        self._client = None

    def check(self) -> None:
        """The API token is set; the client library is installed."""
        if not os.environ.get(TOKEN_ENV):
            raise ConfigError("backend", f"set {TOKEN_ENV} to your Replicate API token to run predictions on Replicate")
        try:
            import replicate
        except ImportError:
            raise ConfigError(
                "backend", "the replicate client is not installed: pip install -r requirements-eval.txt"
            ) from None
        self._client = replicate.Client()

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="replicate")
        pending = [pool.submit(self._run, job) for job in jobs]
        try:
            while pending:
                done, rest = wait(pending, return_when=FIRST_COMPLETED)
                pending = list(rest)
                for future in done:
                    yield future.result()
        finally:
            # On an error or Ctrl-C, queued predictions are not started and running ones not waited for.
            pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job) -> Translation:
        import httpx
        from replicate.exceptions import ReplicateError

        for attempt in range(1, ATTEMPTS + 1):
            try:
                prediction = self._create(job)
                prediction.wait()
                break
            except httpx.TransportError as err:
                if attempt == ATTEMPTS:
                    raise BackendError(
                        f"source {job.source.key}: Replicate could not be reached ({first_line(err)})"
                    ) from None
                self.warn(f"source {job.source.key}: {first_line(err)}; trying again")
            except ReplicateError as err:
                raise BackendError(f"source {job.source.key}: Replicate refused the prediction: {err}") from None
        if prediction.status != "succeeded":
            raise BackendError(
                f"source {job.source.key}: Replicate prediction {prediction.id} {prediction.status}: {prediction.error}"
            )
        with requests.Session() as session:
            images = [decode_image(read_output(str(output), session)) for output in prediction.output]
        return split_outputs(job, images, f"replicate {prediction.id}")

    def _create(self, job: Job):
        inputs = form_inputs(job.config, job.seed)
        source = None if job.config.generating else open(job.source.image, "rb")  # noqa: SIM115
        try:
            if source is not None:
                inputs["input_image"] = source
            options = {"input": inputs, "file_encoding_strategy": "base64"}
            if self.version:
                return self._client.predictions.create(version=self.version, **options)
            return self._client.models.predictions.create(model=self.name, **options)
        finally:
            if source is not None:
                source.close()
