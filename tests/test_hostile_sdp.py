"""Hostile offers against a real server: each is refused within 100 ms (a RequestResponse naming the limit, or a
WebSocket close 1009 for a message over the cap), the third refusal closes the session with a leave, and
meanwhile another client's pings answer within 100 ms and a subscriber keeps decoding video."""
from __future__ import annotations

import asyncio
import time

from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from websockets.exceptions import ConnectionClosed

from media import Publisher, decoded_video, wait_for_tracks
from signal_client import SignalClient

ROOM = "hostile-sdp"
_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
_VIDEO = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n"

HOSTILE_OFFERS = {
    # ~1.1 MB: over the signal message cap, the connection is closed with 1009
    "50,000 a=ssrc lines": _HEAD + _VIDEO + "".join(f"a=ssrc:{i} cname:x\r\n" for i in range(50_000)),
    "5,000 m-lines": _HEAD + "".join(f"m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{i}\r\n" for i in range(5_000)),
    "20,000 rids": _HEAD + _VIDEO + "a=simulcast:send " + ";".join(f"r{i}" for i in range(20_000)) + "\r\n",
    "10,000 a=ssrc lines": _HEAD + _VIDEO + "".join(f"a=ssrc:{i} c:x\r\n" for i in range(10_000)),
    "10,000 a=rid lines": _HEAD + _VIDEO + "".join(f"a=rid:{i} send\r\n" for i in range(10_000)),
}
REFUSAL_DEADLINE = 0.1
PING_DEADLINE = 0.1
ATTACK_SECONDS = 3.0


async def _pinger(client: SignalClient, rtts: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        await client.send(signal.SignalRequest(ping_req=signal.Ping(timestamp=int(sent * 1000))))
        await client.receive_until("pong_resp", timeout=5)
        rtts.append(time.monotonic() - sent)
        await asyncio.sleep(0.02)


async def _frame_gaps(track: rtc.RemoteTrack, gaps: list[float], stop: asyncio.Event) -> None:
    stream = rtc.VideoStream(track)
    last = time.monotonic()
    try:
        async for _ in stream:
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if stop.is_set():
                return
    finally:
        await stream.aclose()


async def _offer(client: SignalClient, offer_id: int, text: str) -> tuple[str, float, signal.SignalResponse | None]:
    """Sends one offer; returns what came back ("refused", "leave", "closed 1009" or "answer") and how fast."""
    sent = time.monotonic()
    try:
        await client.send(signal.SignalRequest(offer=signal.SessionDescription(type="offer", sdp=text, id=offer_id)))
        while True:
            response = await client.receive(timeout=5)
            kind = response.WhichOneof("message")
            if kind == "request_response" and response.request_response.request_id == offer_id:
                return "refused", time.monotonic() - sent, response
            if kind in ("leave", "answer"):
                return kind, time.monotonic() - sent, response
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        return f"closed {code}", time.monotonic() - sent, None


async def test_hostile_offers_are_refused_while_others_keep_going(server):
    publisher_room, subscriber_room = rtc.Room(), rtc.Room()
    await publisher_room.connect(server.url, server.token("pub", ROOM))
    publisher = Publisher(publisher_room)
    await publisher.start()
    await subscriber_room.connect(server.url, server.token("sub", ROOM))
    video = (await wait_for_tracks(subscriber_room, 2))["video"]
    assert len(await decoded_video(video, frames=5)) == 5
    bystander, _ = await SignalClient.join(server.url, server.token("bystander", ROOM))

    stop = asyncio.Event()
    rtts: list[float] = []
    gaps: list[float] = []
    background = [asyncio.create_task(_pinger(bystander, rtts, stop)),
                  asyncio.create_task(_frame_gaps(video, gaps, stop))]
    await asyncio.sleep(0.5)
    outcomes: list[tuple[str, str, float, signal.SignalResponse | None]] = []
    attacker: SignalClient | None = None
    rounds = 0
    deadline = time.monotonic() + ATTACK_SECONDS
    try:
        while time.monotonic() < deadline and rounds < 100:
            rounds += 1
            for index, (name, text) in enumerate(HOSTILE_OFFERS.items()):
                if attacker is None:
                    attacker, _ = await SignalClient.join(server.url, server.token(f"attacker-{rounds}-{index}", ROOM))
                outcome, seconds, response = await _offer(attacker, index + 1, text)
                outcomes.append((name, outcome, seconds, response))
                if outcome != "refused":
                    await attacker.connection.close()
                    attacker = None
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*background, return_exceptions=True), 10)
        if attacker is not None:
            await attacker.connection.close()

    for name, outcome, seconds, response in outcomes:
        assert outcome in ("refused", "leave", "closed 1009"), (name, outcome)
        assert seconds < REFUSAL_DEADLINE, (name, outcome, seconds)
        if name == "50,000 a=ssrc lines":
            assert outcome == "closed 1009"
        elif outcome == "refused":
            assert response.request_response.reason == signal.RequestResponse.Reason.LIMIT_EXCEEDED
            assert "more than" in response.request_response.message
        elif outcome == "leave":
            assert response.leave.reason == models.DisconnectReason.STATE_MISMATCH
    assert sum(outcome == "leave" for _, outcome, _, _ in outcomes) >= rounds, outcomes  # every third refusal

    assert len(rtts) > 20 and max(rtts) < PING_DEADLINE, max(rtts)
    assert len(gaps) > 15 * ATTACK_SECONDS and max(gaps) < 0.5, max(gaps)
    counters = server.counters()
    assert counters["signal_message_too_big"] >= rounds
    assert counters["sdp_over_limit"] >= 4 * rounds and counters["sdp_refusals_closed"] >= rounds
    print(f"{rounds} rounds, refusals max {max(o[2] for o in outcomes) * 1000:.1f} ms, ping max {max(rtts) * 1000:.1f} ms "
          f"({len(rtts)}), frame gap max {max(gaps) * 1000:.0f} ms ({len(gaps)} frames)")

    await publisher.stop()
    await bystander.connection.close()
    await publisher_room.disconnect()
    await subscriber_room.disconnect()
