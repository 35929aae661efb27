"""ICE-TCP: the RFC 4571 framer (properties), the engine's TCP connections against real sockets (media both ways,
a slow reader), and a real server's listener against hostile and well-behaved raw TCP clients; the candidates."""
from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
import time

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import rtc

import engine
from conftest import start_server, stop_server
from engine.framer import StreamFramer
from signaling.peer import sdp
from signal_client import SignalClient
from test_engine import (AUDIO_SSRC, DOWN_AUDIO_SSRC, OPUS_PT, SUB_OPUS_PT, Peer, binding_request, needs_ipv6, parse,
                         rtcp_packets, rtp)

MAX_FRAME = 2048               # engine RECV_BUF: the longest frame a connection may carry
FRAMER_BUFFER = 8192           # engine/tcpframer.pxd
SEND_QUEUE_MAX = 262144        # engine/state.pxd TCP_SEND_QUEUE_MAX
MAX_TCP_PENDING = 256          # engine/state.pxd
MAX_TCP_PER_TRANSPORT = 4      # engine/state.pxd
CLAIM_TIMEOUT = 5.0            # engine/tcpmux.pyx TCP_CLAIM_TIMEOUT_US
SLOW_READER = 5.0              # engine/tcpmux.pyx TCP_SLOW_READER_US
SWEEP = 1.0                    # engine/tcpmux.pyx TCP_SWEEP_US


def framed(*packets: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(packet)) + packet for packet in packets)


def model(stream: bytes, max_frame: int = MAX_FRAME) -> tuple[list[bytes], int]:
    """RFC 4571 as the spec reads: (whole frames, oversized frames begun) of a complete stream."""
    frames, oversized, pos = [], 0, 0
    while pos + 2 <= len(stream):
        size = struct.unpack_from("!H", stream, pos)[0]
        if size > max_frame:
            oversized += 1
        elif pos + 2 + size <= len(stream):
            frames.append(stream[pos + 2:pos + 2 + size])
        pos += 2 + size
    return frames, oversized


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# ---------------------------------------------------------------- the framer (engine/tcpframer.pxd)

packets = st.lists(st.binary(max_size=MAX_FRAME), max_size=30)


@settings(max_examples=300, deadline=None)
@given(packets, st.lists(st.integers(min_value=0), max_size=40))
def test_framer_gives_the_same_frames_however_the_stream_is_split(frames: list[bytes], cuts: list[int]) -> None:
    stream = framed(*frames)
    split, whole = StreamFramer(), StreamFramer()
    got = [frame for chunk in chunks(stream, cuts) for frame in split.feed(chunk)]
    assert got == frames == whole.feed(stream)  # split anywhere, or coalesced into one read
    assert split.buffered == 0 and split.oversized == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40_000), st.lists(st.integers(min_value=0), max_size=60))
def test_framer_on_garbage_matches_the_spec_and_stays_bounded(stream: bytes, cuts: list[int]) -> None:
    framer = StreamFramer()
    got = []
    for chunk in chunks(stream, cuts):
        got += framer.feed(chunk)
        assert framer.footprint <= FRAMER_BUFFER  # bounded state whatever arrives
        assert framer.buffered <= 2 + MAX_FRAME  # at most one partial frame left
    frames, oversized = model(stream)
    assert got == frames and framer.oversized == oversized
    assert all(len(frame) <= MAX_FRAME for frame in got)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=MAX_FRAME), min_size=1, max_size=200), st.integers(1, 7))
def test_framer_work_is_linear_in_the_input(sizes: list[int], step: int) -> None:
    # Byte-sized reads are the worst case for compaction: every byte is moved at most once on average.
    stream = framed(*(bytes(size) for size in sizes))
    framer = StreamFramer()
    count = 0
    for offset in range(0, len(stream), step):
        count += len(framer.feed(stream[offset:offset + step]))
    assert count == len(sizes)
    assert framer.moved <= len(stream)


def test_framer_skips_an_oversized_frame_and_stays_in_step() -> None:
    framer = StreamFramer()
    stream = framed(b"a") + struct.pack("!H", MAX_FRAME + 1) + bytes(MAX_FRAME + 1) + framed(b"b", b"")
    assert [frame for byte in range(len(stream)) for frame in framer.feed(stream[byte:byte + 1])] == [b"a", b"b", b""]
    assert framer.oversized == 1 and framer.buffered == 0


# ---------------------------------------------------------------- the engine's connections (in-process, real sockets)

class TcpPeer(Peer):
    """A client whose transport's path is an ICE-TCP connection: it connects, sends a Binding request to its
    ufrag (the engine lets it up as EV_STUN naming the connection), and the test claims and binds the connection
    as the control plane would after checking MESSAGE-INTEGRITY."""

    def __init__(self, eng: engine.Engine, events: list[tuple], receive_buffer: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(eng, host)
        self.events = events
        self.stream = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.stream.connect((host, eng.tcp_port))
        self.stream.setblocking(False)
        self.received = bytearray()
        self.handle = 0

    async def claim(self) -> None:
        self.stream.send(framed(binding_request(self.ufrag)))
        for _ in range(100):
            await asyncio.sleep(0.01)
            mine = [e for e in self.events if e[0] == engine.EV_STUN and e[1] == self.transport and len(e) == 6]
            if mine:
                _, _, _, host, port, self.handle = mine[0]
                assert (host, port) == self.stream.getsockname()[:2]
                break
        assert self.handle, "the engine raised no STUN event for the connection"
        assert self.engine.tcp_claim(self.handle, self.transport)
        assert self.engine.bind_transport(self.transport, host, port, self.handle)

    def send_raw(self, data: bytes) -> None:
        self.stream.send(framed(data))

    async def collect(self, delay: float = 0.06) -> None:
        await asyncio.sleep(delay)
        while True:
            try:
                data = self.stream.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.received += data
        while len(self.received) >= 2 and len(self.received) >= 2 + struct.unpack_from("!H", self.received)[0]:
            size = struct.unpack_from("!H", self.received)[0]
            packet = bytes(self.received[2:2 + size])
            del self.received[:2 + size]
            if packet[0] <= 3:
                continue  # STUN
            if 192 <= packet[1] <= 223:
                self.rtcp.extend(rtcp_packets(self.rx.unprotect_rtcp(packet)))
            else:
                self.rtp.append(parse(self.rx.unprotect(packet)))

    def close(self) -> None:
        super().close()
        self.stream.close()


@pytest.fixture
async def tcp_engine():
    events: list[tuple] = []
    eng = engine.Engine("127.0.0.1", 0, events.append, tcp_port=0)
    eng.attach(asyncio.get_running_loop())
    peers: list[Peer] = []
    yield eng, events, peers
    eng.close()
    for peer in peers:
        peer.close()


async def test_media_flows_over_tcp_connections_both_ways(tcp_engine) -> None:
    eng, events, peers = tcp_engine
    publisher, subscriber, udp_subscriber = TcpPeer(eng, events), TcpPeer(eng, events), Peer(eng)
    peers += [publisher, subscriber, udp_subscriber]
    await publisher.claim()
    await subscriber.claim()
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [], [],
                                {"urn:ietf:params:rtp-hdrext:sdes:mid": 1})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    eng.add_downtrack(receiver, udp_subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    # Coalesced into one TCP write, as a stream may deliver them.
    publisher.stream.send(b"".join(framed(publisher.tx.protect(rtp(OPUS_PT, 100 + i, 960 * i, AUDIO_SSRC, b"opus%d" % i,
                                                                  [(1, b"0")]))) for i in range(20)))
    await asyncio.gather(subscriber.collect(0.2), udp_subscriber.collect(0.2))
    for peer in (subscriber, udp_subscriber):
        got = peer.take_rtp()
        assert [p.payload for p in got] == [b"opus%d" % i for i in range(20)]
        assert {p.ssrc for p in got} == {DOWN_AUDIO_SSRC}
    eng.send_to(bytes(70_000), "127.0.0.1", 0, subscriber.handle)  # longer than a frame's length can say: refused
    stats = eng.stats()
    assert stats["drop_too_large"] == 1 and eng.tcp_queued(subscriber.handle) == 0
    assert stats["tcp_accepted"] == 2 and stats["tcp_claimed"] == 2
    assert stats["drop_tcp_queue_full"] == stats["drop_tcp_closed"] == 0
    # A claimed connection is its transport's: another transport cannot take it over.
    assert not eng.tcp_claim(publisher.handle, subscriber.transport)
    # The transport goes: so do its connections.
    eng.remove_transport(subscriber.transport)
    await asyncio.sleep(0.05)
    assert subscriber.stream.recv(100) == b""
    assert eng.tcp_queued(subscriber.handle) is None and eng.stats()["tcp_closed"] == 1
    assert not eng.bind_transport(publisher.transport, "127.0.0.1", 1, subscriber.handle)  # a gone connection
    assert eng.transport_at("127.0.0.1", 1, subscriber.handle) is None


@needs_ipv6
async def test_a_dual_stack_listener_carries_ipv6_and_ipv4_connections() -> None:
    events: list[tuple] = []
    eng = engine.Engine("::", 0, events.append, tcp_port=0)
    eng.attach(asyncio.get_running_loop())
    publisher, subscriber = TcpPeer(eng, events, host="::1"), TcpPeer(eng, events, host="127.0.0.1")
    try:
        await publisher.claim()  # events name the IPv6 peer as it is, the IPv4 one without its ::ffff: mapping
        await subscriber.claim()
        receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [],
                                    {})
        eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
        publisher.stream.send(b"".join(framed(publisher.tx.protect(rtp(OPUS_PT, 10 + i, 960 * i, AUDIO_SSRC,
                                                                       b"v6-%d" % i))) for i in range(5)))
        await subscriber.collect(0.2)
        assert [p.payload for p in subscriber.take_rtp()] == [b"v6-%d" % i for i in range(5)]
        assert eng.stats()["tcp_claimed"] == 2
    finally:
        eng.close()
        publisher.close()
        subscriber.close()


async def test_a_slow_reader_is_bounded_dropped_and_then_closed(tcp_engine) -> None:
    eng, events, peers = tcp_engine
    reader = TcpPeer(eng, events, receive_buffer=4096)  # and it never reads
    peers.append(reader)
    await reader.claim()
    packet = bytes(1200)
    for _ in range(1000):  # 1.2 MB: far more than the kernel buffers and the queue hold
        eng.send_to(packet, "127.0.0.1", 0, reader.handle)
    stats = eng.stats()
    assert 0 < eng.tcp_queued(reader.handle) <= SEND_QUEUE_MAX
    assert stats["drop_tcp_queue_full"] > 0
    dropped = stats["drop_tcp_queue_full"]
    # Still full SLOW_READER seconds later: closed and counted; the queue and its memory go with it.
    deadline = time.monotonic() + SLOW_READER + 2 * SWEEP + 1
    while eng.tcp_queued(reader.handle) is not None and time.monotonic() < deadline:
        eng.send_to(packet, "127.0.0.1", 0, reader.handle)
        await asyncio.sleep(0.1)
    assert eng.tcp_queued(reader.handle) is None
    stats = eng.stats()
    assert stats["tcp_closed_slow_reader"] == 1 and stats["drop_tcp_queue_full"] > dropped
    eng.send_to(packet, "127.0.0.1", 0, reader.handle)
    assert eng.stats()["drop_tcp_closed"] >= 1
    # The client gets what was in the kernel's buffers, then the end of the stream.
    total = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = reader.stream.recv(65536)
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        if not data:
            break
        total += len(data)
    else:
        pytest.fail("the slow reader's connection never ended")
    assert total > 0


# ---------------------------------------------------------------- a real server's listener

def check(ufrag: str, pwd: str, transaction_id: bytes | None = None) -> bytes:
    """A client's connectivity check to the server's ufrag, signed with `pwd`."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=transaction_id or secrets.token_bytes(12),
                           attributes={"USERNAME": f"{ufrag}:client", "PRIORITY": 1, "ICE-CONTROLLING": 1})
    message.add_message_integrity(pwd.encode())
    return bytes(message)


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=5)
    sock.settimeout(8)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ends the stream (read until it does, or until the socket's timeout)."""
    try:
        while data := sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def server_credentials(server, room: str) -> tuple[SignalClient, str, str]:
    """A participant's subscriber transport's ufrag and pwd, from the offer the server sends it."""
    client, _ = await SignalClient.join(server.url, server.token(f"p-{secrets.token_hex(3)}", room))
    offer = await client.receive_until("offer")
    section = next(s for s in sdp.parse(offer.offer.sdp).sections if s.ice_ufrag)
    return client, section.ice_ufrag, section.ice_pwd


def delta(before: dict, after: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


async def test_first_frame_must_be_an_authenticated_binding_request(server) -> None:
    client, ufrag, pwd = await server_credentials(server, "tcp-first-frame")
    before = server.counters()
    hostile = {
        "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # reads as an 18245-byte frame: oversized
        "not STUN": framed(b"\x16\xfe\xfd" + bytes(40)),  # a DTLS record before any check
        "unknown ufrag": framed(check("nobody", pwd)),
        "bad integrity": framed(check(ufrag, "not-the-password-at-all")),
    }
    for name, data in hostile.items():
        with connect(server) as sock:
            sock.sendall(data)
            assert await asyncio.to_thread(closed_by_server, sock), name
    # The right credentials: answered over the connection (a framed, signed success response), which stays open.
    good = connect(server)
    request = check(ufrag, pwd)
    good.sendall(framed(request))
    header = good.recv(2, socket.MSG_WAITALL)
    response = stun.parse_message(good.recv(struct.unpack("!H", header)[0], socket.MSG_WAITALL))
    assert response.message_class == stun.Class.RESPONSE and response.transaction_id == request[8:20]
    assert response.attributes["XOR-MAPPED-ADDRESS"] == good.getsockname()
    assert response.check_message_integrity(pwd.encode())
    # A transport takes at most MAX_TCP_PER_TRANSPORT connections.
    extra = [connect(server) for _ in range(MAX_TCP_PER_TRANSPORT)]
    for sock in extra:
        sock.sendall(framed(check(ufrag, pwd)))
        sock.settimeout(1)  # the claimed ones are answered and stay open
    assert sum(await asyncio.gather(*(asyncio.to_thread(closed_by_server, sock) for sock in extra))) == 1
    await asyncio.sleep(0.2)
    after = server.counters()
    assert delta(before, after, "tcp_closed_invalid") == 3
    assert delta(before, after, "tcp_closed_unauthenticated") == 1
    assert delta(before, after, "tcp_claimed") == MAX_TCP_PER_TRANSPORT
    assert delta(before, after, "tcp_closed_limit") == 1
    for sock in [good, *extra]:
        sock.close()
    await client.connection.close()


async def test_half_open_and_surplus_pending_connections_are_closed(server) -> None:
    before = server.counters()
    silent, partial = connect(server), connect(server)
    partial.sendall(b"\x00")  # half a length field, and nothing more
    crowd = [connect(server) for _ in range(MAX_TCP_PENDING + 6)]
    await asyncio.sleep(0.5)
    assert delta(before, server.counters(), "tcp_closed_pending_limit") == 8  # the oldest pending ones made room
    start = time.monotonic()
    closed = await asyncio.gather(*(asyncio.to_thread(closed_by_server, sock) for sock in [silent, partial, *crowd]))
    assert all(closed) and time.monotonic() - start < CLAIM_TIMEOUT + 2 * SWEEP
    after = server.counters()
    assert delta(before, after, "tcp_closed_half_open") == MAX_TCP_PENDING
    assert delta(before, after, "tcp_accepted") == MAX_TCP_PENDING + 8
    for sock in [silent, partial, *crowd]:
        sock.close()


# ---------------------------------------------------------------- candidates

def test_passive_tcp_candidates_follow_the_udp_ones_at_a_lower_priority() -> None:
    local = sdp.LocalEndpoint("ufrag", "pwd" * 8, "AB:CD", [("192.0.2.1", 7882)], [("192.0.2.1", 7881)])
    udp, tcp = sdp.host_candidates(local)
    assert udp == "candidate:1 1 udp 2130706431 192.0.2.1 7882 typ host"
    assert tcp == "candidate:2 1 tcp 1671430143 192.0.2.1 7881 typ host tcptype passive"
    assert int(tcp.split()[3]) < int(udp.split()[3])
    assert sdp.host_candidates(sdp.LocalEndpoint("u", "p", "AB", [("192.0.2.1", 7882)])) == [udp]


def test_an_offer_with_active_tcp_candidates_parses() -> None:
    # libwebrtc lists its active TCP candidates with the discard port 9: it connects, never listens.
    active = "candidate:2 1 tcp 1518280447 192.0.2.9 9 typ host tcptype active"
    offer = "\r\n".join([
        "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=ice-ufrag:Xy1z",
        "a=ice-pwd:0123456789abcdefghijklmn", "a=fingerprint:sha-256 " + ":".join(["7A"] * 32), "a=setup:actpass",
        "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
        "a=candidate:1 1 udp 2122260223 192.0.2.9 50000 typ host", f"a={active}", ""])
    assert sdp.parse(offer).sections[0].candidates[1] == active.removeprefix("candidate:")


async def test_candidates_are_offered_and_trickled_and_active_ones_accepted(server) -> None:
    client, _ = await SignalClient.join(server.url, server.token("cand", "tcp-candidates"))
    offer = await client.receive_until("offer")
    trickled = [json.loads((await client.receive_until("trickle")).trickle.candidateInit)["candidate"]
                for _ in range(2)]
    passive = f"1 tcp 1671430143 127.0.0.1 {server.tcp_port} typ host tcptype passive"
    assert any(line.endswith(passive) for line in offer.offer.sdp.splitlines() if line.startswith("a=candidate"))
    assert any(candidate.endswith(passive) for candidate in trickled)
    # A client's active TCP candidate (port 9: it connects, never listens) is taken like any other, and ignored.
    active = "candidate:3 1 tcp 1518280447 192.0.2.9 9 typ host tcptype active"
    await client.send(rtc.SignalRequest(trickle=rtc.TrickleRequest(
        candidateInit=json.dumps({"candidate": active, "sdpMid": "0", "sdpMLineIndex": 0}),
        target=rtc.SignalTarget.SUBSCRIBER)))
    await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
    assert (await client.receive_until("pong_resp")).pong_resp.last_ping_timestamp == 1
    await client.connection.close()


async def test_tcp_port_0_turns_ice_tcp_off(tmp_path) -> None:
    server = start_server(tmp_path, "--tcp-port", "0")  # the last --tcp-port wins
    try:
        client, _ = await SignalClient.join(server.url, server.token("udp-only", "no-tcp"))
        offer = await client.receive_until("offer")
        candidates = [line for line in offer.offer.sdp.splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" udp " in line for line in candidates)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.tcp_port), timeout=2).close()
        assert "ice-tcp off" in server.log()
        await client.connection.close()
    finally:
        stop_server(server)
