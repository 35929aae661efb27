"""RTMP ingest with third-party clients: PyAV (FFmpeg's RTMP client and FLV muxer) publishes the test card (H.264)
and a tone (AAC) to a stream key made with livekit-api's IngressService; a LiveKit SDK subscriber decodes the video
(content matches) and hears the tone, the IngressInfo goes PUBLISHING then INACTIVE; a wrong key is refused, and a
connection sending garbage is closed and counted while the publisher streams on; DeleteIngress ends the RTMP
connection."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import api

from clients import connect, remote, until
from conftest import free_port, start_server, stop_server
from media import TONE_HZ, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from test_ingress import lkapi  # noqa: F401 (the fixture, on this module's server)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore:The HMAC key")]

ROOM = "rtmp-room"
PUBLISHER = Path(__file__).with_name("rtmp_publisher.py")
Status = api.IngressState.Status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("tern"), config=f"ingress:\n  rtmp_port: {free_port()}\n")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def _encoder(url: str, *mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PUBLISHER), url, *mode], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=PUBLISHER.parent, text=True)


async def _stop(encoder: subprocess.Popen) -> tuple[int, str]:
    encoder.stdin.close()
    errors = await asyncio.get_running_loop().run_in_executor(None, encoder.stderr.read)
    return encoder.wait(10), errors


async def _state(lkapi: api.LiveKitAPI, ingress_id: str) -> int:
    listed = await lkapi.ingress.list_ingress(api.ListIngressRequest(ingress_id=ingress_id))
    return listed.items[0].state.status


@pytest.mark.parametrize("mode", ["", "bframes"], ids=["passthrough", "transcode"])
async def test_rtmp_publisher_reaches_sdk_subscriber(server, lkapi, mode: str) -> None:
    info = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, name="obs", room_name=ROOM, participant_identity=f"rtmp{mode}"))
    subscriber = await connect(server, f"viewer{mode}", ROOM)
    encoder = _encoder(f"{info.url}/{info.stream_key}", *filter(None, [mode]))
    try:
        tracks = await wait_for_tracks(subscriber, 2)
        streamer = remote(subscriber, f"rtmp{mode}")
        assert streamer is not None and streamer.attributes.get("tern.ingress") == "rtmp"
        frames = await decoded_video(tracks["video"], frames=15)
        assert matches_card(frames[-1]), "the subscriber sees the RTMP encoder's test card"
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 10, "the subscriber hears the RTMP encoder's tone"
        assert await _state(lkapi, info.ingress_id) == Status.ENDPOINT_PUBLISHING
    finally:
        status, errors = await _stop(encoder)
    assert status == 0, errors[-2000:]
    await until(lambda: remote(subscriber, f"rtmp{mode}") is None, timeout=15)
    await subscriber.disconnect()
    assert await _state(lkapi, info.ingress_id) == Status.ENDPOINT_INACTIVE
    log = server.log()
    assert ("re-encoded" if mode else "passed through") in log


async def test_rtmp_refuses_wrong_key_and_garbage(server, lkapi) -> None:
    info = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, room_name=ROOM, participant_identity="keyed"))
    wrong = _encoder(f"{info.url}/not-{info.stream_key}")
    assert await asyncio.get_running_loop().run_in_executor(None, wrong.wait, 15) != 0, "publishing is refused"
    assert server.counters().get("rtmp_unknown_stream_key", 0) == 1

    subscriber = await connect(server, "viewer-g", ROOM)
    encoder = _encoder(f"{info.url}/{info.stream_key}")
    try:
        await wait_for_tracks(subscriber, 2)
        port = int(info.url.rsplit(":", 1)[1].split("/")[0])
        for garbage in (b"\x03" + bytes(1536) + bytes(1536) + b"\xff" * 4096, b"GET / HTTP/1.1\r\n\r\n" * 200):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(garbage)
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(65536):  # the server closes it
                    pass
        counters = server.counters()
        assert counters.get("rtmp_malformed", 0) + counters.get("rtmp_bad_handshake", 0) >= 2, counters
        frames = await decoded_video((await wait_for_tracks(subscriber, 2))["video"], frames=5)
        assert matches_card(frames[-1]), "the publisher streams on"
        # DeleteIngress ends the session, and the encoder's connection with it.
        await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=info.ingress_id))
        await until(lambda: remote(subscriber, "keyed") is None)
        await until(lambda: server.counters().get("rtmp_session_ended", 0) == 1, timeout=10)
    finally:
        await _stop(encoder)
        await subscriber.disconnect()
