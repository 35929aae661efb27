"""RED on a real lossy link: a LiveKit Python SDK publisher with RED on, inside a namespace of tests/netlab.py whose
uplink to tern loses 10 % of its packets, publishes a tone. Two listeners on the host hear it whole: the Python SDK,
which negotiates RED (its NetEq rebuilds lost packets from the redundancy), and aiortc, which does not (tern strips
RED to Opus, rebuilding lost primaries from the redundant blocks of the packets after them).

The loss is a userspace relay (tests/lossy_relay.py) the server offers as its media address: the lab's kernel has
no `netem`, nor a `tc` action that drops at random. Without RED (`--red off` to tests/lab_publisher.py) the same
link leaves both listeners about 10 % of the tone concealed or missing."""
from __future__ import annotations

import asyncio
import subprocess

import numpy as np
import pytest
from livekit import rtc

from aiortc_client import AiortcSubscriber
from clients import connect, until
from conftest import start_server, stop_server
from lossy_relay import LossyRelay
from media import SAMPLE_RATE, TONE_HZ, dominant_frequency, wait_for_tracks
from netlab import NetLab, lab_unavailable

LOSS = 0.10
PUBLISH_S = 10     # the publisher's time on air once its tone is published
SETTLE_S = 1.0     # the listeners' jitter buffers settle before the window
WINDOW_S = 4.0     # what is judged: 200 packets of 20 ms, some 20 of them lost
FRAME = 960        # 20 ms of Opus at 48 kHz, in RTP timestamp units
# aiortc's jitter buffer waits for a missing packet until 16 newer ones have come, then skips it and the oldest
# frames it holds: each packet lost for good leaves a gap of ~5 frames in what it plays (with RED: ~9 %, without ~46 %).
MAX_PLAIN_GAPS = 0.25
ROOM = "red-loss"


@pytest.fixture
def lossy_lab(tmp_path):
    """A lab whose namespace reaches tern's media port only through a LossyRelay losing LOSS of what it sends: tern
    listens on the host end of the veth and offers the relay's address (one of its own, on that veth) instead."""
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetLab() as lab:
        relay_ip = "10.214." + lab.host_ip.split(".", 2)[2]  # beside the lab's own /30, as unique as it is
        subprocess.run(["ip", "addr", "add", f"{relay_ip}/32", "dev", lab.host_if], check=True, timeout=10)
        lab.ns("ip", "route", "add", f"{relay_ip}/32", "dev", lab.ns_if)
        server = start_server(tmp_path, "--node-ip", relay_ip, host=lab.host_ip)
        try:
            with LossyRelay((relay_ip, server.udp_port), (lab.host_ip, server.udp_port), lab.ns_ip, LOSS) as relay:
                yield lab, server, relay
        finally:
            stop_server(server)
        assert "Traceback" not in server.log(), server.log()


async def concealment(track: rtc.RemoteTrack) -> tuple[int, int]:
    """The SDK's (libwebrtc's) inbound-rtp audio stats: samples concealed, samples received, so far."""
    for stats in await track.get_stats():
        if stats.HasField("inbound_rtp"):
            return stats.inbound_rtp.inbound.concealed_samples, stats.inbound_rtp.inbound.total_samples_received
    return 0, 0


async def rtp_losses(pc) -> tuple[int, int]:
    """aiortc's inbound-rtp audio stats: packets missing from the sequence numbers it got, packets received."""
    for stats in (await pc.getStats()).values():
        if stats.type == "inbound-rtp" and stats.kind == "audio":
            return stats.packetsLost, stats.packetsReceived
    return 0, 0


def missing_frames(pts: list[int]) -> float:
    """The share of 20 ms frames between the first and the last of `pts` (aiortc's decoded frames' RTP timestamps)
    that it never played: a gap in the timestamps."""
    if len(pts) < 2:
        return 1.0
    expected = (pts[-1] - pts[0]) // FRAME + 1
    return 1 - len(set(pts)) / expected


async def test_red_tone_heard_whole_through_a_lossy_uplink(lossy_lab) -> None:
    """Both listeners conceal or miss < 5 % of the tone over WINDOW_S: the Python SDK by its concealed samples
    (libwebrtc's concealedSamples / totalSamplesReceived over the window), aiortc, which has no concealment, by the
    packets missing from the sequence numbers it received (its inbound-rtp packetsLost / (packetsLost +
    packetsReceived) over the window); the gaps in its decoded frames' timestamps stay under MAX_PLAIN_GAPS. The
    relay lost ~10 % of the publisher's RTP and tern rebuilt (red_recovered) for aiortc all but those whose next
    packet was lost too (libwebrtc repeats one frame) and those before it subscribed.

    Measured (RED on / off): the SDK conceals 1.9 % / 10.7 %, aiortc misses 2.0 % / 11.4 % of the packets and
    8.9 % / 46 % of the frames."""
    lab, server, relay = lossy_lab
    listener = await connect(server, "red-listener", ROOM)
    plain, _ = await AiortcSubscriber.join(server.url, server.token("plain-listener", ROOM))
    publisher = asyncio.create_task(lab.run_client(
        "--url", server.url, "--token", server.token("tone", ROOM), "--audio-only", "--red", "on",
        "--seconds", str(PUBLISH_S), script="lab_publisher.py", timeout=PUBLISH_S))
    heard: list[np.ndarray] = []
    playing = None
    try:
        track = (await wait_for_tracks(listener, 1))["audio"]
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)

        async def play() -> None:  # the SDK decodes (and conceals) as its audio is pulled, as a speaker would
            async for event in stream:
                heard.append(np.frombuffer(bytes(event.frame.data), dtype=np.int16).astype(np.float64))

        playing = asyncio.create_task(play())
        await until(lambda: len(plain.audio_pts) > 0 or publisher.done(), timeout=15)
        await asyncio.sleep(SETTLE_S)
        concealed, received = await concealment(track)
        missing, got = await rtp_losses(plain.pc)
        first = len(plain.audio_pts)
        await asyncio.sleep(WINDOW_S)
        concealed_end, received_end = await concealment(track)
        missing_end, got_end = await rtp_losses(plain.pc)
        plain_pts = plain.audio_pts[first:]
        published = await publisher
    finally:
        if playing is not None:
            playing.cancel()
            await asyncio.gather(playing, return_exceptions=True)
            await stream.aclose()
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        await plain.close()
        await listener.disconnect()
    counters = server.counters()
    lost = relay.dropped_rtp / max(1, relay.dropped_rtp + relay.sent_rtp)
    sdk_concealed = (concealed_end - concealed) / max(1, received_end - received)
    plain_lost = (missing_end - missing) / max(1, missing_end - missing + got_end - got)
    print(f"relay lost {relay.dropped_rtp} of {relay.dropped_rtp + relay.sent_rtp} RTP packets ({lost:.1%}); "
          f"sdk concealed {sdk_concealed:.2%} of {received_end - received} samples; aiortc missed "
          f"{plain_lost:.2%} of {got_end - got} packets, played {len(plain_pts)} frames, "
          f"{missing_frames(plain_pts):.2%} missing; red_received {counters.get('red_received')}, "
          f"red_recovered {counters.get('red_recovered')}")
    assert published["connected"] and "error" not in published, published

    assert 0.05 < lost < 0.2  # the link is lossy
    assert counters["red_received"] > PUBLISH_S * 25, counters  # the publisher sent RED (50 packets a second)
    assert counters["subscriptions_red"] == 1 and counters["subscriptions_red_stripped"] == 1, counters
    # Most lost packets were rebuilt for aiortc (not those before it subscribed, nor two in a row at depth 1).
    assert counters["red_recovered"] >= relay.dropped_rtp / 2, (counters, relay.dropped_rtp)

    assert received_end - received > WINDOW_S * SAMPLE_RATE * 0.8
    assert sdk_concealed < 0.05
    assert got_end - got > WINDOW_S * 50 * 0.8 and plain_lost < 0.05
    assert len(plain_pts) > WINDOW_S * 50 / 2 and missing_frames(plain_pts) < MAX_PLAIN_GAPS
    assert abs(dominant_frequency(np.concatenate(heard)[-SAMPLE_RATE:]) - TONE_HZ) < 5
    assert abs(dominant_frequency(np.concatenate(plain.audio)[-SAMPLE_RATE:]) - TONE_HZ) < 5
