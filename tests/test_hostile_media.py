"""Hostile media-plane clients against a real server process: STUN floods, misdirected ICE, SSRC floods, consent.

A LiveKit SDK publisher and subscriber (or the load clients, where a test needs the raw sockets and SRTP keys of a
peer connection) stream while Python clients attack; the tests assert what the honest users see.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import subprocess
import sys
import time

import pytest
from aioice import stun
from livekit import rtc
from livekit.protocol import rtc as signal

from conftest import API_KEY, API_SECRET, start_server, stop_server
from clients import connect, until
from media import Publisher, decoded_video, wait_for_tracks
from signal_client import SignalClient
from signaling.clients import loadtest
from signaling.peer import sdp
from signaling.peer.dtls import srtp_sessions

FLOODER = """
import socket, sys, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
datagrams = [bytes.fromhex(line) for line in sys.stdin.read().split()]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
start, sent = time.monotonic(), 0
while sent < rate * seconds:
    due = int((time.monotonic() - start) * rate) + 1
    while sent < min(due, rate * seconds):
        try:
            sock.sendto(datagrams[sent % len(datagrams)], (host, port))
        except OSError:
            pass
        sent += 1
    time.sleep(0.002)
print(sent)
"""


def stun_header(message_type: int, body: bytes) -> bytes:
    return struct.pack("!HHI", message_type, len(body), 0x2112A442) + os.urandom(12) + body


def junk_stun(ufrag: str | None = None) -> list[bytes]:
    """2 KB cookie-valid Binding requests with 500 attributes, bare 20-byte headers, and (with `ufrag`) requests to
    a live ufrag with a MESSAGE-INTEGRITY that cannot verify."""
    if ufrag is None:
        return [stun_header(1, struct.pack("!HH", 0x0025, 0) * 500), stun_header(1, b"")]
    username = f"{ufrag}:attacker".encode() + b"\x00" * (-len(f"{ufrag}:attacker") % 4)
    body = struct.pack("!HH", 6, len(f"{ufrag}:attacker")) + username + struct.pack("!HH", 8, 20) + os.urandom(20)
    return [stun_header(1, body) for _ in range(16)]


async def flood(server, datagrams: list[bytes], rate: int, seconds: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOODER, "127.0.0.1", str(server.udp_port), str(rate), str(seconds),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write("\n".join(d.hex() for d in datagrams).encode())
    process.stdin.close()
    return process


async def ping_rtts(client: SignalClient, count: int, interval: float) -> list[float]:
    rtts = []
    for i in range(count):
        started = time.monotonic()
        await client.send(signal.SignalRequest(ping_req=signal.Ping(timestamp=i + 1)))
        while True:
            response = await client.receive_until("pong_resp", timeout=5)
            if response.pong_resp.last_ping_timestamp == i + 1:
                break
        rtts.append(time.monotonic() - started)
        await asyncio.sleep(interval)
    return rtts


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def streaming_room(server, room: str):
    """A LiveKit SDK publisher (camera + microphone) and subscriber; returns (publisher, subscriber, video track)."""
    publisher_room = await connect(server, "alice", room)
    subscriber_room = await connect(server, "bob", room)
    publisher = Publisher(publisher_room)
    await publisher.start()
    video = (await wait_for_tracks(subscriber_room, 2))["video"]
    await decoded_video(video, frames=5)
    return publisher_room, subscriber_room, publisher, video


async def test_stun_floods_leave_media_and_signalling_alone(server) -> None:
    publisher_room, subscriber_room, publisher, video = await streaming_room(server, "stun-flood")
    pinger, _ = await SignalClient.join(server.url, server.token("pinger", "stun-flood"))
    attacker, join = await SignalClient.join(server.url, server.token("attacker", "stun-flood"))
    try:
        offer = await attacker.receive_until("offer")
        own_ufrag = next(s.ice_ufrag for s in sdp.parse(offer.offer.sdp).sections if s.ice_ufrag)
        before = server.counters()
        # An unknown source: 20,000 datagrams in one second, while the stream runs and a client pings.
        process = await flood(server, junk_stun(), 20_000, 1.0)
        frames, rtts = await asyncio.gather(decoded_video(video, frames=20, timeout=5), ping_rtts(pinger, 8, 0.1))
        assert int((await process.communicate())[0]) == 20_000
        assert len(frames) == 20
        assert max(rtts) < 0.1, rtts
        # A participant flooding Binding requests to its own ufrag (integrity that cannot verify).
        process = await flood(server, junk_stun(own_ufrag), 10_000, 1.0)
        frames, rtts = await asyncio.gather(decoded_video(video, frames=20, timeout=5), ping_rtts(pinger, 8, 0.1))
        await process.communicate()
        assert len(frames) == 20
        assert max(rtts) < 0.1, rtts
        await asyncio.sleep(0.2)
        after = server.counters()

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert delta("drop_stun_malformed") + delta("drop_stun_no_username") >= 19_000  # some may die in the kernel
        assert delta("drop_stun_rate_limited") >= 8_000
        assert delta("stun_unauthenticated") <= 300  # the bucket's burst and refill: all Python had to parse
    finally:
        await publisher.stop()
        await attacker.connection.close()
        await pinger.connection.close()
        await publisher_room.disconnect()
        await subscriber_room.disconnect()


# ---- the load clients: raw sockets and SRTP keys of real peer connections

async def load_room(server, room: str) -> tuple[loadtest.LoadClients, loadtest.LoadParticipant,
                                                loadtest.LoadParticipant]:
    """A load publisher (video, SSRC PUBLISHER_SSRC) and subscriber, without transport-cc: these tests are about
    the engine's limits, and a bandwidth estimate would rightly pause video for a subscriber that floods its own
    link with retransmissions (and, on a loaded machine, for load clients whose feedback runs late)."""
    clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET, transport_cc=False)
    clients._ssrcs = itertools.count(PUBLISHER_SSRC)
    [publisher] = await clients.add(room, 1, publish=loadtest.MediaPlan(video=True), subscribe=False)
    [subscriber] = await clients.add(room, 1, subscribe=True)
    await clients.wait_for_media([subscriber], 10)
    assert not clients.failed and subscriber.first_media_ns(), clients.failed
    return clients, publisher, subscriber


PUBLISHER_SSRC = 0x1000
# loadgen numbers a stream from this (signaling/clients/loadgen.pyx); a DownTrack keeps the first layer's numbers
FIRST_SEQ = ((PUBLISHER_SSRC * 2654435761) & 0xFFFFFFFF) >> 16


def received(clients: loadtest.LoadClients, participant: loadtest.LoadParticipant) -> int:
    return clients.load_receiver.socket_stats(participant.load_receiver_index)["packets"]


async def still_receives(clients: loadtest.LoadClients, participant: loadtest.LoadParticipant) -> bool:
    count = received(clients, participant)
    await asyncio.sleep(0.5)
    return received(clients, participant) > count + 20  # 150 packets/s of video


async def test_misdirected_and_replayed_checks_do_not_move_media(server) -> None:
    clients, publisher, victim = await load_room(server, "misdirect")
    [attacker] = await clients.add("misdirect", 1, subscribe=True)
    await clients.wait_for_media([attacker], 10)
    elsewhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    elsewhere.bind(("127.0.0.1", 0))
    elsewhere.setblocking(False)
    try:
        before = server.counters()
        # The attacker's own, valid nomination, sent from the victim's bound address (a spoofed source).
        victim.subscriber_path.sock.send(attacker.subscriber_path.binding_request(nominate=True))
        # The victim's own nomination, captured and replayed from elsewhere.
        captured = victim.subscriber_path.binding_request(nominate=True)
        victim.subscriber_path.sock.send(captured)
        await asyncio.sleep(0.2)
        elsewhere.sendto(captured, (victim.subscriber_path.sock.getpeername()))
        await asyncio.sleep(0.3)
        after = server.counters()
        assert after.get("ice_address_taken", 0) - before.get("ice_address_taken", 0) == 1
        assert after.get("stun_replayed", 0) - before.get("stun_replayed", 0) == 1
        assert await still_receives(clients, victim)
        assert await still_receives(clients, attacker)
        with pytest.raises(BlockingIOError):
            elsewhere.recv(2048)  # neither a STUN response nor media went to the replaying address
    finally:
        elsewhere.close()
        await clients.close()


async def test_fifty_thousand_ssrcs_are_dropped_before_srtp(server) -> None:
    clients, publisher, subscriber = await load_room(server, "ssrcs")
    try:
        rss_before = rss_kib(server.process.pid)
        before = server.counters()
        sock = publisher.publisher_path.sock
        for i, ssrc in enumerate(range(0x50000000, 0x50000000 + 50_000)):
            if i % 2000 == 0:
                # the publisher's keys: it authenticates. A fresh session per 2,000 SSRCs: libsrtp looks a
                # stream up in a list, so one session protecting 50,000 SSRCs spends 20 s in the test itself.
                tx = srtp_sessions(publisher.publisher_path.srtp_keys)[1]
                await asyncio.sleep(0.01)  # ~25,000 packets/s: the kernel queue keeps them
            packet = struct.pack("!BBHII", 0x80, 96, 1, 0, ssrc) + b"\x10\x80\x80\x01" + bytes(100)
            sock.send(tx.protect(packet))
        await asyncio.sleep(0.5)
        after = server.counters()
        assert after["drop_unadmitted_ssrc"] - before.get("drop_unadmitted_ssrc", 0) >= 45_000
        assert rss_kib(server.process.pid) - rss_before < 50 * 1024
        assert await still_receives(clients, subscriber)
        [late] = await clients.add("ssrcs", 1, subscribe=True)  # and a newcomer still gets the stream
        await clients.wait_for_media([late], 10)
        assert late.first_media_ns()
    finally:
        await clients.close()


async def test_media_stops_when_consent_expires(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TERN_ICE_CONSENT_TIMEOUT", "7")  # the server checks every 4-6 s
    server = start_server(tmp_path)
    try:
        sdk = await connect(server, "sdk", "consent-sdk")  # libwebrtc, a full agent: it answers our checks
        clients, publisher, subscriber = await load_room(server, "consent")
        [both] = await clients.add("consent", 1, publish=loadtest.MediaPlan(audio=True), subscribe=True)
        await clients.wait_for_media([both], 10)
        subscriber.subscriber_path._consent.cancel()  # the subscriber's side goes quiet; the publisher keeps answering
        both.subscriber_path._consent.cancel()  # and a client vanishes: both its transports lapse together
        both.publisher_path._consent.cancel()
        assert await still_receives(clients, subscriber)
        await until(lambda: server.counters().get("ice_consent_expired", 0) >= 2, timeout=14)
        await asyncio.sleep(0.3)
        assert not await still_receives(clients, subscriber)
        await until(lambda: subscriber.error is not None, timeout=3)
        assert "leave" in subscriber.error  # the server removed the participant and told it why
        await asyncio.sleep(1.5)
        counters = server.counters()
        assert counters["ice_consent_expired"] == 2  # the publisher and the SDK kept their consent
        assert counters["ice_consent_renewed"] >= 2  # the SDK was connected for over 7 s: it answered
        assert sdk.connection_state == rtc.ConnectionState.CONN_CONNECTED
        await clients.close()
        await sdk.disconnect()
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def nack_window(sender: int, media: int, last: int) -> bytes:
    """A NACK (RFC 4585 generic) for the 272 sequence numbers up to `last`: 16 FCIs with every BLP bit set."""
    first = (last - 271) & 0xFFFF
    fcis = b"".join(struct.pack("!HH", (first + 17 * i) & 0xFFFF, 0xFFFF) for i in range(16))
    return struct.pack("!BBHII", 0x81, 205, 2 + len(fcis) // 4, sender, media) + fcis


async def test_nack_floods_stay_within_the_retransmission_budget(server) -> None:
    clients, publisher, subscriber = await load_room(server, "nacks")
    try:
        stats = clients.load_receiver.socket_stats(subscriber.load_receiver_index)
        media = max(stats["ssrcs"], key=stats["ssrcs"].get)  # the DownTrack's SSRC
        tx = srtp_sessions(subscriber.subscriber_path.srtp_keys)[1]
        before = server.counters()
        started = time.monotonic()
        for _ in range(200):  # 100 NACKs per second for 2 s, each over the whole recent history
            last = FIRST_SEQ + clients.load_sender.stats()["packets"]  # about the last number sent
            subscriber.subscriber_path.sock.send(tx.protect_rtcp(nack_window(0x5EED, media, last)))
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.1)
        after = server.counters()

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        retransmitted = delta("retransmitted_bytes")
        forwarded = delta("bytes_out") - retransmitted  # the room's only subscriber: its media (and some RTCP)
        assert delta("nacked_packets") >= 200 * 256
        assert retransmitted > 0 and delta("drop_rtx_budget") > 0
        # engine/feedback.pyx: half the forwarded bytes, or 500 kbit/s, plus a 128 KiB burst
        assert retransmitted <= 0.5 * forwarded + 62_500 * elapsed + 131_072, (retransmitted, forwarded)
        assert await still_receives(clients, subscriber)
    finally:
        await clients.close()


async def test_flooding_participants_cannot_starve_consent_or_joins(server) -> None:
    """Ten participants each send junk DTLS from their bound address at their bucket's rate (1,000/s each, twice
    the engine-wide budget together) plus Binding requests to their ufrags from elsewhere: the victim keeps its
    media and answers our consent checks, and a newcomer still completes ICE + DTLS."""
    clients, publisher, victim = await load_room(server, "fair")
    flooders = await clients.add("fair", 10, subscribe=True)
    await clients.wait_for_media(flooders, 15)
    junk_dtls = b"\x17\xfe\xfd" + os.urandom(80)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.setblocking(False)
    requests = [junk_stun(flooder.subscriber_path._section.ice_ufrag)[0] for flooder in flooders]
    stop = asyncio.Event()

    async def flood_all() -> None:
        while not stop.is_set():
            for flooder, request in zip(flooders, requests):
                for _ in range(10):
                    flooder.subscriber_path.sock.send(junk_dtls)
                stranger.sendto(request, ("127.0.0.1", server.udp_port))
            await asyncio.sleep(0.01)

    try:
        before = server.counters()
        flooding = asyncio.create_task(flood_all())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        [newcomer] = await clients.add("fair", 1, subscribe=True)
        await clients.wait_for_media([newcomer], 10)
        joined = time.monotonic() - started
        assert newcomer.first_media_ns() and not clients.failed, clients.failed
        await asyncio.sleep(max(0.0, 6.5 - joined))  # a consent check of every transport falls in the flood
        assert await still_receives(clients, victim)
        stop.set()
        await flooding
        after = server.counters()

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert delta("drop_event_budget") > 0  # the flood did overflow the shared budget
        assert delta("ice_consent_renewed") >= 12  # every flooder, the victim and the publisher answered a check
        assert delta("ice_consent_expired") == 0
        assert joined < 5, joined
    finally:
        stop.set()
        stranger.close()
        await clients.close()


async def test_an_ssrc_per_packet_is_rate_limited(server) -> None:
    """The publisher signs packets of its own video mid with a new SSRC each: each would take the layer over (a
    libsrtp stream, a layer reset, an event to Python); past a few per second they are dropped and counted."""
    clients, publisher, subscriber = await load_room(server, "rebind")
    try:
        before = server.counters()
        tx = srtp_sessions(publisher.publisher_path.srtp_keys)[1]
        mid = b"\xbe\xde\x00\x01" + bytes([0x10, ord("0")]) + b"\x00\x00"  # one-byte extension: id 1 (mid) = "0"
        for i in range(5000):
            packet = struct.pack("!BBHII", 0x90, 96, i, 0, 0x60000000 + i) + mid + b"\x10\x80\x80\x01" + bytes(100)
            publisher.publisher_path.sock.send(tx.protect(packet))
            if i % 500 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        after = server.counters()

        def delta(name: str) -> float:
            return after.get(name, 0) - before.get(name, 0)

        assert delta("drop_ssrc_rebind_rate") >= 5000 - 10
        assert delta("srtp_streams_removed") <= 10
        pinger, _ = await SignalClient.join(server.url, server.token("pinger", "rebind"))
        try:
            assert max(await ping_rtts(pinger, 3, 0.05)) < 0.1
        finally:
            await pinger.connection.close()
    finally:
        await clients.close()
