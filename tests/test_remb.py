"""Subscribers without transport-cc: the server stamps abs-send-time on their video, their receive-side estimator
answers with REMB, and that REMB is their downlink estimate. The real peer is aiortc (goog-remb + abs-send-time, no
transport-cc), subscribed through LiveKit's signalling to a LiveKit Python SDK publisher."""
from __future__ import annotations

import pytest

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from aiortc_client import AiortcSubscriber
from clients import connect, until
from engine import rtp
from engine.harness import BweHarness, DownTrackHarness
from media import Publisher
from signaling.peer import sdp

ABS_SEND_TIME_ID = 5
TRANSPORT_CC_ID = 3


def vp8_packet(seq: int, keyframe: bool = True) -> bytes:
    """A one-packet VP8 frame (payload descriptor with S=1, then a key- or delta-frame header byte)."""
    header = bytes([0x80, 0x80 | 96]) + seq.to_bytes(2, "big") + (seq * 3000).to_bytes(4, "big") + b"\0\0\0\x07"
    return header + bytes([0x10, 0x00 if keyframe else 0x01]) + b"\x9d\x01\x2a" + b"\0" * 40


def abs_send_time(seconds: float) -> int:
    """6.18 fixed-point seconds, 24 bits (wraps every 64 s)."""
    return int((seconds % 64) * (1 << 18)) & 0xFFFFFF


def aiortc_abs_send_time(packet: bytes, ext_id: int) -> int | None:
    """What aiortc's RTP parser reads as the packet's abs-send-time (its estimator's input)."""
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(
        id=ext_id, uri=sdp.EXT_ABS_SEND_TIME)]))
    return RtpPacket.parse(packet, extensions).extensions.abs_send_time


def test_abs_send_time_is_the_send_moment_in_6_18_seconds() -> None:
    harness = DownTrackHarness(abs_send_time_id=ABS_SEND_TIME_ID)
    sent = [(100.0, harness.push(vp8_packet(1), 0, 100.0)),
            (100.010, harness.push(vp8_packet(2, keyframe=False), 0, 100.010)),
            (163.5, harness.push(vp8_packet(3, keyframe=False), 0, 163.5))]  # past the 64 s wrap
    for seconds, packet in sent:
        value = rtp.extension(packet, ABS_SEND_TIME_ID)
        assert value is not None and len(value) == 3
        assert abs(int.from_bytes(value, "big") - abs_send_time(seconds)) <= 1
        assert aiortc_abs_send_time(packet, ABS_SEND_TIME_ID) == int.from_bytes(value, "big")
    # 10 ms apart: 0.01 x 2^18 units
    first, second = (int.from_bytes(rtp.extension(p, ABS_SEND_TIME_ID), "big") for _, p in sent[:2])
    assert abs((second - first) - 2621) <= 1


def test_transport_cc_wins_over_abs_send_time() -> None:
    """Both negotiated: only the transport-wide number is written (libwebrtc then runs its send-side mode)."""
    harness = DownTrackHarness(transport_cc_id=TRANSPORT_CC_ID, abs_send_time_id=ABS_SEND_TIME_ID)
    packet = harness.push(vp8_packet(1), 0, 5.0)
    assert rtp.extension(packet, TRANSPORT_CC_ID) is not None and len(rtp.extension(packet, TRANSPORT_CC_ID)) == 2
    assert rtp.extension(packet, ABS_SEND_TIME_ID) is None


def send(bwe: BweHarness, bps: int, start_us: int, end_us: int) -> None:
    """Packets sent with abs-send-time at `bps` (1000-byte payloads) from start to end."""
    for t in range(start_us, end_us, 8000 * 1_000_000 // bps):
        bwe.sent(1000, t)


def test_remb_at_the_clients_throughput_is_no_ceiling() -> None:
    """A receive-side estimator's first REMB is the throughput it saw (what we chose to send), and it rises from
    there while the link keeps up, also when it lags behind what we send (a publisher ramping up): the estimate
    keeps its start value."""
    bwe = BweHarness(10_000_000, 0)
    send(bwe, 400_000, 0, 3_000_000)
    bwe.remb(390_000, 3_000_000)  # aiortc's first: what it received over the last second
    assert bwe.estimate_bps == 10_000_000 and bwe.state == "normal" and bwe.stats["rembs"] == 1
    send(bwe, 1_200_000, 3_000_000, 4_000_000)
    for k, remb in enumerate((405_000, 420_000, 436_000)):  # +8 %/s while we send 3x more
        bwe.remb(remb, 3_500_000 + 250_000 * k)
        assert bwe.estimate_bps == 10_000_000 and not bwe.congested(3_500_000 + 250_000 * k)


def test_a_fall_or_a_flat_remb_below_what_we_send_is_congestion() -> None:
    bwe = BweHarness(10_000_000, 0)
    send(bwe, 400_000, 0, 4_500_000)
    bwe.remb(420_000, 3_000_000)
    bwe.remb(350_000, 3_500_000)  # 0.85 x throughput: the client's estimator saw overuse
    assert bwe.estimate_bps == 350_000 and bwe.congested(3_500_000) and bwe.take_change()
    bwe.remb(360_000, 4_500_000)  # rising again: the estimate follows it up...
    assert bwe.estimate_bps == 360_000 and not bwe.congested(4_500_000)
    bwe.remb(5_000_000, 4_500_000)  # ...to 1.5 x what we send (+10 kbit/s), whatever the client claims
    assert bwe.estimate_bps == pytest.approx(1.5 * 400_000 + 10_000, rel=0.05)  # (the sent rate is measured)

    # Behind a full drop-tail queue: the REMB settles at 1.5 x what gets through, under what we send.
    narrow = BweHarness(10_000_000, 0)
    send(narrow, 1_500_000, 0, 5_000_000)
    narrow.remb(910_000, 4_000_000)
    assert narrow.estimate_bps == 910_000 and narrow.congested(4_000_000)
    narrow.remb(910_000, 5_000_000)
    assert narrow.congested(5_000_000)


def video_section(text: str) -> sdp.MediaSection:
    return next(section for section in sdp.parse(text).sections if section.kind == "video")


async def test_an_aiortc_subscriber_is_estimated_from_its_remb(server) -> None:
    room = "remb-room"
    publisher_room = await connect(server, "pub", room)
    publisher = Publisher(publisher_room)
    subscriber, join = await AiortcSubscriber.join(server.url, server.token("aiortc", room))
    try:
        await publisher.start()
        await until(lambda: len(subscriber.frames) >= 30, timeout=30)

        # Offered both ways to estimate; aiortc took goog-remb + abs-send-time, and not transport-cc.
        offered, answered = video_section(subscriber.offers[-1]), video_section(subscriber.answers[-1])
        assert {sdp.EXT_TRANSPORT_CC, sdp.EXT_ABS_SEND_TIME} <= set(offered.extmap)
        assert {"goog-remb", "transport-cc"} <= set(offered.codecs[0].rtcp_fb)
        assert sdp.EXT_ABS_SEND_TIME in answered.extmap and sdp.EXT_TRANSPORT_CC not in answered.extmap
        assert "goog-remb" in answered.codecs[0].rtcp_fb and "transport-cc" not in answered.codecs[0].rtcp_fb

        # aiortc sends REMB only from packets carrying abs-send-time: its estimate comes back and drives ours.
        await until(lambda: server.counters().get("remb_received", 0) >= 3, timeout=15)
        counters = server.counters()
        assert counters.get("twcc_feedback_received", 0) == 0 and counters["bandwidth_events"] >= 1, counters
        estimates = {labels["participant"]: (labels["source"], value) for name, labels, value in server.metrics()
                     if name == "tern_subscriber_bandwidth_bps"}
        source, bps = estimates[join.participant.sid]
        assert source == "remb" and bps >= 300_000, estimates  # loopback: no fall in its REMB, no step down

        # Video keeps playing under the REMB-driven allocation.
        decoded = len(subscriber.frames)
        await until(lambda: len(subscriber.frames) >= decoded + 30, timeout=10)
        print(f"REMB estimate {bps / 1000:.0f} kbit/s; frames {len(subscriber.frames)}, last {subscriber.frames[-1]}")
    finally:
        await subscriber.close()
        await publisher.stop()
        await publisher_room.disconnect()

