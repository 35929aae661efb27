"""AV1/VP9 SVC selected by the Dependency Descriptor (engine/forwarder.pyx dd_accept): per subscriber, only the
frames of the decode target its caps allow whose chain is intact, as one stream without holes; spatial layers go
down at the next temporal unit and up only where the target's chain restarts (a keyframe); temporal layers up once
the frames referenced have passed. The Forwarder and Munger run in-process (engine.harness, as tests/test_svc.py
does for VP9's payload descriptor) on synthetic streams shaped as libwebrtc's L3T3 and L3T3_KEY: every packet's
descriptor as libwebrtc writes it (the structure on the keyframe's first packet, in the two-byte header form),
every frame's references and chain diffs from the frames actually sent. Each subscriber's output is read back by a
fresh descriptor parser, as the subscriber's would, and every frame it gets must have all its references."""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from engine.codecs.dd import DependencyDescriptorReader
from engine.harness import DownTrackHarness
from engine.rtp import extension
from signaling.peer.sdp import EXT_DEPENDENCY_DESCRIPTOR
from test_dependency_descriptor import Frame, Structure, Template, write
from test_engine import DOWN_RTX_SSRC, DOWN_SSRC, SUB_RTX_PT, nack, setup  # noqa: F401 (setup: the engine fixture)

PT, SSRC, DD_ID, SUB_DD_ID = 45, 0x3003, 12, 4
L1T3 = (0, 2, 1, 2)   # libwebrtc's temporal pattern
ALL = 3
# Nine decode targets, S0T0 .. S2T2 (index 3 * spatial + temporal), one chain per spatial layer. A template's DTIs
# say which targets its layer serves (those at or above it in both ids: what makes a target's layers); the frames
# write their own DTIs, references and chain diffs.
STRUCTURE = Structure(offset=7, decode_targets=9,
                      templates=[Template(s, t, [int(ds >= s and dt >= t) for ds in range(3) for dt in range(3)], [],
                                          [0, 0, 0]) for s in range(3) for t in range(3)],
                      protected_by=[0, 0, 0, 1, 1, 1, 2, 2, 2], resolutions=[(320, 180), (640, 360), (1280, 720)])
# L3T3_KEY as libwebrtc describes it: per spatial layer a keyframe template (serving its own and the upper layers'
# targets: they predict from it) and delta templates T0, T1, T2 serving only that layer's targets.
KEY_STRUCTURE = Structure(offset=7, decode_targets=9,
                          templates=[Template(s, t, [int(ds >= s if key else ds == s and dt >= t)
                                                     for ds in range(3) for dt in range(3)], [], [0, 0, 0])
                                     for s in range(3) for key, t in ((True, 0), (False, 0), (False, 1), (False, 2))],
                          protected_by=STRUCTURE.protected_by, resolutions=STRUCTURE.resolutions)


def targets(*layers: tuple[int, int]) -> int:
    """The mask of decode targets (spatial, temporal)."""
    return sum(1 << (3 * spatial + temporal) for spatial, temporal in layers)


def two_byte_extension(ext_id: int, value: bytes) -> bytes:
    block = bytes([ext_id, len(value)]) + value
    block += bytes(-len(block) % 4)
    return struct.pack("!HH", 0x1000, len(block) // 4) + block


class DdPublisher:
    """An AV1 encoder of three spatial and three temporal layers. Full SVC (L3T3): upper spatial frames reference
    the layer below in every picture; `key_svc` (L3T3_KEY, KEY_STRUCTURE): only in keyframes. T0 frames form the
    chains (chain c: the T0 frames of spatial layers up to c; with `key_svc`, of layer c alone after the keyframe).
    `ssrc`: its RTP stream."""

    def __init__(self, key_svc: bool = False, packets: int = 2, seq: int = 65530, frame: int = 65530,
                 ssrc: int = SSRC) -> None:
        self.key_svc, self.packets, self.seq, self.frame, self.ssrc = key_svc, packets, seq, frame, ssrc
        self.structure = KEY_STRUCTURE if key_svc else STRUCTURE
        self.ts, self.index = 0, 0
        self.last: dict[tuple[int, int], int] = {}     # (spatial, temporal) -> its latest frame number
        self.chain_last: list[int | None] = [None] * 3
        self.frames: dict[int, list[int]] = {}         # frame number -> frame numbers it references

    def picture(self, keyframe: bool = False, lose: tuple[int, ...] = (), active: int | None = None) -> list[bytes]:
        """A temporal unit's packets, S0 first; the frames of spatial ids in `lose` are left out (lost upstream);
        `active`: an active decode targets mask on its first packet."""
        if keyframe:
            self.index, self.last, self.chain_last = 0, {}, [None] * 3
        t = L1T3[self.index % 4]
        self.index += 1
        self.ts += 3000
        packets = []
        for s in range(3):
            number = self.frame & 0xFFFF
            self.frame += 1
            refs = []
            if s and (keyframe or not self.key_svc):
                refs.append(self.last[(s - 1, t)])
            if not keyframe:   # the latest frame of this spatial layer at a temporal layer up to t (T0: below none)
                candidates = [self.last[(s, lower)] for lower in range(t + (t == 0)) if (s, lower) in self.last]
                refs.append(max(candidates, key=lambda n: (n - number) & 0xFFFF))
            fdiffs = sorted({(number - ref) & 0xFFFF for ref in refs})
            chains = [0 if last is None else (number - last) & 0xFFFF for last in self.chain_last]
            dtis = [self.dti(s, t, ds, dt, keyframe) for ds in range(3) for dt in range(3)]
            self.frames[number] = [(number - f) & 0xFFFF for f in fdiffs]
            self.last[(s, t)] = number
            for c in range(3):
                if t == 0 and (s == c or (s < c and (keyframe or not self.key_svc))):
                    self.chain_last[c] = number
            if s in lose:
                self.seq += self.packets
                continue
            index = 4 * s + (0 if keyframe else 1 + t) if self.key_svc else 3 * s + t
            for i in range(self.packets):
                dd = write(self.structure, Frame(index, number, start=i == 0, end=i == self.packets - 1,
                                                 attach=keyframe and s == 0 and i == 0,
                                                 active=active if s == 0 and i == 0 else None, dtis=dtis,
                                                 fdiffs=fdiffs, chains=chains))
                aggregation = 0x08 if keyframe and s == 0 and i == 0 else 0   # N: a new coded video sequence
                last = s == 2 and i == self.packets - 1
                packets.append(struct.pack("!BBHII", 0x90, (0x80 if last else 0) | PT, self.seq & 0xFFFF, self.ts,
                                           self.ssrc) + two_byte_extension(DD_ID, dd) + bytes([aggregation, s, t, i]))
                self.seq += 1
        return packets

    def dti(self, s: int, t: int, ds: int, dt: int, keyframe: bool) -> int:
        """Whether decode target (ds, dt) needs frame (s, t): required in its chain, discardable above T0."""
        if ds < s or dt < t or (ds > s and self.key_svc and not keyframe):
            return 0
        return 3 if t == 0 else 1


@dataclass
class Out:
    seq: int
    marker: bool
    spatial: int
    temporal: int
    frame: int
    start: bool
    end: bool
    fdiffs: list[int]
    active: int                  # the active decode targets mask the subscriber's decoder holds
    rewritten: bool              # its descriptor is not the publisher's bytes


class Subscriber:
    def __init__(self, spatial: int = 2, temporal: int = ALL) -> None:
        self.dt = DownTrackHarness(codec="av1", payload_type=PT, extmap={DD_ID: SUB_DD_ID}, extmap_allow_mixed=True,
                                   dd_id=DD_ID)
        self.dt.set_max_layer(spatial)
        self.dt.set_max_temporal(temporal)
        self.reader = DependencyDescriptorReader()
        self.got: list[Out] = []
        self.now = 0.0

    def send(self, publisher: DdPublisher, pictures: int = 1, keyframe: bool = False, lose: tuple[int, ...] = (),
             active: int | None = None):
        for n in range(pictures):
            for packet in publisher.picture(keyframe and n == 0, lose, active if n == 0 else None):
                self.now += 0.001
                data = self.dt.push(packet, 0, self.now)
                if data is not None:
                    self.got.append(self.parse(data, extension(packet, DD_ID)))

    def parse(self, data: bytes, original: bytes) -> Out:
        value = extension(data, SUB_DD_ID)
        assert value is not None, data
        d = self.reader.read(value)
        assert isinstance(d, dict), d
        payload = data[-4:]
        assert (payload[1], payload[2]) == (d["spatial_id"], d["temporal_id"])   # the frame's own data
        return Out(struct.unpack_from("!H", data, 2)[0], bool(data[1] & 0x80), d["spatial_id"], d["temporal_id"],
                   d["frame_number"], d["start_of_frame"], d["end_of_frame"], d["fdiffs"],
                   d["active_decode_targets"], value != original)

    def units(self) -> list[tuple[int, tuple[int, ...]]]:
        """(temporal id, spatial ids forwarded) per temporal unit, in order."""
        out: list[tuple[int, tuple[int, ...]]] = []
        for before, packet in zip([None, *self.got], self.got):
            if packet.start:
                if before is None or before.marker:
                    out.append((packet.temporal, ()))
                out[-1] = (out[-1][0], out[-1][1] + (packet.spatial,))
        return out

    def assert_decodable(self) -> None:
        """Consecutive sequence numbers; frames whole; the marker on the last packet of each temporal unit's highest
        frame; every frame's references forwarded before it."""
        sent: set[int] = set()
        for before, after in zip(self.got, self.got[1:]):
            assert after.seq == (before.seq + 1) & 0xFFFF
            assert after.start == before.end
            if before.end:
                assert before.marker == (after.temporal != before.temporal or after.spatial <= before.spatial)
        for packet in self.got:
            if packet.start:
                assert all((packet.frame - f) & 0xFFFF in sent for f in packet.fdiffs), (packet, sorted(sent))
                sent.add(packet.frame)
        assert self.got[-1].marker


def test_a_low_subscriber_gets_the_base_spatial_layer_with_every_unit_marked() -> None:
    publisher, sub = DdPublisher(), Subscriber(spatial=0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 7)
    assert sub.units() == [(t, (0,)) for t in L1T3 * 2]
    sub.assert_decodable()
    assert sub.dt.current_spatial == 0 and sub.dt.dd_target == 2 and sub.dt.temporal_dropped == 8 * 2 * 2


def test_a_full_subscriber_gets_everything_and_reads_the_structure() -> None:
    publisher, sub = DdPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    assert sub.units() == [(t, (0, 1, 2)) for t in L1T3]
    sub.assert_decodable()
    assert sub.reader.structure_info["resolutions"] == STRUCTURE.resolutions
    assert sub.dt.temporal_dropped == 0 and sub.dt.spatial_switches == 0 and sub.dt.dd_target == 8


def test_spatial_and_temporal_caps_combine() -> None:
    publisher, sub = DdPublisher(), Subscriber(spatial=1, temporal=1)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 7)
    assert sub.units() == [(0, (0, 1)), (1, (0, 1))] * 2
    sub.assert_decodable()


def test_spatial_up_only_where_the_chain_restarts() -> None:
    for key_svc in (False, True):
        publisher, sub = DdPublisher(key_svc=key_svc), Subscriber(spatial=0)
        sub.send(publisher, keyframe=True)
        sub.send(publisher, 2)
        sub.dt.set_max_layer(2)
        sub.send(publisher, 5)           # the upper layers' chains lost frames: no decodable frame of theirs yet
        assert {packet.spatial for packet in sub.got} == {0} and sub.dt.current_spatial == 0
        sub.send(publisher, 4, keyframe=True)
        assert sub.units()[-4:] == [(0, (0, 1, 2))] + [(t, (2,) if key_svc else (0, 1, 2)) for t in L1T3[1:]]
        sub.assert_decodable()
        assert sub.dt.spatial_switches == 1


def test_spatial_down_at_the_next_temporal_unit_in_full_svc() -> None:
    publisher, sub = DdPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 2)
    sub.dt.set_max_layer(1)
    sub.send(publisher, 2)
    sub.dt.set_max_layer(0)
    sub.send(publisher, 3)
    assert [spatial for _, spatial in sub.units()] == [(0, 1, 2)] * 3 + [(0, 1)] * 2 + [(0,)] * 3
    sub.assert_decodable()
    assert sub.dt.spatial_switches == 2


def test_k_svc_sends_only_the_layer_and_steps_down_at_a_keyframe() -> None:
    """In L3T3_KEY a delta frame serves its own spatial layer only: once a lower layer's T0 frame was not forwarded,
    its chain restarts at the next keyframe; until then the subscriber keeps the layer it decodes (the engine asks for
    the keyframe)."""
    publisher, sub = DdPublisher(key_svc=True), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 4)
    sub.dt.set_max_layer(1)
    sub.send(publisher, 2)
    assert sub.dt.current_spatial == 2 and sub.dt.spatial_switches == 0
    sub.send(publisher, 2, keyframe=True)
    assert [spatial for _, spatial in sub.units()] == [(0, 1, 2)] + [(2,)] * 6 + [(0, 1), (1,)]
    sub.assert_decodable()
    assert sub.dt.current_spatial == 1 and sub.dt.spatial_switches == 1


@pytest.mark.parametrize("key_svc", [True, False])
def test_a_cut_for_bandwidth_stops_the_layer_at_once_and_resumes_at_the_keyframe(key_svc: bool) -> None:
    """A step-down the link cannot wait for (the allocator's `cut`): the old layer's frames would fill the queue
    the keyframe must cross, so nothing passes until the keyframe, from which the lower layer continues the stream.
    In full SVC too, though the lower layer's frames were forwarded all along: the link lost packets, and a unit
    whose top frame it lost never completes at the subscriber, so the lower frames after it would not decode."""
    publisher, sub = DdPublisher(key_svc=key_svc), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 4)
    before = len(sub.got)
    sub.dt.set_max_layer(1, cut=True)
    sub.send(publisher, 2)
    assert len(sub.got) == before and sub.dt.current_layer == -1   # waiting for the keyframe the engine asks for
    sub.send(publisher, 2, keyframe=True)
    top = (2,) if key_svc else (0, 1, 2)
    assert [spatial for _, spatial in sub.units()] == [(0, 1, 2)] + [top] * 4 + [(0, 1), (1,) if key_svc else (0, 1)]
    sub.assert_decodable()
    assert sub.dt.current_spatial == 1 and sub.dt.spatial_switches == 1


def test_a_cut_lifted_before_the_keyframe_is_no_switch() -> None:
    """The layer the subscriber showed before the cut comes back with the keyframe: nothing changed for it."""
    publisher, sub = DdPublisher(key_svc=True), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 4)              # S1's chain breaks at its T0 delta frame: the cut waits for a keyframe
    sub.dt.set_max_layer(1, cut=True)
    sub.send(publisher, 2)
    sub.dt.set_max_layer(2)
    sub.send(publisher, 2, keyframe=True)
    assert [spatial for _, spatial in sub.units()] == [(0, 1, 2)] + [(2,)] * 4 + [(0, 1, 2), (2,)]
    sub.assert_decodable()
    assert sub.dt.current_spatial == 2 and sub.dt.spatial_switches == 0


def test_temporal_up_once_the_references_have_passed() -> None:
    publisher, sub = DdPublisher(), Subscriber(spatial=0, temporal=0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 4)
    sub.dt.set_max_temporal(ALL)
    sub.send(publisher, 8)
    assert [t for t, _ in sub.units()] == [0, 0] + list(L1T3 * 2)[1:] + [0]
    sub.assert_decodable()
    assert sub.dt.temporal_switches == 1


def test_a_frame_lost_upstream_is_waited_for() -> None:
    """Its NACK may still bring it: the frames referencing it pass, and its packets' numbers stay free for it."""
    publisher, sub = DdPublisher(), Subscriber(spatial=1)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    sent = len(sub.got)
    sub.send(publisher, lose=(1,))      # S1's T0 frame never arrives
    sub.send(publisher, 3)
    after = sub.got[sent:]
    assert [packet.spatial for packet in after if packet.start] == [0, 0, 1, 0, 1, 0, 1]
    assert after[2].seq == (after[1].seq + 3) & 0xFFFF   # the lost frame's two packets
    assert sub.dt.current_spatial == 1 and sub.dt.spatial_switches == 0


def test_without_a_structure_nothing_is_selected_until_the_keyframe() -> None:
    publisher, sub = DdPublisher(), Subscriber(spatial=0)
    publisher.picture(keyframe=True)     # the subscriber joined after the keyframe
    sub.send(publisher, 3)
    assert sub.got == []
    sub.send(publisher, 4, keyframe=True)
    assert sub.units() == [(t, (0,)) for t in L1T3]
    sub.assert_decodable()


def test_each_subscriber_is_told_the_decode_targets_it_gets() -> None:
    """The active decode targets mask a subscriber's decoder reads: the targets whose frames all reach it (in L3T3
    those at or below its target in both ids), on every packet; a subscriber of everything gets the publisher's
    descriptors byte for byte."""
    cases = {(0, ALL): targets((0, 0), (0, 1), (0, 2)),
             (1, ALL): targets(*((s, t) for s in range(2) for t in range(3))),
             (1, 1): targets((0, 0), (0, 1), (1, 0), (1, 1)),
             (2, 0): targets((0, 0), (1, 0), (2, 0))}
    for (spatial, temporal), mask in cases.items():
        publisher, sub = DdPublisher(), Subscriber(spatial, temporal)
        sub.send(publisher, keyframe=True)
        sub.send(publisher, 7)
        assert {packet.active for packet in sub.got} == {mask} and all(packet.rewritten for packet in sub.got)
        sub.assert_decodable()
    publisher, sub = DdPublisher(), Subscriber()
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 7)
    assert {packet.active for packet in sub.got} == {0x1FF} and not any(packet.rewritten for packet in sub.got)


def test_a_k_svc_subscriber_is_told_only_its_own_layer() -> None:
    """L3T3_KEY: after the keyframe a spatial layer's frames serve its own targets alone, so even the subscriber of
    the top layer is told the lower layers' targets are off (its decoder would otherwise wait for their frames)."""
    for spatial, layer in ((2, 2), (1, 1), (0, 0)):
        publisher, sub = DdPublisher(key_svc=True), Subscriber(spatial)
        sub.send(publisher, keyframe=True)
        sub.send(publisher, 5)
        assert {packet.active for packet in sub.got} == {targets(*((layer, t) for t in range(3)))}
        assert sub.units()[1:] == [(t, (layer,)) for t in (L1T3 * 2)[1:6]]
        sub.assert_decodable()


def test_a_restored_mask_is_written_until_a_structure_passes() -> None:
    """Going back to a target that takes every active one: the publisher's mask is written (the decoder still holds
    the narrower one) until the next keyframe's structure resets it; from then on the publisher's bytes."""
    publisher, sub = DdPublisher(), Subscriber(2, 0)
    sub.send(publisher, keyframe=True)
    sub.send(publisher, 3)
    sub.dt.set_max_temporal(ALL)
    sub.send(publisher, 8)
    before = len(sub.got)
    sub.send(publisher, 4, keyframe=True)
    restored = [packet for packet in sub.got[:before] if packet.temporal]
    assert restored and {packet.active for packet in restored} == {0x1FF} and all(p.rewritten for p in restored)
    assert {packet.active for packet in sub.got[before:]} == {0x1FF}
    assert not any(packet.rewritten for packet in sub.got[before:])
    sub.assert_decodable()


def test_the_publishers_mask_stands_and_bounds_every_subscribers() -> None:
    """The publisher turns its top layer off (one mask, then packets without one): the full subscriber follows its
    mask as sent, the low one gets its own within it."""
    full, low = Subscriber(), Subscriber(0)
    publisher = DdPublisher()
    upper_off = targets(*((s, t) for s in range(2) for t in range(3)))
    for n in range(8):
        pictures = publisher.picture(keyframe=n == 0, lose=(2,) if n >= 4 else (), active=upper_off if n == 4 else None)
        for sub in (full, low):
            for packet in pictures:
                sub.now += 0.001
                data = sub.dt.push(packet, 0, sub.now)
                if data is not None:
                    sub.got.append(sub.parse(data, extension(packet, DD_ID)))
    # (The dropped top layer leaves holes in the test publisher's sequence numbers, so no assert_decodable here.)
    masks = [packet.active for packet in full.got if packet.start and packet.spatial == 0]
    assert masks == [0x1FF] * 4 + [upper_off] * 4
    assert not any(packet.rewritten for packet in full.got) and full.dt.dd_target == 5
    assert {packet.active for packet in low.got} == {targets((0, 0), (0, 1), (0, 2))}


def test_frame_numbers_continue_across_a_new_source_stream() -> None:
    """Within a stream the publisher's numbers pass as they are; a new stream (another SSRC, its own numbering)
    continues from the last frame sent, its references intact."""
    first, sub = DdPublisher(frame=100), Subscriber()
    sub.send(first, keyframe=True)
    sub.send(first, 3)
    assert [packet.frame for packet in sub.got if packet.start] == list(range(100, 112))
    sub.dt.lose_layer()
    second = DdPublisher(frame=40000, seq=9000, ssrc=SSRC + 1)
    second.ts = first.ts + 90000
    sub.send(second, 4, keyframe=True)
    assert [packet.frame for packet in sub.got if packet.start][12:] == list(range(112, 124))
    assert all(packet.rewritten for packet in sub.got[len(sub.got) - 24:])
    sub.assert_decodable()
    # A retransmission (its descriptor not parsed again) gets the same number as the packet it repeats.
    last = second.picture()[-1]
    sent = sub.dt.push(last, 0, sub.now + 0.001)
    again = sub.dt.resend(last, struct.unpack_from("!H", sent, 2)[0], sub.now + 0.002)
    assert extension(again, SUB_DD_ID) == extension(sent, SUB_DD_ID) != extension(last, DD_ID)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(0, 3), st.integers(0, 3))
def test_garbage_descriptors_never_crash_the_selection(values: list[bytes], spatial: int, temporal: int) -> None:
    publisher, sub = DdPublisher(), Subscriber(spatial=spatial, temporal=temporal)
    sub.send(publisher, keyframe=True)
    for n, value in enumerate(values):
        packet = struct.pack("!BBHII", 0x90, PT, (publisher.seq + n) & 0xFFFF, publisher.ts + 3000, SSRC)
        sub.dt.push(packet + two_byte_extension(DD_ID, value) + bytes([0, 0, 0, 0]), 0, sub.now + n)
    publisher.seq += len(values)
    sub.got.clear()
    sub.send(publisher, 4, keyframe=True)
    assert sub.units() and sub.units()[0][1][0] == 0


# ---- the engine itself: descriptors parsed per Receiver, keyframe requests for a switch the chains do not allow yet

async def test_engine_selects_by_the_descriptor_and_asks_for_the_keyframes_a_switch_needs(setup) -> None:  # noqa: F811
    eng, publisher, subscriber, _ = setup
    receiver = eng.add_receiver(publisher.transport, "1", "video", "av1", PT, 0, 90000, [], [SSRC], [],
                                {EXT_DEPENDENCY_DESCRIPTOR: DD_ID})
    downtrack = eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, DOWN_RTX_SSRC, PT, SUB_RTX_PT,
                                  {DD_ID: SUB_DD_ID}, extmap_allow_mixed=True)
    source = DdPublisher(key_svc=True, packets=1, seq=1)
    sent: dict[int, int] = {}   # the subscriber's sequence numbers: the spatial id of each

    async def send(pictures: int, keyframe: bool = False) -> list[tuple[int, ...]]:
        """The spatial ids the subscriber got, per temporal unit (timestamp)."""
        for n in range(pictures):
            for packet in source.picture(keyframe and n == 0):
                publisher.send_rtp(packet)
                await asyncio.sleep(0.002)
        await subscriber.collect()
        units: dict[int, tuple[int, ...]] = {}
        for packet in subscriber.take_rtp():
            assert SUB_DD_ID in packet.exts   # the descriptor, under the subscriber's id (two-byte form: allowed)
            units[packet.ts] = units.get(packet.ts, ()) + (packet.payload[1],)
            sent[packet.seq] = packet.payload[1]
        return list(units.values())

    assert await send(5, keyframe=True) == [(0, 1, 2)] + [(2,)] * 4
    eng.set_target_layer(downtrack, 1)    # K-SVC: S1's delta frames were not sent, its chain restarts at a keyframe
    plis = publisher.plis(SSRC)
    assert await send(2) == [(2,)] * 2
    await publisher.collect(0.6)
    assert publisher.plis(SSRC) > plis
    assert await send(2, keyframe=True) == [(0, 1), (1,)]
    stats = eng.downtrack_stats(downtrack)
    assert stats["current_spatial"] == 1 and stats["spatial_switches"] == 1
    counters = eng.stats()
    assert counters["dd_packets"] == 9 * 3 and counters["dd_invalid"] == 0
    # A NACK for the last S2 frame sent before the step-down and the S1 frame after it: only S1's is resent (the old
    # layer's would congest the link the subscriber stepped down for).
    last = max(sent)
    assert (sent[last - 3], sent[last]) == (2, 1)
    subscriber.send_rtcp(nack(0x55, DOWN_SSRC, last - 3, blp=1 << 2))
    await subscriber.collect()
    assert [struct.unpack_from("!H", p.payload)[0] for p in subscriber.take_rtp()] == [last]
    assert eng.stats()["nack_stale_layer"] == 1
