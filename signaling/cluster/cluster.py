"""A cluster node's share of the cluster (redis.address configured): its registration, room placement, the room
store whose listings other nodes read, the signal relay and the bus they talk over; and the upkeep that ties them."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .agents import AgentRouter, workers_key
from .bus import Bus
from .connection import connect
from .ingress import RedisIngressStore
from .placement import Placement
from .redis_store import RedisRoomStore
from .registry import NODE_TTL_S, STATS_INTERVAL_S, NodeInfo, NodeRegistry
from .relay import Relay
from .rpc import REQUEST, RESPONSE, Rpc

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

NODES_PATH = "/cluster/nodes"  # GET: the live nodes as JSON, for `tern nodes list`
SWEEP_INTERVAL_S = NODE_TTL_S  # dead nodes' rooms are released within NODE_TTL_S + this of their last refresh
STOP_FLUSH_S = 2.0  # at shutdown, the closed rooms' releases get this long to reach Redis


class Cluster:
    def __init__(self, node: Node) -> None:
        config = node.config
        self.node = node
        self.counters = node.counters
        self.started_at = time.time()
        self.state = "SERVING"
        self.redis = connect(config.redis)
        self.registry = NodeRegistry(self.redis, node.id, self._sample, self._on_lost, node.counters)
        self.placement = Placement(self.redis, self.registry, config.region, config.node_selector.sysload_limit)
        self.store = RedisRoomStore(self.placement, config.room.empty_timeout, config.room.departure_timeout,
                                    config.room.max_participants, node.notify, node.counters)
        self.ingresses = RedisIngressStore(self.redis, self.registry, node.counters)
        self.relay = Relay(node.id, node.counters)
        self.rpc = Rpc(node.id, node.counters)
        self.bus = Bus(self.redis, node.id, self._on_frame, self._on_lost, node.counters)
        self.relay.bus = self.rpc.bus = self.bus
        self.agents: AgentRouter | None = None  # made at start: the node's dispatcher is made after its store
        self._tasks: list[asyncio.Task] = []
        self._last_sample = (time.monotonic(), time.process_time(), 0)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.agents = AgentRouter(self.redis, self.registry, self.rpc, self.node.agents, self.counters)
        for job in (self.registry.run(), self.bus.run(), self.store.run(), self.ingresses.run(), self.agents.run(),
                    self._upkeep()):
            self._tasks.append(loop.create_task(job))
        log.info("cluster node %s on Redis %s%s", self.node.id, self.node.config.redis.where,
                 f", region {self.node.config.region}" if self.node.config.region else "")

    def _on_frame(self, frame: bytes) -> None:
        if frame[:1] in (bytes([REQUEST]), bytes([RESPONSE])):
            self.rpc.on_frame(frame)
        else:
            self.relay.on_frame(frame)

    def _sample(self) -> NodeInfo:
        now, cpu, forwarded = time.monotonic(), time.process_time(), self.node.engine.stats()["forwarded"]
        then, cpu_then, forwarded_then = self._last_sample
        self._last_sample = (now, cpu, forwarded)
        elapsed = max(now - then, 1e-3)
        rooms = self.store.rooms()
        return NodeInfo(
            id=self.node.id, ips=self.node.transports.candidate_ips, region=self.node.config.region, state=self.state,
            started_at=self.started_at, cpu_load=round((cpu - cpu_then) / elapsed, 3),
            sysload=round(os.getloadavg()[0] / (os.cpu_count() or 1), 3), rooms=len(rooms),
            participants=sum(len(room.participants) for room in rooms),
            forwarded_pps=round((forwarded - forwarded_then) / elapsed, 1),
        )

    async def nodes_report(self) -> dict:
        """The live nodes as JSON (`tern nodes list`), with this node's clock for their ages."""
        return {"now": time.time(), "nodes": [asdict(info) for info in await self.registry.nodes()]}

    def _on_lost(self) -> None:
        """Redis came back, or had forgotten this node: registration, and the hosted rooms' claims and listings, are
        written again at once, so a resume arriving now finds its room where it is."""
        self.store.resync()
        task = asyncio.get_running_loop().create_task(self._register_now())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _register_now(self) -> None:
        try:
            await self.registry.register()
        except (RedisError, OSError):  # the registry's own loop retries
            pass

    async def _upkeep(self) -> None:
        suspects: set[str] = set()
        missing: set[str] = set()  # relay peers unregistered at the last check
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                # A peer unregistered at two checks in a row is dead; at one, it may be re-registering (Redis lost it).
                gone = {peer for peer in self.relay.peers() if not await self.registry.alive(peer)}
                self.relay.end_links_to(gone & missing)
                missing = gone
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL_S
                    suspects = await self.placement.sweep(lambda room: self.store.get(room) is not None, suspects)
                    if not await self.placement.unsettled_for():  # else live nodes may not have re-registered yet
                        await self.ingresses.sweep({n.id for n in await self.registry.nodes()} | {self.node.id})
            except (RedisError, OSError) as error:
                self.counters["cluster_upkeep_errors"] += 1
                log.debug("cluster upkeep failed: %s", error)

    async def stop(self) -> None:
        """After the node closed its rooms: lets their releases reach Redis, then leaves the registry."""
        self.state = "SHUTTING_DOWN"
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.store.flushed(), STOP_FLUSH_S)
        for task in self._tasks:
            task.cancel()
        try:
            await self.redis.delete(workers_key(self.node.id))
            await self.registry.unregister()
        except (RedisError, OSError) as error:
            log.warning("cannot unregister from Redis: %s", error)
        await self.redis.aclose()
