"""A message's ``source`` is whoever its receiver believes sent it: with auth on it must
be a name the socket's token could hold (its ``agents`` claim, globs included).

The stock proxy forwards its other local agents' messages too, so a token for a
proxy lists them all (or a glob). Anything else is dropped and counted
(``source_not_allowed``) while the socket keeps working. With auth off a source is
not checked.
"""

import pytest

from tests.security.helpers import Peer, SecureHub, task_request, token, wait_for_metric

pytestmark = pytest.mark.integration


async def test_forged_source_is_dropped_and_counted(auth_hub: SecureHub) -> None:
    voice = await Peer.connect(auth_hub, "s-voice-9", token=token("s-voice-9", ["s-worker-*"]))
    worker = await Peer.connect(auth_hub, "s-worker-1", token=token("s-worker-1"))
    try:
        before = auth_hub.dropped("source_not_allowed")
        # Twice: the second refusal comes from the connection's cache of checked sources.
        for i in range(2):
            await voice.send(task_request("s-worker-2", "s-worker-1", {"label": f"forged-{i}"}))
        await voice.send(task_request("s-voice-9", "s-worker-1", {"label": "genuine"}))
        await worker.expect_label("genuine")
        # One socket's messages are published in order: the forged ones came first.
        assert worker.labels() == ["genuine"]
        assert auth_hub.dropped("source_not_allowed") == before + 2
        assert not voice.closed
        # The checked source is remembered as allowed too.
        await voice.send(task_request("s-voice-9", "s-worker-1", {"label": "again"}))
        await worker.expect_label("again")
        assert auth_hub.dropped("source_not_allowed") == before + 2
    finally:
        await voice.close()
        await worker.close()


async def test_sources_the_grant_covers_pass(auth_hub: SecureHub) -> None:
    # A proxy holding g-voice-1 forwards for its local g-voice-2 and g-tts: its
    # token's agents name them (a glob and an exact name).
    proxy_token = token(["g-voice-*", "g-tts"], ["g-worker"])
    proxy = await Peer.connect(auth_hub, "g-voice-1", token=proxy_token)
    worker = await Peer.connect(auth_hub, "g-worker", token=token("g-worker"))
    try:
        before = auth_hub.dropped("source_not_allowed")
        for source in ("g-voice-1", "g-voice-2", "g-tts", "g-ttsx", "g-voice", "G-voice-3"):
            await proxy.send(task_request(source, "g-worker", {"label": source}))
        await proxy.send(task_request("g-voice-1", "g-worker", {"label": "last"}))
        await worker.expect_label("last")
        assert worker.labels() == ["g-voice-1", "g-voice-2", "g-tts", "last"]
        await wait_for_metric(
            auth_hub, "bushub_messages_dropped_total", {"reason": "source_not_allowed"}, before + 3
        )
    finally:
        await proxy.close()
        await worker.close()


async def test_with_auth_off_the_source_is_not_checked(ops_hub: SecureHub) -> None:
    sender = await Peer.connect(ops_hub, "u-sender")
    sink = await Peer.connect(ops_hub, "u-sink")
    try:
        await sender.send(task_request("u-someone-else", "u-sink", {"label": "relayed"}))
        message = await sink.expect_label("relayed")
        assert message["__data__"]["source"] == "u-someone-else"
        assert ops_hub.dropped("source_not_allowed") == 0
    finally:
        await sender.close()
        await sink.close()
