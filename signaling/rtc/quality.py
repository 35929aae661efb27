"""Connection quality scoring (sans-I/O): one interval's receive statistics of a stream (a published track as it
arrives, or a DownTrack as its subscriber reports it) become a score on an R-factor-like scale (0..100); the score
falls fast and rises slowly, so a short burst of loss shows at once and one good interval does not hide a bad link.
A participant's quality is its worst stream's. Clients get a ConnectionQuality level and a MOS (1.0..4.5)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from livekit.protocol import models

INTERVAL = 5.0  # seconds between scores and updates to clients (LiveKit's UpdateInterval)

MAX_SCORE = 100.0
# Levels, as LiveKit's: a score above EXCELLENT_ABOVE is EXCELLENT, above GOOD_ABOVE GOOD, above POOR_ABOVE POOR.
EXCELLENT_ABOVE = 80.0
GOOD_ABOVE = 40.0
POOR_ABOVE = 20.0
# Score points per percent of packets lost (LiveKit's weights: opus 8, video 10): 2.5 % (audio) / 2 % (video)
# leave EXCELLENT, 7.5 % / 6 % leave GOOD.
LOSS_WEIGHT = {"audio": 8.0, "video": 10.0}
# Loss weighs in full from FULL_WEIGHT_PPS packets per second (Opus's 20 ms frames); a sparser stream (DTX silence,
# a still screen share) has it weighed by sqrt(rate / FULL_WEIGHT_PPS), as LiveKit weighs by the rate against the
# stream's usual one, so one packet lost out of a dozen does not make a quiet participant POOR.
FULL_WEIGHT_PPS = 50.0
# Score points per spatial layer the subscriber gets below the one it wants (LiveKit's 35: one missed layer costs
# about one level).
LAYER_WEIGHT = 35.0
# Delay: an effective one-way delay (half the round trip plus twice the jitter, what a jitter buffer adds) up to
# DELAY_FREE costs nothing (ITU-T G.114: up to 150 ms is transparent to conversation); above it, DELAY_WEIGHT
# points per second, so 400 ms (G.114's limit for planning) costs 60 points: the edge of POOR.
DELAY_FREE = 0.150
DELAY_WEIGHT = 240.0
# Smoothing (LiveKit's): a worse sample weighs FALL_WEIGHT against the old score, a better one RISE_WEIGHT.
FALL_WEIGHT = 0.8
RISE_WEIGHT = 0.4
# A stream that still flows never scores below FLOOR (POOR); only one that stopped reaches LOST.
FLOOR = 30.0
# An interval without packets: DRY_SCORE (POOR) while the sender's RTCP still arrives (it is there but sends
# nothing), LOST_SCORE (LOST) when nothing arrives at all.
DRY_SCORE = 40.0
LOST_SCORE = 20.0


@dataclass(frozen=True)
class StreamInterval:
    """What one stream did in one interval."""
    kind: str                       # "audio" or "video"
    expected: int                   # packets the sequence numbers say were sent
    lost: int                       # of those, not received
    jitter: float = 0.0             # interarrival jitter, seconds
    rtt: float | None = None        # round trip, seconds (None: unknown)
    layer_shortfall: float = 0.0    # spatial layers below the one wanted (0: what is wanted, or unknown)
    reports: bool = True            # the sender's RTCP arrived in the interval


def sample_score(interval: StreamInterval) -> float:
    """The interval's own score, before smoothing."""
    if interval.expected <= 0:
        return DRY_SCORE if interval.reports else LOST_SCORE
    loss_percent = 100.0 * min(1.0, max(0, interval.lost) / interval.expected)
    loss_weight = LOSS_WEIGHT.get(interval.kind, LOSS_WEIGHT["video"]) \
        * min(1.0, math.sqrt(interval.expected / (FULL_WEIGHT_PPS * INTERVAL)))
    delay = (interval.rtt or 0.0) / 2 + 2 * interval.jitter
    packet_score = MAX_SCORE - loss_weight * loss_percent - DELAY_WEIGHT * max(0.0, delay - DELAY_FREE)
    layer_score = MAX_SCORE - LAYER_WEIGHT * max(0.0, interval.layer_shortfall)
    return max(0.0, min(packet_score, layer_score))


class StreamScore:
    """One stream's smoothed score; it starts EXCELLENT."""

    def __init__(self) -> None:
        self.score = MAX_SCORE

    def update(self, interval: StreamInterval | None, muted: bool = False) -> float:
        """Takes one interval (None: nothing to judge, the score stays); a muted stream is EXCELLENT."""
        if muted:
            self.score = MAX_SCORE
        elif interval is not None:
            sample = sample_score(interval)
            if interval.expected <= 0:  # stopped: said at once, not smoothed in
                self.score = sample
            else:
                weight = FALL_WEIGHT if sample < self.score else RISE_WEIGHT
                self.score = max(FLOOR, weight * sample + (1 - weight) * self.score)
        return self.score

    def pause(self) -> float:
        """Paused for want of bandwidth, not by choice: POOR at once (LiveKit's rule)."""
        self.score = FLOOR
        return self.score


def quality_level(score: float) -> int:
    """models.ConnectionQuality for a score."""
    if score > EXCELLENT_ABOVE:
        return models.ConnectionQuality.EXCELLENT
    if score > GOOD_ABOVE:
        return models.ConnectionQuality.GOOD
    if score > POOR_ABOVE:
        return models.ConnectionQuality.POOR
    return models.ConnectionQuality.LOST


def mos(score: float) -> float:
    """ITU-T G.107's mapping of an R factor to a mean opinion score (1.0..4.5), what clients get as `score`; the
    cubic dips just below 1 for R under ~7, hence the clamp."""
    r = max(0.0, min(MAX_SCORE, score))
    return max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r))


def worst(scores: Iterable[float]) -> float:
    """A participant's score: its worst stream's; with none, EXCELLENT."""
    return min(scores, default=MAX_SCORE)
