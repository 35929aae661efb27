"""Room placement: which node hosts a room. A new room goes to the least loaded live node (of this node's region when
one is configured), claimed atomically in Redis so that racing joins through different nodes agree on one owner; the
claim holds for the room's life and is released by its owner, or taken over once the owner's registration expired."""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import redis.asyncio as aioredis

from ..config import NodeSelectorConfig
from .connection import PREFIX, ROOM_COUNTS, ROOM_NODE, ROOMS
from .registry import CLAIM, STATS_INTERVAL_S, NodeInfo, NodeRegistry

log = logging.getLogger(__name__)

# A Redis that just started lacks registrations (expired while it was down) and, without persistence, claims, until
# every node has refreshed its own: while Redis is younger than this, no node takes a room over or places one (joins
# wait), so a room whose node is alive is not placed a second time.
SETTLE_S = 2 * STATS_INTERVAL_S

# Forgets the room if ARGV[2] still owns it (a node never deletes a claim another node has taken since), and counts it
# off ARGV[2]'s rooms.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
  return 1
end
return 0
"""

# Counts each node's rooms in the placements afresh, at once (no claim lands between the read and the write): claims
# and releases keep the counts exact in between; this mends whatever else changed the map (a hand edit, a node of an
# older version) and drops the nodes that hold nothing any more.
_RECOUNT = """
local counts = {}
for _, id in ipairs(redis.call('HVALS', KEYS[1])) do counts[id] = (counts[id] or 0) + 1 end
redis.call('DEL', KEYS[2])
for id, count in pairs(counts) do redis.call('HSET', KEYS[2], id, count) end
"""


def choose(nodes: list[NodeInfo], region: str, rooms: Callable[[NodeInfo], int],
           sysload_limit: float = NodeSelectorConfig.sysload_limit) -> NodeInfo | None:
    """The node for a new room: serving, of `region` when any is, under `sysload_limit` when any is, then the fewest
    `rooms`, participants and CPU; ties at random."""
    candidates = [n for n in nodes if n.state == "SERVING"]
    if region:
        candidates = [n for n in candidates if n.region == region] or candidates
    candidates = [n for n in candidates if n.sysload < sysload_limit] or candidates
    if not candidates:
        return None
    return min(candidates, key=lambda n: (rooms(n), n.participants, round(n.cpu_load, 1), random.random()))


class Placement:
    def __init__(self, redis: aioredis.Redis, registry: NodeRegistry, region: str, sysload_limit: float) -> None:
        self.redis = redis
        self.registry = registry
        self.node_id = registry.node_id
        self.region = region
        self.sysload_limit = sysload_limit
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._recount = redis.register_script(_RECOUNT)

    async def unsettled_for(self) -> float:
        """Seconds until Redis has been up for SETTLE_S."""
        uptime = (await self.redis.info("server")).get("uptime_in_seconds", SETTLE_S)
        return max(0.0, SETTLE_S - float(uptime))

    async def owner(self, room: str) -> str | None:
        """The live node hosting `room`, or None."""
        owner = await self.redis.hget(ROOM_NODE, room)
        if owner is None:
            return None
        owner_id = owner.decode()
        return owner_id if await self.registry.alive(owner_id) else None

    async def place(self, room: str) -> str:
        """The room's node: its live owner, else the node this call claims it for."""
        owner = await self.owner(room)
        if owner is not None:
            return owner
        if wait := await self.unsettled_for():
            await asyncio.sleep(wait)
            owner = await self.owner(room)
            if owner is not None:
                return owner
        nodes = await self.registry.nodes()
        # The rooms claimed for each node, not those of its report: a report lags by up to STATS_INTERVAL_S, and
        # one sampled between a claim and the room's creation on its node misses it, so a burst of new rooms would
        # pile onto one node. (A count below 0, from a release of a room claimed uncounted, lasts until the next
        # sweep's recount; it must not draw every new room meanwhile.)
        counts = {node.decode(): max(0, int(count))
                  for node, count in (await self.redis.hgetall(ROOM_COUNTS)).items()}
        chosen = choose(nodes, self.region, lambda n: counts.get(n.id, 0), self.sysload_limit)
        candidate = chosen.id if chosen is not None else self.node_id  # no node readable yet: this one
        return await self._claim_for(room, candidate)

    async def claim_own(self, room: str) -> str:
        """Claims a room this node hosts (after a Redis restart lost the map); returns the owner Redis now names."""
        return await self._claim_for(room, self.node_id)

    async def _claim_for(self, room: str, node_id: str) -> str:
        return (await self._claim(keys=[ROOM_NODE, ROOM_COUNTS], args=[room, node_id, PREFIX + "node:"])).decode()

    async def release(self, room: str, owner: str | None = None) -> bool:
        """Forgets the room's placement and listing if `owner` (this node by default) still holds it."""
        return bool(await self._release(keys=[ROOM_NODE, ROOMS, ROOM_COUNTS], args=[room, owner or self.node_id]))

    async def sweep(self, hosts: Callable[[str], bool], suspects: set[str]) -> set[str]:
        """Releases rooms whose owner is dead, and this node's claims on rooms it does not host (a join that was
        placed here but never arrived) once they were already `suspects` at the previous sweep, then counts each
        node's rooms afresh. Returns the new suspects. Does nothing while Redis is settling after an outage."""
        if await self.unsettled_for():
            return set()
        mapping = {room.decode(): owner.decode() for room, owner in (await self.redis.hgetall(ROOM_NODE)).items()}
        live = {n.id for n in await self.registry.nodes()} | {self.node_id}  # this node even while re-registering
        unhosted = set()
        for room, owner in mapping.items():
            if owner not in live:
                if await self.release(room, owner):
                    log.info("room %s released: its node %s is gone", room, owner)
            elif owner == self.node_id and not hosts(room):
                if room in suspects:
                    await self.release(room)
                else:
                    unhosted.add(room)
        listed = [room.decode() for room in await self.redis.hkeys(ROOMS)]
        orphans = [room for room in listed if room not in mapping and not hosts(room)]
        if orphans:  # listings whose claim is gone (a node died between the two writes)
            await self.redis.hdel(ROOMS, *orphans)
        await self._recount(keys=[ROOM_NODE, ROOM_COUNTS])
        return unhosted
