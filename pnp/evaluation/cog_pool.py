"""The HTTP backend: a pool of Cog servers running our predictor (local servers, or replicas behind a Service).

One worker thread per server URL keeps one prediction in flight there. A 409 (the single slot
is still busy) or a 503 (setup not finished) is retried on the same server; a dropped connection
or a 5xx is retried a few times with growing pauses, and then the server counts as dead: its job
goes back to the queue for the others, and the run fails only when no server is left. A
prediction the server answers "failed" (or a 422) is not retried: its inputs are wrong.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import requests

from pnp.app.form import form_inputs
from pnp.config import ConfigError
from pnp.evaluation.backends import (
    BackendError,
    Job,
    Translation,
    decode_image,
    file_data_uri,
    read_output,
    split_outputs,
)
from pnp.messages import first_line

HEALTH_TIMEOUT_S = 10
BUSY_POLL_S = 0.1


class ServerLost(Exception):
    """The server stopped answering; its job must move to another server."""


class CogPool:
    """Translates on Cog servers at ``urls``, one prediction in flight per URL (list a URL twice for two)."""

    def __init__(
        self,
        urls: tuple[str, ...],
        warn: Callable[[str], None],
        retry_delays_s=(0.5, 1.0, 2.0),
        busy_timeout_s: float = 600,
        request_timeout_s: float = 3600,
    ) -> None:
        self.urls, self.warn = urls, warn
        self.retry_delays_s, self.busy_timeout_s, self.request_timeout_s = (
            retry_delays_s,
            busy_timeout_s,
            request_timeout_s,
        )

    def check(self) -> None:
        """Every server answers its health check and has not failed setup: ConfigError("backend", ...) otherwise."""
        for url in dict.fromkeys(self.urls):
            try:
                health = requests.get(f"{url}/health-check", timeout=HEALTH_TIMEOUT_S).json()
            except (requests.RequestException, ValueError) as err:
                raise ConfigError("backend", f"no Cog server answers at {url} ({first_line(err)})") from None
            if health.get("status") == "SETUP_FAILED":
                logs = (health.get("setup") or {}).get("logs") or ""
                last = logs.strip().splitlines()[-1] if logs.strip() else "no setup logs"
                raise ConfigError("backend", f"the predictor at {url} failed its setup: {last}")

    def translate(self, jobs: Iterable[Job]) -> Iterator[Translation]:
        """Yield each job's translation as a server finishes it."""
        todo: queue.Queue = queue.Queue()
        events: queue.Queue = queue.Queue()
        remaining = 0
        for job in jobs:
            todo.put(job)
            remaining += 1
        for url in self.urls:
            threading.Thread(target=self._serve, args=(url, todo, events), daemon=True, name=f"cog {url}").start()
        alive = len(self.urls)
        try:
            while remaining:
                kind, payload = events.get()
                if kind == "done":
                    remaining -= 1
                    yield payload
                elif kind == "lost":
                    alive -= 1
                    url, reason = payload
                    self.warn(f"{url} stopped answering ({reason}); {alive} servers carry on with its work")
                    if not alive:
                        raise BackendError(
                            f"no Cog server is left and {remaining} sources are not translated; "
                            "start servers and run the same command again to finish"
                        )
                else:
                    raise payload
        finally:
            for _ in self.urls:
                todo.put(None)  # each worker stops at the first None it takes

    def _serve(self, url: str, todo: queue.Queue, events: queue.Queue) -> None:
        with requests.Session() as session:
            while (job := todo.get()) is not None:
                try:
                    events.put(("done", self._predict(session, url, job)))
                except ServerLost as err:
                    todo.put(job)
                    events.put(("lost", (url, str(err))))
                    return
                except Exception as err:  # noqa: BLE001  (handed to the consumer, which raises it)
                    events.put(("error", err))
                    return

    def _predict(self, session: requests.Session, url: str, job: Job) -> Translation:
        inputs = form_inputs(job.config, job.seed)
        if not job.config.generating:
            inputs["input_image"] = file_data_uri(job.source.image)
        failures, busy_since = 0, None
        while True:
            try:
                response = session.post(f"{url}/predictions", json={"input": inputs}, timeout=self.request_timeout_s)
                problem = (
                    None
                    if response.status_code < 500 or response.status_code == 503
                    else f"HTTP {response.status_code}"
                )
            except requests.RequestException as err:  # refused, reset, dropped mid-answer, timed out
                response, problem = None, first_line(err)
            if problem is not None:
                if failures == len(self.retry_delays_s):
                    raise ServerLost(problem)
                time.sleep(self.retry_delays_s[failures])
                failures += 1
                continue
            if response.status_code in (409, 503):  # the slot is still busy, or setup is not done
                busy_since = busy_since or time.monotonic()
                if response.status_code == 503 and self._setup_failed(session, url):
                    raise ServerLost("its setup failed")
                if time.monotonic() - busy_since > self.busy_timeout_s:
                    raise ServerLost(f"busy for more than {self.busy_timeout_s:g} s")
                time.sleep(BUSY_POLL_S)
                continue
            return self._result(session, url, job, response)

    def _result(self, session: requests.Session, url: str, job: Job, response: requests.Response) -> Translation:
        if response.status_code == 422:
            raise BackendError(f"source {job.source.key}: {url} refused the inputs: {response.text[:300]}")
        prediction = response.json()
        if prediction.get("status") != "succeeded":
            raise BackendError(
                f"source {job.source.key}: the prediction on {url} {prediction.get('status')}: "
                f"{prediction.get('error')}"
            )
        images = [decode_image(read_output(output, session)) for output in prediction["output"]]
        return split_outputs(job, images, url)

    def _setup_failed(self, session: requests.Session, url: str) -> bool:
        try:
            return session.get(f"{url}/health-check", timeout=HEALTH_TIMEOUT_S).json().get("status") == "SETUP_FAILED"
        except (requests.RequestException, ValueError):
            return False
