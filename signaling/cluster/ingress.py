"""The ingress store: IngressInfo (what CreateIngress defined) by ingress id and by stream key, its live state apart,
and which node runs its one live session. In memory on a single node (MemoryIngressStore); in Redis for a cluster
(RedisIngressStore), so that an ingress made through one node is listed, updated, deleted and streamed to through
any. Values go in and come out as copies, as they do through Redis.

The definition and the state are kept apart because different nodes write them: the API (any node) writes
definitions, the session's node writes the state as the session goes; neither may overwrite the other's with a stale
copy."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import DecodeError
from livekit.protocol import ingress
from redis.exceptions import RedisError

from .connection import PREFIX
from .registry import CLAIM, NodeRegistry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger(__name__)

INGRESSES = PREFIX + "ingress"             # hash ingress id -> IngressInfo without its state
INGRESS_STATES = PREFIX + "ingress_state"  # hash ingress id -> IngressState
INGRESS_KEYS = PREFIX + "ingress_key"      # hash stream key -> ingress id
INGRESS_NODES = PREFIX + "ingress_node"    # hash ingress id -> the node running its live session

Status = ingress.IngressState.Status


class IngressStore(Protocol):
    async def save(self, info: ingress.IngressInfo) -> None:
        """Creates or replaces the ingress `info.ingress_id`'s definition (its stream key must not change); its
        state is not written."""

    async def get(self, ingress_id: str) -> ingress.IngressInfo | None:
        """The ingress with its state, or None."""

    async def by_stream_key(self, stream_key: str) -> ingress.IngressInfo | None:
        """The ingress a publisher's stream key names, or None."""

    async def list(self, room_name: str = "", ingress_id: str = "") -> list[ingress.IngressInfo]:
        """Every ingress, or those of one room, or the one with that id."""

    async def delete(self, info: ingress.IngressInfo) -> None:
        """Forgets the ingress, its state and its session's node."""

    async def count(self) -> int:
        """How many ingresses are stored."""

    def save_state(self, ingress_id: str, state: ingress.IngressState) -> None:
        """Sets the ingress's state (nothing if it was deleted); in Redis written behind, in order, latest first."""

    async def take(self, ingress_id: str) -> bool:
        """Makes this node the one running the ingress's live session: False while another live node runs it."""

    def release(self, ingress_id: str) -> None:
        """This node's session of the ingress ended (written after the state saved before it)."""

    async def holder(self, ingress_id: str) -> str | None:
        """The live node running the ingress's session, or None."""


class MemoryIngressStore:
    """Implements IngressStore for one node."""

    def __init__(self) -> None:
        self._by_id: dict[str, ingress.IngressInfo] = {}
        self._ids_by_key: dict[str, str] = {}
        self._taken: set[str] = set()

    async def save(self, info: ingress.IngressInfo) -> None:
        stored = _copy(info)
        previous = self._by_id.get(info.ingress_id)
        stored.state.CopyFrom(previous.state if previous is not None else ingress.IngressState())
        self._by_id[info.ingress_id] = stored
        if info.stream_key:
            self._ids_by_key[info.stream_key] = info.ingress_id

    async def get(self, ingress_id: str) -> ingress.IngressInfo | None:
        info = self._by_id.get(ingress_id)
        return None if info is None else _copy(info)

    async def by_stream_key(self, stream_key: str) -> ingress.IngressInfo | None:
        return await self.get(self._ids_by_key.get(stream_key, ""))

    async def list(self, room_name: str = "", ingress_id: str = "") -> list[ingress.IngressInfo]:
        return [_copy(info) for info in self._by_id.values() if _matches(info, room_name, ingress_id)]

    async def delete(self, info: ingress.IngressInfo) -> None:
        stored = self._by_id.pop(info.ingress_id, None)
        if stored is not None:
            self._ids_by_key.pop(stored.stream_key, None)
        self._taken.discard(info.ingress_id)

    async def count(self) -> int:
        return len(self._by_id)

    def save_state(self, ingress_id: str, state: ingress.IngressState) -> None:
        info = self._by_id.get(ingress_id)
        if info is not None:
            info.state.CopyFrom(state)

    async def take(self, ingress_id: str) -> bool:
        self._taken.add(ingress_id)  # one node: IngressSessions refuses a second local session itself
        return True

    def release(self, ingress_id: str) -> None:
        self._taken.discard(ingress_id)

    async def holder(self, ingress_id: str) -> str | None:
        return None


# Sets the state of ARGV[1] to ARGV[2] if the ingress still exists (a session ending after DeleteIngress must not
# leave a state behind), and, with ARGV[3] set, forgets ARGV[3] as its session's node if it still is.
_WRITE_STATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 and ARGV[2] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[3] then redis.call('HDEL', KEYS[3], ARGV[1]) end
return 0
"""


class RedisIngressStore:
    """Implements IngressStore in the cluster's Redis. The session's state changes are written behind by `run()`,
    coalesced per ingress (latest first), as sessions report them from synchronous callbacks."""

    def __init__(self, redis: aioredis.Redis, registry: NodeRegistry, counters: dict[str, int]) -> None:
        self.redis, self.registry, self.counters = redis, registry, counters
        self._write_state = redis.register_script(_WRITE_STATE)
        self._claim = redis.register_script(CLAIM)
        self._pending: dict[str, tuple[bytes, bool]] = {}  # ingress id -> (state to write, release after)
        self._wake = asyncio.Event()

    async def save(self, info: ingress.IngressInfo) -> None:
        definition = _copy(info)
        definition.ClearField("state")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(INGRESSES, info.ingress_id, definition.SerializeToString())
            if info.stream_key:
                pipe.hset(INGRESS_KEYS, info.stream_key, info.ingress_id)
            await pipe.execute()

    async def get(self, ingress_id: str) -> ingress.IngressInfo | None:
        if not ingress_id:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(INGRESSES, ingress_id)
            pipe.hget(INGRESS_STATES, ingress_id)
            definition, state = await pipe.execute()
        return self._decode(definition, state)

    async def by_stream_key(self, stream_key: str) -> ingress.IngressInfo | None:
        ingress_id = await self.redis.hget(INGRESS_KEYS, stream_key) if stream_key else None
        return await self.get(ingress_id.decode()) if ingress_id is not None else None

    async def list(self, room_name: str = "", ingress_id: str = "") -> list[ingress.IngressInfo]:
        if ingress_id:
            info = await self.get(ingress_id)
            return [info] if info is not None and _matches(info, room_name, "") else []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(INGRESSES)
            pipe.hgetall(INGRESS_STATES)
            definitions, states = await pipe.execute()
        infos = (self._decode(data, states.get(key)) for key, data in definitions.items())
        return sorted((info for info in infos if info is not None and _matches(info, room_name, "")),
                      key=lambda info: info.ingress_id)

    async def delete(self, info: ingress.IngressInfo) -> None:
        self._pending.pop(info.ingress_id, None)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (INGRESSES, INGRESS_STATES, INGRESS_NODES):
                pipe.hdel(key, info.ingress_id)
            if info.stream_key:
                pipe.hdel(INGRESS_KEYS, info.stream_key)
            await pipe.execute()

    async def count(self) -> int:
        return await self.redis.hlen(INGRESSES)

    def save_state(self, ingress_id: str, state: ingress.IngressState) -> None:
        _, release = self._pending.get(ingress_id, (b"", False))
        self._pending[ingress_id] = (state.SerializeToString(), release)
        self._wake.set()

    async def take(self, ingress_id: str) -> bool:
        state, _ = self._pending.get(ingress_id, (b"", False))
        if state:  # a release of this node's previous session, not yet written, must not undo this one
            self._pending[ingress_id] = (state, False)
        holder = await self._claim(keys=[INGRESS_NODES], args=[ingress_id, self.registry.node_id, PREFIX + "node:"])
        return holder.decode() == self.registry.node_id

    def release(self, ingress_id: str) -> None:
        state, _ = self._pending.get(ingress_id, (b"", False))
        self._pending[ingress_id] = (state, True)
        self._wake.set()

    async def holder(self, ingress_id: str) -> str | None:
        holder = await self.redis.hget(INGRESS_NODES, ingress_id)
        if holder is None:
            return None
        return holder.decode() if await self.registry.alive(holder.decode()) else None

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            for ingress_id, (state, release) in pending.items():
                try:
                    await self._write_state(keys=[INGRESSES, INGRESS_STATES, INGRESS_NODES],
                                            args=[ingress_id, state, self.registry.node_id if release else ""])
                except (RedisError, OSError) as error:
                    self.counters["cluster_store_errors"] += 1
                    log.warning("cannot update ingress %s in Redis: %s", ingress_id, error)
                    self._pending.setdefault(ingress_id, (state, release))  # retried with the next change
                    await asyncio.sleep(0.5)

    async def sweep(self, live: set[str]) -> None:
        """Ends the sessions of nodes that are gone: their ingresses are INACTIVE again, with nobody holding them."""
        for ingress_id, holder in (await self.redis.hgetall(INGRESS_NODES)).items():
            if holder.decode() in live:
                continue
            info = await self.get(ingress_id.decode())
            if info is not None and info.state.status in (Status.ENDPOINT_BUFFERING, Status.ENDPOINT_PUBLISHING):
                info.state.status = Status.ENDPOINT_INACTIVE
                info.state.error = "the node running the session is gone"
                del info.state.tracks[:]
                await self._write_state(keys=[INGRESSES, INGRESS_STATES, INGRESS_NODES],
                                        args=[ingress_id, info.state.SerializeToString(), holder])
            else:
                await self._write_state(keys=[INGRESSES, INGRESS_STATES, INGRESS_NODES],
                                        args=[ingress_id, b"", holder])
            log.info("ingress %s released: its node %s is gone", ingress_id.decode(), holder.decode())

    def _decode(self, definition: bytes | None, state: bytes | None) -> ingress.IngressInfo | None:
        if definition is None:
            return None
        try:
            info = ingress.IngressInfo.FromString(definition)
            if state is not None:
                info.state.ParseFromString(state)
        except DecodeError:  # a corrupted entry hides one ingress, not the listing
            self.counters["cluster_listing_malformed"] += 1
            return None
        return info


def _matches(info: ingress.IngressInfo, room_name: str, ingress_id: str) -> bool:
    return (not room_name or info.room_name == room_name) and (not ingress_id or info.ingress_id == ingress_id)


def _copy(info: ingress.IngressInfo) -> ingress.IngressInfo:
    copy = ingress.IngressInfo()
    copy.CopyFrom(info)
    return copy
