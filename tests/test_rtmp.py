"""RTMP ingest with third-party clients: PyAV (FFmpeg's RTMP client and FLV muxer) publishes the test card (H.264)
and a tone (AAC) to a stream key made with livekit-api's IngressService; a LiveKit SDK subscriber decodes the video
(content matches) and hears the tone, the IngressInfo goes PUBLISHING then INACTIVE; a wrong key is refused, and a
connection sending garbage is closed and counted while the publisher streams on; DeleteIngress ends the RTMP
connection. A codec tern refuses, or the worker dying mid-stream, makes the ingress ENDPOINT_ERROR with the reason (in
ListIngress and the ingress_ended webhook), and the encoder is told and disconnected; so does an encoder sending no
audio or video."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from livekit import api

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET, free_port, start_server, stop_server
from media import TONE_HZ, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from test_ingress import lkapi  # noqa: F401 (the fixture, on this module's server)
from test_webhook import Receiver, webhooks  # noqa: F401 (webhooks: the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore:The HMAC key")]

ROOM = "rtmp-room"
PUBLISHER = Path(__file__).with_name("rtmp_publisher.py")
Status = api.IngressState.Status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, webhooks: Receiver):
    server = start_server(tmp_path_factory.mktemp("tern"), config=f"ingress:\n  rtmp_port: {free_port()}\n"
                          f"webhook:\n  api_key: {API_KEY}\n  urls: [{webhooks.url}]\n")
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


def _ended(webhooks: Receiver, ingress_id: str) -> list:
    return [e.ingress_info for e in webhooks.events
            if e.event == "ingress_ended" and e.ingress_info.ingress_id == ingress_id]


async def test_rtmp_failures_are_endpoint_errors(server, lkapi, webhooks: Receiver) -> None:
    loop = asyncio.get_running_loop()
    # An encoder sending a codec tern refuses (Sorenson Spark): the worker fails before WHIP.
    info = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, room_name=ROOM, participant_identity="flash"))
    encoder = _encoder(f"{info.url}/{info.stream_key}", "flv1")
    try:
        await until(lambda: _ended(webhooks, info.ingress_id), timeout=20)
        status = await loop.run_in_executor(None, encoder.wait, 15)
    finally:
        _, errors = await _stop(encoder)
    ended = _ended(webhooks, info.ingress_id)[0]
    assert ended.state.status == Status.ENDPOINT_ERROR
    assert "unsupported video codec flv (FLV / Sorenson Spark" in ended.state.error and "H.264" in ended.state.error
    listed = (await lkapi.ingress.list_ingress(api.ListIngressRequest(ingress_id=info.ingress_id))).items[0]
    assert (listed.state.status, listed.state.error) == (Status.ENDPOINT_ERROR, ended.state.error)
    assert status != 0 and "unsupported video codec flv" in errors, "the encoder is told why and disconnected"

    # The worker dying mid-stream: the participant leaves, the ingress is ERROR, the encoder is disconnected.
    info = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, room_name=ROOM, participant_identity="crashing"))
    subscriber = await connect(server, "viewer-c", ROOM)
    encoder = _encoder(f"{info.url}/{info.stream_key}")
    try:
        await wait_for_tracks(subscriber, 2)
        await until(lambda: any(e.event == "ingress_started" and e.ingress_info.ingress_id == info.ingress_id
                                for e in webhooks.events))
        pid = int(re.findall(r"worker pid (\d+)", server.log())[-1])
        os.kill(pid, signal.SIGKILL)
        await until(lambda: remote(subscriber, "crashing") is None, timeout=10)
        await until(lambda: _ended(webhooks, info.ingress_id), timeout=10)
        status = await loop.run_in_executor(None, encoder.wait, 15)
    finally:
        await _stop(encoder)
        await subscriber.disconnect()
    state = _ended(webhooks, info.ingress_id)[0].state
    assert state.status == Status.ENDPOINT_ERROR and state.error == "the RTMP worker was killed by signal 9"
    assert status != 0
    assert server.counters().get("rtmp_worker_failed", 0) == 2
    assert not webhooks.errors


async def test_rtmp_without_media_is_an_error(tmp_path, monkeypatch) -> None:
    """An encoder that publishes only timed text: after TERN_RTMP_MEDIA_TIMEOUT the ingress is ENDPOINT_ERROR and the
    encoder is told."""
    monkeypatch.setenv("TERN_RTMP_MEDIA_TIMEOUT", "2")
    server = start_server(tmp_path, config=f"ingress:\n  rtmp_port: {free_port()}\n")
    client = api.LiveKitAPI(server.http, API_KEY, API_SECRET)
    try:
        info = await client.ingress.create_ingress(api.CreateIngressRequest(
            input_type=api.IngressInput.RTMP_INPUT, room_name=ROOM, participant_identity="captions"))
        encoder = _encoder(f"{info.url}/{info.stream_key}", "text")
        try:
            await until(lambda: server.counters().get("rtmp_no_media", 0) == 1, timeout=15)
            status = await asyncio.get_running_loop().run_in_executor(None, encoder.wait, 15)
        finally:
            _, errors = await _stop(encoder)
        state = (await client.ingress.list_ingress(api.ListIngressRequest(ingress_id=info.ingress_id))).items[0].state
        assert state.status == Status.ENDPOINT_ERROR and state.error == "the encoder sent no audio or video in 2 s"
        assert status != 0 and "no audio or video" in errors
    finally:
        await client.aclose()
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
