"""End-to-end encryption with LiveKit's Python SDK: two clients holding the same shared key exchange the test card
(VP8 simulcast) and the tone through tern, which forwards frames it cannot read and still switches simulcast layers
(VP8's payload descriptor and the cryptor's clear frame header are all it needs); a third client without the key
gets nothing usable. tests/test_e2ee_browser.py does the same with the JS SDK in Chromium."""
from __future__ import annotations

import asyncio

from livekit import rtc

from media import (TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, each_frame_for, matches_card,
                   test_card as card_rgba, wait_for_tracks)

ROOM = "e2ee-python"
KEY = b"a shared passphrase"
# The SDK gives a 640x360 source two layers of the same size; from 720p on it scales them (a quarter, a half).
FULL_WIDTH, FULL_HEIGHT = 1280, 720


async def _join(server, identity: str, key: bytes | None) -> rtc.Room:
    room = rtc.Room()
    e2ee = rtc.E2EEOptions(key_provider_options=rtc.KeyProviderOptions(shared_key=key)) if key else None
    await room.connect(server.url, server.token(identity, ROOM), rtc.RoomOptions(e2ee=e2ee))
    return room


async def _camera(room: rtc.Room) -> asyncio.Task:
    """Publishes the test card at 1280x720 in VP8 simulcast; returns the task feeding it."""
    source = rtc.VideoSource(FULL_WIDTH, FULL_HEIGHT)
    card = card_rgba(FULL_WIDTH, FULL_HEIGHT)
    await room.local_participant.publish_track(
        rtc.LocalVideoTrack.create_video_track("camera", source),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True))

    async def capture() -> None:
        while True:
            source.capture_frame(rtc.VideoFrame(FULL_WIDTH, FULL_HEIGHT, rtc.VideoBufferType.RGBA, card))
            await asyncio.sleep(1 / 15)
    return asyncio.create_task(capture())


async def test_clients_with_the_shared_key_see_and_hear_each_other_and_others_get_nothing_usable(server) -> None:
    camera = await _join(server, "camera", KEY)
    viewer = await _join(server, "viewer", KEY)
    outsider = await _join(server, "outsider", None)
    publisher = Publisher(camera, video=False)
    capture = None
    try:
        capture = await _camera(camera)
        await publisher.start()
        tracks = await wait_for_tracks(viewer, 2)
        publications = list(viewer.remote_participants["camera"].track_publications.values())
        assert all(p.encryption_type == rtc.EncryptionType.GCM for p in publications), publications
        frames = await decoded_video(tracks["video"], frames=10)
        assert all(matches_card(frame) for frame in frames[-3:]), [frame.width for frame in frames]
        assert abs(dominant_frequency(await decoded_audio(tracks["audio"], seconds=0.5)) - TONE_HZ) < 5

        video = next(p for p in publications if p.kind == rtc.TrackKind.KIND_VIDEO)
        print("layers", server.layer_packets(video.sid), video.simulcasted, video.width)
        video.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)   # a layer switch on frames tern cannot read
        deadline = asyncio.get_running_loop().time() + 10
        while (low := (await decoded_video(tracks["video"], frames=5))[-1]).width != FULL_WIDTH // 4:
            assert asyncio.get_running_loop().time() < deadline, f"no switch down to the low layer: {low.width}"
        assert matches_card(low)
        video.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)   # the publisher's estimate may stop short
        deadline = asyncio.get_running_loop().time() + 15
        while (high := (await decoded_video(tracks["video"], frames=5))[-1]).width <= low.width:
            assert asyncio.get_running_loop().time() < deadline, "no switch back up"
        assert matches_card(high)

        # Without the key: the tone is not heard, and nothing decoded looks like the card.
        theirs = await wait_for_tracks(outsider, 2)
        noise = await decoded_audio(theirs["audio"], seconds=0.5)
        assert abs(dominant_frequency(noise) - TONE_HZ) > 20
        cards: list[bool] = []   # ciphertext may decode to nothing at all
        await each_frame_for(theirs["video"], 2, lambda frame: cards.append(matches_card(frame)))
        assert not any(cards)
    finally:
        if capture is not None:
            capture.cancel()
        await publisher.stop()
        for room in (camera, viewer, outsider):
            await room.disconnect()
