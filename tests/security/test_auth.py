"""Authentication: which tokens open a socket, against real hub processes.

HS256 on ``auth_hub``; RS256/ES256 with two listed public keys (a rotation) on
``keys_hub``. A refused handshake is an HTTP status before the upgrade, its body
says only the status, and the reason is counted in
``bushub_connections_refused_total{reason}``.
"""

import time

import pytest

from tests.security.conftest import Keys
from tests.security.helpers import (
    OTHER_SECRET,
    SECRET,
    SecureHub,
    assert_accepted,
    assert_refused,
    forged_token,
    token,
)

pytestmark = pytest.mark.integration


async def test_no_token_is_401(auth_hub: SecureHub) -> None:
    await assert_refused(auth_hub, "alice", 401, "missing_token")
    await assert_refused(auth_hub, "alice", 401, "missing_token", token="", via="query")


async def test_without_a_token_what_is_asked_for_is_not_read(auth_hub: SecureHub) -> None:
    # A bad name, format or peer was answered 403 bad_parameters first: the client
    # learned how parameters are read, and the metric showed no missing token.
    for agent, fmt, peer in (
        ("a{b}", "json", None),
        ("alice", "xml", None),
        ("alice", "json", "p{"),
    ):
        await assert_refused(auth_hub, agent, 401, "missing_token", fmt=fmt, peer=peer)


async def test_empty_bearer_falls_back_to_nothing(auth_hub: SecureHub) -> None:
    # "Authorization: Bearer " with no value is no token at all.
    before = auth_hub.refused("missing_token")
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with connect(
            f"{auth_hub.url}/ws/alice",
            additional_headers={"Authorization": "Bearer "},
            proxy=None,
        ):
            pass
    assert info.value.response.status_code == 401
    assert auth_hub.refused("missing_token") == before + 1


async def test_bad_signature_is_401(auth_hub: SecureHub) -> None:
    await assert_refused(
        auth_hub, "alice", 401, "bad_token", token=token("alice", key=OTHER_SECRET)
    )
    # The right payload with its signature cut off or tampered with.
    good = token("alice")
    head, body, signature = good.split(".")
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=f"{head}.{body}.")
    tampered = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=f"{head}.{body}.{tampered}")
    await assert_refused(auth_hub, "alice", 401, "bad_token", token="not-a-jwt")


async def test_unsigned_and_other_algorithm_tokens_are_401(auth_hub: SecureHub) -> None:
    claims = {"agents": ["alice"], "exp": int(time.time()) + 300}
    unsigned = forged_token({"alg": "none", "typ": "JWT"}, claims, None)
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=unsigned)
    # The right secret, an algorithm the hub does not accept.
    hs512 = token("alice", algorithm="HS512")
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=hs512)


async def test_token_without_exp_is_401(auth_hub: SecureHub) -> None:
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=token("alice", exp=None))


async def test_an_exp_that_is_not_a_number_is_401(auth_hub: SecureHub) -> None:
    """RFC 7519 makes ``exp`` a number; PyJWT reads a string of digits as one, so a
    token whose ``exp`` was ``"<digits>"`` (even with blanks around) was let in."""
    later = int(time.time()) + 300
    for exp in (str(later), f" {later} "):
        claims = {"agents": ["alice"], "exp": exp}
        odd = forged_token({"alg": "HS256", "typ": "JWT"}, claims, SECRET.encode())
        await assert_refused(auth_hub, "alice", 401, "bad_token", token=odd)


async def test_expired_beyond_leeway_is_401(auth_hub: SecureHub) -> None:
    expired = token("alice", exp=int(time.time()) - 60)
    await assert_refused(auth_hub, "alice", 401, "expired", token=expired)
    await assert_refused(auth_hub, "alice", 401, "expired", token=expired, via="query")


async def test_expired_within_leeway_is_accepted(auth_hub: SecureHub) -> None:
    # The hub runs with --jwt-leeway 5.
    await assert_accepted(auth_hub, "alice", token=token("alice", exp=int(time.time()) - 2))


async def test_not_yet_valid_is_401_beyond_leeway_and_accepted_within(
    auth_hub: SecureHub,
) -> None:
    early = token("alice", nbf=int(time.time()) + 120)
    await assert_refused(auth_hub, "alice", 401, "bad_token", token=early)
    await assert_accepted(auth_hub, "alice", token=token("alice", nbf=int(time.time()) + 2))


async def test_token_in_header_or_query(auth_hub: SecureHub) -> None:
    good = token("alice")
    await assert_accepted(auth_hub, "alice", token=good, via="header")
    await assert_accepted(auth_hub, "alice", token=good, via="query")


async def test_a_bad_header_is_not_rescued_by_a_good_query_token(auth_hub: SecureHub) -> None:
    # The header wins when both are given: a forged header plus someone's leaked
    # query token must not mix.
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with connect(
            f"{auth_hub.url}/ws/alice?token={token('alice')}",
            additional_headers={"Authorization": f"Bearer {token('alice', key=OTHER_SECRET)}"},
            proxy=None,
        ):
            pass
    assert info.value.response.status_code == 401


# ---- RS256 / ES256 with key rotation ------------------------------------------


async def test_tokens_signed_by_either_listed_key_pass(keys_hub: SecureHub, keys: Keys) -> None:
    await assert_accepted(keys_hub, "alice", token=token("alice", key=keys.rsa, algorithm="RS256"))
    await assert_accepted(keys_hub, "alice", token=token("alice", key=keys.ec, algorithm="ES256"))


async def test_token_signed_by_an_unlisted_key_is_401(keys_hub: SecureHub, keys: Keys) -> None:
    third = token("alice", key=keys.unlisted, algorithm="RS256")
    await assert_refused(keys_hub, "alice", 401, "bad_token", token=third)


async def test_expired_rs256_token_is_401(keys_hub: SecureHub, keys: Keys) -> None:
    expired = token("alice", key=keys.rsa, algorithm="RS256", exp=int(time.time()) - 60)
    await assert_refused(keys_hub, "alice", 401, "expired", token=expired)


async def test_hs256_tokens_fail_on_a_public_key_hub(keys_hub: SecureHub, keys: Keys) -> None:
    await assert_refused(keys_hub, "alice", 401, "bad_token", token=token("alice", key=SECRET))
    # Key confusion: HS256 keyed with the published RSA public key.
    claims = {"agents": ["alice"], "exp": int(time.time()) + 300}
    confused = forged_token({"alg": "HS256", "typ": "JWT"}, claims, keys.rsa_public)
    await assert_refused(keys_hub, "alice", 401, "bad_token", token=confused)
    await assert_refused(keys_hub, "alice", 401, "missing_token")
