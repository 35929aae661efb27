"""Connection quality end to end with LiveKit's Python SDK: what its clients show for themselves and the others."""
from __future__ import annotations

import asyncio

from livekit import rtc

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET
from media import Publisher, wait_for_tracks
from signaling.clients import loadtest
from signaling.rtc.quality import INTERVAL as QUALITY_INTERVAL

EXCELLENT = rtc.ConnectionQuality.QUALITY_EXCELLENT
LOST = rtc.ConnectionQuality.QUALITY_LOST
DEGRADED = (rtc.ConnectionQuality.QUALITY_POOR, rtc.ConnectionQuality.QUALITY_LOST)


def participants_by_quality(server) -> dict[str, float]:
    """The server's gauge of connected participants per connection quality level."""
    return {labels["quality"]: value for name, labels, value in server.metrics()
            if name == "tern_connection_quality_participants"}


def quality_of(client: rtc.Room, identity: str) -> rtc.ConnectionQuality:
    """What the client shows for a participant (itself or another), as its SDK keeps it."""
    local = client.local_participant
    participant = local if local.identity == identity else remote(client, identity)
    return participant.connection_quality if participant is not None else rtc.ConnectionQuality.QUALITY_UNKNOWN


async def test_publishers_on_loopback_are_excellent_and_one_whose_media_stops_is_lost_or_poor(server):
    room = "quality-room"
    alice, bob = await connect(server, "alice", room), await connect(server, "bob", room)
    changes: list[tuple[str, str, rtc.ConnectionQuality]] = []  # (observer, subject, quality)
    for observer, client in (("alice", alice), ("bob", bob)):
        client.on("connection_quality_changed", lambda participant, quality, observer=observer:
                  changes.append((observer, participant.identity, quality)))
    publishers = [Publisher(alice), Publisher(bob)]
    try:
        for publisher in publishers:
            await publisher.start()
        await wait_for_tracks(alice, 2)
        await wait_for_tracks(bob, 2)
        everyone = [(client, identity) for client in (alice, bob) for identity in ("alice", "bob")]
        await until(lambda: all(quality_of(c, i) == EXCELLENT for c, i in everyone), timeout=12)
        # Two more intervals of real media, scored from the engine's counters (each side's receive statistics
        # and the subscribers' RTCP reports): still EXCELLENT, so nothing more is said.
        told = len(changes)
        await asyncio.sleep(2 * QUALITY_INTERVAL + 0.5)
        assert participants_by_quality(server) == {"excellent": 2, "good": 0, "poor": 0, "lost": 0}
        assert all(quality_of(c, i) == EXCELLENT for c, i in everyone), changes
        assert len(changes) == told, changes[told:]

        # Alice's camera stops sending (her client stays connected; its RTCP goes on, and the SDK sends silence
        # for her microphone): POOR, or LOST, to everyone, herself included; bob is unaffected.
        await publishers[0].stop()
        await until(lambda: quality_of(bob, "alice") in DEGRADED and quality_of(alice, "alice") in DEGRADED, timeout=12)
        assert quality_of(bob, "bob") == EXCELLENT and quality_of(alice, "bob") == EXCELLENT, changes
    finally:
        for publisher in publishers:
            await publisher.stop()
        for client in (alice, bob):
            await client.disconnect()


async def test_a_client_that_stops_sending_rtp_but_stays_connected_is_lost_to_others(server):
    room = "quality-silent"
    clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET)  # raw RTP, no RTCP: a hostile publisher
    bob = None
    try:
        [publisher] = await clients.add(room, 1, publish=loadtest.MediaPlan(video=True), subscribe=False)
        assert not clients.errors(), clients.errors()
        bob = await connect(server, "bob", room)
        await wait_for_tracks(bob, 1)
        await until(lambda: quality_of(bob, publisher.identity) == EXCELLENT, timeout=12)
        await asyncio.sleep(QUALITY_INTERVAL)  # judged on its packets at least once
        assert quality_of(bob, publisher.identity) == EXCELLENT
        clients.load_sender.stop()  # its signalling and ICE consent carry on
        await until(lambda: quality_of(bob, publisher.identity) == LOST, timeout=2 * QUALITY_INTERVAL + 1)
        assert quality_of(bob, "bob") == EXCELLENT
        assert participants_by_quality(server)["lost"] == 1
    finally:
        if bob is not None:
            await bob.disconnect()
        await clients.close()

