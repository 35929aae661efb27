"""A participant's connection statistics: every quality interval, the engine's cumulative counters for its published
tracks (what the server received) and its DownTracks (what its client reported receiving, RTCP RR) become one
StreamInterval per stream, scored by quality.StreamScore; the participant's score is its worst stream's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .allocator import PAUSED, allocate
from .quality import INTERVAL, StreamInterval, StreamScore, quality_level, worst

if TYPE_CHECKING:
    from .participant import Participant
    from .publication import Subscription, TrackPublication

# A subscriber that is sent media but sends no receiver report for this long is judged as receiving nothing
# (LiveKit's 30 s); shorter gaps are RTCP's own pacing (libwebrtc reports audio-only streams every ~5 s).
NO_REPORT_TIMEOUT = 30.0
# Sequence-number spans beyond this in one interval are a restarted stream or a forged report, not traffic.
MAX_INTERVAL_PACKETS = 1 << 20


@dataclass
class _Upstream:
    """A published track's counters at the last interval, per layer: (packets received, packets lost)."""
    layers: list[tuple[int, int]]
    muted: bool
    asked: int | None      # the highest layer dynacast asked the publisher for
    score: StreamScore


@dataclass
class _Downstream:
    """A DownTrack's counters at the last interval."""
    packets: int           # sent to the subscriber
    blocks: int            # report blocks received from it
    highest: int | None    # their extended highest sequence number and cumulative loss, at the last new block
    lost: int
    upstream_lost: int | None  # the forwarded layer's loss on the way in, and that layer, at the last new block
    upstream_layer: int
    silent_for: float      # seconds of sending without a new report block
    score: StreamScore


class ConnectionStats:
    """One participant's streams and their scores; `update` is called once per quality interval."""

    def __init__(self, participant: Participant) -> None:
        self.participant = participant
        self._upstream: dict[int, _Upstream] = {}      # by engine receiver id
        self._downstream: dict[int, _Downstream] = {}  # by engine DownTrack id
        self.score = StreamScore().score
        self.level = quality_level(self.score)

    def update(self, engine: Any) -> float:
        """Reads the engine's counters, scores each stream's interval and returns the participant's score."""
        upstream = {p.receiver_id: p for p in self.participant.publications.values()
                    if p.published and p.receiver_id is not None}
        downstream = {s.downtrack_id: s for s in self.participant.subscriptions.values() if s.downtrack_id is not None}
        self._upstream = {rid: self._measure_upstream(engine, rid, p) for rid, p in upstream.items()}
        self._downstream = {did: self._measure_downstream(engine, did, s) for did, s in downstream.items()}
        self.score = worst([s.score.score for s in self._upstream.values()]
                           + [s.score.score for s in self._downstream.values()])
        self.level = quality_level(self.score)
        return self.score

    def _measure_upstream(self, engine: Any, receiver_id: int, publication: TrackPublication) -> _Upstream:
        receiver = engine.receiver_stats(receiver_id)
        stats = receiver["layers"]
        layers = [(layer["packets"], layer["lost"]) for layer in stats]
        muted = publication.info.muted
        # The highest layer dynacast asks the publisher for (PAUSED: none); None: every layer, as it started.
        asked = publication.dynacast.committed if publication.dynacast is not None else None
        state = self._upstream.get(receiver_id)
        if state is None or len(state.layers) != len(layers):
            state = _Upstream(layers, muted, asked, StreamScore())
            state.score.update(None, muted)
            return state
        packets = lost = 0
        jitter = 0.0
        for layer, (was_packets, was_lost), (now_packets, now_lost) in zip(stats, state.layers, layers):
            if now_packets < was_packets:  # the layer restarted (a new SSRC): its history is gone
                continue
            packets += now_packets - was_packets
            lost += now_lost - was_lost
            if now_packets > was_packets and publication.codec is not None:
                jitter = max(jitter, layer["jitter"] / publication.codec.clock_rate)
        state.layers = layers
        # Layers asked for (since the last interval at least: an encoder takes a moment to start one) but not
        # arriving: the publisher's uplink does not carry them.
        shortfall = max(0, min(asked, len(layers) - 1) - receiver["top_layer"]) \
            if publication.kind == "video" and asked is not None and asked == state.asked else 0
        interval: StreamInterval | None = StreamInterval(
            publication.kind, packets + lost, lost, jitter, layer_shortfall=shortfall,
            reports=any(layer["sr_age"] is not None and layer["sr_age"] < INTERVAL for layer in stats))
        if state.muted:
            interval = None  # unmuted during the interval: the encoder may just be starting again
        elif packets == 0 and publication.kind == "video" and (asked == PAUSED or not publication.subscriptions):
            interval = None  # nobody watches: dynacast has turned (or may turn) its layers off
        state.muted, state.asked = muted, asked
        state.score.update(interval, muted)
        return state

    def _measure_downstream(self, engine: Any, downtrack_id: int, subscription: Subscription) -> _Downstream:
        publication = subscription.publication
        stats = engine.downtrack_stats(downtrack_id)
        layer = stats["current_layer"]
        upstream = engine.receiver_stats(publication.receiver_id) if publication.receiver_id is not None else None
        # What the forwarded layer lost on its way in, the subscriber cannot have received either: not its link's
        # fault (LiveKit subtracts this "missing upstream" loss too).
        upstream_lost = upstream["layers"][layer]["lost"] if upstream and 0 <= layer < len(upstream["layers"]) else None
        choice = allocate(publication, subscription.subscriber.allocator.settings.get(publication.sid))
        state = self._downstream.get(downtrack_id)
        if state is None:
            state = _Downstream(stats["packets"], stats["rr_blocks"], None, 0, None, -1, 0.0, StreamScore())
        sent = stats["packets"] - state.packets
        interval = None
        if stats["rr_blocks"] != state.blocks:
            highest, lost = stats["rr_highest_sequence"], stats["rr_lost"]
            if state.highest is not None and sent > 0:
                expected = (highest - state.highest) & 0xFFFFFFFF
                interval_lost = lost - state.lost
                if upstream_lost is not None and state.upstream_lost is not None and layer == state.upstream_layer:
                    interval_lost -= max(0, upstream_lost - state.upstream_lost)
                # Below the layer the subscriber asks for, if the publisher sends it (else the best it sends).
                shortfall = max(0, min(choice.layer, upstream["top_layer"]) - layer) \
                    if publication.kind == "video" and upstream is not None and layer >= 0 else 0
                clock_rate = publication.codec.clock_rate if publication.codec is not None else 90000
                if expected <= MAX_INTERVAL_PACKETS:
                    interval = StreamInterval(publication.kind, expected, interval_lost,
                                              stats["rr_jitter"] / clock_rate, stats["rtt"], shortfall)
            state.highest, state.lost, state.silent_for = highest, lost, 0.0
            state.upstream_lost, state.upstream_layer = upstream_lost, layer
        elif sent > 0:
            state.silent_for += INTERVAL
            if state.silent_for >= NO_REPORT_TIMEOUT:
                interval = StreamInterval(publication.kind, 0, 0, reports=True)  # sent to, it hears nothing
        state.packets, state.blocks = stats["packets"], stats["rr_blocks"]
        if stats["paused"] and not choice.paused:
            state.score.pause()  # paused by the StreamAllocator: the link does not carry even the lowest layer
        else:
            # Paused by choice (the track muted, the subscriber disabled it): not the link's fault.
            state.score.update(interval, muted=stats["paused"])
        return state
