"""End to end with LiveKit's own Python SDK (libwebrtc inside) as publisher and subscribers."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import rtc

from clients import connect
from conftest import start_server, stop_server
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, quadrant_colours, wait_for_tracks


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def server(request, tmp_path_factory: pytest.TempPathFactory):
    """The module's server forwarding on one thread (the event loop's), then on two (rtc.workers)."""
    server = start_server(tmp_path_factory.mktemp("tern"), config=f"rtc:\n  workers: {request.param}\n")
    server.workers = request.param
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


async def test_video_and_audio_are_forwarded_and_decoded(server):
    room = "media-room"
    publisher_room = await connect(server, "alice", room)
    publisher = Publisher(publisher_room)
    subscriber_room = await connect(server, "bob", room)
    late_room = None
    try:
        await publisher.start()
        tracks = await wait_for_tracks(subscriber_room, 2)
        assert tracks["video"].kind == rtc.TrackKind.KIND_VIDEO

        frames = await decoded_video(tracks["video"], frames=30)
        good = [f for f in frames[-10:] if matches_card(f)]
        assert good, f"decoded frames do not show the test card: {quadrant_colours(frames[-1]).round()}"
        # Simulcast: for a 640x360 source the SDK sends two layers (rids q and h, h at full resolution);
        # both arrive and the subscriber is forwarded the highest.
        layers = server.layer_packets(tracks["video"].sid)
        assert set(layers) == {"q", "h"} and all(layers.values()), layers
        assert (frames[-1].width, frames[-1].height) == (640, 360)

        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 5
        assert np.sqrt(np.mean(samples ** 2)) > 1000  # a tone, not near-silence

        # A participant joining later also receives both tracks.
        late_room = await connect(server, "carol", room)
        late_tracks = await wait_for_tracks(late_room, 2)
        late_frames = await decoded_video(late_tracks["video"], frames=10)
        assert any(matches_card(f) for f in late_frames)
        late_samples = await decoded_audio(late_tracks["audio"], seconds=0.5)
        assert abs(dominant_frequency(late_samples) - TONE_HZ) < 5

        # Every forwarding worker reports itself; the two subscribers' four DownTracks are spread over them.
        metrics = server.metrics()
        downtracks = {labels["worker"]: value for name, labels, value in metrics if name == "tern_worker_downtracks"}
        sent = {labels["worker"]: value for name, labels, value in metrics if name == "tern_worker_packets_total"}
        assert len(downtracks) == len(sent) == server.workers
        assert sum(downtracks.values()) == 4 and sum(sent.values()) > 0
    finally:
        await publisher.stop()
        for client in (publisher_room, subscriber_room, late_room):
            if client is not None:
                await client.disconnect()


async def test_leaving_is_seen_by_others(server):
    room = "leave-room"
    first = await connect(server, "dave", room)
    second = await connect(server, "erin", room)
    left = asyncio.Event()
    first.on("participant_disconnected", lambda participant: participant.identity == "erin" and left.set())
    try:
        await asyncio.wait_for(_until(lambda: "erin" in {p.identity for p in first.remote_participants.values()}), 10)
        await second.disconnect()
        await asyncio.wait_for(left.wait(), 10)
        assert "erin" not in {p.identity for p in first.remote_participants.values()}
    finally:
        await first.disconnect()


async def test_forged_token_is_refused(server):
    from livekit import api

    forged = api.AccessToken("devkey", "not-the-secret").with_identity("mallory").with_grants(
        api.VideoGrants(room_join=True, room="media-room")).to_jwt()
    client = rtc.Room()
    with pytest.raises(Exception) as error:
        await client.connect(server.url, forged)
    assert "401" in str(error.value) or "unauthorized" in str(error.value).lower() or "signature" in str(error.value).lower()


async def _until(predicate, interval: float = 0.05) -> None:
    while not predicate():
        await asyncio.sleep(interval)
