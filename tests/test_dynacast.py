"""Dynacast end to end with LiveKit's Python SDK: a 1280x720 simulcast publisher stops encoding the layers no
subscriber needs (its own outbound-rtp stats show it) and starts them again when someone does."""
from __future__ import annotations

import asyncio

from livekit import rtc

from clients import connect, remote, until
from media import decoded_video, wait_for_tracks
from netlab import HEIGHT, WIDTH, DetailedVideo

ROOM = "dynacast"


async def growing(video: DetailedVideo, interval: float = 2.0) -> set[str]:
    """The rids whose sent bytes grew over `interval`."""
    before = await video.layer_bytes()
    await asyncio.sleep(interval)
    after = await video.layer_bytes()
    return {rid for rid, sent in after.items() if sent > before.get(rid, 0)}


async def test_the_publisher_encodes_only_what_subscribers_need(server) -> None:
    publisher_room = rtc.Room()
    # The SDK acts on SubscribedQualityUpdate only with dynacast on (as LiveKit's JS SDK).
    await publisher_room.connect(server.url, server.token("alice", ROOM), rtc.RoomOptions(dynacast=True))
    video = DetailedVideo(publisher_room)
    low = high = None
    try:
        publication = await video.start()
        low = await connect(server, "bob", ROOM)
        await wait_for_tracks(low, 1)
        await until(lambda: {"q", "h", "f"} <= set(server.layer_packets(publication.sid)), timeout=10)
        bob_view = remote(low, "alice").track_publications[publication.sid]
        bob_view.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)

        # Within ~10 s (5 s dynacast delay + the encoder reacting), only the lowest layer is sent.
        async def only_low() -> bool:
            return await growing(video) == {"q"}
        for _ in range(6):
            if await only_low():
                break
        else:
            raise AssertionError(f"layers still sent: {await growing(video)}")
        assert await only_low()  # and it stays that way

        # A full-quality subscriber arrives: the top layer comes back and that subscriber decodes 1280x720.
        high = await connect(server, "carol", ROOM)
        tracks = await wait_for_tracks(high, 1)
        assert {"q", "f"} <= await growing(video)
        frames = await decoded_video(tracks["video"], frames=60, timeout=20)
        assert (frames[-1].width, frames[-1].height) == (WIDTH, HEIGHT)
    finally:
        await video.stop()
        for client in (publisher_room, low, high):
            if client is not None:
                await client.disconnect()
