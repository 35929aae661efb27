"""This node's pub/sub channel on Redis: frames from other nodes (relayed signal streams, RoomService calls) arrive
here. redis-py's asyncio PubSub does not resubscribe after its connection drops, so the reader does (a restarted
Redis, a failover)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .connection import bus_channel

log = logging.getLogger(__name__)

RESUBSCRIBE_BACKOFF_S = (0.1, 0.5, 1.0, 2.0)  # waits between attempts after the subscription dropped
# Frames published at once (each holds a pooled connection until Redis answers): hundreds of relayed connections
# sending together would exhaust the pool (connection.MAX_CONNECTIONS), which fails commands rather than wait.
PUBLISH_CONCURRENCY = 32
POLL_TIMEOUT_S = 1.0  # a silent subscription is checked this often (health checks ride on it)


class Bus:
    """`on_frame(data)` is called, in order of publication per sender, with each frame published to this node."""

    def __init__(self, redis: aioredis.Redis, node_id: str, on_frame: Callable[[bytes], None],
                 on_resubscribed: Callable[[], None], counters: dict[str, int]) -> None:
        self.redis = redis
        self.channel = bus_channel(node_id)
        self.on_frame = on_frame
        self.on_resubscribed = on_resubscribed  # Redis is back after an outage: state it lost can be rewritten
        self.counters = counters
        self.subscribed = asyncio.Event()
        self._publishing = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def send(self, node_id: str, frame: bytes) -> bool:
        """Publishes a frame to a node; False when no node listens on its channel (gone, or resubscribing)."""
        async with self._publishing:
            return await self.redis.publish(bus_channel(node_id), frame) > 0

    async def run(self) -> None:
        failures = 0
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                if failures:
                    log.info("resubscribed to %s", self.channel)
                    self.on_resubscribed()
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=POLL_TIMEOUT_S)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError) as error:
                self.subscribed.clear()
                self.counters["cluster_bus_resubscribes"] += 1
                if not failures:
                    log.warning("lost the subscription to %s: %s", self.channel, error)
                await asyncio.sleep(RESUBSCRIBE_BACKOFF_S[min(failures, len(RESUBSCRIBE_BACKOFF_S) - 1)])
                failures += 1
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    def _deliver(self, frame: bytes) -> None:
        try:
            self.on_frame(frame)
        except Exception:  # a bug handling one frame must not end the subscription
            self.counters["cluster_bus_handler_errors"] += 1
            log.exception("cluster frame handler failed")
