"""``QuietRefusals``: a start Redis refused fails without a traceback; any other
failure keeps the one Starlette attaches."""

import traceback
from typing import Any

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from bushub.broker.respconn import ReplyError
from bushub.startfailure import QuietRefusals, StartRefused, refusal


def failing_lifespan(error: BaseException) -> Any:
    """An app whose lifespan fails as Starlette's router does: it sends the failure
    with the traceback, then raises."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            raise error
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
            raise

    return app


async def run(app: Any) -> tuple[list[dict[str, Any]], BaseException | None]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    try:
        await QuietRefusals(app)({"type": "lifespan"}, receive, send)
    except BaseException as exc:  # what uvicorn's lifespan would catch
        return sent, exc
    return sent, None


async def test_a_refused_start_fails_without_the_traceback() -> None:
    sent, raised = await run(failing_lifespan(StartRefused()))
    assert sent == [{"type": "lifespan.startup.failed", "message": ""}]
    assert isinstance(raised, StartRefused)


async def test_any_other_failure_keeps_its_traceback() -> None:
    sent, raised = await run(failing_lifespan(RuntimeError("a bug")))
    (failed,) = sent
    assert failed["type"] == "lifespan.startup.failed"
    assert "Traceback" in failed["message"] and "RuntimeError: a bug" in failed["message"]
    assert isinstance(raised, RuntimeError)


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("invalid username-password pair"),
        NoPermissionError("this user has no permissions to run the 'evalsha' command"),
        ReplyError("redis refused AUTH: WRONGPASS invalid username-password pair"),
    ],
)
def test_redis_refusals_are_found_in_what_they_caused(error: Exception) -> None:
    assert refusal(error) is error
    try:
        raise RedisConnectionError("cluster unreachable") from error
    except RedisConnectionError as wrapped:
        assert refusal(wrapped) is error


def test_an_unreachable_redis_is_not_a_refusal() -> None:
    assert refusal(RedisConnectionError("Connection refused")) is None
    assert refusal(OSError("no route")) is None
