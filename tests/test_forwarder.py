"""The Forwarder and the Munger of one DownTrack, driven in-process through engine.harness (no sockets, no SRTP).

Every assertion is about what the subscriber's decoder sees: one stream whose sequence numbers have no gaps and never
go back, whose timestamps only move forward, and whose VP8 picture ids / TL0PICIDX continue across layer switches."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from engine.harness import DownTrackHarness

PT, OUT_SSRC, OUT_PT = 96, 0xD0D0, 100
Q, H, F = 0, 1, 2
SSRCS = {Q: 0x1001, H: 0x1002, F: 0x1003}


def vp8(picture_id: int, tl0: int, keyframe: bool, short: bool = False) -> bytes:
    """Descriptor with X, S, a picture id (15-bit, or 7-bit when `short`) and TL0PICIDX, then the frame's first bytes."""
    pid = bytes([picture_id & 0x7F]) if short else bytes([0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
    frame = b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x01\x00\x00"
    return bytes([0x90, 0xC0]) + pid + bytes([tl0 & 0xFF]) + frame


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, padding: int = 0) -> bytes:
    first = 0x80 | (0x20 if padding else 0)
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return struct.pack("!BBHII", first, PT, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload + tail


def video(layer: int, seq: int, pid: int, keyframe: bool = False, ts: int | None = None, short: bool = False) -> bytes:
    """Layer `layer`'s packet `seq` (one packet per frame, 30 fps at 90 kHz; layers have unrelated numbering)."""
    return rtp(seq, seq * 3000 if ts is None else ts, SSRCS[layer], vp8(pid, pid, keyframe, short))


@dataclass
class Out:
    seq: int
    ts: int
    ssrc: int
    pt: int
    payload: bytes

    @property
    def picture_id(self) -> int:
        return ((self.payload[2] & 0x7F) << 8) | self.payload[3]

    @property
    def tl0(self) -> int:
        return self.payload[4]


def parse(data: bytes | None) -> Out | None:
    if data is None:
        return None
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    assert not first & 0x30  # no extension block (none is mapped) and no padding
    return Out(seq, ts, ssrc, second & 0x7F, data[12:])


class Subscriber:
    """A DownTrackHarness plus the stream the subscriber has received so far."""

    def __init__(self, **options) -> None:
        self.dt = DownTrackHarness(ssrc=OUT_SSRC, payload_type=OUT_PT, **options)
        self.got: list[Out] = []

    def push(self, packet: bytes, layer: int, now: float) -> Out | None:
        out = parse(self.dt.push(packet, layer, now))
        if out is not None:
            assert out.ssrc == OUT_SSRC and out.pt == OUT_PT
            self.got.append(out)
        return out

    def assert_seamless(self) -> None:
        """Consecutive sequence numbers, timestamps that never go back, and (VP8) picture ids that never skip."""
        seqs = [p.seq for p in self.got]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
        for before, after in zip(self.got, self.got[1:]):
            assert (after.ts - before.ts) & 0xFFFFFFFF < 0x80000000
            if self.dt.current_layer >= 0 and len(before.payload) > 4 and len(after.payload) > 4:
                assert after.picture_id == (before.picture_id + 1) & 0x7FFF
                assert after.tl0 == (before.tl0 + 1) & 0xFF


def test_first_packet_waits_for_a_keyframe_and_keeps_the_publishers_numbering() -> None:
    sub = Subscriber(layers=3)
    assert sub.push(video(Q, 10, 500), Q, 0.0) is None
    assert sub.dt.current_layer == -1 and sub.dt.dropped == 1
    out = sub.push(video(Q, 11, 501, keyframe=True), Q, 0.033)
    assert (out.seq, out.ts, out.picture_id, out.tl0) == (11, 33000, 501, 501 & 0xFF)
    assert sub.dt.current_layer == Q


def test_simulcast_switch_happens_only_at_a_keyframe_of_the_target_layer() -> None:
    sub = Subscriber(layers=3)
    sub.dt.live_layers = 0b001  # only q is sent at first
    for i, seq in enumerate(range(100, 104)):
        assert sub.push(video(Q, seq, 1000 + seq, keyframe=seq == 100), Q, i * 0.033) is not None
    # f appears: it becomes the target, but q keeps flowing until f's keyframe.
    sub.dt.live_layers = 0b111
    sub.dt.set_max_layer(F)
    assert sub.dt.target_layer == F
    assert sub.push(video(F, 5000, 7000), F, 0.14) is None              # f, not a keyframe
    assert sub.push(video(H, 800, 3000, keyframe=True), H, 0.15) is None  # a keyframe, but not of the target layer
    assert sub.push(video(Q, 104, 1104), Q, 0.16) is not None
    assert sub.dt.current_layer == Q and sub.dt.layer_switches == 0
    last = sub.got[-1]
    switched = sub.push(video(F, 5001, 7001, keyframe=True), F, 0.5)
    assert sub.dt.current_layer == F and sub.dt.layer_switches == 1
    # Right after the last packet sent; its timestamp advanced by the wall time since then (0.34 s at 90 kHz).
    assert switched.seq == last.seq + 1
    assert switched.ts == last.ts + round(0.34 * 90000)
    assert (switched.picture_id, switched.tl0) == (last.picture_id + 1, (last.tl0 + 1) & 0xFF)
    assert sub.push(video(Q, 105, 1105), Q, 0.51) is None               # q no longer passes
    following = sub.push(video(F, 5002, 7002), F, 0.53)
    assert following.ts - switched.ts == 3000                           # f's own spacing, through the new offset
    sub.assert_seamless()
    assert [p.seq for p in sub.got] == list(range(100, 107))


def test_switching_down_also_waits_for_a_keyframe() -> None:
    sub = Subscriber(layers=3)
    sub.dt.live_layers = 0b101
    sub.push(video(F, 1, 1, keyframe=True), F, 0.0)
    sub.push(video(F, 2, 2), F, 0.033)
    sub.dt.set_max_layer(Q)  # the StreamAllocator lowers the cap
    assert sub.dt.target_layer == Q
    assert sub.push(video(Q, 900, 40), Q, 0.04) is None                 # q, but not at a keyframe
    assert sub.push(video(F, 3, 3), F, 0.066) is not None               # f continues meanwhile
    assert sub.push(video(Q, 901, 41, keyframe=True), Q, 0.07) is not None
    assert sub.push(video(F, 4, 4), F, 0.1) is None
    sub.push(video(Q, 902, 42), Q, 0.1)
    assert [p.seq for p in sub.got] == [1, 2, 3, 4, 5]
    sub.assert_seamless()


def test_packets_older_than_the_switch_point_are_dropped() -> None:
    sub = Subscriber(layers=3)
    sub.dt.live_layers = 0b101
    sub.dt.set_max_layer(Q)
    sub.push(video(Q, 50, 50, keyframe=True), Q, 0.0)
    sub.dt.set_max_layer(F)
    switched = sub.push(video(F, 3001, 301, keyframe=True), F, 0.1)
    assert switched.seq == 51
    # f's packet 3000 arrives late (reordered): its frame started before the switch, and its output number is taken.
    assert sub.push(video(F, 3000, 300), F, 0.11) is None
    assert sub.push(video(F, 3002, 302), F, 0.12).seq == 52
    # Reordering within the layer after the switch point still passes, with its own (earlier) number.
    sub.push(video(F, 3004, 304), F, 0.14)
    late = sub.push(video(F, 3003, 303), F, 0.15)
    assert late is not None and late.seq == 53 and late.picture_id == sub.got[-2].picture_id - 1
    assert [p.seq for p in sub.got] == [50, 51, 52, 54, 53]
    assert sub.dt.dropped == 1


def test_padding_only_packets_are_absorbed_without_a_gap() -> None:
    sub = Subscriber()
    sub.push(video(Q, 40, 1, keyframe=True), Q, 0.0)
    assert sub.push(rtp(41, 40 * 3000, SSRCS[Q], b"", padding=200), Q, 0.01) is None  # probe padding
    assert sub.push(rtp(42, 40 * 3000, SSRCS[Q], b"", padding=100), Q, 0.02) is None
    out = sub.push(video(Q, 43, 2), Q, 0.03)
    assert out.seq == 41 and out.ts == 43 * 3000
    # A packet from before the absorbed padding would now collide with output already sent: it is dropped instead.
    assert sub.push(video(Q, 39, 0), Q, 0.04) is None
    sub.assert_seamless()


def test_padding_out_of_order_is_forwarded_rather_than_leaving_a_gap() -> None:
    sub = Subscriber()
    sub.push(video(Q, 10, 1, keyframe=True), Q, 0.0)
    sub.push(video(Q, 12, 3), Q, 0.02)
    # Padding that is not the next packet cannot be absorbed without renumbering what was sent: it goes out as is.
    out = sub.push(rtp(11, 10 * 3000, SSRCS[Q], b"", padding=50), Q, 0.03)
    assert out is not None and out.seq == 11 and out.payload == b""


def test_seven_bit_picture_ids_stay_seven_bit_and_wrap() -> None:
    sub = Subscriber(layers=2)
    sub.dt.live_layers = 0b01
    sub.push(video(Q, 1, 126, keyframe=True, short=True), Q, 0.0)
    sub.push(video(Q, 2, 127, short=True), Q, 0.033)
    sub.dt.live_layers = 0b11
    sub.push(video(H, 90, 40, keyframe=True, short=True), H, 0.066)
    assert [(p.seq, p.payload[2]) for p in sub.got] == [(1, 126), (2, 127), (3, 0)]


def test_pause_and_resume_reanchor_at_a_keyframe() -> None:
    sub = Subscriber()
    for seq in range(10, 13):
        sub.push(video(Q, seq, seq, keyframe=seq == 10), Q, (seq - 10) * 0.033)
    assert sub.dt.set_paused(True) is False
    assert sub.dt.set_paused(True) is False  # already paused
    assert sub.push(video(Q, 13, 13, keyframe=True), Q, 0.1) is None     # nothing passes, keyframes neither
    assert sub.dt.dropped == 0                                            # and pausing is not counted as drops
    assert sub.dt.set_paused(False) is True                               # a keyframe is wanted now
    assert sub.push(video(Q, 14, 14), Q, 0.2) is None
    resumed = sub.push(video(Q, 15, 15, keyframe=True), Q, 1.0)
    assert resumed.seq == 13 and resumed.picture_id == 13 and resumed.tl0 == 13
    assert resumed.ts == sub.got[-2].ts + round((1.0 - 2 * 0.033) * 90000)
    sub.push(video(Q, 16, 16), Q, 1.033)
    sub.assert_seamless()


def test_audio_passes_everything_and_a_new_stream_continues_the_numbering() -> None:
    sub = Subscriber(codec="opus", video=False, clock_rate=48000)
    for i in range(3):
        assert sub.push(rtp(65534 + i, 960 * i, 0x3001, b"old"), Q, i * 0.02) is not None
    sub.dt.lose_layer()  # the publisher restarted the track under a new SSRC
    out = sub.push(rtp(4000, 123456, 0x3002, b"new"), Q, 0.1)
    assert out.seq == 1 and out.ts == 2 * 960 + round(0.06 * 48000)
    assert [p.seq for p in sub.got] == [65534, 65535, 0, 1]
    sub.push(rtp(4001, 123456 + 960, 0x3002, b"new"), Q, 0.12)
    assert sub.got[-1].ts - out.ts == 960
    sub.assert_seamless()


def test_malformed_input_is_refused() -> None:
    sub = Subscriber()
    with pytest.raises(ValueError):
        sub.dt.push(b"\x80\x60", Q, 0.0)
    with pytest.raises(ValueError):
        sub.dt.push(video(Q, 1, 1), 3, 0.0)
