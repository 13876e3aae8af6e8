"""GoneSenders' passes: which agents it asks about, and the two-pass rule, over a
broker that answers from a table (the Redis side is tested in
tests/integration/test_redis_broker.py and end to end in tests/reliability)."""

from dataclasses import dataclass

from bushub.gonesenders import GoneSenders
from bushub.metrics import Metrics


@dataclass
class Socket:
    id: str
    agent: str
    messages_out: int = 0


class Records:
    """A broker's relay records: per agent, the senders gone with their positions."""

    def __init__(self) -> None:
        self.gone: dict[str, dict[bytes, bytes]] = {}
        self.asked: list[str] = []
        self.forgotten: dict[str, dict[bytes, bytes]] = {}
        self.unreachable = False

    async def relayed_senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        self.asked.append(agent)
        if self.unreachable:
            raise ConnectionError("redis away")
        return dict(list(self.gone.get(agent, {}).items())[:most])

    async def forget_relayed(self, agent: str, senders: dict[bytes, bytes]) -> int:
        self.forgotten.setdefault(agent, {}).update(senders)
        for sender in senders:
            del self.gone[agent][sender]
        return len(senders)


def passes(sockets: list[Socket]) -> tuple[GoneSenders, Records, Metrics]:
    records = Records()
    metrics = Metrics()
    return GoneSenders(records, lambda: sockets, metrics, 1.0), records, metrics  # type: ignore[arg-type]


async def test_only_agents_written_to_since_the_last_pass_are_asked() -> None:
    w, idle = Socket("c1", "w", 5), Socket("c2", "idle")
    gone, records, _ = passes([w, idle])
    await gone.pass_once()
    assert records.asked == ["w"]
    await gone.pass_once()
    assert records.asked == ["w"], "nothing written since: not asked again"
    w.messages_out += 1
    await gone.pass_once()
    assert records.asked == ["w", "w"]


async def test_a_sender_is_forgotten_when_found_gone_twice_at_the_same_position() -> None:
    w = Socket("c1", "w", 1)
    gone, records, metrics = passes([w])
    records.gone["w"] = {b"a S1": b"3", b"b S1": b"5"}
    assert await gone.pass_once() == 0, "found gone once: only suspected"
    # b relayed again between the passes (a session Redis lost, put back): not yet.
    records.gone["w"][b"b S1"] = b"6"
    w.messages_out += 1
    assert await gone.pass_once() == 1
    assert records.forgotten == {"w": {b"a S1": b"3"}}
    w.messages_out += 1
    assert await gone.pass_once() == 1
    assert records.forgotten == {"w": {b"a S1": b"3", b"b S1": b"6"}}
    assert metrics.relayed_forgotten._value.get() == 2


async def test_an_agent_with_suspects_is_asked_again_though_nothing_was_written() -> None:
    w = Socket("c1", "w", 1)
    gone, records, _ = passes([w])
    records.gone["w"] = {b"a S1": b"3"}
    await gone.pass_once()
    assert await gone.pass_once() == 1, "confirmed on the next pass, quiet or not"
    assert await gone.pass_once() == 0
    assert records.asked == ["w", "w"], "nothing suspected, nothing written: not asked"


async def test_a_sender_no_longer_gone_is_no_longer_suspected() -> None:
    w = Socket("c1", "w", 1)
    gone, records, _ = passes([w])
    records.gone["w"] = {b"a S1": b"3"}
    await gone.pass_once()
    records.gone["w"] = {}
    w.messages_out += 1
    await gone.pass_once()
    records.gone["w"] = {b"a S1": b"3"}
    w.messages_out += 1
    assert await gone.pass_once() == 0, "gone, back, gone again: suspected anew"


async def test_an_unreachable_broker_keeps_the_suspects_for_the_next_pass() -> None:
    w = Socket("c1", "w", 1)
    gone, records, _ = passes([w])
    records.gone["w"] = {b"a S1": b"3"}
    await gone.pass_once()
    records.unreachable = True
    w.messages_out += 1
    assert await gone.pass_once() == 0
    records.unreachable = False
    w.messages_out += 1
    assert await gone.pass_once() == 1
