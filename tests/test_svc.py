"""VP9 SVC: one stream carrying spatial and temporal layers, selected per subscriber from the VP9 payload descriptor
(RFC 9628). A subscriber capped to a spatial/temporal layer gets only the frames at or below it, as one stream
without holes (consecutive sequence numbers), each picture ending with the RTP marker on the last packet of the
highest spatial layer forwarded; spatial layers go down at once and up only at a frame without inter-picture
dependency (the keyframe's layers in L3T3_KEY).

The parser gets random and truncated input (hypothesis); the Forwarder and Munger run in-process
(engine.harness, as tests/test_temporal.py) on synthetic L3T3_KEY and L3T3 streams; the allocator's prices come
from the stream's per-layer bytes; last, LiveKit's Python SDK publishes AV1 L3T3 to a Python subscriber through a
server (its VP9 L3T3_KEY plays in tests/test_lab_svc.py; tests/test_svc_browser.py has the JS SDK in Chromium)."""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st
from livekit import rtc as lk
from livekit.protocol import models, rtc as lk_rtc

from engine.codecs.describe import is_keyframe
from engine.codecs.vp9 import vp9_descriptor
from engine.harness import DownTrackHarness
from media import decoded_video, matches_card, test_card as card_rgba, wait_for_tracks
from signaling.peer.sdp import Codec
from signaling.rtc.publication import (BITRATE_WINDOW_S, BITRATE_WINDOWS, DEFAULT_LAYER_BPS, TrackPublication,
                                        svc_layers)
from test_engine import (DOWN_RTX_SSRC, DOWN_SSRC, PUB_EXTMAP, Q_SSRC, SUB_MID_ID, SUB_RTX_PT, SUB_VP8_PT, VP8_PT,
                         VP8_RTX_PT, rtp as engine_rtp, setup)  # noqa: F401 (setup: the engine fixture)

PT, SSRC = 98, 0x2002
ALL = 3
# libwebrtc's three temporal layers: T0 T2 T1 T2; a T2 frame after T1 references it (no switching-up point there).
L1T3 = (0, 2, 1, 2)
UP_SWITCH = (False, True, True, False)


@dataclass
class Fields:
    """What a VP9 payload descriptor says (the parts the tests write and read back)."""

    picture_id: int | None = None
    inter_picture: bool = False
    layered: bool = True
    flexible: bool = False
    begin: bool = True
    end: bool = True
    tid: int = 0
    switching_up: bool = False
    sid: int = 0
    inter_layer: bool = False
    tl0: int = 0
    pdiffs: tuple[int, ...] = ()
    ss: tuple[tuple[int, int], ...] | None = None   # resolutions, lowest first
    gof: tuple[tuple[int, bool, tuple[int, ...]], ...] = ()   # (tid, U, pdiffs) per GOF entry


def descriptor(f: Fields) -> bytes:
    """RFC 9628 section 4.2, written independently of the parser under test."""
    first = ((0x80 if f.picture_id is not None else 0) | (0x40 if f.inter_picture else 0)
             | (0x20 if f.layered else 0) | (0x10 if f.flexible else 0) | (0x08 if f.begin else 0)
             | (0x04 if f.end else 0) | (0x02 if f.ss is not None else 0))
    out = bytearray([first])
    if f.picture_id is not None:
        out += struct.pack("!H", 0x8000 | f.picture_id) if f.picture_id > 0x7F else bytes([f.picture_id])
    if f.layered:
        out.append(f.tid << 5 | (0x10 if f.switching_up else 0) | f.sid << 1 | (1 if f.inter_layer else 0))
        if not f.flexible:
            out.append(f.tl0)
    if f.flexible and f.inter_picture:
        for i, diff in enumerate(f.pdiffs):
            out.append(diff << 1 | (1 if i < len(f.pdiffs) - 1 else 0))
    if f.ss is not None:
        out.append((len(f.ss) - 1) << 5 | 0x10 | (0x08 if f.gof else 0))
        for width, height in f.ss:
            out += struct.pack("!HH", width, height)
        if f.gof:
            out.append(len(f.gof))
            for tid, up, diffs in f.gof:
                out.append(tid << 5 | (0x10 if up else 0) | len(diffs) << 2)
                out += bytes(diffs)
    return bytes(out)


# ---- the parser

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_random_payloads_never_crash(payload: bytes) -> None:
    parsed = vp9_descriptor(payload)
    if parsed is not None:
        assert parsed["size"] <= len(payload)
    is_keyframe("vp9", payload)


fields = st.builds(
    Fields,
    picture_id=st.none() | st.integers(0, 0x7FFF),
    inter_picture=st.booleans(), layered=st.booleans(), flexible=st.booleans(), begin=st.booleans(),
    end=st.booleans(), tid=st.integers(0, 7), switching_up=st.booleans(), sid=st.integers(0, 7),
    inter_layer=st.booleans(), tl0=st.integers(0, 255),
    pdiffs=st.lists(st.integers(1, 127), min_size=1, max_size=3).map(tuple),
    ss=st.none() | st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), min_size=1,
                            max_size=8).map(tuple),
    gof=st.lists(st.tuples(st.integers(0, 7), st.booleans(), st.lists(st.integers(1, 255), max_size=3).map(tuple)),
                 max_size=8).map(tuple))


@settings(max_examples=200, deadline=None)
@given(fields, st.binary(max_size=8))
def test_written_descriptors_read_back_and_every_truncation_is_refused(f: Fields, frame: bytes) -> None:
    data = descriptor(f)
    parsed = vp9_descriptor(data + frame)
    assert parsed is not None and parsed["size"] == len(data)
    assert parsed["picture_id"] == (-1 if f.picture_id is None else f.picture_id)
    assert parsed["layered"] == f.layered and parsed["flexible"] == f.flexible
    assert parsed["inter_picture"] == f.inter_picture
    assert (parsed["begin_of_frame"], parsed["end_of_frame"]) == (f.begin, f.end)
    if f.layered:
        assert (parsed["temporal_id"], parsed["spatial_id"]) == (f.tid, f.sid)
        assert (parsed["switching_up"], parsed["inter_layer"]) == (f.switching_up, f.inter_layer)
        assert parsed["tl0picidx"] == (-1 if f.flexible else f.tl0)
    if f.ss is not None:
        assert parsed["ss_spatial_layers"] == len(f.ss)
        assert (parsed["ss_width"], parsed["ss_height"]) == f.ss[-1]
    assert parsed["is_keyframe"] == (f.begin and not f.inter_picture and (not f.layered or f.sid == 0))
    for cut in range(len(data)):
        assert vp9_descriptor(data[:cut]) is None


def test_more_than_three_reference_indices_are_refused() -> None:
    data = descriptor(Fields(flexible=True, inter_picture=True, pdiffs=(1, 2, 3)))
    assert vp9_descriptor(data) is not None
    assert vp9_descriptor(data[:-1] + bytes([data[-1] | 1, 8])) is None   # a fourth P_DIFF (N set on the third)


# ---- the Forwarder on synthetic SVC streams

@dataclass
class Out:
    seq: int
    marker: bool
    sid: int
    tid: int
    begin: bool
    end: bool
    picture_id: int


class SvcPublisher:
    """An encoder of three spatial and three temporal layers: each picture has a frame per spatial layer (S0 first)
    in `packets` packets each, all at one timestamp, the marker on the picture's last packet. L3T3_KEY (`key_svc`):
    upper layers predict from the layer below only in keyframes; L3T3: in every picture."""

    def __init__(self, key_svc: bool = True, flexible: bool = False, spatial: int = 3, packets: int = 2,
                 seq: int = 65500) -> None:
        self.key_svc, self.flexible, self.spatial, self.packets = key_svc, flexible, spatial, packets
        self.seq, self.picture_id, self.tl0, self.ts, self.index = seq, 0x7FF0, 0, 0, 0

    def picture(self, keyframe: bool = False) -> list[bytes]:
        if keyframe:
            self.index = 0
        position = self.index % len(L1T3)
        tid = L1T3[position]
        self.index += 1
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        if tid == 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        self.ts += 3000
        packets = []
        for sid in range(self.spatial):
            for i in range(self.packets):
                f = Fields(picture_id=self.picture_id, inter_picture=not keyframe, flexible=self.flexible,
                           begin=i == 0, end=i == self.packets - 1, tid=tid, switching_up=UP_SWITCH[position],
                           sid=sid, inter_layer=sid > 0 and (keyframe or not self.key_svc), tl0=self.tl0,
                           pdiffs=(1 if tid else 4,),
                           ss=((320, 180), (640, 360), (1280, 720))[:self.spatial] if keyframe and sid == 0 and i == 0
                           else None)
                last = sid == self.spatial - 1 and i == self.packets - 1
                packets.append(struct.pack("!BBHII", 0x80, (0x80 if last else 0) | PT, self.seq & 0xFFFF, self.ts,
                                           SSRC) + descriptor(f) + bytes([sid, tid, i]))
                self.seq += 1
        return packets


def parse(data: bytes) -> Out:
    d = vp9_descriptor(data[12:])
    assert d is not None
    assert data[12 + d["size"]:][:2] == bytes([d["spatial_id"], d["temporal_id"]])  # the frame data, unchanged
    return Out(struct.unpack_from("!H", data, 2)[0], bool(data[1] & 0x80), d["spatial_id"], d["temporal_id"],
               bool(d["begin_of_frame"]), bool(d["end_of_frame"]), d["picture_id"])


class Subscriber:
    def __init__(self, spatial: int = 2, temporal: int = ALL) -> None:
        self.dt = DownTrackHarness(codec="vp9", payload_type=PT)
        self.dt.set_max_layer(spatial)
        self.dt.set_max_temporal(temporal)
        self.got: list[Out] = []
        self.now = 0.0

    def send(self, publisher: SvcPublisher, pictures: int = 1, keyframe: bool = False) -> None:
        for n in range(pictures):
            for packet in publisher.picture(keyframe and n == 0):
                self.now += 0.001
                data = self.dt.push(packet, 0, self.now)
                if data is not None:
                    self.got.append(parse(data))

    def pictures(self) -> list[tuple[int, tuple[int, ...]]]:
        """(temporal id, spatial ids forwarded) per picture, in order."""
        out: list[tuple[int, tuple[int, ...]]] = []
        for packet in self.got:
            if packet.begin and (not out or packet.picture_id != self.got[self.got.index(packet) - 1].picture_id):
                out.append((packet.tid, ()))
            if packet.begin:
                out[-1] = (out[-1][0], out[-1][1] + (packet.sid,))
        return out

    def assert_decodable(self) -> None:
        """Consecutive sequence numbers; frames whole (B to E); exactly one marker per picture, on the last packet
        of its highest spatial layer."""
        for before, after in zip(self.got, self.got[1:]):
            assert after.seq == (before.seq + 1) & 0xFFFF
            assert after.begin == (before.end)                                # no frame cut short or started late
            assert before.marker == (after.picture_id != before.picture_id)  # the picture ends where the next starts
        assert self.got[-1].marker


def test_a_low_subscriber_gets_the_base_spatial_layer_with_every_picture_marked() -> None:
    publisher, sub = SvcPublisher(), Subscriber(spatial=0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 7)
    assert sub.pictures() == [(tid, (0,)) for tid in L1T3 * 2]
    assert {packet.sid for packet in sub.got} == {0}
    sub.assert_decodable()
    assert sub.dt.current_spatial == 0 and sub.dt.temporal_dropped == 8 * 2 * 2


def test_a_full_subscriber_gets_everything_unchanged() -> None:
    publisher, sub = SvcPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    assert sub.pictures() == [(tid, (0, 1, 2)) for tid in L1T3]
    sub.assert_decodable()
    assert sub.dt.temporal_dropped == 0 and sub.dt.spatial_switches == 0


def test_spatial_and_temporal_caps_combine() -> None:
    publisher, sub = SvcPublisher(), Subscriber(spatial=1, temporal=1)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 7)
    assert sub.pictures() == [(0, (0, 1)), (1, (0, 1))] * 2
    sub.assert_decodable()


def test_spatial_up_only_at_a_keyframe_in_l3t3_key() -> None:
    publisher, sub = SvcPublisher(), Subscriber(spatial=0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 2)
    sub.dt.set_max_layer(2)
    sub.send(publisher, 5)                  # delta pictures: S1/S2 reference their own earlier frames, never sent
    assert all(sids == (0,) for _, sids in sub.pictures())
    sub.send(publisher, 2, keyframe=True)
    assert sub.pictures()[-2:] == [(0, (0, 1, 2)), (2, (0, 1, 2))]
    sub.assert_decodable()


def test_a_keyframe_lifts_to_the_cap_within_the_layers_its_scalability_structure_lists() -> None:
    publisher, sub = SvcPublisher(spatial=2), Subscriber(spatial=0)
    sub.send(publisher, keyframe=True)
    sub.dt.set_max_layer(2)                  # above what the encoder sends
    sub.send(publisher, 1, keyframe=True)
    sub.send(publisher, 1)
    assert [sids for _, sids in sub.pictures()] == [(0,), (0, 1), (0, 1)]
    assert sub.dt.current_spatial == 1 and sub.dt.spatial_switches == 1
    sub.assert_decodable()                   # the marker stays the publisher's, on S1


def test_spatial_down_at_once_at_the_next_frame_at_or_below_the_cap() -> None:
    publisher, sub = SvcPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    packets = publisher.picture()
    for packet in packets[:3]:               # S0 and the first packet of S1
        sub.now += 0.001
        sub.got.append(parse(sub.dt.push(packet, 0, sub.now)))
    sub.dt.set_max_layer(0)                  # mid-picture: the S1 frame started goes on to its end
    for packet in packets[3:]:
        data = sub.dt.push(packet, 0, sub.now)
        if data is not None:
            sub.got.append(parse(data))
    sub.send(publisher, 3)
    assert [sids for _, sids in sub.pictures()] == [(0, 1, 2), (0, 1, 2), (0,), (0,), (0,)]
    sub.assert_decodable()


def test_a_cut_for_bandwidth_stops_at_once_and_resumes_at_the_keyframe() -> None:
    """The allocator's `cut` (a step-down the link cannot wait for): nothing passes until the keyframe the engine
    asks for, though the lower layer was forwarded all along: frames the link lost leave its state unknown."""
    publisher, sub = SvcPublisher(key_svc=False), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 2)
    before = len(sub.got)
    sub.dt.set_max_layer(0, cut=True)
    sub.send(publisher, 2)
    assert len(sub.got) == before and sub.dt.current_layer == -1
    sub.send(publisher, 2, keyframe=True)
    assert [sids for _, sids in sub.pictures()] == [(0, 1, 2)] * 3 + [(0,)] * 2
    sub.assert_decodable()
    assert sub.dt.current_spatial == 0 and sub.dt.spatial_switches == 1


def test_spatial_down_to_a_middle_layer_ends_the_picture_there() -> None:
    publisher, sub = SvcPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    packets = publisher.picture()
    sub.now += 0.001
    sub.got.append(parse(sub.dt.push(packets[0], 0, sub.now)))  # S0's first packet
    sub.dt.set_max_layer(1)                  # S1 has not begun: it is this picture's last forwarded layer
    for packet in packets[1:]:
        data = sub.dt.push(packet, 0, sub.now)
        if data is not None:
            sub.got.append(parse(data))
    sub.send(publisher, 2)
    assert [sids for _, sids in sub.pictures()] == [(0, 1, 2), (0, 1), (0, 1), (0, 1)]
    sub.assert_decodable()                   # S1's last packet carries the marker the dropped S2 had


def test_full_svc_down_and_up_to_a_middle_layer() -> None:
    publisher, sub = SvcPublisher(key_svc=False, flexible=True), Subscriber(spatial=1)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    sub.dt.set_max_layer(0)
    sub.send(publisher, 2)
    sub.dt.set_max_layer(1)
    sub.send(publisher, 2)                   # no P=0 frame of S1 outside keyframes: stays at S0
    sub.send(publisher, 1, keyframe=True)
    assert [sids for _, sids in sub.pictures()] == [(0, 1)] * 4 + [(0,)] * 4 + [(0, 1)]
    sub.assert_decodable()


def test_temporal_up_at_a_switching_up_point_only() -> None:
    publisher, sub = SvcPublisher(spatial=2), Subscriber(temporal=0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    sub.dt.set_max_temporal(ALL)
    # T0; T2 with U (but one layer at a time); T1 with U: up; T2 without U (it references that T1): not yet; T0;
    # T2 with U: up.
    sub.send(publisher, 6)
    assert [tid for tid, _ in sub.pictures()] == [0, 0, 1, 0, 2]
    sub.assert_decodable()


def test_a_sequence_number_wrap_and_lost_packets_leave_no_other_holes() -> None:
    publisher, sub = SvcPublisher(seq=65530, packets=3), Subscriber(spatial=1)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 6)
    seqs = [packet.seq for packet in sub.got]
    assert seqs == [(65530 + i) & 0xFFFF for i in range(len(seqs))]
    assert len(seqs) == 7 * 2 * 3


# ---- the allocator's view of an SVC stream

def test_an_svc_stream_is_priced_as_stacked_spatial_layers_with_temporal_steps() -> None:
    svc_bytes = [[100, 50, 50, 0], [200, 100, 100, 0], [400, 200, 200, 0], [0, 0, 0, 0]]
    spatial, temporal = svc_layers(svc_bytes, advertised=3)
    assert spatial == [200, 600, 1400]                      # S0; S0+S1; S0+S1+S2
    assert temporal[0] == [100, 50, 50, 0] and temporal[2] == [700, 350, 350, 0]
    assert svc_layers(svc_bytes, advertised=1)[0] == [200, 600, 1400]   # layers that arrive count
    assert svc_layers([[0] * 4] * 4, advertised=3) is None  # no layer ids: a simulcast or single stream


class SvcEngine:
    """An engine whose one receiver layer carries an SVC stream growing by `per_window` bytes (spatial x temporal)
    each call."""

    def __init__(self, per_window: list[list[int]]) -> None:
        self.per_window, self.svc_bytes = per_window, [[0] * 4 for _ in range(4)]

    def receiver_stats(self, receiver_id: int) -> dict:
        self.svc_bytes = [[total + add for total, add in zip(row, adds)]
                          for row, adds in zip(self.svc_bytes, self.per_window)]
        total = sum(map(sum, self.svc_bytes))
        return {"layers": [{"bytes": total, "temporal_bytes": [total, 0, 0, 0], "svc_bytes": self.svc_bytes}]}


def test_a_publication_measures_its_svc_layers_for_the_allocator() -> None:
    request = lk_rtc.AddTrackRequest(cid="camera", type=models.TrackType.VIDEO, layers=[
        models.VideoLayer(quality=q, width=160 << q, height=90 << q) for q in range(3)])
    publication = TrackPublication(None, request)  # type: ignore[arg-type]  # the participant is not needed here
    publication.receiver_id = 1
    engine = SvcEngine([[1000, 500, 500, 0], [2000, 1000, 1000, 0], [4000, 2000, 2000, 0], [0, 0, 0, 0]])
    for window in range(BITRATE_WINDOWS + 1):
        publication.measure(engine, now=window * BITRATE_WINDOW_S)
    assert publication.layer_bitrates(engine) == (16_000, 48_000, 112_000)   # bits: 2 kB, 6 kB, 14 kB a second
    assert publication.temporal_bitrates(engine)[0] == (8_000, 12_000, 16_000)


def test_an_svc_stream_is_priced_by_its_measured_layers_not_the_bitrate_its_sdk_puts_on_each() -> None:
    """LiveKit's SDKs advertise the whole stream's bitrate (here 850 kbps) on every SVC layer: the layers are priced
    at LiveKit's presets until measured, and a layer not arriving from the one below it by the presets' ratio."""
    def publication() -> TrackPublication:
        request = lk_rtc.AddTrackRequest(cid="camera", type=models.TrackType.VIDEO, layers=[
            models.VideoLayer(quality=q, width=320 << q, height=180 << q, bitrate=850_000) for q in range(3)])
        made = TrackPublication(None, request)  # type: ignore[arg-type]  # the participant is not needed here
        made.codec, made.receiver_id = Codec(98, "VP9", 90000), 1
        return made

    assert publication().layer_bitrates(SvcEngine([[0] * 4] * 4)) == DEFAULT_LAYER_BPS
    measured = publication()
    engine = SvcEngine([[10_000, 5_000, 5_000, 0], [0] * 4, [0] * 4, [0] * 4])   # only S0 arrives: 160 kbps
    for window in range(BITRATE_WINDOWS + 1):
        measured.measure(engine, now=window * BITRATE_WINDOW_S)
    assert measured.bitrates.bps == [160_000] * 3
    assert measured.layer_bitrates(engine) == (160_000, 450_000, 1_700_000)
    engine = SvcEngine([[10_000, 5_000, 5_000, 0], [20_000, 10_000, 10_000, 0], [0] * 4, [0] * 4])  # S1 too
    measured = publication()
    for window in range(BITRATE_WINDOWS + 1):
        measured.measure(engine, now=window * BITRATE_WINDOW_S)
    assert measured.layer_bitrates(engine) == (160_000, 480_000, 480_000 * 1700 // 450)


# ---- end to end: LiveKit's Python SDK publishes VP9 L3T3_KEY to a Python subscriber through the server

SDK_WIDTH, SDK_HEIGHT = 1280, 720  # libwebrtc gives VP9 three spatial layers only from 720p on


async def _widths(track: lk.RemoteTrack, frames: int) -> list[int]:
    return [frame.width for frame in await decoded_video(track, frames=frames, timeout=20)]


@pytest.mark.parametrize("codec, mode", [("av1", "L3T3")])
async def test_python_sdk_svc_low_then_high(server, codec: str, mode: str) -> None:
    """AV1 (whose layers the Dependency Descriptor tells) from LiveKit's Python SDK to another. (The SDK's VP9
    L3T3_KEY plays in tests/test_lab_svc.py, behind a shaped link, and tests/test_svc_browser.py from Chromium.)"""
    room = f"svc-python-{codec}"
    publisher, viewer = lk.Room(), lk.Room()
    await viewer.connect(server.url, server.token("viewer", room))
    await publisher.connect(server.url, server.token("camera", room))
    source = lk.VideoSource(SDK_WIDTH, SDK_HEIGHT)
    card = card_rgba(SDK_WIDTH, SDK_HEIGHT)

    async def capture() -> None:
        while True:
            source.capture_frame(lk.VideoFrame(SDK_WIDTH, SDK_HEIGHT, lk.VideoBufferType.RGBA, card))
            await asyncio.sleep(1 / 15)

    task = asyncio.create_task(capture())
    try:
        await publisher.local_participant.publish_track(
            lk.LocalVideoTrack.create_video_track("camera", source),
            lk.TrackPublishOptions(source=lk.TrackSource.SOURCE_CAMERA, video_codec=getattr(lk.VideoCodec, codec.upper()),
                                   scalability_mode=mode))
        track = (await wait_for_tracks(viewer, 1))["video"]
        publication = next(p for p in viewer.remote_participants["camera"].track_publications.values())
        assert publication.mime_type.lower() == f"video/{codec}"
        deadline = asyncio.get_running_loop().time() + 20
        while max(await _widths(track, 5)) < SDK_WIDTH:   # the publisher's estimate climbs to all three layers
            assert asyncio.get_running_loop().time() < deadline, "the full picture never arrived"
        publication.set_video_quality(lk.VideoQuality.VIDEO_QUALITY_LOW)
        await asyncio.sleep(1)
        low = await decoded_video(track, frames=10)
        assert {frame.width for frame in low} == {SDK_WIDTH // 4}, [f.width for f in low]
        assert all(matches_card(frame) for frame in low)
        publication.set_video_quality(lk.VideoQuality.VIDEO_QUALITY_HIGH)  # up at the keyframe the server asks for
        deadline = asyncio.get_running_loop().time() + 10
        while max(await _widths(track, 5)) < SDK_WIDTH:
            assert asyncio.get_running_loop().time() < deadline, "no switch back up"
        assert matches_card((await decoded_video(track, frames=1))[0])
        if codec == "av1":  # AV1's layers are only in the Dependency Descriptor
            assert server.counters().get("dd_packets", 0) > 0
    finally:
        task.cancel()
        await publisher.disconnect()
        await viewer.disconnect()


# ---- the engine itself: its counters, the receiver's per-layer bytes, keyframe requests for a spatial up-switch

async def test_engine_forwards_the_capped_layer_and_asks_for_a_keyframe_to_go_up(setup) -> None:  # noqa: F811
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp9", VP8_PT, VP8_RTX_PT, 90000, [], [], [],
                                PUB_EXTMAP)
    downtrack = eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, DOWN_RTX_SSRC, SUB_VP8_PT, SUB_RTX_PT,
                                  {1: SUB_MID_ID})
    eng.set_target_layer(downtrack, 0)
    source = SvcPublisher(seq=1, packets=1)

    async def send(pictures: int, keyframe: bool = False) -> list[tuple[int, int]]:
        """(spatial, temporal) of each packet the subscriber got."""
        for n in range(pictures):
            for packet in source.picture(keyframe and n == 0):
                seq, ts = struct.unpack_from("!HI", packet, 2)
                publisher.send_rtp(engine_rtp(VP8_PT, seq, ts, Q_SSRC, packet[12:], [(1, b"1")],
                                              marker=bool(packet[1] & 0x80)))
                await asyncio.sleep(0.002)
        await subscriber.collect()
        return [(vp9_descriptor(p.payload)["spatial_id"], vp9_descriptor(p.payload)["temporal_id"])
                for p in subscriber.take_rtp()]

    assert await send(4, keyframe=True) == [(0, tid) for tid in L1T3]
    svc_bytes = eng.receiver_stats(receiver)["layers"][0]["svc_bytes"]
    assert all(svc_bytes[s][0] > 0 and svc_bytes[s][1] > 0 and svc_bytes[s][2] > 0 for s in range(3))
    assert eng.downtrack_stats(downtrack)["current_spatial"] == 0
    eng.set_target_layer(downtrack, 2)
    await publisher.collect(0.3)
    assert publisher.plis(Q_SSRC) >= 1            # the up-switch needs a keyframe
    assert await send(1, keyframe=True) == [(0, 0), (1, 0), (2, 0)]
    stats = eng.downtrack_stats(downtrack)
    assert stats["current_spatial"] == 2 and stats["spatial_switches"] == 1
    assert eng.stats()["drop_temporal_layer"] == 8
