"""WHIP ingest (/whip/v1) with third-party clients: FFmpeg's WHIP muxer (through PyAV) publishes H.264 and Opus made
from the test card and a tone; a LiveKit SDK subscriber decodes what it sent; FFmpeg's DELETE on close makes the
participant leave. Bad requests get their HTTP status with a reason."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clients import connect, remote, until
from media import TONE_HZ, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks

ROOM = "whip-room"
PUBLISHER = Path(__file__).with_name("whip_publisher.py")


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


async def test_ffmpeg_whip_publishes_to_sdk_subscriber(server) -> None:
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
    finally:
        publisher.stdin.close()  # FFmpeg closes the muxer: its WHIP DELETE
        errors = await asyncio.get_running_loop().run_in_executor(None, publisher.stderr.read)
        publisher.wait(10)
    assert publisher.returncode == 0, errors[-2000:]
    await until(lambda: remote(subscriber, "obs") is None)  # the participant left
    await subscriber.disconnect()
    assert server.counters().get("whip_deleted", 0) >= 1


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
