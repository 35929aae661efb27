"""The packet engine against real UDP sockets on 127.0.0.1, with SRTP sessions made here.

A "publisher" and a "subscriber" socket each own a transport in the engine; media goes publisher -> engine ->
subscriber, feedback the other way, all protected with libsrtp exactly as browsers do.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
from dataclasses import dataclass, field

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session
from pylibsrtp._binding import ffi

import engine

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
PUB_EXTMAP = {MID_URI: 1, RID_URI: 2, RRID_URI: 3}
SUB_MID_ID = 4  # the subscriber negotiated a different id for mid
VP8_PT, VP8_RTX_PT, OPUS_PT = 96, 97, 111
SUB_VP8_PT, SUB_RTX_PT, SUB_OPUS_PT = 100, 101, 109
Q_SSRC, H_SSRC, F_SSRC, F_RTX_SSRC, AUDIO_SSRC = 0x1001, 0x1002, 0x1003, 0x2003, 0x3001
DOWN_SSRC, DOWN_RTX_SSRC, DOWN_AUDIO_SSRC = 0xA001, 0xA002, 0xB001


# ---------------------------------------------------------------- packet helpers (test side, pure Python)

def extensions(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes([(ext_id << 4) | (len(data) - 1)]) + data for ext_id, data in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, exts: list[tuple[int, bytes]] = (),
        marker: bool = False) -> bytes:
    ext = extensions(list(exts)) if exts else b""
    first = 0x80 | (0x10 if ext else 0)
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + ext + payload


@dataclass
class Rtp:
    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    exts: dict[int, bytes] = field(default_factory=dict)


def parse(data: bytes) -> Rtp:
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    exts = {}
    if first & 0x10:
        profile, words = struct.unpack_from("!HH", data, offset)
        block = data[offset + 4:offset + 4 + 4 * words]
        offset += 4 + 4 * words
        assert profile == 0xBEDE or profile & 0xFFF0 == 0x1000   # RFC 8285's one- or two-byte form
        two_byte = profile != 0xBEDE
        i = 0
        while i < len(block):
            if block[i] == 0:
                i += 1
                continue
            ext_id, size = (block[i], block[i + 1]) if two_byte else (block[i] >> 4, (block[i] & 0x0F) + 1)
            exts[ext_id] = block[i + 1 + two_byte:i + 1 + two_byte + size]
            i += 1 + two_byte + size
    end = len(data) - (data[-1] if first & 0x20 else 0)
    return Rtp(second & 0x7F, seq, ts, ssrc, data[offset:end], exts)


def vp8(picture_id: int, keyframe: bool, tl0: int | None = None, body: bytes = b"frame") -> bytes:
    """VP8 payload descriptor (X, S, 15-bit picture id, optional TL0PICIDX) + the start of a frame."""
    descriptor = bytes([0x90, 0x80 | (0x40 if tl0 is not None else 0), 0x80 | (picture_id >> 8), picture_id & 0xFF])
    if tl0 is not None:
        descriptor += bytes([tl0])
    frame = b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x01\x00\x00"
    return descriptor + frame + body


def picture_id(payload: bytes) -> int:
    return ((payload[2] & 0x7F) << 8) | payload[3]


def rtcp_packets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(packet type, count/fmt, whole packet) of each packet in a compound."""
    out = []
    while data:
        count, pt, words = data[0] & 0x1F, data[1], struct.unpack_from("!H", data, 2)[0]
        out.append((pt, count, data[:4 * (words + 1)]))
        data = data[4 * (words + 1):]
    return out


def pli(sender: int, media: int) -> bytes:
    return struct.pack("!BBHII", 0x81, 206, 2, sender, media)


def nack(sender: int, media: int, seq: int, blp: int = 0) -> bytes:
    return struct.pack("!BBHIIHH", 0x81, 205, 3, sender, media, seq, blp)


def binding_request(ufrag: str, attributes: int = 0) -> bytes:
    """A cookie-valid Binding request to `ufrag` (not signed: the engine does not check MESSAGE-INTEGRITY, aioice
    does), with `attributes` extra (empty USE-CANDIDATE) attributes."""
    body = struct.pack("!HH", 0x0025, 0) * attributes
    username = f"{ufrag}:remote".encode()
    body += struct.pack("!HH", 0x0006, len(username)) + username + b"\x00" * (-len(username) % 4)
    body += struct.pack("!HH", 0x0008, 20) + os.urandom(20)
    return struct.pack("!HHI", 0x0001, len(body), 0x2112A442) + os.urandom(12) + body


def pointer(session: Session) -> int:
    return int(ffi.cast("uintptr_t", session._srtp[0]))


# ---------------------------------------------------------------- peers

class Peer:
    """A client endpoint: a UDP socket plus the SRTP sessions matching its engine transport."""

    def __init__(self, eng: engine.Engine, host: str = "127.0.0.1") -> None:
        self.engine = eng
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        up, down = os.urandom(30), os.urandom(30)
        self.engine_rx = Session(Policy(key=up, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.tx = Session(Policy(key=up, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        tx_policy = Policy(key=down, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        tx_policy.allow_repeat_tx = True
        self.engine_tx = Session(tx_policy)
        self.down_key = down
        self.rx = Session(Policy(key=down, ssrc_type=Policy.SSRC_ANY_INBOUND))
        self.ufrag = os.urandom(8).hex()
        self.transport = eng.add_transport(self.ufrag)
        eng.bind_transport(self.transport, host, self.port)
        eng.set_srtp(self.transport, pointer(self.engine_rx), pointer(self.engine_tx))
        self.rtp: list[Rtp] = []
        self.rtcp: list[tuple[int, int, bytes]] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, (self.host, self.engine.port))

    def send_rtp(self, packet: bytes) -> None:
        self.send_raw(self.tx.protect(packet))

    def send_rtcp(self, packet: bytes) -> None:
        self.send_raw(self.tx.protect_rtcp(packet))

    async def collect(self, delay: float = 0.06) -> None:
        """Lets the engine run, then reads (and unprotects) everything that arrived."""
        await asyncio.sleep(delay)
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            if 192 <= data[1] <= 223:
                self.rtcp.extend(rtcp_packets(self.rx.unprotect_rtcp(data)))
            else:
                self.rtp.append(parse(self.rx.unprotect(data)))

    def take_rtp(self) -> list[Rtp]:
        packets, self.rtp = self.rtp, []
        return packets

    def plis(self, media_ssrc: int) -> int:
        return sum(1 for pt, fmt, p in self.rtcp if pt == 206 and fmt == 1 and struct.unpack_from("!I", p, 8)[0] == media_ssrc)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
async def setup(request):
    """An engine with a publisher and a subscriber peer; with 2 workers the subscriber's transport is the second
    worker's, so everything it receives was forwarded off the event loop's thread."""
    events: list[tuple] = []
    eng = engine.Engine("127.0.0.1", 0, events.append, workers=request.param)
    eng.attach(asyncio.get_running_loop())
    publisher, subscriber = Peer(eng), Peer(eng)
    yield eng, publisher, subscriber, events
    eng.close()
    publisher.close()
    subscriber.close()


def add_video(eng: engine.Engine, publisher: Peer, subscriber: Peer, rids: list[str], rtx: bool = True) -> tuple[int, int]:
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, rids, [], [],
                                PUB_EXTMAP)
    downtrack = eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, DOWN_RTX_SSRC if rtx else 0, SUB_VP8_PT,
                                  SUB_RTX_PT if rtx else 0, {1: SUB_MID_ID})
    return receiver, downtrack


def video(seq: int, ssrc: int, rid: bytes | None, pid: int, keyframe: bool, tl0: int | None = None) -> bytes:
    exts = [(1, b"1")] + ([(2, rid)] if rid else [])
    return rtp(VP8_PT, seq, seq * 3000, ssrc, vp8(pid, keyframe, tl0), exts, marker=True)


# ---------------------------------------------------------------- tests

async def test_audio_is_forwarded_with_rewritten_headers(setup) -> None:
    eng, publisher, subscriber, events = setup
    extmap = {**PUB_EXTMAP, "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 5}
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [], [], extmap)
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {1: SUB_MID_ID})
    assert eng.audio_levels(0.1) == {receiver: 0.0}
    for i in range(5):
        publisher.send_rtp(rtp(OPUS_PT, 65533 + i, 960 * i, AUDIO_SSRC, b"opus%d" % i,
                               [(1, b"0"), (2, b"x"), (5, bytes([0x80 | 30]))]))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [p.seq for p in got] == [(65533 + i) & 0xFFFF for i in range(5)]
    assert {p.ssrc for p in got} == {DOWN_AUDIO_SSRC} and {p.pt for p in got} == {SUB_OPUS_PT}
    assert [p.payload for p in got] == [b"opus%d" % i for i in range(5)]
    assert got[0].exts == {SUB_MID_ID: b"0"}  # mid renumbered, rid (unmapped) stripped
    assert ("receiver_layer", receiver, 0, AUDIO_SSRC) in events
    stats = eng.receiver_stats(receiver)["layers"][0]
    assert stats["packets"] == 5 and stats["ssrc"] == AUDIO_SSRC
    # Five packets at -30 dBov in an interval that expected five: the mean linear level is 10^(-30/20).
    assert eng.audio_levels(0.1)[receiver] == pytest.approx(10 ** (-30 / 20))
    assert eng.audio_levels(0.1)[receiver] == 0.0  # a new interval, nothing arrived


async def test_publisher_ssrc_change_continues_the_subscriber_stream(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [], [], PUB_EXTMAP)
    downtrack = eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    for i in range(3):
        publisher.send_rtp(rtp(OPUS_PT, 1000 + i, 960 * i, AUDIO_SSRC, b"old%d" % i, [(1, b"0")]))
    await subscriber.collect()
    # The publisher restarts the track under the same mid: new SSRC, unrelated sequence numbers and timestamps.
    for i in range(3):
        publisher.send_rtp(rtp(OPUS_PT, 40000 + i, 7777777 + 960 * i, AUDIO_SSRC + 1, b"new%d" % i, [(1, b"0")]))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [p.payload for p in got] == [b"old0", b"old1", b"old2", b"new0", b"new1", b"new2"]
    assert [p.seq for p in got] == list(range(1000, 1006))
    assert {p.ssrc for p in got} == {DOWN_AUDIO_SSRC}
    assert got[3].ts > got[2].ts and got[4].ts - got[3].ts == 960
    assert eng.downtrack_stats(downtrack)["current_layer"] == 0


async def test_video_waits_for_keyframe_and_requests_one(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    for seq in range(10, 13):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=False))
    await asyncio.gather(subscriber.collect(), publisher.collect())
    assert subscriber.take_rtp() == []
    assert publisher.plis(Q_SSRC) >= 1
    for seq in range(13, 17):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 13))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [p.seq for p in got] == [13, 14, 15, 16]
    assert {(p.ssrc, p.pt) for p in got} == {(DOWN_SSRC, SUB_VP8_PT)}
    assert [picture_id(p.payload) for p in got] == [13, 14, 15, 16]
    assert eng.downtrack_stats(downtrack)["current_layer"] == 0


async def test_simulcast_switches_up_at_keyframe_seamlessly(setup) -> None:
    eng, publisher, subscriber, events = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
    for seq in range(100, 104):  # the low layer alone first
        publisher.send_rtp(video(seq, Q_SSRC, b"q", 1000 + seq, keyframe=seq == 100, tl0=seq & 0xFF))
    await subscriber.collect()
    first = subscriber.take_rtp()
    assert [p.seq for p in first] == [100, 101, 102, 103]
    # The full layer appears without a keyframe: the engine asks for one and keeps forwarding q meanwhile.
    publisher.send_rtp(video(5000, F_SSRC, b"f", 7000, keyframe=False, tl0=50))
    publisher.send_rtp(video(104, Q_SSRC, b"q", 1104, keyframe=False, tl0=104))
    await asyncio.gather(subscriber.collect(), publisher.collect())
    assert [p.seq for p in subscriber.take_rtp()] == [104]
    assert publisher.plis(F_SSRC) >= 1
    assert ("receiver_layer", receiver, 2, F_SSRC) in events
    await asyncio.sleep(0.05)
    publisher.send_rtp(video(5001, F_SSRC, b"f", 7001, keyframe=True, tl0=51))
    publisher.send_rtp(video(105, Q_SSRC, b"q", 1105, keyframe=False, tl0=105))
    publisher.send_rtp(video(5002, F_SSRC, b"f", 7002, keyframe=False, tl0=52))
    await subscriber.collect()
    after = subscriber.take_rtp()
    assert [p.seq for p in after] == [105, 106]  # contiguous after 104, q no longer forwarded
    assert {p.ssrc for p in after} == {DOWN_SSRC}
    assert [picture_id(p.payload) for p in after] == [1105, 1106]
    assert [p.payload[4] for p in after] == [105, 106]  # TL0PICIDX continues too
    assert after[0].ts > first[-1].ts + 3000  # timestamps keep advancing with wall time
    assert after[1].ts - after[0].ts == 3000
    assert eng.downtrack_stats(downtrack)["current_layer"] == 2
    assert eng.stats()["layer_switches"] == 1


async def test_subscriber_nack_is_answered_from_cache(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    for seq in range(200, 205):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 200))
    await subscriber.collect()
    sent = {p.seq: p for p in subscriber.take_rtp()}
    subscriber.send_rtcp(nack(0x55, DOWN_SSRC, 201, blp=0b10))  # 201 and 203
    await subscriber.collect()
    rtx = subscriber.take_rtp()
    assert [(p.ssrc, p.pt) for p in rtx] == [(DOWN_RTX_SSRC, SUB_RTX_PT)] * 2
    assert [struct.unpack_from("!H", p.payload)[0] for p in rtx] == [201, 203]
    assert [p.payload[2:] for p in rtx] == [sent[201].payload, sent[203].payload]
    assert rtx[1].seq == (rtx[0].seq + 1) & 0xFFFF
    assert eng.downtrack_stats(downtrack)["retransmissions"] == 2
    assert eng.stats()["nacks_received"] == 1
    # A NACK for the RTX stream names RTX sequence numbers, not media ones: nothing to resend.
    subscriber.send_rtcp(nack(0x55, DOWN_RTX_SSRC, 202))
    await subscriber.collect()
    assert subscriber.take_rtp() == []
    assert eng.stats()["nack_cache_misses"] == 1


async def test_nack_floods_are_rate_limited(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    for seq in range(200, 300):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 200))
    await subscriber.collect()
    assert len(subscriber.take_rtp()) == 100
    # One datagram repeating the same NACK: each packet is resent once.
    subscriber.send_rtcp(b"".join(nack(0x55, DOWN_SSRC, 201, blp=0b10) for _ in range(80)))
    await subscriber.collect()
    assert sorted(struct.unpack_from("!H", p.payload)[0] for p in subscriber.take_rtp()) == [201, 203]
    assert eng.stats()["nack_rate_limited"] == 158
    # NACKs naming every packet: at most the per-window budget is resent.
    subscriber.send_rtcp(b"".join(nack(0x55, DOWN_SSRC, seq, blp=0xFFFF) for seq in range(205, 300, 17)))
    await subscriber.collect()
    assert len(subscriber.take_rtp()) == 64
    assert eng.downtrack_stats(downtrack)["retransmissions"] == 66


async def test_nack_without_rtx_resends_the_packet(setup) -> None:
    eng, publisher, subscriber, _ = setup
    add_video(eng, publisher, subscriber, [], rtx=False)
    for seq in range(300, 303):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 300))
    await subscriber.collect()
    sent = subscriber.take_rtp()
    subscriber.send_rtcp(nack(0x55, DOWN_SSRC, 301))
    # Here 301 did arrive, so the subscriber's own replay window would reject the copy: read it with a fresh one.
    subscriber.rx = Session(Policy(key=subscriber.down_key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    await subscriber.collect()
    assert subscriber.take_rtp() == [sent[1]]


async def test_subscriber_pli_reaches_publisher(setup) -> None:
    eng, publisher, subscriber, _ = setup
    add_video(eng, publisher, subscriber, [])
    publisher.send_rtp(video(1, Q_SSRC, None, 1, keyframe=True))
    await asyncio.sleep(0.6)  # past the rate limit of the engine's own first request
    await publisher.collect(0)
    before = publisher.plis(Q_SSRC)
    subscriber.send_rtcp(pli(0x55, DOWN_SSRC))
    await publisher.collect()
    assert publisher.plis(Q_SSRC) == before + 1
    assert eng.stats()["plis_received"] == 1


async def test_publisher_gaps_are_nacked_and_rtx_fills_them(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, ["q", "h", "f"],
                                [], [], PUB_EXTMAP)
    eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, 0, SUB_VP8_PT, 0, {})
    for seq in (10, 11, 14):
        publisher.send_rtp(video(seq, Q_SSRC, b"q", seq, keyframe=seq == 10))
    await asyncio.gather(publisher.collect(), subscriber.collect())
    nacks = [p for pt, fmt, p in publisher.rtcp if pt == 205 and fmt == 1]
    assert nacks and struct.unpack_from("!IHH", nacks[0], 8) == (Q_SSRC, 12, 0b1)
    assert [p.seq for p in subscriber.take_rtp()] == [10, 11, 14]
    # RTX for 12 (bound by mid + repaired rid): stripped of its OSN and forwarded in the gap.
    original = video(12, Q_SSRC, b"q", 12, keyframe=False)
    rtx_payload = struct.pack("!H", 12) + parse(original).payload
    publisher.send_rtp(rtp(VP8_RTX_PT, 900, 12 * 3000, 0x7777, rtx_payload, [(1, b"1"), (3, b"q")]))
    publisher.send_rtp(rtp(VP8_RTX_PT, 901, 12 * 3000, 0x7777, rtx_payload, [(1, b"1"), (3, b"q")]))  # duplicate
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [(p.seq, p.ssrc, p.pt, p.payload) for p in got] == [(12, DOWN_SSRC, SUB_VP8_PT, parse(original).payload)]
    stats = eng.stats()
    assert stats["rtx_recovered"] == 1 and stats["drop_duplicate"] == 1 and stats["nacks_sent"] >= 1


async def test_reports_to_publisher_and_subscriber(setup) -> None:
    eng, publisher, subscriber, _ = setup
    add_video(eng, publisher, subscriber, [])
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, Q_SSRC, 0x0123456789ABCDEF, 5000, 3, 300)
    for seq in range(1, 4):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 1))
    publisher.send_rtcp(sr)
    await publisher.collect(1.15)
    await subscriber.collect(0)
    rr = [p for pt, fmt, p in publisher.rtcp if pt == 201]
    assert rr
    ssrc, fraction_cumulative, highest, jitter, lsr = struct.unpack_from("!IIIII", rr[-1], 8)
    assert ssrc == Q_SSRC and highest == 3 and fraction_cumulative == 0 and lsr == 0x456789AB
    remb = [p for pt, fmt, p in publisher.rtcp if pt == 206 and fmt == 15]
    assert remb and remb[-1][12:16] == b"REMB" and struct.unpack_from("!I", remb[-1], 20)[0] == Q_SSRC
    exponent, mantissa = remb[-1][17] >> 2, ((remb[-1][17] & 3) << 16) | struct.unpack_from("!H", remb[-1], 18)[0]
    assert mantissa << exponent == 5_000_000
    srs = [p for pt, fmt, p in subscriber.rtcp if pt == 200]
    assert srs and struct.unpack_from("!I", srs[-1], 4)[0] == DOWN_SSRC
    assert struct.unpack_from("!II", srs[-1], 20) == (3, 3 * len(parse(video(1, Q_SSRC, None, 1, False)).payload) + 7)
    assert any(pt == 202 for pt, _, _ in subscriber.rtcp)


async def test_garbage_is_counted_and_forwarding_continues(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    try:
        publisher.send_rtp(rtp(OPUS_PT, 1, 0, AUDIO_SSRC, b"a"))
        for junk in (b"\xff" * 40, b"\x80", b"\x80" * 11, os.urandom(300), b"\x90\x60" + os.urandom(100)):
            publisher.send_raw(junk)
        publisher.send_raw(rtp(OPUS_PT, 2, 960, AUDIO_SSRC, b"unprotected" * 3))
        publisher.send_rtp(rtp(OPUS_PT, 3, 1920, 0xDEAD, b"unknown ssrc"))
        publisher.send_rtp(rtp(63, 3, 1920, AUDIO_SSRC, b"RED is not what the subscriber was told"))
        stranger.sendto(Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)).protect(
            rtp(OPUS_PT, 1, 0, AUDIO_SSRC, b"x")), ("127.0.0.1", eng.port))
        publisher.send_rtp(rtp(OPUS_PT, 4, 2880, AUDIO_SSRC, b"b"))
        await subscriber.collect()
    finally:
        stranger.close()
    assert [p.payload for p in subscriber.take_rtp()] == [b"a", b"b"]
    stats = eng.stats()
    assert stats["drop_not_rtp"] >= 1
    assert stats["drop_unknown_source"] == 1
    assert stats["drop_unadmitted_ssrc"] >= 1  # 0xDEAD, and random bytes that parse as RTP of an unknown SSRC
    assert stats["drop_payload_type"] == 1
    assert stats["drop_srtp_unprotect_failed"] >= 1  # the unprotected packet: its SSRC is known, its tag wrong
    assert stats["drop_srtp_unprotect_failed"] + stats["drop_malformed"] >= 4


async def test_stun_and_dtls_events(setup) -> None:
    eng, publisher, subscriber, events = setup
    stun = binding_request(publisher.ufrag)
    dtls = b"\x16\xfe\xfd" + os.urandom(30)
    publisher.send_raw(stun)
    publisher.send_raw(dtls)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.sendto(dtls, ("127.0.0.1", eng.port))
    stranger.sendto(stun, ("127.0.0.1", eng.port))  # a Binding request may come from any address: ICE checks it
    stranger_port = stranger.getsockname()[1]
    stranger.close()
    await asyncio.sleep(0.05)
    assert ("stun", publisher.transport, stun, "127.0.0.1", publisher.port) in events
    assert ("stun", publisher.transport, stun, "127.0.0.1", stranger_port) in events
    assert ("dtls", publisher.transport, dtls) in events
    assert eng.stats()["drop_dtls_unbound"] == 1
    # send_to / send_transport reach the peer unchanged
    eng.send_to(b"\x01\x01reply", "127.0.0.1", publisher.port)
    eng.send_transport(publisher.transport, b"\x16record")
    await asyncio.sleep(0.02)
    assert publisher.sock.recv(100) == b"\x01\x01reply"
    assert publisher.sock.recv(100) == b"\x16record"


async def test_only_binding_requests_to_live_ufrags_surface(setup) -> None:
    eng, publisher, subscriber, events = setup
    good = binding_request(publisher.ufrag)
    indication = b"\x00\x11" + good[2:]
    wrong_length = good[:2] + struct.pack("!H", len(good)) + good[4:]
    no_cookie = good[:4] + b"\x00\x00\x00\x00" + good[8:]
    hostile = [
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12),  # a bare 20-byte header: no USERNAME
        binding_request(publisher.ufrag, attributes=480),  # 2 KB, too many attributes
        binding_request("not-a-transport"),
        binding_request(publisher.ufrag[:-1]),  # a prefix of a live ufrag
        indication, wrong_length, no_cookie, good[:-3], b"\x01" * 19,
    ]
    for data in hostile:
        publisher.send_raw(data)
    publisher.send_raw(good)
    await asyncio.sleep(0.05)
    assert [e for e in events if e[0] == "stun"] == [("stun", publisher.transport, good, "127.0.0.1", publisher.port)]
    stats = eng.stats()
    assert stats["stun_in"] == len(hostile) + 1
    assert stats["drop_stun_no_username"] == 1
    assert stats["drop_stun_malformed"] == 5
    assert stats["drop_stun_unknown_ufrag"] == 2
    assert stats["drop_stun_not_request"] == 1
    eng.remove_transport(publisher.transport)
    publisher.send_raw(good)
    await asyncio.sleep(0.05)
    assert eng.stats()["drop_stun_unknown_ufrag"] == 3


async def test_stun_events_are_rate_limited_per_transport(setup) -> None:
    eng, publisher, subscriber, events = setup
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(400):  # to the publisher's ufrag, from elsewhere
            stranger.sendto(binding_request(publisher.ufrag), ("127.0.0.1", eng.port))
        await asyncio.sleep(0.05)
        publisher.send_raw(binding_request(publisher.ufrag))  # its own check, from its bound address
        subscriber.send_raw(binding_request(subscriber.ufrag))
        await asyncio.sleep(0.05)
    finally:
        stranger.close()
    from_stranger = sum(1 for e in events if e[0] == "stun" and e[1] == publisher.transport and e[4] != publisher.port)
    assert 100 <= from_stranger <= 120  # the burst, and what a tenth of a second refills
    assert eng.stats()["drop_stun_rate_limited"] == 400 - from_stranger
    assert ("stun", publisher.transport, "127.0.0.1", publisher.port) in [e[:2] + e[3:] for e in events]
    assert ("stun", subscriber.transport) in [e[:2] for e in events]  # another transport is unaffected


def test_ufrags_are_unique() -> None:
    eng = engine.Engine("127.0.0.1", 0, lambda event: None)
    try:
        eng.add_transport("abcd")
        with pytest.raises(ValueError):
            eng.add_transport("abcd")
        with pytest.raises(ValueError):
            eng.add_transport("ab:cd")
    finally:
        eng.close()


async def test_an_address_is_never_taken_from_another_transport(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    assert eng.transport_at(subscriber.host, subscriber.port) == subscriber.transport
    assert not eng.bind_transport(publisher.transport, subscriber.host, subscriber.port)
    publisher.send_rtp(rtp(OPUS_PT, 1, 0, AUDIO_SSRC, b"still here"))
    await subscriber.collect()
    assert [p.payload for p in subscriber.take_rtp()] == [b"still here"]  # both kept their addresses
    eng.unbind_transport(subscriber.transport)
    publisher.send_rtp(rtp(OPUS_PT, 2, 960, AUDIO_SSRC, b"nobody listens"))
    await subscriber.collect(0.1)
    assert subscriber.take_rtp() == []
    assert eng.stats()["drop_subscriber_not_ready"] >= 1


async def test_event_handler_errors_do_not_stop_the_engine(setup) -> None:
    eng, publisher, subscriber, _ = setup
    calls = []

    def explode(event: tuple) -> None:
        calls.append(event)
        raise RuntimeError("boom")

    failing = engine.Engine("127.0.0.1", 0, explode)
    failing.attach(asyncio.get_running_loop())
    try:
        failing.add_transport("boom")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(3):
            sock.sendto(binding_request("boom"), ("127.0.0.1", failing.port))
            await asyncio.sleep(0.02)
        sock.close()
        assert len(calls) == 3 and failing.stats()["event_errors"] == 3
    finally:
        failing.close()


async def test_removal_and_rebinding(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    eng.remove_receiver(receiver)
    eng.remove_downtrack(downtrack)  # already gone with its receiver: a no-op
    with pytest.raises(KeyError):
        eng.downtrack_stats(downtrack)
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    # The publisher moves to a new port (ICE restart / NAT rebinding).
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    try:
        eng.bind_transport(publisher.transport, "127.0.0.1", moved.getsockname()[1])
        publisher.send_rtp(rtp(OPUS_PT, 1, 0, AUDIO_SSRC, b"old"))
        moved.sendto(publisher.tx.protect(rtp(OPUS_PT, 2, 960, AUDIO_SSRC, b"new")), ("127.0.0.1", eng.port))
        await subscriber.collect()
    finally:
        moved.close()
    assert [p.payload for p in subscriber.take_rtp()] == [b"new"]
    eng.remove_transport(publisher.transport)
    with pytest.raises(KeyError):
        eng.receiver_stats(receiver)


async def test_rtx_ssrcs_need_a_layer_each(setup) -> None:
    eng, publisher, _, _ = setup
    with pytest.raises(ValueError):
        eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, [], [Q_SSRC],
                         [F_RTX_SSRC, F_RTX_SSRC + 1], PUB_EXTMAP)
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, [], [Q_SSRC],
                                [F_RTX_SSRC], PUB_EXTMAP)
    eng.remove_receiver(receiver)
    # The removed receiver's SSRCs are unknown again: its RTX stream is dropped, not resolved to freed memory.
    publisher.send_rtp(rtp(VP8_RTX_PT, 1, 0, F_RTX_SSRC, b"\x00\x05" + vp8(1, keyframe=True)))
    publisher.send_rtp(rtp(VP8_PT, 1, 0, Q_SSRC, vp8(1, keyframe=True)))
    await publisher.collect()
    assert eng.stats()["drop_unadmitted_ssrc"] == 2


async def test_padding_only_packets_are_dropped_without_a_gap(setup) -> None:
    """...and they do not count in the layer's bytes: publishers probe with padding on their lowest layer, and a
    price that counted it would pause that layer for subscribers it fits."""
    eng, publisher, subscriber, _ = setup
    receiver, _ = add_video(eng, publisher, subscriber, [])
    media = [video(40, Q_SSRC, None, 1, keyframe=True), video(42, Q_SSRC, None, 2, keyframe=False)]
    publisher.send_rtp(media[0])
    padding = bytearray(rtp(VP8_PT, 41, 40 * 3000, Q_SSRC, b"\x00" * 99 + b"\x64", [(1, b"1")]))
    padding[0] |= 0x20
    publisher.send_rtp(bytes(padding))
    publisher.send_rtp(media[1])
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [40, 41]
    layer = eng.receiver_stats(receiver)["layers"][0]
    assert layer["packets"] == 3 and layer["bytes"] == sum(map(len, media))


async def test_a_layers_last_keyframe_is_measured_whatever_the_packet_order(setup) -> None:
    """`keyframe_bytes` (the allocator prices an upgrade's keyframe): the packets of a keyframe's frame, a late one
    included; delta frames add nothing; each layer has its own, and its next keyframe starts a new count."""
    eng, publisher, subscriber, _ = setup
    receiver, _ = add_video(eng, publisher, subscriber, ["q", "h"])

    def packet(seq: int, ts: int, ssrc: int, rid: bytes, start: str, size: int) -> bytes:
        """`start`: "key" or "delta" (a frame's first packet), "" (a later packet of a frame)."""
        payload = vp8(seq, start == "key", body=bytes(size)) if start else bytes([0x80, 0x80, 0x80, seq]) + bytes(size)
        return rtp(VP8_PT, seq, ts, ssrc, payload, [(1, b"1"), (2, rid)])

    keyframe = [packet(10, 9000, Q_SSRC, b"q", "key", 900), packet(11, 9000, Q_SSRC, b"q", "", 800),
                packet(12, 9000, Q_SSRC, b"q", "", 700)]
    other_layer = packet(500, 9000, H_SSRC, b"h", "key", 1100)
    for data in (keyframe[0], keyframe[2], packet(13, 12000, Q_SSRC, b"q", "delta", 100), other_layer, keyframe[1]):
        publisher.send_rtp(data)  # keyframe[1] comes late, after a delta frame
    await subscriber.collect()
    layers = eng.receiver_stats(receiver)["layers"]
    assert [layer["keyframe_bytes"] for layer in layers] == [sum(map(len, keyframe)), len(other_layer)]
    smaller = packet(14, 15000, Q_SSRC, b"q", "key", 300)
    publisher.send_rtp(smaller)
    await subscriber.collect()
    assert eng.receiver_stats(receiver)["layers"][0]["keyframe_bytes"] == len(smaller)


async def test_late_packets_behind_absorbed_padding_are_not_misnumbered(setup) -> None:
    eng, publisher, subscriber, _ = setup
    add_video(eng, publisher, subscriber, [])
    publisher.send_rtp(video(100, Q_SSRC, None, 1, keyframe=True))
    publisher.send_rtp(video(102, Q_SSRC, None, 3, keyframe=False))
    padding = bytearray(rtp(VP8_PT, 103, 102 * 3000, Q_SSRC, b"\x00" * 99 + b"\x64", [(1, b"1")]))
    padding[0] |= 0x20
    publisher.send_rtp(bytes(padding))
    await subscriber.collect()
    # A fresh replay window, so a misnumbered copy of output 100 would show up here.
    subscriber.rx = Session(Policy(key=subscriber.down_key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    publisher.send_rtp(video(101, Q_SSRC, None, 2, keyframe=False))  # late: takes the number its position kept
    publisher.send_rtp(video(104, Q_SSRC, None, 4, keyframe=False))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [(p.seq, picture_id(p.payload)) for p in got] == [(100, 1), (102, 3), (101, 2), (103, 4)]


async def test_protected_garbage_never_breaks_the_engine(setup) -> None:
    """Random bodies behind valid SRTP/SRTCP reach the parsers; everything is dropped or handled, never fatal."""
    eng, publisher, subscriber, _ = setup
    add_video(eng, publisher, subscriber, ["q", "h", "f"])
    rng = __import__("random").Random(7)
    seq = 0
    for i in range(300):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(12, 300)))
        if i % 3 == 0:
            feedback = bytes([0x80 | rng.getrandbits(5), rng.choice([200, 201, 205, 206]), 0, len(body) // 4 - 1])
            publisher.send_rtcp(feedback + struct.pack("!II", 1, DOWN_SSRC) + body[12:12 + 4 * (len(body) // 4 - 3)])
            subscriber.send_rtcp(feedback + struct.pack("!II", 1, DOWN_SSRC) + body[12:12 + 4 * (len(body) // 4 - 3)])
        elif i % 3 == 1:  # a valid header on the bound layer with a random VP8 payload
            seq += 1
            publisher.send_rtp(rtp(VP8_PT, seq, seq * 3000, Q_SSRC, body, [(1, b"1"), (2, b"q")]))
        else:  # garbage headers (extension blocks especially) on an unknown SSRC, which is matched by mid
            ext = struct.pack("!HH", rng.choice([0xBEDE, 0x1000]), rng.randrange(0, 8))
            try:
                publisher.send_rtp(bytes([0x90, VP8_PT]) + body[2:8] + struct.pack("!I", 0x4444) + ext + body[12:])
            except pylibsrtp.Error:  # libsrtp itself refuses headers whose lengths do not add up
                continue
    await subscriber.collect(0.1)
    subscriber.take_rtp()
    publisher.send_rtp(video(seq + 1, Q_SSRC, b"q", 1, keyframe=True))
    await subscriber.collect(0.1)
    assert [p.seq for p in subscriber.take_rtp()] == [seq + 1]
    assert eng.stats()["packets_in"] >= 250


async def test_forwarding_continues_across_sequence_wraps(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    seqs = [0, 16000, 32000, 48000, 64000, 14464, 30000]  # each within half the sequence space of the previous
    for seq in seqs:
        publisher.send_rtp(rtp(OPUS_PT, seq, seq * 960, AUDIO_SSRC, b"x"))
        await asyncio.sleep(0.005)
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == seqs


async def test_target_cap_and_stale_layers_switch_down_at_keyframes(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
    publisher.send_rtp(video(1, Q_SSRC, b"q", 1, keyframe=False))
    publisher.send_rtp(video(500, F_SSRC, b"f", 500, keyframe=True))
    publisher.send_rtp(video(2, Q_SSRC, b"q", 2, keyframe=False))
    publisher.send_rtp(video(501, F_SSRC, b"f", 501, keyframe=False))
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [500, 501]
    # The StreamAllocator caps this subscriber at q: a keyframe is requested and the switch waits for it.
    eng.set_target_layer(downtrack, 0)
    await publisher.collect()
    assert publisher.plis(Q_SSRC) >= 1
    publisher.send_rtp(video(502, F_SSRC, b"f", 502, keyframe=False))
    publisher.send_rtp(video(3, Q_SSRC, b"q", 3, keyframe=True))
    publisher.send_rtp(video(503, F_SSRC, b"f", 503, keyframe=False))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [(p.seq, picture_id(p.payload)) for p in got] == [(502, 502), (503, 503)]
    assert eng.downtrack_stats(downtrack)["current_layer"] == 0
    # A NACK for f's last packet (502: the layer left) and q's keyframe (503): only q's is resent, into the link
    # that made the subscriber step down.
    subscriber.send_rtcp(nack(0x55, DOWN_SSRC, 502, blp=0b1))
    await subscriber.collect()
    assert [struct.unpack_from("!H", p.payload)[0] for p in subscriber.take_rtp()] == [503]
    assert eng.stats()["nack_stale_layer"] == 1
    # Uncapped again, but f has gone quiet: after a second it no longer counts as available, q stays.
    eng.set_target_layer(downtrack, 2)
    for seq in range(4, 16):
        publisher.send_rtp(video(seq, Q_SSRC, b"q", seq, keyframe=False))
        await asyncio.sleep(0.1)
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == list(range(504, 516))
    assert eng.receiver_stats(receiver)["top_layer"] == 0


async def test_a_cut_step_down_stops_the_old_layer_before_the_keyframe(setup) -> None:
    """A step-down for bandwidth (cut=True): the old layer stops at once, the output continues from its last packet
    with the lower layer's keyframe; a cap raised back before that keyframe lifts the cut."""
    eng, publisher, subscriber, _ = setup
    _, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
    publisher.send_rtp(video(1, Q_SSRC, b"q", 1, keyframe=True))
    publisher.send_rtp(video(500, F_SSRC, b"f", 500, keyframe=True))
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [500]
    eng.set_target_layer(downtrack, 0, cut=True)
    publisher.send_rtp(video(501, F_SSRC, b"f", 501, keyframe=False))
    publisher.send_rtp(video(2, Q_SSRC, b"q", 2, keyframe=False))
    await subscriber.collect()
    assert subscriber.take_rtp() == []
    assert eng.stats()["drop_layer_cut"] == 1
    publisher.send_rtp(video(3, Q_SSRC, b"q", 3, keyframe=True))
    publisher.send_rtp(video(502, F_SSRC, b"f", 502, keyframe=False))
    await subscriber.collect()
    assert [(p.seq, picture_id(p.payload)) for p in subscriber.take_rtp()] == [(501, 501)]
    assert eng.downtrack_stats(downtrack)["current_layer"] == 0
    # On q now: a cut to q itself cuts nothing; raised to f and cut back before f's keyframe, q keeps flowing.
    eng.set_target_layer(downtrack, 0, cut=True)
    eng.set_target_layer(downtrack, 2)
    eng.set_target_layer(downtrack, 0, cut=True)
    publisher.send_rtp(video(4, Q_SSRC, b"q", 4, keyframe=False))
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [502]


async def test_a_cap_on_a_silent_layer_aims_at_the_best_live_one(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
    eng.set_target_layer(downtrack, 1)  # h is never sent (e.g. the publisher's encoder dropped it)
    publisher.send_rtp(video(1, Q_SSRC, b"q", 1, keyframe=True))
    publisher.send_rtp(video(500, F_SSRC, b"f", 500, keyframe=True))
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [1]
    assert eng.downtrack_stats(downtrack)["target_layer"] == 0
    assert eng.downtrack_stats(downtrack)["current_layer"] == 0
    # Capped below every live layer, it gets the lowest live one rather than nothing.
    eng.set_target_layer(downtrack, 0)
    publisher.send_rtp(video(501, F_SSRC, b"f", 501, keyframe=False))
    await asyncio.sleep(1.1)  # q (and f) go stale; f comes back first
    publisher.send_rtp(video(502, F_SSRC, b"f", 502, keyframe=True))
    publisher.send_rtp(video(503, F_SSRC, b"f", 503, keyframe=False))
    await subscriber.collect()
    assert eng.downtrack_stats(downtrack)["target_layer"] == 2
    assert [p.seq for p in subscriber.take_rtp()] == [2, 3]


async def test_h264_gating_and_seven_bit_vp8_picture_ids(setup) -> None:
    eng, publisher, subscriber, _ = setup
    h264 = eng.add_receiver(publisher.transport, "2", "video", "h264", 102, 0, 90000, [], [0x5001], [], {})
    eng.add_downtrack(h264, subscriber.transport, 0xC001, 0, 102, 0, {})
    publisher.send_rtp(rtp(102, 10, 0, 0x5001, b"\x41delta"))
    publisher.send_rtp(rtp(102, 11, 0, 0x5001, b"\x65idr"))  # without its SPS: a decoder cannot start there
    publisher.send_rtp(rtp(102, 12, 0, 0x5001, b"\x67sps"))
    publisher.send_rtp(rtp(102, 13, 0, 0x5001, b"\x65idr"))
    vp8_receiver = eng.add_receiver(publisher.transport, "3", "video", "vp8", VP8_PT, 0, 90000, ["a", "b"], [], [],
                                    PUB_EXTMAP)
    down = eng.add_downtrack(vp8_receiver, subscriber.transport, 0xC002, 0, VP8_PT, 0, {})

    def short_pid(seq: int, ssrc: int, rid: bytes, pid: int, keyframe: bool) -> bytes:
        frame = b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x01\x00\x00"
        return rtp(VP8_PT, seq, seq, ssrc, bytes([0x90, 0x80, pid & 0x7F]) + frame, [(1, b"3"), (2, rid)])

    publisher.send_rtp(short_pid(1, 0x6001, b"a", 126, True))
    publisher.send_rtp(short_pid(2, 0x6001, b"a", 127, False))
    await subscriber.collect()
    publisher.send_rtp(short_pid(90, 0x6002, b"b", 40, False))
    await asyncio.sleep(0.05)
    publisher.send_rtp(short_pid(91, 0x6002, b"b", 41, True))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [p.seq for p in got if p.ssrc == 0xC001] == [12, 13]
    vp8_out = [p for p in got if p.ssrc == 0xC002]
    assert [(p.seq, p.payload[2]) for p in vp8_out] == [(1, 126), (2, 127), (3, 0)]  # 7-bit ids stay 7-bit, wrap
    assert eng.downtrack_stats(down)["layer_switches"] == 1


async def test_paused_downtrack_forwards_nothing_and_resumes_at_a_keyframe(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    for seq in range(10, 13):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 10))
    await subscriber.collect()
    assert [p.seq for p in subscriber.take_rtp()] == [10, 11, 12]
    eng.set_paused(downtrack, True)
    for seq in range(13, 16):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 14))
    await asyncio.gather(subscriber.collect(), publisher.collect())
    assert subscriber.take_rtp() == []
    assert eng.stats()["paused_skipped"] == 3
    plis = publisher.plis(Q_SSRC)  # paused DownTracks ask for no keyframes
    eng.set_paused(downtrack, False)  # asks for a keyframe at once, and forwards nothing before it
    publisher.send_rtp(video(16, Q_SSRC, None, 16, keyframe=False))
    await asyncio.gather(subscriber.collect(), publisher.collect())
    assert subscriber.take_rtp() == []
    assert publisher.plis(Q_SSRC) == plis + 1
    for seq in range(17, 19):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 17))
    await subscriber.collect()
    resumed = subscriber.take_rtp()
    assert [p.seq for p in resumed] == [13, 14]  # numbering continues right after the last packet sent
    assert [picture_id(p.payload) for p in resumed] == [13, 14]
    assert eng.downtrack_stats(downtrack)["paused"] is False


def send_burst(publisher: Peer, first_seq: int) -> list[bytes]:
    """Seven audio packets queued before the engine reads any, so one recvmmsg batch holds them all: six of one
    size, then a shorter one (a GSO run may end with a shorter segment)."""
    payloads = [bytes([i]) * 200 for i in range(6)] + [b"tail"]
    for i, payload in enumerate(payloads):
        publisher.send_rtp(rtp(OPUS_PT, first_seq + i, 960 * i, AUDIO_SSRC, payload))
    return payloads


def add_audio_subscribers(eng: engine.Engine, publisher: Peer, subscribers: list[Peer]) -> None:
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    for index, subscriber in enumerate(subscribers):
        eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC + index, 0, SUB_OPUS_PT, 0, {})


async def test_runs_to_one_subscriber_leave_as_gso_sends(setup) -> None:
    eng, publisher, subscriber, _ = setup
    if not eng.gso:
        pytest.skip("this kernel has no UDP GSO")
    second = Peer(eng)
    try:
        add_audio_subscribers(eng, publisher, [subscriber, second])
        payloads = send_burst(publisher, 65530)
        await asyncio.gather(subscriber.collect(), second.collect())
        for index, peer in enumerate([subscriber, second]):
            got = peer.take_rtp()
            assert [p.seq for p in got] == [(65530 + i) & 0xFFFF for i in range(7)]
            assert [p.payload for p in got] == payloads
            assert {p.ssrc for p in got} == {DOWN_AUDIO_SSRC + index}
        stats = eng.stats()
        # Each subscriber's seven packets (now interleaved with nobody else's) went out as one segmented send.
        assert stats["gso_sends"] == 2 and stats["gso_segments"] == 14
        assert stats["drop_send_failed"] == 0 and eng.gso
    finally:
        second.close()


async def test_a_kernel_refusing_gso_falls_back_to_one_datagram_each(setup) -> None:
    eng, publisher, subscriber, _ = setup
    if not eng.gso:
        pytest.skip("this kernel has no UDP GSO")
    if eng.workers > 1:
        pytest.skip("the subscriber's packets leave by the second worker's socket; the fallback is the same code")
    # Linux refuses to segment for a socket that sends without UDP checksums (EINVAL), as some routes do.
    so_no_check = getattr(socket, "SO_NO_CHECK", 11)
    with socket.socket(fileno=os.dup(eng.fileno())) as alias:
        alias.setsockopt(socket.SOL_SOCKET, so_no_check, 1)
    add_audio_subscribers(eng, publisher, [subscriber])
    payloads = send_burst(publisher, 100)
    await subscriber.collect()
    assert [p.payload for p in subscriber.take_rtp()] == payloads
    assert not eng.gso
    payloads = send_burst(publisher, 107)  # and it stays off, without another refused attempt
    await subscriber.collect()
    assert [(p.seq, p.payload) for p in subscriber.take_rtp()] == [(107 + i, payload) for i, payload in enumerate(payloads)]
    stats = eng.stats()
    assert stats["gso_sends"] == 0 and stats["drop_send_failed"] == 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


def drain(sock: socket.socket) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096))
        except BlockingIOError:
            return datagrams


async def exchange_audio_and_stun(eng: engine.Engine, publisher: Peer, subscriber: Peer, events: list) -> None:
    """Audio from publisher to subscriber, STUN and DTLS events with the peer's address, raw datagrams back."""
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [], {})
    eng.add_downtrack(receiver, subscriber.transport, DOWN_AUDIO_SSRC, 0, SUB_OPUS_PT, 0, {})
    for i in range(3):
        publisher.send_rtp(rtp(OPUS_PT, 10 + i, 960 * i, AUDIO_SSRC, b"audio%d" % i))
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [(p.seq, p.ssrc, p.payload) for p in got] == [(10 + i, DOWN_AUDIO_SSRC, b"audio%d" % i) for i in range(3)]
    stun = binding_request(subscriber.ufrag)
    dtls = b"\x16\xfe\xfd" + os.urandom(30)
    subscriber.send_raw(stun)
    subscriber.send_raw(dtls)
    await asyncio.sleep(0.05)
    assert ("stun", subscriber.transport, stun, subscriber.host, subscriber.port) in events
    assert ("dtls", subscriber.transport, dtls) in events
    eng.send_to(b"\x01\x01reply", subscriber.host, subscriber.port)
    eng.send_transport(publisher.transport, b"\x16record")
    await asyncio.sleep(0.02)
    assert b"\x01\x01reply" in drain(subscriber.sock)  # besides the engine's RTCP reports
    assert b"\x16record" in drain(publisher.sock)
    assert eng.stats()["drop_unknown_source"] == 0 and eng.stats()["drop_send_failed"] == 0


@needs_ipv6
async def test_ipv6_publisher_and_subscriber() -> None:
    events: list[tuple] = []
    eng = engine.Engine("::1", 0, events.append)
    eng.attach(asyncio.get_running_loop())
    publisher, subscriber = Peer(eng, "::1"), Peer(eng, "::1")
    try:
        await exchange_audio_and_stun(eng, publisher, subscriber, events)
    finally:
        eng.close()
        publisher.close()
        subscriber.close()


@needs_ipv6
async def test_dual_stack_engine_serves_ipv4_and_ipv6_peers() -> None:
    events: list[tuple] = []
    eng = engine.Engine("::", 0, events.append)
    eng.attach(asyncio.get_running_loop())
    publisher, subscriber = Peer(eng, "::1"), Peer(eng, "127.0.0.1")
    try:
        await exchange_audio_and_stun(eng, publisher, subscriber, events)  # IPv6 in, IPv4 out, IPv4 events
    finally:
        eng.close()
        publisher.close()
        subscriber.close()


def test_addresses_must_suit_the_socket() -> None:
    eng = engine.Engine("127.0.0.1", 0, lambda event: None)
    try:
        transport = eng.add_transport()
        for host in ("::1", "localhost", "300.1.1.1"):
            with pytest.raises(ValueError):
                eng.bind_transport(transport, host, 5000)
        eng.bind_transport(transport, "127.0.0.1", 5000)
    finally:
        eng.close()


async def test_srtp_streams_are_bounded_per_transport(setup) -> None:
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    for ssrc in range(0x7000, 0x7000 + 500):  # neither bound nor bindable (no mid): dropped before unprotect
        publisher.send_rtp(rtp(VP8_PT, 1, 0, ssrc, b"x"))
    for i, ssrc in enumerate(range(0x8000, 0x8000 + 5)):  # each takes the layer over: the old stream is freed
        publisher.send_rtp(video(100 + i, ssrc, None, i, keyframe=True))
    await subscriber.collect(0.1)
    stats = eng.stats()
    assert stats["drop_unadmitted_ssrc"] == 500
    assert stats["srtp_streams_removed"] == 4
    assert len(subscriber.take_rtp()) == 5
    for ssrc in range(0x9000, 0x9000 + 300):  # RTCP from new sender SSRCs: a ring of 8 streams, the oldest freed
        publisher.send_rtcp(struct.pack("!BBHI", 0x80, 201, 1, ssrc))
    await asyncio.sleep(0.1)
    assert eng.stats()["srtp_streams_removed"] == 4 + 300 - 8
    assert eng.stats()["drop_srtp_stream_limit"] == 0
    eng.remove_receiver(receiver)  # its layer's stream, and the DownTrack's send stream
    assert eng.stats()["srtp_streams_removed"] == 4 + 300 - 8 + 2


async def test_reports_of_removed_tracks_do_not_use_up_streams(setup) -> None:
    """100 publish/unpublish cycles of a simulcast track with RTX, each followed by sender reports for its SSRCs:
    the RTCP-only streams stay in their small ring, so a new track after them still gets streams and forwards."""
    eng, publisher, subscriber, _ = setup
    for cycle in range(100):
        ssrcs = [0x10000 + cycle * 8 + i for i in range(3)]
        receiver, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
        for i, (ssrc, rid) in enumerate(zip(ssrcs, (b"q", b"h", b"f"))):
            publisher.send_rtp(video(1, ssrc, rid, 1, keyframe=True))
            publisher.send_rtp(rtp(VP8_RTX_PT, 1, 0, ssrc + 4, b"\x00\x01" + vp8(1, keyframe=True),
                                   [(1, b"1"), (3, rid)]))
        await asyncio.sleep(0.005)
        eng.remove_receiver(receiver)
        for ssrc in ssrcs:
            publisher.send_rtcp(struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, 0, 0, 1, 100))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    drain(subscriber.sock)  # each cycle's DownTrack reused DOWN_SSRC: a fresh session reads the new one
    subscriber.rx = Session(Policy(key=subscriber.down_key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    assert eng.stats()["drop_srtp_stream_limit"] == 0
    receiver, downtrack = add_video(eng, publisher, subscriber, ["q", "h", "f"])
    for seq in range(1, 4):
        publisher.send_rtp(video(seq, 0x900000, b"q", seq, keyframe=True))
    await subscriber.collect(0.1)
    assert len(subscriber.take_rtp()) == 3
    assert eng.stats()["drop_srtp_stream_limit"] == 0


async def test_ssrc_changes_of_a_layer_are_rate_limited(setup) -> None:
    """An authenticated publisher changing a layer's SSRC on every packet (with the right mid): a few take the layer
    over (each costs a stream, a reset and an event), the rest are dropped before unprotect."""
    eng, publisher, subscriber, events = setup
    add_video(eng, publisher, subscriber, [])
    for i in range(200):
        publisher.send_rtp(video(100 + i, 0xA000 + i, None, i, keyframe=True))
    await subscriber.collect(0.1)
    stats = eng.stats()
    assert stats["drop_ssrc_rebind_rate"] >= 200 - 1 - 4 - 2  # the first binding, the burst, what 0.1 s refills
    assert len([e for e in events if e[0] == "receiver_layer"]) <= 1 + 4 + 2
    await asyncio.sleep(0.5)  # the bucket refills one change per half second
    publisher.send_rtp(video(400, 0xB000, None, 400, keyframe=True))
    await subscriber.collect(0.05)
    assert ("receiver_layer", 0xB000) in [(e[0], e[3]) for e in events]


def binding_success(transaction_id: bytes) -> bytes:
    return struct.pack("!HHI", 0x0101, 0, 0x2112A442) + transaction_id


async def test_only_responses_to_our_checks_surface(setup) -> None:
    eng, publisher, subscriber, events = setup
    ours, other = os.urandom(12), os.urandom(12)
    eng.expect_stun_response(publisher.transport, ours)
    publisher.send_raw(binding_success(other))  # a transaction we never started
    publisher.send_raw(b"\x01\x11" + binding_success(ours)[2:])  # an error response
    publisher.send_raw(binding_success(ours))
    publisher.send_raw(binding_success(ours))  # a second answer: one per transaction
    await asyncio.sleep(0.05)
    assert [e for e in events if e[0] == "stun"] == [
        ("stun", publisher.transport, binding_success(ours), "127.0.0.1", publisher.port)]
    stats = eng.stats()
    assert stats["stun_responses"] == 1
    assert stats["drop_stun_unexpected_response"] == 2 and stats["drop_stun_not_request"] == 1
    for _ in range(9):  # the transport remembers its last 8 checks
        eng.expect_stun_response(publisher.transport, os.urandom(12))
    eng.expect_stun_response(publisher.transport, other)
    eng.remove_transport(publisher.transport)
    publisher.send_raw(binding_success(other))
    await asyncio.sleep(0.05)
    assert eng.stats()["drop_stun_unexpected_response"] == 3


async def test_flooding_transports_cannot_starve_another(setup) -> None:
    """Ten transports each raising 1,000 DTLS events/s (their bucket's rate) overflow the engine-wide budget; a
    victim's DTLS flights and consent responses still all surface (fair share, and responses bypass the budget)."""
    eng, victim, _, events = setup
    flooders = [Peer(eng) for _ in range(10)]
    junk = b"\x17\xfe\xfd" + os.urandom(60)
    flights = responses = 0
    try:
        for tick in range(30):
            for flooder in flooders:
                for _ in range(20):
                    flooder.send_raw(junk)
            if tick % 5 == 0:
                for i in range(6):  # a handshake flight
                    victim.send_raw(b"\x16\xfe\xfd" + bytes([flights, i]) + os.urandom(40))
                flights += 1
                transaction_id = os.urandom(12)
                eng.expect_stun_response(victim.transport, transaction_id)
                victim.send_raw(binding_success(transaction_id))
                responses += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
    finally:
        for flooder in flooders:
            flooder.close()
    mine = [e for e in events if e[1] == victim.transport]
    assert len([e for e in mine if e[0] == "dtls"]) == 6 * flights
    assert len([e for e in mine if e[0] == "stun"]) == responses
    assert eng.stats()["drop_event_budget"] > 0
