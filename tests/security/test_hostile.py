"""A hostile client with a valid token for "mallory" tries to read alice's traffic.

Alice talks to bob; both hold tokens for their own name and each other as target.
Mallory tries every door: connecting as alice or bob, pairing with alice, addressing
alice or bob, taking alice's name over, forged and stolen-looking tokens, forged
registry messages. Then alice and bob exchange their traffic, and the test shows
that each received everything the other sent, in order, and that mallory received
nothing at all: a message sent to mallory afterwards is the first and only thing she
gets (messages to one socket arrive in the order the hub published them).
"""

from typing import Any

import pytest

from tests.security.helpers import (
    Peer,
    SecureHub,
    assert_refused,
    forged_token,
    refusal,
    task_request,
    token,
)

pytestmark = pytest.mark.integration

ROUNDS = 20


def frame_message(source: str, target: str | None, label: str) -> dict[str, Any]:
    """A bridged-frame message: untargeted ones go to the sender's peer."""
    data: dict[str, Any] = {"source": source, "payload": {"label": label}}
    if target is not None:
        data["target"] = target
    return {"__type__": "pipecat_subagents.bus.messages.BusFrameMessage", "__data__": data}


async def test_mallory_cannot_read_or_disturb_alice_and_bob(auth_hub: SecureHub) -> None:
    alice = await Peer.connect(auth_hub, "h-alice", token=token("h-alice", ["h-bob"]), peer="h-bob")
    bob = await Peer.connect(auth_hub, "h-bob", token=token("h-bob", ["h-alice"]), peer="h-alice")
    mallory_token = token("h-mallory", ["h-mallory-friend"])
    peers = [alice, bob]
    try:
        await alice.announced("h-bob")
        await bob.announced("h-alice")

        # 1. Connect as alice or bob (header and query), with her own token: refused.
        for name in ("h-alice", "h-bob"):
            for via in ("header", "query"):
                await assert_refused(
                    auth_hub, name, 403, "agent_not_allowed", token=mallory_token, via=via
                )
                await assert_refused(
                    auth_hub,
                    name,
                    403,
                    "agent_not_allowed",
                    token=mallory_token,
                    via=via,
                    peer="h-mallory-friend",
                )
        # 2. Pair with alice from her own name: refused without a claim on alice.
        await assert_refused(
            auth_hub, "h-mallory", 403, "peer_not_allowed", token=mallory_token, peer="h-alice"
        )
        # 3. Tokens she might make herself: her own secret, no signature, a glob on
        #    every name without a valid signature.
        claims = {"agents": ["*"], "targets": ["*"], "exp": 2_000_000_000}
        for forged in (
            token(["*"], ["*"], key="mallory's own secret, long enough: 0123456789"),
            forged_token({"alg": "none", "typ": "JWT"}, claims, None),
            forged_token({"alg": "HS256", "typ": "JWT"}, claims, b"guess"),
        ):
            status, _ = await refusal(auth_hub, "h-alice", token=forged)
            assert status == 401
        # Alice and bob were never disturbed.
        assert not alice.closed and not bob.closed

        # 4. Connect as herself and address alice and bob every way she can.
        mallory = await Peer.connect(auth_hub, "h-mallory", token=mallory_token)
        peers.append(mallory)
        before = auth_hub.dropped("target_not_allowed")
        attempts = [
            task_request("h-mallory", "h-alice", {"label": "evil-task"}),
            task_request("h-alice", "h-bob", {"label": "evil-spoofed-source"}),
            frame_message("h-mallory", "h-alice", "evil-frame"),
            frame_message("h-alice", "h-bob", "evil-frame-spoofed"),
        ]
        for message in attempts:
            await mallory.send(message)
        # Untargeted with no peer: nowhere to go.
        await mallory.send(frame_message("h-mallory", None, "evil-untargeted"))
        # Forged registry messages announcing herself as bob's peer.
        for kind, field, entry in (
            (
                "pipecat_subagents.bus.messages.BusAgentRegistryMessage",
                "agents",
                "pipecat_subagents.types.AgentRegistryEntry",
            ),
            (
                "pipecat.bus.messages.BusWorkerRegistryMessage",
                "workers",
                "pipecat.registry.types.WorkerRegistryEntry",
            ),
        ):
            forged_registry = {
                "__type__": kind,
                "__data__": {
                    "source": "bushub",
                    "target": "h-alice",
                    "runner": "evil-runner",
                    field: [{"__type__": entry, "__data__": {"name": "h-bob"}}],
                },
            }
            await mallory.send(forged_registry)

        # 5. A takeover of alice's name with her token: refused; alice keeps her name.
        await assert_refused(auth_hub, "h-alice", 403, "agent_not_allowed", token=mallory_token)

        # 6. Alice and bob talk: each gets everything, in order.
        for i in range(ROUNDS):
            await alice.send(task_request("h-alice", "h-bob", {"label": f"a{i}"}))
            await bob.send(task_request("h-bob", "h-alice", {"label": f"b{i}"}))
            await alice.send(frame_message("h-alice", None, f"fa{i}"))
        await bob.expect_label(f"fa{ROUNDS - 1}")
        await alice.expect_label(f"b{ROUNDS - 1}")
        expected_at_bob = [label for i in range(ROUNDS) for label in (f"a{i}", f"fa{i}")]
        assert bob.labels() == expected_at_bob
        assert alice.labels() == [f"b{i}" for i in range(ROUNDS)]
        assert auth_hub.dropped("target_not_allowed") == before + len(attempts)
        assert not any(b"evil" in frame for peer in (alice, bob) for frame in peer.raw)

        # 7. Mallory got nothing: a message to her now is the first thing she receives.
        friend = await Peer.connect(
            auth_hub, "h-mallory-friend", token=token("h-mallory-friend", ["h-mallory"])
        )
        peers.append(friend)
        await friend.send(task_request("h-mallory-friend", "h-mallory", {"label": "sentinel"}))
        await mallory.expect_label("sentinel")
        assert mallory.labels() == ["sentinel"]
        assert mallory.announcements == []
        assert not any(b"h-alice" in frame or b"h-bob" in frame for frame in mallory.raw)
        assert not alice.closed and not bob.closed and not mallory.closed
    finally:
        for peer in peers:
            await peer.close()


async def test_even_a_token_for_every_target_does_not_let_mallory_read(
    auth_hub: SecureHub,
) -> None:
    """Targets say whom a socket may send to; they never route anyone else's traffic."""
    alice = await Peer.connect(auth_hub, "w-alice", token=token("w-alice", ["w-bob"]), peer="w-bob")
    bob = await Peer.connect(auth_hub, "w-bob", token=token("w-bob", ["w-alice"]), peer="w-alice")
    # Mallory may address anyone and pairs with alice: she learns alice is there...
    mallory = await Peer.connect(
        auth_hub, "w-mallory", token=token("w-mallory", ["*"]), peer="w-alice"
    )
    try:
        await mallory.announced("w-alice")
        await bob.announced("w-alice")
        for i in range(ROUNDS):
            await alice.send(task_request("w-alice", "w-bob", {"label": f"a{i}"}))
            await alice.send(frame_message("w-alice", None, f"fa{i}"))
            await bob.send(task_request("w-bob", "w-alice", {"label": f"b{i}"}))
        await bob.expect_label(f"fa{ROUNDS - 1}")
        await alice.expect_label(f"b{ROUNDS - 1}")
        # ...but receives none of the traffic: the next message to her comes first.
        await alice.close()
        sender = await Peer.connect(auth_hub, "w-alice", token=token("w-alice", ["w-mallory"]))
        await sender.send(task_request("w-alice", "w-mallory", {"label": "sentinel"}))
        await mallory.expect_label("sentinel")
        assert mallory.labels() == ["sentinel"]
        await sender.close()
    finally:
        for peer in (alice, bob, mallory):
            await peer.close()


async def test_takeover_from_another_node_needs_the_claim_too(
    auth_cluster: list[SecureHub],
) -> None:
    n1, n2 = auth_cluster
    alice = await Peer.connect(n1, "x-alice", token=token("x-alice", ["x-bob"]), peer="x-bob")
    bob = await Peer.connect(n2, "x-bob", token=token("x-bob", ["x-alice"]), peer="x-alice")
    try:
        await alice.announced("x-bob")
        await assert_refused(n2, "x-alice", 403, "agent_not_allowed", token=token("x-mallory"))
        await bob.send(task_request("x-bob", "x-alice", {"label": "still-mine"}))
        await alice.expect_label("still-mine")
        assert not alice.closed
        # With the claim, the same move from the other node does take the name over.
        thief = await Peer.connect(n2, "x-alice", token=token("x-alice"))
        assert await alice.wait_closed() == 4001
        await thief.close()
    finally:
        await alice.close()
        await bob.close()
