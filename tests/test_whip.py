"""WHIP ingest (/whip/v1) with third-party clients: FFmpeg's WHIP muxer (through PyAV) publishes H.264 and Opus made
from the test card and a tone; a LiveKit SDK subscriber decodes what it sent; FFmpeg's DELETE on close makes the
participant leave. Bad requests get their HTTP status with a reason."""
from __future__ import annotations

import asyncio
import fractions
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from clients import connect, remote, until
from conftest import start_server, stop_server
from media import (HEIGHT, SAMPLE_RATE, TONE_HZ, WIDTH, decoded_audio, decoded_video, dominant_frequency,
                   matches_card, wait_for_tracks)
from media import test_card as card_rgba  # renamed: pytest would collect it

ROOM = "whip-room"
PUBLISHER = Path(__file__).with_name("whip_publisher.py")


class _CardTrack(VideoStreamTrack):
    def __init__(self) -> None:
        super().__init__()
        self._card = np.frombuffer(card_rgba(), dtype=np.uint8).reshape(HEIGHT, WIDTH, 4)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self._card, format="rgba")
        frame.pts, frame.time_base = pts, time_base
        return frame


class _ToneTrack(AudioStreamTrack):
    _samples = 960  # 20 ms

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        await asyncio.sleep(max(0.0, self._start + self._sent / SAMPLE_RATE - loop.time()))
        t = np.arange(self._sent, self._sent + self._samples) / SAMPLE_RATE
        tone = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, self._sent, fractions.Fraction(1, SAMPLE_RATE)
        self._sent += self._samples
        return frame


def _post(url: str, body: bytes, token: str | None = None,
          content_type: str = "application/sdp") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_ffmpeg_whip_publishes_to_sdk_subscriber(tmp_path, monkeypatch) -> None:
    # FFmpeg answers no consent checks: a short consent period shows its media keeping the session.
    monkeypatch.setenv("TERN_ICE_CONSENT_TIMEOUT", "8")  # checks go every 4-6 s
    server = start_server(tmp_path)
    try:
        subscriber = await connect(server, "viewer", ROOM)
        publisher = subprocess.Popen(
            [sys.executable, str(PUBLISHER), server.http + "/whip/v1", server.token("obs", ROOM, can_publish=True)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PUBLISHER.parent, text=True)
        try:
            tracks = await wait_for_tracks(subscriber, 2)
            whip = remote(subscriber, "obs")
            assert whip is not None and whip.attributes.get("tern.ingress") == "whip"
            frames = await decoded_video(tracks["video"], frames=15)
            assert matches_card(frames[-1]), "the subscriber sees FFmpeg's test card"
            samples = await decoded_audio(tracks["audio"], seconds=1.0)
            assert abs(dominant_frequency(samples) - TONE_HZ) < 10, "the subscriber hears FFmpeg's tone"
            await until(lambda: server.counters().get("ice_consent_by_media", 0) >= 1, timeout=15)
            await asyncio.sleep(1)
            assert remote(subscriber, "obs") is not None and server.counters().get("ice_consent_expired", 0) == 0
        finally:
            publisher.stdin.close()  # FFmpeg closes the muxer: its WHIP DELETE
            errors = await asyncio.get_running_loop().run_in_executor(None, publisher.stderr.read)
            publisher.wait(10)
        assert publisher.returncode == 0, errors[-2000:]
        await until(lambda: remote(subscriber, "obs") is None)  # the participant left
        await subscriber.disconnect()
        assert server.counters().get("whip_deleted", 0) >= 1
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()


async def test_aiortc_whip_publishes_vp8(server) -> None:
    """aiortc as a plain WHIP client: its offer (candidates gathered, DTLS actpass) POSTed, the answer applied."""
    subscriber = await connect(server, "viewer2", ROOM)
    pc = RTCPeerConnection()
    pc.addTrack(_CardTrack())
    pc.addTrack(_ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {server.token('aiortc', ROOM, can_publish=True)}",
               "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(server.http + "/whip/v1", data=pc.localDescription.sdp, headers=headers) as response:
            assert response.status == 201, await response.text()
            location, answer = response.headers["Location"], await response.text()
            assert response.headers["ETag"] and response.headers["Content-Type"].startswith("application/sdp")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        try:
            tracks = await wait_for_tracks(subscriber, 2)
            frames = await decoded_video(tracks["video"], frames=15)
            assert matches_card(frames[-1]), "the subscriber sees aiortc's test card"
            samples = await decoded_audio(tracks["audio"], seconds=1.0)
            assert abs(dominant_frequency(samples) - TONE_HZ) < 10, "the subscriber hears aiortc's tone"
            async with http.patch(location, data=b"", headers={"Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                assert r.status == 405
            async with http.delete(location) as response:
                assert response.status == 200
            await until(lambda: remote(subscriber, "aiortc") is None)
            async with http.delete(location) as response:
                assert response.status == 404  # the session is gone
        finally:
            await pc.close()
            await subscriber.disconnect()


def test_whip_refuses_bad_requests(server) -> None:
    url = server.http + "/whip/v1"
    publisher = server.token("pub", ROOM, can_publish=True)
    status, reason = _post(url, b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF x\r\n", publisher)
    assert status == 400 and "malformed SDP" in reason
    status, reason = _post(url, b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", publisher)
    assert status == 400 and reason
    assert _post(url, b"v=0\r\n", None)[0] == 401
    status, reason = _post(url, b"v=0\r\n", server.token("viewer", ROOM, can_publish=False))
    assert status == 403 and "canPublish" in reason
    assert _post(url, b"v=0\r\n", publisher, content_type="text/plain")[0] == 415
    assert _post(url, b"a" * (64 * 1024 + 1), publisher)[0] == 413
    request = urllib.request.Request(url + "/WH_unknown", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 404
    counters = server.counters()
    assert counters.get("whip_malformed_sdp", 0) >= 1 and counters.get("whip_unauthorized", 0) >= 1
    assert counters.get("whip_forbidden", 0) >= 1 and counters.get("whip_too_large", 0) >= 1
