"""VP8 temporal layers: a DownTrack capped to a lower temporal layer gets only the frames of that layer and below,
switching down at the next frame and up only where the decoder can follow (a layer sync frame or a keyframe), and
what it gets is one stream without holes: consecutive sequence numbers, consecutive picture ids, TL0PICIDX as sent.

The Forwarder and the Munger run in-process (engine.harness, as tests/test_forwarder.py); one test runs the engine
itself for its counters and the receiver's per-temporal-layer byte counts; the last one has LiveKit's Python SDK
publish and subscribe through a whole server."""
from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

import uvicorn
from hypothesis import given, settings, strategies as st
from livekit import api, rtc

from conftest import API_KEY, API_SECRET, free_port
from engine.harness import DownTrackHarness
from media import each_frame_for, wait_for_tracks
from netlab import HEIGHT, WIDTH, DetailedVideo
from signaling.app import create_app
from signaling.config import Config, RtcConfig
from signaling.node import Node
from signaling.rtc.allocator import TOP_TEMPORAL, VideoDemand
from signaling.rtc.publication import BITRATE_WINDOW_S, BITRATE_WINDOWS
from test_engine import Q_SSRC, add_video, rtp, setup  # noqa: F401 (setup: the engine fixture)

PT, SSRC, OUT_SSRC, OUT_PT = 96, 0x1001, 0xD0D0, 100
ALL = 3  # the cap meaning every temporal layer (engine MAX_TEMPORAL - 1)
# libwebrtc's three-layer VP8 pattern (L1T3): T0 T2 T1 T2, repeating.
L1T3 = (0, 2, 1, 2)


def descriptor(picture_id: int, tl0: int, tid: int | None, sync: bool, start: bool) -> bytes:
    """RFC 7741 descriptor: X, S on a frame's first packet, 15-bit picture id, TL0PICIDX and TID/Y when `tid`."""
    extension = 0xC0 | (0x20 if tid is not None else 0)
    out = bytes([0x80 | (0x10 if start else 0), extension, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF,
                 tl0 & 0xFF])
    if tid is not None:
        out += bytes([tid << 6 | (0x20 if sync else 0)])
    return out


@dataclass
class Frame:
    tid: int | None
    sync: bool = False
    keyframe: bool = False
    packets: int = 1


class Publisher:
    """Numbers frames as an encoder with temporal layers does: one picture id per frame, TL0PICIDX counting T0
    frames, one timestamp per frame, consecutive sequence numbers."""

    def __init__(self, seq: int = 1000, picture_id: int = 32700, tl0: int = 250) -> None:
        self.seq, self.picture_id, self.tl0, self.ts = seq, picture_id, tl0, 0

    def frame(self, frame: Frame) -> list[bytes]:
        if frame.tid in (0, None):
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.ts += 3000
        packets = []
        for i in range(frame.packets):
            header = descriptor(self.picture_id, self.tl0, frame.tid, frame.sync, start=i == 0)
            body = (b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if frame.keyframe else b"\x01\x00\x00") if i == 0 \
                else b"\x55\x55"
            last = i == frame.packets - 1
            packets.append(struct.pack("!BBHII", 0x80, (0x80 if last else 0) | PT, self.seq & 0xFFFF, self.ts, SSRC)
                           + header + body)
            self.seq += 1
        return packets


@dataclass
class Out:
    seq: int
    picture_id: int = -1
    tl0: int = -1
    tid: int = -1
    start: bool = False
    padding: bool = False    # a padding-only packet (no payload) holding a late dropped packet's number


def parse(data: bytes) -> Out:
    seq = struct.unpack_from("!H", data, 2)[0]
    if data[0] & 0x20:
        assert data[-1] == len(data) - 12 == 1 and not data[1] & 0x80  # one byte of padding, no marker
        return Out(seq, padding=True)
    payload = data[12:]
    return Out(seq, ((payload[2] & 0x7F) << 8) | payload[3], payload[4], payload[5] >> 6, bool(payload[0] & 0x10))


class Subscriber:
    def __init__(self) -> None:
        self.dt = DownTrackHarness(ssrc=OUT_SSRC, payload_type=OUT_PT)
        self.got: list[Out] = []
        self.now = 0.0

    def push(self, packet: bytes) -> Out | None:
        self.now += 0.01
        data = self.dt.push(packet, 0, self.now)
        out = parse(data) if data is not None else None
        if out is not None:
            self.got.append(out)
        return out

    def send(self, publisher: Publisher, *frames: Frame) -> None:
        for frame in frames:
            for packet in publisher.frame(frame):
                self.push(packet)

    def tids(self) -> list[int]:
        """The temporal id of each frame received, in order."""
        return [p.tid for p in self.got if p.start]

    def assert_seamless(self) -> None:
        """No sequence number missing, a new picture id exactly at each new frame, TL0PICIDX only ever +0 or +1."""
        for before, after in zip(self.got, self.got[1:]):
            assert after.seq == (before.seq + 1) & 0xFFFF
        media = [p for p in self.got if not p.padding]
        for before, after in zip(media, media[1:]):
            assert after.picture_id == (before.picture_id + (1 if after.start else 0)) & 0x7FFF
            assert (after.tl0 - before.tl0) & 0xFF == (1 if after.start and after.tid == 0 else 0)


def pattern(cycles: int, packets: int = 1) -> list[Frame]:
    return [Frame(tid, sync=cycle == 0 and tid > 0, packets=packets) for cycle in range(cycles) for tid in L1T3]


def test_a_base_layer_subscriber_gets_every_fourth_frame_as_one_seamless_stream() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.dt.set_max_temporal(0)
    sub.send(publisher, Frame(0, keyframe=True, packets=3), *pattern(5, packets=2))
    assert sub.tids() == [0] * 6                       # the keyframe, then each cycle's T0
    assert len(sub.got) == 3 + 5 * 2
    assert sub.got[0].seq == 1000 and sub.got[0].picture_id == 32701
    sub.assert_seamless()                              # picture ids 32701.. wrap past 32767 without a jump
    assert sub.dt.temporal_dropped == 5 * 3 * 2 and sub.dt.temporal_padding == 0


def test_middle_layer_gets_half_the_frames() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.dt.set_max_temporal(1)
    sub.send(publisher, Frame(0, keyframe=True), *pattern(4))
    assert sub.tids() == [0] + [0, 1] * 4
    sub.assert_seamless()


def test_streams_without_temporal_ids_are_never_dropped() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.dt.set_max_temporal(0)
    sub.send(publisher, Frame(None, keyframe=True), *[Frame(None) for _ in range(6)])
    assert len(sub.got) == 7 and sub.dt.temporal_dropped == 0


def test_down_at_the_next_frame_start_never_inside_a_frame() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.send(publisher, Frame(0, keyframe=True), Frame(2, sync=True))
    first, second = publisher.frame(Frame(1, sync=True, packets=2))
    sub.push(first)
    sub.dt.set_max_temporal(0)                        # mid-frame: the T1 frame still completes
    sub.push(second)
    sub.send(publisher, Frame(2), Frame(0), Frame(2), Frame(1))
    assert sub.tids() == [0, 2, 1, 0]
    assert sub.dt.current_temporal == 0 and sub.dt.temporal_switches == 1
    sub.assert_seamless()


def test_up_only_at_a_layer_sync_frame_or_a_keyframe() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.dt.set_max_temporal(0)
    sub.send(publisher, Frame(0, keyframe=True), *pattern(1))
    sub.dt.set_max_temporal(ALL)
    # Without Y, a T1/T2 frame may reference an earlier frame of its layer that this subscriber never got.
    sub.send(publisher, Frame(2), Frame(1), Frame(2), Frame(0))
    assert sub.tids() == [0, 0, 0]
    # One layer at a time: a T2 sync frame cannot lift T0 to T2, as later T2 frames reference the latest T1 too.
    sub.send(publisher, Frame(2, sync=True), Frame(1, sync=True), Frame(2), Frame(0), Frame(2, sync=True), Frame(1))
    assert sub.tids() == [0, 0, 0, 1, 0, 2, 1]
    sub.dt.set_max_temporal(0)
    sub.send(publisher, Frame(2), Frame(0))
    sub.dt.set_max_temporal(ALL)
    sub.send(publisher, Frame(2), Frame(1), Frame(0, keyframe=True), Frame(2), Frame(1))
    assert sub.tids()[-4:] == [0, 0, 2, 1]             # a keyframe resets every reference: all layers at once
    sub.assert_seamless()


def test_a_late_packet_takes_the_number_its_position_kept() -> None:
    publisher, sub = Publisher(seq=65530), Subscriber()
    sub.dt.set_max_temporal(0)
    key = publisher.frame(Frame(0, keyframe=True, packets=2))
    t2 = publisher.frame(Frame(2, sync=True))
    t1 = publisher.frame(Frame(1, sync=True))
    t0 = publisher.frame(Frame(0, packets=2))
    for packet in (key[0], t2[0], t1[0], t0[0], key[1], t0[1]):  # key[1] is late (the publisher's RTX, say)
        sub.push(packet)
    assert [(p.seq, p.picture_id) for p in sub.got] == [(65530, 32701), (65532, 32702), (65531, 32701),
                                                       (65533, 32702)]
    # A late packet of a dropped frame cannot be closed up behind (a later one was sent): a padding packet takes
    # its number, so the subscriber sees no loss and NACKs nothing.
    t2 = publisher.frame(Frame(2, packets=2))
    t0 = publisher.frame(Frame(0))
    for packet in (t2[0], t0[0], t2[1]):
        sub.push(packet)
    assert [(p.seq, p.padding) for p in sub.got[-2:]] == [(65535, False), (65534, True)]
    assert sub.dt.temporal_padding == 1 and sub.dt.temporal_dropped == 4


def test_padding_and_temporal_drops_share_the_offset() -> None:
    publisher, sub = Publisher(), Subscriber()
    sub.dt.set_max_temporal(0)
    sub.send(publisher, Frame(0, keyframe=True), Frame(2))
    sub.push(struct.pack("!BBHII", 0xA0, PT, publisher.seq, publisher.ts, SSRC) + bytes(99) + b"\x64")
    publisher.seq += 1
    sub.send(publisher, Frame(1), Frame(0))
    assert [p.seq for p in sub.got] == [1000, 1001]
    sub.assert_seamless()


# ---------------------------------------------------------------- property

frames = st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.booleans(), st.integers(1, 3),
                            st.sampled_from([None, None, None, 0, 1, 2, 3])), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 65535), st.integers(0, 0x7FFF))
def test_output_numbering_stays_contiguous_under_any_pattern_and_cap(script, seq, picture_id) -> None:
    """Random temporal ids, sync bits, frame sizes and cap changes (between frames): every packet sent follows the
    previous one; picture ids advance by one per frame sent; a frame is sent whole or not at all; a frame of T>0 is
    sent only if what it references was: for a sync frame the base layer, otherwise also the latest frame of each
    layer 1..T since the keyframe."""
    publisher, sub = Publisher(seq, picture_id), Subscriber()
    sub.send(publisher, Frame(0, keyframe=True))
    sent_last: dict[int, bool] = {}  # per temporal id: whether its latest frame was sent
    for tid, sync, packets, cap in script:
        if cap is not None:
            sub.dt.set_max_temporal(cap)
        before = len(sub.got)
        sub.send(publisher, Frame(tid, sync=sync, packets=packets))
        sent = len(sub.got) - before
        assert sent in (0, packets)
        if sent and tid > 0 and not sync:
            assert all(sent_last.get(layer, True) for layer in range(1, tid + 1))
        sent_last[tid] = bool(sent)
    sub.assert_seamless()
    assert sub.dt.temporal_padding == 0


@settings(max_examples=200, deadline=None)
@given(frames, st.lists(st.integers(1, 6), max_size=20))
def test_reordered_input_never_duplicates_or_misplaces_an_output_number(script, swaps) -> None:
    """With late packets, the numbers sent (media, and padding in the place of late dropped packets) are still
    exactly one contiguous range, and they keep the input order of the packets they stand for."""
    publisher, sub = Publisher(), Subscriber()
    packets = publisher.frame(Frame(0, keyframe=True))
    caps = {}
    for tid, sync, size, cap in script:
        if cap is not None:
            caps[len(packets)] = cap
        packets += publisher.frame(Frame(tid, sync=sync, packets=size))
    order = list(range(len(packets)))
    for i, distance in enumerate(swaps):  # move some packets later by a few places (never the keyframe's first)
        at = 1 + (i * 7) % max(1, len(order) - 1)
        if at + distance < len(order):
            order.insert(at + distance, order.pop(at))
    inputs = {}
    for index in order:
        if index in caps:
            sub.dt.set_max_temporal(caps[index])
        out = sub.push(packets[index])
        if out is not None:
            inputs[out.seq] = index
    seqs = sorted(inputs, key=lambda s: (s - 1000) & 0xFFFF)
    assert len(seqs) == len(sub.got)                       # unique
    span = (seqs[-1] - seqs[0]) & 0xFFFF if seqs else -1
    assert span + 1 == len(seqs) and sub.dt.dropped == 0
    assert [inputs[s] for s in seqs] == sorted(inputs[s] for s in seqs)


# ---------------------------------------------------------------- engine

async def test_engine_counts_temporal_drops_and_bytes_per_temporal_layer(setup) -> None:  # noqa: F811
    eng, publisher, subscriber, _ = setup
    receiver, downtrack = add_video(eng, publisher, subscriber, [])
    eng.set_target_layer(downtrack, 2, temporal=0)
    source = Publisher(seq=1)
    # L1T3, then a T2 frame whose first packet comes late, then a T0 frame
    frames = [Frame(0, keyframe=True)] + pattern(3) + [Frame(2, packets=2), Frame(0)]
    sizes = [0, 0, 0]
    packets = []
    for frame in frames:
        for packet in source.frame(frame):
            seq, ts = struct.unpack_from("!HI", packet, 2)
            packets.append(rtp(PT, seq, ts, Q_SSRC, packet[12:], [(1, b"1")]))  # the mid the receiver is found by
            sizes[frame.tid] += len(packets[-1])
    packets[-3], packets[-2] = packets[-2], packets[-3]
    for data in packets:
        publisher.send_rtp(data)
        await asyncio.sleep(0.002)  # one packet per receive batch, in this order
    await subscriber.collect()
    got = subscriber.take_rtp()
    assert [p.seq for p in got] == [1, 2, 3, 4, 5, 6]
    assert [p.payload for p in got][4] == b""  # the late T2 packet's number, as padding
    assert [((p.payload[2] & 0x7F) << 8) | p.payload[3] for p in got if p.payload] == [32701 + i for i in range(5)]
    stats = eng.stats()
    assert stats["drop_temporal_layer"] == 11 and stats["temporal_padding"] == 1
    assert eng.downtrack_stats(downtrack)["temporal_dropped"] == 11
    assert eng.downtrack_stats(downtrack)["max_temporal"] == 0
    assert eng.receiver_stats(receiver)["layers"][0]["temporal_bytes"] == sizes + [0]
    eng.set_target_layer(downtrack, 2)  # the temporal cap stays where it was
    assert eng.downtrack_stats(downtrack)["max_temporal"] == 0
    await asyncio.sleep(0)


# ---------------------------------------------------------------- end to end, LiveKit Python SDK

class InProcessServer:
    """tern's node and HTTP front on this test's event loop (as signaling/server.py runs them), so the test can pin
    a subscriber's bandwidth estimate; clients reach it exactly as they reach `tern --dev`."""

    def __init__(self) -> None:
        self.config = Config(port=free_port(), keys={API_KEY: API_SECRET}, development=True,
                             rtc=RtcConfig(udp_port=free_port(socket.SOCK_DGRAM), tcp_port=free_port()))
        self.node = Node(self.config)
        self.url = f"ws://127.0.0.1:{self.config.port}"
        self._http: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> InProcessServer:
        self.node.start(asyncio.get_running_loop())
        self._http = uvicorn.Server(uvicorn.Config(create_app(self.node), host="127.0.0.1", port=self.config.port,
                                                   ws="websockets-sansio", lifespan="off", log_level="warning"))
        self._task = asyncio.create_task(self._http.serve())
        while not self._http.started:
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.node.shutdown()
        self._http.should_exit = True
        await self._task
        await self.node.stop()

    def token(self, identity: str, room: str) -> str:
        grants = api.VideoGrants(room_join=True, room=room)
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(grants).to_jwt()

    def participant(self, identity: str):
        return next(p for p in self.node.store.participants() if p.identity == identity)


async def decoded_fps(track: rtc.RemoteTrack, seconds: float) -> tuple[float, int, int]:
    """Frames a subscriber decoded per second over `seconds`, and the last frame's size."""
    frames: list[tuple[int, int]] = []
    await each_frame_for(track, seconds, lambda frame: frames.append((frame.width, frame.height)))
    return len(frames) / seconds, *(frames[-1] if frames else (0, 0))


async def inbound(track: rtc.RemoteTrack):
    return next(s.inbound_rtp for s in await track.get_stats() if s.HasField("inbound_rtp"))


async def test_a_subscriber_capped_to_lower_temporal_layers_decodes_fewer_frames_without_loss() -> None:
    """libwebrtc's VP8 simulcast (the SDK's publisher) sends three temporal layers on each simulcast layer. Capped by
    its allocation to the lowest layer's T0, then T0+T1, a subscriber decodes 320x180 at about a quarter, then half,
    of that layer's full frame rate, sees no lost packet, and gets 720p back when the cap is lifted."""
    async with InProcessServer() as server:
        publisher = rtc.Room()
        await publisher.connect(server.url, server.token("alice", "temporal"))
        video = DetailedVideo(publisher)
        subscriber = rtc.Room()
        try:
            await video.start()
            await subscriber.connect(server.url, server.token("bob", "temporal"))
            track = (await wait_for_tracks(subscriber, 1))["video"]
            bob = server.participant("bob")
            [subscription] = bob.subscriptions.values()
            for _ in range(BITRATE_WINDOWS + 2):  # what a bandwidth estimate's arrival does: measure the layers
                subscription.publication.measure(server.node.engine)
                await asyncio.sleep(BITRATE_WINDOW_S)
            full, width, height = await decoded_fps(track, 3)
            assert (width, height) == (WIDTH, HEIGHT)
            temporal = subscription.publication.temporal_bitrates(server.node.engine)
            assert len(temporal) == 3 and all(len(layer) == 3 for layer in temporal), temporal  # L1T3 everywhere
            ladder = VideoDemand(0, False, 2, subscription.publication.layer_bitrates(server.node.engine),
                                 tuple(temporal)).ladder
            price = {(spatial, t): bps for spatial, t, bps in ladder}
            print(f"ladder {ladder}")
            bob.subscriber.transport.on_bandwidth = lambda *args, **kwargs: None  # the estimate is pinned below:
            bob.allocator.prober = None  # neither events nor the allocator's own ticks read the engine's
            before = await inbound(track)
            bob.allocator.on_estimate((price[(0, TOP_TEMPORAL)] + price[(1, TOP_TEMPORAL)]) / 2)  # all of q
            await asyncio.sleep(1)  # q's next keyframe
            lowest, width, height = await decoded_fps(track, 3)
            assert (width, height) == (WIDTH // 4, HEIGHT // 4)
            figures = {"full": full, "q": lowest}
            now = [0.0]
            bob.allocator.clock = lambda: now[0]  # each step is taken past any hold time
            for name, step, above in (("T0", (0, 0), (0, 1)), ("T0+T1", (0, 1), (0, TOP_TEMPORAL))):
                now[0] += 60
                # just below the step above: down to T0 at once, and up from T0 with the upgrade margin
                bob.allocator.on_estimate(price[above] * 0.95)
                assert server.node.engine.downtrack_stats(subscription.downtrack_id)["max_temporal"] == step[1]
                await asyncio.sleep(1)  # the next sync frame
                figures[name], width, height = await decoded_fps(track, 4)
                assert (width, height) == (WIDTH // 4, HEIGHT // 4)
            now[0] += 60
            bob.allocator.on_estimate(10_000_000)  # above 720p as an upgrade prices it (advertised 3 Mbit/s, keyframe)
            await asyncio.sleep(1)
            figures["uncapped"], _, _ = await decoded_fps(track, 3)
            after = await inbound(track)
            stats = server.node.engine.stats()
            print(f"decoded fps {figures}; temporal drops {stats['drop_temporal_layer']}, padded "
                  f"{stats['temporal_padding']}; subscriber lost {after.received.packets_lost - before.received.packets_lost}, "
                  f"freezes {after.inbound.freeze_count - before.inbound.freeze_count}")
            assert 0.15 * lowest <= figures["T0"] <= 0.4 * lowest
            assert 0.35 * lowest <= figures["T0+T1"] <= 0.65 * lowest
            assert figures["uncapped"] >= 0.7 * full
            assert stats["drop_temporal_layer"] > 0
            # No hole in the numbering: nothing lost. (Freezes are not asserted: 180p at 3.75 fps is one frame per
            # 267 ms, which libwebrtc counts as a freeze by definition, more than 3 x the average interval before.)
            assert after.received.packets_lost == before.received.packets_lost
        finally:
            await video.stop()
            await subscriber.disconnect()
            await publisher.disconnect()
