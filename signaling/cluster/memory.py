"""The in-memory room store: a single node's rooms, created on first join (or by the API), closed when empty."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from ..rtc.room import Room

if TYPE_CHECKING:
    from ..rtc.participant import Participant

log = logging.getLogger(__name__)


class MemoryRoomStore:
    """Implements RoomStore. `notify(event, room=, participant=, track=)` receives LiveKit's webhook events."""

    def __init__(self, empty_timeout: float, departure_timeout: float, max_participants: int,
                 notify: Callable[..., None]) -> None:
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.notify = notify
        self._rooms: dict[str, Room] = {}

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def get_or_create(self, name: str) -> Room:
        return self._rooms.get(name) or self.create(name)

    def create(self, name: str, empty_timeout: float = 0, departure_timeout: float = 0, max_participants: int = 0,
               metadata: str = "") -> Room:
        room = self._rooms.get(name)
        if room is not None:
            return room
        room = Room(name, empty_timeout or self.empty_timeout, departure_timeout or self.departure_timeout,
                    max_participants or self.max_participants, metadata, self._closed)
        self._rooms[name] = room
        room.schedule_close(room.empty_timeout)
        log.info("room %s (%s) created", name, room.sid)
        self.notify("room_started", room=room.info())
        return room

    def rooms(self, names: Iterable[str] = ()) -> list[Room]:
        wanted = set(names)
        return [room for room in self._rooms.values() if not wanted or room.name in wanted]

    def participants(self) -> Iterator[Participant]:
        for room in list(self._rooms.values()):
            yield from list(room.participants.values())

    def _closed(self, room: Room) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        self.notify("room_finished", room=room.info())
