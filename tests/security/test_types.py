"""The type allowlist, with real sockets: what a client may make another client import.

A disallowed top-level or nested ``__type__`` is dropped, counted, and never reaches
the peer; a registry message from a client never reaches anyone. The proof of "never"
is ordering: a good message sent after the bad ones arrives, and nothing before it did.
"""

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.security.conftest import CUSTOM_PREFIX, CUSTOM_TYPE
from tests.security.helpers import (
    PIPECAT_REGISTRY,
    SUBAGENTS_REGISTRY,
    Peer,
    SecureHub,
    task_request,
    token,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pair(auth_hub: SecureHub) -> AsyncIterator[tuple[Peer, Peer]]:
    """``ty-alice`` (JSON) paired with ``ty-bob``, both authorized for each other."""
    alice = await Peer.connect(
        auth_hub, "ty-alice", token=token("ty-alice", ["ty-bob"]), peer="ty-bob"
    )
    bob = await Peer.connect(
        auth_hub, "ty-bob", token=token("ty-bob", ["ty-alice"]), peer="ty-alice"
    )
    await alice.announced("ty-bob")
    await bob.announced("ty-alice")
    yield alice, bob
    await alice.close()
    await bob.close()


def with_type(type_name: Any, source: str, target: str | None, label: str) -> dict[str, Any]:
    tree = task_request(source, target, {"label": label})
    tree["__type__"] = type_name
    return tree


def nested(source: str, target: str, label: str, evil: Any) -> dict[str, Any]:
    """A valid task request with ``evil`` somewhere inside its payload."""
    tree = task_request(source, target, {"label": label})
    tree["__data__"]["payload"]["inner"] = evil
    return tree


async def send_then_sentinel(
    hub: SecureHub, sender: Peer, receiver: Peer, bad: list[Any], reason: str
) -> None:
    """Send ``bad``, then a good message; all of ``bad`` dropped as ``reason``."""
    before = hub.dropped(reason)
    for message in bad:
        await sender.send(message)
    await sender.send(task_request(sender.agent, receiver.agent, {"label": "sentinel"}))
    await receiver.expect_label("sentinel")
    assert receiver.labels() == ["sentinel"], "a disallowed message was delivered"
    assert hub.dropped(reason) == before + len(bad)
    assert not sender.closed


async def test_disallowed_top_level_types_are_dropped(
    auth_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    alice, bob = pair
    bad = [
        with_type(name, "ty-alice", "ty-bob", name)
        for name in (
            "os.system",
            "subprocess.Popen",
            "builtins.eval",
            "pickle.loads",
            # A pipecat class, but not a bus message.
            "pipecat.frames.frames.TextFrame",
            # Near misses of real bus message types.
            "pipecat_subagents.bus.messages.BusTaskRequestMessageX",
            "pipecat_subagents.bus.messages_evil.BusTaskRequestMessage",
            "Pipecat_subagents.bus.messages.BusTaskRequestMessage",
            "pipecat_subagents.bus.messages.BusLocalMessage",
            "pipecat_subagents.bus.messages.BusAddAgentMessage",
        )
    ]
    await send_then_sentinel(auth_hub, alice, bob, bad, "type_not_allowed")


async def test_disallowed_nested_types_are_dropped(
    auth_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    alice, bob = pair
    system = {"__type__": "os.system", "__data__": "touch /tmp/pwned"}
    bad = [
        nested("ty-alice", "ty-bob", "n1", system),
        nested("ty-alice", "ty-bob", "n2", [1, [2, {"deep": [system]}]]),
        nested("ty-alice", "ty-bob", "n3", {"__type__": "subprocess.Popen", "__data__": {}}),
        # Disguised as an allowed wrapper, with the payload one level down.
        nested("ty-alice", "ty-bob", "n4", {"__type__": "bytes", "__data__": system}),
        nested(
            "ty-alice",
            "ty-bob",
            "n5",
            {"__type__": "pipecat.frames.frames.TextFrame", "__data__": {"text": system}},
        ),
        nested("ty-alice", "ty-bob", "n6", {"__type__": "pipecat_evil.X", "__data__": {}}),
        nested("ty-alice", "ty-bob", "n7", {"__type__": ["pipecat.x"], "__data__": {}}),
        nested("ty-alice", "ty-bob", "n8", {"__type__": "bytesx", "__data__": "AA=="}),
    ]
    await send_then_sentinel(auth_hub, alice, bob, bad, "nested_type_not_allowed")


async def test_allowed_nested_types_pass(auth_hub: SecureHub, pair: tuple[Peer, Peer]) -> None:
    alice, bob = pair
    good = nested(
        "ty-alice",
        "ty-bob",
        "good",
        [
            {"__type__": "bytes", "__data__": "AAEC"},
            {"__type__": "pipecat.frames.frames.TextFrame", "__data__": {"text": "hi"}},
            {"__type__": "pipecat_subagents.types.AgentRegistryEntry", "__data__": {"name": "x"}},
        ],
    )
    await alice.send(good)
    received = await bob.expect_label("good")
    assert received["__data__"]["payload"]["inner"] == good["__data__"]["payload"]["inner"]


async def test_disallowed_types_from_a_msgpack_client_are_dropped(auth_hub: SecureHub) -> None:
    alice = await Peer.connect(
        auth_hub, "tm-alice", token=token("tm-alice", ["tm-bob"]), peer="tm-bob", fmt="msgpack"
    )
    bob = await Peer.connect(auth_hub, "tm-bob", token=token("tm-bob"))
    try:
        bad_top = with_type("os.system", "tm-alice", "tm-bob", "top")
        bad_nested = nested(
            "tm-alice", "tm-bob", "nested", {"__type__": "os.system", "__data__": 1}
        )
        # A type name that is not text at all.
        bad_bin = copy.deepcopy(bad_top)
        bad_bin["__type__"] = b"pipecat_subagents.bus.messages.BusTaskRequestMessage"
        before_nested = auth_hub.dropped("nested_type_not_allowed")
        before_top = auth_hub.dropped("type_not_allowed")
        before_bad = auth_hub.dropped("not_a_message")
        for message in (bad_top, bad_nested, bad_bin):
            await alice.send(message)
        await alice.send(task_request("tm-alice", "tm-bob", {"label": "sentinel"}))
        await bob.expect_label("sentinel")
        assert bob.labels() == ["sentinel"]
        assert auth_hub.dropped("type_not_allowed") == before_top + 1
        assert auth_hub.dropped("nested_type_not_allowed") == before_nested + 1
        assert auth_hub.dropped("not_a_message") == before_bad + 1
    finally:
        await alice.close()
        await bob.close()


def registry(kind: str, source: str, target: str | None, agent: str) -> dict[str, Any]:
    """A registry message as a client could forge it, naming ``agent``."""
    if kind == "subagents":
        entry = {"__type__": "pipecat_subagents.types.AgentRegistryEntry", "__data__": {}}
        entry["__data__"] = {"name": agent}
        data: dict[str, Any] = {"source": source, "runner": "evil-runner", "agents": [entry]}
        type_name = SUBAGENTS_REGISTRY
    else:
        entry = {"__type__": "pipecat.registry.types.WorkerRegistryEntry", "__data__": {}}
        entry["__data__"] = {"name": agent}
        data = {"source": source, "runner": "evil-runner", "workers": [entry]}
        type_name = PIPECAT_REGISTRY
    if target is not None:
        data["target"] = target
    return {"__type__": type_name, "__data__": data}


async def test_forged_registry_messages_never_reach_the_peer(
    auth_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    alice, bob = pair
    announced = len(bob.announcements)
    bad = [
        registry(kind, source, target, "ty-evil")
        for kind in ("subagents", "pipecat")
        for source in ("ty-alice", "bushub")
        for target in ("ty-bob", None)
    ]
    await send_then_sentinel(auth_hub, alice, bob, bad, "registry")
    assert len(bob.announcements) == announced
    assert all(b"evil" not in frame for frame in bob.raw)


async def test_custom_type_passes_only_where_the_operator_allows_it(
    ops_hub: SecureHub, auth_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    def custom(source: str, target: str, label: str) -> dict[str, Any]:
        payload = {"label": label, "thing": {"__type__": CUSTOM_PREFIX + "Thing", "__data__": {}}}
        return {
            "__type__": CUSTOM_TYPE,
            "__data__": {"source": source, "target": target, "payload": payload},
        }

    # Without --allow-types / --allow-type-prefixes: dropped.
    alice, bob = pair
    await send_then_sentinel(
        auth_hub, alice, bob, [custom("ty-alice", "ty-bob", "custom")], "type_not_allowed"
    )

    # On the hub that allows them: relayed, and only them.
    sender = await Peer.connect(ops_hub, "cu-sender", peer="cu-receiver")
    receiver = await Peer.connect(ops_hub, "cu-receiver")
    try:
        await sender.send(custom("cu-sender", "cu-receiver", "custom"))
        got = await receiver.expect_label("custom")
        assert got["__type__"] == CUSTOM_TYPE
        other_top = custom("cu-sender", "cu-receiver", "other-top")
        other_top["__type__"] = "myapp.bus.OtherMessage"
        other_nested = custom("cu-sender", "cu-receiver", "other-nested")
        other_nested["__data__"]["payload"]["thing"]["__type__"] = "myapp.typesX.Thing"
        before_top = ops_hub.dropped("type_not_allowed")
        before_nested = ops_hub.dropped("nested_type_not_allowed")
        for message in (other_top, other_nested):
            await sender.send(message)
        await sender.send(task_request("cu-sender", "cu-receiver", {"label": "sentinel"}))
        await receiver.expect_label("sentinel")
        assert receiver.labels() == ["custom", "sentinel"]
        assert ops_hub.dropped("type_not_allowed") == before_top + 1
        assert ops_hub.dropped("nested_type_not_allowed") == before_nested + 1
    finally:
        await sender.close()
        await receiver.close()


async def test_pipecat_ui_worker_messages_are_relayed(
    auth_hub: SecureHub, pair: tuple[Peer, Peer]
) -> None:
    # pipecat core's UI worker protocol crosses workers on the bus like any other
    # BusDataMessage; a remote UIWorker behind the stock proxy depends on it.
    import json

    from pipecat.bus.serializers import JSONMessageSerializer
    from pipecat.bus.ui.messages import BusUICommandMessage, BusUIEventMessage

    alice, bob = pair
    serializer = JSONMessageSerializer()
    before = auth_hub.dropped("type_not_allowed")
    for cls, label in ((BusUIEventMessage, "ui-event"), (BusUICommandMessage, "ui-command")):
        message = cls(source="ty-alice", target="ty-bob", payload={"label": label})
        await alice.send(json.loads(serializer.serialize(message)))
    await alice.send(task_request("ty-alice", "ty-bob", {"label": "sentinel"}))
    await bob.expect_label("sentinel")
    assert auth_hub.dropped("type_not_allowed") == before
    assert bob.labels() == ["ui-event", "ui-command", "sentinel"]
