"""WHEP playback (/whep/v1) with third-party viewers: aiortc, recvonly, watches a LiveKit SDK publisher's camera
(simulcast, VP8) and microphone and decodes both; Chromium does the same as a web page would (plain
RTCPeerConnection and fetch, from another origin); the viewer is hidden from the room's SDK participants; DELETE ends
it. Bad requests get their HTTP status with a reason, and are counted."""
from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from email.message import Message

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit import api, rtc

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET
from media import TONE_HZ, Publisher, dominant_frequency, matches_card, wait_for_tracks
from test_browser import CHROMIUM, CHROMIUM_ARGS

ROOM = "whep-room"


def _viewer_pc() -> tuple[RTCPeerConnection, dict]:
    """A WHEP player's peer connection: one recvonly video and one recvonly audio transceiver."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: dict = {}
    pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
    return pc, tracks


async def _video_frames(track, count: int) -> list[np.ndarray]:
    frames = []
    for _ in range(count):
        frame = await asyncio.wait_for(track.recv(), 10)
        frames.append(frame.to_ndarray(format="rgb24"))
    return frames


async def _audio_samples(track, seconds: float) -> np.ndarray:
    """One channel of the decoded audio, after the first second (the start may be silence)."""
    chunks, collected = [], 0
    while collected < (seconds + 1.0) * 48000:
        frame = await asyncio.wait_for(track.recv(), 10)
        samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0].astype(np.float64)
        chunks.append(samples)
        collected += len(samples)
    return np.concatenate(chunks)[48000:]


def _request(url: str, method: str, body: bytes = b"", token: str | None = None,
             content_type: str = "application/sdp") -> tuple[int, str, Message]:
    request = urllib.request.Request(url, data=body or None, method=method, headers={"Content-Type": content_type})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers


async def test_aiortc_viewer_watches_sdk_publisher(server) -> None:
    room = await connect(server, "broadcaster", ROOM)
    other = await connect(server, "audience", ROOM)
    publisher = Publisher(room)
    await publisher.start()
    await wait_for_tracks(other, 2)  # published: its media reached the server
    pc, tracks = _viewer_pc()
    lkapi = api.LiveKitAPI(server.http, API_KEY, API_SECRET)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        url = server.http + "/whep/v1?participant=broadcaster"
        headers = {"Authorization": f"Bearer {server.token('viewer', ROOM, can_publish=False)}",
                   "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                assert response.status == 201, await response.text()
                location, answer = response.headers["Location"], await response.text()
                assert location.startswith(server.http + "/whep/v1/") and response.headers["ETag"]
                assert response.headers["Content-Type"].startswith("application/sdp")
                assert response.headers["Access-Control-Allow-Origin"] == "*"
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await until(lambda: len(tracks) == 2)
            frames = await _video_frames(tracks["video"], 30)
            assert matches_card(frames[-1]), "the viewer sees the publisher's test card"
            samples = await _audio_samples(tracks["audio"], 1.0)
            assert abs(dominant_frequency(samples) - TONE_HZ) < 10, "the viewer hears the publisher's tone"

            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
            viewer = next(p for p in listed.participants if p.identity == "viewer")
            assert viewer.permission.hidden and not viewer.permission.can_publish and not viewer.tracks
            assert remote(room, "viewer") is None and remote(other, "viewer") is None, "the viewer is hidden"
            assert remote(other, "broadcaster") is not None

            async with http.patch(location, data=b"", headers={"Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                assert r.status == 405
            async with http.delete(location) as response:
                assert response.status == 200

            async def gone() -> bool:
                listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
                return all(p.identity != "viewer" for p in listed.participants)
            for _ in range(50):
                if await gone():
                    break
                await asyncio.sleep(0.1)
            assert await gone(), "DELETE ended the viewer's session"
            async with http.delete(location) as response:
                assert response.status == 404
        assert server.counters().get("whep_deleted", 0) >= 1
    finally:
        await pc.close()
        await lkapi.aclose()
        await publisher.stop()
        await room.disconnect()
        await other.disconnect()


# A web page's WHEP player: recvonly transceivers, the offer POSTed once ICE gathering is complete, the answer applied;
# the video element shows what arrives.
_PLAY = """async ([url, token]) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  const video = document.createElement('video');
  Object.assign(video, {muted: true, autoplay: true, playsInline: true, srcObject: new MediaStream()});
  document.body.appendChild(video);
  pc.ontrack = (event) => video.srcObject.addTrack(event.track);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
  });
  const response = await fetch(url, {method: 'POST', body: pc.localDescription.sdp,
                                     headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + token}});
  const body = await response.text();
  if (response.status !== 201) return {status: response.status, body};
  await pc.setRemoteDescription({type: 'answer', sdp: body});
  window.whep = {pc, video, location: response.headers.get('Location')};
  return {status: 201, location: window.whep.location};
}"""
# The video element's current picture, scaled to 64 x 36, as RGBA bytes (null before the first frame).
_PICTURE = """() => {
  const video = window.whep.video;
  if (!video.videoWidth) return null;
  const canvas = Object.assign(document.createElement('canvas'), {width: 64, height: 36});
  const context = canvas.getContext('2d');
  context.drawImage(video, 0, 0, 64, 36);
  return Array.from(context.getImageData(0, 0, 64, 36).data);
}"""
_AUDIO_PACKETS = """async () => {
  let packets = 0;
  (await window.whep.pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived;
  });
  return packets;
}"""
_DELETE = "async () => (await fetch(window.whep.location, {method: 'DELETE'})).status"


async def test_chromium_whep_player(server) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs {CHROMIUM}")
    from playwright.async_api import async_playwright
    room = await connect(server, "caster", ROOM)
    other = await connect(server, "audience2", ROOM)
    publisher = Publisher(room)
    await publisher.start()
    lkapi = api.LiveKitAPI(server.http, API_KEY, API_SECRET)
    try:
        await wait_for_tracks(other, 2)
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await chromium.new_page()  # about:blank: every request to the server is cross-origin
                played = await page.evaluate(_PLAY, [f"{server.http}/whep/v1?participant=caster",
                                                     server.token("browser-viewer", ROOM, can_publish=False)])
                assert played["status"] == 201, played
                picture = None
                for _ in range(100):
                    picture = await page.evaluate(_PICTURE)
                    if picture is not None and matches_card(np.array(picture, np.uint8).reshape(36, 64, 4)[..., :3]):
                        break
                    await asyncio.sleep(0.1)
                assert picture is not None, "Chromium decoded no frame"
                assert matches_card(np.array(picture, np.uint8).reshape(36, 64, 4)[..., :3]), "the page shows the card"
                for _ in range(50):
                    if await page.evaluate(_AUDIO_PACKETS) > 50:
                        break
                    await asyncio.sleep(0.1)
                assert await page.evaluate(_AUDIO_PACKETS) > 50, "the audio arrives"
                assert await page.evaluate(_DELETE) == 200  # a cross-origin DELETE: CORS preflight passed
            finally:
                await chromium.close()
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        assert all(p.identity != "browser-viewer" for p in listed.participants)
    finally:
        await lkapi.aclose()
        await publisher.stop()
        await room.disconnect()
        await other.disconnect()


async def test_whep_refuses_bad_requests(server) -> None:
    url = server.http + "/whep/v1"
    viewer = server.token("viewer2", ROOM, can_publish=False)
    pc, _ = _viewer_pc()
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp.encode()
    await pc.close()
    post = lambda *args, **kwargs: asyncio.to_thread(_request, *args, **kwargs)  # noqa: E731

    status, reason, headers = await post(url, "OPTIONS")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*" and "POST" in headers["Allow"]
    assert (await post(url + "?participant=x", "POST", offer))[0] == 401
    status, reason, _ = await post(url + "?participant=x", "POST", offer, server.token("v", ROOM, can_subscribe=False))
    assert status == 403 and "canSubscribe" in reason
    status, reason, _ = await post(url, "POST", offer, viewer)
    assert status == 400 and "?participant=" in reason
    status, reason, _ = await post(url + "?participant=x", "POST", b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF x\r\n", viewer)
    assert status == 400 and "malformed SDP" in reason
    assert (await post(url + "?participant=x", "POST", offer, viewer, "text/plain"))[0] == 415
    status, reason, _ = await post(url + "?participant=nobody", "POST", offer, server.token("v", "no-such-room"))
    assert status == 404 and "not open" in reason
    room = await connect(server, "present", ROOM)  # the room is open; nobody publishes in it
    try:
        status, reason, _ = await post(url + "?participant=nobody", "POST", offer, viewer)
        assert status == 404 and "nobody" in reason
        status, reason, _ = await post(url + "?participant=present", "POST", offer, viewer)
        assert status == 404 and "no tracks" in reason
        status, reason, _ = await post(url + "?track=TR_nothing", "POST", offer, viewer)
        assert status == 404 and "TR_nothing" in reason
        status, reason, _ = await post(url + "?participant=present", "POST", offer, server.token("present", ROOM))
        assert status == 409 and "identity" in reason
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED  # not replaced
    finally:
        await room.disconnect()
    assert (await post(url + "/WE_unknown", "DELETE"))[0] == 404
    counters = server.counters()
    for name in ("unauthorized", "forbidden", "nothing_named", "malformed_sdp", "unsupported_media_type",
                 "not_found", "identity_conflict", "unknown_resource"):
        assert counters.get(f"whep_{name}", 0) >= 1, name


pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")
