"""Workers answering for the node (bushub.siblings): merged metrics with a worker label,
readiness of every worker over their control sockets, and a sibling that does not answer."""

import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bushub.metrics import Metrics
from bushub.siblings import Siblings, WorkerSlot, merge_metrics


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def test_merged_metrics_label_every_sample_with_its_worker() -> None:
    first, second = Metrics(), Metrics()
    first.connections.set(3)
    second.connections.set(5)
    second.messages_dropped.labels("rate_limited").inc(2)
    second.traffic  # noqa: B018 - the histogram is exported either way
    merged = merge_metrics({0: first.render().decode(), 1: second.render().decode(), 2: None})
    got = samples(merged)
    assert got[key("bushub_connections", worker="0")] == 3
    assert got[key("bushub_connections", worker="1")] == 5
    assert got[key("bushub_messages_dropped_total", worker="1", reason="rate_limited")] == 2
    assert got[key("bushub_messages_dropped_total", worker="0", reason="rate_limited")] == 0
    assert got[key("bushub_worker_up", worker="0")] == 1
    assert got[key("bushub_worker_up", worker="2")] == 0
    assert [k for k in got if ("worker", "2") in k[1]] == [key("bushub_worker_up", worker="2")]
    # Every sample of a worker is there once, with nothing but the label added.
    alone = samples(first.render())
    for (name, labels), value in alone.items():
        assert got[(name, labels | {("worker", "0")})] == value
    # Each family is described once.
    assert merged.decode().count("# TYPE bushub_connections gauge") == 1


@pytest.fixture
async def workers() -> AsyncIterator[list[tuple[Siblings, dict[str, Any]]]]:
    """Three workers' control sockets in one loop; the test sets their readiness."""
    with tempfile.TemporaryDirectory(prefix="bushub-test-") as runtime_dir:
        made = []
        for index in range(3):
            state: dict[str, Any] = {"ready": True, "draining": False}
            metrics = Metrics()
            metrics.connections.set(index + 1)
            slot = WorkerSlot(index, 3, runtime_dir)
            siblings = Siblings(slot, metrics.render, lambda s=state: dict(s))
            made.append((siblings, state))
        for siblings, _ in made:
            await siblings.start()
        try:
            yield made
        finally:
            for siblings, _ in made:
                await siblings.stop()


async def test_ready_only_when_every_worker_is(
    workers: list[tuple[Siblings, dict[str, Any]]],
) -> None:
    asking = workers[0][0]
    ready, body = await asking.readiness()
    assert ready and body["not_ready"] == []
    assert set(body["workers"]) == {"0", "1", "2"}

    workers[2][1].update(ready=False, draining=True)
    ready, body = await workers[1][0].readiness()
    assert not ready
    assert body["not_ready"] == ["2"]
    assert body["workers"]["2"] == {"ready": False, "draining": True}


async def test_a_sibling_that_does_not_answer_is_not_ready_and_absent_from_metrics(
    workers: list[tuple[Siblings, dict[str, Any]]],
) -> None:
    await workers[1][0].stop()
    ready, body = await workers[0][0].readiness()
    assert not ready and body["not_ready"] == ["1"]
    assert body["workers"]["1"] == {"ready": False, "unanswered": True}

    got = samples(await workers[2][0].metrics())
    assert got[key("bushub_connections", worker="0")] == 1
    assert key("bushub_connections", worker="1") not in got
    assert got[key("bushub_connections", worker="2")] == 3
    assert got[key("bushub_worker_up", worker="1")] == 0
    assert got[key("bushub_worker_up", worker="2")] == 1
