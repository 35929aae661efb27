"""What users can get wrong, or do on purpose, is refused or dropped and counted; nobody else notices."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request

import pytest
from livekit import api, rtc
from livekit.protocol import rtc as signal
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from media import Publisher, decoded_video, matches_card, wait_for_tracks
from signal_client import SignalClient


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_bad_tokens_get_401_with_a_message_before_the_upgrade(server):
    expired = api.AccessToken("devkey", "secret").with_identity("x").with_ttl(__import__("datetime").timedelta(seconds=-120)) \
        .with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    wrong_secret = api.AccessToken("devkey", "wrong-secret").with_identity("x") \
        .with_grants(api.VideoGrants(room_join=True, room="r")).to_jwt()
    no_join = api.AccessToken("devkey", "secret").with_identity("x").with_grants(api.VideoGrants(room="r")).to_jwt()
    for token in (expired, wrong_secret, no_join, "garbage"):
        with pytest.raises(InvalidStatus) as error:
            await connect(f"{server.url}/rtc", additional_headers={"Authorization": f"Bearer {token}"})
        assert error.value.response.status_code == 401
        assert error.value.response.body, "the refusal says why"
        status, body = http_get(f"{server.http}/rtc/validate", token)
        assert status == 401 and body
    with pytest.raises(InvalidStatus) as error:
        await connect(f"{server.url}/rtc")  # no token at all
    assert error.value.response.status_code == 401
    assert http_get(f"{server.http}/rtc/validate", server.token("x", "r")) == (200, "success")


async def test_v1_without_a_join_request_is_a_400_and_never_a_404(server):
    """/rtc/v1 is served: a client that reached it is told what is wrong, not sent to /rtc (a 404 makes SDKs fall
    back). Only a plain (non-WebSocket) request there gets 404, as from LiveKit."""
    with pytest.raises(InvalidStatus) as error:
        await connect(f"{server.url}/rtc/v1", additional_headers={"Authorization": f"Bearer {server.token('x', 'r')}"})
    assert error.value.response.status_code == 400
    assert http_get(f"{server.http}/rtc/v1/validate", server.token("x", "r")) == (400, "missing join_request")
    assert http_get(f"{server.http}/rtc/v1")[0] == 404


async def test_misbehaving_clients_and_garbage_do_not_disturb_a_live_room(server):
    room = "robust-room"
    publisher_room = rtc.Room()
    await publisher_room.connect(server.url, server.token("pub", room))
    publisher = Publisher(publisher_room)
    subscriber_room = rtc.Room()
    await subscriber_room.connect(server.url, server.token("sub", room))
    try:
        await publisher.start()
        tracks = await wait_for_tracks(subscriber_room, 2)
        assert any(matches_card(f) for f in await decoded_video(tracks["video"], frames=10))
        before = server.counters()

        # A client that sends a malformed offer, then garbage frames, then vanishes mid-handshake.
        gone = asyncio.Event()
        subscriber_room.on("participant_disconnected", lambda p: p.identity == "rogue" and gone.set())
        rogue, join = await SignalClient.join(server.url, server.token("rogue", room))
        assert join.participant.sid.startswith("PA_") and join.ping_interval > 0
        assert join.subscriber_primary and (await rogue.receive_until("offer")).offer.id == 1
        candidates = [(await rogue.receive_until("trickle")).trickle for _ in range(2)]  # UDP, then ICE-TCP
        assert [c.final for c in candidates] == [False, True]
        assert {c.target for c in candidates} == {signal.SignalTarget.SUBSCRIBER}
        assert [json.loads(c.candidateInit) for c in candidates] == [
            {"candidate": f"candidate:1 1 udp 2130706431 127.0.0.1 {server.udp_port} typ host", "sdpMid": "0",
             "sdpMLineIndex": 0},
            {"candidate": f"candidate:2 1 tcp 1671430143 127.0.0.1 {server.tcp_port} typ host tcptype passive",
             "sdpMid": "0", "sdpMLineIndex": 0}]
        await rogue.send(signal.SignalRequest(offer=signal.SessionDescription(type="offer", sdp="v=0\r\nm=garbage", id=1)))
        await rogue.send(signal.SignalRequest(answer=signal.SessionDescription(type="answer", sdp="v=0\r\n", id=99)))
        await rogue.connection.send(os.urandom(64))
        await rogue.connection.send("text frame")
        await rogue.send(signal.SignalRequest(ping_req=signal.Ping(timestamp=1234)))
        assert (await rogue.receive_until("pong_resp")).pong_resp.last_ping_timestamp == 1234
        rogue.connection.transport.abort()  # no leave, no close frame
        await asyncio.wait_for(gone.wait(), 10)

        # Garbage on the media port: random bytes and STUN/DTLS/RTP look-alikes from unknown sources.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for first_byte in (0, 1, 22, 23, 128, 144, 200, 255):
                for _ in range(50):
                    attacker.sendto(bytes([first_byte]) + os.urandom(120), ("127.0.0.1", server.udp_port))
            attacker.sendto(b"", ("127.0.0.1", server.udp_port))

        frames = await decoded_video(tracks["video"], frames=30)
        assert any(matches_card(f) for f in frames[-10:]), "media keeps flowing"
        after = server.counters()
        assert after["sdp_malformed"] >= before.get("sdp_malformed", 0) + 1  # the bad offer
        assert after["sdp_stale_answer"] >= before.get("sdp_stale_answer", 0) + 1  # the answer to no offer
        assert after["signal_malformed"] > before.get("signal_malformed", 0)
        dropped = sum(after[k] - before.get(k, 0) for k in after if k.startswith("drop_") or k.startswith("stun_"))
        assert dropped >= 350
        assert after["forwarded"] > before["forwarded"]
    finally:
        await publisher.stop()
        await publisher_room.disconnect()
        await subscriber_room.disconnect()
