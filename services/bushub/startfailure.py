"""A node its Redis refuses at start-up says so in one line, not in a traceback.

A refusal at start (a wrong password, a password for a Redis that has none, a user
without a command the node needs) is a setting to fix, and Redis' answer says which.
Starlette hands uvicorn the traceback of whatever ended the lifespan, and uvicorn logs
it as one ERROR line of several kilobytes, the reason at its very end. The lifespan
logs the refusal itself (``refusal``); ``QuietRefusals``, around the app, then gives
uvicorn the failure without the traceback. uvicorn still reports "Application
startup failed" and exits with its start-up failure code (3). Anything else that ends
a start keeps its traceback: that is a bug to read.
"""

from redis.exceptions import AuthenticationError, RedisClusterException, ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bushub.broker.respconn import ReplyError
from bushub.broker.startwait import refusal_in

# Redis answered, and said no: redis-py's typed error replies and refused logins, and
# the raw connections' refused AUTH or SELECT.
_REFUSALS = (ResponseError, AuthenticationError, ReplyError)


class StartRefused(Exception):
    """Redis refused the node at start-up; logged already."""


def refusal(exc: BaseException) -> BaseException | None:
    """Redis' refusal in ``exc`` or what caused it; None otherwise."""
    found = refusal_in(exc, _REFUSALS)
    cause: BaseException | None = exc
    while found is None and cause is not None:
        # redis-py's cluster client raises its own error while it handles Redis'
        # answer ("cluster support disabled": a Redis without cluster mode given as a
        # redis+cluster:// URL): the answer is that error's context, not its cause.
        if isinstance(cause, RedisClusterException) and isinstance(cause.__context__, _REFUSALS):
            found = cause.__context__
        cause = cause.__cause__
    return found


class QuietRefusals:
    """ASGI middleware: a lifespan that ended with ``StartRefused`` fails its start
    without the traceback Starlette attaches (what to say was logged already)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        # Starlette sends the failure, then raises what ended the lifespan: the
        # failure waits here until that says which it was.
        failed: list[Message] = []

        async def send_later(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, send_later)
        except StartRefused:
            await send({"type": "lifespan.startup.failed", "message": ""})
            raise
        except BaseException:
            for message in failed:
                await send(message)
            raise
        for message in failed:  # sent without raising: passed on as it came
            await send(message)
