"""Joining rooms with LiveKit's Python SDK and waiting for what its clients see."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from livekit import rtc


async def connect(server, identity: str, room: str, auto_subscribe: bool = True, single_peer_connection: bool = True,
                  **grants: object) -> rtc.Room:
    """Joins as the SDK does by default: over /rtc/v1, one peer connection (or /rtc, two, without it)."""
    client = rtc.Room()
    await client.connect(server.url, server.token(identity, room, **grants),
                         rtc.RoomOptions(auto_subscribe=auto_subscribe, single_peer_connection=single_peer_connection))
    return client


async def until(predicate: Callable[[], object], timeout: float = 10) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


def remote(room: rtc.Room, identity: str) -> rtc.RemoteParticipant | None:
    return next((p for p in room.remote_participants.values() if p.identity == identity), None)


async def packets_received(track: rtc.RemoteTrack) -> int:
    """RTP packets the subscriber's libwebrtc received on the track (its inbound-rtp stats)."""
    return sum(stats.inbound_rtp.received.packets_received for stats in await track.get_stats()
               if stats.HasField("inbound_rtp"))
