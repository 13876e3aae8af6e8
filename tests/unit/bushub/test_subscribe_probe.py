"""BrokerHealth's subscribe area: a refused subscription takes readiness down until the
heartbeat's probe has every channel confirmed again (pure logic; the real refusal is
in tests/reliability/test_redis_errors.py)."""

from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import NoPermissionError

from bushub.broker.memory import MemoryBroker
from bushub.broker.refusals import as_redis_error
from bushub.brokerhealth import BrokerHealth

# As the subscriber's PING raises it: redis-py's class, the code in ``status_code``.
NOPERM = as_redis_error("NOPERM this user has no permissions to run the 'subscribe' command")
assert isinstance(NOPERM, NoPermissionError)


class ConfirmingBroker(MemoryBroker):
    """The in-process broker, its ``confirm_subscriptions`` answering as scripted."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        super().__init__()
        self.outcomes = outcomes
        self.calls = 0

    async def confirm_subscriptions(self) -> None:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


class Errors:
    """``bushub_redis_errors_total`` on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("errors", "", ["op", "kind"], registry=self.registry)

    def noperm(self, op: str) -> float | None:
        return self.registry.get_sample_value("errors_total", {"op": op, "kind": "noperm"})


def health() -> tuple[BrokerHealth, Errors]:
    errors = Errors()
    return BrokerHealth(errors.counter), errors


async def test_nothing_refused_nothing_probed() -> None:
    h, _ = health()
    broker = ConfirmingBroker([])
    await h.probe_subscribe(broker)
    assert broker.calls == 0 and h.problem is None


async def test_a_refusal_holds_readiness_down_until_confirmed() -> None:
    h, errors = health()
    h.refused("subscribe", NOPERM)
    assert h.problem is not None and "subscribe (noperm)" in h.problem
    assert errors.noperm("subscribe") == 1
    broker = ConfirmingBroker([NOPERM, TimeoutError(), ConnectionError("lost"), None])
    await h.probe_subscribe(broker)  # refused still: counted again
    assert h.is_failing("subscribe")
    assert errors.noperm("subscribe") == 2
    await h.probe_subscribe(broker)  # no answer: not a refusal, not a recovery
    await h.probe_subscribe(broker)  # connection lost: the listener resubscribes
    assert h.is_failing("subscribe")
    assert errors.noperm("subscribe") == 2
    await h.probe_subscribe(broker)
    assert h.problem is None and broker.calls == 4
    await h.probe_subscribe(broker)  # ready again: no more probes
    assert broker.calls == 4


async def test_the_noperm_series_is_exported_at_zero() -> None:
    _, errors = health()
    assert errors.noperm("subscribe") == 0
