"""The StreamAllocator sharing a subscriber's bandwidth estimate among its DownTracks, and dynacast telling publishers
which layers someone needs: in-process, a fake engine with per-layer byte counters, a fake clock."""
from __future__ import annotations

import asyncio
from random import Random
from types import SimpleNamespace

import pytest
from livekit.protocol import models, rtc

from signaling.rtc.allocator import (KEYFRAME_DRAIN_S, PAUSED, PROBE_FAILED_HOLD_S, PROBE_HEADROOM_BPS,
                                     PROBE_INTERVAL_S, PROBE_MAX_INTERVAL_S, PROBE_OVERSHOOT,
                                     PROBE_RAMP_INTERVAL_S, STEP_DOWN_TOLERANCE,
                                     TOP_LAYER, TOP_TEMPORAL, UPGRADE_FAILED_S, UPGRADE_HOLD_S, UPGRADE_MARGIN,
                                     UPGRADE_RETRY_FACTOR, UPGRADE_RETRY_MEMORY_S, VideoDemand, share)
from signaling.rtc import publication as publication_module
from signaling.rtc.dynacast import Dynacast
from signaling.rtc.participant import Participant
from signaling.rtc.publication import BITRATE_WINDOW_S, BITRATE_WINDOWS, DEFAULT_AUDIO_BPS, LayerBitrates, TrackPublication
from test_rtc import FakeEngine, FakeNode, join, publish, sink

LAYER_BPS = (150_000, 500_000, 1_500_000)  # what the publishers below advertise, lowest first
KEYFRAME_BYTES = (8_000, 12_000, 25_000)  # the size of each layer's last keyframe, as the engine reports it


def upgrade_estimate(layer: int, audio: float = 0.0) -> float:
    """The estimate an upgrade to `layer` needs (the subscriber's audio beside it): with the upgrade margin, the
    layer's rate and draining its keyframe."""
    return (audio + LAYER_BPS[layer] + KEYFRAME_BYTES[layer] * 8 / KEYFRAME_DRAIN_S) * UPGRADE_MARGIN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LayeredEngine(FakeEngine):
    """A FakeEngine whose receivers report per-layer keyframe sizes and byte counts (none measured unless a test sets
    them) and whose DownTracks report the layer being forwarded."""

    def __init__(self) -> None:
        super().__init__()
        self.forwarded: dict[int, int] = {}

    def receiver_stats(self, receiver_id: int) -> dict:
        return {"layers": [{"bytes": 0, "keyframe_bytes": size} for size in KEYFRAME_BYTES]}

    def downtrack_stats(self, downtrack_id: int) -> dict:
        return {"current_layer": self.forwarded.get(downtrack_id, -1)}


@pytest.fixture
def node() -> FakeNode:
    node = FakeNode()
    node.engine = LayeredEngine()
    node.transports.engine = node.engine
    return node


def fast_dynacast(node: FakeNode, publication: TrackPublication, initial_delay: float = 60) -> None:
    """Dynacast with a 50 ms pause delay (the real one is 5 s)."""
    publication.dynacast.close()
    publication.dynacast = Dynacast(publication, node.engine, pause_delay=0.05, initial_delay=initial_delay)


def publish_video(publisher: Participant, name: str = "cam",
                  source: int = models.TrackSource.CAMERA) -> TrackPublication:
    publication = publish(publisher, "video", name)
    publication.info.source = source
    for layer, bps in zip(publication.info.layers, LAYER_BPS):
        layer.bitrate = bps
    return publication


def estimate_only(subscriber: Participant) -> None:
    """The subscriber's transport cannot probe (a client without transport-cc): its estimate alone decides upgrades."""
    subscriber.allocator.prober = None


def start(node: FakeNode, subscriber: Participant, *publications: TrackPublication) -> list[int]:
    """The subscriber's answer accepted each m-line: DownTracks start and are allocated."""
    downtracks = []
    for publication in publications:
        subscription = subscriber.subscriptions[publication.sid]
        subscription.downtrack_id = node.engine.add_downtrack(publication.receiver_id)
        subscriber.allocator.update(subscription)
        downtracks.append(subscription.downtrack_id)
    return downtracks


def stream_states(participant: Participant) -> list[tuple[str, int]]:
    return [(s.track_sid, s.state) for u in sink(participant).of("stream_state_update") for s in u.stream_states]


def quality_updates(participant: Participant) -> list[tuple[str, list[bool]]]:
    return [(u.track_sid, [q.enabled for q in u.subscribed_codecs[0].qualities])
            for u in sink(participant).of("subscribed_quality_update")]


# ---------------------------------------------------------------- sharing (pure)

def test_lowest_layers_first_then_upgrades_in_order_within_caps() -> None:
    cam = VideoDemand(1, False, 2, LAYER_BPS)
    screen = VideoDemand(2, True, 2, LAYER_BPS)
    capped = VideoDemand(3, False, 0, LAYER_BPS)
    assert share([cam, screen, capped], 10_000_000) == {1: 2, 2: 2, 3: 0}
    assert share([cam, screen, capped], 3 * 150_000) == {1: 0, 2: 0, 3: 0}
    # screenshare upgrades first: 450k for three lowest layers, 350k more takes screenshare to 500k
    assert share([cam, screen, capped], 450_000 + 350_000) == {1: 0, 2: 1, 3: 0}
    # screenshare's lowest layer before the camera's when not both fit
    assert share([cam, screen], 200_000) == {1: PAUSED, 2: 0}
    assert share([cam], 100_000) == {1: PAUSED}
    assert share([], 1_000) == {}


# per spatial layer, stacked temporal rates as an L1T3 encoder's split (40 % / 20 % / 40 %) gives them
TEMPORAL_BPS = tuple((bps * 4 // 10, bps * 6 // 10, bps) for bps in LAYER_BPS)


def test_temporal_layers_of_the_lowest_layer_come_first_and_higher_layers_go_whole() -> None:
    cam = VideoDemand(1, False, 2, LAYER_BPS, TEMPORAL_BPS)
    assert [step[:2] for step in cam.ladder] == [(0, 0), (0, 1), (0, TOP_TEMPORAL), (1, TOP_TEMPORAL),
                                                (2, TOP_TEMPORAL)]
    assert [step[2] for step in cam.ladder][:4] == [60_000, 90_000, 150_000, LAYER_BPS[1]]
    assert share([cam], 100_000) == {1: 1}                # T0+T1 of the lowest layer: half its frame rate
    assert share([cam], 250_000) == {1: 2}                # all of it; the next layer only whole
    assert share([cam], 59_999) == {1: PAUSED}            # even its lowest step does not fit
    # Every video's lowest step first, screenshare first, then one step each in that order.
    screen = VideoDemand(2, True, 2, LAYER_BPS, TEMPORAL_BPS)
    assert share([cam, screen], 130_000) == {1: 0, 2: 0}
    assert share([cam, screen], 160_000) == {1: 0, 2: 1}
    assert share([cam, screen], 180_000) == {1: 1, 2: 1}
    # A track without temporal layers keeps one step per spatial layer; caps bound the ladder.
    plain = VideoDemand(3, False, 2, LAYER_BPS)
    assert [step[:2] for step in plain.ladder] == [(layer, TOP_TEMPORAL) for layer in range(3)]
    capped = VideoDemand(4, False, 0, LAYER_BPS, TEMPORAL_BPS)
    assert [step[:2] for step in capped.ladder] == [(0, 0), (0, 1), (0, TOP_TEMPORAL)]
    assert share([capped, plain], 10_000_000) == {4: 2, 3: 2}
    assert cam.step_of(1, 1) == 2 and cam.step_of(TOP_LAYER, TOP_TEMPORAL) == 4 and cam.step_of(PAUSED, 0) == PAUSED


def test_temporal_bitrates_stack_and_stop_at_the_highest_temporal_id_sent() -> None:
    bitrates = LayerBitrates()
    sent = [[0, 0, 0, 0], [0, 0, 0, 0]]
    for window in range(BITRATE_WINDOWS + 1):
        bitrates.sample([sum(layer) for layer in sent], window * BITRATE_WINDOW_S, [list(layer) for layer in sent])
        sent[0] = [sent[0][0] + 5_000, sent[0][1] + 2_500, sent[0][2] + 5_000, 0]  # T0, T1, T2: 40/20/40 %
    assert bitrates.temporal_bps == [(40_000, 60_000, 100_000), ()]            # the second layer sent nothing
    assert bitrates.bps == [100_000, 0]
    without = LayerBitrates()
    for window in range(BITRATE_WINDOWS + 1):
        without.sample([window * 1_000], window * BITRATE_WINDOW_S)
    assert without.temporal_bps == [()] and without.bps == [8_000]


def test_layer_bitrates_are_measured_per_window() -> None:
    bitrates = LayerBitrates()
    bitrates.sample([0, 0], 10.0)
    bitrates.sample([1_000, 9_000], 10.5)  # within the window: ignored
    assert bitrates.bps == []
    at, sent = 10.0, [0, 0]
    for _ in range(BITRATE_WINDOWS):
        assert bitrates.bps == []  # fewer windows than the median needs
        at, sent = at + 2 * BITRATE_WINDOW_S, [sent[0] + 12_500, sent[1] + 62_500]
        bitrates.sample(sent, at)
    assert bitrates.bps == [int(12_500 * 8 / (2 * BITRATE_WINDOW_S)), int(62_500 * 8 / (2 * BITRATE_WINDOW_S))]


def test_a_keyframe_window_does_not_move_a_layers_price() -> None:
    bitrates = LayerBitrates()
    total = 0
    bitrates.sample([total], 0.0)
    for window, kbit in enumerate([150, 160, 900, 155, 150], 1):  # a PLI's keyframe fills the third window
        total += int(kbit * 1000 * BITRATE_WINDOW_S // 8)
        bitrates.sample([total], window * BITRATE_WINDOW_S)
    assert bitrates.bps == [155_000]


async def test_measured_bitrates_override_advertised_and_a_silent_layer_keeps_a_price(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(publication_module, "time", SimpleNamespace(monotonic=clock))
    alice = join(node, "alice")
    video = publish_video(alice)
    counts = [0, 0, 0]
    node.engine.receiver_stats = lambda receiver_id: {"layers": [{"bytes": b} for b in counts]}
    assert video.layer_bitrates(node.engine) == LAYER_BPS  # nothing measured yet: advertised
    for _ in range(BITRATE_WINDOWS):
        clock.now += BITRATE_WINDOW_S
        counts[:] = [counts[0] + 25_000, counts[1] + 75_000, 0]  # the top layer is not flowing (dynacast: off)
        video.layer_bitrates(node.engine)
    measured = [int(sent * 8 / BITRATE_WINDOW_S) for sent in (25_000, 75_000)]
    assert video.layer_bitrates(node.engine) == (*measured, LAYER_BPS[2])


# ---------------------------------------------------------------- allocation under an estimate

async def test_without_an_estimate_tracks_get_what_is_asked(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    [downtrack] = start(node, bob, publish_video(alice))
    assert node.engine.layers[downtrack] == TOP_LAYER and node.engine.paused[downtrack] is False
    bob.allocator.on_estimate(5_000_000)
    assert node.engine.layers[downtrack] == 2
    bob.allocator.on_estimate(None)
    assert node.engine.layers[downtrack] == TOP_LAYER


async def test_audio_is_reserved_and_video_pauses_below_its_lowest_layer(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    estimate_only(bob)
    bob.allocator.clock = clock = Clock()
    video, audio = publish_video(alice), publish(alice, "audio", "mic")
    video_dt, audio_dt = start(node, bob, video, audio)
    bob.allocator.on_estimate(DEFAULT_AUDIO_BPS + LAYER_BPS[0] - 1, congested=True)
    assert node.engine.paused[video_dt] is True and node.engine.paused[audio_dt] is False
    assert stream_states(bob) == [(video.sid, rtc.StreamState.PAUSED)]
    assert node.counters["stream_paused_bandwidth"] == 1
    assert not sink(bob).of("mute") and not video.info.muted  # a bandwidth pause is not a mute
    assert video.sid in bob.subscriptions
    # The client hides the paused tile (disables the track), then shows it again: still one bandwidth pause.
    for disabled in (True, False):
        bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], disabled=disabled))
    assert node.engine.paused[video_dt] is True and len(stream_states(bob)) == 1
    # Recovers only when the lowest layer, its keyframe and the audio fit with the upgrade margin, not congested,
    # after the hold time.
    resume = upgrade_estimate(0, audio=DEFAULT_AUDIO_BPS)
    bob.allocator.on_estimate(resume, congested=True)
    assert node.engine.paused[video_dt] is True
    bob.allocator.on_estimate(resume)
    assert node.engine.paused[video_dt] is True  # within the hold time
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(resume * 0.99)  # the margin covers the audio too
    assert node.engine.paused[video_dt] is True
    bob.allocator.on_estimate(resume)
    assert node.engine.paused[video_dt] is False and node.engine.layers[video_dt] == 0
    assert stream_states(bob) == [(video.sid, rtc.StreamState.PAUSED), (video.sid, rtc.StreamState.ACTIVE)]


WIDE, NARROW = upgrade_estimate(2), 600_000  # estimates for 720p (an upgrade to it) and for 360p


def failed_upgrade(node: FakeNode) -> tuple[Participant, Clock, list[int]]:
    """bob subscribed to alice's video at 360p, upgraded to 720p and thrown out a second later: (bob, its clock, the
    layers pushed so far)."""
    alice, bob = join(node, "alice"), join(node, "bob")
    estimate_only(bob)
    bob.allocator.clock = clock = Clock()
    start(node, bob, publish_video(alice))
    layers: list[int] = []
    node.engine.set_target_layer = lambda dt, layer, temporal=None, cut=False: layers.append(layer)
    bob.allocator.on_estimate(NARROW)
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(WIDE)  # up...
    clock.now += 1
    bob.allocator.on_estimate(NARROW)  # ...and thrown out a second later
    assert layers == [1, 2, 1]
    return bob, clock, layers


async def test_an_upgrade_the_link_could_not_carry_is_retried_later_and_only_on_more(node: FakeNode) -> None:
    bob, clock, layers = failed_upgrade(node)
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(WIDE * UPGRADE_RETRY_FACTOR)
    assert layers == [1, 2, 1]  # the hold doubled
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(WIDE)
    assert layers == [1, 2, 1]  # the estimate it failed at is not enough again
    bob.allocator.on_estimate(WIDE * UPGRADE_RETRY_FACTOR)
    assert layers == [1, 2, 1, 2]
    clock.now += UPGRADE_FAILED_S  # this one held: the next step down keeps the base hold and no retry bar
    bob.allocator.on_estimate(NARROW)
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(WIDE)
    assert layers == [1, 2, 1, 2, 1, 2]


async def test_a_further_step_down_after_a_failed_upgrade_is_not_a_second_failure(node: FakeNode) -> None:
    bob, clock, layers = failed_upgrade(node)  # the upgrade to 720p failed...
    clock.now += 0.5
    bob.allocator.on_estimate(200_000)  # ...and the loss that came with it took the estimate down further
    assert layers == [1, 2, 1, 0]
    clock.now += 2 * UPGRADE_HOLD_S  # the failure doubled the hold once, not twice
    bob.allocator.on_estimate(sum(LAYER_BPS[:2]) * UPGRADE_MARGIN)
    assert layers == [1, 2, 1, 0, 1]  # 360p never failed: no higher estimate needed to go back to it


async def test_steps_down_at_once_and_up_with_margin_without_flapping(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    estimate_only(bob)
    bob.allocator.clock = clock = Clock()
    [downtrack] = start(node, bob, publish_video(alice))
    layers: list[int] = []
    node.engine.set_target_layer = lambda dt, layer, temporal=None, cut=False: layers.append(layer)
    bob.allocator.on_estimate(5_000_000)
    bob.allocator.on_estimate(600_000)  # 150k + 350k fits, the top layer does not
    assert layers == [2, 1]
    for estimate in (520_000, 560_000, 600_000, 520_000) * 3:  # noise around the boundary: no switch
        clock.now += 1
        bob.allocator.on_estimate(estimate)
    assert layers == [2, 1]
    bob.allocator.on_estimate(WIDE * 0.99)  # 720p fits, but not with the margin over it and its keyframe
    assert layers == [2, 1]
    bob.allocator.on_estimate(WIDE)
    assert layers == [2, 1, 2]
    assert node.engine.paused[downtrack] is False and stream_states(bob) == []


async def test_an_upgrade_needs_room_for_the_new_layers_keyframe_and_staying_does_not(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    estimate_only(bob)
    bob.allocator.clock = clock = Clock()
    [downtrack] = start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(400_000)
    assert node.engine.layers[downtrack] == 0
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(LAYER_BPS[1] * UPGRADE_MARGIN * 1.1)  # 360p's rate fits with the margin...
    assert node.engine.layers[downtrack] == 0
    bob.allocator.on_estimate(upgrade_estimate(1))  # ...its keyframe drained within KEYFRAME_DRAIN_S too
    assert node.engine.layers[downtrack] == 1
    bob.allocator.on_estimate(LAYER_BPS[1] * 1.01)  # once there, the layer's rate is all it costs
    assert node.engine.layers[downtrack] == 1


def measuring(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> tuple[Participant, Clock, TrackPublication]:
    """bob subscribing by estimate only to alice's video, on a fake clock that its layers' bitrate windows follow
    too: (bob, the clock, the video)."""
    clock = Clock()
    monkeypatch.setattr(publication_module, "time", SimpleNamespace(monotonic=clock))
    alice, bob = join(node, "alice"), join(node, "bob")
    estimate_only(bob)
    bob.allocator.clock = clock
    return bob, clock, publish_video(alice)


async def test_an_upgrade_prices_a_layer_not_forwarded_at_least_at_what_its_publisher_advertised(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    bob, clock, video = measuring(node, monkeypatch)
    measured = (150_000, 500_000, 900_000)  # 720p reads low: dynacast just turned it back on, its encoder ramps up
    counts = [0, 0, 0]
    node.engine.receiver_stats = lambda receiver_id: {"layers": [
        {"bytes": sent, "keyframe_bytes": size} for sent, size in zip(counts, KEYFRAME_BYTES)]}
    for _ in range(BITRATE_WINDOWS + 1):
        clock.now += BITRATE_WINDOW_S
        counts[:] = [sent + int(bps * BITRATE_WINDOW_S) // 8 for sent, bps in zip(counts, measured)]
        video.layer_bitrates(node.engine)
    assert video.layer_bitrates(node.engine) == measured
    [downtrack] = start(node, bob, video)
    bob.allocator.on_estimate(NARROW)
    assert node.engine.layers[downtrack] == 1
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate((measured[2] + KEYFRAME_BYTES[2] * 8 / KEYFRAME_DRAIN_S) * UPGRADE_MARGIN * 1.1)
    assert node.engine.layers[downtrack] == 1  # enough for 720p as measured, not as advertised
    bob.allocator.on_estimate(WIDE)
    assert node.engine.layers[downtrack] == 2


async def test_allocations_push_temporal_caps_and_dynacast_still_sees_spatial_layers(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    bob, clock, video = measuring(node, monkeypatch)
    counts = [[0] * 4 for _ in LAYER_BPS]
    node.engine.receiver_stats = lambda receiver_id: {"layers": [
        {"bytes": sum(layer), "temporal_bytes": list(layer)} for layer in counts]}
    for _ in range(BITRATE_WINDOWS + 1):  # every layer flows as L1T3 at the advertised rates
        clock.now += BITRATE_WINDOW_S
        counts[:] = [[layer[0] + bps // 20, layer[1] + bps // 40, layer[2] + bps // 20, 0]
                     for layer, bps in zip(counts, LAYER_BPS)]
        video.layer_bitrates(node.engine)
    assert video.temporal_bitrates(node.engine)[1] == (200_000, 300_000, 500_000)
    [downtrack] = start(node, bob, video)
    bob.allocator.on_estimate(100_000)  # q's T0+T1 (90k) fits, all of q does not
    assert (node.engine.layers[downtrack], node.engine.temporal[downtrack]) == (0, 1)
    assert bob.allocator.wanted_layer(bob.subscriptions[video.sid]) == 0  # dynacast keeps q on
    bob.allocator.on_estimate(70_000)  # down at once, one temporal step
    assert (node.engine.layers[downtrack], node.engine.temporal[downtrack]) == (0, 0)
    clock.now += UPGRADE_HOLD_S
    bob.allocator.on_estimate(90_000 * UPGRADE_MARGIN * 0.99)  # fits, not with the margin
    assert node.engine.temporal[downtrack] == 0
    bob.allocator.on_estimate(90_000 * UPGRADE_MARGIN, congested=True)  # never up while congested
    assert node.engine.temporal[downtrack] == 0
    bob.allocator.on_estimate(90_000 * UPGRADE_MARGIN)
    assert (node.engine.layers[downtrack], node.engine.temporal[downtrack]) == (0, 1)
    bob.allocator.on_estimate(20_000_000)
    assert (node.engine.layers[downtrack], node.engine.temporal[downtrack]) == (2, TOP_TEMPORAL)


async def test_the_subscribers_own_cap_bounds_the_allocation(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish_video(alice)
    [downtrack] = start(node, bob, video)
    bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], quality=models.VideoQuality.MEDIUM))
    bob.allocator.on_estimate(10_000_000)
    assert node.engine.layers[downtrack] == 1
    bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], disabled=True))
    assert node.engine.paused[downtrack] is True
    bob.allocator.on_estimate(10_000)  # disabled by the subscriber: not a bandwidth pause
    assert stream_states(bob) == []


async def test_screenshare_before_camera_and_each_subscriber_alone(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    camera, screen = publish_video(alice), publish_video(alice, "screen", models.TrackSource.SCREEN_SHARE)
    bob_camera, bob_screen = start(node, bob, camera, screen)
    carol_camera, carol_screen = start(node, carol, camera, screen)
    bob.allocator.on_estimate(200_000)  # narrow: one lowest layer fits
    carol.allocator.on_estimate(20_000_000)  # wide
    assert (node.engine.layers[bob_screen], node.engine.paused[bob_camera]) == (0, True)
    assert node.engine.paused[bob_screen] is False
    assert (node.engine.layers[carol_screen], node.engine.layers[carol_camera]) == (2, 2)
    assert node.engine.paused[carol_camera] is False


# ---------------------------------------------------------------- dynacast

async def test_dynacast_enables_at_once_disables_after_the_delay(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    video = publish_video(alice)
    fast_dynacast(node, video)
    [bob_dt] = start(node, bob, video)
    bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], quality=models.VideoQuality.LOW))
    assert quality_updates(alice) == []  # still on until the delay has passed
    await asyncio.sleep(0.1)
    assert quality_updates(alice) == [(video.sid, [True, False, False])]
    [update] = sink(alice).of("subscribed_quality_update")
    assert update.subscribed_codecs[0].codec == "vp8" and list(update.subscribed_qualities) == list(
        update.subscribed_codecs[0].qualities)
    [carol_dt] = start(node, carol, video)  # a full-quality subscriber: on at once (the same loop turn)
    await asyncio.sleep(0)
    assert quality_updates(alice)[-1] == (video.sid, [True, True, True])
    # carol is still forwarded the top layer while she switches down: it stays on until she is off it
    node.engine.forwarded[carol_dt] = 2
    carol.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], quality=models.VideoQuality.MEDIUM))
    await asyncio.sleep(0.1)
    assert len(quality_updates(alice)) == 2
    node.engine.forwarded[carol_dt] = 1  # the switch is done: the top layer goes off at the next look
    await asyncio.sleep(0.1)
    assert quality_updates(alice)[-1] == (video.sid, [True, True, False])
    # nobody subscribed: everything off after the delay
    carol.update_subscriptions({video.sid}, False)
    bob.update_subscriptions({video.sid}, False)
    await asyncio.sleep(0.1)
    assert quality_updates(alice)[-1] == (video.sid, [False, False, False])


async def test_dynacast_follows_bandwidth_pauses_and_unwatched_tracks_turn_off(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish_video(alice)
    fast_dynacast(node, video, initial_delay=0.05)
    unwatched = publish_video(alice, "unwatched")
    fast_dynacast(node, unwatched, initial_delay=0.05)
    [downtrack] = start(node, bob, video)
    bob.allocator.on_estimate(10_000)
    assert node.engine.paused[downtrack] is True
    await asyncio.sleep(0.15)
    assert sorted(quality_updates(alice)) == sorted([(video.sid, [False, False, False]),
                                                     (unwatched.sid, [False, False, False])])


# ---------------------------------------------------------------- probing and loss (tick)

class FakeProber:
    """A subscriber transport's estimate, TWCC loss counters and probe clusters, set by the test."""

    def __init__(self, estimate: float) -> None:
        self.estimate, self.packets, self.lost = estimate, 0, 0
        self.probes: list[float] = []
        self.status = ("failed", 0)  # what each probe comes to

    def report(self, packets: int, lost: int) -> None:
        self.packets += packets
        self.lost += lost

    def probe(self, target_bps: float, duration: float) -> int:
        self.probes.append(target_bps)
        return len(self.probes)

    def probe_status(self, cluster: int) -> tuple[str, int]:
        return self.status

    def bandwidth(self) -> dict:
        return {"estimate_bps": self.estimate, "congested": False, "packets": self.packets, "lost": self.lost}


def probing(node: FakeNode, estimate: float) -> tuple[Participant, Clock, FakeProber, list[int]]:
    """bob subscribed to alice's video, its transport a FakeProber at `estimate`: (bob, its clock, the prober, the
    layers pushed from now on)."""
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(estimate)
    start(node, bob, publish_video(alice))
    layers: list[int] = []
    node.engine.set_target_layer = lambda dt, layer, temporal=None, cut=False: layers.append(layer)
    return bob, clock, prober, layers


async def test_a_probe_the_link_carries_leads_to_the_upgrade(node: FakeNode) -> None:
    bob, clock, prober, layers = probing(node, 600_000)
    bob.allocator.on_estimate(prober.estimate)
    clock.now += UPGRADE_HOLD_S
    prober.status = ("pending", 0)
    bob.allocator.tick()
    # 360p, and a probe toward 720p whose padding (what it adds to 360p's 500 kbps) is the first headroom
    headroom = PROBE_HEADROOM_BPS
    assert layers == [1] and prober.probes == [500_000 + headroom]
    for _ in range(3):  # each probe the link carries doubles the next one's headroom, until it covers 720p
        clock.now += 0.5
        prober.status, prober.estimate = ("succeeded", prober.probes[-1]), prober.probes[-1]
        bob.allocator.tick()
        assert layers == [1]
        clock.now += 0.5
        prober.status = ("pending", 0)
        bob.allocator.tick()
    needed = WIDE * PROBE_OVERSHOOT  # 720p and its keyframe; a carried probe measures a little short
    assert prober.probes == [500_000 + headroom, 500_000 + 2 * headroom, 500_000 + 4 * headroom, needed]
    clock.now += 0.5
    prober.status, prober.estimate = ("succeeded", needed), needed
    bob.allocator.tick()
    assert layers == [1, 2] and bob.allocator._counters["probes_carried"] == 4


async def test_after_a_step_down_only_a_probe_the_link_carries_counts_toward_an_upgrade(node: FakeNode) -> None:
    """A crept estimate is not enough to go back up: the upgrade waits for probes the link carries."""
    bob, clock, prober, layers = probing(node, 5_000_000)
    bob.allocator.on_estimate(prober.estimate)
    prober.estimate = 700_000
    bob.allocator.on_estimate(prober.estimate)
    assert layers == [2, 1]
    clock.now += max(UPGRADE_HOLD_S, PROBE_INTERVAL_S)
    prober.estimate = 2 * WIDE  # crept up without a probe
    prober.status = ("pending", 0)
    bob.allocator.tick()
    assert layers == [2, 1] and len(prober.probes) == 1
    for _ in range(5):
        clock.now += 0.5
        prober.status = ("succeeded", prober.probes[-1])
        bob.allocator.tick()
        if layers[-1] == 2:
            break
        clock.now += 0.5
        prober.status = ("pending", 0)
        bob.allocator.tick()
    assert layers == [2, 1, 2] and prober.probes[-1] >= WIDE


async def test_no_upgrade_right_after_a_probe_the_link_did_not_carry(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(NARROW)
    layers: list[int] = []
    node.engine.set_target_layer = lambda dt, layer, temporal=None, cut=False: layers.append(layer)
    bob.allocator.on_estimate(prober.estimate)  # known before the video starts: it starts within it, no step-down
    start(node, bob, publish_video(alice))
    clock.now += UPGRADE_HOLD_S
    prober.status = ("pending", 0)
    bob.allocator.tick()
    assert layers == [1] and len(prober.probes) == 1
    clock.now += 0.5
    prober.status = ("failed", 0)
    bob.allocator.tick()
    bob.allocator.on_estimate(WIDE)  # its queue is still draining: a rise now is not the link's
    assert layers == [1]
    clock.now += PROBE_FAILED_HOLD_S
    bob.allocator.on_estimate(WIDE)
    assert layers == [1, 2]


async def test_a_probe_the_link_does_not_carry_resets_the_probe_headroom(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(600_000)
    start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(prober.estimate)
    clock.now += UPGRADE_HOLD_S
    prober.status = ("pending", 0)
    bob.allocator.tick()
    clock.now += 0.5
    prober.status = ("succeeded", prober.probes[-1])
    bob.allocator.tick()  # carried (the estimate stays: a shaper's burst can fool a probe)
    clock.now += 0.5
    prober.status = ("pending", 0)
    bob.allocator.tick()
    clock.now += 0.5
    prober.status = ("failed", 700_000)
    bob.allocator.tick()
    clock.now += PROBE_MAX_INTERVAL_S
    prober.status = ("pending", 0)
    bob.allocator.tick()
    headroom = PROBE_HEADROOM_BPS
    assert prober.probes == [500_000 + headroom, 500_000 + 2 * headroom, 500_000 + headroom]


async def test_a_layer_losing_packets_steps_down_though_the_estimate_holds(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(900_000)
    start(node, bob, publish_video(alice))
    layers: list[int] = []
    node.engine.set_target_layer = lambda dt, layer, temporal=None, cut=False: layers.append(layer)
    bob.allocator.on_estimate(prober.estimate)
    assert layers == [1]
    random = Random(11)
    for _ in range(240):  # 2 minutes of 2 % random loss (Wi-Fi): some windows lose 4 % or more; no reaction
        clock.now += 0.5
        prober.report(50, sum(random.random() < 0.02 for _ in range(50)))
        bob.allocator.tick()
    assert layers == [1]
    for _ in range(6):  # 6 % loss for 3 s (two whole windows) while the estimate stays at 900 kbit/s
        clock.now += 0.5
        prober.report(50, 3)
        bob.allocator.tick()
    assert layers == [1, 0] and node.counters["loss_step_downs"] == 1
    assert bob.allocator.estimate < 900_000
    prober.status = ("succeeded", 900_000)  # a probe the link carried lifts the cap...
    for _ in range(int(UPGRADE_RETRY_MEMORY_S / 0.5) - 4):  # within the memory of the step-down
        clock.now += 0.5
        prober.report(50, 0)
        bob.allocator.tick()
    assert bob.allocator.estimate == 900_000 and layers == [1, 0]  # ...but 360p lost at 900 kbit/s: it needs more
    prober.status, prober.estimate = ("succeeded", 900_000 * UPGRADE_RETRY_FACTOR), 900_000 * UPGRADE_RETRY_FACTOR
    for _ in range(2):
        clock.now += 0.5
        bob.allocator.tick()
    assert layers == [1, 0, 1]


async def test_a_dip_within_the_tolerance_keeps_the_layer_and_a_real_step_down_cuts_it(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = Clock()
    [downtrack] = start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(900_000)
    assert node.engine.layers[downtrack] == 1
    bob.allocator.on_estimate(LAYER_BPS[1] * (1 - STEP_DOWN_TOLERANCE) + 1000)  # GCC's back-off below 360p's price
    assert node.engine.layers[downtrack] == 1
    bob.allocator.on_estimate(LAYER_BPS[1] * (1 - STEP_DOWN_TOLERANCE) - 1000)
    assert node.engine.layers[downtrack] == 0 and node.engine.cuts[downtrack] is True  # the old layer stops at once


async def test_a_congested_collapse_lands_on_the_lowest_full_layer(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = Clock()
    [downtrack] = start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(5_000_000)
    assert node.engine.layers[downtrack] == 2
    bob.allocator.on_estimate(800_000, congested=True)  # 360p would fit, but the estimator is still cutting
    assert node.engine.layers[downtrack] == 0 and node.engine.cuts[downtrack] is True


async def test_a_subscriber_at_its_top_layer_reads_the_estimate_once_per_loss_window(node: FakeNode) -> None:
    """Nothing to upgrade: the tick (twice a second) reads the engine's estimate only to open or close a loss window,
    so 500 settled subscribers cost the control plane ~500 reads a second, not 1,000; loss is still acted on."""
    bob, clock, prober, layers = probing(node, 5_000_000)
    bob.allocator.on_estimate(prober.estimate)
    assert layers == [2]
    reads = 0
    read = prober.bandwidth

    def counted() -> dict:
        nonlocal reads
        reads += 1
        return read()
    prober.bandwidth = counted
    for _ in range(20):  # 10 s
        clock.now += 0.5
        prober.report(50, 0)
        bob.allocator.tick()
    assert reads == 10 and layers == [2]  # at 0.5 s one opens a window; at 1.5, 2.5 .. 9.5 s each closes and opens one
    for _ in range(4):  # 30 % loss for 2 s: the windows still close on time and the layer steps down
        clock.now += 0.5
        prober.report(50, 15)
        bob.allocator.tick()
    assert layers[-1] < 2 and node.counters["loss_step_downs"] == 1


async def test_loss_on_the_lowest_layer_neither_pauses_nor_steps_further(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(300_000)
    [downtrack] = start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(prober.estimate)
    assert node.engine.layers[downtrack] == 0
    for _ in range(10):  # 30 % loss for 5 s
        clock.now += 0.5
        prober.report(50, 15)
        bob.allocator.tick()
    assert node.engine.layers[downtrack] == 0 and not node.engine.paused.get(downtrack)
    assert node.counters["loss_step_downs"] == 0 and stream_states(bob) == []


async def test_no_probe_for_an_interval_after_a_step_down(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.allocator.clock = clock = Clock()
    bob.allocator.prober = prober = FakeProber(5_000_000)
    [downtrack] = start(node, bob, publish_video(alice))
    bob.allocator.on_estimate(prober.estimate)
    prober.estimate = 700_000
    bob.allocator.on_estimate(prober.estimate)
    assert node.engine.layers[downtrack] == 1
    clock.now += PROBE_INTERVAL_S - 0.5
    bob.allocator.tick()
    assert prober.probes == []  # the link just showed its limit: a probe now would hit the switch's keyframe
    clock.now += 0.5
    bob.allocator.tick()
    assert len(prober.probes) == 1


async def test_no_probe_while_an_upgrades_keyframe_crosses_the_link(node: FakeNode) -> None:
    bob, clock, prober, layers = probing(node, 300_000)
    bob.allocator.on_estimate(prober.estimate)
    assert layers == [0]
    clock.now += UPGRADE_HOLD_S
    prober.status = ("pending", 0)
    bob.allocator.tick()
    clock.now += PROBE_RAMP_INTERVAL_S
    prober.status, prober.estimate = ("succeeded", upgrade_estimate(1)), upgrade_estimate(1)
    bob.allocator.tick()  # carried: 360p, and 720p is next, but not at once
    assert layers == [0, 1] and len(prober.probes) == 1
    clock.now += PROBE_RAMP_INTERVAL_S / 2
    bob.allocator.tick()
    assert len(prober.probes) == 1
    clock.now += PROBE_RAMP_INTERVAL_S / 2
    bob.allocator.tick()
    assert len(prober.probes) == 2


def gaps_between_failed_probes(bob: Participant, clock: Clock, prober: FakeProber, seconds: float) -> list[float]:
    """Ticks for `seconds` with every probe failing: the seconds between one probe's start and the next's."""
    starts: list[float] = []
    probe = prober.probe
    prober.probe = lambda target_bps, duration: starts.append(clock.now) or probe(target_bps, duration)
    prober.status = ("failed", 0)
    for _ in range(int(seconds / 0.5)):
        clock.now += 0.5
        bob.allocator.tick()
    return [later - earlier for earlier, later in zip(starts, starts[1:])]


async def test_failed_probes_back_off_only_above_the_lowest_layer_at_full_rate(node: FakeNode) -> None:
    bob, clock, prober, layers = probing(node, 100_000)
    bob.allocator.on_estimate(prober.estimate)
    assert node.engine.paused[bob.subscriptions[next(iter(bob.subscriptions))].downtrack_id] is True
    # a paused video: getting its lowest layer back matters most, every probe toward it comes at the base interval
    assert gaps_between_failed_probes(bob, clock, prober, 20) == [PROBE_INTERVAL_S] * 5
    prober.estimate, prober.status = 300_000, ("succeeded", 300_000)  # the link opens a little: 180p resumes
    for _ in range(int(PROBE_INTERVAL_S / 0.5) + 1):
        clock.now += 0.5
        bob.allocator.tick()
    assert layers == [0]
    # at 180p, probes toward 360p that the link does not carry come more rarely (the first, short of 300 kbit/s,
    # backed off already)
    assert gaps_between_failed_probes(bob, clock, prober, 20) == [PROBE_MAX_INTERVAL_S] * 3
