"""The ingress store: IngressInfo (what CreateIngress defined, with its live state) by ingress id and by stream key.
In memory on a single node (MemoryIngressStore); a Redis backend for clusters implements the same interface, storing
each IngressInfo as its protobuf bytes. Values go in and come out as copies, as they would through Redis."""
from __future__ import annotations

from typing import Protocol

from livekit.protocol import ingress


class IngressStore(Protocol):
    def save(self, info: ingress.IngressInfo) -> None:
        """Creates or replaces the ingress `info.ingress_id` (its stream key must not change)."""

    def get(self, ingress_id: str) -> ingress.IngressInfo | None:
        """The ingress, or None."""

    def by_stream_key(self, stream_key: str) -> ingress.IngressInfo | None:
        """The ingress a publisher's stream key names, or None."""

    def list(self, room_name: str = "", ingress_id: str = "") -> list[ingress.IngressInfo]:
        """Every ingress, or those of one room, or the one with that id."""

    def delete(self, ingress_id: str) -> None:
        """Forgets the ingress (nothing if there is none)."""

    def __len__(self) -> int:
        """How many ingresses are stored."""


class MemoryIngressStore:
    """Implements IngressStore for one node."""

    def __init__(self) -> None:
        self._by_id: dict[str, ingress.IngressInfo] = {}
        self._ids_by_key: dict[str, str] = {}

    def save(self, info: ingress.IngressInfo) -> None:
        stored = ingress.IngressInfo()
        stored.CopyFrom(info)
        self._by_id[info.ingress_id] = stored
        if info.stream_key:
            self._ids_by_key[info.stream_key] = info.ingress_id

    def get(self, ingress_id: str) -> ingress.IngressInfo | None:
        info = self._by_id.get(ingress_id)
        return None if info is None else _copy(info)

    def by_stream_key(self, stream_key: str) -> ingress.IngressInfo | None:
        return self.get(self._ids_by_key.get(stream_key, ""))

    def list(self, room_name: str = "", ingress_id: str = "") -> list[ingress.IngressInfo]:
        return [_copy(info) for info in self._by_id.values()
                if (not room_name or info.room_name == room_name) and (not ingress_id or info.ingress_id == ingress_id)]

    def delete(self, ingress_id: str) -> None:
        info = self._by_id.pop(ingress_id, None)
        if info is not None:
            self._ids_by_key.pop(info.stream_key, None)

    def __len__(self) -> int:
        return len(self._by_id)


def _copy(info: ingress.IngressInfo) -> ingress.IngressInfo:
    copy = ingress.IngressInfo()
    copy.CopyFrom(info)
    return copy
