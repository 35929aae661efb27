"""The room store of a cluster node: the rooms this node hosts live in memory as on a single node (the media goes
through here), and Redis holds what the other nodes must see: each hosted room's listing, for ListRooms on any node,
and its placement, released when the room closes."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError
from livekit.protocol import models
from redis.exceptions import RedisError

from ..rtc.room import Room
from .connection import ROOMS
from .memory import MemoryRoomStore
from .placement import Placement

log = logging.getLogger(__name__)


class RedisRoomStore(MemoryRoomStore):
    """Implements RoomStore. Changes are written behind, coalesced per room (the latest listing wins, a bounded
    backlog however fast rooms change), by `run()`; `observe()` takes the room events the node reports."""

    def __init__(self, placement: Placement, empty_timeout: float, departure_timeout: float, max_participants: int,
                 notify: Callable[..., None], counters: dict[str, int]) -> None:
        super().__init__(empty_timeout, departure_timeout, max_participants, notify)
        self.placement = placement
        self.counters = counters
        self._pending: dict[str, models.Room | None] = {}  # room name -> listing to write, None = closed
        self._wake = asyncio.Event()
        self._writing = False

    def observe(self, event: str, room: models.Room | None) -> None:
        """A room event (room_started, participant_joined, track_published, ...): its listing changed."""
        if room is not None and event != "room_finished" and self.get(room.name) is not None:
            self._pending[room.name] = room
            self._wake.set()

    def _closed(self, room: Room) -> None:
        super()._closed(room)
        if self.get(room.name) is None:
            self._pending[room.name] = None
            self._wake.set()

    def resync(self) -> None:
        """Rewrites every hosted room's listing and claim (after a Redis restart lost them)."""
        for room in self.rooms():
            self._pending[room.name] = room.info()
        self._wake.set()

    async def listed(self) -> list[models.Room]:
        """Every room of the cluster, as its owner last listed it."""
        rooms = []
        for data in (await self.placement.redis.hgetall(ROOMS)).values():
            try:
                rooms.append(models.Room.FromString(data))
            except DecodeError:  # a corrupted entry hides one room, not the listing
                self.counters["cluster_listing_malformed"] += 1
        return rooms

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            self._writing = True
            try:
                await self._write(pending)
            except (RedisError, OSError) as error:
                self.counters["cluster_store_errors"] += 1
                log.warning("cannot update rooms in Redis: %s", error)
                for name, info in pending.items():  # retried with the next change or resync, newest first
                    self._pending.setdefault(name, info)
            finally:
                self._writing = False

    async def flushed(self) -> None:
        """Returns once every change so far has been written (or has failed to be)."""
        while self._pending or self._writing:
            await asyncio.sleep(0.05)

    async def _write(self, pending: dict[str, models.Room | None]) -> None:
        redis = self.placement.redis
        for name, info in pending.items():
            if info is None:
                await self.placement.release(name)
                continue
            owner = await self.placement.claim_own(name)
            if owner != self.placement.node_id:  # another live node took the room while this one was cut off
                self.counters["cluster_room_conflicts"] += 1
                log.error("room %s is hosted here but placed on %s", name, owner)
                continue
            await redis.hset(ROOMS, name, info.SerializeToString())
