"""The room store: the one interface through which the app, RoomService and metrics find rooms and participants.
In-memory on a single node (signaling/cluster/memory.py); a Redis backend for clusters implements the same."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..rtc.participant import Participant
    from ..rtc.room import Room


class RoomStore(Protocol):
    def get(self, name: str) -> Room | None:
        """The open room `name`, or None."""

    def get_or_create(self, name: str) -> Room:
        """The room a join names, created with the configured defaults if it is not open."""

    def create(self, name: str, empty_timeout: float = 0, departure_timeout: float = 0, max_participants: int = 0,
               metadata: str = "") -> Room:
        """The room `name`, created with these settings (0 = the configured default) if it is not open."""

    def rooms(self, names: Iterable[str] = ()) -> list[Room]:
        """Open rooms: all, or those named."""

    def participants(self) -> Iterator[Participant]:
        """Every participant in every open room."""
