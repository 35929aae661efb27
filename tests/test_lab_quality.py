"""Connection quality on a real narrow link (tests/netlab.py: a namespace behind a `tbf`-shaped veth pair), seen
through LiveKit's Python SDK."""
from __future__ import annotations

import asyncio
import contextlib

from livekit import rtc

from clients import connect, until
from media import Publisher, wait_for_tracks
from netlab import DetailedVideo
from signaling.rtc.quality import INTERVAL as QUALITY_INTERVAL
from test_e2e_quality import EXCELLENT, quality_of

NARROWED = (rtc.ConnectionQuality.QUALITY_POOR, rtc.ConnectionQuality.QUALITY_GOOD)
NARROW_KBIT = 600  # the bottleneck
# A subscriber is first judged on its second report after its DownTrack starts: up to three quality intervals.
FIRST_JUDGEMENT_S = 3 * QUALITY_INTERVAL + 5


async def test_a_subscriber_behind_a_narrow_link_is_poor_or_good_an_unconstrained_one_excellent(lab_server):
    """A 1280x720 simulcast publisher and a subscriber on the host, a second subscriber inside the lab's namespace
    behind 600 kbit/s. The host subscriber's SDK shows what everyone is told about everyone."""
    lab, server = lab_server
    lab.shape(NARROW_KBIT)
    room = "quality-lab"
    publisher_room = await connect(server, "publisher", room)
    video, audio = DetailedVideo(publisher_room), Publisher(publisher_room, video=False)
    wide = await connect(server, "wide", room)
    narrow = None
    try:
        await video.start()
        await audio.start()
        await wait_for_tracks(wide, 2)
        narrow = asyncio.create_task(lab.run_client(
            "--url", server.url, "--token", server.token("narrow", room), "--seconds", "40", timeout=40))
        await until(lambda: quality_of(wide, "narrow") in NARROWED or narrow.done(), timeout=FIRST_JUDGEMENT_S + 10)
        assert not narrow.done(), narrow.result()
        await until(lambda: quality_of(wide, "wide") == EXCELLENT and quality_of(wide, "publisher") == EXCELLENT,
                    timeout=2 * QUALITY_INTERVAL + 1)
        assert quality_of(wide, "narrow") in NARROWED
    finally:
        if narrow is not None:
            narrow.cancel()  # the lab client is killed
            with contextlib.suppress(asyncio.CancelledError):
                await narrow
        for media in (video, audio):
            await media.stop()
        for client in (publisher_room, wide):
            await client.disconnect()
