"""Connection quality: the scorer on synthetic intervals, a participant's streams read from a fake engine's counters,
what each participant is told about whom (in-process), and the engine keeping subscribers' RTCP report blocks (real
UDP sockets and SRTP, as in test_engine)."""
from __future__ import annotations

import asyncio
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from signaling.rtc.quality import (FLOOR, LOST_SCORE, MAX_SCORE, StreamInterval, StreamScore, mos, quality_level,
                                   sample_score)
from test_engine import DOWN_RTX_SSRC, DOWN_SSRC, Q_SSRC, add_video, setup, video  # noqa: F401 (setup: a fixture)
from test_rtc import FakeEngine, FakeNode, join, publish, sink

EXCELLENT, GOOD, POOR, LOST = (models.ConnectionQuality.EXCELLENT, models.ConnectionQuality.GOOD,
                               models.ConnectionQuality.POOR, models.ConnectionQuality.LOST)


def level_after(*intervals: StreamInterval | None) -> int:
    score = StreamScore()
    for interval in intervals:
        score.update(interval)
    return quality_level(score.score)


def interval(kind: str = "video", loss: float = 0.0, **fields: object) -> StreamInterval:
    """An interval of 1000 packets (5 s of 720p video or 25 s of audio, what matters is the ratio)."""
    return StreamInterval(kind, 1000, round(1000 * loss), **fields)


# ---------------------------------------------------------------- the scorer

@pytest.mark.parametrize("kind", ["audio", "video"])
def test_loss_sets_the_level(kind: str) -> None:
    assert level_after(interval(kind, jitter=0.01, rtt=0.02)) == EXCELLENT
    assert level_after(interval(kind, 0.005)) == EXCELLENT
    assert level_after(interval(kind, 0.05)) == GOOD
    assert level_after(interval(kind, 0.15)) == POOR
    assert level_after(interval(kind, 1.0)) == POOR  # still flowing: never below POOR


def test_a_sparse_stream_is_not_poor_for_one_lost_packet() -> None:
    assert level_after(StreamInterval("audio", 12, 1)) == EXCELLENT  # DTX: a packet every 400 ms, one lost
    assert level_after(StreamInterval("video", 100, 10)) == GOOD  # a still screen share losing 10 %
    assert level_after(StreamInterval("video", 1000, 100)) == POOR


def test_delay_counts_only_beyond_what_conversation_tolerates() -> None:
    assert level_after(interval(jitter=0.03, rtt=0.1)) == EXCELLENT
    assert level_after(interval(jitter=0.3)) == POOR
    assert level_after(interval(rtt=1.0, jitter=0.1)) == POOR
    assert level_after(interval(rtt=0.4, jitter=0.05)) == GOOD


def test_a_subscriber_below_the_layer_it_wants_is_not_excellent() -> None:
    assert level_after(interval(layer_shortfall=1)) == GOOD
    assert level_after(interval(layer_shortfall=2), interval(layer_shortfall=2)) == POOR


def test_silence_from_an_unmuted_stream_is_lost_at_once() -> None:
    silent = StreamInterval("audio", 0, 0, reports=False)
    assert level_after(interval("audio"), silent) == LOST
    # Its RTCP still arrives: there, but sending nothing.
    assert level_after(interval("audio"), StreamInterval("audio", 0, 0, reports=True)) == POOR
    assert sample_score(silent) == LOST_SCORE


def test_the_score_falls_fast_and_rises_slowly() -> None:
    score = StreamScore()
    levels = [quality_level(score.update(i)) for i in [interval(loss=0.15)] + [interval()] * 3]
    assert levels == [POOR, GOOD, GOOD, EXCELLENT]
    # One bad interval among good ones dips a level, not to the bottom.
    score = StreamScore()
    assert [quality_level(score.update(i)) for i in [interval(), interval(loss=0.03), interval()]] == \
        [EXCELLENT, GOOD, EXCELLENT]
    # Nothing to judge: the score stays; muted: EXCELLENT at once.
    score = StreamScore()
    score.update(interval(loss=0.15))
    assert score.update(None) == FLOOR
    assert score.update(None, muted=True) == MAX_SCORE


@given(st.sampled_from(["audio", "video"]), st.integers(0, 10_000), st.integers(-100, 20_000),
       st.floats(0, 10), st.one_of(st.none(), st.floats(0, 10)), st.floats(0, 4))
def test_scores_stay_on_the_scale_and_more_loss_never_scores_higher(kind: str, expected: int, lost: int,
                                                                     jitter: float, rtt: float | None,
                                                                     shortfall: float) -> None:
    stats = StreamInterval(kind, expected, lost, jitter, rtt, shortfall)
    score = sample_score(stats)
    assert 0 <= score <= MAX_SCORE
    assert sample_score(StreamInterval(kind, expected, lost + 10, jitter, rtt, shortfall)) <= score
    assert 1.0 <= mos(score) <= 4.5


def test_mos_spans_one_to_four_and_a_half() -> None:
    assert mos(MAX_SCORE) == pytest.approx(4.5)
    assert mos(0) == pytest.approx(1.0)
    assert mos(90) > mos(60) > mos(30)


# ---------------------------------------------------------------- a participant's streams, from engine counters

class StatsEngine(FakeEngine):
    """A FakeEngine whose receivers and DownTracks have the counters the real one reports."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver_counters: dict[int, dict] = {}
        self.downtrack_counters: dict[int, dict] = {}
        self.simulcast: dict[int, tuple[int, int]] = {}  # by receiver: (layers, highest live one); else (1, 0)

    def receiver_stats(self, receiver_id: int) -> dict:
        counters = self.receiver_counters.setdefault(receiver_id,
                                                     {"packets": 0, "lost": 0, "jitter": 0, "sr_age": None})
        layers, top = self.simulcast.get(receiver_id, (1, 0))
        return {"top_layer": top, "downtracks": 0, "layers": [dict(counters) for _ in range(layers)]}

    def downtrack_stats(self, downtrack_id: int) -> dict:
        counters = self.downtrack_counters.setdefault(downtrack_id, {
            "current_layer": 0, "packets": 0, "rr_blocks": 0,
            "rr_highest_sequence": 0, "rr_lost": 0, "rr_jitter": 0, "rtt": None})
        return {**counters, "paused": self.paused.get(downtrack_id, False)}

    def receive(self, receiver_id: int, packets: int, lost: int = 0, jitter: int = 0, sr: bool = True) -> None:
        counters = self.receiver_counters[receiver_id]
        counters["packets"] += packets
        counters["lost"] += lost
        counters["jitter"] = jitter
        counters["sr_age"] = 1.0 if sr else 60.0

    def report(self, downtrack_id: int, sent: int, lost: int = 0, rtt: float = 0.02) -> None:
        """`sent` packets sent to the subscriber, who reports losing `lost` of them."""
        counters = self.downtrack_counters[downtrack_id]
        counters["packets"] += sent
        counters["rr_blocks"] += 5
        counters["rr_highest_sequence"] = (counters["rr_highest_sequence"] + sent) & 0xFFFFFFFF
        counters["rr_lost"] += lost
        counters["rtt"] = rtt


@pytest.fixture
def node() -> FakeNode:
    node = FakeNode()
    node.engine = StatsEngine()
    node.transports.engine = node.engine
    return node


def tick(node: FakeNode) -> None:
    """One quality interval in every room, as the node runs it."""
    for room in node.store.rooms():
        room.announce_quality({p.sid: p.connection_stats.update(node.engine) for p in room.participants.values()})


def told(participant) -> list[dict[str, int]]:
    """The ConnectionQualityUpdates the participant got: {identity: level} each."""
    names = {p.sid: p.identity for p in participant.room.participants.values()}
    return [{names.get(info.participant_sid, info.participant_sid): info.quality for info in update.updates}
            for update in sink(participant).of("connection_quality")]


async def test_a_publisher_that_stops_sending_is_lost(node: FakeNode) -> None:
    alice = join(node, "alice")
    audio = publish(alice, "audio", "mic")
    engine: StatsEngine = node.engine
    tick(node)  # first look: counters to compare with
    engine.receive(audio.receiver_id, 250, jitter=48 * 5)
    tick(node)
    assert alice.connection_stats.level == EXCELLENT
    engine.receive(audio.receiver_id, 0, sr=False)
    tick(node)
    assert alice.connection_stats.level == LOST
    engine.receive(audio.receiver_id, 250)
    tick(node)
    assert alice.connection_stats.level == GOOD  # on its way back up
    # Muted: nothing flows, nothing is wrong; nor in the interval it is unmuted in (the encoder starts again).
    alice.set_muted(audio, True)
    engine.receive(audio.receiver_id, 0, sr=False)
    tick(node)
    assert alice.connection_stats.level == EXCELLENT
    alice.set_muted(audio, False)
    engine.receive(audio.receiver_id, 0, sr=False)
    tick(node)
    assert alice.connection_stats.level == EXCELLENT
    engine.receive(audio.receiver_id, 0, sr=False)
    tick(node)
    assert alice.connection_stats.level == LOST


async def test_upstream_loss_and_jitter_come_from_the_receivers_counters(node: FakeNode) -> None:
    alice = join(node, "alice")
    video = publish(alice)
    join(node, "bob")  # subscribes, so a silent video track is judged
    engine: StatsEngine = node.engine
    tick(node)
    engine.receive(video.receiver_id, 950, lost=50)
    tick(node)
    assert alice.connection_stats.level == GOOD
    engine.receive(video.receiver_id, 1000, jitter=90 * 300)  # 300 ms of jitter at 90 kHz
    tick(node)
    assert alice.connection_stats.level == POOR


async def test_silent_video_nobody_watches_is_not_judged(node: FakeNode) -> None:
    alice = join(node, "alice")
    video = publish(alice)
    engine: StatsEngine = node.engine
    tick(node)
    engine.receive(video.receiver_id, 0, sr=False)  # dynacast may have switched every layer off
    tick(node)
    assert alice.connection_stats.level == EXCELLENT


def start_downtracks(node: FakeNode, subscriber) -> list[int]:
    """As the subscriber's answer would: a DownTrack for each subscription."""
    for subscription in subscriber.subscriptions.values():
        subscription.downtrack_id = node.engine.add_downtrack(subscription.publication.receiver_id)
    return [s.downtrack_id for s in subscriber.subscriptions.values()]


async def test_a_subscriber_is_judged_by_what_it_reports(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    audio = publish(alice, "audio", "mic")
    [downtrack] = start_downtracks(node, bob)
    engine: StatsEngine = node.engine
    tick(node)
    for lost, level in [(0, EXCELLENT), (0, EXCELLENT), (15, GOOD), (0, GOOD)]:
        engine.receive(audio.receiver_id, 250)
        engine.report(downtrack, 250, lost)
        tick(node)
        assert bob.connection_stats.level == level
    assert alice.connection_stats.level == EXCELLENT  # bob's loss is not the publisher's
    # Sent to, but no report for NO_REPORT_TIMEOUT: judged as receiving nothing.
    for _ in range(6):
        engine.receive(audio.receiver_id, 250)
        engine.downtrack_counters[downtrack]["packets"] += 250
        tick(node)
    assert bob.connection_stats.level == POOR


async def test_loss_on_the_way_in_is_the_publishers_not_the_subscribers(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    audio = publish(alice, "audio", "mic")
    [downtrack] = start_downtracks(node, bob)
    engine: StatsEngine = node.engine
    tick(node)
    for _ in range(3):
        engine.receive(audio.receiver_id, 240, lost=10)
        engine.report(downtrack, 250, lost=10)  # the subscriber misses what never arrived
        tick(node)
    assert alice.connection_stats.level == GOOD
    assert bob.connection_stats.level == EXCELLENT


async def test_a_pause_for_bandwidth_is_poor_a_chosen_one_is_not(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    video = publish(alice)
    bobs, carols = start_downtracks(node, bob)[0], start_downtracks(node, carol)[0]
    engine: StatsEngine = node.engine
    carol.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], disabled=True))
    assert engine.paused[carols]
    engine.set_paused(bobs, True)  # as the StreamAllocator does when not even the lowest layer fits
    tick(node)
    assert bob.connection_stats.level == POOR
    assert carol.connection_stats.level == EXCELLENT


async def test_a_subscriber_gets_nothing_while_the_publisher_is_silent_and_is_not_blamed(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    audio = publish(alice, "audio", "mic")
    [downtrack] = start_downtracks(node, bob)
    engine: StatsEngine = node.engine
    tick(node)
    for _ in range(8):
        engine.receive(audio.receiver_id, 0, sr=False)
        engine.report(downtrack, 0)
        tick(node)
    assert alice.connection_stats.level == LOST
    assert bob.connection_stats.level == EXCELLENT


async def test_a_subscriber_below_its_wanted_layer_is_good(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    [downtrack] = start_downtracks(node, bob)
    engine: StatsEngine = node.engine
    engine.simulcast[video.receiver_id] = (3, 2)
    engine.downtrack_stats(downtrack)
    engine.downtrack_counters[downtrack]["current_layer"] = 1  # forwarded: the middle layer of three
    tick(node)
    for _ in range(2):  # the first report is what the next one is compared with
        engine.receive(video.receiver_id, 1000)
        engine.report(downtrack, 1000)
        tick(node)
    assert bob.connection_stats.level == GOOD
    assert alice.connection_stats.level == EXCELLENT


async def test_a_publisher_whose_uplink_does_not_carry_the_layers_asked_for_is_good(node: FakeNode) -> None:
    alice = join(node, "alice")
    video = publish(alice)
    join(node, "bob")
    engine: StatsEngine = node.engine
    engine.simulcast[video.receiver_id] = (3, 2)
    video.dynacast.committed = 2  # asked for all three layers
    tick(node)
    engine.receive(video.receiver_id, 300)
    tick(node)
    assert alice.connection_stats.level == EXCELLENT
    engine.simulcast[video.receiver_id] = (3, 1)  # its encoder dropped the top layer
    for _ in range(2):
        engine.receive(video.receiver_id, 300)
        tick(node)
    assert alice.connection_stats.level == GOOD
    # Asked for less: what it sends is enough (the first interval after a change is not judged either way).
    video.dynacast.committed = 1
    for _ in range(3):
        engine.receive(video.receiver_id, 300)
        tick(node)
    assert alice.connection_stats.level == EXCELLENT


# ---------------------------------------------------------------- who is told what

async def test_everyone_hears_about_itself_and_the_others_it_can_see_and_then_only_changes(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    ghost = join(node, "ghost", hidden=True)
    audio = publish(alice, "audio", "mic")
    engine: StatsEngine = node.engine
    tick(node)
    assert told(alice) == [{"alice": EXCELLENT, "bob": EXCELLENT}]
    assert told(ghost) == [{"alice": EXCELLENT, "bob": EXCELLENT, "ghost": EXCELLENT}]
    engine.receive(audio.receiver_id, 250)
    tick(node)  # nothing changed: nothing sent
    assert len(told(bob)) == 1
    engine.receive(audio.receiver_id, 0, sr=False)
    tick(node)
    # Clients of protocol 10 and older (these test participants say 0) know no LOST: POOR.
    assert told(bob)[-1] == {"alice": POOR} and told(alice)[-1] == {"alice": POOR}
    alice.protocol = bob.protocol = 16
    engine.receive(audio.receiver_id, 0, sr=False)
    carol = join(node, "carol")
    carol.protocol = 16
    tick(node)
    assert told(carol) == [{"alice": LOST, "bob": EXCELLENT, "carol": EXCELLENT}]  # new: hears everyone
    assert told(bob)[-1] == {"carol": EXCELLENT}  # hears of the newcomer only
    assert "ghost" not in {name for update in told(carol) + told(bob) for name in update}


# ---------------------------------------------------------------- the engine: subscribers' report blocks

def receiver_report(sender: int, ssrc: int, lost: int, highest: int, jitter: int, lsr: int, dlsr: int) -> bytes:
    return struct.pack("!BBHIIIIIII", 0x81, 201, 7, sender, ssrc, lost & 0xFFFFFF, highest, jitter, lsr, dlsr)


async def test_the_engine_keeps_a_subscribers_report_blocks_and_round_trip(setup) -> None:
    eng, publisher, subscriber, _ = setup
    _, downtrack = add_video(eng, publisher, subscriber, [])
    for seq in range(1, 4):
        publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 1))
    await subscriber.collect(1.15)  # the packets, then the DownTrack's SR
    [sr] = [p for pt, _, p in subscriber.rtcp if pt == 200][-1:]
    lsr = struct.unpack_from("!I", sr, 10)[0]  # the middle 32 bits of its NTP time
    assert eng.downtrack_stats(downtrack)["rtt"] is None
    await asyncio.sleep(0.2)
    now = (int((time.time() + 2208988800) * 65536)) & 0xFFFFFFFF  # NTP, 1/65536 s, as the engine's clock says
    held = (now - lsr - round(0.05 * 65536)) & 0xFFFFFFFF  # says it held the SR 50 ms less than since it was sent
    subscriber.send_rtcp(receiver_report(0x5555, DOWN_SSRC, 2, 1003, 90, lsr, held))
    await subscriber.collect()
    stats = eng.downtrack_stats(downtrack)
    assert (stats["rr_blocks"], stats["rr_lost"], stats["rr_highest_sequence"], stats["rr_jitter"]) == (1, 2, 1003, 90)
    assert 0.045 < stats["rtt"] < 0.1
    # Blocks about the RTX stream, about nothing of ours, or with an impossible round trip change nothing else.
    subscriber.send_rtcp(receiver_report(0x5555, DOWN_RTX_SSRC, 7, 7, 7, lsr, 0))
    subscriber.send_rtcp(receiver_report(0x5555, 0xDEAD, 7, 7, 7, lsr, 0))
    subscriber.send_rtcp(receiver_report(0x5555, DOWN_SSRC, 3, 1010, 80, lsr, 60 * 65536))  # held a minute
    await subscriber.collect()
    after = eng.downtrack_stats(downtrack)
    assert (after["rr_blocks"], after["rr_lost"], after["rr_highest_sequence"]) == (2, 3, 1010)
    assert after["rtt"] == stats["rtt"]
