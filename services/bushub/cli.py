"""The ``bushub`` command."""

import argparse
import asyncio
import logging
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from bushub import gcpolicy
from bushub.app import create_app
from bushub.fdlimit import raise_fd_limit
from bushub.handshake import HandshakeGuard, guarded, parse_up_to
from bushub.hub import Hub
from bushub.logs import configure_logging
from bushub.settings import Settings, SettingsError, add_arguments, load_settings
from bushub.tap_cli import add_tap_command, run_tap_command
from bushub.token_cli import add_token_command, run_token_command
from bushub.wsprotocol import guarded_ws

log = logging.getLogger("bushub")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains the hub before exiting.

    Drain order: readiness false and new sockets refused, open sockets flushed and
    closed with 1012, presence withdrawn; then uvicorn's own shutdown. A second
    signal, or the drain timeout, ends it at once.
    """

    def __init__(self, config: uvicorn.Config, settings: Settings, hub: Hub) -> None:
        super().__init__(config)
        self._settings = settings
        self._hub = hub
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            # Here, not at the end of the lifespan's start: uvicorn binds the port
            # after it, and a port in use then failed a node that had said "serving".
            log.info("node %s serving on %s", self._settings.node_id, self._hub.broker.description)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started and sig in (signal.SIGTERM, signal.SIGINT):
            # Still starting (the lifespan waits on Redis): nothing to drain, and
            # uvicorn looks at should_exit only once the start is over.
            self.should_exit = True
            asyncio.get_event_loop().call_soon_threadsafe(self._hub.abort_start)
            return
        if self._drain_task is not None or sig not in (signal.SIGTERM, signal.SIGINT):
            self.force_exit = True
            super().handle_exit(sig, frame)
            return
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        hub = self._hub
        log.info("signal received: draining (timeout %.1fs)", self._settings.drain_timeout)
        try:
            await hub.drain(self._settings.drain_timeout)
        finally:
            self.should_exit = True


# Seconds uvicorn's shutdown waits for sockets after the drain, before cancelling.
_SHUTDOWN_AFTER_DRAIN = 1


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How uvicorn serves a node; tests serve in-process nodes with the same."""
    guard = HandshakeGuard(
        settings.handshake_timeout, settings.max_header_bytes, app.state.hub.metrics
    )
    parse_up_to(settings.max_header_bytes)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,
        # httptools, with a deadline and a size limit on what comes before a request.
        "http": guarded(guard),
        # The hub's protocol: the direct data path (see bushub.wsprotocol).
        "ws": guarded_ws(guard),
        "ws_max_size": max(settings.max_message_bytes * 2, 1 << 16),
        # The stock proxy offers permessage-deflate; declining it saves ~35 KB of
        # zlib state per socket and CPU on audio that does not compress.
        "ws_per_message_deflate": False,
        # No per-socket ping timers: bushub.keepalive sweeps every socket at once.
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "backlog": settings.backlog,
        "lifespan": "on",
        "access_log": False,
        # The client address in logs and refusals: told by the proxies listed only.
        "forwarded_allow_ips": ",".join(settings.split(settings.forwarded_allow_ips)),
        # After the hub's own drain (SIGTERM: up to --drain-timeout), uvicorn waits
        # for the sockets still open: stuck ones, which waiting longer does not
        # mend. A second --drain-timeout here made a node with one reader that stopped
        # take twice its drain, and a --workers node be killed past its supervisor's.
        "timeout_graceful_shutdown": _SHUTDOWN_AFTER_DRAIN,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(settings: Settings) -> None:
    """Run one node until signalled; with ``--workers N``, N of them on one port."""
    configure_logging(settings.log_level, settings.log_format)
    raise_fd_limit(settings.max_connections)
    if settings.workers > 1:
        from bushub.supervisor import Supervisor  # imports this module: import late

        sys.exit(Supervisor(settings).run())
    app = create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings), settings, app.state.hub)
    gcpolicy.apply()
    server.run()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``bushub`` command."""
    parser = argparse.ArgumentParser(prog="bushub", description="pipecat bus hub node")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run one hub node")
    add_arguments(serve_parser)
    add_token_command(commands)
    add_tap_command(commands)
    args = parser.parse_args(argv)
    if args.command == "tap":
        sys.exit(run_tap_command(args))
    if args.command == "token":
        run_token_command(args)
        return
    if args.command == "serve":
        try:
            settings = load_settings(args)
        except SettingsError as exc:
            # One line naming the command and the setting: a usage dump (the
            # command's, or serve's dozen lines) says nothing about a bad value.
            serve_parser.exit(2, f"bushub serve: error: {exc}\n")
        serve(settings)
