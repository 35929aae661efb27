"""Runs a node: uvicorn (websockets) on uvloop, the engine on the same loop, clean shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
import uvloop

from . import httpfront
from .app import create_app
from .config import Config
from .metrics import serve_metrics
from .node import Node
from .protocol import v0

log = logging.getLogger(__name__)

# Seconds between telling clients `leave` and uvicorn closing their connections.
LEAVE_FLUSH_TIME = 0.3
# Seconds uvicorn waits for open connections and requests to finish at shutdown. With LEAVE_FLUSH_TIME and the
# webhooks' drain (webhook.SHUTDOWN_DRAIN_TIME) this bounds the time from SIGTERM to exit (about 6 s; the systemd
# unit allows 30).
GRACEFUL_SHUTDOWN_TIME = 3


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT: closes every room (clients get `leave`, webhooks get participant_left and room_finished),
    lets uvicorn close the connections, then stops the node, whose webhooks get a bounded time to drain. All of it
    before uvicorn re-raises the signal to end the process. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config)
        self.node = node
        self.loop = loop
        self._leaving = False
        self.node_stopped = False

    def handle_exit(self, sig: int, frame: object) -> None:
        # Called from a signal handler: defer the work to the loop.
        if self._leaving:
            super().handle_exit(sig, frame)  # a second signal exits at once
            return
        self._leaving = True
        self.loop.call_soon_threadsafe(self._leave_then_exit, sig, frame)

    def _leave_then_exit(self, sig: int, frame: object) -> None:
        try:
            self.node.shutdown()
        except Exception:  # a bug in closing rooms must not keep the process from exiting
            log.exception("closing rooms at shutdown failed")
        # Let the writers flush the leave messages before uvicorn starts closing connections.
        self.loop.call_later(LEAVE_FLUSH_TIME, super().handle_exit, sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await self.stop_node()

    async def stop_node(self) -> None:
        if not self.node_stopped:
            self.node_stopped = True
            await self.node.stop()


def listen(addresses: list[str], port: int) -> list[socket.socket]:
    """A listening HTTP socket per bind address, as LiveKit listens on each. `::` is dual-stack unless `0.0.0.0` is
    bound beside it (then each family has its own socket)."""
    dual_stack = "0.0.0.0" not in addresses
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockets.append(socket.create_server((address, port), family=family,
                                                dualstack_ipv6=dual_stack and address == "::"))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    node = Node(config)
    node.start(loop)
    host = config.bind_addresses[0] if config.bind_addresses else "0.0.0.0"
    if config.prometheus_port:
        serve_metrics(node, loop, host, config.prometheus_port)
    app = create_app(node)
    if config.ingress.rtmp_port:
        await app.state.rtmp.start(host, config.ingress.rtmp_port)
    uvicorn_config = uvicorn.Config(
        app,
        host=host,
        port=config.port,
        ws="websockets-sansio",
        ws_max_size=v0.MAX_SIGNAL_MESSAGE,
        lifespan="off",
        log_level=config.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIME,
        http=httpfront.protocol_class(node.counters),
        limit_concurrency=httpfront.MAX_CONNECTIONS,
        timeout_keep_alive=httpfront.KEEP_ALIVE_TIMEOUT,
        h11_max_incomplete_event_size=httpfront.MAX_HEAD_SIZE,
    )
    httpfront.redact_access_logs()  # after uvicorn.Config, which configures its loggers
    server = _Server(uvicorn_config, node, loop)
    try:
        await server.serve(sockets=listen(config.bind_addresses or ["0.0.0.0"], config.port))
    finally:
        await app.state.rtmp.stop()
        await server.stop_node()  # when uvicorn failed before its shutdown (a port in use)


def run(config: Config) -> None:
    uvloop.run(serve(config))
