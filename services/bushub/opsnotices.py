"""What operators are watching, as every node learns it from the ops channel.

A node serving a tap or a console says so on the ops channel (``ops_channel``) when it
starts and every ``RENEW_EVERY`` seconds after; every node keeps what it heard for
``NOTICE_LIFETIME`` seconds. Nothing is stored in the broker, so a node that starts
late learns within one renewal, and a tap whose node died lapses by itself.

Until someone watches, the tables here are empty and the relay's only cost is the
truth test of an empty dict per message.
"""

import asyncio
import time
from collections.abc import Callable

import orjson

from bushub.ondemand import OnDemandTask
from buswire.channels import ops_channel

# A notice holds this long unless renewed; renewals come three times in it, so one
# lost notice does not end a tap.
NOTICE_LIFETIME = 6.0
RENEW_EVERY = 2.0


def tap_notice(agent: str) -> bytes:
    """Notice that ``agent``'s traffic is wanted on its tap channel."""
    return orjson.dumps({"tap": agent, "for": NOTICE_LIFETIME})


def watch_notice() -> bytes:
    """Notice that a console wants every node's report."""
    return orjson.dumps({"watch": NOTICE_LIFETIME})


class Watched:
    """The taps and consoles this node has heard of, each until its notice lapses.

    Args:
        clock: Monotonic seconds (notices carry durations, not times: nodes' clocks
            need not agree).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Agent -> when its tap lapses. Read by the relay per message: it is mutated in
        # place, never replaced, so a reference to it stays current.
        self.tapped: dict[str, float] = {}
        self._console_until = 0.0

    def heard(self, data: bytes) -> None:
        """Take one notice from the ops channel; anything unreadable is ignored (the
        channel is the cluster's own, but a bad notice must not break the node)."""
        try:
            notice = orjson.loads(data)
            lifetime = min(float(notice["for" if "tap" in notice else "watch"]), 60.0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        until = self._clock() + lifetime
        if "tap" in notice:
            agent = notice["tap"]
            if isinstance(agent, str) and agent:
                self.tapped[agent] = max(self.tapped.get(agent, 0.0), until)
        else:
            self._console_until = max(self._console_until, until)
        self.expire()

    def is_tapped(self, agent: str) -> bool:
        """True while ``agent``'s tap notice holds; forgets it once lapsed."""
        until = self.tapped.get(agent)
        if until is None:
            return False
        if until < self._clock():
            del self.tapped[agent]
            return False
        return True

    def expire(self) -> None:
        """Forget the taps whose notices lapsed."""
        now = self._clock()
        for agent in [a for a, until in self.tapped.items() if until < now]:
            del self.tapped[agent]

    @property
    def console_watching(self) -> bool:
        """True while a console's notice holds."""
        return self._clock() < self._console_until


class Announcer:
    """Sends this node's notices, and renews them while they are wanted.

    Args:
        publish: Publishes one notice (lossy: a lost one is renewed soon).
    """

    def __init__(self, publish: Callable[[str, bytes], object]) -> None:
        self._publish = publish
        self._taps: set[str] = set()
        self._console_until = 0.0
        self._task = OnDemandTask(self._renew, "notices")

    def set_taps(self, agents: set[str]) -> None:
        """Keep announcing a tap on each of ``agents`` (new ones at once)."""
        for agent in agents - self._taps:
            self._publish(ops_channel(), tap_notice(agent))
        self._taps = set(agents)
        self._ensure_running()

    def watch_console(self, seconds: float) -> None:
        """Keep every node reporting for ``seconds`` more."""
        now = time.monotonic()
        if self._console_until <= now:
            self._publish(ops_channel(), watch_notice())
        self._console_until = max(self._console_until, now + seconds)
        self._ensure_running()

    @property
    def renewing(self) -> bool:
        """True while some notice is still being renewed."""
        return self._task.running

    def _ensure_running(self) -> None:
        if self._wanted():
            self._task.ensure()

    def _wanted(self) -> bool:
        return bool(self._taps) or time.monotonic() < self._console_until

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            if not self._wanted():
                return
            for agent in self._taps:
                self._publish(ops_channel(), tap_notice(agent))
            if time.monotonic() < self._console_until:
                self._publish(ops_channel(), watch_notice())

    async def close(self) -> None:
        """Stop renewing; what was announced lapses by itself."""
        await self._task.close()
