"""Runs a node: uvicorn (websockets) on uvloop, the engine on the same loop, clean shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging

import uvicorn
import uvloop

from . import httpfront
from .app import create_app
from .config import Config
from .metrics import serve_metrics
from .node import Node

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """Tells every client `leave` before uvicorn closes the sockets."""

    def __init__(self, config: uvicorn.Config, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config)
        self.node = node
        self.loop = loop
        self._leaving = False

    def handle_exit(self, sig: int, frame: object) -> None:
        # Called from a signal handler: defer the work to the loop.
        if self._leaving:
            super().handle_exit(sig, frame)  # a second signal exits at once
            return
        self._leaving = True
        self.loop.call_soon_threadsafe(self._leave_then_exit, sig, frame)

    def _leave_then_exit(self, sig: int, frame: object) -> None:
        self.node.shutdown()
        # Let the writers flush the leave messages before uvicorn starts closing connections.
        self.loop.call_later(0.3, super().handle_exit, sig, frame)


async def serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    node = Node(config)
    node.start(loop)
    host = config.bind_addresses[0] if config.bind_addresses else "0.0.0.0"
    if config.prometheus_port:
        serve_metrics(node, loop, host, config.prometheus_port)
    uvicorn_config = uvicorn.Config(
        create_app(node),
        host=host,
        port=config.port,
        ws="websockets-sansio",
        lifespan="off",
        log_level=config.log_level.lower(),
        timeout_graceful_shutdown=3,
        http=httpfront.protocol_class(node.counters),
        limit_concurrency=httpfront.MAX_CONNECTIONS,
        timeout_keep_alive=httpfront.KEEP_ALIVE_TIMEOUT,
        h11_max_incomplete_event_size=httpfront.MAX_HEAD_SIZE,
    )
    httpfront.redact_access_logs()  # after uvicorn.Config, which configures its loggers
    server = _Server(uvicorn_config, node, loop)
    try:
        await server.serve()
    finally:
        await node.stop()


def run(config: Config) -> None:
    uvloop.run(serve(config))
