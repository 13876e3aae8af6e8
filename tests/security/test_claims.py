"""Authorization: the token's ``agents`` and ``targets`` claims, with real sockets.

A name or peer outside the claim is refused before the upgrade (403); a message to a
target outside the claim is dropped and counted (``target_not_allowed``) while the
socket keeps working; taking over a name needs a token for that name.
"""

import time

import jwt
import pytest

from tests.security.helpers import (
    ADMIN_TOKEN,
    SECRET,
    Peer,
    SecureHub,
    assert_accepted,
    assert_refused,
    refusal,
    task_request,
    token,
    wait_for_metric,
)

pytestmark = pytest.mark.integration


async def test_wrong_agent_is_403(auth_hub: SecureHub) -> None:
    await assert_refused(auth_hub, "bob", 403, "agent_not_allowed", token=token("alice"))
    await assert_refused(
        auth_hub, "bob", 403, "agent_not_allowed", token=token("alice"), via="query"
    )


async def test_token_without_agents_or_sub_holds_nothing(auth_hub: SecureHub) -> None:
    await assert_refused(auth_hub, "alice", 403, "agent_not_allowed", token=token(None))


async def test_sub_stands_in_for_agents(auth_hub: SecureHub) -> None:
    await assert_accepted(auth_hub, "alice", token=token(None, sub="alice"))
    await assert_refused(auth_hub, "bob", 403, "agent_not_allowed", token=token(None, sub="alice"))


async def test_an_empty_agents_claim_holds_nothing_whatever_sub_says(auth_hub: SecureHub) -> None:
    # An identity provider's ``sub`` may happen to be an agent's name.
    await assert_refused(auth_hub, "alice", 403, "agent_not_allowed", token=token([], sub="alice"))


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "agents": ["alice", 1]},
        {"sub": "alice", "agents": {"alice": True}},
        {"sub": "alice", "agents": 7},
        {"sub": "alice", "targets": [["bob"]]},
        {"sub": "alice", "agents": None},  # null is no absence: sub held the name
    ],
    ids=["agents-mixed-list", "agents-object", "agents-number", "targets-nested", "agents-null"],
)
async def test_a_claim_of_another_type_refuses_the_token(
    auth_hub: SecureHub, claims: dict[str, object]
) -> None:
    # Read as absent before: a malformed ``agents`` let ``sub`` hold the name.
    now = int(time.time())
    bad = jwt.encode({"iat": now, "exp": now + 300, **claims}, SECRET, algorithm="HS256")
    await assert_refused(auth_hub, "alice", 401, "bad_claims", token=bad)


async def test_glob_agent_claims(auth_hub: SecureHub) -> None:
    voice = token("voice-*")
    await assert_accepted(auth_hub, "voice-1", token=voice)
    await assert_accepted(auth_hub, "voice-eu-7", token=voice)
    for name in ("voicemail", "xvoice-1", "voice", "Voice-1"):
        await assert_refused(auth_hub, name, 403, "agent_not_allowed", token=voice)
    several = token(["alice", "ops-?"])
    await assert_accepted(auth_hub, "ops-1", token=several)
    await assert_refused(auth_hub, "ops-12", 403, "agent_not_allowed", token=several)


async def test_brackets_in_a_claim_are_the_names_own(auth_hub: SecureHub) -> None:
    """``[...]`` is no character class: a grant of the legal name ``job[1]`` held
    ``job1`` and not itself, and one of ``[!a]dmin`` held ``xdmin``."""
    exact = token(["job[1]", "[!a]dmin"])
    await assert_accepted(auth_hub, "job[1]", token=exact)
    await assert_accepted(auth_hub, "[!a]dmin", token=exact)
    for name in ("job1", "xdmin"):
        await assert_refused(auth_hub, name, 403, "agent_not_allowed", token=exact)


async def test_peer_outside_targets_is_403(auth_hub: SecureHub) -> None:
    alice = token("alice", ["bob", "worker-*"])
    await assert_accepted(auth_hub, "alice", token=alice, peer="bob")
    await assert_accepted(auth_hub, "alice", token=alice, peer="worker-3")
    await assert_refused(auth_hub, "alice", 403, "peer_not_allowed", token=alice, peer="carol")
    await assert_refused(auth_hub, "alice", 403, "peer_not_allowed", token=alice, peer="worker")
    # No targets claim: a peer is never allowed.
    await assert_refused(
        auth_hub, "alice", 403, "peer_not_allowed", token=token("alice"), peer="bob"
    )


async def test_takeover_without_a_claim_is_refused_and_the_holder_keeps_working(
    auth_hub: SecureHub,
) -> None:
    alice = await Peer.connect(auth_hub, "t-alice", token=token("t-alice", ["t-bob"]), peer="t-bob")
    bob = await Peer.connect(auth_hub, "t-bob", token=token("t-bob", ["t-alice"]), peer="t-alice")
    try:
        await alice.announced("t-bob")
        mallory = token("mallory", ["*"])
        for via in ("header", "query"):
            await assert_refused(
                auth_hub, "t-alice", 403, "agent_not_allowed", token=mallory, via=via
            )
        # A forged token for the name does not do it either.
        forged = token("t-alice", key="an attacker's own secret of 32+ bytes, not the hub's")
        await assert_refused(auth_hub, "t-alice", 401, "bad_token", token=forged)

        await alice.send(task_request("t-alice", "t-bob", {"label": "after-attempts"}))
        await bob.send(task_request("t-bob", "t-alice", {"label": "reply"}))
        await bob.expect_label("after-attempts")
        await alice.expect_label("reply")
        assert not alice.closed and not bob.closed
    finally:
        await alice.close()
        await bob.close()


async def test_takeover_with_a_claim_closes_the_older_socket(auth_hub: SecureHub) -> None:
    first = await Peer.connect(auth_hub, "tk-alice", token=token("tk-alice"))
    second = await Peer.connect(auth_hub, "tk-alice", token=token("tk-*"))
    try:
        assert await first.wait_closed() == 4001
        assert not second.closed
    finally:
        await first.close()
        await second.close()


async def test_target_outside_the_claim_is_dropped_and_the_socket_keeps_working(
    auth_hub: SecureHub,
) -> None:
    alice = await Peer.connect(auth_hub, "o-alice", token=token("o-alice", ["o-bob"]), peer="o-bob")
    bob = await Peer.connect(auth_hub, "o-bob", token=token("o-bob", ["o-alice"]))
    carol = await Peer.connect(auth_hub, "o-carol", token=token("o-carol"))
    dave = await Peer.connect(auth_hub, "o-dave", token=token("o-dave", ["o-carol"]))
    try:
        before = auth_hub.dropped("target_not_allowed")
        for i in range(3):
            await alice.send(task_request("o-alice", "o-carol", {"label": f"to-carol-{i}"}))
        await alice.send(task_request("o-alice", "o-bob", {"label": "to-bob"}))
        await bob.expect_label("to-bob")
        assert auth_hub.dropped("target_not_allowed") == before + 3
        # Carol gets the next message addressed to her, and nothing from alice.
        await dave.send(task_request("o-dave", "o-carol", {"label": "sentinel"}))
        await carol.expect_label("sentinel")
        assert carol.labels() == ["sentinel"]
        assert not alice.closed
    finally:
        for peer in (alice, bob, carol, dave):
            await peer.close()


async def test_token_without_targets_can_send_to_no_one(auth_hub: SecureHub) -> None:
    loner = await Peer.connect(auth_hub, "n-loner", token=token("n-loner"))
    bob = await Peer.connect(auth_hub, "n-bob", token=token("n-bob"))
    try:
        before = auth_hub.dropped("target_not_allowed")
        await loner.send(task_request("n-loner", "n-bob", {"label": "hello"}))
        await loner.send(task_request("n-loner", "n-loner", {"label": "to-self"}))
        await wait_for_metric(
            auth_hub, "bushub_messages_dropped_total", {"reason": "target_not_allowed"}, before + 2
        )
        assert not loner.closed
        assert bob.labels() == [] and loner.labels() == []
    finally:
        await loner.close()
        await bob.close()


async def test_refused_names_never_reach_presence(auth_hub: SecureHub) -> None:
    # A refused handshake leaves no trace an admin (or a peer) would see.
    status, _ = await refusal(auth_hub, "ghost", token=token("alice"))
    assert status == 403
    code, body = auth_hub.get("/agents", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert code == 200
    assert b'"ghost"' not in body
