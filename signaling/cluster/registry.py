"""The node registry: each node publishes who it is and its load every few seconds under a key that expires, so a
node that stops refreshing (killed, partitioned from Redis) drops out of rotation by itself."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .connection import NODES, node_key

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0  # LiveKit's node_stats.stats_update_interval
NODE_TTL_S = 5          # LiveKit takes a node whose stats are 5 s old for dead; our key expires then

# A Lua script claiming field ARGV[1] of hash KEYS[1] (a room's placement, an ingress's session) for node ARGV[2]
# unless a live node (its registration key, ARGV[3] .. id, exists) holds it; returns the holder. With KEYS[2], a hash
# of claims per node, the counts move with the claim (a dead holder's down, the new one's up).
CLAIM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return owner end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] then
  if owner then redis.call('HINCRBY', KEYS[2], owner, -1) end
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return ARGV[2]
"""


@dataclass
class NodeInfo:
    id: str
    ips: list[str]
    region: str = ""
    state: str = "SERVING"  # or SHUTTING_DOWN: still serves its rooms, gets no new ones
    started_at: float = 0.0
    updated_at: float = 0.0
    cpu_load: float = 0.0   # this process's share of one core over the last interval
    sysload: float = 0.0    # 1-minute load average per core (LiveKit's sysload)
    rooms: int = 0
    participants: int = 0
    forwarded_pps: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> NodeInfo | None:
        """None for a registration this version cannot read (written by another version, or corrupted)."""
        try:
            raw = json.loads(data)
            info = cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})
        except (ValueError, TypeError, KeyError):
            return None
        numbers = (info.started_at, info.updated_at, info.cpu_load, info.sysload, info.rooms, info.participants,
                   info.forwarded_pps)
        if not (isinstance(info.id, str) and isinstance(info.region, str) and isinstance(info.state, str)
                and isinstance(info.ips, list) and all(isinstance(ip, str) for ip in info.ips)
                and all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers)):
            return None
        return info


class NodeRegistry:
    """`sample()` returns this node's current NodeInfo; `run()` publishes it every STATS_INTERVAL_S."""

    def __init__(self, redis: aioredis.Redis, node_id: str, sample: Callable[[], NodeInfo],
                 on_lost: Callable[[], None], counters: dict[str, int]) -> None:
        self.redis = redis
        self.node_id = node_id
        self.sample = sample
        self.on_lost = on_lost  # called when Redis had forgotten this node (restarted, flushed, or we were cut off)
        self.counters = counters
        self.registered = asyncio.Event()  # set by the first successful registration

    async def register(self) -> None:
        info = self.sample()
        info.updated_at = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(node_key(self.node_id), info.encode(), ex=NODE_TTL_S, get=True)
            pipe.sadd(NODES, self.node_id)
            previous, _ = await pipe.execute()
        if previous is None and self.registered.is_set():
            self.counters["cluster_reregistrations"] += 1
            log.warning("Redis had lost this node's registration: registered again")
            self.on_lost()
        self.registered.set()

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.register()
                if failing:
                    log.info("registered with Redis again")
                    self.on_lost()
                failing = False
            except (RedisError, OSError) as error:
                self.counters["cluster_registry_errors"] += 1
                if not failing:  # once per outage, not every interval
                    log.warning("cannot register with Redis: %s", error)
                failing = True
            await asyncio.sleep(STATS_INTERVAL_S)

    async def unregister(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(node_key(self.node_id))
            pipe.srem(NODES, self.node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes; ids whose registration expired are pruned from the set as a side effect."""
        ids = sorted(member.decode() for member in await self.redis.smembers(NODES))
        if not ids:
            return []
        values = await self.redis.mget([node_key(i) for i in ids])
        stale = [i for i, value in zip(ids, values) if value is None]
        if stale:
            await self.redis.srem(NODES, *stale)
        infos = [NodeInfo.decode(value) for value in values if value is not None]
        return [info for info in infos if info is not None]

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(node_key(node_id)))
