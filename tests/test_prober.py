"""Probe clusters (engine/prober.pyx) against real UDP sockets: what a subscriber receives while one runs, and how the
estimator judges it from the subscriber's TWCC feedback."""
from __future__ import annotations

import asyncio
import struct
import time

import pytest

import engine
from engine import twcc
from test_engine import (DOWN_RTX_SSRC, DOWN_SSRC, PUB_EXTMAP, Q_SSRC, SUB_MID_ID, SUB_RTX_PT, SUB_VP8_PT, VP8_PT,
                         VP8_RTX_PT, Peer, video)

TWCC_ID = 3
TARGET_BPS = 2_000_000
DURATION_S = 0.3


@pytest.fixture
async def probed():
    """An engine, a publisher and a subscriber whose video DownTrack (RTX, transport-cc) has started."""
    eng = engine.Engine("127.0.0.1", 0, lambda event: None)
    eng.attach(asyncio.get_running_loop())
    publisher, subscriber = Peer(eng), Peer(eng)
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, [], [], [],
                                PUB_EXTMAP)
    downtrack = eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, DOWN_RTX_SSRC, SUB_VP8_PT, SUB_RTX_PT,
                                  {1: SUB_MID_ID}, transport_cc_id=TWCC_ID)
    yield eng, publisher, subscriber, downtrack
    eng.close()
    publisher.close()
    subscriber.close()


def transport_seq(packet) -> int:
    """The transport-wide sequence number the engine stamped on a packet."""
    return struct.unpack("!H", packet.exts[TWCC_ID])[0]


async def start_media(publisher: Peer, subscriber: Peer) -> list[int]:
    """A keyframe and a few packets forwarded: the transport-wide numbers the subscriber saw."""
    for seq in range(100, 104):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 100))
    await subscriber.collect()
    return [transport_seq(p) for p in subscriber.take_rtp()]


async def receive_for(subscriber: Peer, seconds: float) -> list[tuple[float, object]]:
    """(arrival time, packet) of everything the subscriber receives for `seconds`."""
    arrived = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await subscriber.collect(0.005)
        now = time.monotonic()
        arrived += [(now, packet) for packet in subscriber.take_rtp()]
    return arrived


def feedback(arrived: list[tuple[float, object]], lost: bool = False) -> bytes:
    """The subscriber's TWCC feedback for the packets it received (as lost, with `lost`). Transport-wide numbers
    start at random, so a cluster's may wrap past 65535: each is taken as an offset from the first one received."""
    first = transport_seq(arrived[0][1])
    offsets = {((transport_seq(p) - first + 0x8000) & 0xFFFF) - 0x8000: at for at, p in arrived}
    low, high = min(offsets), max(offsets)
    origin = min(offsets.values())
    arrivals = [None if lost or k not in offsets else int((offsets[k] - origin) * 1e6) + 64_000
                for k in range(low, high + 1)]
    return twcc.build((first + low) & 0xFFFF, arrivals, sender_ssrc=0x55, media_ssrc=DOWN_SSRC)[0]


async def test_a_cluster_tops_the_link_up_with_rtx_padding(probed) -> None:
    eng, publisher, subscriber, downtrack = probed
    numbers = await start_media(publisher, subscriber)
    cluster = eng.probe(subscriber.transport, TARGET_BPS, DURATION_S)
    assert cluster is not None
    arrived = await receive_for(subscriber, DURATION_S + 0.2)
    padding = [p for _, p in arrived]
    assert padding and all((p.ssrc, p.pt, p.payload) == (DOWN_RTX_SSRC, SUB_RTX_PT, b"") for p in padding)
    # They continue the transport-wide numbering, one each.
    probe_numbers = [transport_seq(p) for p in padding]
    assert probe_numbers == [(numbers[-1] + 1 + i) & 0xFFFF for i in range(len(padding))]
    # Paced at the target over the cluster's time, then silent.
    sent_bits = sum(12 + 8 + 255 for _ in padding) * 8
    assert 0.7 * TARGET_BPS * DURATION_S <= sent_bits <= 1.3 * TARGET_BPS * DURATION_S
    assert arrived[-1][0] - arrived[0][0] >= 0.6 * DURATION_S
    assert await receive_for(subscriber, 0.1) == []
    stats = eng.stats()
    assert stats["probe_clusters"] == 1 and stats["probe_packets"] == len(padding)
    assert eng.probe_status(subscriber.transport, cluster)[0] == "pending"


async def test_feedback_judges_the_cluster(probed) -> None:
    eng, publisher, subscriber, _ = probed
    await start_media(publisher, subscriber)
    cluster = eng.probe(subscriber.transport, TARGET_BPS, DURATION_S)
    arrived = await receive_for(subscriber, DURATION_S + 0.1)
    subscriber.send_rtcp(feedback(arrived))
    publisher.send_rtp(video(104, Q_SSRC, None, 104, keyframe=False))  # a later packet completes the cluster
    later = await receive_for(subscriber, 0.15)
    subscriber.send_rtcp(feedback(arrived + later))
    await subscriber.collect()
    status, measured = eng.probe_status(subscriber.transport, cluster)
    assert status == "succeeded" and 0.8 * TARGET_BPS <= measured <= TARGET_BPS, (status, measured)
    assert eng.transport_bandwidth(subscriber.transport)["probes_succeeded"] == 1


async def test_a_lost_cluster_fails(probed) -> None:
    eng, publisher, subscriber, _ = probed
    await start_media(publisher, subscriber)
    cluster = eng.probe(subscriber.transport, TARGET_BPS, DURATION_S)
    arrived = await receive_for(subscriber, DURATION_S + 0.1)
    subscriber.send_rtcp(feedback(arrived, lost=True))
    await asyncio.sleep(2.1)  # judged as it stands once its time is up
    assert eng.probe_status(subscriber.transport, cluster)[0] == "failed"


async def test_what_cannot_be_probed_is_refused(probed) -> None:
    eng, publisher, subscriber, downtrack = probed
    assert eng.probe(subscriber.transport, TARGET_BPS, DURATION_S) is None  # nothing forwarded yet
    await start_media(publisher, subscriber)
    assert eng.probe(subscriber.transport, 0, DURATION_S) is None
    assert eng.probe(publisher.transport, TARGET_BPS, DURATION_S) is None  # no DownTrack there
    with pytest.raises(KeyError):
        eng.probe(123456, TARGET_BPS, DURATION_S)
    # The carrier goes away mid-cluster: the cluster ends, nothing else is sent, nothing breaks.
    assert eng.probe(subscriber.transport, TARGET_BPS, DURATION_S) is not None
    await subscriber.collect(0.05)
    eng.remove_downtrack(downtrack)
    subscriber.take_rtp()
    assert await receive_for(subscriber, 0.1) == []
    assert eng.probe(subscriber.transport, TARGET_BPS, DURATION_S) is None
