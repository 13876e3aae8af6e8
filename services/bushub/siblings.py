"""The workers of one node asking each other, so that one scrape speaks for the node.

With ``--workers N`` every worker binds the node's port (SO_REUSEPORT), and the kernel
hands a ``/metrics`` or ``/readyz`` request to any one of them. That worker answers for
the whole node: it asks each sibling over the sibling's control socket, a unix socket
in the supervisor's private runtime directory (mode 0700), and merges the answers.

- ``/metrics``: every worker's samples, each with a ``worker="<i>"`` label, plus
  ``bushub_worker_up{worker}`` saying whose samples the scrape holds. Labelled rather
  than summed: a restarted worker's counters start again from zero, which Prometheus
  reads as a reset of that worker's series, where a sum would go backwards.
- ``/readyz``: 200 only when every worker answers ready; otherwise 503 naming the
  workers that are not (or that did not answer).

The control protocol is one line naming what is asked (``metrics`` or ``readyz``),
answered with the bytes and end of stream. Nothing of this exists with one worker.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bushub.stopping import cancelled

log = logging.getLogger(__name__)

METRICS = b"metrics"
READINESS = b"readyz"
# How long a worker waits for a sibling's answer: a stopped or wedged sibling must
# not hang the scrape (nor the probe, which then says that sibling is not ready).
ASK_TIMEOUT = 1.0
_MAX_REQUEST = 64
# How often a worker looks whether its control socket's file is still there.
_RELISTEN_EVERY = 1.0

WORKER_UP = "bushub_worker_up"


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker of how many this process is, and where the workers' sockets live."""

    index: int
    count: int
    runtime_dir: str

    def control_path(self, index: int) -> str:
        """The control socket of worker ``index``."""
        return os.path.join(self.runtime_dir, f"w{index}.sock")


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_metrics(texts: Mapping[int, str | None]) -> bytes:
    """One exposition of several workers' ``/metrics`` texts.

    Args:
        texts: Each worker's text by index; None for a worker that did not answer.

    Returns:
        Every family once, holding each answering worker's samples with a ``worker``
        label, and ``bushub_worker_up`` (1 for the workers whose samples are there).
    """
    merged: dict[str, Metric] = {}
    for index in sorted(texts):
        text = texts[index]
        if text is None:
            continue
        worker = str(index)
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = {"worker": worker, **sample.labels}
                into.add_sample(
                    sample.name, labels, sample.value, sample.timestamp, sample.exemplar
                )
    up = Metric(WORKER_UP, "1 if this worker's samples are in this scrape", "gauge")
    for index in sorted(texts):
        up.add_sample(WORKER_UP, {"worker": str(index)}, 0.0 if texts[index] is None else 1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), up]))
    return generate_latest(registry)


def _gone(path: str) -> bool:
    """Whether ``path`` is gone (one stat of a file in a local directory)."""
    return not os.path.exists(path)


class Siblings:
    """This worker's control socket, and the node seen through every worker's.

    Args:
        slot: This worker's place among its siblings.
        local_metrics: This worker's own ``/metrics`` text.
        local_readiness: This worker's own readiness: a JSON-able dict with ``ready``.
    """

    def __init__(
        self,
        slot: WorkerSlot,
        local_metrics: Callable[[], bytes],
        local_readiness: Callable[[], dict[str, Any]],
    ) -> None:
        self.slot = slot
        self._local_metrics = local_metrics
        self._local_readiness = local_readiness
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on this worker's control socket (replacing a dead predecessor's), and
        again whenever its file is gone."""
        await self._listen()
        self._watch = asyncio.create_task(self._keep_listening(), name="control-socket")

    async def _listen(self) -> None:
        path = self.slot.control_path(self.slot.index)
        # The directory made again if it went: systemd-logind removes a user's
        # XDG_RUNTIME_DIR at the end of their last session, and every worker
        # restarted after that failed to start (its node unready for good).
        os.makedirs(self.slot.runtime_dir, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if self._server is not None:
            self._server.close()
        self._server = await asyncio.start_unix_server(self._answer, path)

    async def _keep_listening(self) -> None:
        """A socket whose file was removed listens on, but no sibling can reach it by
        its path: the node's /readyz said this worker unanswered for good."""
        path = self.slot.control_path(self.slot.index)
        while True:
            await asyncio.sleep(_RELISTEN_EVERY)
            if _gone(path):
                log.warning("control socket %s was removed: listening again", path)
                try:
                    await self._listen()
                except OSError as exc:
                    log.warning("cannot listen on %s: %s", path, exc)

    async def stop(self) -> None:
        if self._watch is not None:
            await cancelled(self._watch)
            self._watch = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), ASK_TIMEOUT)
            what = request[:_MAX_REQUEST].strip()
            if what == METRICS:
                writer.write(self._local_metrics())
            elif what == READINESS:
                writer.write(orjson.dumps(self._local_readiness()))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _ask(self, index: int, what: bytes) -> bytes | None:
        """A sibling's answer, or None when it gave none in time."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.slot.control_path(index))
                writer.write(what + b"\n")
                await writer.drain()
                return await reader.read()
        except (OSError, TimeoutError):
            return None
        finally:
            if writer is not None:
                writer.close()

    async def _ask_all(self, what: bytes, local: Callable[[], bytes]) -> dict[int, bytes | None]:
        others = [i for i in range(self.slot.count) if i != self.slot.index]
        answers = await asyncio.gather(*(self._ask(i, what) for i in others))
        out: dict[int, bytes | None] = dict(zip(others, answers, strict=True))
        out[self.slot.index] = local()
        return out

    async def metrics(self) -> bytes:
        """The whole node's metrics (see the module's docstring)."""
        answers = await self._ask_all(METRICS, self._local_metrics)
        texts: dict[int, str | None] = {}
        for index, raw in answers.items():
            texts[index] = raw.decode() if raw else None
        return merge_metrics(texts)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every worker is ready, and each worker's readiness by index."""
        answers = await self._ask_all(READINESS, lambda: orjson.dumps(self._local_readiness()))
        workers: dict[str, Any] = {}
        for index in sorted(answers):
            raw = answers[index]
            try:
                workers[str(index)] = orjson.loads(raw) if raw else {"ready": False}
            except orjson.JSONDecodeError:
                workers[str(index)] = {"ready": False}
            if not raw:
                workers[str(index)]["unanswered"] = True
        not_ready = [index for index, body in workers.items() if body.get("ready") is not True]
        return not not_ready, {"ready": not not_ready, "not_ready": not_ready, "workers": workers}
