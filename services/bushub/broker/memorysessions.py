"""Sessions in the in-process broker: ``bushub.broker.sessionscripts``'s scripts,
in Python, over dicts (one node: a client reconnecting to it resumes)."""

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from bushub.broker.sessionscripts import REPLAY_PAGE, Resumed, SessionLimits, sender_session
from buswire.relayframe import RESENT, TRANSIENT, pack_stored, session_origin

# Records that expired are looked for at most this often.
_SWEEP_SECONDS = 1.0


@dataclass
class _Session:
    id: str
    epoch: str
    holder: str
    seq: int = 0
    lost: int = 0
    size: int = 0
    expires: float | None = None
    # What it kept outlives it as long again (``RELEASE``): counted lost at a resume.
    kept_until: float = 0.0
    kept: deque[tuple[int, bytes]] = field(default_factory=deque)


@dataclass
class _Relayed:
    newest: dict[bytes, int] = field(default_factory=dict)
    expires: float = 0.0


class MemorySessions:
    """Streams, sessions and relayed positions per agent, with their lifetimes."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._sessions: dict[str, _Session] = {}
        # Sessions that expired, for what they kept (``_Session.kept_until``).
        self._outlived: dict[str, _Session] = {}
        self._relayed: dict[str, _Relayed] = {}
        self._swept_at = 0.0
        self._sessions_swept_at = 0.0

    def _session(self, agent: str) -> _Session | None:
        session = self._sessions.get(agent)
        if session is not None and _expired(session, _now()):
            self._outlive(agent)
            return None
        return session

    def _outlive(self, agent: str) -> None:
        """``agent``'s session expired: what it kept is held on, to be counted."""
        session = self._sessions.pop(agent)
        if session.kept:
            self._outlived[agent] = session

    def deliver(self, agent: str, data: bytes) -> tuple[bytes | None, int]:
        """What to publish for ``data`` addressed to ``agent`` (None: a message
        relayed once already) and the position it was kept at (0: not kept)."""
        origin = session_origin(data)
        if origin is not None:
            sender, position = origin
            relayed = self._relayed.get(agent)
            if relayed is None or relayed.expires <= _now():
                relayed = self._relayed[agent] = _Relayed()
            if position <= relayed.newest.get(sender, 0):
                return None, 0
            relayed.newest[sender] = position
            relayed.expires = _now() + self.limits.window
        session = self._session(agent)
        if session is not None and data[1] & RESENT and origin is None:
            return None, 0  # as DELIVER's -3: a session's resume covers a break
        if session is None or data[1] & TRANSIENT:
            return data, 0
        session.seq += 1
        session.kept.append((session.seq, data))
        session.size += len(data)
        while len(session.kept) > 1 and (
            len(session.kept) > self.limits.messages or session.size > self.limits.bytes
        ):
            position, old = session.kept.popleft()
            session.size -= len(old)
            session.lost = position
        return pack_stored(session.seq, data), session.seq

    def resume(
        self,
        agent: str,
        session_id: str,
        received: int,
        epoch: str,
        conn: str,
        renew: bool = False,
    ) -> Resumed:
        session = self._session(agent)
        lost = 0
        if session is not None and session.id == session_id:
            if received > session.seq or session.lost > received or renew:
                result, session.epoch = "gap", epoch
            else:
                result = "recovered"
        else:
            seq = session.seq if session is not None else 0
            replaced = session or self._outlived.get(agent)
            self._outlived.pop(agent, None)
            if replaced is not None and replaced.kept_until and replaced.kept_until <= _now():
                replaced = None  # what it kept expired too
            session = self._sessions[agent] = _Session(session_id, epoch, conn, seq=seq)
            result = "gap" if received > 0 else "new"
            if replaced is not None:
                lost = sum(1 for position, _ in replaced.kept if position > received)
        session.holder = conn
        session.expires = None
        replay = [] if result == "new" else self._after(session, received, REPLAY_PAGE)
        return Resumed(result, session.epoch, session.seq, replay, lost)

    def read(self, agent: str, after: int, most: int | None = None) -> list[tuple[int, bytes]]:
        session = self._session(agent)
        return [] if session is None else self._after(session, after, most)

    @staticmethod
    def _after(session: "_Session", after: int, most: int | None) -> list[tuple[int, bytes]]:
        """What ``session`` keeps after position ``after``, ``most`` at most."""
        kept = ((p, d) for p, d in session.kept if p > after)
        return list(kept if most is None else itertools.islice(kept, most))

    def ack(self, agent: str, session_id: str, position: int) -> None:
        session = self._session(agent)
        if session is None or session.id != session_id:
            return
        while session.kept and session.kept[0][0] <= position:
            session.size -= len(session.kept.popleft()[1])

    def release(self, agent: str, conn: str, window: float) -> None:
        now = _now()
        if now - self._sessions_swept_at >= _SWEEP_SECONDS:
            # An expired session is dropped when its name is next looked at, which
            # for a name used once is never: each kept what it was sent while away.
            self._sessions_swept_at = now
            for name in [name for name, s in self._sessions.items() if _expired(s, now)]:
                self._outlive(name)
            for name in [name for name, s in self._outlived.items() if s.kept_until <= now]:
                del self._outlived[name]
        session = self._session(agent)
        if session is not None and session.holder == conn:
            session.expires = now + window
            session.kept_until = now + 2 * window

    def __len__(self) -> int:
        """Sessions held or away (some expired, until swept)."""
        return len(self._sessions)

    def kept(self, agent: str) -> bool:
        """Whether a session of ``agent`` is kept (held, or away within the window)."""
        return self._session(agent) is not None

    def end_away(self, agent: str, position: int) -> int | None:
        """As ``END_AWAY``: an away session (it expires) is ended; how many messages
        it kept before ``position``."""
        session = self._session(agent)
        if session is None or session.expires is None:
            return None
        del self._sessions[agent]
        return sum(1 for kept, _ in session.kept if kept < position)

    def senders_gone(self, agent: str, most: int) -> dict[bytes, bytes]:
        """As ``SessionScripts.senders_gone``."""
        now = _now()
        if now - self._swept_at >= _SWEEP_SECONDS:
            # Agents nothing was relayed to for the window: their records are gone,
            # as Redis' would have expired. (Once for a pass over many agents.)
            self._swept_at = now
            for name in [name for name, r in self._relayed.items() if r.expires <= now]:
                del self._relayed[name]
        relayed = self._relayed.get(agent)
        if relayed is None:
            return {}
        gone = {}
        for sender, position in relayed.newest.items():
            who = sender_session(sender)
            session = None if who is None else self._session(who[0])
            if session is None or who is None or session.id != who[1]:
                gone[sender] = b"%d" % position
                if len(gone) >= most:
                    break
        return gone

    def forget(self, agent: str, senders: dict[bytes, bytes]) -> int:
        """As ``SessionScripts.forget``."""
        relayed = self._relayed.get(agent)
        if relayed is None:
            return 0
        forgotten = 0
        for sender, position in senders.items():
            if b"%d" % relayed.newest.get(sender, 0) == position:
                del relayed.newest[sender]
                forgotten += 1
        return forgotten


def _expired(session: _Session, now: float) -> bool:
    return session.expires is not None and session.expires <= now


def _now() -> float:
    return time.monotonic()
